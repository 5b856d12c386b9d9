//! The causes kept as the `source` of a [`chatcore::Error::Unavailable`] from this crate.

use std::time::Duration;

use chatcore::Error;

/// Why the notification transport could not do what was asked, besides a driver error
/// (which is kept as the source as is).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TransportError {
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The subscriber connection is down; the background task is reconnecting.
    #[error("the redis subscriber connection is down; reconnecting")]
    Disconnected,
    /// The notifier's background task has stopped (the notifier was dropped).
    #[error("the redis notifier has shut down")]
    Closed,
    /// Redis failed the request; shared between the callers waiting on one batched command.
    #[error(transparent)]
    Redis(#[from] std::sync::Arc<redis::RedisError>),
}

impl From<TransportError> for Error {
    fn from(error: TransportError) -> Self {
        Error::notifications_unavailable(error)
    }
}
