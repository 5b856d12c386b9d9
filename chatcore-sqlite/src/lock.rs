//! The lock file that keeps a second store, in this process or another, off a database file:
//! each store reads and writes through its own connections and caches, so two of them on one
//! file could disagree (about a revoked session, a name, a position).

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use chatcore::{Error, Result};

/// `<database file>-chatcore.lock`, beside the database and its `-wal` and `-shm` files.
pub(crate) fn lock_path(database: &Path) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push("-chatcore.lock");
    PathBuf::from(path)
}

/// Takes an exclusive advisory lock on the database's lock file (creating it when missing),
/// held until the returned file is dropped; the operating system releases it too when the
/// process dies, however it dies. [`Error::Unavailable`] naming both files when another
/// store holds it.
pub(crate) fn lock_database(database: &Path) -> Result<File> {
    let path = lock_path(database);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            Error::storage_unavailable(io::Error::new(
                e.kind(),
                format!("could not open the lock file {}: {e}", path.display()),
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::storage_unavailable(DatabaseInUse {
            database: database.to_owned(),
            lock_file: path,
        })),
        Err(TryLockError::Error(e)) => Err(Error::storage_unavailable(io::Error::new(
            e.kind(),
            format!("could not lock {}: {e}", path.display()),
        ))),
    }
}

/// Why [`crate::SqliteStore::open`] refused a database file: another store, in this process
/// or another, holds its lock file. It is the source of the [`Error::Unavailable`] returned
/// then, typed so that a caller can tell "a server has it open" from a file it cannot read
/// (`chat-server`'s operator commands then ask the running server instead of failing).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use chatcore_sqlite::{DatabaseInUse, SqliteConfig, SqliteStore};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("chat.db");
/// let first = SqliteStore::open(SqliteConfig::file(&path)).await.unwrap();
/// let refused = SqliteStore::open(SqliteConfig::file(&path)).await.err().unwrap();
/// assert_eq!(DatabaseInUse::of(&refused).unwrap().database, path);
/// first.close().await.unwrap();
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseInUse {
    /// The database file.
    pub database: PathBuf,
    /// Its lock file, `<database file>-chatcore.lock`, held by the other store.
    pub lock_file: PathBuf,
}

impl DatabaseInUse {
    /// The `DatabaseInUse` behind `error`, when an open failed because another store holds
    /// the file.
    pub fn of(error: &Error) -> Option<&DatabaseInUse> {
        match error {
            Error::Unavailable { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }
}

impl std::fmt::Display for DatabaseInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "another chatcore process (or store) has the SQLite database {} open: it holds the lock \
             file {}. Stop it first, or use another database file",
            self.database.display(),
            self.lock_file.display()
        )
    }
}

impl std::error::Error for DatabaseInUse {}
