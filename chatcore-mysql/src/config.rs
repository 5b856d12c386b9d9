//! [`MysqlConfig`]: pool size, timeouts and the group-commit writer's limits.

use std::time::Duration;

/// Settings of a [`crate::MysqlStore`]. A plain struct with documented defaults: build it with
/// struct update syntax.
///
/// ```
/// use std::time::Duration;
/// use chatcore_mysql::MysqlConfig;
///
/// let config = MysqlConfig { max_connections: 32, acquire_timeout: Duration::from_secs(2), ..MysqlConfig::default() };
/// assert_eq!(config.writers, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlConfig {
    /// Most connections the pool opens (readers and writers together). Default 16.
    pub max_connections: u32,
    /// Connections the pool keeps open even when idle. Default 0.
    pub min_connections: u32,
    /// How long a call waits for a connection (including connecting to a server that is down)
    /// before it fails with [`chatcore::Error::Unavailable`]. Default 5 s.
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this long. `None` keeps them. Default 10 minutes.
    pub idle_timeout: Option<Duration>,
    /// Connections are replaced after this long. `None` keeps them. Default 30 minutes.
    pub max_lifetime: Option<Duration>,
    /// A connection taken from the pool after lying idle longer than this is pinged first
    /// (and replaced if the server does not answer); one used more recently is trusted, as the
    /// pool also checks every connection when it is handed back. The writer tasks also keep
    /// one spare connection between batches while sends come less than this apart (none when
    /// `max_connections` is 1; it goes back at once when the pool closes). `Duration::ZERO`
    /// pings on every checkout (a round trip more per read) and keeps no spare. Default 1 s.
    ///
    /// Only a server that went away within this window can fail a call on a stale
    /// connection; reads then retry once on a fresh one, a send fails with
    /// [`chatcore::Error::Unavailable`], and the stale connection is dropped.
    pub ping_if_idle_for: Duration,
    /// Prepared statements cached per connection (reads, and the writers' user and
    /// idempotency-key lookups, whose lists are padded to a few shapes). Default 512.
    pub statement_cache_capacity: usize,
    /// Writer tasks that group pending sends into transactions. Two let one batch prepare while
    /// the previous one commits. Default 2; at least 1 is used.
    pub writers: usize,
    /// Most messages stored by one transaction (group commit). Default 128; clamped to 1..=1000.
    pub max_batch: usize,
    /// Body bytes at which a writer stops adding messages to a batch (the batch's SQL is about
    /// twice this, as bodies are sent hex-encoded: keep it under half the server's
    /// `max_allowed_packet`). Default 4 MiB.
    pub max_batch_bytes: usize,
    /// Usernames and user ids the writers remember, saving a lookup per batch. Users are never
    /// renamed or reused, so only a user deleted behind the store's back could be served from
    /// it. Default 100,000; 0 turns it off.
    pub user_cache_capacity: usize,
    /// Sends waiting for a writer before callers wait for room (back pressure). Default 8192.
    pub queue_capacity: usize,
    /// How long [`crate::MysqlStore::migrate`] waits for another process that is migrating the
    /// same database. Default 60 s.
    pub migration_lock_timeout: Duration,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            ping_if_idle_for: Duration::from_secs(1),
            statement_cache_capacity: 512,
            writers: 2,
            max_batch: 128,
            max_batch_bytes: 4 << 20,
            user_cache_capacity: 100_000,
            queue_capacity: 8192,
            migration_lock_timeout: Duration::from_secs(60),
        }
    }
}
