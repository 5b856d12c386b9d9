//! [`SqliteConfig`]: where the database lives and how it is opened.

use std::path::PathBuf;
use std::time::Duration;

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A database file, created when missing if [`SqliteConfig::create_if_missing`] is set.
    /// Its `-wal` and `-shm` companions live beside it, and the lock file
    /// `<file>-chatcore.lock` that keeps a second store off it.
    File(PathBuf),
    /// A private in-memory database, gone when the store closes. All work runs on the one
    /// writer thread and its one connection (so writes and reads see the same database);
    /// [`SqliteConfig::readers`] is ignored.
    Memory,
}

/// SQLite's `PRAGMA synchronous`: how often the write-ahead log is flushed to stable storage.
///
/// In WAL mode the trade-off is:
///
/// | setting | an acknowledged send survives a process crash (`kill -9`) | survives power loss / OS crash | cost |
/// |---|---|---|---|
/// | [`Full`](Synchronous::Full) (default) | yes | yes | one `fsync` of the WAL per group-committed batch; by default done on a sync thread while the writer commits the next batch (see [`SqliteConfig::pipelined_sync`]) |
/// | [`Extra`](Synchronous::Extra) | yes | yes, also the directory entry of a fresh WAL | like `Full`, plus a directory sync |
/// | [`Normal`](Synchronous::Normal) | yes | no: the last commits before the crash may be lost (the file stays consistent) | `fsync` only at checkpoints |
/// | [`Off`](Synchronous::Off) | yes | no, and the file may be corrupted | no `fsync` at all |
///
/// Because the writer commits every send waiting at that moment in one transaction, `Full`
/// costs one `fsync` per batch rather than per message; under load that is cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Synchronous {
    /// No syncs at all (`synchronous=OFF`). Only for throwaway data.
    Off,
    /// Sync at checkpoints only (`synchronous=NORMAL`): never corrupt, but the newest commits
    /// can be lost on power loss.
    Normal,
    /// Sync the WAL at every commit (`synchronous=FULL`): an acknowledged send is on stable
    /// storage. The default.
    #[default]
    Full,
    /// `Full` plus a sync of the directory after creating the WAL (`synchronous=EXTRA`).
    Extra,
}

