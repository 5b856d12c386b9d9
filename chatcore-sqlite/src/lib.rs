//! # chatcore-sqlite
//!
//! The embedded default storage backend of chatcore: [`chatcore::Store`],
//! [`chatcore::SessionStore`] and [`chatcore::Backend`] on SQLite through `rusqlite`, with
//! SQLite compiled in (no system library needed). It passes both chatcore conformance
//! suites, on a file and in memory.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> chatcore::Result<()> {
//! use std::sync::Arc;
//! use chatcore::{ChatConfig, ChatService, LocalNotifier};
//! use chatcore_sqlite::{SqliteConfig, SqliteStore};
//!
//! let store = Arc::new(SqliteStore::open(SqliteConfig::file("chat.sqlite3")).await?);
//! let report = store.migrate().await?; // explicit: a no-op on every start after the first
//! for note in &report.notes {
//!     eprintln!("chatcore-sqlite migration: {note}"); // e.g. names that clash by case
//! }
//! let chat = ChatService::new(store.clone(), Arc::new(LocalNotifier::default()), ChatConfig::default());
//! let alice = chat.create_user("alice").await?;
//! # let _ = alice;
//! // ... serve ...
//! store.close().await?; // on graceful shutdown: finish queued writes, join the threads
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! - **No SQLite call on the async runtime.** One dedicated writer thread owns the only
//!   read-write connection; [`SqliteConfig::readers`] reader threads each own a read-only
//!   connection and pull jobs from one shared queue. Every [`chatcore::Store`] and
//!   [`chatcore::SessionStore`] method is one job, answered through a oneshot channel: one
//!   round trip. Session lookups read the database every time (caching them is a decorator
//!   in `chatcore-axum`, for every backend).
//! - **One store per file.** Each store keeps caches of its own and answers from its own
//!   connections, so two stores on one file could disagree (about a revoked session, say).
//!   [`SqliteStore::open`] takes an exclusive advisory lock on `<database file>-chatcore.lock`
//!   (`std::fs::File::try_lock`), held until the store closes or drops (or its process
//!   dies); a second store, in this process or another, is refused with
//!   [`chatcore::Error::Unavailable`] naming both files (its source, a [`DatabaseInUse`], says
//!   so to code). In-memory databases take no lock.
//! - **Group commit.** The writer blocks for one job, then drains every job waiting at that
//!   moment (up to [`SqliteConfig::max_batch`]) and commits them all in one
//!   `BEGIN IMMEDIATE ... COMMIT`, so a durable commit costs one `fsync` per batch, not per
//!   message. Waiters are answered only after the commit is durable. If the batch fails because of one
//!   job, each job is retried in its own transaction; if it fails because of the database
//!   (busy, full, corrupt), every waiter gets that error.
//! - **Positions in commit order.** Message ids and read events' positions come from one
//!   sequence (schema version 6) that the single writer hands out itself, in the order it
//!   applies jobs (it reads the last one from the ends of both tables once, and again after a
//!   rollback or a migration), so a larger position was committed later and a message's id
//!   is its position. `created_at` is the batch's commit
//!   time in UTC microseconds (never earlier than the previous batch's), stored as an integer.
//!   Each user's counter row keeps their newest position, message or read event; the writer
//!   reads it once per user and
//!   batch (a primary-key lookup) and follows it through the batch, so an insert or a mark
//!   reports each participant's previous position (the 2nd event of a user in a batch names
//!   the 1st), and [`chatcore::Store::latest_position`] is one row read.
//! - **The inbox is ordered at write time** (schema version 8). Each user has an activity
//!   tree keyed by (user, conversation's newest id) → peer, so an inbox page is one range of
//!   it whatever the number of conversations. The writer moves each conversation's two
//!   entries once per batch, from the newest id the conversation's row held before the
//!   batch to the newest id now, so a message writes one entry per participant in one tree
//!   (a user's entries sit together, so usually on one leaf). Read markers have a table of
//!   their own that only marks write, with how many of the peer's messages each covers; a
//!   conversation's unread count is the peer's messages up to the newest one (each message
//!   is numbered among its sender's messages of the conversation) less those, computed on
//!   the inbox page from the rows it reads anyway, never written per message. The unread
//!   total is a column of the user's counter row, which each message writes anyway. A
//!   marker moves forward only; the peer's messages it passes over are counted from one
//!   message row and the marker's count, never by walking. A mark queued in the same batch
//!   as sends counts them from the batch's conversation tails in memory.
//! - **Idempotency and the recipient are resolved in the writer's transaction**, in the same
//!   job as the insert. Each thread caches [`chatcore::Username::key`] → user (users are
//!   never renamed or deleted); the writer caches a name only once the transaction that saw
//!   it has committed.
//! - **Names are unique without regard to case.** Each user row keeps the name as chosen
//!   and its key, under a unique index; lookups (users, credentials, recipients, the other
//!   side of a conversation) go by key, the directory is sorted and filtered by key, and a
//!   message names its recipient as they chose to write their name. Names read back from
//!   the file are taken as stored ([`chatcore::Username::from_stored`]): they may predate
//!   today's rules.
//! - **Pipelined sync.** With [`Synchronous::Full`] (and [`SqliteConfig::pipelined_sync`], on
//!   by default) the writer commits without waiting for the disk and hands the batch to a
//!   sync thread, which `fdatasync`s the WAL once for every batch committed since its last
//!   sync and only then answers them. The writer meanwhile commits the next batch, so CPU
//!   work and disk flushes overlap instead of taking turns.
//! - **WAL mode**, so readers never wait for the writer and the writer never waits for
//!   readers.
//! - In memory ([`Location::Memory`]) there is one connection, on the writer thread; reads
//!   queued with writes run right after those writes commit.
//!
//! # Durability: the `synchronous` trade-off
//!
//! [`SqliteConfig::synchronous`] defaults to [`Synchronous::Full`]: the WAL is synced at every
//! commit, so a send that returned `Ok` survives `kill -9` of the process *and* power loss.
//! [`Synchronous::Normal`] syncs only at checkpoints: still safe against a process crash, and
//! never corrupt, but the last commits before a power loss or OS crash may vanish. Thanks to
//! group commit, `Full` costs one `fsync` per batch, and with the pipelined sync that `fsync`
//! runs beside the next batch's work; keep it unless you measured otherwise. The one thing
//! the pipelined sync gives up (see [`SqliteConfig::pipelined_sync`]): readers may see a
//! commit up to one `fsync` before it is durable, so a power loss in that window can take
//! back a message that was shown but never acknowledged.
//! The test `tests/durability.rs` kills a child process with SIGKILL in the middle of a send
//! load and finds every acknowledged message in the reopened file: no send is answered
//! before its commit. (A process kill cannot tell `Full` from `Normal`, since both survive
//! it; what `Full` adds, surviving power loss, needs a pulled plug to test.)
//!
//! # Throughput
//!
//! A durable send waits for one `fsync` of the WAL, so with `c` senders waiting at once the
//! send rate cannot exceed `c / fsync latency` (Little's law), however fast the CPU work is:
//! group commit makes the cost of that `fsync` shared by everyone in the batch, and the
//! pipelined sync hides it behind the next batch's work, but it is still waited for.
//! On a disk that syncs in 0.2 ms, 64 concurrent senders can reach the CPU limit of the
//! writer thread; on a busy disk that syncs in 5 ms they are held near 64 / 5 ms. The
//! benchmark `benches/sqlite.rs` measures the local `fsync` floor next to the send rates
//! (see `BENCHMARKS-sqlite.md`). [`SqliteStore::stats`] reports the average batch.
//!
//! # Schema and migrations
//!
//! [`SqliteStore::migrate`] ([`chatcore::Backend::migrate`]) applies the missing steps, each
//! recorded in the table
//! `chatcore_migrations` (never `PRAGMA user_version`, which belongs to the host), and is a
//! no-op once the schema is current. It never runs as a side effect of
//! [`SqliteStore::open`]. A database migrated by newer code is refused with
//! [`chatcore::Error::Corrupt`]. All tables are prefixed `chatcore_`, so the file can be shared
//! with the host's own tables.
//!
//! | table | what | index and why |
//! |---|---|---|
//! | `chatcore_users` | id (rowid), username as chosen, `username_key` ([`chatcore::Username::key`], schema version 5), password hash | unique `chatcore_users_key`: names unique without regard to case, lookups by key, and the sorted directory with prefix and keyset paging as one range scan |
//! | `chatcore_sessions` | SHA-256 of the token → user, expiry | primary key on the hash: one lookup per authenticated request; `chatcore_sessions_expires (expires_at)` (version 5): `delete_expired_sessions` is one range delete |
//! | `chatcore_messages` | id (rowid), sender, recipient, conversation key (`conv_low`, `conv_high`), `created_at` (µs), body, idempotency key, and the conversation's chain: `prev_id` (its previous message) and `seq` (1, 2, ... within the conversation); `sender_seq` (schema version 6: 1, 2, ... among the sender's messages of the conversation) | partial unique `chatcore_messages_idempotency (sender_id, idempotency_key)`: replays, only keyed messages indexed. No per-conversation index: see below |
//! | `chatcore_conversation_marks` | every 16th message of each conversation: its `seq` and id | primary key `(conv_low, conv_high, seq)` and unique `chatcore_conversation_marks_id (conv_low, conv_high, id)`: where a walk along a chain starts, for a `before` cursor, an offset or a catch-up |
//! | `chatcore_conversations` | messages per conversation and its newest id (the head of its chain); `low_count` (schema version 6: how many `conv_low` sent) | primary key `(conv_low, conv_high)`: the page `total` is one row, never a count; the newest id starts the latest page, orders and prunes the per-user reads |
//! | `chatcore_user_counts` | messages per user and their newest position (schema version 4; read events too since 6), their unread total (6) | primary key `user_id`: the per-user `total`; the newest position is `latest_position` and the previous position an insert or a mark reports; the inbox's `unread_total` |
//! | `chatcore_read_markers` | per user and peer (schema version 8): the newest message read and how many of the peer's messages of the conversation lie at or below it | primary key `(user_id, peer_id)`: a mark's row, both markers on an inbox page |
//! | `chatcore_reads` | read events (schema version 6): position (rowid), reader, peer, the message read up to | `chatcore_reads_reader (reader_id)` and the partial `chatcore_reads_peer (peer_id) WHERE peer_id <> reader_id`: a user's read events after a position, as reader and as peer (a note to oneself once), each one range |
//! | `chatcore_checkpoints` | feed consumers' checkpoints (schema version 7): name → position | primary key `name` |
//! | `chatcore_migrations` | applied schema steps | primary key `version` |
//!
//! The host's event feed ([`chatcore::Store::feed_after`]) is two forward ranges of primary
//! keys, messages by id and read events by position, read in one transaction and merged:
//! the single writer commits positions in order, so a snapshot that holds a position holds
//! every smaller one. Like every read, with the pipelined sync it may show a commit up to one
//! `fsync` before it is durable (see "Durability" below): a power loss in that window can take
//! back an event a consumer already handled, and its position is then handed out again.
//!
//! **Activity order in memory** (schema version 12). Which of a user's conversations had
//! their newest message where (the inbox, newest activity first, with its `before` cursor; a
//! user's messages newest first; a catch-up after a position) is not a table: the store keeps
//! it in memory, per user, built from `chatcore_conversations` when it opens (one read of
//! that table: 16 bytes of memory per participant and conversation while a user has up to 32
//! conversations, 30-40 beyond, and about 50 per user; a second or so of start-up per million
//! conversations) and moved by the writer in the same batch as the
//! rows. Schema 8 kept it as a tree in the file (`chatcore_activity`), which cost every send a
//! delete and an insert per participant; migration 12 drops it. This is sound because one
//! store owns the file (see "One store per file"); how a read checks the order against its
//! snapshot is in `activity.rs`. A user's messages and catch-up are then read conversation by
//! conversation along each chain (newest activity first, stopping when no older
//! conversation can make the page; a catch-up visits only the conversations active after its
//! position), so a send writes no per-user index row.
//!
//! The counters are updated in the same transaction as the messages (one upsert per
//! conversation and user per batch). The `query_plans` tests in `sql.rs` assert with
//! `EXPLAIN QUERY PLAN` that no read scans a table and each uses its index.
//!
//! **Conversations are chains, not an index** (schema version 3). An index on
//! `(conv_low, conv_high, id)` puts each conversation's newest entries on a b-tree leaf of
//! their own, so a group commit of 64 sends to 64 conversations wrote 64 index pages to the
//! WAL: 6.2 KB per send and half the writer's time. Instead each message row links to the
//! conversation's previous message and carries its number in the conversation, and one
//! message in 16 gets a row in `chatcore_conversation_marks`. A batch now writes the
//! message table's newest leaf, the counter rows and a mark now and then (1.5 KB per send),
//! and every read still costs the same whatever the size of the table: the latest page
//! starts at the conversation's newest id; a `before` cursor, an offset or a catch-up finds
//! the nearest mark (one index lookup) and walks back at most 16 steps; each message after
//! that is one rowid lookup. Offsets cost no more than cursors. (`chain.rs`.) Migration 3
//! rewrites every message row once to link and number it: about 10 s per million messages
//! on the project's 2-core machine, in one transaction, so plan the upgrade of a large file.
//!
//! **Migration 5 and clashing names.** Names made before names were unique without regard to
//! case may clash (`alice` and `Alice`). SQL cannot compute the key (NFKC), so the migration
//! fills it in Rust. The oldest user of each clash (lowest id) keeps the key; each other one
//! gets the key followed by NUL and their id, which no name can produce: they keep their
//! messages and sessions but can no longer be found or log in by name. They are never
//! merged, and never silently: each clash is a note in [`chatcore::MigrationReport::notes`]
//! (and a warning in the log) naming the users and what the operator should do (rename
//! them).
//!
//! **Migration 6 and the inbox.** It numbers every message among its sender's messages of
//! the conversation (one rewrite of every message row, like migration 3, in one
//! transaction), then fills the inbox from the conversations' counters: a database migrated
//! from version 5 has no read markers, so every message a user received is unread (a note to
//! oneself never is) and each unread total is the sum of the user's rows.
//!
//! **Migration 8 and the inbox's write cost.** It builds the activity trees (dropped by
//! migration 12, which keeps the order in memory) from the
//! conversations' rows, moves each read marker into `chatcore_read_markers` with the count
//! of the peer's messages it covers (from the marker's message row), recomputes each unread
//! total by the new rule (the same numbers on a consistent file), and drops
//! `chatcore_inbox` and `chatcore_user_conversations`. It reads each conversation and
//! marker once and rewrites no message.
//!
//! # Errors
//!
//! `SQLITE_BUSY`/`SQLITE_LOCKED` (after [`SqliteConfig::busy_timeout`]) and I/O failures are
//! [`chatcore::Error::Unavailable`]; `SQLITE_FULL` (disk full, or
//! [`SqliteConfig::max_page_count`] reached) is [`chatcore::Error::StorageFull`];
//! `SQLITE_NOTADB` and `SQLITE_CORRUPT` are [`chatcore::Error::Corrupt`]; a file another store
//! has open is [`chatcore::Error::Unavailable`]; a config that makes no sense is
//! [`chatcore::Error::Invalid`] from [`SqliteStore::open`] (see [`SqliteConfig::validate`]).
//! Never a panic.
//!
//! # Layout
//! - `lib.rs`: [`SqliteStore`]: opening, the thread pool, the [`chatcore::Store`],
//!   [`chatcore::SessionStore`] and [`chatcore::Backend`] impls, [`SqliteStats`], close.
//! - `config.rs`: [`SqliteConfig`] and its validation, [`Location`], [`Synchronous`].
//! - `lock.rs`: the lock file that keeps a second store off a database file.
//! - `schema.rs`: the migrations (migration 5's Rust half keys the usernames and reports
//!   clashes), `chatcore_migrations`.
//! - `sql.rs`: every statement, the directory's prefix bound, the query-plan tests.
//! - `writer/mod.rs`: the writer's jobs and its thread; `writer/connection.rs`: opening and
//!   configuring connections; `writer/batch.rs`: the batch loop (group commit), the jobs in
//!   the transaction, the job-by-job retry of a failed batch; `writer/durability.rs`: the
//!   sync thread that makes each batch durable before answering it.
//! - `reader.rs`: the reader threads, the read queries, the username cache.
//! - `chain.rs`: walking a conversation's chain from its marks.
//! - `activity.rs`: each user's conversations by latest activity, in memory.
//! - `error.rs`: SQLite result codes to [`chatcore::Error`].
//! - `tests/conformance.rs`: both chatcore conformance suites on a file, in memory, and with
//!   reads on the writer; `tests/durability.rs`: `kill -9` during a send load;
//!   `tests/errors.rs`: busy, full, not a database, corrupt, newer schema, closed, reopened,
//!   a second store on one file, bad config, names from before the rules.
//! - `benches/sqlite.rs`: send throughput and page latency; see `BENCHMARKS-sqlite.md`.
//!   `benches/inbox.rs`: the inbox's first page at 10 and 10,000 conversations, `mark_read`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod activity;
mod chain;
mod config;
mod error;
mod lock;
mod reader;
mod schema;
mod sql;
mod writer;

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use chatcore::store::{
    Backend, BlockQuery, Changed, Credentials, InboxPage, InboxRequest, Inserted, MarkedRead, MessageChange,
    MessagePage, MigrationReport, PageRequest, SessionRecord, SessionStore, Store, StoredEvent, TokenHash,
    UserQuery, check_checkpoint_name,
};
use chatcore::{Error, Message, MessageId, NewMessage, Position, Result, User, UserId, Username};
use chrono::{DateTime, Utc};
use crossbeam_channel::Sender;
use tokio::sync::oneshot;

