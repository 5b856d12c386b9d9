//! # chatcore-postgres
//!
//! chatcore on PostgreSQL alone, through `sqlx`: [`PostgresStore`], a [`chatcore::Backend`]
//! ([`chatcore::Store`] for users and messages, [`chatcore::SessionStore`] for accounts and
//! sessions) over one database, and [`PgNotifier`], a [`chatcore::Notifier`] over
//! `LISTEN`/`NOTIFY` that carries events between server processes. A service that already
//! keeps its data in PostgreSQL needs neither MySQL nor Redis.
//!
//! ```no_run
//! # async fn demo() -> chatcore::Result<()> {
//! use std::sync::Arc;
//! use chatcore::{Backend, ChatConfig, ChatService, SendRequest};
//! use chatcore_postgres::{PgNotifier, PgNotifierConfig, PostgresConfig, PostgresStore};
//!
//! let url = "postgres://postgres@127.0.0.1:5432/chat";
//! let store = PostgresStore::connect(url, PostgresConfig::default()).await?;
//! store.migrate().await?; // explicit: the host decides when the schema changes
//! // Every server process with the same database and channel acts as one message center.
//! let notifier = PgNotifier::connect(url, PgNotifierConfig::default()).await?;
//! let chat = ChatService::new(Arc::new(store), Arc::new(notifier), ChatConfig::default());
//! let alice = chat.create_user("alice").await?;
//! chat.create_user("bob").await?;
//! chat.send(&alice, SendRequest { recipient: "bob".into(), body: "hi 👋".into(), idempotency_key: None }).await?;
//! # Ok(()) }
//! ```
//!
//! # Schema
//! Every table is prefixed `chatcore_`.
//! - `chatcore_migrations`: the versions applied by [`chatcore::Backend::migrate`]. The crate's
//!   own table, so a host's `sqlx::migrate!` (`_sqlx_migrations`) is never touched. A
//!   database whose schema is newer than this code, or whose applied migration was edited, is
//!   refused with [`chatcore::Error::Corrupt`]. Concurrent `migrate` calls from several
//!   processes take turns through an advisory lock, and the whole run is one transaction.
//! - `chatcore_users`: `username` as its owner wrote it; `username_key` (collation `"C"`,
//!   unique index) is its [`chatcore::Username::key`] (lowercased NFKC, computed in Rust),
//!   what names are unique by and what the directory is sorted by (byte order).
//! - `chatcore_sessions`: the SHA-256 of each token, the user, the expiry (indexed for
//!   [`chatcore::SessionStore::delete_expired_sessions`]).
//! - `chatcore_messages`: primary key `id`; `(conversation_low, conversation_high, id)`: a
//!   conversation page is one backward range; `(sender_id, id)` and `(recipient_id, id)`: a
//!   user's messages and the catch-up are two ranges merged; a unique partial index on
//!   `(sender_id, idempotency_key_hash)`: replays. Reads never depend on the table's size.
//! - `chatcore_counts`: totals kept by the inserting transaction, so a page's `total` is a
//!   primary-key lookup, never a count; row `(0, 0)` is the position sequence (message ids
//!   and read events), row `(user, -1)` the user's unread total, and row `(user, 0)` (the
//!   user's message total) also carries `last_position` (schema version 8): the position of
//!   the user's newest durable event, moved by every function that hands out positions.
//! - `chatcore_inbox`: one row per user and conversation partner (themself for notes to
//!   self): the newest message id, the unread count, the read marker; primary key
//!   `(user_id, peer_id)`, `(user_id, last_id)`: an inbox page is one backward range.
//! - `chatcore_read_events`: read markers that moved, at positions from the same sequence as
//!   message ids, indexed `(reader_id, position)` and `(peer_id, position)`:
//!   [`chatcore::Store::events_after`] is one statement merging four limited ranges.
//! - `chatcore_notify_payloads`: large notification frames (see [`PgNotifier`]).
//! - `chatcore_checkpoints` (schema version 4): feed consumers' checkpoints, primary key
//!   `name`. The host's feed ([`chatcore::Store::feed_after`]) is one statement merging two
//!   forward ranges of primary keys (`chatcore_messages.id`, `chatcore_read_events.position`):
//!   every position comes from the sequence row locked until commit (below), so a statement's
//!   snapshot that holds a position holds every smaller one.
//! - the function `chatcore_insert_messages`: one batch of sends in one statement (with both
//!   users' inbox rows and the recipient's unread total); `chatcore_insert_messages_each`
//!   (schema version 10): the same rows and writes in a few small statements per send, which
//!   the store calls for a batch of one (a quarter fewer instructions than the set-wise
//!   statement's plan start-up for one send); `chatcore_mark_read`: one
//!   [`chatcore::Store::mark_read`] in one statement, under the same sequence lock;
//!   `chatcore_change_message` and `chatcore_delete_sent`: edits and deletions;
//!   `chatcore_set_block`: blocks. Their shared parts are functions of their own (schema
//!   version 8), so a migration replaces one part: `chatcore_lock_positions` (the sequence
//!   lock), `chatcore_send_outcomes` (what becomes of each send of a batch: a single SQL
//!   `SELECT` the planner inlines into the batch's statement; since schema version 9 it finds
//!   each send's users by one index probe each, never by hashing `chatcore_users`),
//!   `chatcore_take_position` (the next position for a mark or a change, and both users'
//!   previous ones). `chatcore_counts` and `chatcore_inbox` keep room on their pages for their
//!   rows' updates (fill factors 50 and 70, schema version 9).
//!
//! # Ids in commit order
//! A reconnecting client asks for the messages after the last id it saw. With a plain
//! sequence (`SERIAL`, `IDENTITY`), a transaction that took id 10 can commit after one that
//! took id 11; a client that read 11 in between would never see 10
//! (`tests/commit_order.rs` shows it happen). Here every inserting transaction first locks the
//! id sequence row `(0, 0)` of `chatcore_counts` and holds the lock until it commits, so the
//! next one, in this process or any other, takes its ids only after that commit: once a
//! reader can see id `n`, it can see every id below `n`. The lock is held while the server
//! runs one statement: a batch is one call of `chatcore_insert_messages` (a batch of one:
//! `chatcore_insert_messages_each`, the same work in small statements) (lock, read the
//! clock, check idempotency keys, insert the messages, add to the counters and move each
//! user's newest position, read each user's previous one), one round trip. Inside one process, a send made while no other is in
//! progress is stored at once by its caller (a batch of one: no hand-over, no wait for a batch
//! to fill); the others are queued to [`PostgresConfig::writers`] writer tasks that store up
//! to [`PostgresConfig::max_batch`] pending messages per transaction (group commit): everything
//! queued while a batch commits goes into the next. Batches run on connections of their own
//! ([`PostgresConfig::writers`] of them and a spare, apart from the readers' pool of
//! [`PostgresConfig::max_connections`]): each has the batch functions compiled and planned
//! after its first batches (again after the pool replaces it: [`PostgresConfig::idle_timeout`],
//! [`PostgresConfig::max_lifetime`]), and no burst of reads makes a send wait for a checkout.
//! Timestamps are read under the lock, so they follow id order too.
//!
//! Each participant's previous position ([`chatcore::Inserted::sender_previous`]) comes
//! from the same lock: every function that hands out positions moves the newest position of
//! each user of the event (`last_position` of their total row) in its transaction, and every
//! transaction that did so committed before the batch got the lock; the function's statement
//! after the lock sees them (READ COMMITTED takes a snapshot per statement), so one
//! primary-key lookup per user finds it.
//!
//! # Errors
//! A server that is down, unreachable, out of connections, shutting down or timing out
//! (a statement cancelled by [`PostgresConfig::statement_timeout`], a pool that waited
//! [`PostgresConfig::acquire_timeout`]) is [`chatcore::Error::Unavailable`] (HTTP 503 with
//! `Retry-After` in `chatcore-axum`); the pools reconnect by themselves once the server is back.
//! Right after a server restart a call can meet a dead pooled connection: a read then
//! retries once, a send fails with `Unavailable`. A taken username (in any case) is
//! [`chatcore::Error::Conflict`]. After [`chatcore::Backend::close`] every call is
//! `Unavailable`. A bad [`PostgresConfig`] or URL is [`chatcore::Error::Invalid`] from
//! [`PostgresStore::connect`]. Anything else is [`chatcore::Error::Internal`] (or `Corrupt`
//! for rows that do not decode) with the `sqlx` error kept as its source.
//!
//! # Layout
//! - `lib.rs`: [`PostgresStore`] and its trait implementations (the reads).
//! - `config.rs`: [`PostgresConfig`]; `writer.rs`: the group-commit writer (lone sends and
//!   writer tasks);
//!   `rows.rs`: the read queries; `schema.rs`: the migrations (and the batch function);
//!   `error.rs`: `sqlx` errors to [`chatcore::Error`].
//! - `notifier/`: [`PgNotifier`] and [`PgNotifierConfig`].
//! - `testing.rs`: [`testing::TestDatabase`] (a database per test) and
//!   [`testing::PrivateServer`] (a PostgreSQL of a test's own, to stop and start).
//! - `tests/`: both conformance suites, commit order, migrations, the notifier conformance
//!   suite (two nodes, a publish outage), a private server stopped and restarted;
//!   `benches/postgres.rs`: store sends against a raw `INSERT`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod error;
mod notifier;
mod rows;
mod schema;
pub mod testing;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::RwLock;

