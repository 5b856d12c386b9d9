//! The embedded migrations and the runner that applies them, tracked in `chatcore_migrations`
//! (never the host's `_sqlx_migrations`).

use sha2::{Digest, Sha256};
use sqlx::{Connection, MySqlConnection, Row};

use chatcore::{Error, MigrationReport, Result};

use crate::error;
use crate::username_keys;

pub(crate) type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// One schema change: steps run in order, then recorded.
pub(crate) struct Migration {
    /// 1, 2, 3, ...: applied in this order, each once.
    pub version: i64,
    /// For humans and the migrations table.
    pub description: &'static str,
    /// What the migration does, in order.
    pub steps: &'static [Step],
}

/// One step of a [`Migration`].
pub(crate) enum Step {
    /// One SQL statement (no client-side splitting needed).
    Sql(&'static str),
    /// Rust code, for what SQL cannot do (MySQL has no NFKC). It must be safe to run again
    /// after an interruption, and returns notes for the operator.
    Rust {
        /// Named in the checksum: a changed step gets a new name.
        name: &'static str,
        /// The step.
        run: for<'c> fn(&'c mut MySqlConnection) -> BoxFuture<'c, Result<Vec<String>>>,
    },
}

impl Migration {
    /// SHA-256 over the steps, so an edited, already applied migration is detected.
    fn checksum(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for step in self.steps {
            match step {
                Step::Sql(statement) => hash.update(statement.as_bytes()),
                Step::Rust { name, .. } => {
                    hash.update(b"rust:");
                    hash.update(name.as_bytes());
                }
            }
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
        steps: &[
            // Usernames compare byte-exactly (utf8mb4_bin). Until version 3, 'Alice' and 'alice'
            // were two users; since, names are unique by `username_key`.
            Step::Sql(
                "CREATE TABLE chatcore_users (
            id BIGINT NOT NULL AUTO_INCREMENT,
            username VARCHAR(150) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            password_hash VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            created_at DATETIME(6) NOT NULL,
            PRIMARY KEY (id),
            UNIQUE KEY chatcore_users_username (username)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            ),
            // Only the SHA-256 of a token is kept. The foreign key gives the user index that
            // deletes cascade through; the expiry index serves the purge of expired sessions.
            Step::Sql(
                "CREATE TABLE chatcore_sessions (
            token_hash BINARY(32) NOT NULL,
            user_id BIGINT NOT NULL,
            expires_at DATETIME(6) NOT NULL,
            PRIMARY KEY (token_hash),
            KEY chatcore_sessions_expires (expires_at),
            CONSTRAINT chatcore_sessions_user FOREIGN KEY (user_id)
                REFERENCES chatcore_users (id) ON DELETE CASCADE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            ),
            // `id` comes from the id sequence (commit order), not AUTO_INCREMENT.
            // conversation: a conversation's page is one range, newest first.
            // sender / recipient: a user's messages and catch-up are two ranges merged.
            // idempotency: one key per sender; NULLs (no key) do not collide.
            Step::Sql(
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
            ),
            // Totals kept by the inserting transaction, so `total` is one primary-key lookup:
            // (low, high) with 1 <= low <= high for a conversation, (user, 0) for a user's total.
            Step::Sql(
                "CREATE TABLE chatcore_counts (
            low_id BIGINT NOT NULL,
            high_id BIGINT NOT NULL,
            total BIGINT NOT NULL,
            PRIMARY KEY (low_id, high_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            ),
            // The message id sequence: its row is locked by every inserting transaction until it
            // commits, so ids are handed out in commit order across all processes.
            Step::Sql(
                "CREATE TABLE chatcore_sequences (
            name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            last_value BIGINT NOT NULL,
            PRIMARY KEY (name)
        ) ENGINE=InnoDB",
            ),
            Step::Sql("INSERT INTO chatcore_sequences (name, last_value) VALUES ('message_id', 0)"),
        ],
    },
    Migration {
        version: 2,
        description: "message id sequence moves to chatcore_counts row (0, 0)",
        steps: &[
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
            Step::Sql(
                "INSERT INTO chatcore_counts (low_id, high_id, total) \
         SELECT 0, 0, last_value FROM chatcore_sequences WHERE name = 'message_id' \
         ON DUPLICATE KEY UPDATE total = GREATEST(total, VALUES(total))",
            ),
            Step::Sql("DROP TABLE chatcore_sequences"),
        ],
    },
    Migration {
        version: 3,
        description: "usernames unique without regard to case (username_key)",
        // Names are unique by their key (`Username::key`: lowercased NFKC), which MySQL cannot
        // compute: the key column is added, filled in Rust, and only then made unique. Names
        // that collide under the new rule are kept apart, never merged: the oldest keeps the
        // key, the others get one no name produces and are reported (see `username_keys`).
        //
        // Processes running the previous version must be stopped first: they would insert
        // users without a key (refused: the column is NOT NULL, and sessions run strict).
        steps: &[Step::Rust {
            name: "username_keys v1",
            run: username_keys::migrate,
        }],
    },
    Migration {
        version: 4,
        description: "inbox, unread counts, read markers and read events",
        // Every statement can run again after an interruption (IF NOT EXISTS, upserts that
        // recompute from the messages), so a migration stopped before its record is applied
        // again cleanly. Processes running the previous version must be stopped first: their
        // sends would not update the inbox, and the counts filled here would drift.
        steps: &[
            // One row per user and conversation partner (the user themself for notes to self),
            // written by the inserting transaction: `last_id` is the conversation's newest
            // message (the inbox order: `chatcore_inbox_activity` is read backwards from the
            // cursor), `unread` the messages from the peer after `read_up_to` (the user's read
            // marker, NULL until they mark one).
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS chatcore_inbox (
            user_id BIGINT NOT NULL,
            peer_id BIGINT NOT NULL,
            last_id BIGINT NOT NULL,
            unread BIGINT NOT NULL,
            read_up_to BIGINT NULL,
            PRIMARY KEY (user_id, peer_id),
            KEY chatcore_inbox_activity (user_id, last_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            ),
            // A read marker that moved: a durable event of the reader and of the peer (the same
            // user for notes to self), at a position from the message id sequence. Each index
            // is one user's events in position order, as reader and as peer.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS chatcore_read_events (
            position BIGINT NOT NULL,
            reader_id BIGINT NOT NULL,
            peer_id BIGINT NOT NULL,
            up_to BIGINT NOT NULL,
            PRIMARY KEY (position),
            KEY chatcore_read_events_reader (reader_id, position),
            KEY chatcore_read_events_peer (peer_id, position)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            ),
            // The inbox of the messages stored so far: nobody has a marker yet, so every
            // message received from someone else is unread (notes to self never are). Read
            // per conversation off `chatcore_messages_conversation`; the second branch is the
            // other side of each conversation between two users.
            Step::Sql(
                "INSERT INTO chatcore_inbox (user_id, peer_id, last_id, unread, read_up_to) \
         SELECT conversation_low, conversation_high, MAX(id), \
           SUM(recipient_id = conversation_low AND sender_id <> recipient_id), NULL \
         FROM chatcore_messages GROUP BY conversation_low, conversation_high \
         UNION ALL \
         SELECT conversation_high, conversation_low, MAX(id), \
           SUM(recipient_id = conversation_high), NULL \
         FROM chatcore_messages WHERE conversation_low <> conversation_high \
         GROUP BY conversation_low, conversation_high \
         ON DUPLICATE KEY UPDATE last_id = VALUES(last_id), unread = VALUES(unread), read_up_to = NULL",
            ),
            // Each user's unread total: the row (user, -1) of chatcore_counts (no conversation
            // key is negative), kept by the inserting transaction and by mark_read.
            Step::Sql(
                "INSERT INTO chatcore_counts (low_id, high_id, total) \
         SELECT user_id, -1, SUM(unread) FROM chatcore_inbox GROUP BY user_id \
         ON DUPLICATE KEY UPDATE total = VALUES(total)",
            ),
        ],
    },
    Migration {
        version: 5,
        description: "feed consumers' checkpoints",
        // The host's feed reads the primary keys of `chatcore_messages` and
        // `chatcore_read_events` forward: no index to add. A name is at most 100 bytes
        // (`chatcore::store::MAX_CHECKPOINT_NAME`), compared byte for byte.
        steps: &[Step::Sql(
            "CREATE TABLE IF NOT EXISTS chatcore_checkpoints (
            name VARBINARY(100) NOT NULL,
            position BIGINT NOT NULL,
            PRIMARY KEY (name)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        )],
    },
    Migration {
        version: 6,
        description: "edits and deletions of messages, and their events",
        // A message keeps its newest body only: an edit overwrites it (`edited_at`), a
        // deletion empties it and sets `deleted`. Each edit or deletion is a durable event of
        // both participants, kept in `chatcore_read_events` with a `kind` (0 a read marker,
        // 1 an edit, 2 a deletion; `reader_id` the sender, `peer_id` the recipient, `up_to`
        // the message): its two indexes already give every user's events after a position and
        // their newest one, so a send's previous positions read no more indexes than before.
        // Each column is added only when missing, so an interrupted run can run again.
        steps: &[Step::Rust {
            name: "message changes v1",
            run: add_change_columns,
        }],
    },
    Migration {
        version: 7,
        description: "blocks between users",
        // A block is a row per blocker and blocked user: durable state, not an event (no
        // position). The inserting batch and `change_message` look every pair they write
        // up both ways by primary key under the sequence lock, which `set_block` takes too,
        // so a block and the sends of its pair commit one after the other. A user's block
        // list is sorted by the blocked user's key (copied here: keys never change), so a
        // page is one range of the second index.
        steps: &[Step::Sql(
            "CREATE TABLE IF NOT EXISTS chatcore_blocks (
            blocker_id BIGINT NOT NULL,
            blocked_id BIGINT NOT NULL,
            blocked_key VARBINARY(1024) NOT NULL,
            PRIMARY KEY (blocker_id, blocked_id),
            UNIQUE KEY chatcore_blocks_by_key (blocker_id, blocked_key)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        )],
    },
    Migration {
        version: 8,
        description: "removed accounts",
        // A removed account keeps its row (the name stays taken, histories still name it)
        // with `removed_at` set, its password hash emptied and its sessions deleted
        // (`Store::remove_user`); sends check it under the sequence lock (`writer.rs`).
        // Added only when missing, so an interrupted run can run again.
        steps: &[Step::Rust {
            name: "removed accounts v1",
            run: add_removed_column,
        }],
    },
];

/// Migration 8: `chatcore_users.removed_at`, if it is not there yet.
fn add_removed_column(conn: &mut MySqlConnection) -> BoxFuture<'_, Result<Vec<String>>> {
    Box::pin(add_missing_columns(
        conn,
        &[("chatcore_users", "removed_at", "DATETIME(6) NULL")],
    ))
}

