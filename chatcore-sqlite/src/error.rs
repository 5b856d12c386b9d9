//! Mapping SQLite's result codes to [`chatcore::Error`] variants, by what the caller must do.

use chatcore::Error;
use rusqlite::ffi::ErrorCode;

/// What kind of failure an SQLite error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Another connection holds a lock (`SQLITE_BUSY`, `SQLITE_LOCKED`).
    Busy,
    /// The disk or the configured size cap is full (`SQLITE_FULL`).
    Full,
    /// Not a database or damaged (`SQLITE_NOTADB`, `SQLITE_CORRUPT`).
    Corrupt,
    /// The file cannot be opened, read or written (`SQLITE_CANTOPEN`, `SQLITE_IOERR`, ...).
    Io,
    /// Anything else: a constraint, a bug, a missing table.
    Other,
}

pub(crate) fn class(error: &rusqlite::Error) -> Class {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Class::Busy,
        Some(ErrorCode::DiskFull) => Class::Full,
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => Class::Corrupt,
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::NoLargeFileSupport,
        ) => Class::Io,
        _ => Class::Other,
    }
}

/// Whether an error is about the database as a whole (so every job of a batch would hit it),
/// rather than about one job.
pub(crate) fn affects_everyone(error: &rusqlite::Error) -> bool {
    class(error) != Class::Other
}

/// Converts a driver error, keeping it as the source.
pub(crate) fn map(error: rusqlite::Error) -> Error {
    match class(&error) {
        Class::Busy | Class::Io => Error::storage_unavailable(error),
        Class::Full => Error::StorageFull(Box::new(error)),
        Class::Corrupt => Error::Corrupt {
            message: match error.sqlite_error_code() {
                Some(ErrorCode::NotADatabase) => "the file is not an SQLite database".to_owned(),
                _ => "the SQLite database is corrupt".to_owned(),
            },
            source: Some(Box::new(error)),
        },
        Class::Other => {
            let missing_schema = matches!(
                &error,
                rusqlite::Error::SqliteFailure(_, Some(message))
                    if message.starts_with("no such table: chatcore_")
            );
            if missing_schema {
                Error::internal(
                    "the chatcore schema is missing: call SqliteStore::migrate() first",
                    error,
                )
            } else {
                Error::internal("SQLite failed", error)
            }
        }
    }
}

/// A copy of `error` for answering several waiters with the same failure. SQLite failures
/// are copied exactly; other driver errors become an SQLite-style failure with their text.
pub(crate) fn duplicate(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// No answer from the SQLite threads within [`crate::SqliteConfig::answer_timeout`].
#[derive(Debug)]
pub(crate) struct NoAnswer(pub(crate) std::time::Duration);

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer from SQLite within {:?}", self.0)
    }
}

impl std::error::Error for NoAnswer {}

/// The error a caller sees when the store's threads are gone.
pub(crate) fn closed() -> Error {
    Error::storage_unavailable("the SQLite store is closed")
}
