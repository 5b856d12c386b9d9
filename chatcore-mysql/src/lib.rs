//! # chatcore-mysql
//!
//! A [`chatcore::Backend`] on MySQL or MariaDB through `sqlx`: [`chatcore::Store`] (users and
//! messages) and [`chatcore::SessionStore`] (accounts and sessions) over one database. A
//! connection pool sized and timed by [`MysqlConfig`] (checked when the store is built),
//! migrations embedded in the crate and applied when the host calls
//! [`chatcore::Backend::migrate`], and message inserts grouped into transactions by a writer
//! task (group commit) that hands out ids in commit order across every process sharing the
//! database.
//!
//! ```no_run
//! # async fn demo() -> chatcore::Result<()> {
//! use std::sync::Arc;
//! use chatcore::{Backend, ChatConfig, ChatService, LocalNotifier, SendRequest};
//! use chatcore_mysql::{MysqlConfig, MysqlStore};
//!
//! let store = MysqlStore::connect("mysql://root@127.0.0.1:3306/chat", MysqlConfig::default()).await?;
//! let report = store.migrate().await?; // explicit: the host decides when the schema changes
//! for note in &report.notes {
//!     eprintln!("chatcore migration: {note}"); // e.g. old names that now clash, see below
//! }
//! let chat = ChatService::new(Arc::new(store), Arc::new(LocalNotifier::default()), ChatConfig::default());
//! let alice = chat.create_user("alice").await?;
//! chat.create_user("bob").await?;
//! chat.send(&alice, SendRequest { recipient: "bob".into(), body: "hi 👋".into(), idempotency_key: None }).await?;
//! # Ok(()) }
//! ```
//!
//! # Schema
//! Every table is prefixed `chatcore_`, InnoDB, `utf8mb4` (emoji and every other 4-byte
//! character round-trip unchanged); the connection also speaks `utf8mb4`.
//! - `chatcore_migrations`: the versions applied by [`chatcore::Backend::migrate`]. The crate's own
//!   table, so a host's `sqlx::migrate!` (`_sqlx_migrations`) is never touched. A database
//!   whose schema is newer than this code is refused with [`chatcore::Error::Corrupt`].
//!   Version 2 moved the message id sequence from the table `chatcore_sequences` (version 1,
//!   dropped by version 2) into `chatcore_counts`, keeping its value: once a database is at
//!   version 2, every process using it must run a chatcore-mysql that knows version 2, so stop
//!   the processes of the previous version before migrating. One still running fails its sends
//!   (its table is gone) rather than hand out ids from the old sequence.
//!   Version 3 made names unique without regard to case (see `chatcore_users`); stop the
//!   processes of the previous version before migrating too: they would create users without
//!   a key, which the database now refuses.
//!   Version 4 added the inbox and read state (`chatcore_inbox`, `chatcore_read_events`, the
//!   unread totals) and filled them from the messages already stored: no read markers, every
//!   message received from someone else unread (notes to self never), each conversation
//!   ordered by its newest message. Stop the processes of the previous version before
//!   migrating: their sends would not update the inbox.
//! - `chatcore_users`: `username` (`utf8mb4_bin`) is the name as its owner chose to write it,
//!   for display; `username_key` (`VARBINARY`, unique index `chatcore_users_username_key`) is
//!   its [`chatcore::Username::key`] (lowercased NFKC, computed in Rust: MySQL has no NFKC),
//!   what names are unique by. Lookups by name (users, credentials, recipients, conversation
//!   partners) are by key, and the directory is a range of the key index in byte order (the
//!   prefix's key and the keyset cursor bound it). Names read back are trusted as stored
//!   ([`chatcore::Username::from_stored`]): they may predate today's rules.
//!
//!   Version 3 filled the key of the users made before it. Where several existing names are
//!   one name without regard to case ('Alice', 'alice'), nothing is merged and nothing is
//!   silent: the oldest user (lowest id) keeps the key; each other one gets the key followed by
//!   a NUL byte and their id, which no name produces, and the migration's
//!   [`chatcore::MigrationReport::notes`] name them all (a name too long to key is treated the
//!   same way). Those users keep their messages, can still send and appear in the directory
//!   (right after the keeper), but cannot be found by name (no login, no messages to them) until
//!   an operator renames them (`username` and `username_key` = `Username::key_of(new name)`) or
//!   deletes them.
//! - `chatcore_sessions`: the SHA-256 of each token (`BINARY(32)`, primary key), the user,
//!   the expiry (indexed for [`chatcore::SessionStore::delete_expired_sessions`]).
//! - `chatcore_messages`: primary key `id` (serves [`chatcore::Store::message_for`]);
//!   `chatcore_messages_conversation (conversation_low, conversation_high, id)`: a
//!   conversation page is one backward range; `chatcore_messages_sender (sender_id, id)` and
//!   `chatcore_messages_recipient (recipient_id, id)`: a user's messages and the catch-up are
//!   two ranges merged; `chatcore_messages_idempotency (sender_id, idempotency_key_hash)`
//!   (unique): replays. Keys are stored as SHA-256, so a key of any length fits the index.
//! - `chatcore_counts`: message totals kept by the inserting transaction, so a page's `total`
//!   is a primary-key lookup, never a count: `(low, high)` for a conversation, `(user, 0)` for
//!   a user's total, `(user, -1)` for a user's unread total (kept by the inserting transaction
//!   and by [`chatcore::Store::mark_read`]), and `(0, 0)` for the position sequence (the last
//!   message id or read event position handed out; no user has id 0), see below.
//! - `chatcore_inbox`: one row per user and conversation partner (the user themself for notes
//!   to self), primary key `(user_id, peer_id)`: `last_id` (the conversation's newest
//!   message), `unread` (messages from the peer after the marker), `read_up_to` (the user's
//!   read marker). The inserting transaction upserts one row per participant and
//!   conversation of its batch. `chatcore_inbox_activity (user_id, last_id)`: an inbox page
//!   is one backward range from the cursor, whatever the number of the user's conversations;
//!   the peer's marker is the peer's row, by primary key.
//! - `chatcore_read_events`: each read marker that moved, primary key `position` (from the
//!   same sequence as message ids), with `reader_id`, `peer_id` and `up_to`;
//!   `chatcore_read_events_reader (reader_id, position)` and `chatcore_read_events_peer
//!   (peer_id, position)`: a user's read events, as reader and as peer, in position order.
//!
//! - `chatcore_checkpoints` (version 5): feed consumers' checkpoints, primary key `name`
//!   (`VARBINARY(100)`, compared byte for byte). The host's feed
//!   ([`chatcore::Store::feed_after`]) is one statement merging two forward ranges of primary
//!   keys (`chatcore_messages.id`, `chatcore_read_events.position`): positions are committed
//!   in order across all users (below), so its one view never holds a position without every
//!   smaller one.
//!
//! # Ids in commit order
//! A reconnecting client asks for the messages after the last id it saw. With
//! `AUTO_INCREMENT`, a transaction that took id 10 can commit after one that took id 11; a
//! client that read 11 in between would never see 10. Here every inserting transaction
//! first locks the id sequence row `(0, 0)` of `chatcore_counts` (the first row of the upsert
//! that adds to the counters, which advances it by the size of its batch and hands back the
//! reserved ids) and holds that lock until it commits.
//! The next transaction, in this process or any other sharing the database, gets its ids only
//! after that commit, so ids are handed out in commit order, and a reader that has seen id `n`
//! could already see every id below `n`. `tests/commit_order.rs` checks it: several stores
//! (as several processes would) write while a client keeps reconnecting with its last id and
//! misses nothing; and a transaction holding an uncommitted id holds back every later one.
//!
//! The lock is one row per batch, not per message, and it is held only while the server runs
//! the transaction: a batch's whole transaction (`BEGIN`, one upsert that reserves the ids and
//! adds to the counters, read the clock, insert the messages, `COMMIT`) is one multi-statement
//! round trip, with every
//! value in it an integer or a hex literal. Inside one process, sends are queued to
//! [`MysqlConfig::writers`] writer tasks that store up to [`MysqlConfig::max_batch`] pending
//! messages per transaction (group commit): the throughput comes from there. Timestamps are the
//! server's clock read under the lock, so they follow id order too.
//!
//! The same order gives each participant's previous position
//! ([`chatcore::Inserted::sender_previous`]): every id up to the last one handed out before a
//! batch was committed before it, so the batch's round trip ends (after its `COMMIT`) with a
//! read, for each user it involves, of their largest id up to there: backward reads of
//! `chatcore_messages_sender` and `chatcore_messages_recipient` from the user's newest entry,
//! which pass over only what was committed since the batch took its ids, never the user's
//! history. The writer links the batch's own messages in id order from those; no column is
//! kept for it. [`chatcore::Store::latest_position`] is four index dives (`MAX` on each of the
//! message and read event indexes above).
//!
//! # Read markers
//! A read marker that moves is a durable event of both users ([`chatcore::Store::mark_read`]),
//! at a position from the same sequence: its transaction locks the sequence row first, as a
//! batch does, and holds it until it commits, so read events and messages share one commit
//! order. The same transaction reads the user's inbox row, counts the peer's messages the
//! marker passes over (a range of `chatcore_messages_conversation` between the old marker and
//! the new one, never the whole conversation), moves the marker, lowers the unread count and
//! total by that many and stores the event; it is one multi-statement round trip whose
//! statements write only when the marker moves (the server decides, in session variables),
//! ending after `COMMIT` with a read of both users' previous positions, as a batch does.
//! [`chatcore::Store::events_after`] is one statement (one consistent view): the merge of four
//! forward ranges, the user's messages as sender and as recipient and their read events as
//! reader and as peer.
//!
//! # Errors
//! A server that is down, unreachable, out of connections or timing out is
//! [`chatcore::Error::Unavailable`] (HTTP 503); the pool reconnects by itself once it is back.
//! Connections are pinged before use only after lying idle for
//! [`MysqlConfig::ping_if_idle_for`], so right after a server restart a call can meet a dead
//! connection: a read then retries once, a send fails with `Unavailable`, and the dead
//! connection is dropped.
//! A taken username (in any case) is [`chatcore::Error::Conflict`]. After
//! [`chatcore::Backend::close`] (which lets the sends already made finish first), every call is
//! `Unavailable`. A [`MysqlConfig`] that makes no sense, or a malformed URL, is
//! [`chatcore::Error::Invalid`] from [`MysqlStore::connect`]. Anything else is
//! [`chatcore::Error::Internal`] (or `Corrupt` for rows that do not decode) with the `sqlx`
//! error kept as its source.
//!
//! # Layout
//! - `lib.rs`: [`MysqlStore`], its [`chatcore::Backend`] (lifecycle), [`chatcore::Store`] (the
//!   reads) and [`chatcore::SessionStore`] implementations.
//! - `config.rs`: [`MysqlConfig`] and its checks.
//! - `writer.rs`: the group-commit writer tasks behind `insert_message`.
//! - `marks.rs`: the transaction behind `mark_read`.
//! - `changes.rs`: the transaction behind `change_message` (edits and deletions).
//! - `blocks.rs`: the transaction behind `set_block`, and how blocks stay in step with sends.
//! - `rows.rs`: the read queries (each with the index it uses) and row decoding.
//! - `schema.rs`: the embedded migrations and their runner.
//! - `username_keys.rs`: migration 3's Rust step, filling `username_key` and keeping apart
//!   names that now clash.
//! - `error.rs`: mapping `sqlx` errors to [`chatcore::Error`].
//! - `testing.rs`: [`testing::TestDatabase`], throwaway databases for tests and benchmarks.
//! - `plans.rs` (tests only): `EXPLAIN` of every query on a loaded database: index ranges,
//!   no full scan, no sort.
//! - `tests/`: both conformance suites, commit order under concurrent writers, migrations, a
//!   private MariaDB stopped and restarted (and configurations refused at connect), and
//!   closing with idle writers; `benches/mysql.rs`: sends and pages (figures in
//!   `BENCHMARKS-mysql.md`); `benches/inbox.rs`: inbox pages and read markers (figures in the
//!   workspace's `BENCHMARKS.md`). Every test and bench run uses its own database and drops it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod blocks;
mod changes;
mod config;
mod error;
mod marks;
mod rows;
mod schema;
pub mod testing;
mod username_keys;
mod writer;

