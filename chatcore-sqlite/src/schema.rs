//! The schema, its migrations and the table that records them (`chatcore_migrations`).

use std::collections::HashMap;

use chatcore::{Error, MigrationReport, Username};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::error;

/// One schema step. Steps are applied in order, each in the transaction that records it.
struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
    /// Work SQL cannot do (Unicode normalization), run after `sql` in the same transaction;
    /// it may leave notes for the operator in the report.
    then: Option<RustStep>,
}

/// A migration's Rust half: the open transaction, and the notes for the report.
type RustStep = fn(&Connection, &mut Vec<String>) -> rusqlite::Result<()>;

/// Every migration, oldest first. Never edit a released step: add a new one.
const MIGRATIONS: &[Migration] = &[
    Migration {
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
        then: None,
    },
    Migration {
        version: 2,
        name: "a user's messages through their conversations: drop the per-user message index",
        // Each message wrote one row per participant into chatcore_user_messages, and those rows
        // land on a different b-tree page for every user: most of the pages a commit wrote. A
        // user's messages are now read through the conversations they take part in (a row per
        // conversation and participant, written once) and each conversation's newest id.
        sql: r#"
CREATE TABLE chatcore_user_conversations (
    user_id   INTEGER NOT NULL,
    conv_low  INTEGER NOT NULL,
    conv_high INTEGER NOT NULL,
    PRIMARY KEY (user_id, conv_low, conv_high)
) WITHOUT ROWID;
INSERT OR IGNORE INTO chatcore_user_conversations (user_id, conv_low, conv_high)
    SELECT conv_low, conv_low, conv_high FROM chatcore_conversations;
INSERT OR IGNORE INTO chatcore_user_conversations (user_id, conv_low, conv_high)
    SELECT conv_high, conv_low, conv_high FROM chatcore_conversations;
ALTER TABLE chatcore_conversations ADD COLUMN last_id INTEGER NOT NULL DEFAULT 0;
UPDATE chatcore_conversations SET last_id = coalesce((
    SELECT max(m.id) FROM chatcore_messages AS m
    WHERE m.conv_low = chatcore_conversations.conv_low
      AND m.conv_high = chatcore_conversations.conv_high), 0);
DROP TABLE chatcore_user_messages;
"#,
        then: None,
    },
    Migration {
        version: 3,
        name: "conversations as chains of messages with a sparse index: drop the conversation index",
        // The conversation index put each message's entry on its conversation's own b-tree
        // leaf, so a commit wrote one page per conversation in it: most of what it wrote. Each
        // message now names the conversation's previous message and its number in the
        // conversation, and every 16th message has a row in a small index (see `chain`), so a
        // commit writes the table's newest leaf, the counters and a mark now and then.
        sql: r#"
ALTER TABLE chatcore_messages ADD COLUMN prev_id INTEGER;
ALTER TABLE chatcore_messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE chatcore_messages SET prev_id = w.prev_id, seq = w.seq
    FROM (SELECT id, lag(id) OVER c AS prev_id, row_number() OVER c AS seq
          FROM chatcore_messages
          WINDOW c AS (PARTITION BY conv_low, conv_high ORDER BY id)) AS w
    WHERE chatcore_messages.id = w.id;
UPDATE chatcore_conversations SET message_count = coalesce((
    SELECT m.seq FROM chatcore_messages AS m WHERE m.id = chatcore_conversations.last_id), 0);
CREATE TABLE chatcore_conversation_marks (
    conv_low  INTEGER NOT NULL,
    conv_high INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    id        INTEGER NOT NULL,
    PRIMARY KEY (conv_low, conv_high, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX chatcore_conversation_marks_id ON chatcore_conversation_marks (conv_low, conv_high, id);
INSERT INTO chatcore_conversation_marks (conv_low, conv_high, seq, id)
    SELECT conv_low, conv_high, seq, id FROM chatcore_messages WHERE seq % 16 = 0;
DROP INDEX chatcore_messages_conversation;
"#,
        then: None,
    },
    Migration {
        version: 4,
        name: "each user's newest message id, for the previous position of their next event",
        // An insert reports each participant's previous position (their newest message before
        // it), and `latest_position` is that newest id: one primary-key read of the user's
        // counter row instead of a look at every conversation they take part in. The newest id
        // of a user is the newest of their conversations'.
        sql: r#"
ALTER TABLE chatcore_user_counts ADD COLUMN last_id INTEGER NOT NULL DEFAULT 0;
UPDATE chatcore_user_counts SET last_id = coalesce((
    SELECT max(c.last_id) FROM chatcore_user_conversations AS uc
    CROSS JOIN chatcore_conversations AS c ON c.conv_low = uc.conv_low AND c.conv_high = uc.conv_high
    WHERE uc.user_id = chatcore_user_counts.user_id), 0);
"#,
        then: None,
    },
    Migration {
        version: 5,
        name: "usernames unique without regard to case (username_key); an index on session expiry",
        // Names are found and kept unique by `Username::key` (NFKC, lowercased), which SQL
        // cannot compute: the column is added here and filled by `fill_username_keys`, which
        // then creates its unique index. The name index goes: lookups and the directory use
        // the key, and equal names have equal keys. `delete_expired_sessions` is one range
        // delete on the expiry index.
        sql: r#"
ALTER TABLE chatcore_users ADD COLUMN username_key TEXT NOT NULL DEFAULT '';
DROP INDEX chatcore_users_username;
CREATE INDEX chatcore_sessions_expires ON chatcore_sessions (expires_at);
"#,
        then: Some(fill_username_keys),
    },
    Migration {
        version: 6,
        name: "the inbox and read state: per-user conversations by latest activity, unread counters, read events",
        // Positions: read events share the message id sequence, so the writer hands out
        // message ids itself from now on (see `writer`). `sender_seq` numbers a message among
        // its sender's messages of the conversation, so how many of a user's messages lie at
        // or below a message is one row read: moving a read marker costs two rowid lookups,
        // whatever it passes over. `low_count` (messages sent by `conv_low`) lets the writer
        // number the next message without reading the previous one. The inbox is one row per
        // user and conversation, ordered by its newest id through `chatcore_inbox_activity`,
        // so a page costs what it holds; the unread counters are kept at write time.
        // Existing data starts without markers: every received message is unread (a note to
        // oneself never is). Like migration 3, numbering rewrites every message row once.
        sql: r#"
ALTER TABLE chatcore_messages ADD COLUMN sender_seq INTEGER NOT NULL DEFAULT 0;
UPDATE chatcore_messages SET sender_seq = w.n
    FROM (SELECT id, row_number() OVER (PARTITION BY conv_low, conv_high, sender_id ORDER BY id) AS n
          FROM chatcore_messages) AS w
    WHERE chatcore_messages.id = w.id;
ALTER TABLE chatcore_conversations ADD COLUMN low_count INTEGER NOT NULL DEFAULT 0;
UPDATE chatcore_conversations SET low_count = coalesce((
    SELECT CASE WHEN m.sender_id = chatcore_conversations.conv_low THEN m.sender_seq ELSE m.seq - m.sender_seq END
    FROM chatcore_messages AS m WHERE m.id = chatcore_conversations.last_id), 0);

CREATE TABLE chatcore_inbox (
    user_id    INTEGER NOT NULL,
    peer_id    INTEGER NOT NULL,
    last_id    INTEGER NOT NULL,
    unread     INTEGER NOT NULL,
    read_up_to INTEGER,
    PRIMARY KEY (user_id, peer_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX chatcore_inbox_activity ON chatcore_inbox (user_id, last_id);
INSERT INTO chatcore_inbox (user_id, peer_id, last_id, unread, read_up_to)
    SELECT conv_low, conv_high, last_id,
           CASE WHEN conv_low = conv_high THEN 0 ELSE message_count - low_count END, NULL
    FROM chatcore_conversations WHERE message_count > 0;
INSERT INTO chatcore_inbox (user_id, peer_id, last_id, unread, read_up_to)
    SELECT conv_high, conv_low, last_id, low_count, NULL
    FROM chatcore_conversations WHERE message_count > 0 AND conv_low <> conv_high;

ALTER TABLE chatcore_user_counts ADD COLUMN unread_total INTEGER NOT NULL DEFAULT 0;
UPDATE chatcore_user_counts SET unread_total = coalesce((
    SELECT sum(i.unread) FROM chatcore_inbox AS i WHERE i.user_id = chatcore_user_counts.user_id), 0);

-- A read marker that moved: a durable event of the reader and the peer. Each user's events
-- are found by one index or the other (a note to oneself only by the reader's).
CREATE TABLE chatcore_reads (
    position  INTEGER PRIMARY KEY,
    reader_id INTEGER NOT NULL REFERENCES chatcore_users (id),
    peer_id   INTEGER NOT NULL REFERENCES chatcore_users (id),
    up_to     INTEGER NOT NULL
);
CREATE INDEX chatcore_reads_reader ON chatcore_reads (reader_id);
CREATE INDEX chatcore_reads_peer ON chatcore_reads (peer_id) WHERE peer_id <> reader_id;
"#,
        then: None,
    },
    Migration {
        version: 7,
        name: "feed consumers' checkpoints",
        // The host's feed reads the primary keys of `chatcore_messages` and `chatcore_reads`
        // forward: no index to add. A consumer's checkpoint lives with the data it points
        // into, one row per name.
        sql: r#"
CREATE TABLE chatcore_checkpoints (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
"#,
        then: None,
    },
    Migration {
        version: 8,
        name: "the inbox in one activity tree per user, read markers apart, unread counted at read time",
        // Migration 6's inbox moved two rows of `chatcore_inbox` and their two entries in
        // `chatcore_inbox_activity` per message, on scattered pages: most of what the inbox
        // added to a commit. Now each user has one entry per conversation in a tree keyed by
        // (user, the conversation's newest id), which the writer moves from the newest id it
        // already knows (the conversation's row) to the new one: one tree, and both entries of
        // a user usually on one leaf. Read markers live in a table of their own that only
        // marks write, with how many of the peer's messages they cover (`peer_seen`), so a
        // conversation's unread count is the peer's messages up to the newest one (numbered
        // by `sender_seq`) less `peer_seen`: computed on the inbox page from rows it reads
        // anyway, never kept per message. The activity tree also lists a user's
        // conversations, so `chatcore_user_conversations` goes. Unread totals stay in
        // `chatcore_user_counts` (a row each message writes anyway) and are recomputed here
        // from the same rule.
        sql: r#"
CREATE TABLE chatcore_activity (
    user_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    peer_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, last_id)
) WITHOUT ROWID;
INSERT INTO chatcore_activity (user_id, last_id, peer_id)
    SELECT conv_low, last_id, conv_high FROM chatcore_conversations WHERE message_count > 0;
INSERT INTO chatcore_activity (user_id, last_id, peer_id)
    SELECT conv_high, last_id, conv_low FROM chatcore_conversations
    WHERE message_count > 0 AND conv_low <> conv_high;

CREATE TABLE chatcore_read_markers (
    user_id   INTEGER NOT NULL,
    peer_id   INTEGER NOT NULL,
    up_to     INTEGER NOT NULL,
    peer_seen INTEGER NOT NULL,
    PRIMARY KEY (user_id, peer_id)
) WITHOUT ROWID;
INSERT INTO chatcore_read_markers (user_id, peer_id, up_to, peer_seen)
    SELECT i.user_id, i.peer_id, i.read_up_to, coalesce(
        CASE WHEN m.sender_id = i.peer_id THEN m.sender_seq ELSE m.seq - m.sender_seq END, 0)
    FROM chatcore_inbox AS i LEFT JOIN chatcore_messages AS m ON m.id = i.read_up_to
    WHERE i.read_up_to IS NOT NULL;

UPDATE chatcore_user_counts SET unread_total = coalesce((
    SELECT sum(CASE WHEN m.sender_id = a.peer_id THEN m.sender_seq ELSE m.seq - m.sender_seq END
               - coalesce(r.peer_seen, 0))
    FROM chatcore_activity AS a
    CROSS JOIN chatcore_messages AS m ON m.id = a.last_id
    LEFT JOIN chatcore_read_markers AS r ON r.user_id = a.user_id AND r.peer_id = a.peer_id
    WHERE a.user_id = chatcore_user_counts.user_id AND a.peer_id <> a.user_id), 0);

DROP TABLE chatcore_inbox;
DROP TABLE chatcore_user_conversations;
"#,
        then: None,
    },
    Migration {
        version: 9,
        name: "edits and deletions of messages, and their events",
        // A message keeps its newest body only: an edit overwrites it (`edited_at`, µs), a
        // deletion empties it and sets `deleted`. Each edit or deletion is a durable event of
        // both participants at a position of the one sequence, kept in `chatcore_changes`; the
        // event names the message and is read with it as it is now, so no text that was
        // edited or deleted stays behind in an event. Indexed like `chatcore_reads`: a user's
        // changes after a position, as sender and as recipient (a note to oneself once).
        sql: r#"
ALTER TABLE chatcore_messages ADD COLUMN edited_at INTEGER;
ALTER TABLE chatcore_messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
CREATE TABLE chatcore_changes (
    position     INTEGER PRIMARY KEY,
    message_id   INTEGER NOT NULL REFERENCES chatcore_messages (id),
    sender_id    INTEGER NOT NULL,
    recipient_id INTEGER NOT NULL,
    deleted      INTEGER NOT NULL
);
CREATE INDEX chatcore_changes_sender ON chatcore_changes (sender_id);
CREATE INDEX chatcore_changes_recipient ON chatcore_changes (recipient_id) WHERE recipient_id <> sender_id;
"#,
        then: None,
    },
    Migration {
        version: 10,
        name: "blocks between users",
        // A block is a row per blocker and blocked user, durable state and not an event (no
        // position). The writer looks the pair up both ways by primary key in the transaction
        // that inserts a message or edits one, so a block committed before is never slipped
        // past. Each user's counter row (which the writer reads for every send anyway) counts
        // the blocks they take part in, either side: a send between two users of whom one
        // has none skips the lookup, so only users with blocks pay for them. A user's block
        // list is sorted by the blocked user's key (copied here: keys never change), so a
        // page is one range of the second index.
        sql: r#"
ALTER TABLE chatcore_user_counts ADD COLUMN block_count INTEGER NOT NULL DEFAULT 0;
CREATE TABLE chatcore_blocks (
    blocker_id  INTEGER NOT NULL REFERENCES chatcore_users (id),
    blocked_id  INTEGER NOT NULL REFERENCES chatcore_users (id),
    blocked_key TEXT NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX chatcore_blocks_by_key ON chatcore_blocks (blocker_id, blocked_key);
"#,
        then: None,
    },
    Migration {
        version: 11,
        name: "removed accounts, and a user's sessions by user",
        // A removed account keeps its row (the name stays taken, histories still name it)
        // with `removed_at` (µs) set, its password hash emptied and its sessions deleted.
        // Ending every session of one user (`delete_user_sessions`, account removal) is one
        // range of the new index instead of a scan of every session.
        sql: r#"
ALTER TABLE chatcore_users ADD COLUMN removed_at INTEGER;
CREATE INDEX chatcore_sessions_user ON chatcore_sessions (user_id);
"#,
        then: None,
    },
    Migration {
        version: 12,
        name: "the activity order moves to memory",
        // Each user's conversations by newest activity cost every send a delete and an
        // insert per participant in `chatcore_activity`. The store owns its file (the lock
        // file), so it keeps that order in memory, built from `chatcore_conversations` at
        // open (`activity.rs`), and the tree goes.
        sql: r#"
DROP TABLE chatcore_activity;
"#,
        then: None,
    },
];

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: u32 = 12;

/// Migration 5's Rust half: gives every user the key of their stored name
/// ([`Username::key_of`]; names made before today's rules are keyed as they are), then makes
/// the key unique. Where existing names share a key, the oldest user (lowest id) keeps it and
/// each other one gets the key followed by NUL and their id, which no name can produce: they
/// keep their messages and sessions but can no longer be found or log in by name. Never
/// merged, never silent: each clash becomes a note in the report (and a warning in the log)
/// saying what the operator should do.
fn fill_username_keys(conn: &Connection, notes: &mut Vec<String>) -> rusqlite::Result<()> {
    let users: Vec<(i64, String)> = conn
        .prepare("SELECT id, username FROM chatcore_users ORDER BY id")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // Key -> the users holding it, oldest first.
    let mut by_key: HashMap<String, Vec<(i64, String)>> = HashMap::with_capacity(users.len());
    let mut order = Vec::new();
    for (id, name) in users {
        let key = Username::key_of(&name);
        let holders = by_key.entry(key.clone()).or_default();
        if holders.is_empty() {
            order.push(key);
        }
        holders.push((id, name));
    }
    let mut set_key = conn.prepare("UPDATE chatcore_users SET username_key = ?2 WHERE id = ?1")?;
    for key in order {
        let holders = &by_key[&key];
        let (owner_id, owner_name) = &holders[0];
        set_key.execute(rusqlite::params![owner_id, key])?;
        if holders.len() == 1 {
            continue;
        }
        for (id, _) in &holders[1..] {
            set_key.execute(rusqlite::params![id, format!("{key}\u{0}{id}")])?;
        }
        let others: Vec<String> = holders[1..]
            .iter()
            .map(|(id, name)| format!("{name:?} (id {id})"))
            .collect();
        let note = format!(
            "usernames {owner_name:?} (id {owner_id}) and {others} are the same name without regard to case \
             (key {key:?}); they were not merged: user {owner_id} keeps the name, and {others} can no longer be \
             found or log in by name (their messages and sessions are kept). Rename each of them to a free name \
             (e.g. `UPDATE chatcore_users SET username = 'new-name', username_key = 'new-name' WHERE id = ...`, \
             the key being the new name in lower case) and tell them their new name.",
            others = others.join(", ")
        );
        tracing::warn!(%note, "usernames clash without regard to case");
        notes.push(note);
    }
    conn.execute_batch("CREATE UNIQUE INDEX chatcore_users_key ON chatcore_users (username_key)")
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
    let mut notes = Vec::new();
    for step in MIGRATIONS.iter().filter(|m| m.version > previous) {
        tx.execute_batch(step.sql).map_err(error::map)?;
        if let Some(then) = step.then {
            then(&tx, &mut notes).map_err(error::map)?;
        }
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
        notes,
    })
}

/// Databases as older code left them, for migration tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Brings `conn` (empty) to schema `version` exactly, as that version's code did.
    pub(crate) fn migrate_to(conn: &Connection, version: u32) {
        conn.execute_batch(CREATE_MIGRATIONS_TABLE).unwrap();
        for step in MIGRATIONS.iter().filter(|m| m.version <= version) {
            conn.execute_batch(step.sql).unwrap();
            if let Some(then) = step.then {
                then(conn, &mut Vec::new()).unwrap();
            }
            conn.execute(
                "INSERT INTO chatcore_migrations VALUES (?1, 'old', 0)",
                [step.version],
            )
            .unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database as the code of schema `version` left it, without rows.
    fn database_at(version: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(CREATE_MIGRATIONS_TABLE).unwrap();
        for step in &MIGRATIONS[..version] {
            conn.execute_batch(step.sql).unwrap();
            conn.execute(
                "INSERT INTO chatcore_migrations VALUES (?1, 'old', 0)",
                [step.version],
            )
            .unwrap();
        }
        conn
    }

    /// Every row `sql` answers, each read by `read`.
    fn rows<T>(
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
        read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Vec<T> {
        conn.prepare(sql)
            .unwrap()
            .query_map(params, read)
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Whether the schema has a table or an index called `name`.
    fn in_schema(conn: &Connection, name: &str) -> bool {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            > 0
    }

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

    /// A version-1 database with messages moves to version 2 with its conversations listed
    /// under both participants (once for a note to oneself) and each conversation's newest id
    /// (and on to the activity order, built from them since version 12).
    #[test]
    fn version_1_data_migrates() {
        let mut conn = database_at(1);
        conn.execute_batch(
            "INSERT INTO chatcore_users (id, username) VALUES (1, 'a'), (2, 'b'), (3, 'c');
             INSERT INTO chatcore_messages (id, sender_id, recipient_id, conv_low, conv_high, created_at, body)
                 VALUES (1, 1, 2, 1, 2, 0, 'x'), (2, 2, 1, 1, 2, 0, 'y'), (3, 3, 3, 3, 3, 0, 'z'),
                        (4, 1, 3, 1, 3, 0, 'w');
             INSERT INTO chatcore_user_messages VALUES (1, 1), (2, 1), (1, 2), (2, 2), (3, 3), (1, 4), (3, 4);
             INSERT INTO chatcore_conversations VALUES (1, 2, 2), (3, 3, 1), (1, 3, 1);
             INSERT INTO chatcore_user_counts VALUES (1, 3), (2, 2), (3, 2);",
        )
        .unwrap();
        let report = migrate(&mut conn, 1).unwrap();
        assert_eq!((report.previous, report.current), (1, SCHEMA_VERSION));
        let activity = crate::activity::Activity::default();
        activity.load(&conn).unwrap();
        let listed: Vec<(i64, Vec<i64>)> = (1..=3)
            .map(|user| {
                let view = activity.view(user, i64::MAX, 0, i64::MAX, 10);
                (user, view.settled.iter().map(|e| e.peer).collect())
            })
            .collect();
        assert_eq!(listed, vec![(1, vec![3, 2]), (2, vec![1]), (3, vec![1, 3])]);
        let newest: Vec<(i64, i64, i64, i64)> = rows(
            &conn,
            "SELECT conv_low, conv_high, message_count, last_id FROM chatcore_conversations ORDER BY 1, 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        );
        assert_eq!(newest, vec![(1, 2, 2, 2), (1, 3, 1, 4), (3, 3, 1, 3)]);
        assert!(!in_schema(&conn, "chatcore_user_messages"));
    }

    /// A version-2 database moves to version 3 with every conversation's messages linked and
    /// numbered in id order, a mark on every 16th, and the conversation index gone; the
    /// chains then read back exactly what was there.
    #[test]
    fn version_2_data_migrates() {
        let mut conn = database_at(2);
        conn.execute_batch("INSERT INTO chatcore_users (id, username) VALUES (1, 'a'), (2, 'b'), (3, 'c')")
            .unwrap();
        // 40 messages between a and b, interleaved with 5 between a and c.
        let mut ab = Vec::new();
        let mut ac = Vec::new();
        for id in 1..=45i64 {
            let high = if id % 9 == 0 { 3 } else { 2 };
            if high == 2 {
                ab.push(id)
            } else {
                ac.push(id)
            }
            conn.execute(
                "INSERT INTO chatcore_messages (id, sender_id, recipient_id, conv_low, conv_high, created_at, body)
                 VALUES (?1, 1, ?2, 1, ?2, 0, 'x')",
                [id, high],
            )
            .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO chatcore_conversations VALUES (1, 2, 40, 44), (1, 3, 5, 45);
             INSERT INTO chatcore_user_conversations VALUES (1, 1, 2), (1, 1, 3), (2, 1, 2), (3, 1, 3);",
        )
        .unwrap();
        let report = migrate(&mut conn, 1).unwrap();
        assert_eq!((report.previous, report.current), (2, SCHEMA_VERSION));
        for (high, ids) in [(2i64, &ab), (3, &ac)] {
            let links: Vec<(i64, Option<i64>, i64)> = rows(
                &conn,
                "SELECT id, prev_id, seq FROM chatcore_messages WHERE conv_high = ?1 ORDER BY id",
                [high],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            );
            let want: Vec<(i64, Option<i64>, i64)> = ids
                .iter()
                .enumerate()
                .map(|(i, &id)| (id, i.checked_sub(1).map(|p| ids[p]), i as i64 + 1))
                .collect();
            assert_eq!(links, want);
            let conversation = crate::chain::Conversation {
                low: 1,
                high,
                last_id: *ids.last().unwrap(),
            };
            let newest = conversation.newest_below(&conn, i64::MAX).unwrap();
            let back: Vec<i64> = crate::chain::Conversation::ids_back(&conn, newest)
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(back, ids.iter().rev().copied().collect::<Vec<_>>());
        }
        let marks: Vec<(i64, i64, i64)> = rows(
            &conn,
            "SELECT conv_high, seq, id FROM chatcore_conversation_marks ORDER BY 1, 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        );
        assert_eq!(marks, vec![(2, 16, ab[15]), (2, 32, ab[31])]);
        assert!(in_schema(&conn, "chatcore_conversation_marks_id"));
        assert!(!in_schema(&conn, "chatcore_messages_conversation"));
    }

    /// A version-3 database moves to version 4 with each user's newest message id (their
    /// newest conversation's), notes to oneself included, and 0 for a user without messages.
    #[test]
    fn version_3_data_migrates() {
        let mut conn = database_at(3);
        conn.execute_batch(
            "INSERT INTO chatcore_users (id, username) VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd');
             INSERT INTO chatcore_messages
                 (id, sender_id, recipient_id, conv_low, conv_high, created_at, body, prev_id, seq)
                 VALUES (1, 1, 2, 1, 2, 0, 'x', NULL, 1), (2, 2, 1, 1, 2, 0, 'y', 1, 2),
                        (3, 3, 3, 3, 3, 0, 'z', NULL, 1), (4, 1, 3, 1, 3, 0, 'w', NULL, 1),
                        (5, 2, 1, 1, 2, 0, 'v', 2, 3);
             INSERT INTO chatcore_conversations (conv_low, conv_high, message_count, last_id)
                 VALUES (1, 2, 3, 5), (3, 3, 1, 3), (1, 3, 1, 4);
             INSERT INTO chatcore_user_conversations VALUES (1, 1, 2), (2, 1, 2), (3, 3, 3), (1, 1, 3), (3, 1, 3);
             INSERT INTO chatcore_user_counts (user_id, message_count) VALUES (1, 4), (2, 3), (3, 2), (4, 0);",
        )
        .unwrap();
        let report = migrate(&mut conn, 1).unwrap();
        assert_eq!((report.previous, report.current), (3, SCHEMA_VERSION));
        let users: Vec<(i64, i64, i64)> = rows(
            &conn,
            "SELECT user_id, message_count, last_id FROM chatcore_user_counts ORDER BY 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        );
        assert_eq!(users, vec![(1, 4, 5), (2, 3, 5), (3, 2, 4), (4, 0, 0)]);
        // New rows get 0 until their first message.
        conn.execute(
            "INSERT INTO chatcore_user_counts (user_id, message_count) VALUES (9, 0)",
            [],
        )
        .unwrap();
        let fresh: i64 = conn
            .query_row(
                "SELECT last_id FROM chatcore_user_counts WHERE user_id = 9",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(fresh, 0);
    }

    /// A version-4 database whose names clash without regard to case (they predate the
    /// rule, one also predates NFKC) moves to version 5 with every user kept: the oldest of
    /// each clash keeps the key, the others get keys no name can produce, and the report
    /// says which names and ids clash and what to do. The key is unique from then on, the
    /// sessions get their expiry index, and a database without clashes gets no notes.
    #[test]
    fn version_4_clashing_names_are_kept_apart_and_reported() {
        let mut conn = database_at(4);
        conn.execute_batch(
            "INSERT INTO chatcore_users (id, username, password_hash) VALUES
                 (1, 'bob', NULL), (2, 'Alice', '$a'), (3, 'alice', '$b'), (4, 'Bob', NULL),
                 (5, 'carol', NULL), (6, '\u{FF41}lice', NULL);",
        )
        .unwrap();
        let report = migrate(&mut conn, 1).unwrap();
        assert_eq!((report.previous, report.current), (4, SCHEMA_VERSION));
        let keys: Vec<(i64, String, String)> = rows(
            &conn,
            "SELECT id, username, username_key FROM chatcore_users ORDER BY id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        );
        let want = [
            (1, "bob", "bob"),
            (2, "Alice", "alice"),
            (3, "alice", "alice\u{0}3"),
            (4, "Bob", "bob\u{0}4"),
            (5, "carol", "carol"),
            (6, "\u{FF41}lice", "alice\u{0}6"),
        ]
        .map(|(id, name, key)| (id, name.to_owned(), key.to_owned()));
        assert_eq!(keys, want);
        assert_eq!(report.notes.len(), 2, "{:#?}", report.notes);
        let (bob, alice) = (&report.notes[0], &report.notes[1]);
        for (note, owner, others) in [
            (bob, "\"bob\" (id 1)", &["\"Bob\" (id 4)"][..]),
            (
                alice,
                "\"Alice\" (id 2)",
                &["\"alice\" (id 3)", "\"\u{FF41}lice\" (id 6)"][..],
            ),
        ] {
            assert!(note.contains(owner), "{note}");
            for other in others {
                assert!(note.contains(other), "{note}");
            }
            assert!(note.contains("not merged") && note.contains("Rename"), "{note}");
        }
        // Any case of a taken key is refused from now on.
        let taken = conn.execute(
            "INSERT INTO chatcore_users (username, username_key) VALUES ('CAROL', 'carol')",
            [],
        );
        assert_eq!(
            taken.unwrap_err().sqlite_error_code(),
            Some(rusqlite::ffi::ErrorCode::ConstraintViolation)
        );
        assert!(in_schema(&conn, "chatcore_users_key"));
        assert!(in_schema(&conn, "chatcore_sessions_expires"));
        assert!(!in_schema(&conn, "chatcore_users_username"));

        let mut clean = database_at(4);
        clean
            .execute_batch("INSERT INTO chatcore_users (id, username) VALUES (1, 'Dave'), (2, 'erin')")
            .unwrap();
        assert_eq!(migrate(&mut clean, 1).unwrap().notes, Vec::<String>::new());
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