impl Synchronous {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

/// How to open a [`SqliteStore`](crate::SqliteStore). Every field has a documented default;
/// change what you need with struct update syntax.
///
/// ```
/// use std::time::Duration;
/// use chatcore_sqlite::{Location, SqliteConfig, Synchronous};
///
/// let config = SqliteConfig {
///     location: Location::File("/var/lib/chat/chat.sqlite3".into()),
///     synchronous: Synchronous::Full,
///     busy_timeout: Duration::from_secs(2),
///     ..SqliteConfig::default()
/// };
/// assert_eq!(config.readers, 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// Where the database lives. Default: the file `chatcore.sqlite3` in the working
    /// directory.
    pub location: Location,
    /// Create the file when it does not exist. Default: `true`.
    pub create_if_missing: bool,
    /// Durability of commits (see [`Synchronous`]). Default: [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// Reader threads, each with its own read-only connection; reads never wait for the
    /// writer (WAL mode). `0` serves reads on the writer thread. At most [`MAX_READERS`].
    /// Default: `4`.
    pub readers: usize,
    /// How long a statement waits for a lock held by another connection (a backup tool, the
    /// host's own connection) before failing with [`chatcore::Error::Unavailable`]. Whole
    /// milliseconds up to `i32::MAX` (SQLite's limit). Default: 5 s.
    pub busy_timeout: Duration,
    /// Longest a caller waits for the writer or a reader thread to answer (queued behind
    /// other work, or stuck on a lock or a slow disk) before it gets
    /// [`chatcore::Error::Unavailable`] (an HTTP front end answers 503 with `Retry-After`).
    /// The work itself is not cancelled: a send answered so may still be committed, which a
    /// retry with the same idempotency key resolves. More than zero. Default: 5 s.
    pub answer_timeout: Duration,
    /// Most writes the writer commits in one transaction (group commit); at least 1.
    /// Default: `1024`.
    pub max_batch: usize,
    /// Page cache per connection, in KiB (`PRAGMA cache_size=-N`). Default: 16384 (16 MiB).
    pub cache_size_kib: u32,
    /// Prepared statements cached per connection. Default: `64`.
    pub statement_cache: usize,
    /// Users each thread caches by [`chatcore::Username::key`], for resolving names (users
    /// are never renamed or deleted, so a cached entry never goes stale); the cache is
    /// cleared when full. `0` turns it off.
    /// Default: `100_000`.
    pub name_cache: usize,
    /// Upper bound on the database size in pages (`PRAGMA max_page_count`); a write past it
    /// fails with [`chatcore::Error::StorageFull`]. `None` keeps SQLite's limit; `Some(0)` is
    /// refused. Default: `None`.
    pub max_page_count: Option<u64>,
    /// With [`Synchronous::Full`] on a file: sync the WAL on a thread of its own instead of
    /// inside each commit, so the writer commits the next batch while the previous one is
    /// being synced. Every send is still answered only after the WAL holding it is on stable
    /// storage, so an acknowledged send survives power loss exactly as with plain `Full`.
    /// The difference: other readers can see a commit up to one `fsync` before it is
    /// durable, so after a power loss (not a process crash, which loses nothing) a message
    /// that was shown but never acknowledged to its sender can be gone. `false` uses
    /// SQLite's own `synchronous=FULL`, where a commit is visible only once synced.
    /// Default: `true`.
    pub pipelined_sync: bool,
    /// WAL size, in pages, after which a commit copies the WAL back into the database file
    /// (`PRAGMA wal_autocheckpoint`). A larger value means fewer, larger checkpoints: pages
    /// changed many times between two checkpoints are copied once, at the cost of a larger
    /// `-wal` file (about 4 KiB per page). At least 1: the store checkpoints nowhere else
    /// while it runs, so `0` (SQLite's "never") would let the WAL grow without bound.
    /// Default: `1000` (SQLite's default).
    pub wal_autocheckpoint_pages: u32,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            location: Location::File(PathBuf::from("chatcore.sqlite3")),
            create_if_missing: true,
            synchronous: Synchronous::Full,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(5),
            max_batch: 1024,
            cache_size_kib: 16 * 1024,
            statement_cache: 64,
            name_cache: 100_000,
            max_page_count: None,
            pipelined_sync: true,
            wal_autocheckpoint_pages: 1000,
        }
    }
}

