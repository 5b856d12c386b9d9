//! The embedded migrations and the runner that applies them, tracked in `chatcore_migrations`
//! (never the host's `_sqlx_migrations`).

use sha2::{Digest, Sha256};
use sqlx::{Connection, MySqlConnection, Row};

use chatcore::{Error, Result};

use crate::error;

/// One schema change: statements run in order, then recorded.
pub(crate) struct Migration {
    /// 1, 2, 3, ...: applied in this order, each once.
    pub version: i64,
    /// For humans and the migrations table.
    pub description: &'static str,
    /// One statement each (no client-side splitting needed).
    pub statements: &'static [&'static str],
}

impl Migration {
    /// SHA-256 over the statements, so an edited, already applied migration is detected.
    fn checksum(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for statement in self.statements {
            hash.update(statement.as_bytes());
            hash.update([0u8]);
        }
        hash.finalize().into()
    }
}

/// The table recording applied migrations. Ours alone: a host using `sqlx::migrate!` keeps its
/// `_sqlx_migrations`, and neither sees the other's entries.
pub(crate) const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS chatcore_migrations (
    version BIGINT NOT NULL PRIMARY KEY,
    description VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    checksum BINARY(32) NOT NULL,
    applied_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// Every migration this version of the crate knows, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "users, sessions, messages, counters, id sequence",
        statements: &[
            // Usernames compare byte-exactly (utf8mb4_bin): 'Alice' and 'alice' are two users and
            // a prefix search is a range of the unique index in byte order.
            "CREATE TABLE chatcore_users (
            id BIGINT NOT NULL AUTO_INCREMENT,
            username VARCHAR(150) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            password_hash VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            created_at DATETIME(6) NOT NULL,
            PRIMARY KEY (id),
            UNIQUE KEY chatcore_users_username (username)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            // Only the SHA-256 of a token is kept. The foreign key gives the user index that
            // deletes cascade through; the expiry index serves the purge of expired sessions.
            "CREATE TABLE chatcore_sessions (
            token_hash BINARY(32) NOT NULL,
            user_id BIGINT NOT NULL,
            expires_at DATETIME(6) NOT NULL,
            PRIMARY KEY (token_hash),
            KEY chatcore_sessions_expires (expires_at),
            CONSTRAINT chatcore_sessions_user FOREIGN KEY (user_id)
                REFERENCES chatcore_users (id) ON DELETE CASCADE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            // `id` comes from the id sequence (commit order), not AUTO_INCREMENT.
            // conversation: a conversation's page is one range, newest first.
            // sender / recipient: a user's messages and catch-up are two ranges merged.
            // idempotency: one key per sender; NULLs (no key) do not collide.
            "CREATE TABLE chatcore_messages (
            id BIGINT NOT NULL,
            sender_id BIGINT NOT NULL,
            recipient_id BIGINT NOT NULL,
            conversation_low BIGINT NOT NULL,
            conversation_high BIGINT NOT NULL,
            created_at DATETIME(6) NOT NULL,
            body MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            idempotency_key_hash BINARY(32) NULL,
            PRIMARY KEY (id),
            KEY chatcore_messages_conversation (conversation_low, conversation_high, id),
            KEY chatcore_messages_sender (sender_id, id),
            KEY chatcore_messages_recipient (recipient_id, id),
            UNIQUE KEY chatcore_messages_idempotency (sender_id, idempotency_key_hash)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            // Totals kept by the inserting transaction, so `total` is one primary-key lookup:
            // (low, high) with 1 <= low <= high for a conversation, (user, 0) for a user's total.
            "CREATE TABLE chatcore_counts (
            low_id BIGINT NOT NULL,
            high_id BIGINT NOT NULL,
            total BIGINT NOT NULL,
            PRIMARY KEY (low_id, high_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            // The message id sequence: its row is locked by every inserting transaction until it
            // commits, so ids are handed out in commit order across all processes.
            "CREATE TABLE chatcore_sequences (
            name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            last_value BIGINT NOT NULL,
            PRIMARY KEY (name)
        ) ENGINE=InnoDB",
            "INSERT INTO chatcore_sequences (name, last_value) VALUES ('message_id', 0)",
        ],
    },
    Migration {
        version: 2,
        description: "message id sequence moves to chatcore_counts row (0, 0)",
        statements: &[
            // The message id sequence becomes the row (0, 0) of chatcore_counts (no user has id 0),
            // so one upsert per batch both reserves the ids and adds to the counters (one statement
            // less per transaction). Its value is the last id handed out, copied from the old row;
            // re-running this after an interruption copies it again (the old table is unchanged
            // until the next statement drops it).
            //
            // Every process sharing the database must run a chatcore-mysql that knows this
            // version once it is applied: stop processes running the previous version before
            // migrating. The old table is dropped, so a process still running the previous
            // version fails its sends loudly ("table doesn't exist") instead of handing out ids
            // from the old sequence, which would duplicate or reorder ids.
            "INSERT INTO chatcore_counts (low_id, high_id, total) \
         SELECT 0, 0, last_value FROM chatcore_sequences WHERE name = 'message_id' \
         ON DUPLICATE KEY UPDATE total = GREATEST(total, VALUES(total))",
            "DROP TABLE chatcore_sequences",
        ],
    },
];