use chatcore::store::check_checkpoint_name;
use chatcore::{
    Backend, BlockQuery, BoxError, ChangeEvent, Changed, Credentials, Entity, Error, InboxPage, InboxRequest,
    Inserted, MarkedRead, Message, MessageChange, MessageId, MessagePage, MigrationReport, MovedMarker,
    NewMessage, PageRequest, Position, ReadMarker, Result, SessionRecord, SessionStore, Store, StoredEvent,
    TokenHash, User, UserId, UserQuery, Username,
};

pub use config::PostgresConfig;
pub use notifier::{PgNotifier, PgNotifierConfig};

/// A connection taken from the pool after lying idle this long is pinged first; one used
/// more recently is trusted (the pool also checks connections handed back to it).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A [`chatcore::Backend`] on PostgreSQL: [`chatcore::Store`] and [`chatcore::SessionStore`]
/// over one database. Cheap to share behind an `Arc`; dropping the last handle stops its
/// writer tasks once the queued sends are stored.
///
/// Needs a Tokio runtime: [`PostgresStore::connect`] spawns the writer tasks on the current one.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The batch writers' connections ([`PostgresConfig::writers`] of them and one spare).
    writer_pool: PgPool,
    writer: writer::Writers,
    config: PostgresConfig,
    lifecycle: Arc<Lifecycle>,
}

