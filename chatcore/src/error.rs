//! The one error type of chatcore, shared by the service, the stores and the notifiers.

use std::time::Duration;

/// A boxed error kept as the `source` of an [`Error`], so the driver's chain survives.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, sorted by what the caller must do about it. A web layer maps each
/// variant to one status code (see `chatcore-axum`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is wrong; the message is for a human (HTTP 400).
    #[error("{0}")]
    Invalid(String),

    /// The thing asked for does not exist or is not visible to the caller (HTTP 404).
    #[error("{0} not found")]
    NotFound(Entity),

    /// The request clashes with existing state, e.g. a taken username (HTTP 409).
    #[error("{0}")]
    Conflict(String),

    /// The request is well formed but contradicts an earlier one, e.g. an idempotency key
    /// reused with another recipient or body (HTTP 422).
    #[error("{0}")]
    Unprocessable(String),

    /// A send policy refused the message ([`crate::SendPolicy`]); nothing was stored. HTTP 403
    /// or 422, as the policy chose ([`crate::RejectionKind`]), with the policy's reason.
    #[error("{0}")]
    Rejected(crate::Rejection),

    /// The caller may not do this, whatever the input: not the sender of the message they
    /// change, past the edit window, writing to someone who blocks them (HTTP 403). Nothing
    /// was stored.
    #[error("{0}")]
    Forbidden(Forbidden),

    /// The caller must slow down (HTTP 429 with `Retry-After`).
    #[error("too many requests, retry in {} ms", retry_after.as_millis())]
    RateLimited {
        /// How long until the next attempt can succeed.
        retry_after: Duration,
    },

    /// A backend is temporarily unavailable (down, busy, locked, timed out); retrying later
    /// may succeed (HTTP 503).
    #[error("{what} unavailable")]
    Unavailable {
        /// Which backend: "storage", "notifications", ...
        what: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// The storage device is full; nothing was stored (HTTP 507/503).
    #[error("storage is full")]
    StorageFull(#[source] BoxError),

    /// The stored data is not what the code expects: not a database, corrupt, or written by
    /// a newer version. Needs an operator (HTTP 500).
    #[error("storage is corrupt or incompatible: {message}")]
    Corrupt {
        /// What was found, for a human.
        message: String,
        /// The driver's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// A bug or an unexpected backend failure (HTTP 500).
    #[error("internal error: {message}")]
    Internal {
        /// Context for the log.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

/// The kind of thing that was not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Entity {
    /// A user (unknown recipient, unknown conversation partner).
    User,
    /// A message (unknown id, or one the caller may not read).
    Message,
    /// A session token.
    Session,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entity::User => "user",
            Entity::Message => "message",
            Entity::Session => "session",
        })
    }
}

/// Why an [`Error::Forbidden`] was refused. Displays as the message a client is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Forbidden {
    /// The recipient of a message tried to edit or delete it: only its sender may.
    NotTheSender,
    /// The sender tried to edit a message older than [`crate::ChatConfig::edit_window`].
    EditWindowClosed,
    /// A block stands between the two users, in either direction ([`crate::Store::set_block`]):
    /// neither may message (nor edit a message to) the other; nothing was stored or notified.
    Blocked,
    /// The account was removed ([`crate::Store::remove_user`]): it sends nothing any more.
    AccountRemoved,
}

impl std::fmt::Display for Forbidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Forbidden::NotTheSender => "only the sender of a message can change it",
            Forbidden::EditWindowClosed => "this message can no longer be edited",
            Forbidden::Blocked => "you cannot message this user",
            Forbidden::AccountRemoved => "this account was deleted",
        })
    }
}

impl Error {
    /// An [`Error::Invalid`] with a message for a human.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }

    /// An [`Error::Conflict`] with a message for a human.
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict(message.into())
    }

    /// Storage is unavailable because of `source`.
    pub fn storage_unavailable(source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            what: "storage",
            source: source.into(),
        }
    }

    /// The notification transport is unavailable because of `source`.
    pub fn notifications_unavailable(source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            what: "notifications",
            source: source.into(),
        }
    }

    /// An [`Error::Internal`] with context and a cause.
    pub fn internal(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Internal {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An [`Error::Internal`] with only context (an invariant broke).
    pub fn bug(message: impl Into<String>) -> Self {
        Error::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::RateLimited { .. })
    }
}

/// Shorthand for `Result<T, chatcore::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