/// The newest schema version this code knows.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies every migration not yet recorded, holding a named lock so processes that migrate
/// at once take turns. Returns the versions applied.
pub(crate) async fn migrate(conn: &mut MySqlConnection, lock_timeout_secs: u64) -> Result<Vec<i64>> {
    sqlx::query(MIGRATIONS_TABLE)
        .execute(&mut *conn)
        .await
        .map_err(|e| error::map("creating chatcore_migrations", e))?;
    // The lock name is per database, so two databases on one server migrate independently.
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(CONCAT('chatcore_migrate.', DATABASE()), ?)")
        .bind(lock_timeout_secs)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| error::map("taking the migration lock", e))?;
    if got != Some(1) {
        return Err(Error::storage_unavailable(format!(
            "another process held the chatcore migration lock for {lock_timeout_secs} s"
        )));
    }
    let result = apply_pending(conn).await;
    let released = sqlx::query("SELECT RELEASE_LOCK(CONCAT('chatcore_migrate.', DATABASE()))")
        .execute(&mut *conn)
        .await;
    let applied = result?;
    released.map_err(|e| error::map("releasing the migration lock", e))?;
    Ok(applied)
}

async fn apply_pending(conn: &mut MySqlConnection) -> Result<Vec<i64>> {
    apply_known(conn, MIGRATIONS).await
}

/// Applies the migrations of `known` not yet recorded (`known` is [`MIGRATIONS`], or its first
/// entries in tests that build a database of an earlier version).
async fn apply_known(conn: &mut MySqlConnection, known_migrations: &[Migration]) -> Result<Vec<i64>> {
    let latest_version = || known_migrations.last().map_or(0, |m| m.version);
    let recorded = sqlx::query("SELECT version, checksum FROM chatcore_migrations ORDER BY version")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| error::map("reading chatcore_migrations", e))?;
    let mut applied_versions = Vec::with_capacity(recorded.len());
    for row in &recorded {
        let version: i64 = row
            .try_get("version")
            .map_err(|e| error::map("decoding a migration", e))?;
        let checksum: Vec<u8> = row
            .try_get("checksum")
            .map_err(|e| error::map("decoding a migration", e))?;
        match known_migrations.iter().find(|m| m.version == version) {
            None if version > latest_version() => {
                return Err(Error::Corrupt {
                    message: format!(
                        "the database schema is at version {version}, newer than this chatcore-mysql \
                         (which knows up to version {}): upgrade the code",
                        latest_version()
                    ),
                    source: None,
                });
            }
            None => {
                return Err(Error::Corrupt {
                    message: format!("chatcore_migrations records unknown version {version}"),
                    source: None,
                });
            }
            Some(known) if known.checksum().as_slice() != checksum.as_slice() => {
                return Err(Error::Corrupt {
                    message: format!(
                        "migration {version} ({}) was applied with different statements than this code has",
                        known.description
                    ),
                    source: None,
                });
            }
            Some(_) => applied_versions.push(version),
        }
    }
    let mut applied_now = Vec::new();
    for migration in known_migrations
        .iter()
        .filter(|m| !applied_versions.contains(&m.version))
    {
        // DDL commits implicitly in MySQL, so a migration is not atomic; each statement of a
        // new migration creates something new, and the record is written last.
        for statement in migration.statements {
            sqlx::query(statement)
                .execute(&mut *conn)
                .await
                .map_err(|e| error::map("applying a chatcore migration", e))?;
        }
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| error::map("recording a migration", e))?;
        sqlx::query(
            "INSERT INTO chatcore_migrations (version, description, checksum, applied_at) \
             VALUES (?, ?, ?, UTC_TIMESTAMP(6))",
        )
        .bind(migration.version)
        .bind(migration.description)
        .bind(migration.checksum().as_slice())
        .execute(&mut *tx)
        .await
        .map_err(|e| error::map("recording a migration", e))?;
        tx.commit()
            .await
            .map_err(|e| error::map("recording a migration", e))?;
        applied_now.push(migration.version);
    }
    Ok(applied_now)
}

