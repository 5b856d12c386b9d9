//! The single writer thread: it owns the only read-write connection and commits every write
//! waiting at that moment in one transaction (group commit).
//!
//! - `connection.rs`: opening and configuring connections (the writer's and the readers').
//! - `batch.rs`: the batch loop: drain the queue, run the jobs in one transaction, retry a
//!   failed batch job by job, keep the chains, counters and name cache in step.
//! - `durability.rs`: answering a batch only once it is durable: the sync thread that
//!   `fdatasync`s the WAL for every batch committed since its last sync, and the backlog
//!   that keeps the writer from running far ahead of it.

mod batch;
mod connection;
mod durability;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, Receiver, Sender};

use chatcore::metrics::StoreMetrics;
use chatcore::store::{Changed, Inserted, MarkedRead, MessageChange};
use chatcore::{
    ConversationKey, Error, MessageId, MigrationReport, NewMessage, Result, User, UserId, Username,
};
use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::activity::{Activity, Move};
use crate::config::SqliteConfig;
use crate::error;
use crate::reader::{ReadCtx, ReadJob};

pub(crate) use connection::{open_connection, open_reader_connection};

use batch::{Tail, UserTail};
use durability::{Backlog, Committed};

/// Where a job's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A write, kept whole until its batch commits so it can be answered (or retried alone).
pub(crate) enum WriteOp {
    /// A user, with a password hash for an account (`SessionStore::create_account`).
    CreateUser {
        username: Username,
        password_hash: Option<String>,
        reply: Reply<User>,
    },
    CreateSession {
        token_hash: [u8; 32],
        user: UserId,
        expires_at: i64,
        reply: Reply<()>,
    },
    DeleteSession {
        token_hash: [u8; 32],
        reply: Reply<()>,
    },
    /// Sessions expired at `now` (microseconds); answers how many went.
    DeleteExpiredSessions {
        now: i64,
        reply: Reply<u64>,
    },
    Insert {
        message: NewMessage,
        reply: Reply<Inserted>,
    },
    MarkRead {
        reader: User,
        peer: Username,
        up_to: MessageId,
        reply: Reply<MarkedRead>,
    },
    /// An edit or a deletion (`Store::change_message`).
    Change {
        sender: UserId,
        id: MessageId,
        change: MessageChange,
        reply: Reply<Changed>,
    },
    /// `Store::remove_user` at `at` (µs): the flag, the password, the sessions.
    RemoveUser {
        user: UserId,
        at: i64,
        reply: Reply<()>,
    },
    /// `Store::delete_sent_messages`.
    DeleteSent {
        sender: UserId,
        after: MessageId,
        limit: u32,
        reply: Reply<Vec<Changed>>,
    },
    /// `SessionStore::delete_user_sessions`; answers how many went.
    DeleteUserSessions {
        user: UserId,
        reply: Reply<u64>,
    },
    /// `SessionStore::set_password_hash`.
    SetPasswordHash {
        username: Username,
        password_hash: String,
        reply: Reply<User>,
    },
    /// A block started or ended (`Store::set_block`); answers the blocked user.
    SetBlock {
        blocker: UserId,
        blocked: Username,
        on: bool,
        reply: Reply<User>,
    },
    /// A feed consumer's checkpoint (`Store::save_checkpoint`).
    SaveCheckpoint {
        name: String,
        position: i64,
        reply: Reply<()>,
    },
}

/// What the writer queue carries.
pub(crate) enum WriteMsg {
    Op(WriteOp),
    /// A read served by the writer's connection (in-memory stores, or `readers: 0`).
    Read(ReadJob),
    Migrate(Reply<MigrationReport>),
    /// Commit what came before, then exit.
    Stop,
}

/// A job's answer, held until its transaction commits.
pub(crate) enum Outcome {
    User(Result<User>),
    Unit(Result<()>),
    Count(Result<u64>),
    Inserted(Result<Inserted>),
    Marked(Result<MarkedRead>),
    Changed(Result<Changed>),
    Changes(Result<Vec<Changed>>),
}

impl WriteOp {
    fn answer(self, outcome: Outcome) {
        match (self, outcome) {
            (
                WriteOp::CreateUser { reply, .. }
                | WriteOp::SetPasswordHash { reply, .. }
                | WriteOp::SetBlock { reply, .. },
                Outcome::User(result),
            ) => {
                let _ = reply.send(result);
            }
            (WriteOp::DeleteSent { reply, .. }, Outcome::Changes(result)) => {
                let _ = reply.send(result);
            }
            (
                WriteOp::CreateSession { reply, .. }
                | WriteOp::DeleteSession { reply, .. }
                | WriteOp::RemoveUser { reply, .. }
                | WriteOp::SaveCheckpoint { reply, .. },
                Outcome::Unit(result),
            ) => {
                let _ = reply.send(result);
            }
            (
                WriteOp::DeleteExpiredSessions { reply, .. } | WriteOp::DeleteUserSessions { reply, .. },
                Outcome::Count(result),
            ) => {
                let _ = reply.send(result);
            }
            (WriteOp::Insert { reply, .. }, Outcome::Inserted(result)) => {
                let _ = reply.send(result);
            }
            (WriteOp::MarkRead { reply, .. }, Outcome::Marked(result)) => {
                let _ = reply.send(result);
            }
            (WriteOp::Change { reply, .. }, Outcome::Changed(result)) => {
                let _ = reply.send(result);
            }
            (op, _) => op.fail(Error::bug("writer outcome does not match its job")),
        }
    }