/// Migration 6: the columns of edits and deletions, each added if it is not there yet.
fn add_change_columns(conn: &mut MySqlConnection) -> BoxFuture<'_, Result<Vec<String>>> {
    Box::pin(add_missing_columns(
        conn,
        &[
            ("chatcore_messages", "edited_at", "DATETIME(6) NULL"),
            ("chatcore_messages", "deleted", "TINYINT NOT NULL DEFAULT 0"),
            ("chatcore_read_events", "kind", "TINYINT NOT NULL DEFAULT 0"),
        ],
    ))
}

/// Adds each `(table, column, definition)` that is not there yet.
async fn add_missing_columns(
    conn: &mut MySqlConnection,
    columns: &'static [(&'static str, &'static str, &'static str)],
) -> Result<Vec<String>> {
    for (table, column, definition) in columns {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = ? AND COLUMN_NAME = ?",
        )
        .bind(table)
        .bind(column)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| error::map("reading the schema", e))?;
        if count == 0 {
            sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"))
                .execute(&mut *conn)
                .await
                .map_err(|e| error::map("adding a column", e))?;
        }
    }
    Ok(Vec::new())
}

/// The newest schema version this code knows.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies every migration not yet recorded, holding a named lock so processes that migrate
/// at once take turns, and reports the versions before and after, with the notes of the
/// migrations applied.
pub(crate) async fn migrate(conn: &mut MySqlConnection, lock_timeout_secs: u64) -> Result<MigrationReport> {
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
    let result = apply_known(conn, MIGRATIONS).await;
    let released = sqlx::query("SELECT RELEASE_LOCK(CONCAT('chatcore_migrate.', DATABASE()))")
        .execute(&mut *conn)
        .await;
    let report = result?;
    released.map_err(|e| error::map("releasing the migration lock", e))?;
    Ok(report)
}