#[cfg(test)]
mod tests {
    use chatcore::{NewMessage, Store, Username};
    use sqlx::{ConnectOptions, Row};

    use super::*;
    use crate::MysqlConfig;
    use crate::testing::TestDatabase;

    /// A database written by the previous version (schema version 1, ids from
    /// `chatcore_sequences`) keeps handing out ids above the old ones once migrated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_migrated_from_version_1_keeps_its_ids_increasing() {
        let database = TestDatabase::create("chatcore_mysql_test_").await.unwrap();
        let mut conn = database.options().unwrap().connect().await.unwrap();
        sqlx::query(MIGRATIONS_TABLE).execute(&mut conn).await.unwrap();
        assert_eq!(apply_known(&mut conn, &MIGRATIONS[..1]).await.unwrap(), [1]);
        // What version 1 left behind: two users and messages up to id 1000, as its writer
        // stored them (ids from the sequence row, counters alongside).
        sqlx::raw_sql(
            "INSERT INTO chatcore_users (id, username, created_at) VALUES \
               (1, 'alice', UTC_TIMESTAMP(6)), (2, 'bob', UTC_TIMESTAMP(6)); \
             INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low, \
               conversation_high, created_at, body) VALUES \
               (999, 1, 2, 1, 2, UTC_TIMESTAMP(6), 'old'), (1000, 2, 1, 1, 2, UTC_TIMESTAMP(6), 'old'); \
             INSERT INTO chatcore_counts (low_id, high_id, total) VALUES (1, 2, 2), (1, 0, 2), (2, 0, 2); \
             UPDATE chatcore_sequences SET last_value = 1000 WHERE name = 'message_id'",
        )
        .execute(&mut conn)
        .await
        .unwrap();

        let store = crate::MysqlStore::connect_with(database.options().unwrap(), MysqlConfig::default());
        assert_eq!(store.migrate().await.unwrap(), [2]);
        let tables: Vec<String> = sqlx::query(
            "SELECT TABLE_NAME AS t FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'chatcore_sequences'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get_unchecked("t").unwrap())
        .collect();
        assert!(tables.is_empty(), "the old sequence table is dropped: {tables:?}");

        let alice = store
            .find_user(&Username::parse("alice").unwrap())
            .await
            .unwrap()
            .expect("alice exists");
        let mut ids = Vec::new();
        for n in 0..3 {
            let inserted = store
                .insert_message(NewMessage {
                    sender: alice.clone(),
                    recipient: Username::parse("bob").unwrap(),
                    body: format!("new {n}"),
                    idempotency_key: None,
                })
                .await
                .unwrap();
            ids.push(inserted.message.id.0);
        }
        assert_eq!(ids, [1001, 1002, 1003], "ids continue above the old ones");
        let (total,): (i64,) =
            sqlx::query_as("SELECT total FROM chatcore_counts WHERE low_id = 1 AND high_id = 2")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(total, 5, "counters stay exact");
    }
}