/// What [`Backend::close`] needs: sends in flight finish before the pools close, and none
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
        f.write_str("the PostgreSQL store is closed")
    }
}

impl std::error::Error for Closed {}

/// The settings both of a store's pools share: at most `max` connections, the timeouts of
/// `config`, a ping only before reusing a connection idle for [`PING_IF_IDLE_FOR`].
fn pool_options(max: u32, config: &PostgresConfig) -> PgPoolOptions {
    ping_if_idle(
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(config.acquire_timeout)
            .idle_timeout(config.idle_timeout)
            .max_lifetime(config.max_lifetime),
    )
}

/// Pings a pooled connection before handing it out only when it lay idle for
/// [`PING_IF_IDLE_FOR`] or more. sqlx's default pings on every checkout, a second round trip
/// for every statement; a connection used more recently is trusted (the pool also checks
/// connections handed back to it).
pub(crate) fn ping_if_idle(options: PgPoolOptions) -> PgPoolOptions {
    options.test_before_acquire(false).before_acquire(|conn, meta| {
        Box::pin(async move {
            if meta.idle_for >= PING_IF_IDLE_FOR {
                conn.ping().await?;
            }
            Ok(true)
        })
    })
}

/// Parses a `postgres://` (or `postgresql://`) URL; anything else is [`Error::Invalid`].
pub(crate) fn parse_url(url: &str) -> Result<PgConnectOptions> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::invalid(
            "invalid PostgreSQL URL: it must start with postgres:// or postgresql://",
        ));
    }
    // The parser's message names what is wrong for the operator; a URL is input, so this is
    // `Invalid`, which carries a message rather than a source.
    PgConnectOptions::from_str(url).map_err(|e| Error::invalid(format!("invalid PostgreSQL URL: {e}")))
}

impl PostgresStore {
    /// Opens the store's pools to `url` (`postgres://user:password@host:port/database`) and checks that
    /// the server answers. The database must exist; call [`Backend::migrate`] before use.
    ///
    /// A malformed URL or a [`PostgresConfig`] that makes no sense is [`Error::Invalid`]; a
    /// server that does not answer within [`PostgresConfig::acquire_timeout`] is
    /// [`Error::Unavailable`].
    pub async fn connect(url: &str, config: PostgresConfig) -> Result<Self> {
        config.validate()?;
        let store = Self::connect_with(parse_url(url)?, config)?;
        store.ping().await?;
        Ok(store)
    }

