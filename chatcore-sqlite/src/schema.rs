//! The schema, its migrations and the table that records them (`chatcore_migrations`).

use chatcore::Error;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::error;

/// One schema step. Steps are applied in order, each in the transaction that records it.
struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, oldest first. Never edit a released step: add a new one.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "users, sessions, messages, per-user message index, counters",
    sql: r#"
CREATE TABLE chatcore_users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL,
    password_hash TEXT
);
-- Lookup by name (login, recipient resolution) and the directory's sorted, prefix and
-- keyset paging: all range scans of this index (BINARY collation = byte order).
CREATE UNIQUE INDEX chatcore_users_username ON chatcore_users (username);

CREATE TABLE chatcore_sessions (
    token_hash BLOB PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES chatcore_users (id),
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE chatcore_messages (
    id              INTEGER PRIMARY KEY,
    sender_id       INTEGER NOT NULL REFERENCES chatcore_users (id),
    recipient_id    INTEGER NOT NULL REFERENCES chatcore_users (id),
    conv_low        INTEGER NOT NULL,
    conv_high       INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    body            TEXT NOT NULL,
    idempotency_key TEXT
);
-- The conversation page (latest N, `before` cursor, offset): one range scan, newest first.
CREATE INDEX chatcore_messages_conversation ON chatcore_messages (conv_low, conv_high, id);
-- Replays of a sender's idempotency key; only keyed messages are indexed.
CREATE UNIQUE INDEX chatcore_messages_idempotency
    ON chatcore_messages (sender_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- One row per participant of each message (one for a note to oneself): a user's messages
-- newest first and the catch-up after an id are range scans of this primary key.
CREATE TABLE chatcore_user_messages (
    user_id    INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, message_id)
) WITHOUT ROWID;

-- Counters, so a page's `total` is one row read, never a scan.
CREATE TABLE chatcore_conversations (
    conv_low      INTEGER NOT NULL,
    conv_high     INTEGER NOT NULL,
    message_count INTEGER NOT NULL,
    PRIMARY KEY (conv_low, conv_high)
) WITHOUT ROWID;
CREATE TABLE chatcore_user_counts (
    user_id       INTEGER PRIMARY KEY,
    message_count INTEGER NOT NULL
);
"#,
}];

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// What [`SqliteStore::migrate`](crate::SqliteStore::migrate) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    /// The schema version found (`0` for a database without chatcore's tables).
    pub previous: u32,
    /// The schema version now ([`SCHEMA_VERSION`]).
    pub current: u32,
}

impl MigrationReport {
    /// Whether any migration ran (false on every start after the first).
    pub fn applied_any(&self) -> bool {
        self.previous != self.current
    }
}

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS chatcore_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at INTEGER NOT NULL
)";

/// The recorded schema version, `0` when chatcore has never migrated this database.
pub(crate) fn current_version(conn: &Connection) -> rusqlite::Result<u32> {
    let has_table: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chatcore_migrations')",
        [],
        |row| row.get(0),
    )?;
    if !has_table {
        return Ok(0);
    }
    let version: Option<i64> = conn.query_row("SELECT max(version) FROM chatcore_migrations", [], |row| {
        row.get(0)
    })?;
    Ok(version.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32)
}

/// Fails with [`Error::Corrupt`] when the database was migrated by newer code.
pub(crate) fn check_not_newer(version: u32) -> chatcore::Result<()> {
    if version > SCHEMA_VERSION {
        return Err(Error::Corrupt {
            message: format!(
                "the database schema is version {version}, newer than this code's version \
                 {SCHEMA_VERSION}: upgrade chatcore-sqlite"
            ),
            source: None,
        });
    }
    Ok(())
}

/// Applies every missing migration in one immediate transaction. A no-op when up to date.
pub(crate) fn migrate(conn: &mut Connection, now_micros: i64) -> chatcore::Result<MigrationReport> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(error::map)?;
    tx.execute_batch(CREATE_MIGRATIONS_TABLE).map_err(error::map)?;
    let previous: u32 = tx
        .query_row("SELECT max(version) FROM chatcore_migrations", [], |row| {
            row.get::<_, Option<i64>>(0)
        })
        .optional()
        .map_err(error::map)?
        .flatten()
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX)) as u32;
    check_not_newer(previous)?;
    for step in MIGRATIONS.iter().filter(|m| m.version > previous) {
        tx.execute_batch(step.sql).map_err(error::map)?;
        tx.execute(
            "INSERT INTO chatcore_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            (step.version, step.name, now_micros),
        )
        .map_err(error::map)?;
        tracing::info!(
            version = step.version,
            name = step.name,
            "applied chatcore-sqlite migration"
        );
    }
    tx.commit().map_err(error::map)?;
    Ok(MigrationReport {
        previous,
        current: SCHEMA_VERSION,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_contiguous_and_end_at_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }

    #[test]
    fn migrate_is_idempotent_and_leaves_user_version_alone() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 42).unwrap();
        assert_eq!(current_version(&conn).unwrap(), 0);
        let first = migrate(&mut conn, 1).unwrap();
        assert_eq!((first.previous, first.current), (0, SCHEMA_VERSION));
        assert!(first.applied_any());
        let second = migrate(&mut conn, 2).unwrap();
        assert!(!second.applied_any());
        assert_eq!(current_version(&conn).unwrap(), SCHEMA_VERSION);
        let user_version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(user_version, 42, "the host's user_version is untouched");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM chatcore_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, i64::from(SCHEMA_VERSION));
    }

    #[test]
    fn newer_schema_is_corrupt() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, 1).unwrap();
        conn.execute(
            "INSERT INTO chatcore_migrations (version, name, applied_at) VALUES (?1, 'future', 0)",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
        let err = migrate(&mut conn, 2).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
