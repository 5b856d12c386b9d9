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
        Err(TryLockError::WouldBlock) => Err(Error::storage_unavailable(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "another chatcore process (or store) has the SQLite database {} open: it holds the lock \
                 file {}. Stop it first, or use another database file",
                database.display(),
                path.display()
            ),
        ))),
        Err(TryLockError::Error(e)) => Err(Error::storage_unavailable(io::Error::new(
            e.kind(),
            format!("could not lock {}: {e}", path.display()),
        ))),
    }
}