#[cfg(test)]
mod plans;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{ConnectOptions, Connection, Executor, MySql, Row};
use tokio::sync::{RwLock, mpsc, oneshot};

use chatcore::metrics::StoreMetrics;
use chatcore::store::check_checkpoint_name;
use chatcore::{
    Backend, BlockQuery, BoxError, Changed, Credentials, Entity, Error, InboxPage, InboxRequest, Inserted,
    MarkedRead, Message, MessageChange, MessageId, MessagePage, MigrationReport, NewMessage, PageRequest,
    Position, Result, SessionRecord, SessionStore, Store, StoredEvent, TokenHash, User, UserId, UserQuery,
    Username,
};

pub use config::MysqlConfig;

/// A [`chatcore::Backend`] on MySQL/MariaDB: [`chatcore::Store`] and
/// [`chatcore::SessionStore`] over one database. Cheap to share behind an `Arc`; dropping the
/// last handle stops its writer tasks once the queued sends are stored.
///
/// Needs a Tokio runtime: [`MysqlStore::connect`] spawns the writer tasks on the current one.
#[derive(Debug, Clone)]
pub struct MysqlStore {
    pool: MySqlPool,
    /// Records the reads' and statements' waits for a connection.
    metrics: StoreMetrics,
    writer: mpsc::Sender<writer::Pending>,
    config: MysqlConfig,
    lifecycle: Arc<Lifecycle>,
}

