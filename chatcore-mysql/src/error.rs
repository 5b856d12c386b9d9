//! Mapping `sqlx` errors to [`chatcore::Error`], keeping the driver error as the source.

use std::sync::Arc;

use chatcore::Error;

/// MySQL/MariaDB server error numbers we treat specially.
pub(crate) mod code {
    /// `ER_DUP_ENTRY`: a unique key already holds the value.
    pub const DUP_ENTRY: u16 = 1062;
    /// `ER_BAD_NULL_ERROR`: NULL into a NOT NULL column (how a batch refuses a removed sender).
    pub const BAD_NULL: u16 = 1048;
    /// `ER_CON_COUNT_ERROR`: too many connections.
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    /// `ER_SERVER_SHUTDOWN`.
    pub const SERVER_SHUTDOWN: u16 = 1053;
    /// `ER_LOCK_WAIT_TIMEOUT`.
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    /// `ER_LOCK_DEADLOCK`.
    pub const DEADLOCK: u16 = 1213;
    /// `ER_QUERY_INTERRUPTED` / `ER_CONNECTION_KILLED`.
    pub const QUERY_INTERRUPTED: u16 = 1317;
    /// `ER_CONNECTION_KILLED` (MariaDB).
    pub const CONNECTION_KILLED: u16 = 1927;
    /// `ER_RECORD_FILE_FULL`: a table is full.
    pub const TABLE_FULL: u16 = 1114;
    /// `ER_DISK_FULL`.
    pub const DISK_FULL: u16 = 1021;
    /// `ER_OUTOFMEMORY` and friends: the server is short of resources.
    pub const OUT_OF_RESOURCES: u16 = 1041;
}

/// The server error number of `err`, if it is a database error.
pub(crate) fn server_code(err: &sqlx::Error) -> Option<u16> {
    match err {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number()),
        _ => None,
    }
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
        sqlx::Error::Database(_) => matches!(
            server_code(err),
            Some(
                code::TOO_MANY_CONNECTIONS
                    | code::SERVER_SHUTDOWN
                    | code::LOCK_WAIT_TIMEOUT
                    | code::DEADLOCK
                    | code::QUERY_INTERRUPTED
                    | code::CONNECTION_KILLED
                    | code::OUT_OF_RESOURCES
            )
        ),
        _ => false,
    }
}

/// Maps a driver error to the chatcore error a caller can act on. `context` says what was
/// being done, for the log of an internal error.
pub(crate) fn map(context: &'static str, err: sqlx::Error) -> Error {
    if is_unavailable(&err) {
        return Error::storage_unavailable(err);
    }
    match server_code(&err) {
        Some(code::TABLE_FULL | code::DISK_FULL) => Error::StorageFull(Box::new(err)),
        _ => Error::internal(context, err),
    }
}

/// A driver error shared by every caller of one failed batch (a [`chatcore::Error`] is not
/// `Clone`, and each caller needs its own). The driver error is its source, so the chain
/// holds the `sqlx::Error` itself (a caller can downcast to it) and everything below it.
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
        match server_code(&self.0) {
            Some(code::TABLE_FULL | code::DISK_FULL) => Error::StorageFull(Box::new(self.clone())),
            _ => Error::internal(context, self.clone()),
        }
    }
}

/// No answer from MySQL within [`crate::MysqlConfig::statement_timeout`].
#[derive(Debug)]
pub(crate) struct NoAnswer {
    pub(crate) context: &'static str,
    pub(crate) limit: std::time::Duration,
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: no answer from MySQL within {:?}",
            self.context, self.limit
        )
    }
}

impl std::error::Error for NoAnswer {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_and_io_are_unavailable() {
        assert!(matches!(
            map("x", sqlx::Error::PoolTimedOut),
            Error::Unavailable { what: "storage", .. }
        ));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = map("x", sqlx::Error::Io(io));
        assert!(err.is_retryable());
        // The driver error survives as the source.
        let source = std::error::Error::source(&err).expect("source kept");
        assert!(source.to_string().contains("refused"));
    }

    #[test]
    fn other_errors_are_internal_with_source() {
        let err = map("reading", sqlx::Error::RowNotFound);
        match &err {
            Error::Internal { message, source } => {
                assert_eq!(message, "reading");
                assert!(source.is_some());
            }
            other => panic!("expected internal, got {other:?}"),
        }
        let shared = SharedError(Arc::new(sqlx::Error::PoolTimedOut));
        assert!(shared.to_error("batch").is_retryable());
    }

    /// Every caller of a failed batch gets the whole chain: the driver error itself (which a
    /// caller can downcast to) and its own cause.
    #[test]
    fn a_shared_batch_error_keeps_the_driver_error_and_its_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let shared = SharedError(Arc::new(sqlx::Error::Io(io)));
        for err in [
            shared.to_error("storing messages"),
            shared.to_error("storing messages"),
        ] {
            assert!(err.is_retryable());
            let mut chain = Vec::new();
            let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            while let Some(e) = next {
                chain.push(e);
                next = e.source();
            }
            assert!(
                chain.iter().any(|e| e.downcast_ref::<sqlx::Error>().is_some()),
                "the sqlx error is in the chain"
            );
            let io = chain
                .iter()
                .find_map(|e| e.downcast_ref::<std::io::Error>())
                .expect("the I/O error is in the chain");
            assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
        }
    }
}
