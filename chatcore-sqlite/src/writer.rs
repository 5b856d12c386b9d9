//! The single writer thread: opens the read-write connection, and commits every write waiting
//! at that moment in one transaction (group commit).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use chatcore::store::Inserted;
use chatcore::{
    ConversationKey, Entity, Error, Message, MessageId, NewMessage, Position, Result, User, UserId, Username,
};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use crate::config::{Location, SqliteConfig, Synchronous};
use crate::reader::{self, ReadCtx, ReadJob};
use crate::schema::{self, MigrationReport};
use crate::{chain, error, sql};

/// Where a job's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A write, kept whole until its batch commits so it can be answered (or retried alone).
pub(crate) enum WriteOp {
    CreateUser {
        username: Username,
        password_hash: Option<String>,
        reply: Reply<User>,
    },
    SetPassword {
        user: UserId,
        password_hash: String,
        reply: Reply<()>,
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
    Insert {
        message: NewMessage,
        reply: Reply<Inserted>,
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
enum Outcome {
    User(Result<User>),
    Unit(Result<()>),
    Inserted(Result<Inserted>),
}

impl WriteOp {
    fn answer(self, outcome: Outcome) {
        match (self, outcome) {
            (WriteOp::CreateUser { reply, .. }, Outcome::User(result)) => {
                let _ = reply.send(result);
            }
            (
                WriteOp::SetPassword { reply, .. }
                | WriteOp::CreateSession { reply, .. }
                | WriteOp::DeleteSession { reply, .. },
                Outcome::Unit(result),
            ) => {
                let _ = reply.send(result);
            }
            (WriteOp::Insert { reply, .. }, Outcome::Inserted(result)) => {
                let _ = reply.send(result);
            }
            (op, _) => op.fail(Error::bug("writer outcome does not match its job")),
        }
    }

    fn fail(self, error: Error) {
        match self {
            WriteOp::CreateUser { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            WriteOp::SetPassword { reply, .. }
            | WriteOp::CreateSession { reply, .. }
            | WriteOp::DeleteSession { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            WriteOp::Insert { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// Opens and configures the read-write connection, and refuses a schema newer than the code.
pub(crate) fn open_connection(config: &SqliteConfig) -> Result<Connection> {
    let conn = match &config.location {
        Location::File(path) => {
            let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            if config.create_if_missing {
                flags |= OpenFlags::SQLITE_OPEN_CREATE;
            }
            Connection::open_with_flags(path, flags).map_err(error::map)?
        }
        Location::Memory => Connection::open_in_memory().map_err(error::map)?,
    };
    configure(&conn, config).map_err(error::map)?;
    if let Location::File(_) = config.location {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(error::map)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Internal {
                message: format!("SQLite refused WAL mode (journal_mode is {mode})"),
                source: None,
            });
        }
    }
    // With a pipelined sync the writer's own commits do not wait for the disk: the sync
    // thread makes the WAL durable before anyone is answered (see `Writer::run`).
    let synchronous = if wal_path_to_sync(config).is_some() {
        Synchronous::Normal
    } else {
        config.synchronous
    };
    conn.pragma_update(None, "synchronous", synchronous.pragma_value())
        .map_err(error::map)?;
    conn.pragma_update(None, "wal_autocheckpoint", config.wal_autocheckpoint_pages)
        .map_err(error::map)?;
    // The writer checks senders itself (`Writer::sender_exists`, cached: users are never
    // deleted) instead of SQLite probing the users table twice for every message inserted.
    conn.pragma_update(None, "foreign_keys", false)
        .map_err(error::map)?;
    if let Some(pages) = config.max_page_count {
        let pages = i64::try_from(pages).unwrap_or(i64::MAX);
        conn.pragma_update(None, "max_page_count", pages)
            .map_err(error::map)?;
    }
    let version = schema::current_version(&conn).map_err(error::map)?;
    schema::check_not_newer(version)?;
    Ok(conn)
}

/// Settings every connection shares.
pub(crate) fn configure(conn: &Connection, config: &SqliteConfig) -> rusqlite::Result<()> {
    conn.busy_timeout(config.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(config.statement_cache);
    conn.pragma_update(None, "cache_size", -i64::from(config.cache_size_kib))
}

/// Opens a read-only connection for a reader thread (file databases only).
pub(crate) fn open_reader_connection(config: &SqliteConfig) -> Result<Connection> {
    let Location::File(path) = &config.location else {
        return Err(Error::bug("reader connections need a database file"));
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(error::map)?;
    configure(&conn, config).map_err(error::map)?;
    Ok(conn)
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
    max_batch: usize,
    last_timestamp: DateTime<Utc>,
    /// Names learned inside the open transaction; cached only once it commits.
    pending_names: HashMap<Username, UserId>,
    /// Ids known to be users (committed). Users are never deleted, so this never goes
    /// stale; cleared when it reaches the name cache's size.
    known_ids: HashSet<UserId>,
    known_ids_capacity: usize,
    /// Ids found inside the open transaction; cached only once it commits.
    pending_ids: HashSet<UserId>,
    /// Where each conversation's chain stands in the open transaction.
    conversation_tails: HashMap<ConversationKey, Tail>,
    /// Where each user's messages stand in the open transaction.
    user_tails: HashMap<UserId, UserTail>,
}

impl Writer {
    pub(crate) fn new(conn: Connection, config: &SqliteConfig, stats: Arc<WriterStats>) -> Self {
        let last_timestamp = latest_timestamp(&conn).unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        Self {
            ctx: ReadCtx::new(conn, config.name_cache),
            wal_to_sync: wal_path_to_sync(config),
            sync_queue: None,
            unsynced: Arc::new(Backlog::default()),
            stats,
            max_batch: config.max_batch,
            last_timestamp,
            pending_names: HashMap::new(),
            known_ids: HashSet::new(),
            known_ids_capacity: config.name_cache,
            pending_ids: HashSet::new(),
            conversation_tails: HashMap::new(),
            user_tails: HashMap::new(),
        }
    }

    /// The writer loop: block for one message, drain whatever else is waiting (up to
    /// `max_batch`), commit the writes in one transaction, answer, repeat.
    /// With a pipelined sync, a second thread makes each committed batch durable and answers
    /// it while this one already commits the next batch.
    pub(crate) fn run(mut self, queue: Receiver<WriteMsg>) {
        let Some(wal) = self.wal_to_sync.clone() else {
            return self.run_batches(&queue);
        };
        std::thread::scope(|scope| {
            let (sync_tx, sync_rx) = mpsc::channel::<Vec<Committed>>();
            let backlog = self.unsynced.clone();
            let spawned = std::thread::Builder::new()
                .name("chatcore-sqlite-sync".into())
                .spawn_scoped(scope, move || sync_and_answer(&wal, &sync_rx, &backlog));
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

    /// Without a sync thread: let SQLite sync at each commit after all.
    fn sync_in_line(&mut self) {
        self.wal_to_sync = None;
        if let Err(e) = self
            .ctx
            .conn
            .pragma_update(None, "synchronous", Synchronous::Full.pragma_value())
        {
            tracing::warn!(error = %e, "could not set synchronous=FULL");
        }
    }

    fn run_batches(&mut self, queue: &Receiver<WriteMsg>) {
        let mut ops = Vec::with_capacity(self.max_batch.min(4096));
        let mut reads = Vec::new();
        while let Ok(first) = queue.recv() {
            // Let writes pile up while the disk is behind: one bigger commit writes each
            // shared page (the newest leaf, the counters) once instead of once per small one.
            self.unsynced.wait_below(MAX_UNSYNCED_BATCHES);
            let mut stop = false;
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(msg) = next {
                taken += 1;
                match msg {
                    WriteMsg::Op(op) => ops.push(op),
                    WriteMsg::Read(job) => reads.push(job),
                    WriteMsg::Migrate(reply) => {
                        self.commit(&mut ops);
                        self.run_reads(&mut reads);
                        let now = self.next_timestamp().timestamp_micros();
                        let migrated = schema::migrate(&mut self.ctx.conn, now);
                        let _ = reply.send(migrated.and_then(|report| {
                            self.sync_now()?;
                            Ok(report)
                        }));
                    }
                    WriteMsg::Stop => {
                        stop = true;
                        break;
                    }
                }
                next = if taken < self.max_batch {
                    queue.try_recv().ok()
                } else {
                    None
                };
            }
            self.commit(&mut ops);
            self.run_reads(&mut reads);
            if stop {
                break;
            }
        }
    }

    /// Reads queued on the writer run after the writes drained with them have committed.
    fn run_reads(&mut self, reads: &mut Vec<ReadJob>) {
        for job in reads.drain(..) {
            job(&mut self.ctx);
        }
    }

    /// Commits `ops` in one transaction and answers every waiter. If the batch fails for a
    /// reason that concerns the whole database (busy, full, corrupt, I/O), every waiter gets
    /// that error; otherwise each job is retried in its own transaction so one bad job cannot
    /// fail the others.
    fn commit(&mut self, ops: &mut Vec<WriteOp>) {
        if ops.is_empty() {
            return;
        }
        match self.try_batch(ops) {
            Ok(outcomes) => {
                self.stats.transactions.fetch_add(1, Ordering::Relaxed);
                self.stats.writes.fetch_add(ops.len() as u64, Ordering::Relaxed);
                let committed = ops.drain(..).zip(outcomes).collect();
                self.answer_when_durable(committed);
            }
            Err(e) if ops.len() > 1 && !error::affects_everyone(&e) => {
                tracing::warn!(error = %e, jobs = ops.len(), "group commit failed, retrying jobs one by one");
                let mut committed = Vec::with_capacity(ops.len());
                for op in ops.drain(..) {
                    match self.try_batch(std::slice::from_ref(&op)) {
                        Ok(mut outcomes) => match outcomes.pop() {
                            Some(outcome) => committed.push((op, outcome)),
                            None => op.fail(Error::bug("writer lost a job's outcome")),
                        },
                        Err(e) => op.fail(error::map(e)),
                    }
                }
                self.answer_when_durable(committed);
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = ops.len(), "write transaction failed");
                let mut ops = ops.drain(..);
                let last = ops.next_back();
                for op in ops {
                    op.fail(error::map(error::duplicate(&e)));
                }
                if let Some(op) = last {
                    op.fail(error::map(e));
                }
            }
        }
    }

    /// Answers committed writes once they are durable: at once when SQLite synced in the
    /// commit, else through the sync thread.
    fn answer_when_durable(&mut self, committed: Vec<Committed>) {
        if committed.is_empty() {
            return;
        }
        match &self.sync_queue {
            Some(queue) => {
                self.unsynced.add(1);
                if let Err(unsent) = queue.send(committed) {
                    self.unsynced.remove(1);
                    // The sync thread is gone (it only ends after the queue closes): sync here.
                    let committed = unsent.0;
                    let synced = self.sync_now();
                    answer_all(committed, synced.as_ref().err());
                }
            }
            None => answer_all(committed, None),
        }
    }

    /// Makes everything committed so far durable (a no-op when SQLite syncs at commit).
    fn sync_now(&self) -> Result<()> {
        match &self.wal_to_sync {
            Some(wal) => sync_wal(wal, &mut None),
            None => Ok(()),
        }
    }

    /// The batch's commit time: now, but never before the previous batch's, so ids and
    /// timestamps increase together even if the clock steps back.
    fn next_timestamp(&mut self) -> DateTime<Utc> {
        let now = chatcore::now_micros();
        if now > self.last_timestamp {
            self.last_timestamp = now;
        }
        self.last_timestamp
    }

    /// One `BEGIN IMMEDIATE ... COMMIT` around every job of `ops`.
    fn try_batch(&mut self, ops: &[WriteOp]) -> rusqlite::Result<Vec<Outcome>> {
        let created_at = self.next_timestamp();
        self.pending_names.clear();
        self.pending_ids.clear();
        self.conversation_tails.clear();
        self.user_tails.clear();
        let result = self.apply_all(ops, created_at);
        match &result {
            Ok(_) => {
                for (name, id) in self.pending_names.drain() {
                    self.ctx.names_mut().insert(name, id);
                }
                if self.known_ids_capacity > 0 {
                    if self.known_ids.len() + self.pending_ids.len() > self.known_ids_capacity {
                        self.known_ids.clear();
                    }
                    self.known_ids.extend(self.pending_ids.drain());
                }
            }
            Err(_) => {
                self.pending_names.clear();
                self.pending_ids.clear();
                if !self.ctx.conn.is_autocommit()
                    && let Err(e) = self.ctx.conn.execute_batch("ROLLBACK")
                {
                    tracing::warn!(error = %e, "rollback failed");
                }
            }
        }
        result
    }

    fn apply_all(&mut self, ops: &[WriteOp], created_at: DateTime<Utc>) -> rusqlite::Result<Vec<Outcome>> {
        self.ctx.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(self.apply(op, created_at)?);
        }
        self.flush_counts()?;
        self.ctx.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(outcomes)
    }

    /// Adds the batch's counter increments and newest ids, one upsert per conversation and
    /// per user.
    fn flush_counts(&mut self) -> rusqlite::Result<()> {
        let conn = &self.ctx.conn;
        if !self.conversation_tails.is_empty() {
            let mut add = conn.prepare_cached(sql::ADD_CONVERSATION_COUNT)?;
            let mut join = conn.prepare_cached(sql::ADD_USER_CONVERSATION)?;
            for (key, tail) in self.conversation_tails.drain() {
                if tail.added == 0 {
                    continue;
                }
                let (low, high) = (key.low().0, key.high().0);
                add.execute([low, high, tail.added, tail.last_id])?;
                // A new conversation: list it under each participant, once.
                if tail.count == 0 {
                    join.execute([low, low, high])?;
                    if high != low {
                        join.execute([high, low, high])?;
                    }
                }
            }
        }
        if !self.user_tails.is_empty() {
            let mut stmt = conn.prepare_cached(sql::ADD_USER_COUNT)?;
            for (user, tail) in self.user_tails.drain() {
                if tail.added == 0 {
                    continue;
                }
                stmt.execute([user.0, tail.added, tail.last_id])?;
            }
        }
        Ok(())
    }

    /// Runs one job inside the open transaction. `Ok(Outcome(Err(..)))` is the job's own
    /// failure (taken name, unknown user) and wrote nothing; `Err` aborts the batch.
    fn apply(&mut self, op: &WriteOp, created_at: DateTime<Utc>) -> rusqlite::Result<Outcome> {
        let conn = &self.ctx.conn;
        match op {
            WriteOp::CreateUser {
                username,
                password_hash,
                ..
            } => {
                let inserted = conn
                    .prepare_cached(sql::INSERT_USER)?
                    .execute(rusqlite::params![username.as_str(), password_hash.as_deref()]);
                match inserted {
                    Ok(_) => {
                        let id = UserId(conn.last_insert_rowid());
                        self.pending_names.insert(username.clone(), id);
                        Ok(Outcome::User(Ok(User {
                            id,
                            username: username.clone(),
                        })))
                    }
                    Err(e) if is_constraint(&e) => Ok(Outcome::User(Err(Error::conflict(format!(
                        "username {username} is taken"
                    ))))),
                    Err(e) => Err(e),
                }
            }
            WriteOp::SetPassword {
                user, password_hash, ..
            } => {
                let changed = conn
                    .prepare_cached(sql::SET_PASSWORD)?
                    .execute(rusqlite::params![user.0, password_hash])?;
                Ok(Outcome::Unit(if changed == 0 {
                    Err(Error::NotFound(Entity::User))
                } else {
                    Ok(())
                }))
            }
            WriteOp::CreateSession {
                token_hash,
                user,
                expires_at,
                ..
            } => {
                let exists = conn
                    .prepare_cached(sql::USER_EXISTS)?
                    .query_row([user.0], |_| Ok(()))
                    .optional()?
                    .is_some();
                if !exists {
                    return Ok(Outcome::Unit(Err(Error::NotFound(Entity::User))));
                }
                conn.prepare_cached(sql::UPSERT_SESSION)?
                    .execute(rusqlite::params![&token_hash[..], user.0, expires_at])?;
                Ok(Outcome::Unit(Ok(())))
            }
            WriteOp::DeleteSession { token_hash, .. } => {
                conn.prepare_cached(sql::DELETE_SESSION)?
                    .execute([&token_hash[..]])?;
                Ok(Outcome::Unit(Ok(())))
            }
            WriteOp::Insert { message, .. } => Ok(Outcome::Inserted(self.insert(message, created_at)?)),
        }
    }

    fn insert(&mut self, new: &NewMessage, created_at: DateTime<Utc>) -> rusqlite::Result<Result<Inserted>> {
        let Some(recipient_id) = self.resolve_in_tx(&new.recipient)? else {
            return Ok(Err(Error::NotFound(Entity::User)));
        };
        let sender_id = new.sender.id;
        if !self.sender_exists(sender_id)? {
            return Ok(Err(Error::NotFound(Entity::User)));
        }
        let conn = &self.ctx.conn;
        if let Some(key) = &new.idempotency_key {
            let earlier = conn
                .prepare_cached(sql::IDEMPOTENT_MESSAGE)?
                .query_row(rusqlite::params![sender_id.0, key], reader::message_from_row)
                .optional()?;
            if let Some(message) = earlier {
                // The earlier message's recipient, which the retry may have named differently.
                let recipient_id = match self.resolve_in_tx(&message.recipient)? {
                    Some(id) => id,
                    None => recipient_id,
                };
                return Ok(Ok(Inserted {
                    message,
                    recipient_id,
                    replayed: true,
                    sender_previous: Position::START,
                    recipient_previous: Position::START,
                }));
            }
        }
        // Each participant's newest message before this one: ids follow commit order (one
        // writer), so it is the user's previous position (`Store` docs, "Positions").
        let sender_previous = user_tail(conn, &mut self.user_tails, sender_id)?.last_id;
        let recipient_previous = if recipient_id == sender_id {
            sender_previous
        } else {
            user_tail(conn, &mut self.user_tails, recipient_id)?.last_id
        };
        let key = ConversationKey::new(sender_id, recipient_id);
        let (low, high) = (key.low().0, key.high().0);
        let tail = match self.conversation_tails.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let (count, last_id) = chain::tail(conn, low, high)?;
                entry.insert(Tail {
                    count,
                    added: 0,
                    last_id,
                })
            }
        };
        let seq = tail.count + tail.added + 1;
        let inserted = conn
            .prepare_cached(sql::INSERT_MESSAGE)?
            .execute(rusqlite::params![
                sender_id.0,
                recipient_id.0,
                low,
                high,
                reader::datetime_to_micros(&created_at),
                new.body,
                new.idempotency_key,
                (tail.last_id > 0).then_some(tail.last_id),
                seq,
            ]);
        match inserted {
            Ok(_) => {}
            // The sender does not exist (foreign key): nothing was written.
            Err(e) if is_constraint(&e) => return Ok(Err(Error::NotFound(Entity::User))),
            Err(e) => return Err(e),
        }
        let id = conn.last_insert_rowid();
        if seq % chain::MARK_EVERY == 0 {
            conn.prepare_cached(sql::INSERT_MARK)?
                .execute([low, high, seq, id])?;
        }
        tail.added += 1;
        tail.last_id = id;
        let participants = if recipient_id == sender_id {
            &[sender_id][..]
        } else {
            &[sender_id, recipient_id][..]
        };
        for user in participants {
            // Read above, so the entry is there.
            let tail = self.user_tails.entry(*user).or_default();
            tail.added += 1;
            tail.last_id = id;
        }
        Ok(Ok(Inserted {
            message: Message {
                id: MessageId(id),
                sender: new.sender.username.clone(),
                recipient: new.recipient.clone(),
                created_at,
                body: new.body.clone(),
            },
            recipient_id,
            replayed: false,
            sender_previous: Position(sender_previous),
            recipient_previous: Position(recipient_previous),
        }))
    }

    /// Whether `id` is a user, as seen inside the open transaction. Only ids committed
    /// before this transaction are cached (a user created in it could still roll back).
    fn sender_exists(&mut self, id: UserId) -> rusqlite::Result<bool> {
        if self.known_ids.contains(&id) || self.pending_ids.contains(&id) {
            return Ok(true);
        }
        let exists = self
            .ctx
            .conn
            .prepare_cached(sql::USER_EXISTS)?
            .query_row([id.0], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            self.pending_ids.insert(id);
        }
        Ok(exists)
    }

    /// A name's id as seen inside the open transaction. Names found here are cached only
    /// after the commit, since the transaction may yet roll back a user created in it.
    fn resolve_in_tx(&mut self, name: &Username) -> rusqlite::Result<Option<UserId>> {
        if let Some(id) = self.ctx.names_mut().get(name.as_str()) {
            return Ok(Some(id));
        }
        if let Some(id) = self.pending_names.get(name.as_str()) {
            return Ok(Some(*id));
        }
        let id = self
            .ctx
            .conn
            .prepare_cached(sql::USER_ID_BY_NAME)?
            .query_row([name.as_str()], |r| r.get(0))
            .optional()?
            .map(UserId);
        if let Some(id) = id {
            self.pending_names.insert(name.clone(), id);
        }
        Ok(id)
    }
}

/// A conversation's chain in the open transaction: its message count before it, the messages
/// it added, and its newest id (`0` for none).
struct Tail {
    count: i64,
    added: i64,
    last_id: i64,
}

/// A user's messages in the open transaction: the messages it added, and the user's newest
/// id (`0` for none).
#[derive(Default)]
struct UserTail {
    added: i64,
    last_id: i64,
}

/// Where `user`'s messages stand in the open transaction: read from their counter row (a
/// primary-key lookup) the first time the batch meets them.
fn user_tail<'t>(
    conn: &Connection,
    tails: &'t mut HashMap<UserId, UserTail>,
    user: UserId,
) -> rusqlite::Result<&'t mut UserTail> {
    Ok(match tails.entry(user) {
        Entry::Occupied(entry) => entry.into_mut(),
        Entry::Vacant(entry) => {
            let last_id: i64 = conn
                .prepare_cached(sql::USER_LAST_ID)?
                .query_row([user.0], |row| row.get(0))
                .optional()?
                .unwrap_or(0);
            entry.insert(UserTail { added: 0, last_id })
        }
    })
}

/// A committed write and its answer, held until the commit is durable.
type Committed = (WriteOp, Outcome);

/// How many committed batches may wait for the sync thread before the writer waits too, so
/// commits and syncs overlap without the writer running far ahead in many small commits
/// (two halved the send rate: the writer waited with work queued).
const MAX_UNSYNCED_BATCHES: usize = 4;

/// A count of batches committed but not yet synced, which the writer can wait on.
#[derive(Default)]
struct Backlog {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Backlog {
    fn lock(&self) -> MutexGuard<'_, usize> {
        // A plain counter: a panic elsewhere cannot leave it half-updated.
        self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, n: usize) {
        *self.lock() += n;
    }

    fn remove(&self, n: usize) {
        let mut count = self.lock();
        *count = count.saturating_sub(n);
        self.changed.notify_all();
    }

    /// Blocks while `limit` or more batches are waiting.
    fn wait_below(&self, limit: usize) {
        let mut count = self.lock();
        while *count >= limit {
            count = self.changed.wait(count).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The WAL to sync from a separate thread: with [`Synchronous::Full`] on a file and
/// [`SqliteConfig::pipelined_sync`] on.
fn wal_path_to_sync(config: &SqliteConfig) -> Option<PathBuf> {
    match &config.location {
        Location::File(path) if config.synchronous == Synchronous::Full && config.pipelined_sync => {
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            Some(PathBuf::from(wal))
        }
        _ => None,
    }
}

/// The sync thread: takes every batch committed since its last sync, syncs the WAL once
/// (`fdatasync`), then answers them all. Ends when the writer closes the queue.
fn sync_and_answer(wal: &Path, queue: &Receiver<Vec<Committed>>, unsynced: &Backlog) {
    let mut file = None;
    while let Ok(first) = queue.recv() {
        let mut batches = vec![first];
        batches.extend(queue.try_iter());
        let synced = sync_wal(wal, &mut file);
        unsynced.remove(batches.len());
        if let Err(e) = &synced {
            tracing::error!(error = %e, "syncing the SQLite WAL failed; the writes it covers are reported as failed");
            // After a failed fsync the kernel may have dropped the dirty pages: reopen.
            file = None;
        }
        for committed in batches {
            answer_all(committed, synced.as_ref().err());
        }
    }
}

/// `fdatasync` of the WAL, opening it on first use. Syncing any descriptor of the file
/// flushes the writes SQLite made through its own.
fn sync_wal(wal: &Path, file: &mut Option<File>) -> Result<()> {
    let failed = |e: std::io::Error| {
        Error::storage_unavailable(std::io::Error::new(
            e.kind(),
            format!("syncing {}: {e}", wal.display()),
        ))
    };
    let wal_file = match file {
        Some(f) => f,
        None => file.insert(File::open(wal).map_err(failed)?),
    };
    wal_file.sync_data().map_err(failed)
}

/// Answers committed writes, or fails them all with a copy of `sync_error`.
fn answer_all(committed: Vec<Committed>, sync_error: Option<&Error>) {
    for (op, outcome) in committed {
        match sync_error {
            None => op.answer(outcome),
            Some(e) => op.fail(Error::storage_unavailable(format!(
                "the write committed but could not be made durable: {e}"
            ))),
        }
    }
}

/// The newest stored message's timestamp (one lookup at the end of the rowid b-tree), so
/// timestamps keep increasing with ids across restarts even if the clock stepped back.
/// `None` before the schema exists or when there are no messages.
fn latest_timestamp(conn: &Connection) -> Option<DateTime<Utc>> {
    let micros: i64 = conn
        .query_row(
            "SELECT created_at FROM chatcore_messages ORDER BY id DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .ok()?;
    reader::micros_to_datetime(micros).ok()
}

fn is_constraint(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ffi::ErrorCode::ConstraintViolation)
}