/// What [`Backend::close`] needs: sends in flight finish before the pool closes, and none
/// starts after.
#[derive(Debug, Default)]
struct Lifecycle {
    closed: AtomicBool,
    /// Held shared by each send until it is answered, exclusively by `close`.
    sends: RwLock<()>,
}

/// The error of a call made after [`Backend::close`].
#[derive(Debug)]
struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the MySQL store is closed")
    }
}

impl std::error::Error for Closed {}

impl MysqlStore {
    /// Opens a pool to `url` (`mysql://user:password@host:port/database`) and checks that the
    /// server answers. The database must exist; call [`Backend::migrate`] before use.
    ///
    /// A malformed URL or a [`MysqlConfig`] that makes no sense (see
    /// [`MysqlConfig::validate`]) is [`Error::Invalid`]; a server that does not answer within
    /// [`MysqlConfig::acquire_timeout`] is [`Error::Unavailable`].
    ///
    /// ```no_run
    /// # async fn demo() -> chatcore::Result<()> {
    /// let store = chatcore_mysql::MysqlStore::connect("mysql://root@127.0.0.1:3306/chat", Default::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, config: MysqlConfig) -> Result<Self> {
        config.validate()?;
        if !(url.starts_with("mysql://") || url.starts_with("mariadb://")) {
            return Err(Error::invalid(
                "invalid MySQL URL: it must start with mysql:// or mariadb://",
            ));
        }
        // The parser's message names what is wrong (port, parameter) for the operator; a
        // URL is input, so this is `Invalid`, which carries a message rather than a source.
        let options = MySqlConnectOptions::from_str(url)
            .map_err(|e| Error::invalid(format!("invalid MySQL URL: {e}")))?;
        let store = Self::connect_with(options, config)?;
        store.ping().await?;
        Ok(store)
    }

    /// Like [`MysqlStore::connect`] with parsed options, without checking the server: the first
    /// call that needs a connection opens one. The charset is forced to `utf8mb4`. A
    /// [`MysqlConfig`] that makes no sense is [`Error::Invalid`].
    pub fn connect_with(options: MySqlConnectOptions, config: MysqlConfig) -> Result<Self> {
        config.validate()?;
        let options = options
            .charset("utf8mb4")
            .collation("utf8mb4_bin")
            .timezone(Some("+00:00".to_owned()))
            .statement_cache_capacity(config.statement_cache_capacity)
            .log_statements(tracing::log::LevelFilter::Trace);
        let ping_if_idle_for = config.ping_if_idle_for;
        let pool = MySqlPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(config.acquire_timeout)
            .idle_timeout(config.idle_timeout)
            .max_lifetime(config.max_lifetime)
            // The pool pings every connection handed back to it; pinging again on checkout
            // would add a round trip to every read and every writer batch. Only a connection
            // idle long enough for the server to have gone away meanwhile is pinged.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= ping_if_idle_for {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            // Strict mode whatever the server's default: a bad value is an error, never a
            // silently adjusted row (the insert transaction relies on it).
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')")
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        let writer = writer::spawn(pool.clone(), &config);
        Ok(Self {
            pool,
            metrics: StoreMetrics::register("mysql"),
            writer,
            config,
            lifecycle: Arc::default(),
        })
    }

    /// Checks that the server answers.
    pub async fn ping(&self) -> Result<()> {
        let ping = self.execute(sqlx::query("SELECT 1"));
        bounded(self.config.statement_timeout, "pinging MySQL", async {
            ping.await.map_err(|e| error::map("pinging MySQL", e))
        })
        .await?;
        Ok(())
    }

    /// The newest schema version this code knows (what [`Backend::migrate`] brings a
    /// database to).
    pub fn schema_version() -> u32 {
        // Versions are small positive constants (`schema::MIGRATIONS`).
        schema::latest_version() as u32
    }

    /// The pool, for hosts that want to share it or inspect it.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The configuration in force.
    pub fn config(&self) -> &MysqlConfig {
        &self.config
    }
}