impl SqliteConfig {
    /// The defaults, with the database at `path`.
    ///
    /// ```
    /// let config = chatcore_sqlite::SqliteConfig::file("chat.sqlite3");
    /// assert_eq!(config.location, chatcore_sqlite::Location::File("chat.sqlite3".into()));
    /// ```
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            location: Location::File(path.into()),
            ..Self::default()
        }
    }

    /// The defaults, with a private in-memory database.
    ///
    /// ```
    /// let config = chatcore_sqlite::SqliteConfig::memory();
    /// assert_eq!(config.location, chatcore_sqlite::Location::Memory);
    /// ```
    pub fn memory() -> Self {
        Self {
            location: Location::Memory,
            ..Self::default()
        }
    }

    /// Checks that the settings make sense; [`SqliteStore::open`](crate::SqliteStore::open)
    /// calls it first, and a host can call it where it builds the config to fail early.
    /// [`chatcore::Error::Invalid`], naming the setting, for: an empty file path, more than
    /// [`MAX_READERS`] readers, a `max_batch` of 0, a zero `answer_timeout`, a `busy_timeout` past SQLite's
    /// `i32::MAX` ms, a `max_page_count` of `Some(0)`, a `wal_autocheckpoint_pages` of 0.
    ///
    /// ```
    /// use chatcore_sqlite::SqliteConfig;
    /// assert!(SqliteConfig::memory().validate().is_ok());
    /// assert!(SqliteConfig { max_batch: 0, ..SqliteConfig::memory() }.validate().is_err());
    /// assert!(SqliteConfig::file("").validate().is_err());
    /// ```
    pub fn validate(&self) -> chatcore::Result<()> {
        let invalid = |message: String| Err(chatcore::Error::invalid(message));
        if let Location::File(path) = &self.location
            && path.as_os_str().is_empty()
        {
            return invalid("the SQLite database path is empty: name a file".to_owned());
        }
        if self.readers > MAX_READERS {
            return invalid(format!(
                "readers is {}: at most {MAX_READERS} reader threads (0 serves reads on the writer)",
                self.readers
            ));
        }
        if self.max_batch == 0 {
            return invalid("max_batch must be at least 1".to_owned());
        }
        if self.busy_timeout.as_millis() > i32::MAX as u128 {
            return invalid(format!(
                "busy_timeout is {:?}: SQLite takes at most {} ms",
                self.busy_timeout,
                i32::MAX
            ));
        }
        if self.answer_timeout.is_zero() {
            return invalid("answer_timeout must be more than zero".to_owned());
        }
        if self.max_page_count == Some(0) {
            return invalid("max_page_count must be at least 1 (or None for SQLite's limit)".to_owned());
        }
        if self.wal_autocheckpoint_pages == 0 {
            return invalid(
                "wal_autocheckpoint_pages must be at least 1: with 0 the WAL would grow without bound"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// The most reader threads a store starts ([`SqliteConfig::readers`]): each is a thread and
/// a connection with its own page cache, and more than the cores that serve them only adds
/// memory.
pub const MAX_READERS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    /// Each setting that makes no sense is refused, naming the setting; the defaults pass,
    /// and so do the edge values that do make sense.
    #[test]
    fn validate_refuses_each_senseless_setting() {
        let base = SqliteConfig::file("chat.sqlite3");
        base.validate().unwrap();
        SqliteConfig::memory().validate().unwrap();
        let fine = [
            SqliteConfig {
                readers: 0,
                ..base.clone()
            },
            SqliteConfig {
                readers: MAX_READERS,
                ..base.clone()
            },
            SqliteConfig {
                max_batch: 1,
                ..base.clone()
            },
            SqliteConfig {
                busy_timeout: Duration::ZERO,
                ..base.clone()
            },
            SqliteConfig {
                busy_timeout: Duration::from_millis(i32::MAX as u64),
                ..base.clone()
            },
            SqliteConfig {
                max_page_count: Some(1),
                ..base.clone()
            },
            SqliteConfig {
                wal_autocheckpoint_pages: 1,
                ..base.clone()
            },
            SqliteConfig {
                name_cache: 0,
                statement_cache: 0,
                cache_size_kib: 0,
                ..base.clone()
            },
        ];
        for config in fine {
            assert!(config.validate().is_ok(), "{config:?}");
        }
        let refused = [
            (SqliteConfig::file(""), "path"),
            (
                SqliteConfig {
                    readers: MAX_READERS + 1,
                    ..base.clone()
                },
                "readers",
            ),
            (
                SqliteConfig {
                    max_batch: 0,
                    ..base.clone()
                },
                "max_batch",
            ),
            (
                SqliteConfig {
                    busy_timeout: Duration::from_millis(i32::MAX as u64 + 1),
                    ..base.clone()
                },
                "busy_timeout",
            ),
            (
                SqliteConfig {
                    max_page_count: Some(0),
                    ..base.clone()
                },
                "max_page_count",
            ),
            (
                SqliteConfig {
                    wal_autocheckpoint_pages: 0,
                    ..base.clone()
                },
                "wal_autocheckpoint_pages",
            ),
        ];
        for (config, setting) in refused {
            match config.validate() {
                Err(chatcore::Error::Invalid(message)) => assert!(message.contains(setting), "{message}"),
                other => panic!("{setting}: expected Invalid, got {other:?}"),
            }
        }
    }
}