pub use config::{Location, MAX_READERS, SqliteConfig, Synchronous};
pub use lock::DatabaseInUse;
pub use schema::SCHEMA_VERSION;

use reader::{ReadCtx, ReadMsg};
use writer::{Reply, WriteMsg, WriteOp, Writer, WriterStats};

/// A [`chatcore::Store`] on SQLite: one writer thread with group commit, a pool of reader
/// threads, WAL mode, durable commits by default. See the [crate docs](crate).
///
/// Dropping the store stops its threads (after the writes already queued) and waits for them;
/// prefer [`SqliteStore::close`] in async code, which waits without blocking the runtime.
pub struct SqliteStore {
    writer: mpsc::Sender<WriteMsg>,
    /// `None` when reads are served by the writer (in memory, or `readers: 0`).
    readers: Option<Sender<ReadMsg>>,
    reader_count: usize,
    /// [`SqliteConfig::answer_timeout`].
    answer_timeout: std::time::Duration,
    stats: Arc<WriterStats>,
    threads: Mutex<Vec<Worker>>,
    /// The lock on `<database file>-chatcore.lock` (`None` in memory, and once closed):
    /// one store per file.
    lock: Mutex<Option<File>>,
}

/// What the writer has done since the store opened, from [`SqliteStore::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqliteStats {
    /// Committed write transactions. With [`Synchronous::Full`] each is made durable by an
    /// `fsync` of the WAL before it is answered; with the pipelined sync one `fsync` can
    /// cover several of them.
    pub transactions: u64,
    /// Writes committed in them (sends, read marks, users, sessions). `writes / transactions`
    /// is the average group-commit batch.
    pub writes: u64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("readers", &self.reader_count)
            .finish_non_exhaustive()
    }
}