#[async_trait]
impl Backend for MysqlStore {
    /// Applies the embedded migrations this database lacks and reports the versions before
    /// and after (equal when the schema is current), with notes for the operator: version 3
    /// reports every pair of existing names that are one name without regard to case (kept
    /// apart, see the crate docs). Safe to call from several processes at once (they take
    /// turns through a named lock) and on every start-up. Records versions in
    /// `chatcore_migrations` only; a schema newer than this code is [`Error::Corrupt`].
    /// Processes running an older chatcore-mysql must be stopped before migrating (the crate
    /// docs say why, per version).
    ///
    /// ```no_run
    /// # async fn demo(store: chatcore_mysql::MysqlStore) -> chatcore::Result<()> {
    /// use chatcore::Backend;
    /// let report = store.migrate().await?;
    /// println!("chatcore schema {} -> {}", report.previous, report.current);
    /// for note in &report.notes {
    ///     eprintln!("chatcore migration: {note}");
    /// }
    /// # Ok(()) }
    /// ```
    async fn migrate(&self) -> Result<MigrationReport> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| error::map("connecting to migrate", e))?;
        // GET_LOCK counts whole seconds; a shorter timeout waits one.
        let timeout = self.config.migration_lock_timeout;
        let lock_secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        schema::migrate(&mut conn, lock_secs).await
    }

    /// Lets the sends already made finish, then closes the pool: later calls fail with
    /// [`Error::Unavailable`].
    async fn close(&self) -> Result<()> {
        self.lifecycle.closed.store(true, Ordering::Release);
        // Waits for every send in flight to be answered; sends made from now on see `closed`.
        let _no_sends = self.lifecycle.sends.write().await;
        self.pool.close().await;
        Ok(())
    }
}

/// Runs a read query on a pooled connection ([`MysqlStore::connection`], the wait recorded),
/// and once more if it failed on a dead connection: one the pool handed out without a ping
/// (used within [`MysqlConfig::ping_if_idle_for`]) after the server restarted. The failed
/// connection is closed, not handed back, so the second try gets a live one or a new one.
/// Only reads are retried: a write may have happened before the connection broke. Both tries
/// together are bounded by [`MysqlConfig::statement_timeout`].
///
/// `read!(store, "what it does", |conn| query.fetch_one(conn))` is a future of
/// `Result<T>`. A macro, not a function taking a closure: the query borrows the connection,
/// which a closure's future cannot do and stay `Send` for `async_trait`.
macro_rules! read {
    ($store:expr, $context:expr, |$conn:ident| $query:expr $(,)?) => {
        bounded($store.config.statement_timeout, $context, async {
            let mut pooled = $store.connection().await.map_err(|e| error::map($context, e))?;
            let outcome = {
                let $conn = &mut *pooled;
                $query.await
            };
            match outcome {
                Ok(found) => Ok(found),
                Err(sqlx::Error::Io(_)) => {
                    pooled.close_on_drop();
                    drop(pooled);
                    let mut pooled = $store.connection().await.map_err(|e| error::map($context, e))?;
                    let $conn = &mut *pooled;
                    $query.await.map_err(|e| error::map($context, e))
                }
                Err(e) => Err(error::map($context, e)),
            }
        })
    };
}

/// `call` within `limit` ([`MysqlConfig::statement_timeout`]), else [`Error::Unavailable`];
/// dropping it drops the connection it was using, so a hung server holds none of ours.
async fn bounded<T>(
    limit: std::time::Duration,
    context: &'static str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::storage_unavailable(error::NoAnswer { context, limit })),
    }
}

fn corrupt(err: BoxError) -> Error {
    Error::Corrupt {
        message: "a stored row does not decode".to_owned(),
        source: Some(err),
    }
}

fn decode_users(rows: &[sqlx::mysql::MySqlRow]) -> Result<Vec<User>> {
    rows.iter().map(|row| rows::user(row).map_err(corrupt)).collect()
}

/// `before` as an exclusive upper bound on ids.
fn upper_bound(page: &PageRequest) -> i64 {
    page.before.map_or(i64::MAX, |id| id.0)
}

#[async_trait]
impl Store for MysqlStore {
    async fn create_user(&self, username: &Username) -> Result<User> {
        self.insert_user(username, None).await
    }

