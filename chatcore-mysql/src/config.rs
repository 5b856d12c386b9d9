//! [`MysqlConfig`]: pool size, timeouts and the group-commit writer's limits.

use std::time::Duration;

/// Settings of a [`crate::MysqlStore`]. A plain struct with documented defaults: build it with
/// struct update syntax. [`crate::MysqlStore::connect`] refuses values that make no sense
/// ([`MysqlConfig::validate`]) rather than adjust them.
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
    /// Most connections the pool opens (readers and writers together); at least 1. Default 16.
    pub max_connections: u32,
    /// Connections the pool keeps open even when idle; at most `max_connections`. Default 0.
    pub min_connections: u32,
    /// How long a call waits for a connection (including connecting to a server that is down)
    /// before it fails with [`chatcore::Error::Unavailable`]; not zero. Default 5 s.
    pub acquire_timeout: Duration,
    /// Longest a call waits for MySQL's answer, connection included (a server that hangs,
    /// e.g. behind a network partition, answers nothing and closes nothing); past it the call
    /// fails with [`chatcore::Error::Unavailable`] (an HTTP front end answers 503 with
    /// `Retry-After`) and the connection it used is dropped. A send answered so may still be
    /// committed once the server answers, which a retry with the same idempotency key
    /// resolves. Not zero. Default 5 s.
    pub statement_timeout: Duration,
    /// Idle connections are closed after this long (not zero). `None` keeps them. Default 10
    /// minutes.
    pub idle_timeout: Option<Duration>,
    /// Connections are replaced after this long (not zero). `None` keeps them. Default 30
    /// minutes.
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
    /// the previous one commits. At least 1. Default 2.
    pub writers: usize,
    /// Most messages stored by one transaction (group commit), 1 to 1000. Default 128.
    pub max_batch: usize,
    /// Body bytes at which a writer stops adding messages to a batch (the batch's SQL is about
    /// twice this, as bodies are sent hex-encoded: keep it under half the server's
    /// `max_allowed_packet`). Not zero. Default 4 MiB.
    pub max_batch_bytes: usize,
    /// Users (by username key: id and stored name) the writers remember, saving a lookup per
    /// batch. The store never renames or reuses users, so only a user deleted or renamed behind
    /// its back (e.g. by an operator resolving a clash reported by migration 3: restart the
    /// processes afterwards) could be served from it. Default 100,000; 0 turns it off.
    pub user_cache_capacity: usize,
    /// Sends waiting for a writer before callers wait for room (back pressure); at least 1.
    /// Default 8192.
    pub queue_capacity: usize,
    /// How long [`chatcore::Backend::migrate`] waits for another process that is migrating the
    /// same database; not zero (counted in whole seconds, rounded up). Default 60 s.
    pub migration_lock_timeout: Duration,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
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

impl MysqlConfig {
    /// The most messages one transaction may store ([`MysqlConfig::max_batch`]).
    pub const MAX_BATCH: usize = 1000;

    /// Checks that every value makes sense; [`crate::MysqlStore::connect`] and
    /// [`crate::MysqlStore::connect_with`] call it. A value that does not is
    /// [`chatcore::Error::Invalid`], naming the field: never quietly replaced by another.
    ///
    /// ```
    /// use chatcore_mysql::MysqlConfig;
    /// assert!(MysqlConfig::default().validate().is_ok());
    /// assert!(MysqlConfig { writers: 0, ..MysqlConfig::default() }.validate().is_err());
    /// ```
    pub fn validate(&self) -> chatcore::Result<()> {
        let invalid = |message: String| Err(chatcore::Error::invalid(format!("MysqlConfig: {message}")));
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1".into());
        }
        if self.min_connections > self.max_connections {
            return invalid(format!(
                "min_connections ({}) must not exceed max_connections ({})",
                self.min_connections, self.max_connections
            ));
        }
        for (field, value) in [
            ("acquire_timeout", Some(self.acquire_timeout)),
            ("statement_timeout", Some(self.statement_timeout)),
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("migration_lock_timeout", Some(self.migration_lock_timeout)),
        ] {
            if value == Some(Duration::ZERO) {
                return invalid(format!("{field} must not be zero"));
            }
        }
        if self.writers == 0 {
            return invalid("writers must be at least 1".into());
        }
        if !(1..=Self::MAX_BATCH).contains(&self.max_batch) {
            return invalid(format!(
                "max_batch must be 1 to {} (is {})",
                Self::MAX_BATCH,
                self.max_batch
            ));
        }
        if self.max_batch_bytes == 0 {
            return invalid("max_batch_bytes must not be zero".into());
        }
        if self.queue_capacity == 0 {
            return invalid("queue_capacity must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_make_no_sense_are_refused_by_name() {
        let base = MysqlConfig::default;
        let cases = [
            (
                "max_connections",
                MysqlConfig {
                    max_connections: 0,
                    ..base()
                },
            ),
            (
                "min_connections",
                MysqlConfig {
                    min_connections: 17,
                    ..base()
                },
            ),
            (
                "acquire_timeout",
                MysqlConfig {
                    acquire_timeout: Duration::ZERO,
                    ..base()
                },
            ),
            (
                "idle_timeout",
                MysqlConfig {
                    idle_timeout: Some(Duration::ZERO),
                    ..base()
                },
            ),
            (
                "max_lifetime",
                MysqlConfig {
                    max_lifetime: Some(Duration::ZERO),
                    ..base()
                },
            ),
            (
                "migration_lock_timeout",
                MysqlConfig {
                    migration_lock_timeout: Duration::ZERO,
                    ..base()
                },
            ),
            ("writers", MysqlConfig { writers: 0, ..base() }),
            (
                "max_batch",
                MysqlConfig {
                    max_batch: 0,
                    ..base()
                },
            ),
            (
                "max_batch",
                MysqlConfig {
                    max_batch: 1001,
                    ..base()
                },
            ),
            (
                "max_batch_bytes",
                MysqlConfig {
                    max_batch_bytes: 0,
                    ..base()
                },
            ),
            (
                "queue_capacity",
                MysqlConfig {
                    queue_capacity: 0,
                    ..base()
                },
            ),
        ];
        for (field, config) in cases {
            match config.validate() {
                Err(chatcore::Error::Invalid(message)) => {
                    assert!(message.contains(field), "{field}: {message}")
                }
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
        // The edges that do make sense.
        let fine = [
            base(),
            MysqlConfig {
                max_connections: 1,
                min_connections: 1,
                writers: 1,
                max_batch: 1,
                ..base()
            },
            MysqlConfig {
                max_batch: MysqlConfig::MAX_BATCH,
                idle_timeout: None,
                max_lifetime: None,
                ..base()
            },
            MysqlConfig {
                ping_if_idle_for: Duration::ZERO,
                user_cache_capacity: 0,
                ..base()
            },
        ];
        for config in fine {
            assert!(config.validate().is_ok(), "{config:?}");
        }
    }
}