    /// Like [`PostgresStore::connect`] with parsed options, without checking the server: the
    /// first call that needs a connection opens one. Every connection runs in UTC with
    /// [`PostgresConfig::statement_timeout`]. A bad [`PostgresConfig`] is [`Error::Invalid`].
    pub fn connect_with(options: PgConnectOptions, config: PostgresConfig) -> Result<Self> {
        config.validate()?;
        let statement_ms = config.statement_timeout.as_millis().to_string();
        let options = options
            .options([("statement_timeout", statement_ms.as_str()), ("TimeZone", "UTC")])
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = pool_options(config.max_connections, &config)
            .min_connections(config.min_connections)
            .connect_lazy_with(options.clone());
        // The batch writers' own connections, apart from the readers': every batch then runs
        // on a backend that has compiled and planned the batch functions already (a pooled
        // connection's first batch costs milliseconds of planning while the sequence lock
        // and the writer wait), and a burst of reads never holds a send up on a checkout.
        // One more than the writers: sqlx hands a released connection back to its pool
        // through a task of its own, which the next batch would otherwise wait for.
        let writers = pool_options(
            u32::try_from(config.writers.saturating_add(1)).unwrap_or(u32::MAX),
            &config,
        )
        .connect_lazy_with(options);
        let writer = writer::Writers::spawn(writers.clone(), &config);
        Ok(Self {
            writer_pool: writers,
            pool,
            writer,
            config,
            lifecycle: Arc::default(),
        })
    }

    /// Checks that the server answers ([`Error::Unavailable`] when it does not).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| error::map("pinging PostgreSQL", e))?;
        Ok(())
    }

    /// The newest schema version this code knows (what [`Backend::migrate`] brings a
    /// database to).
    pub fn schema_version() -> u32 {
        // Versions are small positive constants (`schema::MIGRATIONS`).
        schema::latest_version() as u32
    }

    /// The readers' pool (every call but `insert_message`, whose batch writers have
    /// connections of their own), for hosts that want to share it or inspect it.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The configuration in force.
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }
}

#[async_trait]
impl Backend for PostgresStore {
    /// Applies the embedded migrations this database lacks, in one transaction, and reports
    /// the versions before and after. Safe to call from several processes at once (they take
    /// turns through an advisory lock, waiting at most
    /// [`PostgresConfig::migration_lock_timeout`]) and on every start-up. Records versions in
    /// `chatcore_migrations` only; a schema newer than this code is [`Error::Corrupt`].
    async fn migrate(&self) -> Result<MigrationReport> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| error::map("connecting to migrate", e))?;
        schema::migrate(&mut conn, self.config.migration_lock_timeout.as_millis()).await
    }

    /// Lets the sends already made finish, then closes both pools: later calls fail with
    /// [`Error::Unavailable`].
    async fn close(&self) -> Result<()> {
        self.lifecycle.closed.store(true, Ordering::Release);
        // Waits for every send in flight to be answered; sends made from now on see `closed`.
        let _no_sends = self.lifecycle.sends.write().await;
        self.writer_pool.close().await;
        self.pool.close().await;
        Ok(())
    }
}