    async fn find_user(&self, username: &Username) -> Result<Option<User>> {
        let key = username.key();
        let row = read!(self, "finding a user", |conn| {
            sqlx::query(rows::FIND_USER)
                .bind(key.as_bytes())
                .fetch_optional(conn)
        })
        .await?;
        row.map(|row| rows::user(&row).map_err(corrupt)).transpose()
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>> {
        let pattern = rows::like_prefix(&query.prefix);
        let after_key = query.after.as_ref().map(Username::key).unwrap_or_default();
        let rows = read!(self, "listing users", |conn| {
            sqlx::query(rows::LIST_USERS)
                .bind(pattern.as_bytes())
                .bind(after_key.as_bytes())
                .bind(query.after.as_ref().map(Username::as_str))
                .bind(after_key.as_bytes())
                .bind(query.exclude.map_or(0, |id| id.0))
                .bind(query.limit)
                .fetch_all(conn)
        })
        .await?;
        decode_users(&rows)
    }

    async fn insert_message(&self, message: NewMessage) -> Result<Inserted> {
        // Held until the send is answered, so `close` waits for it.
        let _open = self.lifecycle.sends.read().await;
        if self.lifecycle.closed.load(Ordering::Acquire) {
            return Err(Error::storage_unavailable(Closed));
        }
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(writer::Pending { new: message, reply })
            .await
            .map_err(|_| Error::bug("the MySQL writer tasks have stopped"))?;
        bounded(self.config.statement_timeout, "sending a message", async {
            answer
                .await
                .map_err(|_| Error::bug("a MySQL writer task ended without answering"))?
        })
        .await
    }

    async fn message_for(&self, viewer: UserId, id: MessageId) -> Result<Option<Message>> {
        let row = read!(self, "reading a message", |conn| {
            sqlx::query(rows::MESSAGE_FOR)
                .bind(id.0)
                .bind(viewer.0)
                .bind(viewer.0)
                .fetch_optional(conn)
        })
        .await?;
        row.map(|row| rows::message(&row).map_err(corrupt)).transpose()
    }

    async fn conversation_page(
        &self,
        viewer: UserId,
        other: &Username,
        page: &PageRequest,
    ) -> Result<MessagePage> {
        let other = other.key();
        let other = other.as_bytes();
        let rows = read!(self, "reading a conversation", |conn| {
            sqlx::query(rows::CONVERSATION_PAGE)
                .bind(viewer.0)
                .bind(viewer.0)
                .bind(other)
                .bind(viewer.0)
                .bind(other)
                .bind(viewer.0)
                .bind(other)
                .bind(upper_bound(page))
                .bind(page.limit)
                .bind(page.offset)
                .fetch_all(conn)
        })
        .await?;
        let mut found_other = false;
        let mut total = 0;
        let mut messages = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: Option<i64> = row.try_get("id").map_err(|e| corrupt(Box::new(e)))?;
            if id.is_some() {
                messages.push(rows::message(row).map_err(corrupt)?);
            } else {
                found_other = true;
                let stored: Option<i64> = row.try_get("total").map_err(|e| corrupt(Box::new(e)))?;
                // No counter row: no message yet. A negative one is corrupt, not zero.
                total = u64::try_from(stored.unwrap_or(0)).map_err(|e| corrupt(Box::new(e)))?;
            }
        }
        if !found_other {
            return Err(Error::NotFound(Entity::User));
        }
        // UNION ALL does not promise to keep the branch order.
        messages.sort_unstable_by_key(|m| std::cmp::Reverse(m.id));
        Ok(MessagePage { messages, total })
    }

    async fn user_messages(&self, user: UserId, page: &PageRequest) -> Result<MessagePage> {
        let before = upper_bound(page);
        let window = u64::from(page.offset) + u64::from(page.limit);
        let rows = read!(self, "reading a user's messages", |conn| {
            sqlx::query(rows::USER_MESSAGES)
                .bind(user.0)
                .bind(user.0)
                .bind(before)
                .bind(window)
                .bind(user.0)
                .bind(user.0)
                .bind(before)
                .bind(window)
                .bind(page.limit)
                .bind(page.offset)
                .fetch_all(conn)
        })
        .await?;
        let mut total = 0;
        let mut messages = Vec::with_capacity(rows.len());
        for row in &rows {
            let stored: Option<i64> = row.try_get("total").map_err(|e| corrupt(Box::new(e)))?;
            // No counter row: no message yet. A negative one is corrupt, not zero.
            total = u64::try_from(stored.unwrap_or(0)).map_err(|e| corrupt(Box::new(e)))?;
            let id: Option<i64> = row.try_get("id").map_err(|e| corrupt(Box::new(e)))?;
            if id.is_some() {
                messages.push(rows::message(row).map_err(corrupt)?);
            }
        }
        messages.sort_unstable_by_key(|m| std::cmp::Reverse(m.id));
        Ok(MessagePage { messages, total })
    }

    async fn messages_after(&self, user: UserId, after: MessageId, limit: u32) -> Result<Vec<Message>> {
        let rows = read!(self, "catching up", |conn| {
            sqlx::query(rows::MESSAGES_AFTER)
                .bind(user.0)
                .bind(after.0)
                .bind(limit)
                .bind(user.0)
                .bind(user.0)
                .bind(after.0)
                .bind(limit)
                .bind(limit)
                .fetch_all(conn)
        })
        .await?;
        let mut messages = rows
            .iter()
            .map(|row| rows::message(row).map_err(corrupt))
            .collect::<Result<Vec<_>>>()?;
        messages.sort_unstable_by_key(|m| m.id);
        Ok(messages)
    }

    async fn latest_position(&self, user: UserId) -> Result<Position> {
        let latest: Option<i64> = read!(self, "reading a user's latest position", |conn| {
            sqlx::query_scalar(rows::LATEST_POSITION)
                .bind(user.0)
                .bind(user.0)
                .bind(user.0)
                .bind(user.0)
                .fetch_one(conn)
        },)
        .await?;
        Ok(Position(latest.unwrap_or(0)))
    }

    async fn events_after(&self, user: UserId, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = read!(self, "catching up on events", |conn| {
            sqlx::query(rows::EVENTS_AFTER)
                .bind(user.0)
                .bind(after.0)
                .bind(limit)
                .bind(user.0)
                .bind(user.0)
                .bind(after.0)
                .bind(limit)
                .bind(user.0)
                .bind(after.0)
                .bind(limit)
                .bind(user.0)
                .bind(user.0)
                .bind(after.0)
                .bind(limit)
                .bind(limit)
                .fetch_all(conn)
        })
        .await?;
        events_in_order(&rows)
    }

