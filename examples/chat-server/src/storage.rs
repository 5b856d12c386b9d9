//! Opening the store named by `--database` as an `Arc<dyn chatcore::Backend>`, and migrating it.

use std::path::PathBuf;
use std::sync::Arc;

use chatcore::Backend;
use chatcore_mysql::{MysqlConfig, MysqlStore};
use chatcore_postgres::{PostgresConfig, PostgresStore};
use chatcore_sqlite::{SqliteConfig, SqliteStore, Synchronous};

use crate::ServerError;
use crate::options::{ServerOptions, SqliteSync};

/// Where the messages live, as parsed from a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file.
    SqliteFile(PathBuf),
    /// An SQLite database in memory (lost at exit).
    SqliteMemory,
    /// A MySQL or MariaDB server.
    Mysql(String),
    /// A PostgreSQL server.
    Postgres(String),
}

/// Fails when `--database` names an SQLite file that does not exist: for `command`s that only
/// read, so a mistyped path is reported instead of creating a new, empty database there.
pub fn require_existing(options: &ServerOptions, command: &str) -> Result<(), ServerError> {
    if let DatabaseUrl::SqliteFile(path) = DatabaseUrl::parse(&options.database)?
        && !path.exists()
    {
        return Err(ServerError::Config(format!(
            "no database at {}: check --database ({command} only reads and creates no database; \
             `chat-server migrate` or starting the server creates it)",
            path.display()
        )));
    }
    Ok(())
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:`, `mysql://...` or
    /// `postgres://...` (`postgresql://...`).
    ///
    /// ```
    /// use chat_server::storage::DatabaseUrl;
    /// assert_eq!(DatabaseUrl::parse("sqlite://chat.db").unwrap(), DatabaseUrl::SqliteFile("chat.db".into()));
    /// assert_eq!(DatabaseUrl::parse("sqlite:///var/lib/chat.db").unwrap(), DatabaseUrl::SqliteFile("/var/lib/chat.db".into()));
    /// assert_eq!(DatabaseUrl::parse("sqlite::memory:").unwrap(), DatabaseUrl::SqliteMemory);
    /// assert_eq!(DatabaseUrl::parse("postgres://u@db/chat").unwrap(), DatabaseUrl::Postgres("postgres://u@db/chat".into()));
    /// assert!(DatabaseUrl::parse("oracle://x").is_err());
    /// ```
    pub fn parse(url: &str) -> Result<Self, ServerError> {
        if url == "sqlite::memory:" || url == "sqlite://:memory:" {
            return Ok(DatabaseUrl::SqliteMemory);
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(ServerError::Config(format!("database URL {url:?} names no file")));
            }
            return Ok(DatabaseUrl::SqliteFile(PathBuf::from(path)));
        }
        if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            return Ok(DatabaseUrl::Mysql(url.replacen("mariadb://", "mysql://", 1)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        Err(ServerError::Config(format!(
            "unsupported database URL {url:?}: use sqlite://PATH, sqlite::memory:, mysql://... or postgres://..."
        )))
    }
}

/// Opens the database the options name, as a [`Backend`]: the one place that knows which
/// backends exist. Everything after (migrate, serve, close) treats them alike. Does not
/// migrate.
pub async fn open(options: &ServerOptions) -> Result<Arc<dyn Backend>, ServerError> {
    let url = DatabaseUrl::parse(&options.database)?;
    let sqlite = matches!(url, DatabaseUrl::SqliteFile(_) | DatabaseUrl::SqliteMemory);
    open_url(options, url)
        .await
        .map_err(|source| ServerError::Database {
            url: crate::redacted(&options.database),
            hint: open_hint(sqlite, &source),
            source,
        })
}

/// What an operator can do about `error` from opening a database.
fn open_hint(sqlite: bool, error: &chatcore::Error) -> &'static str {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.contains("1049") || text.contains("does not exist") {
        "create the database first (CREATE DATABASE ...), or fix its name in --database"
    } else if text.contains("1045")
        || text.contains("password authentication failed")
        || text.contains("Access denied")
    {
        "check the user name and password in --database"
    } else if text.contains("pool timed out")
        || text.contains("Connection refused")
        || text.contains("connection refused")
    {
        "is the database server running and reachable at that address? check host and port in --database"
    } else if sqlite {
        "check the path in --database, that its directory exists and is writable, and that no other server has it open"
    } else {
        "check --database and that the database server answers"
    }
}

async fn open_url(options: &ServerOptions, url: DatabaseUrl) -> Result<Arc<dyn Backend>, chatcore::Error> {
    Ok(match url {
        url @ (DatabaseUrl::SqliteFile(_) | DatabaseUrl::SqliteMemory) => {
            let mut config = match url {
                DatabaseUrl::SqliteFile(path) => SqliteConfig::file(path),
                _ => SqliteConfig::memory(),
            };
            config.synchronous = match options.sqlite_synchronous {
                SqliteSync::Full | SqliteSync::FullInCommit => Synchronous::Full,
                SqliteSync::Normal => Synchronous::Normal,
                SqliteSync::Off => Synchronous::Off,
            };
            config.pipelined_sync = options.sqlite_synchronous == SqliteSync::Full;
            config.readers = options.sqlite_readers.max(1);
            config.answer_timeout = options.storage_timeout();
            Arc::new(SqliteStore::open(config).await?)
        }
        DatabaseUrl::Mysql(url) => {
            let config = MysqlConfig {
                max_connections: options.db_pool_size.max(1),
                statement_timeout: options.storage_timeout(),
                ..MysqlConfig::default()
            };
            Arc::new(MysqlStore::connect(&url, config).await?)
        }
        DatabaseUrl::Postgres(url) => {
            let config = PostgresConfig {
                max_connections: options.db_pool_size.max(1),
                ..PostgresConfig::default()
            };
            Arc::new(PostgresStore::connect(&url, config).await?)
        }
    })
}

/// Applies the schema migrations (a no-op when the schema is current) and logs what the
/// backend wants an operator to know.
pub async fn migrate(backend: &dyn Backend) -> Result<(), ServerError> {
    let report = backend.migrate().await?;
    if report.applied_any() {
        tracing::info!(from = report.previous, to = report.current, "schema migrated");
    }
    for note in &report.notes {
        tracing::warn!("{note}");
    }
    Ok(())
}