/// Runs a read query, and once more if it failed on a dead connection (one handed out
/// without a ping after a server restart). Only reads are retried: a write may have happened
/// before the connection broke.
async fn read<T, F, Fut>(context: &'static str, run: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
{
    match run().await {
        Ok(found) => Ok(found),
        Err(sqlx::Error::Io(_)) => run().await.map_err(|e| error::map(context, e)),
        Err(e) => Err(error::map(context, e)),
    }
}

fn corrupt(err: BoxError) -> Error {
    Error::Corrupt {
        message: "a stored row does not decode".to_owned(),
        source: Some(err),
    }
}

/// `before` as an exclusive upper bound on ids.
fn upper_bound(page: &PageRequest) -> i64 {
    page.before.map_or(i64::MAX, |id| id.0)
}

/// A stored counter: no row is no message yet; a negative one is corrupt, not zero.
fn total(row: &sqlx::postgres::PgRow) -> Result<u64> {
    let stored: Option<i64> = row.try_get("total").map_err(|e| corrupt(Box::new(e)))?;
    u64::try_from(stored.unwrap_or(0)).map_err(|e| corrupt(Box::new(e)))
}

/// The messages of page rows whose `id` is not NULL (a NULL id is the row of an empty page).
fn page_messages(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<Message>> {
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        let id: Option<i64> = row.try_get("id").map_err(|e| corrupt(Box::new(e)))?;
        if id.is_some() {
            messages.push(rows::message(row).map_err(corrupt)?);
        }
    }
    Ok(messages)
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_user(&self, username: &Username) -> Result<User> {
        self.insert_user(username, None).await
    }

    async fn find_user(&self, username: &Username) -> Result<Option<User>> {
        let key = username.key();
        let row = read("finding a user", || {
            sqlx::query(rows::FIND_USER).bind(&key).fetch_optional(&self.pool)
        })
        .await?;
        row.map(|row| rows::user(&row).map_err(corrupt)).transpose()
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>> {
        let pattern = rows::like_prefix(&query.prefix);
        let after_key = query.after.as_ref().map(Username::key).unwrap_or_default();
        let rows = read("listing users", || {
            sqlx::query(rows::LIST_USERS)
                .bind(&pattern)
                .bind(&after_key)
                .bind(query.exclude.map_or(0, |id| id.0))
                .bind(i64::from(query.limit))
                .fetch_all(&self.pool)
        })
        .await?;
        rows.iter().map(|row| rows::user(row).map_err(corrupt)).collect()
    }

    async fn insert_message(&self, message: NewMessage) -> Result<Inserted> {
        // Held until the send is answered, so `close` waits for it.
        let _open = self.lifecycle.sends.read().await;
        if self.lifecycle.closed.load(Ordering::Acquire) {
            return Err(Error::storage_unavailable(Closed));
        }
        self.writer.send(message).await
    }

    async fn message_for(&self, viewer: UserId, id: MessageId) -> Result<Option<Message>> {
        let row = read("reading a message", || {
            sqlx::query(rows::MESSAGE_FOR)
                .bind(id.0)
                .bind(viewer.0)
                .fetch_optional(&self.pool)
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
        let rows = read("reading a conversation", || {
            sqlx::query(rows::CONVERSATION_PAGE)
                .bind(viewer.0)
                .bind(&other)
                .bind(upper_bound(page))
                .bind(i64::from(page.limit))
                .bind(i64::from(page.offset))
                .fetch_all(&self.pool)
        })
        .await?;
        let Some(first) = rows.first() else {
            return Err(Error::NotFound(Entity::User));
        };
        let total = total(first)?;
        let mut messages = page_messages(&rows)?;
        // A lateral join does not promise to keep the subquery's order.
        messages.sort_unstable_by_key(|m| std::cmp::Reverse(m.id));
        Ok(MessagePage { messages, total })
    }

    async fn user_messages(&self, user: UserId, page: &PageRequest) -> Result<MessagePage> {
        let window = i64::from(page.offset) + i64::from(page.limit);
        let rows = read("reading a user's messages", || {
            sqlx::query(rows::USER_MESSAGES)
                .bind(user.0)
                .bind(upper_bound(page))
                .bind(window)
                .bind(i64::from(page.limit))
                .bind(i64::from(page.offset))
                .fetch_all(&self.pool)
        })
        .await?;
        let total = match rows.first() {
            Some(row) => total(row)?,
            None => 0,
        };
        let mut messages = page_messages(&rows)?;
        messages.sort_unstable_by_key(|m| std::cmp::Reverse(m.id));
        Ok(MessagePage { messages, total })
    }

    async fn messages_after(&self, user: UserId, after: MessageId, limit: u32) -> Result<Vec<Message>> {
        let rows = read("catching up", || {
            sqlx::query(rows::MESSAGES_AFTER)
                .bind(user.0)
                .bind(after.0)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
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
        let latest: Option<i64> = read("reading a user's latest position", || {
            sqlx::query_scalar(rows::LATEST_POSITION)
                .bind(user.0)
                .fetch_one(&self.pool)
        })
        .await?;
        Ok(Position(latest.unwrap_or(0)))
    }

    async fn events_after(&self, user: UserId, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = read("catching up on events", || {
            sqlx::query(rows::EVENTS_AFTER)
                .bind(user.0)
                .bind(after.0)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
        })
        .await?;
        events_in_order(&rows)
    }

    async fn inbox(&self, user: UserId, request: &InboxRequest) -> Result<InboxPage> {
        let before = request.before.map_or(i64::MAX, |id| id.0);
        let rows = read("reading an inbox", || {
            sqlx::query(rows::INBOX_PAGE)
                .bind(user.0)
                .bind(before)
                .bind(i64::from(request.limit))
                .fetch_all(&self.pool)
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
        // A lateral join does not promise to keep the subquery's order.
        page.conversations
            .sort_unstable_by_key(|c| std::cmp::Reverse(c.last_message.id));
        Ok(page)
    }

    async fn change_message(&self, sender: UserId, id: MessageId, change: &MessageChange) -> Result<Changed> {
        let (delete, body, not_before) = match change {
            MessageChange::Edit { body, not_before } => (false, Some(body.as_str()), *not_before),
            MessageChange::Delete => (true, None, None),
        };
        // One statement, one transaction, like `mark_read`: not retried here.
        let row = sqlx::query(rows::CHANGE_MESSAGE)
            .bind(sender.0)
            .bind(id.0)
            .bind(delete)
            .bind(body)
            .bind(not_before)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| error::map("changing a message", e))?;
        changed_from_row(&row, delete)
    }

    async fn remove_user(&self, user: UserId) -> Result<()> {
        let row = sqlx::query(rows::REMOVE_USER)
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| error::map("removing an account", e))?;
        row.map(|_| ()).ok_or(Error::NotFound(Entity::User))
    }

    async fn delete_sent_messages(
        &self,
        sender: UserId,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<Changed>> {
        // One statement, one transaction: not retried here (the caller runs it again).
        let rows = sqlx::query(rows::DELETE_SENT)
            .bind(sender.0)
            .bind(after.0)
            .bind(i32::try_from(limit).unwrap_or(i32::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| error::map("deleting a sender's messages", e))?;
        let mut changed = rows
            .iter()
            .map(|row| changed_from_row(row, true))
            .collect::<Result<Vec<_>>>()?;
        changed.sort_unstable_by_key(|c| c.message.id);
        Ok(changed)
    }

    async fn set_block(&self, blocker: UserId, blocked: &Username, on: bool) -> Result<User> {
        // One statement, one transaction, like `mark_read`: not retried here (a retry by the
        // caller is harmless: blocks are idempotent).
        let row = sqlx::query(rows::SET_BLOCK)
            .bind(blocker.0)
            .bind(blocked.key())
            .bind(on)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| error::map("blocking", e))?;
        let outcome: Option<String> = row.try_get("r_outcome").map_err(|e| corrupt(Box::new(e)))?;
        match outcome.as_deref().unwrap_or_default() {
            "no_user" => Err(Error::NotFound(Entity::User)),
            "self" => Err(Error::invalid("you cannot block yourself")),
            "done" => rows::user(&row).map_err(corrupt),
            other => Err(Error::bug(format!(
                "chatcore_set_block: unknown outcome {other:?}"
            ))),
        }
    }

    async fn blocked_users(&self, user: UserId, query: &BlockQuery) -> Result<Vec<User>> {
        let after = query.after.as_ref().map(Username::key).unwrap_or_default();
        let rows = read("listing blocks", || {
            sqlx::query(rows::BLOCKED_USERS)
                .bind(user.0)
                .bind(&after)
                .bind(i64::from(query.limit))
                .fetch_all(&self.pool)
        })
        .await?;
        rows.iter().map(|row| rows::user(row).map_err(corrupt)).collect()
    }

    async fn reachable_peer(&self, user: UserId, peer: &Username) -> Result<Option<UserId>> {
        let key = peer.key();
        let id: Option<i64> = read("finding a peer", || {
            sqlx::query_scalar(rows::REACHABLE_PEER)
                .bind(user.0)
                .bind(&key)
                .fetch_optional(&self.pool)
        })
        .await?;
        Ok(id.map(UserId))
    }

    async fn conversation_peers(&self, user: UserId, among: &[UserId]) -> Result<Vec<UserId>> {
        if among.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = among.iter().map(|id| id.0).collect();
        let found: Vec<i64> = read("finding conversations", || {
            sqlx::query_scalar(rows::CONVERSATION_PEERS)
                .bind(user.0)
                .bind(&ids)
                .fetch_all(&self.pool)
        })
        .await?;
        Ok(found.into_iter().map(UserId).collect())
    }

    async fn mark_read(&self, reader: &User, peer: &Username, up_to: MessageId) -> Result<MarkedRead> {
        // One statement, one transaction: not retried (it may have committed before a
        // connection broke), though a retry by the caller is harmless (marks are idempotent).
        let row = sqlx::query(rows::MARK_READ)
            .bind(reader.id.0)
            .bind(peer.key())
            .bind(up_to.0)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| error::map("marking read", e))?;
        let text = |column: &str| -> Result<Option<String>> {
            row.try_get(column).map_err(|e| corrupt(Box::new(e)))
        };
        let int =
            |column: &str| -> Result<Option<i64>> { row.try_get(column).map_err(|e| corrupt(Box::new(e))) };
        let outcome = text("r_outcome")?.unwrap_or_default();
        match outcome.as_str() {
            "no_user" => return Err(Error::NotFound(Entity::User)),
            "no_message" => return Err(Error::NotFound(Entity::Message)),
            "kept" | "moved" => {}
            other => {
                return Err(Error::bug(format!(
                    "chatcore_mark_read: unknown outcome {other:?}"
                )));
            }
        }
        let unread = u64::try_from(int("r_unread")?.unwrap_or(0)).map_err(|e| corrupt(Box::new(e)))?;
        let Some(read_up_to) = int("r_read_up_to")?.map(MessageId) else {
            return Err(Error::bug(
                "chatcore_mark_read: a marker that did not move and was not set",
            ));
        };
        if outcome == "kept" {
            return Ok(MarkedRead {
                unread,
                read_up_to,
                moved: None,
            });
        }
        let (Some(position), Some(peer_id), Some(peer_name)) =
            (int("r_position")?, int("r_peer_id")?, text("r_peer_name")?)
        else {
            return Err(Error::bug(
                "chatcore_mark_read: a moved marker without its position or peer",
            ));
        };
        Ok(MarkedRead {
            unread,
            read_up_to,
            moved: Some(MovedMarker {
                marker: ReadMarker {
                    position: Position(position),
                    reader: reader.username.clone(),
                    peer: Username::from_stored(peer_name),
                    up_to: read_up_to,
                },
                peer_id: UserId(peer_id),
                reader_previous: Position(int("r_reader_previous")?.unwrap_or(0)),
                peer_previous: Position(int("r_peer_previous")?.unwrap_or(0)),
            }),
        })
    }

    async fn feed_after(&self, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = read("reading the event feed", || {
            sqlx::query(rows::FEED_AFTER)
                .bind(after.0)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
        })
        .await?;
        events_in_order(&rows)
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Position> {
        check_checkpoint_name(name)?;
        let position: Option<i64> = read("reading a checkpoint", || {
            sqlx::query_scalar(rows::LOAD_CHECKPOINT)
                .bind(name)
                .fetch_optional(&self.pool)
        })
        .await?;
        Ok(Position(position.unwrap_or(0)))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        check_checkpoint_name(name)?;
        sqlx::query(rows::SAVE_CHECKPOINT)
            .bind(name)
            .bind(position.0)
            .execute(&self.pool)
            .await
            .map_err(|e| error::map("saving a checkpoint", e))?;
        Ok(())
    }
}

/// What one row of [`rows::CHANGE_MESSAGE`] (or [`rows::DELETE_SENT`]) says happened.
fn changed_from_row(row: &sqlx::postgres::PgRow, delete: bool) -> Result<Changed> {
    let outcome: Option<String> = row.try_get("r_outcome").map_err(|e| corrupt(Box::new(e)))?;
    let int = |column: &str| -> Result<Option<i64>> { row.try_get(column).map_err(|e| corrupt(Box::new(e))) };
    match outcome.as_deref().unwrap_or_default() {
        "missing" => Err(Error::NotFound(Entity::Message)),
        "not_sender" => Err(Error::Forbidden(chatcore::Forbidden::NotTheSender)),
        "window" => Err(Error::Forbidden(chatcore::Forbidden::EditWindowClosed)),
        "blocked" => Err(Error::Forbidden(chatcore::Forbidden::Blocked)),
        "gone" if !delete => Err(Error::NotFound(Entity::Message)),
        "gone" => Ok(Changed {
            message: rows::message(row).map_err(corrupt)?,
            event: None,
        }),
        "changed" => {
            let (Some(recipient), Some(position)) = (int("r_recipient_id")?, int("r_position")?) else {
                return Err(Error::bug("chatcore_change_message: a change without its event"));
            };
            Ok(Changed {
                message: rows::message(row).map_err(corrupt)?,
                event: Some(ChangeEvent {
                    position: Position(position),
                    recipient_id: UserId(recipient),
                    sender_previous: Position(int("r_sender_previous")?.unwrap_or(0)),
                    recipient_previous: Position(int("r_recipient_previous")?.unwrap_or(0)),
                }),
            })
        }
        other => Err(Error::bug(format!(
            "chatcore_change_message: unknown outcome {other:?}"
        ))),
    }
}

/// The events of rows of [`rows::EVENTS_AFTER`] or [`rows::FEED_AFTER`], by position.
fn events_in_order(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<StoredEvent>> {
    let mut events = rows
        .iter()
        .map(|row| rows::event(row).map_err(corrupt))
        .collect::<Result<Vec<_>>>()?;
    // UNION ALL under an ORDER BY keeps that order, but sorting costs nothing here.
    events.sort_unstable_by_key(StoredEvent::position);
    Ok(events)
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn create_account(&self, username: &Username, password_hash: &str) -> Result<User> {
        self.insert_user(username, Some(password_hash)).await
    }

    async fn credentials(&self, username: &Username) -> Result<Option<Credentials>> {
        let key = username.key();
        let row = read("reading credentials", || {
            sqlx::query(rows::CREDENTIALS)
                .bind(&key)
                .fetch_optional(&self.pool)
        })
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Credentials {
            user: rows::user(&row).map_err(corrupt)?,
            password_hash: row.try_get("password_hash").map_err(|e| corrupt(Box::new(e)))?,
        }))
    }

    async fn create_session(
        &self,
        token_hash: &TokenHash,
        user: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let done = sqlx::query(rows::CREATE_SESSION)
            .bind(token_hash.as_slice())
            .bind(user.0)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(|e| error::map("creating a session", e))?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(Entity::User));
        }
        Ok(())
    }

    async fn session_user(
        &self,
        token_hash: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>> {
        let row = read("reading a session", || {
            sqlx::query(rows::SESSION_USER)
                .bind(token_hash.as_slice())
                .bind(now)
                .fetch_optional(&self.pool)
        })
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SessionRecord {
            user: rows::user(&row).map_err(corrupt)?,
            expires_at: row.try_get("expires_at").map_err(|e| corrupt(Box::new(e)))?,
        }))
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<()> {
        sqlx::query("DELETE FROM chatcore_sessions WHERE token_hash = $1")
            .bind(token_hash.as_slice())
            .execute(&self.pool)
            .await
            .map_err(|e| error::map("deleting a session", e))?;
        Ok(())
    }

    async fn delete_user_sessions(&self, user: UserId) -> Result<u64> {
        let done = sqlx::query("DELETE FROM chatcore_sessions WHERE user_id = $1")
            .bind(user.0)
            .execute(&self.pool)
            .await
            .map_err(|e| error::map("ending a user's sessions", e))?;
        Ok(done.rows_affected())
    }

    async fn set_password_hash(&self, username: &Username, password_hash: &str) -> Result<User> {
        let row = sqlx::query(rows::SET_PASSWORD_HASH)
            .bind(username.key())
            .bind(password_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| error::map("setting a password", e))?;
        let row = row.ok_or(Error::NotFound(Entity::User))?;
        rows::user(&row).map_err(corrupt)
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(rows::DELETE_EXPIRED_SESSIONS)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|e| error::map("deleting expired sessions", e))?;
        Ok(done.rows_affected())
    }
}

impl PostgresStore {
    /// Inserts a user under `username`, keyed by [`Username::key`]; a taken key is
    /// [`Error::Conflict`].
    async fn insert_user(&self, username: &Username, password_hash: Option<&str>) -> Result<User> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO chatcore_users (username, username_key, password_hash) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(username.as_str())
        .bind(username.key())
        .bind(password_hash)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match error::sqlstate(&e).as_deref() {
            Some(error::code::UNIQUE_VIOLATION) => Error::conflict(format!("username {username} is taken")),
            _ => error::map("creating a user", e),
        })?;
        Ok(User {
            id: UserId(id),
            username: username.clone(),
        })
    }
}