    async fn inbox(&self, user: UserId, request: &InboxRequest) -> Result<InboxPage> {
        let before = request.before.map_or(i64::MAX, |id| id.0);
        let rows = read!(self, "reading an inbox", |conn| {
            sqlx::query(rows::INBOX_PAGE)
                .bind(user.0)
                .bind(user.0)
                .bind(before)
                .bind(request.limit)
                .fetch_all(conn)
        })
        .await?;
        let mut page = InboxPage::default();
        for row in &rows {
            let total: Option<i64> = row.try_get("unread_total").map_err(|e| corrupt(Box::new(e)))?;
            // No counter row: nothing was ever received. A negative one is corrupt, not zero.
            page.unread_total = u64::try_from(total.unwrap_or(0)).map_err(|e| corrupt(Box::new(e)))?;
            if let Some(conversation) = rows::conversation(row).map_err(corrupt)? {
                page.conversations.push(conversation);
            }
        }
        page.conversations
            .sort_unstable_by_key(|c| std::cmp::Reverse(c.last_message.id));
        Ok(page)
    }

    async fn mark_read(&self, reader: &User, peer: &Username, up_to: MessageId) -> Result<MarkedRead> {
        // Past the deadline the transaction's connection is dropped with the future: the
        // server rolls it back, and the caller may retry (marks are idempotent).
        bounded(self.config.statement_timeout, "marking read", async {
            let mut conn = self
                .connection()
                .await
                .map_err(|e| error::map("connecting to mark read", e))?;
            match marks::mark_read(&mut conn, reader, peer, up_to).await {
                Ok(outcome) => outcome,
                Err(err) => Err(marks::fail(conn, err).await),
            }
        })
        .await
    }

    async fn change_message(&self, sender: UserId, id: MessageId, change: &MessageChange) -> Result<Changed> {
        // As `mark_read`: past the deadline the connection is dropped with the future and the
        // server rolls the transaction back.
        bounded(self.config.statement_timeout, "changing a message", async {
            let mut conn = self
                .connection()
                .await
                .map_err(|e| error::map("connecting to change a message", e))?;
            match changes::change_message(&mut conn, sender, id, change).await {
                Ok(outcome) => outcome,
                Err(err) => Err(marks::fail(conn, err).await),
            }
        })
        .await
    }

    async fn set_block(&self, blocker: UserId, blocked: &Username, on: bool) -> Result<User> {
        // As `mark_read`: past the deadline the connection is dropped with the future and the
        // server rolls the transaction back.
        bounded(self.config.statement_timeout, "blocking", async {
            let mut conn = self
                .connection()
                .await
                .map_err(|e| error::map("connecting to block", e))?;
            match blocks::set_block(&mut conn, blocker, blocked, on).await {
                Ok(outcome) => outcome,
                Err(err) => Err(marks::fail(conn, err).await),
            }
        })
        .await
    }

    async fn blocked_users(&self, user: UserId, query: &BlockQuery) -> Result<Vec<User>> {
        let after = query.after.as_ref().map(Username::key).unwrap_or_default();
        let rows = read!(self, "listing blocks", |conn| {
            sqlx::query(rows::BLOCKED_USERS)
                .bind(user.0)
                .bind(after.as_bytes())
                .bind(query.limit)
                .fetch_all(conn)
        })
        .await?;
        decode_users(&rows)
    }

    async fn reachable_peer(&self, user: UserId, peer: &Username) -> Result<Option<UserId>> {
        let key = peer.key();
        let id: Option<i64> = read!(self, "finding a peer", |conn| {
            sqlx::query_scalar(rows::REACHABLE_PEER)
                .bind(user.0)
                .bind(user.0)
                .bind(user.0)
                .bind(key.as_bytes())
                .bind(user.0)
                .fetch_optional(conn)
        })
        .await?;
        Ok(id.map(UserId))
    }