    fn fail(self, error: Error) {
        match self {
            WriteOp::CreateUser { reply, .. }
            | WriteOp::SetPasswordHash { reply, .. }
            | WriteOp::SetBlock { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            WriteOp::CreateSession { reply, .. }
            | WriteOp::DeleteSession { reply, .. }
            | WriteOp::RemoveUser { reply, .. }
            | WriteOp::SaveCheckpoint { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            WriteOp::DeleteSent { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            WriteOp::DeleteExpiredSessions { reply, .. } | WriteOp::DeleteUserSessions { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            WriteOp::Insert { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            WriteOp::MarkRead { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            WriteOp::Change { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// Counters the writer keeps for [`crate::SqliteStore::stats`].
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub(crate) transactions: AtomicU64,
    pub(crate) writes: AtomicU64,
}

pub(crate) struct Writer {
    ctx: ReadCtx,
    /// The WAL file to sync before answering, when syncs are pipelined.
    wal_to_sync: Option<PathBuf>,
    /// Committed writes on their way to the sync thread (set while `run` runs).
    sync_queue: Option<Sender<Vec<Committed>>>,
    /// Batches committed and not yet synced.
    unsynced: Arc<Backlog>,
    stats: Arc<WriterStats>,
    /// Batch sizes, commit and fsync times.
    metrics: StoreMetrics,
    max_batch: usize,
    last_timestamp: DateTime<Utc>,
    /// Users found or created inside the open transaction, by key; cached only once it
    /// commits.
    pending_names: HashMap<String, User>,
    /// Ids known to be users that were not removed (committed). A removal goes through this
    /// writer, which drops the id here; cleared when it reaches the name cache's size.
    known_ids: HashSet<UserId>,
    known_ids_capacity: usize,
    /// Ids found inside the open transaction; cached only once it commits.
    pending_ids: HashSet<UserId>,
    /// Where each conversation's chain stands in the open transaction.
    conversation_tails: HashMap<ConversationKey, Tail>,
    /// Where each user's events and unread total stand in the open transaction.
    user_tails: HashMap<UserId, UserTail>,
    /// The open transaction's moves of the activity order (`activity.rs`), applied as each
    /// message is inserted and taken back if the batch fails.
    moves: Vec<Move>,
    /// The last position handed out (message id or read event), read from the database by
    /// the first batch that needs it and forgotten when a batch rolls back or the schema
    /// migrates: the single writer hands out every position, so it stays true in between.
    last_position: Option<i64>,
}

impl Writer {
    /// The writer over `conn`. Errors: the newest message's timestamp cannot be read.
    pub(crate) fn new(
        conn: Connection,
        config: &SqliteConfig,
        stats: Arc<WriterStats>,
        metrics: StoreMetrics,
        activity: Arc<Activity>,
    ) -> Result<Self> {
        let last_timestamp = batch::latest_timestamp(&conn)?.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        activity.load(&conn).map_err(error::map)?;
        Ok(Self {
            ctx: ReadCtx::new(conn, config.name_cache, activity),
            wal_to_sync: durability::wal_path_to_sync(config),
            sync_queue: None,
            unsynced: Arc::new(Backlog::default()),
            stats,
            metrics,
            max_batch: config.max_batch,
            last_timestamp,
            pending_names: HashMap::new(),
            known_ids: HashSet::new(),
            known_ids_capacity: config.name_cache,
            pending_ids: HashSet::new(),
            conversation_tails: HashMap::new(),
            user_tails: HashMap::new(),
            moves: Vec::new(),
            last_position: None,
        })
    }

    /// The writer loop (`batch.rs`): block for one message, drain whatever else is waiting
    /// (up to `max_batch`), commit the writes in one transaction, answer, repeat.
    /// With a pipelined sync, a second thread (`durability.rs`) makes each committed batch
    /// durable and answers it while this one already commits the next batch.
    pub(crate) fn run(mut self, queue: Receiver<WriteMsg>) {
        let Some(wal) = self.wal_to_sync.clone() else {
            return self.run_batches(&queue);
        };
        std::thread::scope(|scope| {
            let (sync_tx, sync_rx) = mpsc::channel::<Vec<Committed>>();
            let backlog = self.unsynced.clone();
            let metrics = self.metrics.clone();
            let spawned = std::thread::Builder::new()
                .name("chatcore-sqlite-sync".into())
                .spawn_scoped(scope, move || {
                    durability::sync_and_answer(&wal, &sync_rx, &backlog, &metrics)
                });
            match spawned {
                Ok(_) => self.sync_queue = Some(sync_tx),
                Err(e) => {
                    // Without the thread, sync in line: slower, just as durable.
                    tracing::warn!(error = %e, "could not start the SQLite sync thread; syncing on the writer");
                    self.sync_in_line();
                }
            }
            self.run_batches(&queue);
            // Closing the queue lets the sync thread answer what it holds and end; the scope
            // waits for it, so every committed write is answered before the connection closes.
            self.sync_queue = None;
        });
    }
}