/// Applies the migrations of `known` not yet recorded (`known` is [`MIGRATIONS`], or its first
/// entries in tests that build a database of an earlier version).
pub(crate) async fn apply_known(
    conn: &mut MySqlConnection,
    known_migrations: &[Migration],
) -> Result<MigrationReport> {
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
    let mut report = MigrationReport {
        previous: version_number(applied_versions.iter().copied().max().unwrap_or(0))?,
        ..MigrationReport::default()
    };
    report.current = report.previous;
    for migration in known_migrations
        .iter()
        .filter(|m| !applied_versions.contains(&m.version))
    {
        // DDL commits implicitly in MySQL, so a migration is not atomic; each statement of a
        // new migration creates something new, Rust steps can run again, and the record is
        // written last.
        for step in migration.steps {
            match step {
                Step::Sql(statement) => {
                    sqlx::query(statement)
                        .execute(&mut *conn)
                        .await
                        .map_err(|e| error::map("applying a chatcore migration", e))?;
                }
                Step::Rust { run, .. } => report.notes.extend(run(&mut *conn).await?),
            }
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
        report.current = version_number(migration.version)?;
    }
    Ok(report)
}

/// A recorded version as [`MigrationReport`] counts them.
fn version_number(version: i64) -> Result<u32> {
    u32::try_from(version).map_err(|e| Error::Corrupt {
        message: format!("chatcore_migrations records version {version}"),
        source: Some(Box::new(e)),
    })
}

#[cfg(test)]
mod tests {
    use chatcore::{
        Backend, InboxRequest, MessageId, NewMessage, PageRequest, Position, Store, StoredEvent, User,
        UserId, UserQuery, Username,
    };
    use sqlx::{ConnectOptions, Row};

    use super::*;
    use crate::MysqlConfig;
    use crate::testing::TestDatabase;

    /// A fresh database with the first `version` migrations applied, as that version left it.
    async fn database_at(version: usize) -> (TestDatabase, MySqlConnection) {
        let database = TestDatabase::create("chatcore_mysql_test_").await.unwrap();
        let mut conn = database.options().unwrap().connect().await.unwrap();
        sqlx::query(MIGRATIONS_TABLE).execute(&mut conn).await.unwrap();
        let report = apply_known(&mut conn, &MIGRATIONS[..version]).await.unwrap();
        assert_eq!((report.previous, report.current), (0, version as u32));
        (database, conn)
    }

    /// A database written by the previous version (schema version 1, ids from
    /// `chatcore_sequences`) keeps handing out ids above the old ones once migrated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_migrated_from_version_1_keeps_its_ids_increasing() {
        let (database, mut conn) = database_at(1).await;
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

        let store =
            crate::MysqlStore::connect_with(database.options().unwrap(), MysqlConfig::default()).unwrap();
        let report = store.migrate().await.unwrap();
        assert_eq!((report.previous, report.current), (1, latest_version() as u32));
        assert_eq!(report.notes, Vec::<String>::new(), "alice and bob do not collide");
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

    fn name(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    /// Users made at version 2, when 'Alice' and 'alice' were two names, stay two users after
    /// version 3: the oldest keeps the name, the others are kept apart and reported, nothing
    /// is merged; names are found by key from then on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_that_differ_only_in_case_are_kept_apart_and_reported() {
        let (database, mut conn) = database_at(2).await;
        // Version 2 compared names byte for byte, and did not normalize them: the full-width
        // 'ｃａｒｏｌ' is 'carol' once normalized.
        sqlx::raw_sql(
            "INSERT INTO chatcore_users (id, username, password_hash, created_at) VALUES \
               (1, 'Alice', 'h1', UTC_TIMESTAMP(6)), (2, 'bob', NULL, UTC_TIMESTAMP(6)), \
               (3, 'alice', 'h3', UTC_TIMESTAMP(6)), (4, 'ALICE', NULL, UTC_TIMESTAMP(6)), \
               (5, 'Bob', NULL, UTC_TIMESTAMP(6)), (6, 'carol', NULL, UTC_TIMESTAMP(6)), \
               (7, 'ｃａｒｏｌ', NULL, UTC_TIMESTAMP(6)), (8, 'dave', NULL, UTC_TIMESTAMP(6)); \
             INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low, \
               conversation_high, created_at, body) VALUES (1, 3, 2, 2, 3, UTC_TIMESTAMP(6), 'old'); \
             INSERT INTO chatcore_counts (low_id, high_id, total) VALUES (2, 3, 1), (2, 0, 1), (3, 0, 1); \
             UPDATE chatcore_counts SET total = 1 WHERE low_id = 0 AND high_id = 0",
        )
        .execute(&mut conn)
        .await
        .unwrap();

        let store =
            crate::MysqlStore::connect_with(database.options().unwrap(), MysqlConfig::default()).unwrap();
        let report = store.migrate().await.unwrap();
        assert_eq!((report.previous, report.current), (2, latest_version() as u32));
        assert_eq!(
            report.notes.len(),
            3,
            "one note per shared name: {:#?}",
            report.notes
        );
        let [alice, bob, carol] = [&report.notes[0], &report.notes[1], &report.notes[2]];
        for (note, keeper, others) in [
            (
                alice,
                "\"Alice\" (user id 1, the oldest) keeps it",
                &["\"alice\" (user id 3)", "\"ALICE\" (user id 4)"][..],
            ),
            (
                bob,
                "\"bob\" (user id 2, the oldest) keeps it",
                &["\"Bob\" (user id 5)"][..],
            ),
            (
                carol,
                "\"carol\" (user id 6, the oldest) keeps it",
                &["\"ｃａｒｏｌ\" (user id 7)"][..],
            ),
        ] {
            assert!(note.contains(keeper), "{note}");
            for other in others {
                assert!(note.contains(other), "{note}");
            }
            assert!(
                note.contains("nothing was merged") && note.contains("Rename"),
                "{note}"
            );
        }
        assert!(report.notes.iter().all(|n| !n.contains("dave")));
        // Run again: nothing to apply, nothing to report.
        let again = store.migrate().await.unwrap();
        assert!(!again.applied_any() && again.notes.is_empty(), "{again:?}");

        // Every user is still there, with their own name and password hash.
        let (users,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM chatcore_users")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(users, 8, "nothing merged");
        let user = |id: i64, s: &str| User {
            id: UserId(id),
            username: Username::from_stored(s),
        };
        // Names are found by key: the oldest holder of each.
        for (spelling, expected) in [
            ("alice", 1),
            ("ALICE", 1),
            ("Bob", 2),
            ("ｃａｒｏｌ", 6),
            ("Dave", 8),
        ] {
            let found = store.find_user(&name(spelling)).await.unwrap();
            let expected_name = ["", "Alice", "bob", "", "", "", "carol", "", "dave"][expected as usize];
            assert_eq!(found, Some(user(expected, expected_name)), "{spelling}");
        }
        let creds = chatcore::SessionStore::credentials(&store, &name("aLiCe"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(creds.password_hash.as_deref(), Some("h1"));
        match store.create_user(&name("alICE")).await {
            Err(chatcore::Error::Conflict(_)) => {}
            other => panic!("the key is taken, got {other:?}"),
        }
        // The directory lists everyone by key, the ones kept apart right after the keeper, and
        // keyset paging by the names it returns walks it once.
        let all: Vec<String> = store
            .list_users(&UserQuery {
                exclude: None,
                prefix: String::new(),
                after: None,
                limit: 100,
            })
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.username.into_string())
            .collect();
        assert_eq!(
            all,
            [
                "Alice",
                "alice",
                "ALICE",
                "bob",
                "Bob",
                "carol",
                "ｃａｒｏｌ",
                "dave"
            ]
        );
        let mut paged = Vec::new();
        let mut after = None;
        while paged.len() <= all.len() {
            let page = store
                .list_users(&UserQuery {
                    exclude: None,
                    prefix: String::new(),
                    after: after.clone(),
                    limit: 2,
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.username.clone());
            paged.extend(page.into_iter().map(|u| u.username.into_string()));
        }
        assert_eq!(paged, all);
        let prefixed = store
            .list_users(&UserQuery {
                exclude: Some(UserId(3)),
                prefix: "ALI".into(),
                after: None,
                limit: 100,
            })
            .await
            .unwrap();
        assert_eq!(prefixed, [user(1, "Alice"), user(4, "ALICE")]);

        // Old messages keep their names; a new one to "BOB" goes to the keeper, named as stored,
        // from a user kept apart (who can still send: they are known by id).
        let demoted = user(3, "alice");
        let sent = store
            .insert_message(NewMessage {
                sender: demoted.clone(),
                recipient: name("BOB"),
                body: "new".into(),
                idempotency_key: None,
            })
            .await
            .unwrap();
        assert_eq!(sent.recipient_id, UserId(2));
        assert_eq!(sent.message.recipient.as_str(), "bob");
        let page = store
            .user_messages(UserId(3), &PageRequest::latest(10))
            .await
            .unwrap();
        assert_eq!(page.total, 2);
        let names: Vec<_> = page
            .messages
            .iter()
            .map(|m| (m.sender.as_str(), m.recipient.as_str(), m.body.as_str()))
            .collect();
        assert_eq!(names, [("alice", "bob", "new"), ("alice", "bob", "old")]);
        store.close().await.unwrap();
    }

    /// A database written at version 3 (messages, no inbox) gets its inbox filled by version 4:
    /// conversations by their newest message, every message received from someone else
    /// unread (nobody has a marker yet), notes to self never, the unread totals their sum;
    /// sends and marks then keep them up to date, and positions continue above the old ids.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_migrated_from_version_3_gets_its_inbox() {
        let (database, mut conn) = database_at(3).await;
        // 1 alice, 2 bob, 3 carol, 4 dave; messages 1 to 7 as version 3's writer stored them
        // (the sequence at 10: ids 8 to 10 went to sends that failed), counters alongside.
        sqlx::raw_sql(
            "INSERT INTO chatcore_users (id, username, username_key, created_at) VALUES \
               (1, 'alice', 'alice', UTC_TIMESTAMP(6)), (2, 'Bob', 'bob', UTC_TIMESTAMP(6)), \
               (3, 'carol', 'carol', UTC_TIMESTAMP(6)), (4, 'dave', 'dave', UTC_TIMESTAMP(6)); \
             INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low, \
               conversation_high, created_at, body) VALUES \
               (1, 1, 2, 1, 2, UTC_TIMESTAMP(6), 'a to b'), (2, 2, 1, 1, 2, UTC_TIMESTAMP(6), 'b to a'), \
               (3, 1, 1, 1, 1, UTC_TIMESTAMP(6), 'note'), (4, 3, 1, 1, 3, UTC_TIMESTAMP(6), 'c to a'), \
               (5, 1, 2, 1, 2, UTC_TIMESTAMP(6), 'a to b'), (6, 3, 2, 2, 3, UTC_TIMESTAMP(6), 'c to b'), \
               (7, 3, 1, 1, 3, UTC_TIMESTAMP(6), 'c to a'); \
             INSERT INTO chatcore_counts (low_id, high_id, total) VALUES \
               (1, 2, 3), (1, 1, 1), (1, 3, 2), (2, 3, 1), (1, 0, 6), (2, 0, 4), (3, 0, 3); \
             UPDATE chatcore_counts SET total = 10 WHERE low_id = 0 AND high_id = 0",
        )
        .execute(&mut conn)
        .await
        .unwrap();

        let store =
            crate::MysqlStore::connect_with(database.options().unwrap(), MysqlConfig::default()).unwrap();
        let report = store.migrate().await.unwrap();
        assert_eq!((report.previous, report.current), (3, latest_version() as u32));
        // The host's feed lists the messages stored before, in id order.
        let feed: Vec<i64> = store
            .feed_after(Position::START, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.position().0)
            .collect();
        assert_eq!(feed, [1, 2, 3, 4, 5, 6, 7]);
        let user = |id: i64, s: &str| User {
            id: UserId(id),
            username: Username::from_stored(s),
        };
        let (alice, bob, carol, dave) = (
            user(1, "alice"),
            user(2, "Bob"),
            user(3, "carol"),
            user(4, "dave"),
        );
        let inbox = |who: UserId| {
            let store = store.clone();
            async move {
                let page = store
                    .inbox(
                        who,
                        &InboxRequest {
                            before: None,
                            limit: 10,
                        },
                    )
                    .await
                    .unwrap();
                let rows: Vec<(String, i64, u64, Option<MessageId>)> = page
                    .conversations
                    .iter()
                    .map(|c| {
                        (
                            c.peer.as_str().to_owned(),
                            c.last_message.id.0,
                            c.unread,
                            c.read_up_to,
                        )
                    })
                    .collect();
                (page.unread_total, rows)
            }
        };
        let row = |peer: &str, last: i64, unread: u64| (peer.to_owned(), last, unread, None);
        assert_eq!(
            inbox(alice.id).await,
            (3, vec![row("carol", 7, 2), row("Bob", 5, 1), row("alice", 3, 0)])
        );
        assert_eq!(
            inbox(bob.id).await,
            (3, vec![row("carol", 6, 1), row("alice", 5, 2)])
        );
        assert_eq!(
            inbox(carol.id).await,
            (0, vec![row("alice", 7, 0), row("Bob", 6, 0)])
        );
        assert_eq!(inbox(dave.id).await, (0, vec![]));
        let newest = store
            .inbox(
                alice.id,
                &InboxRequest {
                    before: None,
                    limit: 1,
                },
            )
            .await
            .unwrap();
        assert_eq!(newest.conversations[0].last_message.body, "c to a");
        assert_eq!(newest.conversations[0].last_message.sender.as_str(), "carol");

        // A send after the migration counts on top of the old messages.
        let sent = store
            .insert_message(NewMessage {
                sender: bob.clone(),
                recipient: name("ALICE"),
                body: "new".into(),
                idempotency_key: None,
            })
            .await
            .unwrap();
        assert_eq!(sent.message.id.0, 11, "ids continue above the old sequence");
        assert_eq!((sent.sender_previous.0, sent.recipient_previous.0), (6, 7));
        assert_eq!(
            inbox(alice.id).await,
            (4, vec![row("Bob", 11, 2), row("carol", 7, 2), row("alice", 3, 0)])
        );
        // A mark passes over bob's two unread messages (2 and 11), none of alice's.
        let marked = store
            .mark_read(&alice, &name("bob"), MessageId(11))
            .await
            .unwrap();
        assert_eq!((marked.unread, marked.read_up_to), (0, MessageId(11)));
        let moved = marked.moved.expect("the marker moved");
        assert_eq!(moved.marker.position, Position(12));
        assert_eq!(
            (moved.reader_previous, moved.peer_previous),
            (Position(11), Position(11))
        );
        assert_eq!(moved.marker.peer.as_str(), "Bob");
        assert_eq!(inbox(alice.id).await.0, 2);
        assert_eq!(store.latest_position(bob.id).await.unwrap(), Position(12));
        let events = store.events_after(alice.id, Position(5), 10).await.unwrap();
        let positions: Vec<i64> = events.iter().map(|e| e.position().0).collect();
        assert_eq!(positions, [7, 11, 12]);
        assert!(matches!(&events[2], StoredEvent::Read(m) if m.up_to == MessageId(11)));
        // Bob's view of the conversation shows alice's marker.
        let bobs = store
            .inbox(
                bob.id,
                &InboxRequest {
                    before: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(bobs.conversations[0].peer.as_str(), "alice");
        assert_eq!(bobs.conversations[0].peer_read_up_to, Some(MessageId(11)));
        assert_eq!(bobs.unread_total, 3, "bob's own unread is untouched");
        store.close().await.unwrap();
    }

    /// A run of migration 3 that got as far as the unique index but was not recorded (the
    /// process died) is applied again without error, and reports again who was kept apart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_interrupted_username_key_migration_runs_again() {
        let (database, mut conn) = database_at(2).await;
        sqlx::raw_sql(
            "INSERT INTO chatcore_users (id, username, created_at) VALUES \
               (1, 'Alice', UTC_TIMESTAMP(6)), (2, 'alice', UTC_TIMESTAMP(6))",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        // The step itself, without the record of the migration.
        let notes = crate::username_keys::migrate(&mut conn).await.unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        let store =
            crate::MysqlStore::connect_with(database.options().unwrap(), MysqlConfig::default()).unwrap();
        let report = store.migrate().await.unwrap();
        assert_eq!((report.previous, report.current), (2, latest_version() as u32));
        assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
        assert!(
            report.notes[0].contains("\"alice\" (user id 2)") && report.notes[0].contains("rename"),
            "{}",
            report.notes[0]
        );
        let found = store.find_user(&name("ALICE")).await.unwrap().unwrap();
        assert_eq!(found.id, UserId(1));
        store.close().await.unwrap();
    }
}