    async fn conversation_peers(&self, user: UserId, among: &[UserId]) -> Result<Vec<UserId>> {
        if among.is_empty() {
            return Ok(Vec::new());
        }
        // Integers written into the SQL: a text query, one round trip.
        let mut sql = String::with_capacity(rows::CONVERSATION_PEERS.len() + 32 + 21 * among.len());
        sql.push_str(rows::CONVERSATION_PEERS);
        sql.push_str(&user.0.to_string());
        sql.push_str(" AND peer_id IN (");
        for (n, peer) in among.iter().enumerate() {
            if n > 0 {
                sql.push(',');
            }
            sql.push_str(&peer.0.to_string());
        }
        sql.push(')');
        let rows = read!(self, "finding conversations", |conn| {
            Executor::fetch_all(conn, sqlx::raw_sql(&sql))
        })
        .await?;
        rows.iter()
            .map(|row| row.try_get_unchecked::<i64, _>(0).map(UserId))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| corrupt(Box::new(e)))
    }

    async fn feed_after(&self, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = read!(self, "reading the event feed", |conn| {
            sqlx::query(rows::FEED_AFTER)
                .bind(after.0)
                .bind(limit)
                .bind(after.0)
                .bind(limit)
                .bind(limit)
                .fetch_all(conn)
        })
        .await?;
        events_in_order(&rows)
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Position> {
        check_checkpoint_name(name)?;
        let position: Option<i64> = read!(self, "reading a checkpoint", |conn| {
            sqlx::query_scalar(rows::LOAD_CHECKPOINT)
                .bind(name.as_bytes())
                .fetch_optional(conn)
        })
        .await?;
        Ok(Position(position.unwrap_or(0)))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        check_checkpoint_name(name)?;
        let save = self.execute(
            sqlx::query(rows::SAVE_CHECKPOINT)
                .bind(name.as_bytes())
                .bind(position.0),
        );
        bounded(self.config.statement_timeout, "saving a checkpoint", async {
            save.await.map_err(|e| error::map("saving a checkpoint", e))
        })
        .await?;
        Ok(())
    }

    async fn remove_user(&self, user: UserId) -> Result<()> {
        const CONTEXT: &str = "removing an account";
        let map = |e| error::map(CONTEXT, e);
        // The user row is locked first (exclusive): a batch of sends holds it shared from its
        // check of the senders to its commit (`writer.rs`), so this waits for those and every
        // later one sees the removal.
        bounded(self.config.statement_timeout, CONTEXT, async {
            let mut conn = self.connection().await.map_err(map)?;
            let mut tx = conn.begin().await.map_err(map)?;
            let found: Option<i64> =
                sqlx::query_scalar("SELECT id FROM chatcore_users WHERE id = ? FOR UPDATE")
                    .bind(user.0)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map)?;
            if found.is_none() {
                return Err(Error::NotFound(Entity::User));
            }
            sqlx::query(
                "UPDATE chatcore_users SET removed_at = IFNULL(removed_at, UTC_TIMESTAMP(6)), \
                 password_hash = NULL WHERE id = ?",
            )
            .bind(user.0)
            .execute(&mut *tx)
            .await
            .map_err(map)?;
            sqlx::query("DELETE FROM chatcore_sessions WHERE user_id = ?")
                .bind(user.0)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
            tx.commit().await.map_err(map)
        })
        .await
    }

    async fn delete_sent_messages(
        &self,
        sender: UserId,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<Changed>> {
        let ids: Vec<i64> = read!(self, "finding a sender's messages", |conn| {
            sqlx::query_scalar(rows::SENT_TO_DELETE)
                .bind(sender.0)
                .bind(after.0)
                .bind(limit)
                .fetch_all(conn)
        })
        .await?;
        // Each deletion is its own transaction with its event (`changes.rs`), as one
        // `change_message`: a batch holds no lock across round trips.
        let mut changed = Vec::with_capacity(ids.len());
        for id in ids {
            changed.push(
                self.change_message(sender, MessageId(id), &MessageChange::Delete)
                    .await?,
            );
        }
        Ok(changed)
    }
}

/// The events of rows of [`rows::EVENTS_AFTER`] or [`rows::FEED_AFTER`], by position.
fn events_in_order(rows: &[sqlx::mysql::MySqlRow]) -> Result<Vec<StoredEvent>> {
    let mut events = rows
        .iter()
        .map(|row| rows::event(row).map_err(corrupt))
        .collect::<Result<Vec<_>>>()?;
    // UNION ALL does not promise to keep the order of its `ORDER BY` either.
    events.sort_unstable_by_key(StoredEvent::position);
    Ok(events)
}

#[async_trait]
impl SessionStore for MysqlStore {
    async fn create_account(&self, username: &Username, password_hash: &str) -> Result<User> {
        self.insert_user(username, Some(password_hash)).await
    }