/// A thread and the signal that it has finished (its sender is dropped as the thread ends).
struct Worker {
    is_writer: bool,
    handle: JoinHandle<()>,
    exited: oneshot::Receiver<()>,
}

fn spawn_worker(name: String, is_writer: bool, body: impl FnOnce() + Send + 'static) -> Result<Worker> {
    let (exit_tx, exited) = oneshot::channel::<()>();
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            // Dropped last, after the connection: the thread is done with the file.
            let _exit = exit_tx;
            body();
        })
        .map_err(|e| Error::internal("could not start an SQLite thread", e))?;
    Ok(Worker {
        is_writer,
        handle,
        exited,
    })
}

impl SqliteStore {
    /// Opens (or creates) the database and starts the writer and reader threads. The work
    /// runs on those threads, never on the async runtime. Does not migrate: call
    /// [`SqliteStore::migrate`].
    ///
    /// Fails with [`Error::Corrupt`] for a file that is not an SQLite database or whose
    /// chatcore schema is newer than this code, [`Error::Unavailable`] when the file cannot
    /// be opened, stays locked past [`SqliteConfig::busy_timeout`] or is open in another
    /// store (this process's or another's: see the crate docs, "One store per file"),
    /// [`Error::Invalid`] for a config [`SqliteConfig::validate`] refuses.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
    /// use chatcore_sqlite::{SqliteConfig, SqliteStore};
    /// let store = SqliteStore::open(SqliteConfig::memory()).await?;
    /// assert!(store.migrate().await?.applied_any());
    /// assert!(!store.migrate().await?.applied_any());
    /// store.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(config: SqliteConfig) -> Result<Self> {
        config.validate()?;
        let lock = match &config.location {
            Location::File(path) => {
                if !config.create_if_missing && !path.exists() {
                    return Err(Error::storage_unavailable(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "the SQLite database {} does not exist (create_if_missing is off)",
                            path.display()
                        ),
                    )));
                }
                Some(lock::lock_database(path)?)
            }
            Location::Memory => None,
        };
        // std's channel, not crossbeam's: an idle receiver parks after a short spin, where
        // crossbeam's also calls `sched_yield` a few times, measured at 0.3 calls per send
        // under load, each a trip through the scheduler on 2 busy cores. (Readers share one
        // queue, so they keep crossbeam's multi-consumer channel.)
        let (writer_tx, writer_rx) = mpsc::channel::<WriteMsg>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        let writer_config = config.clone();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = stats.clone();
        // Registered here, on the caller's thread, where the host's recorder is in force.
        let metrics = chatcore::metrics::StoreMetrics::register("sqlite");
        let activity = Arc::new(activity::Activity::default());
        let writer_activity = activity.clone();
        let writer =
            spawn_worker(
                "chatcore-sqlite-writer".into(),
                true,
                move || match writer::open_connection(&writer_config).and_then(|conn| {
                    Writer::new(conn, &writer_config, writer_stats, metrics, writer_activity)
                }) {
                    Ok(writer) => {
                        let _ = ready_tx.send(Ok(()));
                        writer.run(writer_rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                },
            )?;
        let mut store = SqliteStore {
            writer: writer_tx,
            readers: None,
            reader_count: 0,
            answer_timeout: config.answer_timeout,
            stats,
            threads: Mutex::new(vec![writer]),
            lock: Mutex::new(lock),
        };
        ready_rx
            .await
            .map_err(|_| Error::bug("the SQLite writer thread ended while opening"))??;

        let reader_count = match config.location {
            Location::File(_) => config.readers,
            Location::Memory => 0,
        };
        if reader_count > 0 {
            let (reader_tx, reader_rx) = crossbeam_channel::unbounded::<ReadMsg>();
            store.readers = Some(reader_tx);
            let mut readies = Vec::with_capacity(reader_count);
            for i in 0..reader_count {
                let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
                let reader_config = config.clone();
                let jobs = reader_rx.clone();
                let activity = activity.clone();
                let worker = spawn_worker(format!("chatcore-sqlite-reader-{i}"), false, move || {
                    match writer::open_reader_connection(&reader_config) {
                        Ok(conn) => {
                            let _ = ready_tx.send(Ok(()));
                            reader::run(ReadCtx::new(conn, reader_config.name_cache, activity), jobs);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })?;
                store.lock_threads().push(worker);
                store.reader_count += 1;
                readies.push(ready_rx);
            }
            for ready in readies {
                ready
                    .await
                    .map_err(|_| Error::bug("an SQLite reader thread ended while opening"))??;
            }
        }
        Ok(store)
    }

    /// Counters of the writer: committed transactions and the writes in them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
    /// # use chatcore::Store;
    /// let store = chatcore_sqlite::SqliteStore::open(chatcore_sqlite::SqliteConfig::memory()).await?;
    /// store.migrate().await?;
    /// store.create_user(&chatcore::Username::parse("alice")?).await?;
    /// assert_eq!(store.stats().writes, 1);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> SqliteStats {
        SqliteStats {
            transactions: self.stats.transactions.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
        }
    }

    /// Applies the missing schema migrations in one transaction on the writer thread and
    /// reports the versions ([`Backend::migrate`]). A no-op (`applied_any() == false`) when
    /// the schema is current; [`Error::Corrupt`] when the database was migrated by newer
    /// code. The standalone server calls it at start; a host embedding the store calls it
    /// when it runs its own. The report's notes name usernames that clash without regard to
    /// case (made before that rule, kept apart by migration 5, never merged) and say what to
    /// do about them: log them.
    pub async fn migrate(&self) -> Result<MigrationReport> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriteMsg::Migrate(reply))
            .map_err(|_| error::closed())?;
        answer.await.map_err(|_| error::closed())?
    }

    /// Finishes the writes already queued, stops every thread and waits for them without
    /// blocking the runtime, then releases the file's lock ([`Backend::close`]). Later calls
    /// on the store fail with [`Error::Unavailable`]. Closing twice is fine.
    ///
    /// The readers stop first, so the writer's connection closes last and checkpoints the
    /// WAL into the database file (leaving a single file behind, and the lock file).
    pub async fn close(&self) -> Result<()> {
        let mut workers = std::mem::take(&mut *self.lock_threads());
        if workers.is_empty() {
            return Ok(());
        }
        let writer = workers.remove(0);
        self.stop_readers();
        let mut panicked = false;
        for worker in workers.into_iter().chain([writer]) {
            if worker.is_writer {
                let _ = self.writer.send(WriteMsg::Stop);
            }
            // Resolves (with an error) when the thread drops its sender, i.e. as it ends.
            let _ = worker.exited.await;
            panicked |= worker.handle.join().is_err();
        }
        // Every connection is closed: another store may have the file now.
        drop(self.lock.lock().unwrap_or_else(|p| p.into_inner()).take());
        if panicked {
            return Err(Error::bug("an SQLite thread panicked"));
        }
        Ok(())
    }

    fn stop_readers(&self) {
        if let Some(readers) = &self.readers {
            for _ in 0..self.reader_count {
                let _ = readers.send(ReadMsg::Stop);
            }
        }
    }

    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        // The vector is only pushed to and taken whole; a poisoned lock still holds valid data.
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a reader thread (or the writer, when it serves reads): one round trip.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ReadCtx) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let job: reader::ReadJob = Box::new(move |ctx| {
            let _ = reply.send(f(ctx));
        });
        let sent = match &self.readers {
            Some(readers) => readers.send(ReadMsg::Job(job)).is_ok(),
            None => self.writer.send(WriteMsg::Read(job)).is_ok(),
        };
        if !sent {
            return Err(error::closed());
        }
        self.answer(answer).await
    }

    /// Queues a write for the next group commit: one round trip.
    async fn write<T>(&self, op: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriteMsg::Op(op(reply)))
            .map_err(|_| error::closed())?;
        self.answer(answer).await
    }

    /// A thread's answer, within [`SqliteConfig::answer_timeout`].
    async fn answer<T>(&self, answer: oneshot::Receiver<Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.answer_timeout, answer).await {
            Ok(answered) => answered.map_err(|_| error::closed())?,
            Err(_) => Err(Error::storage_unavailable(error::NoAnswer(self.answer_timeout))),
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let workers = std::mem::take(&mut *self.lock_threads());
        if workers.is_empty() {
            return;
        }
        // Readers first, then the writer (see `close`). The threads finish the job in hand
        // and exit; nothing blocks them for long (a lock wait ends after busy_timeout).
        self.stop_readers();
        let (writers, readers): (Vec<_>, Vec<_>) = workers.into_iter().partition(|w| w.is_writer);
        for worker in readers {
            let _ = worker.handle.join();
        }
        let _ = self.writer.send(WriteMsg::Stop);
        for worker in writers {
            let _ = worker.handle.join();
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, username: &Username) -> Result<User> {
        let username = username.clone();
        self.write(|reply| WriteOp::CreateUser {
            username,
            password_hash: None,
            reply,
        })
        .await
    }

    async fn find_user(&self, username: &Username) -> Result<Option<User>> {
        let username = username.clone();
        self.read(move |ctx| ctx.find_user(&username)).await
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>> {
        let query = query.clone();
        self.read(move |ctx| ctx.list_users(&query)).await
    }

    async fn insert_message(&self, message: NewMessage) -> Result<Inserted> {
        self.write(|reply| WriteOp::Insert { message, reply }).await
    }

    async fn message_for(&self, viewer: UserId, id: MessageId) -> Result<Option<Message>> {
        self.read(move |ctx| ctx.message_for(viewer, id)).await
    }

    async fn conversation_page(
        &self,
        viewer: UserId,
        other: &Username,
        page: &PageRequest,
    ) -> Result<MessagePage> {
        let other = other.clone();
        let page = *page;
        self.read(move |ctx| ctx.conversation_page(viewer, &other, &page))
            .await
    }

    async fn user_messages(&self, user: UserId, page: &PageRequest) -> Result<MessagePage> {
        let page = *page;
        self.read(move |ctx| ctx.user_messages(user, &page)).await
    }

    async fn messages_after(&self, user: UserId, after: MessageId, limit: u32) -> Result<Vec<Message>> {
        self.read(move |ctx| ctx.messages_after(user, after, limit)).await
    }

    async fn latest_position(&self, user: UserId) -> Result<Position> {
        self.read(move |ctx| ctx.latest_position(user)).await
    }

    async fn events_after(&self, user: UserId, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
        self.read(move |ctx| ctx.events_after(user, after, limit)).await
    }

    async fn inbox(&self, user: UserId, request: &InboxRequest) -> Result<InboxPage> {
        let request = *request;
        self.read(move |ctx| ctx.inbox(user, &request)).await
    }

    async fn mark_read(&self, reader: &User, peer: &Username, up_to: MessageId) -> Result<MarkedRead> {
        let reader = reader.clone();
        let peer = peer.clone();
        self.write(|reply| WriteOp::MarkRead {
            reader,
            peer,
            up_to,
            reply,
        })
        .await
    }

    async fn change_message(&self, sender: UserId, id: MessageId, change: &MessageChange) -> Result<Changed> {
        let change = change.clone();
        self.write(|reply| WriteOp::Change {
            sender,
            id,
            change,
            reply,
        })
        .await
    }

    async fn set_block(&self, blocker: UserId, blocked: &Username, on: bool) -> Result<User> {
        let blocked = blocked.clone();
        self.write(|reply| WriteOp::SetBlock {
            blocker,
            blocked,
            on,
            reply,
        })
        .await
    }

    async fn blocked_users(&self, user: UserId, query: &BlockQuery) -> Result<Vec<User>> {
        let query = query.clone();
        self.read(move |ctx| ctx.blocked_users(user, &query)).await
    }

    async fn reachable_peer(&self, user: UserId, peer: &Username) -> Result<Option<UserId>> {
        let peer = peer.clone();
        self.read(move |ctx| ctx.reachable_peer(user, &peer)).await
    }

    async fn conversation_peers(&self, user: UserId, among: &[UserId]) -> Result<Vec<UserId>> {
        let among = among.to_vec();
        self.read(move |ctx| ctx.conversation_peers(user, &among)).await
    }

    async fn feed_after(&self, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
        self.read(move |ctx| ctx.feed_after(after, limit)).await
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Position> {
        check_checkpoint_name(name)?;
        let name = name.to_owned();
        self.read(move |ctx| ctx.load_checkpoint(&name)).await
    }

    async fn remove_user(&self, user: UserId) -> Result<()> {
        let at = chatcore::now_micros().timestamp_micros();
        self.write(|reply| WriteOp::RemoveUser { user, at, reply }).await
    }

    async fn delete_sent_messages(
        &self,
        sender: UserId,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<Changed>> {
        self.write(|reply| WriteOp::DeleteSent {
            sender,
            after,
            limit,
            reply,
        })
        .await
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        check_checkpoint_name(name)?;
        let name = name.to_owned();
        self.write(|reply| WriteOp::SaveCheckpoint {
            name,
            position: position.0,
            reply,
        })
        .await
    }
}

/// Accounts and sessions live in the same file as the messages. Every lookup reads the
/// database (one reader round trip): caching sessions is `chatcore-axum`'s decorator's job,
/// for every backend alike.
#[async_trait]
impl SessionStore for SqliteStore {
    async fn create_account(&self, username: &Username, password_hash: &str) -> Result<User> {
        let username = username.clone();
        let password_hash = Some(password_hash.to_owned());
        self.write(|reply| WriteOp::CreateUser {
            username,
            password_hash,
            reply,
        })
        .await
    }

    async fn credentials(&self, username: &Username) -> Result<Option<Credentials>> {
        let username = username.clone();
        self.read(move |ctx| ctx.credentials(&username)).await
    }

    async fn create_session(
        &self,
        token_hash: &TokenHash,
        user: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let token_hash = *token_hash;
        let expires_at = expires_at.timestamp_micros();
        self.write(|reply| WriteOp::CreateSession {
            token_hash,
            user,
            expires_at,
            reply,
        })
        .await
    }

    async fn session_user(
        &self,
        token_hash: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>> {
        let token_hash = *token_hash;
        let now = now.timestamp_micros();
        self.read(move |ctx| ctx.session_user(&token_hash, now)).await
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<()> {
        let token_hash = *token_hash;
        self.write(|reply| WriteOp::DeleteSession { token_hash, reply })
            .await
    }

    async fn delete_user_sessions(&self, user: UserId) -> Result<u64> {
        self.write(|reply| WriteOp::DeleteUserSessions { user, reply })
            .await
    }

    async fn set_password_hash(&self, username: &Username, password_hash: &str) -> Result<User> {
        let username = username.clone();
        let password_hash = password_hash.to_owned();
        self.write(|reply| WriteOp::SetPasswordHash {
            username,
            password_hash,
            reply,
        })
        .await
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        let now = now.timestamp_micros();
        self.write(|reply| WriteOp::DeleteExpiredSessions { now, reply })
            .await
    }
}

#[async_trait]
impl Backend for SqliteStore {
    async fn migrate(&self) -> Result<MigrationReport> {
        SqliteStore::migrate(self).await
    }

    async fn close(&self) -> Result<()> {
        SqliteStore::close(self).await
    }
}

#[cfg(test)]
mod tests {
    use chatcore::store::InboxRequest;

    use super::*;

    fn name(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    fn note(from: &User, to: &User) -> NewMessage {
        NewMessage {
            sender: from.clone(),
            recipient: to.username.clone(),
            body: format!("{} to {}", from.username, to.username),
            idempotency_key: None,
        }
    }

    /// Several messages of the same users in one group commit: each names the one before it
    /// in the batch, the first of each user names their newest from an earlier batch, and the
    /// newest ids the batch wrote are where the next batch starts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn previous_positions_within_one_group_commit() {
        let store = SqliteStore::open(SqliteConfig::memory()).await.unwrap();
        store.migrate().await.unwrap();
        let [a, b, c, d] = ["a", "b", "c", "d"].map(name);
        let mut users = Vec::new();
        for username in [a, b, c, d] {
            users.push(store.create_user(&username).await.unwrap());
        }
        let (a, b, c, d) = (&users[0], &users[1], &users[2], &users[3]);
        let before = store.insert_message(note(a, b)).await.unwrap();
        let earlier = before.message.id;
        assert_eq!(
            (before.sender_previous, before.recipient_previous),
            (Position::START, Position::START)
        );

        // Hold the writer until every send of the batch is queued, so the batch holds them all.
        let transactions = store.stats().transactions;
        let plan = [(a, b), (b, a), (a, a), (c, b), (a, c), (c, c), (b, c)];
        let inserted: Vec<Inserted> = one_batch(&store, &plan)
            .await
            .into_iter()
            .map(|result| result.unwrap())
            .collect();
        assert_eq!(store.stats().transactions, transactions + 1, "one group commit");
        let ids: Vec<i64> = inserted.iter().map(|i| i.message.id.0).collect();
        let e = earlier.0;
        let reported: Vec<(i64, i64)> = inserted
            .iter()
            .map(|i| (i.sender_previous.0, i.recipient_previous.0))
            .collect();
        assert_eq!(
            reported,
            vec![
                (e, e),           // a to b: both last in the earlier batch
                (ids[0], ids[0]), // b to a
                (ids[1], ids[1]), // a to a: one previous for both sides
                (0, ids[1]),      // c to b: c's first
                (ids[2], ids[3]), // a to c
                (ids[4], ids[4]), // c to c
                (ids[3], ids[5]), // b to c
            ]
        );
        // The next batch starts where this one ended; d never took part.
        let after = store.insert_message(note(a, b)).await.unwrap();
        assert_eq!(
            (after.sender_previous.0, after.recipient_previous.0),
            (ids[4], ids[6])
        );
        for (user, latest) in [
            (a, after.message.id.0),
            (b, after.message.id.0),
            (c, ids[6]),
            (d, 0),
        ] {
            assert_eq!(store.latest_position(user.id).await.unwrap(), Position(latest));
        }
        assert_eq!(
            store.latest_position(UserId(1_000)).await.unwrap(),
            Position::START
        );
        store.close().await.unwrap();
    }

    /// Sends and marks of one conversation in one group commit: each mark sees what the
    /// sends queued before it did (the batch's conversation tails are still in memory), counts
    /// only the peer's messages it passes over, and takes the next position of the sequence
    /// the messages share; the counters written once at the end agree with the answers.
    /// Blocks and sends queued in one group commit apply in queue order: a send after the
    /// block in the batch is refused (the block counts the batch already read follow it), one
    /// after the unblock goes through, and the block counts that let sends skip the lookup
    /// stay right across batches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocks_and_sends_in_one_group_commit() {
        let store = SqliteStore::open(SqliteConfig::memory()).await.unwrap();
        store.migrate().await.unwrap();
        let a = store.create_user(&name("a")).await.unwrap();
        let b = store.create_user(&name("b")).await.unwrap();
        let c = store.create_user(&name("c")).await.unwrap();
        let transactions = store.stats().transactions;
        let release = hold_writer(&store);
        let send = |from: &User, to: &User| queue_insert(&store, from, to);
        let block = |on: bool| {
            let (reply, answer) = oneshot::channel();
            store
                .writer
                .send(WriteMsg::Op(WriteOp::SetBlock {
                    blocker: b.id,
                    blocked: a.username.clone(),
                    on,
                    reply,
                }))
                .unwrap();
            answer
        };
        let before = send(&a, &b);
        let blocked = block(true);
        let refused = [send(&a, &b), send(&b, &a)];
        let others = [send(&a, &c), send(&c, &b)];
        let unblocked = block(false);
        let after = send(&b, &a);
        release.send(()).unwrap();
        assert!(before.await.unwrap().is_ok());
        assert_eq!(blocked.await.unwrap().unwrap(), a);
        for answer in refused {
            assert!(matches!(
                answer.await.unwrap(),
                Err(Error::Forbidden(chatcore::Forbidden::Blocked))
            ));
        }
        for answer in others {
            assert!(answer.await.unwrap().is_ok(), "other pairs go through");
        }
        assert_eq!(unblocked.await.unwrap().unwrap(), a);
        assert!(after.await.unwrap().is_ok());
        assert_eq!(store.stats().transactions, transactions + 1, "one group commit");

        // Across batches, from the counter rows: blocked, then free again.
        store.set_block(b.id, &a.username, true).await.unwrap();
        store.set_block(b.id, &a.username, true).await.unwrap(); // counted once
        assert!(matches!(
            store.insert_message(note(&a, &b)).await,
            Err(Error::Forbidden(chatcore::Forbidden::Blocked))
        ));
        store.set_block(b.id, &a.username, false).await.unwrap();
        store.set_block(c.id, &a.username, true).await.unwrap();
        assert!(store.insert_message(note(&a, &b)).await.is_ok());
        assert!(
            store.insert_message(note(&b, &c)).await.is_ok(),
            "b blocks no one now"
        );
        store.set_block(c.id, &a.username, false).await.unwrap();
        store.set_block(c.id, &a.username, false).await.unwrap(); // counted once
        let counts: Vec<i64> = store
            .read(|ctx| {
                ctx.conn
                    .prepare("SELECT block_count FROM chatcore_user_counts ORDER BY user_id")
                    .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
                    .map_err(error::map)
            })
            .await
            .unwrap();
        assert_eq!(counts, vec![0, 0, 0], "every block ended, every count back to 0");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn marks_and_sends_in_one_group_commit() {
        let store = SqliteStore::open(SqliteConfig::memory()).await.unwrap();
        store.migrate().await.unwrap();
        let a = store.create_user(&name("a")).await.unwrap();
        let b = store.create_user(&name("b")).await.unwrap();
        let f = store.insert_message(note(&a, &b)).await.unwrap().message.id.0;
        let transactions = store.stats().transactions;

        let release = hold_writer(&store);
        let send = |from: &User, to: &User| queue_insert(&store, from, to);
        let mark = |up_to: i64| {
            let (reply, answer) = oneshot::channel();
            store
                .writer
                .send(WriteMsg::Op(WriteOp::MarkRead {
                    reader: b.clone(),
                    peer: a.username.clone(),
                    up_to: MessageId(up_to),
                    reply,
                }))
                .unwrap();
            answer
        };
        let m1 = send(&a, &b);
        let m2 = send(&b, &a);
        let mark1 = mark(f + 1);
        let m3 = send(&a, &b);
        let mark2 = mark(f + 4);
        let mark3 = mark(f + 1);
        let m4 = send(&a, &b);
        release.send(()).unwrap();
        let [m1, m2, m3, m4] = [m1, m2, m3, m4].map(|m| async { m.await.unwrap().unwrap() });
        let (m1, m2, m3, m4) = (m1.await, m2.await, m3.await, m4.await);
        let (mark1, mark2, mark3) = (
            mark1.await.unwrap().unwrap(),
            mark2.await.unwrap().unwrap(),
            mark3.await.unwrap().unwrap(),
        );
        assert_eq!(store.stats().transactions, transactions + 1, "one group commit");

        let ids: Vec<i64> = [&m1, &m2, &m3, &m4].iter().map(|m| m.message.id.0).collect();
        assert_eq!(
            ids,
            [f + 1, f + 2, f + 4, f + 6],
            "read events take positions between"
        );
        let moved = mark1.moved.expect("the first mark moves");
        assert_eq!(
            (
                mark1.unread,
                moved.marker.position,
                moved.reader_previous,
                moved.peer_previous
            ),
            (0, Position(f + 3), Position(f + 2), Position(f + 2)),
            "a's first two messages read; both streams stood at m2"
        );
        assert_eq!(
            (m3.sender_previous, m3.recipient_previous),
            (Position(f + 3), Position(f + 3)),
            "the read event is the previous position of both"
        );
        let moved = mark2.moved.expect("the second mark moves");
        assert_eq!((mark2.unread, moved.marker.position), (0, Position(f + 5)));
        assert_eq!(
            (mark3.unread, mark3.read_up_to, mark3.moved),
            (0, MessageId(f + 4), None),
            "an older id changes nothing, even within the batch"
        );
        assert_eq!(
            (m4.sender_previous, m4.recipient_previous),
            (Position(f + 5), Position(f + 5))
        );

        let bs = store
            .inbox(
                b.id,
                &InboxRequest {
                    before: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(bs.unread_total, 1);
        let conversation = &bs.conversations[0];
        assert_eq!(
            (
                conversation.unread,
                conversation.read_up_to,
                conversation.last_message.id
            ),
            (1, Some(MessageId(f + 4)), MessageId(f + 6))
        );
        let as_ = store
            .inbox(
                a.id,
                &InboxRequest {
                    before: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(as_.unread_total, 1, "b's reply");
        assert_eq!(as_.conversations[0].peer_read_up_to, Some(MessageId(f + 4)));
        for user in [&a, &b] {
            assert_eq!(store.latest_position(user.id).await.unwrap(), Position(f + 6));
            let positions: Vec<i64> = store
                .events_after(user.id, Position(f), 100)
                .await
                .unwrap()
                .iter()
                .map(|e| e.position().0)
                .collect();
            assert_eq!(positions, (f + 1..=f + 6).collect::<Vec<_>>());
        }
        store.close().await.unwrap();
    }

    /// A database left by schema 7 with messages, read markers and read events (rows as that
    /// code's writer left them) migrates to 8 and answers every inbox question the same:
    /// each user's conversations in the same order with the same newest message, unread
    /// count and both markers, and the same unread total, as schema 7's own inbox query gave
    /// on the file before the migration. Then sends and marks go on from there, and a user's
    /// messages and catch-up still read through their conversations.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_schema_7_database_migrates_and_answers_the_same() {
        use std::collections::HashMap;

        /// Schema 7's inbox page query, verbatim.
        const V7_INBOX_PAGE: &str = "SELECT p.username, i.unread, i.read_up_to, o.read_up_to,
                 m.id, s.username, r.username, m.created_at, m.body
             FROM chatcore_inbox AS i
             CROSS JOIN chatcore_users AS p ON p.id = i.peer_id
             LEFT JOIN chatcore_inbox AS o ON o.user_id = i.peer_id AND o.peer_id = i.user_id
             CROSS JOIN chatcore_messages AS m ON m.id = i.last_id
             CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
             CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
             WHERE i.user_id = ?1 AND i.last_id < ?2
             ORDER BY i.last_id DESC LIMIT ?3";
        type Answer = (Vec<(String, u64, Option<i64>, Option<i64>, i64)>, u64);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v7.sqlite3");
        let names = ["alice", "bob", "carol", "Dave", "erin"];
        // Sends (from, to) and marks (reader, peer, how many messages back from the newest).
        enum Step {
            Send(i64, i64),
            Mark(i64, i64, usize),
        }
        let mut plan = Vec::new();
        for i in 0..60i64 {
            plan.push(Step::Send(1 + i % 3, 1 + (i * 7 + 1) % 4));
            if i % 13 == 0 {
                plan.push(Step::Send(4, 4));
            }
            // More one way than the other, so each side's count differs.
            if i % 4 == 1 {
                plan.push(Step::Send(1, 2));
                plan.push(Step::Send(3, 1));
            }
            if i % 7 == 3 {
                plan.push(Step::Mark(2, 1, 0));
            }
            if i % 11 == 5 {
                plan.push(Step::Mark(1, 3, 2));
                plan.push(Step::Mark(4, 4, 0));
            }
            if i == 40 {
                // Behind the marker: changes nothing.
                plan.push(Step::Mark(2, 1, 5));
            }
        }
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            schema::testing::migrate_to(&conn, 7);
            for (i, n) in names.iter().enumerate() {
                conn.execute(
                    "INSERT INTO chatcore_users (id, username, username_key) VALUES (?1, ?2, ?3)",
                    rusqlite::params![i as i64 + 1, n, n.to_lowercase()],
                )
                .unwrap();
            }
            // What schema 7's writer kept, step by step.
            let mut position = 0i64;
            // (low, high) -> ids in order
            let mut conversations: HashMap<(i64, i64), Vec<i64>> = HashMap::new();
            let mut senders: HashMap<i64, i64> = HashMap::new();
            // (user, peer) -> (last_id, unread, read_up_to)
            let mut inbox: HashMap<(i64, i64), (i64, i64, Option<i64>)> = HashMap::new();
            // user -> (message_count, last position, unread_total)
            let mut counts: HashMap<i64, (i64, i64, i64)> = HashMap::new();
            for step in &plan {
                position += 1;
                match *step {
                    Step::Send(from, to) => {
                        let (low, high) = (from.min(to), from.max(to));
                        let ids = conversations.entry((low, high)).or_default();
                        let seq = ids.len() as i64 + 1;
                        let sender_seq = ids.iter().filter(|id| senders[id] == from).count() as i64 + 1;
                        conn.execute(
                            "INSERT INTO chatcore_messages (id, sender_id, recipient_id, conv_low, conv_high,
                                 created_at, body, prev_id, seq, sender_seq)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'v7', ?7, ?8, ?9)",
                            rusqlite::params![
                                position,
                                from,
                                to,
                                low,
                                high,
                                1_700_000_000_000_000i64 + position,
                                ids.last(),
                                seq,
                                sender_seq
                            ],
                        )
                        .unwrap();
                        if seq % chain::MARK_EVERY == 0 {
                            conn.execute(
                                "INSERT INTO chatcore_conversation_marks VALUES (?1, ?2, ?3, ?4)",
                                [low, high, seq, position],
                            )
                            .unwrap();
                        }
                        ids.push(position);
                        senders.insert(position, from);
                        for user in if from == to { vec![from] } else { vec![from, to] } {
                            let peer = if user == from { to } else { from };
                            let row = inbox.entry((user, peer)).or_insert((0, 0, None));
                            row.0 = position;
                            let count = counts.entry(user).or_default();
                            count.0 += 1;
                            count.1 = position;
                            if user == to && from != to {
                                row.1 += 1;
                                count.2 += 1;
                            }
                        }
                    }
                    Step::Mark(reader, peer, back) => {
                        let ids = &conversations[&(reader.min(peer), reader.max(peer))];
                        let up_to = ids[ids.len().saturating_sub(1 + back)];
                        let row = inbox.get_mut(&(reader, peer)).unwrap();
                        if row.2.is_some_and(|m| m >= up_to) {
                            position -= 1;
                            continue;
                        }
                        let passed = ids
                            .iter()
                            .filter(|&&id| id <= up_to && row.2.is_none_or(|m| id > m))
                            .filter(|id| senders[id] == peer && reader != peer)
                            .count() as i64;
                        row.1 -= passed;
                        row.2 = Some(up_to);
                        counts.get_mut(&reader).unwrap().2 -= passed;
                        for user in [reader, peer] {
                            counts.get_mut(&user).unwrap().1 = position;
                        }
                        conn.execute(
                            "INSERT INTO chatcore_reads (position, reader_id, peer_id, up_to) VALUES (?1, ?2, ?3, ?4)",
                            [position, reader, peer, up_to],
                        )
                        .unwrap();
                    }
                }
            }
            for (&(low, high), ids) in &conversations {
                let low_count = ids.iter().filter(|id| senders[id] == low).count() as i64;
                conn.execute(
                    "INSERT INTO chatcore_conversations (conv_low, conv_high, message_count, last_id, low_count)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    [low, high, ids.len() as i64, *ids.last().unwrap(), low_count],
                )
                .unwrap();
                for user in [low, high] {
                    conn.execute(
                        "INSERT OR IGNORE INTO chatcore_user_conversations VALUES (?1, ?2, ?3)",
                        [user, low, high],
                    )
                    .unwrap();
                }
            }
            for (&(user, peer), &(last_id, unread, read_up_to)) in &inbox {
                conn.execute(
                    "INSERT INTO chatcore_inbox (user_id, peer_id, last_id, unread, read_up_to)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![user, peer, last_id, unread, read_up_to],
                )
                .unwrap();
            }
            for (&user, &(message_count, last_id, unread_total)) in &counts {
                conn.execute(
                    "INSERT INTO chatcore_user_counts (user_id, message_count, last_id, unread_total)
                     VALUES (?1, ?2, ?3, ?4)",
                    [user, message_count, last_id, unread_total],
                )
                .unwrap();
            }
        }
        // Schema 7's answers, from its own query on the file.
        let before: Vec<Answer> = {
            let conn = rusqlite::Connection::open(&path).unwrap();
            (1..=names.len() as i64)
                .map(|user| {
                    let rows = conn
                        .prepare(V7_INBOX_PAGE)
                        .unwrap()
                        .query_map(rusqlite::params![user, i64::MAX, 100], |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, i64>(1)?.max(0) as u64,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                            ))
                        })
                        .unwrap()
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .unwrap();
                    let total: i64 = conn
                        .query_row(
                            "SELECT coalesce((SELECT unread_total FROM chatcore_user_counts WHERE user_id = ?1), 0)",
                            [user],
                            |r| r.get(0),
                        )
                        .unwrap();
                    (rows, total as u64)
                })
                .collect()
        };
        // The fixture has what the test is about: unread both ways, markers, a note to self
        // with a marker, and a user without conversations.
        assert!(before[0].0.iter().any(|c| c.1 > 0 && c.2.is_some()), "{before:?}");
        assert!(
            before[1].0.iter().any(|c| c.2.is_some() && c.3.is_none()),
            "{before:?}"
        );
        assert!(
            before[3].0.iter().any(|c| c.0 == "Dave" && c.2.is_some()),
            "{before:?}"
        );
        assert!(before[4].0.is_empty());

        let store = SqliteStore::open(SqliteConfig::file(&path)).await.unwrap();
        let report = store.migrate().await.unwrap();
        assert_eq!((report.previous, report.current), (7, SCHEMA_VERSION));
        let answer = |user: i64| {
            let store = &store;
            async move {
                let page = store
                    .inbox(
                        UserId(user),
                        &InboxRequest {
                            before: None,
                            limit: 100,
                        },
                    )
                    .await
                    .unwrap();
                let rows = page
                    .conversations
                    .iter()
                    .map(|c| {
                        (
                            c.peer.as_str().to_owned(),
                            c.unread,
                            c.read_up_to.map(|m| m.0),
                            c.peer_read_up_to.map(|m| m.0),
                            c.last_message.id.0,
                        )
                    })
                    .collect::<Vec<_>>();
                (rows, page.unread_total)
            }
        };
        for user in 1..=names.len() as i64 {
            assert_eq!(answer(user).await, before[user as usize - 1], "user {user}");
        }

        // From there: bob writes to alice, alice's count for bob grows by one; alice reads
        // it all, her count and total drop by what the marker passed.
        let alice = User {
            id: UserId(1),
            username: name("alice"),
        };
        let bob = User {
            id: UserId(2),
            username: name("bob"),
        };
        let unread_for_bob = |a: &Answer| a.0.iter().find(|c| c.0 == "bob").map_or(0, |c| c.1);
        let (was, was_total) = (unread_for_bob(&before[0]), before[0].1);
        let sent = store.insert_message(note(&bob, &alice)).await.unwrap();
        let now = answer(1).await;
        assert_eq!(now.0[0].4, sent.message.id.0, "bob's conversation comes first");
        assert_eq!((unread_for_bob(&now), now.1), (was + 1, was_total + 1));
        let marked = store
            .mark_read(&alice, &name("bob"), sent.message.id)
            .await
            .unwrap();
        assert_eq!(marked.unread, 0);
        let now = answer(1).await;
        assert_eq!((unread_for_bob(&now), now.1), (0, was_total - was));
        assert_eq!(
            answer(2).await.0[0].3,
            Some(sent.message.id.0),
            "bob sees alice's marker"
        );
        // A user's messages and catch-up still find every conversation.
        let sent_or_received = plan
            .iter()
            .filter(|s| matches!(s, Step::Send(f, t) if *f == 1 || *t == 1))
            .count() as u64
            + 1;
        let page = store
            .user_messages(alice.id, &PageRequest::latest(1_000))
            .await
            .unwrap();
        assert_eq!(
            (page.total, page.messages.len() as u64),
            (sent_or_received, sent_or_received)
        );
        let caught_up = store.messages_after(alice.id, MessageId(0), 1_000).await.unwrap();
        assert_eq!(caught_up.len() as u64, sent_or_received);
        store.close().await.unwrap();
    }

    /// A database left by schema 5 with messages (chains, marks, counters as that code wrote
    /// them) migrates to 6 with every message kept and its inbox right: conversations by
    /// newest message, every received message unread (never a note to oneself), the totals
    /// their sums. Then marks count from there, sends land on top, and after a reopen the
    /// position sequence resumes above the newest read event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_schema_5_database_migrates_to_the_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        // (from, to): 1 alice, 2 bob, 3 carol, 4 dave, 5 erin (no messages).
        let mut plan = Vec::new();
        for i in 0..40 {
            plan.push(if i % 3 == 0 { (1, 2) } else { (2, 1) });
            if i % 10 == 0 {
                plan.push((3, 1));
            }
        }
        plan.extend([(1, 1), (1, 4), (1, 1), (4, 3)]);
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            schema::testing::migrate_to(&conn, 5);
            for (id, n) in [(1, "alice"), (2, "bob"), (3, "carol"), (4, "Dave"), (5, "erin")] {
                conn.execute(
                    "INSERT INTO chatcore_users (id, username, username_key) VALUES (?1, ?2, ?3)",
                    rusqlite::params![id, n, n.to_lowercase()],
                )
                .unwrap();
            }
            let mut tails: std::collections::HashMap<(i64, i64), (i64, Option<i64>)> = Default::default();
            for (i, &(from, to)) in plan.iter().enumerate() {
                let id = i as i64 + 1;
                let (low, high) = (from.min(to), from.max(to));
                let (seq, prev) = tails.entry((low, high)).or_default();
                *seq += 1;
                conn.execute(
                    "INSERT INTO chatcore_messages
                     (id, sender_id, recipient_id, conv_low, conv_high, created_at, body, prev_id, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'old', ?7, ?8)",
                    rusqlite::params![
                        id,
                        from,
                        to,
                        low,
                        high,
                        1_700_000_000_000_000i64 + id,
                        *prev,
                        *seq
                    ],
                )
                .unwrap();
                if *seq % chain::MARK_EVERY == 0 {
                    conn.execute(
                        "INSERT INTO chatcore_conversation_marks VALUES (?1, ?2, ?3, ?4)",
                        [low, high, *seq, id],
                    )
                    .unwrap();
                }
                *prev = Some(id);
                conn.execute(
                    "INSERT INTO chatcore_conversations (conv_low, conv_high, message_count, last_id)
                     VALUES (?1, ?2, 1, ?3) ON CONFLICT DO UPDATE SET
                     message_count = message_count + 1, last_id = excluded.last_id",
                    [low, high, id],
                )
                .unwrap();
                for user in if from == to { vec![from] } else { vec![from, to] } {
                    conn.execute(
                        "INSERT OR IGNORE INTO chatcore_user_conversations VALUES (?1, ?2, ?3)",
                        [user, low, high],
                    )
                    .unwrap();
                    conn.execute(
                        "INSERT INTO chatcore_user_counts (user_id, message_count, last_id) VALUES (?1, 1, ?2)
                         ON CONFLICT DO UPDATE SET message_count = message_count + 1, last_id = excluded.last_id",
                        [user, id],
                    )
                    .unwrap();
                }
            }
        }
        let sent = |from: i64, to: i64| plan.iter().filter(|&&p| p == (from, to)).count() as u64;
        let last = |a: i64, b: i64| {
            plan.iter()
                .rposition(|&(f, t)| (f, t) == (a, b) || (f, t) == (b, a))
                .unwrap() as i64
                + 1
        };
        let newest = plan.len() as i64;

        let store = SqliteStore::open(SqliteConfig::file(&path)).await.unwrap();
        let report = store.migrate().await.unwrap();
        assert_eq!((report.previous, report.current), (5, SCHEMA_VERSION));
        // The host's feed lists the messages stored before, in id order.
        let feed: Vec<i64> = store
            .feed_after(Position::START, 1_000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.position().0)
            .collect();
        assert_eq!(feed, (1..=plan.len() as i64).collect::<Vec<_>>());
        let users: Vec<User> = [1, 2, 3, 4, 5]
            .into_iter()
            .zip(["alice", "bob", "carol", "Dave", "erin"])
            .map(|(id, n)| User {
                id: UserId(id),
                username: name(n),
            })
            .collect();
        let (alice, bob, carol) = (&users[0], &users[1], &users[2]);
        let inbox = |user: UserId| {
            let store = &store;
            async move {
                store
                    .inbox(
                        user,
                        &InboxRequest {
                            before: None,
                            limit: 50,
                        },
                    )
                    .await
                    .unwrap()
            }
        };
        let summary = |page: &InboxPage| -> Vec<(String, u64, i64)> {
            page.conversations
                .iter()
                .map(|c| (c.peer.to_string(), c.unread, c.last_message.id.0))
                .collect()
        };
        let alices = inbox(alice.id).await;
        let mut want = vec![
            ("bob".to_owned(), sent(2, 1), last(1, 2)),
            ("carol".to_owned(), sent(3, 1), last(1, 3)),
            ("alice".to_owned(), 0, last(1, 1)),
            ("Dave".to_owned(), 0, last(1, 4)),
        ];
        want.sort_by_key(|w| std::cmp::Reverse(w.2));
        assert_eq!(summary(&alices), want);
        assert_eq!(alices.unread_total, sent(2, 1) + sent(3, 1));
        assert!(alices.conversations.iter().all(|c| c.read_up_to.is_none()));
        let bobs = inbox(bob.id).await;
        assert_eq!(summary(&bobs), [("alice".to_owned(), sent(1, 2), last(1, 2))]);
        assert_eq!(bobs.unread_total, sent(1, 2));
        let carols = inbox(carol.id).await;
        assert_eq!(carols.unread_total, 1, "Dave's message");
        assert_eq!(inbox(UserId(5)).await, InboxPage::default());
        for user in &users[..4] {
            let events = store.events_after(user.id, Position::START, 1_000).await.unwrap();
            let count = plan
                .iter()
                .filter(|&&(f, t)| f == user.id.0 || t == user.id.0)
                .count();
            assert_eq!(events.len(), count, "{}: every message kept", user.username);
        }

        // alice reads bob's conversation up to its 20th message: the messages bob sent up to
        // there are read, the rest still unread.
        let ab: Vec<i64> = (1..=newest)
            .filter(|&id| matches!(plan[id as usize - 1], (1, 2) | (2, 1)))
            .collect();
        let up_to = ab[19];
        let from_bob_to_there = ab[..20]
            .iter()
            .filter(|&&id| plan[id as usize - 1] == (2, 1))
            .count() as u64;
        let marked = store
            .mark_read(alice, &name("BOB"), MessageId(up_to))
            .await
            .unwrap();
        assert_eq!(marked.unread, sent(2, 1) - from_bob_to_there);
        let moved = marked.moved.expect("the marker moved");
        assert_eq!(
            moved.marker.position,
            Position(newest + 1),
            "after every stored message"
        );
        assert_eq!(
            moved.reader_previous,
            Position(newest - 1),
            "alice's last: a note to herself"
        );
        let reply = store.insert_message(note(bob, alice)).await.unwrap();
        assert_eq!(reply.message.id.0, newest + 2);
        assert_eq!(reply.recipient_previous, moved.marker.position);
        let alices = inbox(alice.id).await;
        assert_eq!(alices.conversations[0].peer.as_str(), "bob");
        assert_eq!(alices.conversations[0].unread, sent(2, 1) - from_bob_to_there + 1);
        assert_eq!(
            alices.unread_total,
            sent(2, 1) - from_bob_to_there + 1 + sent(3, 1)
        );
        let bobs = inbox(bob.id).await;
        assert_eq!(bobs.conversations[0].peer_read_up_to, Some(MessageId(up_to)));

        // A read event as the newest position survives a reopen: the next id comes after it.
        let marked = store
            .mark_read(alice, &name("carol"), MessageId(last(1, 3)))
            .await
            .unwrap();
        let read_at = marked.moved.expect("the marker moved").marker.position;
        assert_eq!(marked.unread, 0);
        store.close().await.unwrap();
        drop(store);
        let store = SqliteStore::open(SqliteConfig::file(&path)).await.unwrap();
        assert!(!store.migrate().await.unwrap().applied_any());
        let after = store.insert_message(note(carol, alice)).await.unwrap();
        assert_eq!(Position(after.message.id.0), Position(read_at.0 + 1));
        assert_eq!(after.recipient_previous, read_at);
        store.close().await.unwrap();
    }

    /// A session's expiry comes back to the microsecond, and a deleted session is gone at
    /// once: every lookup reads the database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_keep_their_expiry_and_end_at_once() {
        let store = SqliteStore::open(SqliteConfig::memory()).await.unwrap();
        store.migrate().await.unwrap();
        let alice = store.create_account(&name("alice"), "$argon2id$a").await.unwrap();
        let now = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let expires_at = now + chrono::Duration::minutes(5);
        store
            .create_session(&[4; 32], alice.id, expires_at)
            .await
            .unwrap();
        let expected = Some(SessionRecord {
            user: alice,
            expires_at,
        });
        assert_eq!(store.session_user(&[4; 32], now).await.unwrap(), expected);
        assert_eq!(store.session_user(&[4; 32], expires_at).await.unwrap(), None);
        store.delete_session(&[4; 32]).await.unwrap();
        assert_eq!(store.session_user(&[4; 32], now).await.unwrap(), None);
        store.close().await.unwrap();
    }

    /// Issue 16: a writer that does not answer (stuck on a lock, a slow disk) costs a caller
    /// at most `answer_timeout`, then `Unavailable`; the store answers again once it is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_that_does_not_answer_is_unavailable_after_the_answer_timeout() {
        let store = SqliteStore::open(SqliteConfig {
            answer_timeout: std::time::Duration::from_millis(300),
            ..SqliteConfig::memory()
        })
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let alice = store
            .create_user(&Username::parse("alice").unwrap())
            .await
            .unwrap();
        let bob = store.create_user(&Username::parse("bob").unwrap()).await.unwrap();
        let release = hold_writer(&store);
        let started = std::time::Instant::now();
        let sent = store.insert_message(note(&alice, &bob)).await;
        assert!(
            matches!(sent, Err(Error::Unavailable { what: "storage", .. })),
            "{sent:?}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Reads served by the writer (in memory) are bounded the same way.
        assert!(matches!(
            store.find_user(&Username::parse("bob").unwrap()).await,
            Err(Error::Unavailable { .. })
        ));
        release.send(()).unwrap();
        store.insert_message(note(&alice, &bob)).await.unwrap();
        store.close().await.unwrap();
    }

    /// Holds the writer (a read job it runs) until `release` is sent, so every write queued
    /// meanwhile lands in one batch.
    /// Sends `plan`'s messages so that they land in one group commit: the writer is held until
    /// every one is queued. The answers, in plan order.
    async fn one_batch(store: &SqliteStore, plan: &[(&User, &User)]) -> Vec<Result<Inserted>> {
        let release = hold_writer(store);
        let mut answers = Vec::new();
        for (from, to) in plan {
            answers.push(queue_insert(store, from, to));
        }
        release.send(()).unwrap();
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.await.unwrap());
        }
        results
    }

    /// Queues `from`'s note to `to` for the writer; the receiver gets its answer.
    fn queue_insert(store: &SqliteStore, from: &User, to: &User) -> oneshot::Receiver<Result<Inserted>> {
        let (reply, answer) = oneshot::channel();
        store
            .writer
            .send(WriteMsg::Op(WriteOp::Insert {
                message: note(from, to),
                reply,
            }))
            .unwrap();
        answer
    }

    fn hold_writer(store: &SqliteStore) -> std::sync::mpsc::Sender<()> {
        let (running_tx, running) = std::sync::mpsc::channel::<()>();
        let (release, held) = std::sync::mpsc::channel::<()>();
        store
            .writer
            .send(WriteMsg::Read(Box::new(move |_| {
                let _ = running_tx.send(());
                let _ = held.recv();
            })))
            .unwrap();
        running.recv().unwrap();
        release
    }

    /// A batch that fails because of one job (here a trigger refusing the first message to
    /// `victim`) is retried job by job on the real database: the other jobs commit, each in
    /// its own transaction, with the previous positions of a clean start (nothing of the
    /// failed batch leaks into them), and the failing job alone gets the error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_failing_because_of_one_job_is_retried_job_by_job() {
        let store = SqliteStore::open(SqliteConfig::memory()).await.unwrap();
        store.migrate().await.unwrap();
        let mut users = Vec::new();
        for username in ["a", "b", "victim"] {
            users.push(store.create_user(&name(username)).await.unwrap());
        }
        let (a, b, victim) = (&users[0], &users[1], &users[2]);
        let earlier = store.insert_message(note(a, b)).await.unwrap().message.id;
        let victim_id = victim.id.0;
        store
            .writer
            .send(WriteMsg::Read(Box::new(move |ctx| {
                ctx.conn
                    .execute_batch(&format!(
                        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON chatcore_user_counts
                         WHEN NEW.user_id = {victim_id} BEGIN SELECT RAISE(ABORT, 'refused'); END"
                    ))
                    .unwrap();
            })))
            .unwrap();
        let transactions = store.stats().transactions;
        let results = one_batch(&store, &[(a, b), (a, victim), (b, a)]).await;
        let first = results[0].as_ref().expect("a to b commits");
        assert!(
            matches!(results[1], Err(Error::Internal { .. })),
            "{:?}",
            results[1]
        );
        let third = results[2].as_ref().expect("b to a commits");
        assert_eq!(
            (first.sender_previous.0, first.recipient_previous.0),
            (earlier.0, earlier.0)
        );
        assert_eq!(
            (third.sender_previous, third.recipient_previous),
            (Position(first.message.id.0), Position(first.message.id.0))
        );
        assert_eq!(
            store.stats().transactions,
            transactions + 2,
            "two single-job commits"
        );
        assert_eq!(store.latest_position(victim.id).await.unwrap(), Position::START);
        let page = store
            .conversation_page(a.id, &name("b"), &PageRequest::latest(10))
            .await
            .unwrap();
        assert_eq!(page.total, 3);
        let ids: Vec<i64> = page.messages.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, [third.message.id.0, first.message.id.0, earlier.0]);
        store.close().await.unwrap();
    }
}
