//! [`RedisConfig`]: where Redis is and how patient to be with it.

use std::time::Duration;

use chatcore::{Error, Result};

/// Settings of a [`crate::RedisNotifier`]. Every field is public and documented with its
/// default; start from `RedisConfig::default()` and change what you need.
///
/// ```
/// use std::time::Duration;
/// let config = chatcore_redis::RedisConfig {
///     url: "redis://10.0.0.5:6379".into(),
///     channel_prefix: "staging:chat:".into(),
///     ..Default::default()
/// };
/// assert_eq!(config.command_timeout, Duration::from_secs(1));
/// ```
///
/// Its `Debug` output hides a password in the URL, so the config can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// The Redis server, as a `redis://` (or `rediss://` / `unix://`, when the `redis` crate
    /// is built with that support) URL; a password and database number go in the URL.
    /// Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prepended to every channel name: user 42's channel is `<prefix>user:42`. Every node of
    /// one deployment must use the same prefix; different deployments (or tests) sharing one
    /// Redis must use different ones. Default `chatcore:`.
    pub channel_prefix: String,
    /// Deliveries queued per subscription (per open connection). A subscriber that does
    /// not keep up misses the events that find its queue full and gets one
    /// [`chatcore::Delivery::Gap`] for them, then goes on. Default 256, as
    /// [`chatcore::LocalNotifier::DEFAULT_QUEUE`].
    pub queue_capacity: usize,
    /// Longest wait to open a connection to Redis (TCP, handshake, authentication).
    /// Default 1 s.
    pub connect_timeout: Duration,
    /// Longest wait for Redis to answer a command: a `publish` (including reopening the
    /// publishing connection), a `SUBSCRIBE` or a health-check `PING`. A `subscribe` call
    /// waits at most twice this (its `SUBSCRIBE` may queue behind one already in flight).
    /// Default 1 s.
    pub command_timeout: Duration,
    /// Delay before the second attempt to reconnect the subscriber connection after it was
    /// lost (the first attempt is immediate); each further attempt doubles it up to
    /// [`RedisConfig::reconnect_max_delay`]. The same schedule paces the retries of gap
    /// notices after a failed publish (the first retry waits this long). Default 100 ms.
    pub reconnect_min_delay: Duration,
    /// Longest delay between two reconnect attempts. Default 5 s.
    pub reconnect_max_delay: Duration,
    /// How often the subscriber connection is checked with a `PING` when nothing else
    /// happens on it, so that a connection that died silently (no TCP reset) is noticed and
    /// reopened. Default 10 s.
    pub health_check_interval: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            channel_prefix: "chatcore:".into(),
            queue_capacity: 256,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("channel_prefix", &self.channel_prefix)
            .field("queue_capacity", &self.queue_capacity)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("reconnect_min_delay", &self.reconnect_min_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("health_check_interval", &self.health_check_interval)
            .finish()
    }
}

/// `url` without the credentials between `://` and `@`.
fn redact(url: &str) -> std::borrow::Cow<'_, str> {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..]).into()
        }
        _ => url.into(),
    }
}

impl RedisConfig {
    /// Checks the settings; [`Error::Invalid`] names the first bad one.
    ///
    /// ```
    /// let bad = chatcore_redis::RedisConfig { queue_capacity: 0, ..Default::default() };
    /// assert!(bad.validate().is_err());
    /// assert!(chatcore_redis::RedisConfig::default().validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<()> {
        if self.queue_capacity == 0 {
            return Err(Error::invalid(
                "redis notifier: queue_capacity must be at least 1",
            ));
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("reconnect_min_delay", self.reconnect_min_delay),
            ("health_check_interval", self.health_check_interval),
        ] {
            if value.is_zero() {
                return Err(Error::invalid(format!(
                    "redis notifier: {name} must be greater than zero"
                )));
            }
        }
        if self.reconnect_max_delay < self.reconnect_min_delay {
            return Err(Error::invalid(
                "redis notifier: reconnect_max_delay must be at least reconnect_min_delay",
            ));
        }
        if self.channel_prefix.chars().any(char::is_whitespace) {
            return Err(Error::invalid(
                "redis notifier: channel_prefix must not contain whitespace",
            ));
        }
        Ok(())
    }

    /// The reconnect delay after `failures` failed attempts in a row (0 for the first retry).
    pub(crate) fn backoff(&self, failures: u32) -> Duration {
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
    fn backoff_doubles_up_to_the_cap() {
        let config = RedisConfig {
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_millis(1_000),
            ..Default::default()
        };
        let delays: Vec<u128> = (0..6).map(|n| config.backoff(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(config.backoff(u32::MAX), Duration::from_millis(1_000));
    }

    #[test]
    fn debug_hides_the_password() {
        let config = RedisConfig {
            url: "redis://default:s3cret@10.1.2.3:6379/2".into(),
            ..Default::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redis://***@10.1.2.3:6379/2"), "{shown}");
        assert!(format!("{:?}", RedisConfig::default()).contains("redis://127.0.0.1:6379"));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let cases = [
            (
                RedisConfig {
                    queue_capacity: 0,
                    ..Default::default()
                },
                "queue_capacity",
            ),
            (
                RedisConfig {
                    command_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "command_timeout",
            ),
            (
                RedisConfig {
                    reconnect_min_delay: Duration::from_secs(2),
                    reconnect_max_delay: Duration::from_secs(1),
                    ..Default::default()
                },
                "reconnect_max_delay",
            ),
            (
                RedisConfig {
                    channel_prefix: "a b".into(),
                    ..Default::default()
                },
                "channel_prefix",
            ),
        ];
        for (config, field) in cases {
            let error = config.validate().unwrap_err();
            assert!(matches!(error, Error::Invalid(_)), "{error:?}");
            assert!(error.to_string().contains(field), "{error} should name {field}");
        }
    }
}
