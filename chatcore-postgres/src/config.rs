//! [`PostgresConfig`]: pool size, timeouts and the group-commit writer's limits.

use std::time::Duration;

/// Settings of a [`crate::PostgresStore`]. A plain struct with documented defaults: build it
/// with struct update syntax. [`crate::PostgresStore::connect`] refuses values that make no
/// sense ([`PostgresConfig::validate`]) rather than adjust them.
///
/// ```
/// use std::time::Duration;
/// use chatcore_postgres::PostgresConfig;
///
/// let config = PostgresConfig { max_connections: 32, acquire_timeout: Duration::from_secs(2), ..PostgresConfig::default() };
/// assert_eq!(config.writers, 1);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Most connections the readers' pool opens (every call but `insert_message`); at least 1.
    /// Default 16. The batch writers have connections of their own, one per writer and a
    /// spare, so the store opens at most `max_connections + writers + 1` connections.
    pub max_connections: u32,
    /// Connections the readers' pool keeps open even when idle; at most `max_connections`.
    /// Default 0.
    pub min_connections: u32,
    /// How long a call waits for a connection (including connecting to a server that is
    /// down) before it fails with [`chatcore::Error::Unavailable`]; not zero. Default 5 s.
    pub acquire_timeout: Duration,
    /// The server cancels a statement that runs longer than this (`statement_timeout`, set
    /// on every connection) and the call fails with [`chatcore::Error::Unavailable`]: a
    /// request never hangs on a stuck server. Not zero; whole milliseconds. Default 10 s.
    pub statement_timeout: Duration,
    /// Idle connections are closed after this long (not zero). `None` keeps them. Default 10
    /// minutes.
    pub idle_timeout: Option<Duration>,
    /// Connections are replaced after this long (not zero). `None` keeps them. Default 30
    /// minutes.
    pub max_lifetime: Option<Duration>,
    /// Writer tasks that group pending sends into transactions, and so the most batches this
    /// store has in flight at once. At least 1. Default 1: every batch holds the id sequence
    /// lock until its commit is flushed, so a second batch in flight would only wait for the
    /// first, with the sends it took too early; with one, everything queued while a batch
    /// commits goes into the next (in the store benchmark, about 1.6 times the sends per
    /// second of 2 at 8 and 64 concurrent senders).
    pub writers: usize,
    /// Most messages stored by one transaction (group commit), 1 to 1000. Default 128.
    pub max_batch: usize,
    /// Body bytes at which a writer stops adding messages to a batch. Not zero. Default 4 MiB.
    pub max_batch_bytes: usize,
    /// Sends waiting for a writer before callers wait for room (back pressure); at least 1.
    /// Default 8192.
    pub queue_capacity: usize,
    /// How long [`chatcore::Backend::migrate`] waits for another process that is migrating
    /// the same database (`lock_timeout` on its advisory lock); not zero. Default 60 s.
    pub migration_lock_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            writers: 1,
            max_batch: 128,
            max_batch_bytes: 4 << 20,
            queue_capacity: 8192,
            migration_lock_timeout: Duration::from_secs(60),
        }
    }
}

impl PostgresConfig {
    /// The most messages one transaction may store ([`PostgresConfig::max_batch`]).
    pub const MAX_BATCH: usize = 1000;

    /// Checks that every value makes sense; [`crate::PostgresStore::connect`] and
    /// [`crate::PostgresStore::connect_with`] call it. A value that does not is
    /// [`chatcore::Error::Invalid`], naming the field: never quietly replaced by another.
    ///
    /// ```
    /// use chatcore_postgres::PostgresConfig;
    /// assert!(PostgresConfig::default().validate().is_ok());
    /// assert!(PostgresConfig { writers: 0, ..PostgresConfig::default() }.validate().is_err());
    /// ```
    pub fn validate(&self) -> chatcore::Result<()> {
        let invalid = |message: String| Err(chatcore::Error::invalid(format!("PostgresConfig: {message}")));
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
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("migration_lock_timeout", Some(self.migration_lock_timeout)),
        ] {
            if value == Some(Duration::ZERO) {
                return invalid(format!("{field} must not be zero"));
            }
        }
        // The server counts whole milliseconds, and 0 would mean "no limit".
        if self.statement_timeout.as_millis() == 0 {
            return invalid("statement_timeout must be at least 1 ms".into());
        }
        if self.migration_lock_timeout.as_millis() == 0 {
            return invalid("migration_lock_timeout must be at least 1 ms".into());
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
        let base = PostgresConfig::default;
        let cases = [
            (
                "max_connections",
                PostgresConfig {
                    max_connections: 0,
                    ..base()
                },
            ),
            (
                "min_connections",
                PostgresConfig {
                    min_connections: 17,
                    ..base()
                },
            ),
            (
                "acquire_timeout",
                PostgresConfig {
                    acquire_timeout: Duration::ZERO,
                    ..base()
                },
            ),
            (
                "statement_timeout",
                PostgresConfig {
                    statement_timeout: Duration::from_micros(10),
                    ..base()
                },
            ),
            (
                "idle_timeout",
                PostgresConfig {
                    idle_timeout: Some(Duration::ZERO),
                    ..base()
                },
            ),
            (
                "max_lifetime",
                PostgresConfig {
                    max_lifetime: Some(Duration::ZERO),
                    ..base()
                },
            ),
            (
                "migration_lock_timeout",
                PostgresConfig {
                    migration_lock_timeout: Duration::ZERO,
                    ..base()
                },
            ),
            ("writers", PostgresConfig { writers: 0, ..base() }),
            (
                "max_batch",
                PostgresConfig {
                    max_batch: 0,
                    ..base()
                },
            ),
            (
                "max_batch",
                PostgresConfig {
                    max_batch: 1001,
                    ..base()
                },
            ),
            (
                "max_batch_bytes",
                PostgresConfig {
                    max_batch_bytes: 0,
                    ..base()
                },
            ),
            (
                "queue_capacity",
                PostgresConfig {
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
        let fine = [
            base(),
            PostgresConfig {
                max_connections: 1,
                min_connections: 1,
                writers: 1,
                max_batch: 1,
                ..base()
            },
            PostgresConfig {
                max_batch: PostgresConfig::MAX_BATCH,
                idle_timeout: None,
                max_lifetime: None,
                ..base()
            },
        ];
        for config in fine {
            assert!(config.validate().is_ok(), "{config:?}");
        }
    }
}
