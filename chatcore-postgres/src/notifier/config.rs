//! [`PgNotifierConfig`]: the channel, queue sizes and how patient to be with the server.

use std::time::Duration;

use chatcore::{Error, Result};

/// Settings of a [`crate::PgNotifier`]. Every field is public and documented with its
/// default; start from `PgNotifierConfig::default()` and change what you need.
///
/// ```
/// let config = chatcore_postgres::PgNotifierConfig { channel: "staging_chat".into(), ..Default::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgNotifierConfig {
    /// The `LISTEN`/`NOTIFY` channel every node of one deployment shares: lowercase ASCII
    /// letters, digits and `_`, 1 to 63 bytes. Deployments (or tests) sharing one database
    /// must use different channels. Default `chatcore`.
    pub channel: String,
    /// Deliveries queued per subscription (per open connection). A subscriber that does not
    /// keep up misses the events that find its queue full and gets one
    /// [`chatcore::Delivery::Gap`] for them. At least 1. Default 256.
    pub queue_capacity: usize,
    /// Longest wait to open a connection (the listening one, or one to publish). Not zero.
    /// Default 2 s.
    pub connect_timeout: Duration,
    /// Longest wait for a `publish` (including connecting) and for the listening
    /// connection's health check to be answered. Not zero. Default 1 s.
    pub command_timeout: Duration,
    /// Delay before the second attempt to reconnect the listening connection after it was
    /// lost (the first attempt is immediate); each further attempt doubles it up to
    /// [`PgNotifierConfig::reconnect_max_delay`], and a random jitter of up to half the delay
    /// is added so that many nodes do not reconnect in step. The same schedule paces the
    /// retries of gap notices after a failed publish. Not zero. Default 100 ms.
    pub reconnect_min_delay: Duration,
    /// Longest delay between two reconnect attempts (before jitter); at least
    /// `reconnect_min_delay`. Default 5 s.
    pub reconnect_max_delay: Duration,
    /// How often the listening connection is checked with a query when no notification
    /// arrives, so that a connection that died silently is noticed and reopened. Not zero.
    /// Default 10 s.
    pub health_check_interval: Duration,
    /// Connections kept for publishing; at least 1. Default 4.
    pub max_connections: u32,
    /// Largest `NOTIFY` payload sent inline, in bytes: a larger event travels by reference
    /// (stored in `chatcore_notify_payloads`, read back once per node). PostgreSQL refuses
    /// payloads of 8000 bytes or more, so 64 to 7999. Default 7999.
    pub max_inline_payload: usize,
    /// Large payloads are deleted once older than this (by later large publishes): a node
    /// that reads one later delivers a [`chatcore::Delivery::Gap`] instead. Not zero.
    /// Default 5 minutes.
    pub payload_retention: Duration,
}

impl Default for PgNotifierConfig {
    fn default() -> Self {
        Self {
            channel: "chatcore".into(),
            queue_capacity: 256,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(1),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(10),
            max_connections: 4,
            max_inline_payload: 7999,
            payload_retention: Duration::from_secs(300),
        }
    }
}

impl PgNotifierConfig {
    /// The largest payload PostgreSQL accepts in a `NOTIFY`.
    pub const MAX_INLINE_PAYLOAD: usize = 7999;

    /// Checks the settings; [`Error::Invalid`] names the first bad one.
    ///
    /// ```
    /// let bad = chatcore_postgres::PgNotifierConfig { channel: "Bad Name".into(), ..Default::default() };
    /// assert!(bad.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::invalid(format!("PgNotifierConfig: {message}")));
        if self.channel.is_empty()
            || self.channel.len() > 63
            || !self
                .channel
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return invalid(format!(
                "channel must be 1 to 63 lowercase ASCII letters, digits or '_' (is {:?})",
                self.channel
            ));
        }
        if self.queue_capacity == 0 {
            return invalid("queue_capacity must be at least 1".into());
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1".into());
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("reconnect_min_delay", self.reconnect_min_delay),
            ("health_check_interval", self.health_check_interval),
            ("payload_retention", self.payload_retention),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be greater than zero"));
            }
        }
        if self.reconnect_max_delay < self.reconnect_min_delay {
            return invalid("reconnect_max_delay must be at least reconnect_min_delay".into());
        }
        if !(64..=Self::MAX_INLINE_PAYLOAD).contains(&self.max_inline_payload) {
            return invalid(format!(
                "max_inline_payload must be 64 to {} (is {})",
                Self::MAX_INLINE_PAYLOAD,
                self.max_inline_payload
            ));
        }
        Ok(())
    }

    /// The delay after `failures` failed attempts in a row (0 for the first retry), with a
    /// random jitter of up to half of it.
    pub(crate) fn backoff(&self, failures: u32) -> Duration {
        let base = self.backoff_base(failures);
        base + base.mul_f64(rand::random::<f64>() / 2.0)
    }

    fn backoff_base(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.reconnect_min_delay
            .saturating_mul(factor)
            .min(self.reconnect_max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let config = PgNotifierConfig {
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_millis(1_000),
            ..Default::default()
        };
        let bases: Vec<u128> = (0..6).map(|n| config.backoff_base(n).as_millis()).collect();
        assert_eq!(bases, [100, 200, 400, 800, 1_000, 1_000]);
        for failures in [0, 3, 40] {
            let base = config.backoff_base(failures);
            for _ in 0..100 {
                let delay = config.backoff(failures);
                assert!(
                    delay >= base && delay <= base + base / 2,
                    "{delay:?} for {base:?}"
                );
            }
        }
    }

    #[test]
    fn validate_names_the_bad_field() {
        let base = PgNotifierConfig::default;
        let cases = [
            (
                PgNotifierConfig {
                    channel: String::new(),
                    ..base()
                },
                "channel",
            ),
            (
                PgNotifierConfig {
                    channel: "Chat".into(),
                    ..base()
                },
                "channel",
            ),
            (
                PgNotifierConfig {
                    channel: "x".repeat(64),
                    ..base()
                },
                "channel",
            ),
            (
                PgNotifierConfig {
                    queue_capacity: 0,
                    ..base()
                },
                "queue_capacity",
            ),
            (
                PgNotifierConfig {
                    max_connections: 0,
                    ..base()
                },
                "max_connections",
            ),
            (
                PgNotifierConfig {
                    command_timeout: Duration::ZERO,
                    ..base()
                },
                "command_timeout",
            ),
            (
                PgNotifierConfig {
                    payload_retention: Duration::ZERO,
                    ..base()
                },
                "payload_retention",
            ),
            (
                PgNotifierConfig {
                    reconnect_min_delay: Duration::from_secs(2),
                    reconnect_max_delay: Duration::from_secs(1),
                    ..base()
                },
                "reconnect_max_delay",
            ),
            (
                PgNotifierConfig {
                    max_inline_payload: 8000,
                    ..base()
                },
                "max_inline_payload",
            ),
            (
                PgNotifierConfig {
                    max_inline_payload: 10,
                    ..base()
                },
                "max_inline_payload",
            ),
        ];
        for (config, field) in cases {
            let error = config.validate().unwrap_err();
            assert!(matches!(error, Error::Invalid(_)), "{error:?}");
            assert!(error.to_string().contains(field), "{error} should name {field}");
        }
        assert!(base().validate().is_ok());
    }
}
