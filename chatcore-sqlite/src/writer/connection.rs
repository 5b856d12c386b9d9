//! Opening and configuring connections: the writer's read-write one (WAL mode, the sync
//! setting, the size cap, the schema version check) and the readers' read-only ones.

use chatcore::{Error, Result};
use rusqlite::{Connection, OpenFlags};

use super::durability;
use crate::config::{Location, SqliteConfig, Synchronous};
use crate::{error, schema};

/// Opens and configures the read-write connection, and refuses a schema newer than the code.
pub(crate) fn open_connection(config: &SqliteConfig) -> Result<Connection> {
    let conn = match &config.location {
        Location::File(path) => {
            let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            if config.create_if_missing {
                flags |= OpenFlags::SQLITE_OPEN_CREATE;
            }
            Connection::open_with_flags(path, flags).map_err(error::map)?
        }
        Location::Memory => Connection::open_in_memory().map_err(error::map)?,
    };
    configure(&conn, config).map_err(error::map)?;
    if let Location::File(_) = config.location {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(error::map)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Internal {
                message: format!("SQLite refused WAL mode (journal_mode is {mode})"),
                source: None,
            });
        }
    }
    // With a pipelined sync the writer's own commits do not wait for the disk: the sync
    // thread makes the WAL durable before anyone is answered (see `Writer::run`).
    let synchronous = if durability::wal_path_to_sync(config).is_some() {
        Synchronous::Normal
    } else {
        config.synchronous
    };
    conn.pragma_update(None, "synchronous", synchronous.pragma_value())
        .map_err(error::map)?;
    conn.pragma_update(None, "wal_autocheckpoint", config.wal_autocheckpoint_pages)
        .map_err(error::map)?;
    // The writer checks senders itself (`Writer::sender_may_send`, cached: users are never
    // deleted) instead of SQLite probing the users table twice for every message inserted.
    conn.pragma_update(None, "foreign_keys", false)
        .map_err(error::map)?;
    // A deleted message's text must leave the file, not only the row: freed cells and freed
    // pages (a long body's overflow pages) are zeroed. Sends free next to nothing, so they
    // pay next to nothing for it (`FAST` would leave freed overflow pages as they were). The
    // old page images stay in the WAL until a checkpoint and the next writes overwrite them.
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(error::map)?;
    if let Some(pages) = config.max_page_count {
        let pages = i64::try_from(pages).unwrap_or(i64::MAX);
        conn.pragma_update(None, "max_page_count", pages)
            .map_err(error::map)?;
    }
    let version = schema::current_version(&conn).map_err(error::map)?;
    schema::check_not_newer(version)?;
    Ok(conn)
}

/// Settings every connection shares.
pub(crate) fn configure(conn: &Connection, config: &SqliteConfig) -> rusqlite::Result<()> {
    conn.busy_timeout(config.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(config.statement_cache);
    conn.pragma_update(None, "cache_size", -i64::from(config.cache_size_kib))
}

/// Opens a read-only connection for a reader thread (file databases only).
pub(crate) fn open_reader_connection(config: &SqliteConfig) -> Result<Connection> {
    let Location::File(path) = &config.location else {
        return Err(Error::bug("reader connections need a database file"));
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(error::map)?;
    configure(&conn, config).map_err(error::map)?;
    Ok(conn)
}