    async fn credentials(&self, username: &Username) -> Result<Option<Credentials>> {
        let key = username.key();
        let row = read!(self, "reading credentials", |conn| {
            sqlx::query(rows::CREDENTIALS)
                .bind(key.as_bytes())
                .fetch_optional(conn)
        })
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Credentials {
            user: rows::user(&row).map_err(corrupt)?,
            password_hash: rows::text_opt(&row, "password_hash").map_err(corrupt)?,
        }))
    }

    async fn create_session(
        &self,
        token_hash: &TokenHash,
        user: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        const CONTEXT: &str = "creating a session";
        let insert = self.execute(
            sqlx::query(rows::CREATE_SESSION)
                .bind(token_hash.as_slice())
                .bind(expires_at.naive_utc())
                .bind(user.0),
        );
        let done = bounded(self.config.statement_timeout, CONTEXT, async {
            insert.await.map_err(|e| error::map(CONTEXT, e))
        })
        .await?;
        if done.rows_affected() > 0 {
            return Ok(());
        }
        // Nothing written: no such user (or removed), or the same session again.
        let same: Option<i64> = read!(self, CONTEXT, |conn| {
            sqlx::query_scalar("SELECT user_id FROM chatcore_sessions WHERE token_hash = ? AND user_id = ?")
                .bind(token_hash.as_slice())
                .bind(user.0)
                .fetch_optional(conn)
        })
        .await?;
        same.map(|_| ()).ok_or(Error::NotFound(Entity::User))
    }

    async fn session_user(
        &self,
        token_hash: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>> {
        let row = read!(self, "reading a session", |conn| {
            sqlx::query(rows::SESSION_USER)
                .bind(token_hash.as_slice())
                .bind(now.naive_utc())
                .fetch_optional(conn)
        })
        .await?;
        let Some(row) = row else { return Ok(None) };
        let expires_at: chrono::NaiveDateTime =
            row.try_get("expires_at").map_err(|e| corrupt(Box::new(e)))?;
        Ok(Some(SessionRecord {
            user: rows::user(&row).map_err(corrupt)?,
            expires_at: expires_at.and_utc(),
        }))
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<()> {
        let delete = self.execute(
            sqlx::query("DELETE FROM chatcore_sessions WHERE token_hash = ?").bind(token_hash.as_slice()),
        );
        bounded(self.config.statement_timeout, "deleting a session", async {
            delete.await.map_err(|e| error::map("deleting a session", e))
        })
        .await?;
        Ok(())
    }

    async fn delete_user_sessions(&self, user: UserId) -> Result<u64> {
        // A range of the foreign key's index on `user_id`.
        let delete =
            self.execute(sqlx::query("DELETE FROM chatcore_sessions WHERE user_id = ?").bind(user.0));
        let done = bounded(self.config.statement_timeout, "ending a user's sessions", async {
            delete
                .await
                .map_err(|e| error::map("ending a user's sessions", e))
        })
        .await?;
        Ok(done.rows_affected())
    }

    async fn set_password_hash(&self, username: &Username, password_hash: &str) -> Result<User> {
        const CONTEXT: &str = "setting a password";
        let key = username.key();
        let row = read!(self, CONTEXT, |conn| {
            sqlx::query(
                "SELECT id, username FROM chatcore_users WHERE username_key = ? AND removed_at IS NULL",
            )
            .bind(key.as_bytes())
            .fetch_optional(conn)
        })
        .await?;
        let user = rows::user(&row.ok_or(Error::NotFound(Entity::User))?).map_err(corrupt)?;
        // MySQL counts changed rows: the same hash again changes none, so the row found
        // above answers, and a removal in between is checked by the condition.
        let update = self.execute(
            sqlx::query(rows::SET_PASSWORD_HASH)
                .bind(password_hash)
                .bind(key.as_bytes()),
        );
        bounded(self.config.statement_timeout, CONTEXT, async {
            update.await.map_err(|e| error::map(CONTEXT, e))
        })
        .await?;
        Ok(user)
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        // A range of `chatcore_sessions_expires`.
        let delete = self.execute(sqlx::query(rows::DELETE_EXPIRED_SESSIONS).bind(now.naive_utc()));
        let done = bounded(
            self.config.statement_timeout,
            "deleting expired sessions",
            async {
                delete
                    .await
                    .map_err(|e| error::map("deleting expired sessions", e))
            },
        )
        .await?;
        Ok(done.rows_affected())
    }
}

impl MysqlStore {
    /// A connection from the pool; the wait for it is recorded
    /// (`chatcore_store_pool_wait_seconds`).
    async fn connection(&self) -> std::result::Result<PoolConnection<MySql>, sqlx::Error> {
        let waiting = std::time::Instant::now();
        let acquired = self.pool.acquire().await;
        self.metrics.waited_for_connection(waiting.elapsed());
        acquired
    }

    /// Runs a write statement on a pooled connection ([`MysqlStore::connection`]); the
    /// caller bounds it in time.
    async fn execute<'q>(
        &self,
        query: sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>,
    ) -> std::result::Result<sqlx::mysql::MySqlQueryResult, sqlx::Error> {
        let mut conn = self.connection().await?;
        query.execute(&mut *conn).await
    }

    /// Inserts a user under `username`, keyed by [`Username::key`]; a taken key (or name) is
    /// [`Error::Conflict`].
    async fn insert_user(&self, username: &Username, password_hash: Option<&str>) -> Result<User> {
        let key = username.key().into_bytes();
        let insert = self.execute(
            sqlx::query(
                "INSERT INTO chatcore_users (username, username_key, password_hash, created_at) \
             VALUES (?, ?, ?, UTC_TIMESTAMP(6))",
            )
            .bind(username.as_str())
            .bind(key)
            .bind(password_hash),
        );
        let done = bounded(self.config.statement_timeout, "creating a user", async {
            insert.await.map_err(|e| match error::server_code(&e) {
                Some(error::code::DUP_ENTRY) => Error::conflict(format!("username {username} is taken")),
                _ => error::map("creating a user", e),
            })
        })
        .await?;
        Ok(User {
            id: UserId(done.last_insert_id() as i64),
            username: username.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chatcore::{Backend, NewMessage, Store, Username};
    use sqlx::ConnectOptions;

    use crate::MysqlConfig;
    use crate::testing::TestDatabase;

    /// A send still waiting in the queue for a writer when `close` is called is stored, not
    /// failed by the closing pool: `close` waits for every send made before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_waits_for_queued_sends() {
        let database = TestDatabase::create("chatcore_mysql_test_").await.unwrap();
        let config = MysqlConfig {
            writers: 1,
            max_batch: 1,
            max_connections: 4,
            ..MysqlConfig::default()
        };
        let store = std::sync::Arc::new(database.store(config).await.unwrap());
        let name = |s: &str| Username::parse(s).unwrap();
        let alice = store.create_user(&name("alice")).await.unwrap();
        store.create_user(&name("bob")).await.unwrap();
        let send = |body: &str| {
            let store = store.clone();
            let message = NewMessage {
                sender: alice.clone(),
                recipient: name("bob"),
                body: body.to_owned(),
                idempotency_key: None,
            };
            tokio::spawn(async move { store.insert_message(message).await })
        };
        // Another "process" holds the id sequence: the one writer waits in its first batch ...
        let mut other = database.options().unwrap().connect().await.unwrap();
        sqlx::query("BEGIN").execute(&mut other).await.unwrap();
        sqlx::query("SELECT total FROM chatcore_counts WHERE low_id = 0 AND high_id = 0 FOR UPDATE")
            .execute(&mut other)
            .await
            .unwrap();
        let first = send("first");
        let second = send("second");
        // ... and the second send waits in the queue (both polled, not guessed).
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let (in_database,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() \
                     AND COMMAND = 'Query' AND INFO LIKE 'INSERT INTO chatcore!_counts%' ESCAPE '!'",
                )
                .fetch_one(&mut other)
                .await
                .unwrap();
                let queued = store.writer.max_capacity() - store.writer.capacity();
                if in_database == 1 && queued == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the second send is queued");
        let closing = {
            let store = store.clone();
            tokio::spawn(async move { store.close().await })
        };
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        assert_eq!(first.await.unwrap().unwrap().message.body, "first");
        assert_eq!(
            second
                .await
                .unwrap()
                .expect("a queued send is stored")
                .message
                .body,
            "second"
        );
        closing.await.unwrap().unwrap();
    }
}
