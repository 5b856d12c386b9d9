//! Mapping `sqlx` errors to [`chatcore::Error`], keeping the driver error as the source.

use std::sync::Arc;

use chatcore::Error;

/// SQLSTATE codes we treat specially.
pub(crate) mod code {
    /// `unique_violation`.
    pub const UNIQUE_VIOLATION: &str = "23505";
    /// `disk_full`.
    pub const DISK_FULL: &str = "53100";
    /// `character_not_in_repertoire`: e.g. a NUL character, which `text` cannot hold.
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    /// `untranslatable_character`.
    pub const UNTRANSLATABLE_CHARACTER: &str = "22P05";
}

/// The SQLSTATE of `err`, if it is a database error.
pub(crate) fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether a SQLSTATE means "the server is down, busy or timing out": retrying later may
/// work. Class 08 (connection exception), 53 (insufficient resources, but a full disk), 57
/// (operator intervention: cancelled by `statement_timeout`, shutting down, starting up),
/// 40001/40P01 (serialization failure, deadlock), 55P03 (lock not available) and 25006 (a
/// read-only standby after a failover).
fn unavailable_state(state: &str) -> bool {
    (state.starts_with("08") || state.starts_with("53") || state.starts_with("57"))
        && state != code::DISK_FULL
        || matches!(state, "40001" | "40P01" | "55P03" | "25006")
}

/// Whether `err` means the database cannot be reached or is busy: retrying later may work.
pub(crate) fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(_) => sqlstate(err).is_some_and(|s| unavailable_state(&s)),
        _ => false,
    }
}

/// Maps a driver error to the chatcore error a caller can act on. `context` says what was
/// being done, for the log of an internal error.
pub(crate) fn map(context: &'static str, err: sqlx::Error) -> Error {
    if is_unavailable(&err) {
        return Error::storage_unavailable(err);
    }
    match sqlstate(&err).as_deref() {
        Some(code::DISK_FULL) => Error::StorageFull(Box::new(err)),
        // The caller's text, not the database: `Invalid` carries a message, not a source.
        Some(code::CHARACTER_NOT_IN_REPERTOIRE | code::UNTRANSLATABLE_CHARACTER) => {
            Error::invalid(format!("text PostgreSQL cannot store: {err}"))
        }
        _ => Error::internal(context, err),
    }
}

/// A driver error shared by every caller of one failed batch (a [`chatcore::Error`] is not
/// `Clone`, and each caller needs its own). The driver error is its source.
#[derive(Debug, Clone)]
pub(crate) struct SharedError(pub(crate) Arc<sqlx::Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a batch of sends failed")
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl SharedError {
    /// This caller's copy, mapped like [`map`].
    pub(crate) fn to_error(&self, context: &'static str) -> Error {
        if is_unavailable(&self.0) {
            return Error::storage_unavailable(self.clone());
        }
        match sqlstate(&self.0).as_deref() {
            Some(code::DISK_FULL) => Error::StorageFull(Box::new(self.clone())),
            Some(code::CHARACTER_NOT_IN_REPERTOIRE | code::UNTRANSLATABLE_CHARACTER) => {
                Error::invalid(format!("text PostgreSQL cannot store: {}", self.0))
            }
            _ => Error::internal(context, self.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_and_io_are_unavailable_with_their_source() {
        assert!(matches!(
            map("x", sqlx::Error::PoolTimedOut),
            Error::Unavailable { what: "storage", .. }
        ));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = map("x", sqlx::Error::Io(io));
        assert!(err.is_retryable());
        let source = std::error::Error::source(&err).expect("source kept");
        assert!(source.to_string().contains("refused"));
    }

    #[test]
    fn sqlstates_sort_into_retryable_and_not() {
        for state in [
            "08006", "57014", "57P01", "57P03", "53300", "40001", "40P01", "55P03", "25006",
        ] {
            assert!(unavailable_state(state), "{state}");
        }
        for state in ["53100", "23505", "42P01", "22021", "XX000"] {
            assert!(!unavailable_state(state), "{state}");
        }
    }

    #[test]
    fn other_errors_are_internal_with_source() {
        match map("reading", sqlx::Error::RowNotFound) {
            Error::Internal { message, source } => {
                assert_eq!(message, "reading");
                assert!(source.is_some());
            }
            other => panic!("expected internal, got {other:?}"),
        }
        let shared = SharedError(Arc::new(sqlx::Error::PoolTimedOut));
        assert!(shared.to_error("batch").is_retryable());
    }
}
