//! The embedded migrations and the runner that applies them, tracked in `chatcore_migrations`
//! (never the host's `_sqlx_migrations`).
//!
//! PostgreSQL runs DDL inside transactions, so the whole run (every missing migration and
//! its record) is one transaction: a run that fails leaves the schema as it was.

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, Row};

use chatcore::{Error, MigrationReport, Result};

use crate::error;

/// One schema change: statements run in order, then recorded.
pub(crate) struct Migration {
    /// 1, 2, 3, ...: applied in this order, each once.
    pub version: i64,
    /// For humans and the migrations table.
    pub description: &'static str,
    /// The statements, in order.
    pub steps: &'static [&'static str],
}

impl Migration {
    /// SHA-256 over the statements, so an edited, already applied migration is detected.
    fn checksum(&self) -> Vec<u8> {
        let mut hash = Sha256::new();
        for step in self.steps {
            hash.update(step.as_bytes());
            hash.update([0u8]);
        }
        hash.finalize().to_vec()
    }
}

/// The key of the advisory lock that serializes migration runs of every process ("chatcore").
const MIGRATION_LOCK: i64 = 0x6368_6174_636f_7265;

/// The table recording applied migrations. Ours alone: a host using `sqlx::migrate!` keeps its
/// `_sqlx_migrations`, and neither sees the other's entries.
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS chatcore_migrations (
    version BIGINT NOT NULL PRIMARY KEY,
    description TEXT NOT NULL,
    checksum BYTEA NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Every migration this version of the crate knows, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "users, sessions, messages, counters and id sequence, the batch insert function, notification payloads",
    steps: &[
        // `username` as its owner wrote it, for display; names are unique by
        // `username_key` (lowercased NFKC, computed in Rust), compared byte-wise (collation
        // "C"), so the directory is a range of the key index in byte order and a prefix is a
        // range too.
        "CREATE TABLE chatcore_users (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            username TEXT NOT NULL,
            username_key TEXT COLLATE \"C\" NOT NULL,
            password_hash TEXT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
        "CREATE UNIQUE INDEX chatcore_users_username_key ON chatcore_users (username_key)",
        // Only the SHA-256 of a token is kept; the expiry index serves the purge.
        "CREATE TABLE chatcore_sessions (
            token_hash BYTEA NOT NULL PRIMARY KEY,
            user_id BIGINT NOT NULL REFERENCES chatcore_users (id) ON DELETE CASCADE,
            expires_at TIMESTAMPTZ NOT NULL
        )",
        "CREATE INDEX chatcore_sessions_expires ON chatcore_sessions (expires_at)",
        "CREATE INDEX chatcore_sessions_user ON chatcore_sessions (user_id)",
        // `id` comes from the id sequence row of `chatcore_counts` (commit order), never from
        // a PostgreSQL sequence. No foreign keys: the insert function resolves both users
        // under its lock, and a key check per row would only slow every send.
        "CREATE TABLE chatcore_messages (
            id BIGINT NOT NULL PRIMARY KEY,
            sender_id BIGINT NOT NULL,
            recipient_id BIGINT NOT NULL,
            conversation_low BIGINT NOT NULL,
            conversation_high BIGINT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            body TEXT NOT NULL,
            idempotency_key_hash BYTEA NULL
        )",
        // A conversation page is one backward range; a user's messages and the catch-up are
        // two ranges merged; replays are one unique lookup (keys stored as SHA-256).
        "CREATE INDEX chatcore_messages_conversation ON chatcore_messages (conversation_low, conversation_high, id)",
        "CREATE INDEX chatcore_messages_sender ON chatcore_messages (sender_id, id)",
        "CREATE INDEX chatcore_messages_recipient ON chatcore_messages (recipient_id, id)",
        "CREATE UNIQUE INDEX chatcore_messages_idempotency ON chatcore_messages (sender_id, idempotency_key_hash) \
            WHERE idempotency_key_hash IS NOT NULL",
        // Totals kept by the inserting transaction, so `total` is one primary-key lookup:
        // (low, high) with 1 <= low <= high for a conversation, (user, 0) for a user's
        // total, and (0, 0) for the last message id handed out (no user has id 0).
        "CREATE TABLE chatcore_counts (
            low_id BIGINT NOT NULL,
            high_id BIGINT NOT NULL,
            total BIGINT NOT NULL,
            PRIMARY KEY (low_id, high_id)
        )",
        "INSERT INTO chatcore_counts (low_id, high_id, total) VALUES (0, 0, 0)",
        // One batch of sends in one statement (one round trip, one transaction when called
        // outside a transaction block). The first statement locks the id sequence row until
        // the transaction commits: every inserting transaction of every process takes it
        // first, so ids are handed out in commit order. In READ COMMITTED each statement of a
        // volatile function takes a new snapshot, so the second one, run under the lock,
        // sees every message committed before the lock was granted: the idempotency keys
        // (no race with another process), and each user's newest id up to the sequence value
        // (their previous position). The clock is read under the lock too, so timestamps
        // follow id order.
        //
        // Rows returned: 'missing' (unknown sender or recipient), 'replay' (the message
        // stored earlier under the key, with its names), 'stored' (the new id, recipient,
        // time), and one 'previous' row per user of the stored messages (their newest id
        // before the batch, 0 for none). The inserts in WITH run to completion whether or not
        // the result reads them; they share the statement's snapshot, so the 'previous' reads
        // (bounded by the sequence value anyway) never see the batch's own rows.
        "CREATE FUNCTION chatcore_insert_messages(
            p_senders BIGINT[], p_recipient_keys TEXT[], p_bodies TEXT[], p_key_hashes BYTEA[])
        RETURNS TABLE (
            ord INT, outcome TEXT, message_id BIGINT, recipient_id BIGINT, recipient_name TEXT,
            sender_name TEXT, created_at TIMESTAMPTZ, body TEXT, user_id BIGINT, previous BIGINT)
        LANGUAGE plpgsql VOLATILE AS $fn$
        DECLARE
            v_last BIGINT;
            v_at TIMESTAMPTZ;
        BEGIN
            SELECT c.total INTO v_last FROM chatcore_counts c
                WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
            IF v_last IS NULL THEN
                RAISE EXCEPTION 'the chatcore message id sequence is missing: run Backend::migrate()'
                    USING ERRCODE = 'XX000';
            END IF;
            v_at := date_trunc('microseconds', clock_timestamp());
            RETURN QUERY
            WITH input AS (
                SELECT t.ord::INT AS ord, t.sender_id, t.rkey, t.body, t.khash
                FROM unnest(p_senders, p_recipient_keys, p_bodies, p_key_hashes)
                    WITH ORDINALITY AS t(sender_id, rkey, body, khash, ord)
            ), resolved AS (
                SELECT i.*, r.id AS rid, r.username AS rname, s.username AS sname
                FROM input i
                LEFT JOIN chatcore_users r ON r.username_key = i.rkey
                LEFT JOIN chatcore_users s ON s.id = i.sender_id
            ), earlier AS (
                SELECT rs.ord, m.id, m.recipient_id, ru.username AS rname, su.username AS sname,
                    m.created_at, m.body
                FROM resolved rs
                JOIN chatcore_messages m
                    ON m.sender_id = rs.sender_id AND m.idempotency_key_hash = rs.khash
                JOIN chatcore_users su ON su.id = m.sender_id
                JOIN chatcore_users ru ON ru.id = m.recipient_id
                WHERE rs.khash IS NOT NULL AND rs.rid IS NOT NULL AND rs.sname IS NOT NULL
            ), fresh AS (
                SELECT rs.*, v_last + row_number() OVER (ORDER BY rs.ord) AS new_id
                FROM resolved rs
                WHERE rs.rid IS NOT NULL AND rs.sname IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM earlier e WHERE e.ord = rs.ord)
            ), stored AS (
                INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low,
                    conversation_high, created_at, body, idempotency_key_hash)
                SELECT f.new_id, f.sender_id, f.rid, LEAST(f.sender_id, f.rid),
                    GREATEST(f.sender_id, f.rid), v_at, f.body, f.khash
                FROM fresh f
                RETURNING id
            ), counted AS (
                INSERT INTO chatcore_counts AS c (low_id, high_id, total)
                SELECT k.low_id, k.high_id, count(*) FROM (
                    SELECT 0::BIGINT AS low_id, 0::BIGINT AS high_id FROM fresh
                    UNION ALL SELECT LEAST(f.sender_id, f.rid), GREATEST(f.sender_id, f.rid) FROM fresh f
                    UNION ALL SELECT f.sender_id, 0 FROM fresh f
                    UNION ALL SELECT f.rid, 0 FROM fresh f WHERE f.rid <> f.sender_id
                ) k
                GROUP BY k.low_id, k.high_id
                ORDER BY k.low_id, k.high_id
                ON CONFLICT (low_id, high_id) DO UPDATE SET total = c.total + EXCLUDED.total
                RETURNING c.low_id
            ), users AS (
                SELECT f.sender_id AS uid FROM fresh f UNION SELECT f.rid FROM fresh f
            )
            SELECT rs.ord, 'missing'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT, NULL::TEXT,
                NULL::TIMESTAMPTZ, NULL::TEXT, NULL::BIGINT, NULL::BIGINT
            FROM resolved rs WHERE rs.rid IS NULL OR rs.sname IS NULL
            UNION ALL
            SELECT e.ord, 'replay', e.id, e.recipient_id, e.rname, e.sname, e.created_at, e.body,
                NULL, NULL
            FROM earlier e
            UNION ALL
            SELECT f.ord, 'stored', f.new_id, f.rid, f.rname, f.sname, v_at, NULL, NULL, NULL
            FROM fresh f
            UNION ALL
            SELECT NULL, 'previous', NULL, NULL, NULL, NULL, NULL, NULL, u.uid, GREATEST(
                COALESCE((SELECT ms.id FROM chatcore_messages ms
                    WHERE ms.sender_id = u.uid AND ms.id <= v_last ORDER BY ms.id DESC LIMIT 1), 0),
                COALESCE((SELECT mr.id FROM chatcore_messages mr
                    WHERE mr.recipient_id = u.uid AND mr.id <= v_last ORDER BY mr.id DESC LIMIT 1), 0))
            FROM users u;
        END
        $fn$",
        // Notification frames too large for a NOTIFY payload (8000 bytes) travel by
        // reference: `PgNotifier` stores them here and each node reads one back once. Old
        // rows are deleted by later large publishes.
        "CREATE TABLE chatcore_notify_payloads (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            frame BYTEA NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
        "CREATE INDEX chatcore_notify_payloads_created ON chatcore_notify_payloads (created_at)",
    ],
}, Migration {
    version: 2,
    description: "inbox, unread counts, read markers and read events",
    // The whole run is one transaction, so a migration stopped halfway leaves nothing behind.
    // Processes running the previous version must be stopped first: their sends would not
    // update the inbox, and the counts filled here would drift.
    steps: &[
        // One row per user and conversation partner (the user themself for notes to self),
        // written by the inserting transaction: `last_id` is the conversation's newest message
        // (the inbox order: `chatcore_inbox_activity` is read backwards from the cursor),
        // `unread` the messages from the peer after `read_up_to` (the user's read marker, NULL
        // until they mark one).
        "CREATE TABLE chatcore_inbox (
            user_id BIGINT NOT NULL,
            peer_id BIGINT NOT NULL,
            last_id BIGINT NOT NULL,
            unread BIGINT NOT NULL,
            read_up_to BIGINT NULL,
            PRIMARY KEY (user_id, peer_id)
        )",
        "CREATE INDEX chatcore_inbox_activity ON chatcore_inbox (user_id, last_id)",
        // A read marker that moved: a durable event of the reader and of the peer (the same
        // user for notes to self), at a position from the message id sequence (row (0, 0) of
        // `chatcore_counts`). Each index is one user's events in position order, as reader
        // and as peer.
        "CREATE TABLE chatcore_read_events (
            position BIGINT NOT NULL PRIMARY KEY,
            reader_id BIGINT NOT NULL,
            peer_id BIGINT NOT NULL,
            up_to BIGINT NOT NULL
        )",
        "CREATE INDEX chatcore_read_events_reader ON chatcore_read_events (reader_id, position)",
        "CREATE INDEX chatcore_read_events_peer ON chatcore_read_events (peer_id, position)",
        // The inbox of the messages stored so far: nobody has a marker yet, so every message
        // received from someone else is unread (notes to self never are). The second branch
        // is the other side of each conversation between two users.
        "INSERT INTO chatcore_inbox (user_id, peer_id, last_id, unread, read_up_to)
        SELECT conversation_low, conversation_high, MAX(id),
            COUNT(*) FILTER (WHERE recipient_id = conversation_low AND sender_id <> recipient_id), NULL::BIGINT
        FROM chatcore_messages GROUP BY conversation_low, conversation_high
        UNION ALL
        SELECT conversation_high, conversation_low, MAX(id),
            COUNT(*) FILTER (WHERE recipient_id = conversation_high), NULL::BIGINT
        FROM chatcore_messages WHERE conversation_low <> conversation_high
        GROUP BY conversation_low, conversation_high",
        // Each user's unread total: the row (user, -1) of chatcore_counts (no conversation
        // key is negative), kept by the inserting transaction and by `chatcore_mark_read`.
        "INSERT INTO chatcore_counts (low_id, high_id, total)
        SELECT user_id, -1, SUM(unread) FROM chatcore_inbox GROUP BY user_id",
        // The batch function of migration 1, now also bringing both users' inboxes up to date
        // (one upsert row per user and conversation of the batch: the newest id, and the
        // unread messages it adds for the recipient), the recipient's unread total, and with
        // read events among each user's previous positions.
        "CREATE OR REPLACE FUNCTION chatcore_insert_messages(
            p_senders BIGINT[], p_recipient_keys TEXT[], p_bodies TEXT[], p_key_hashes BYTEA[])
        RETURNS TABLE (
            ord INT, outcome TEXT, message_id BIGINT, recipient_id BIGINT, recipient_name TEXT,
            sender_name TEXT, created_at TIMESTAMPTZ, body TEXT, user_id BIGINT, previous BIGINT)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        DECLARE
            v_last BIGINT;
            v_at TIMESTAMPTZ;
        BEGIN
            SELECT c.total INTO v_last FROM chatcore_counts c
                WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
            IF v_last IS NULL THEN
                RAISE EXCEPTION 'the chatcore message id sequence is missing: run Backend::migrate()'
                    USING ERRCODE = 'XX000';
            END IF;
            v_at := date_trunc('microseconds', clock_timestamp());
            RETURN QUERY
            WITH input AS (
                SELECT t.ord::INT AS ord, t.sender_id, t.rkey, t.body, t.khash
                FROM unnest(p_senders, p_recipient_keys, p_bodies, p_key_hashes)
                    WITH ORDINALITY AS t(sender_id, rkey, body, khash, ord)
            ), resolved AS (
                SELECT i.*, r.id AS rid, r.username AS rname, s.username AS sname
                FROM input i
                LEFT JOIN chatcore_users r ON r.username_key = i.rkey
                LEFT JOIN chatcore_users s ON s.id = i.sender_id
            ), earlier AS (
                SELECT rs.ord, m.id, m.recipient_id, ru.username AS rname, su.username AS sname,
                    m.created_at, m.body
                FROM resolved rs
                JOIN chatcore_messages m
                    ON m.sender_id = rs.sender_id AND m.idempotency_key_hash = rs.khash
                JOIN chatcore_users su ON su.id = m.sender_id
                JOIN chatcore_users ru ON ru.id = m.recipient_id
                WHERE rs.khash IS NOT NULL AND rs.rid IS NOT NULL AND rs.sname IS NOT NULL
            ), fresh AS (
                SELECT rs.*, v_last + row_number() OVER (ORDER BY rs.ord) AS new_id
                FROM resolved rs
                WHERE rs.rid IS NOT NULL AND rs.sname IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM earlier e WHERE e.ord = rs.ord)
            ), stored AS (
                INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low,
                    conversation_high, created_at, body, idempotency_key_hash)
                SELECT f.new_id, f.sender_id, f.rid, LEAST(f.sender_id, f.rid),
                    GREATEST(f.sender_id, f.rid), v_at, f.body, f.khash
                FROM fresh f
                RETURNING id
            ), counted AS (
                INSERT INTO chatcore_counts AS c (low_id, high_id, total)
                SELECT k.low_id, k.high_id, count(*) FROM (
                    SELECT 0::BIGINT AS low_id, 0::BIGINT AS high_id FROM fresh
                    UNION ALL SELECT LEAST(f.sender_id, f.rid), GREATEST(f.sender_id, f.rid) FROM fresh f
                    UNION ALL SELECT f.sender_id, 0 FROM fresh f
                    UNION ALL SELECT f.rid, 0 FROM fresh f WHERE f.rid <> f.sender_id
                    UNION ALL SELECT f.rid, -1 FROM fresh f WHERE f.rid <> f.sender_id
                ) k
                GROUP BY k.low_id, k.high_id
                ORDER BY k.low_id, k.high_id
                ON CONFLICT (low_id, high_id) DO UPDATE SET total = c.total + EXCLUDED.total
                RETURNING c.low_id
            ), boxed AS (
                INSERT INTO chatcore_inbox AS b (user_id, peer_id, last_id, unread, read_up_to)
                SELECT k.uid, k.pid, MAX(k.mid), SUM(k.n), NULL::BIGINT FROM (
                    SELECT f.sender_id AS uid, f.rid AS pid, f.new_id AS mid, 0::BIGINT AS n
                    FROM fresh f
                    UNION ALL SELECT f.rid, f.sender_id, f.new_id, 1 FROM fresh f
                    WHERE f.rid <> f.sender_id
                ) k
                GROUP BY k.uid, k.pid
                ORDER BY k.uid, k.pid
                ON CONFLICT ON CONSTRAINT chatcore_inbox_pkey DO UPDATE
                    SET last_id = GREATEST(b.last_id, EXCLUDED.last_id),
                        unread = b.unread + EXCLUDED.unread
                RETURNING b.user_id
            ), users AS (
                SELECT f.sender_id AS uid FROM fresh f UNION SELECT f.rid FROM fresh f
            )
            SELECT rs.ord, 'missing'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT, NULL::TEXT,
                NULL::TIMESTAMPTZ, NULL::TEXT, NULL::BIGINT, NULL::BIGINT
            FROM resolved rs WHERE rs.rid IS NULL OR rs.sname IS NULL
            UNION ALL
            SELECT e.ord, 'replay', e.id, e.recipient_id, e.rname, e.sname, e.created_at, e.body,
                NULL, NULL
            FROM earlier e
            UNION ALL
            SELECT f.ord, 'stored', f.new_id, f.rid, f.rname, f.sname, v_at, NULL, NULL, NULL
            FROM fresh f
            UNION ALL
            SELECT NULL, 'previous', NULL, NULL, NULL, NULL, NULL, NULL, u.uid, GREATEST(
                COALESCE((SELECT ms.id FROM chatcore_messages ms
                    WHERE ms.sender_id = u.uid AND ms.id <= v_last ORDER BY ms.id DESC LIMIT 1), 0),
                COALESCE((SELECT mr.id FROM chatcore_messages mr
                    WHERE mr.recipient_id = u.uid AND mr.id <= v_last ORDER BY mr.id DESC LIMIT 1), 0),
                COALESCE((SELECT er.position FROM chatcore_read_events er
                    WHERE er.reader_id = u.uid AND er.position <= v_last
                    ORDER BY er.position DESC LIMIT 1), 0),
                COALESCE((SELECT ep.position FROM chatcore_read_events ep
                    WHERE ep.peer_id = u.uid AND ep.position <= v_last
                    ORDER BY ep.position DESC LIMIT 1), 0))
            FROM users u;
        END
        $fn$",
        // One `mark_read` in one statement (one round trip, one transaction outside a
        // transaction block). It locks the id sequence row first, like every batch, so the read
        // event's position comes from the same sequence in commit order, and no send of the
        // conversation commits between the read of the inbox row and its update. Outcomes:
        // 'no_user' (unknown peer), 'no_message' (`up_to` is not a message between the two),
        // 'kept' (the marker is already there or beyond: nothing written), 'moved'.
        "CREATE FUNCTION chatcore_mark_read(p_reader BIGINT, p_peer_key TEXT, p_up_to BIGINT)
        RETURNS TABLE (
            r_outcome TEXT, r_peer_id BIGINT, r_peer_name TEXT, r_position BIGINT,
            r_read_up_to BIGINT, r_unread BIGINT, r_reader_previous BIGINT, r_peer_previous BIGINT)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        DECLARE
            v_last BIGINT;
            v_peer BIGINT;
            v_peer_name TEXT;
            v_old BIGINT;
            v_unread BIGINT;
            v_passed BIGINT;
            v_reader_prev BIGINT;
            v_peer_prev BIGINT;
        BEGIN
            SELECT c.total INTO v_last FROM chatcore_counts c
                WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
            IF v_last IS NULL THEN
                RAISE EXCEPTION 'the chatcore message id sequence is missing: run Backend::migrate()'
                    USING ERRCODE = 'XX000';
            END IF;
            SELECT u.id, u.username INTO v_peer, v_peer_name FROM chatcore_users u
                WHERE u.username_key = p_peer_key;
            IF v_peer IS NULL THEN
                RETURN QUERY SELECT 'no_user'::TEXT, NULL::BIGINT, NULL::TEXT, NULL::BIGINT,
                    NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT;
                RETURN;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM chatcore_messages m WHERE m.id = p_up_to
                    AND m.conversation_low = LEAST(p_reader, v_peer)
                    AND m.conversation_high = GREATEST(p_reader, v_peer)) THEN
                RETURN QUERY SELECT 'no_message'::TEXT, v_peer, v_peer_name, NULL::BIGINT,
                    NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT;
                RETURN;
            END IF;
            SELECT i.read_up_to, i.unread INTO v_old, v_unread FROM chatcore_inbox i
                WHERE i.user_id = p_reader AND i.peer_id = v_peer FOR UPDATE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'chatcore_inbox lacks the row of a conversation with messages'
                    USING ERRCODE = 'XX000';
            END IF;
            IF v_old IS NOT NULL AND v_old >= p_up_to THEN
                RETURN QUERY SELECT 'kept'::TEXT, v_peer, v_peer_name, NULL::BIGINT, v_old,
                    v_unread, NULL::BIGINT, NULL::BIGINT;
                RETURN;
            END IF;
            -- The peer's messages the marker passes over: one range of the conversation index.
            IF p_reader = v_peer THEN
                v_passed := 0;
            ELSE
                SELECT count(*) INTO v_passed FROM chatcore_messages m
                    WHERE m.conversation_low = LEAST(p_reader, v_peer)
                    AND m.conversation_high = GREATEST(p_reader, v_peer)
                    AND m.id > COALESCE(v_old, 0) AND m.id <= p_up_to AND m.sender_id = v_peer;
            END IF;
            v_reader_prev := GREATEST(
                COALESCE((SELECT ms.id FROM chatcore_messages ms
                    WHERE ms.sender_id = p_reader ORDER BY ms.id DESC LIMIT 1), 0),
                COALESCE((SELECT mr.id FROM chatcore_messages mr
                    WHERE mr.recipient_id = p_reader ORDER BY mr.id DESC LIMIT 1), 0),
                COALESCE((SELECT er.position FROM chatcore_read_events er
                    WHERE er.reader_id = p_reader ORDER BY er.position DESC LIMIT 1), 0),
                COALESCE((SELECT ep.position FROM chatcore_read_events ep
                    WHERE ep.peer_id = p_reader ORDER BY ep.position DESC LIMIT 1), 0));
            v_peer_prev := GREATEST(
                COALESCE((SELECT ms.id FROM chatcore_messages ms
                    WHERE ms.sender_id = v_peer ORDER BY ms.id DESC LIMIT 1), 0),
                COALESCE((SELECT mr.id FROM chatcore_messages mr
                    WHERE mr.recipient_id = v_peer ORDER BY mr.id DESC LIMIT 1), 0),
                COALESCE((SELECT er.position FROM chatcore_read_events er
                    WHERE er.reader_id = v_peer ORDER BY er.position DESC LIMIT 1), 0),
                COALESCE((SELECT ep.position FROM chatcore_read_events ep
                    WHERE ep.peer_id = v_peer ORDER BY ep.position DESC LIMIT 1), 0));
            UPDATE chatcore_counts c SET total = v_last + 1 WHERE c.low_id = 0 AND c.high_id = 0;
            INSERT INTO chatcore_read_events (position, reader_id, peer_id, up_to)
                VALUES (v_last + 1, p_reader, v_peer, p_up_to);
            UPDATE chatcore_inbox i SET read_up_to = p_up_to, unread = i.unread - v_passed
                WHERE i.user_id = p_reader AND i.peer_id = v_peer;
            IF v_passed > 0 THEN
                UPDATE chatcore_counts c SET total = c.total - v_passed
                    WHERE c.low_id = p_reader AND c.high_id = -1;
            END IF;
            RETURN QUERY SELECT 'moved'::TEXT, v_peer, v_peer_name, v_last + 1, p_up_to,
                v_unread - v_passed, v_reader_prev, v_peer_prev;
        END
        $fn$",
    ],
}, Migration {
    version: 3,
    description: "generic plans for the batch functions",
    // PL/pgSQL plans each statement of a function with the call's values for its first five
    // calls on a connection and keeps planning that way whenever a generic plan looks no
    // cheaper, which for the batch's one large statement is every call: planning it took
    // about 1.3 ms against 0.4 ms for running it (a send alone on a quiet machine: 1.8 ms).
    // Its plan does not depend on the values (index ranges by key, LIMIT 1 probes), so one
    // generic plan per connection serves every call.
    steps: &[
        "ALTER FUNCTION chatcore_insert_messages(BIGINT[], TEXT[], TEXT[], BYTEA[])
            SET plan_cache_mode = force_generic_plan",
        "ALTER FUNCTION chatcore_mark_read(BIGINT, TEXT, BIGINT) SET plan_cache_mode = force_generic_plan",
    ],
}, Migration {
    version: 4,
    description: "feed consumers' checkpoints",
    // The host's feed reads the primary keys of `chatcore_messages` and
    // `chatcore_read_events` forward: no index to add.
    steps: &["CREATE TABLE chatcore_checkpoints (
            name TEXT NOT NULL PRIMARY KEY,
            position BIGINT NOT NULL
        )"],
}, Migration {
    version: 5,
    description: "edits and deletions of messages, and their events",
    // A message keeps its newest body only: an edit overwrites it (`edited_at`), a deletion
    // empties it and sets `deleted`. Each edit or deletion is a durable event of both
    // participants, kept in `chatcore_read_events` with a `kind` (0 a read marker, 1 an edit,
    // 2 a deletion; `reader_id` the sender, `peer_id` the recipient, `up_to` the message): its
    // two indexes already give each user's events after a position and their newest one, so
    // a send's previous positions read no more indexes than before.
    steps: &[
        "ALTER TABLE chatcore_messages ADD COLUMN edited_at TIMESTAMPTZ NULL, \
            ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT FALSE",
        "ALTER TABLE chatcore_read_events ADD COLUMN kind SMALLINT NOT NULL DEFAULT 0",
        // One edit or deletion in one statement (one round trip, one transaction). It locks
        // the position sequence row first, like every batch and mark, so the event's position
        // comes from the same sequence in commit order; then the message row, so two changes
        // of one message apply one after the other. Outcomes (`Store::change_message`'s
        // order): 'missing' (no such message, or the caller is not a participant),
        // 'not_sender', 'gone' (a tombstone: the message comes back as it is), 'window'
        // (older than `p_not_before`), 'changed'.
        "CREATE FUNCTION chatcore_change_message(
            p_sender BIGINT, p_id BIGINT, p_delete BOOLEAN, p_body TEXT, p_not_before TIMESTAMPTZ)
        RETURNS TABLE (
            r_outcome TEXT, r_recipient_id BIGINT, r_position BIGINT, r_sender_previous BIGINT,
            r_recipient_previous BIGINT, r_id BIGINT, r_sender TEXT, r_recipient TEXT,
            r_created_at TIMESTAMPTZ, r_body TEXT, r_edited_at TIMESTAMPTZ, r_deleted BOOLEAN)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        DECLARE
            v_last BIGINT;
            v_from BIGINT;
            v_to BIGINT;
            v_created TIMESTAMPTZ;
            v_deleted BOOLEAN;
            v_outcome TEXT;
            v_sender_prev BIGINT;
            v_recipient_prev BIGINT;
        BEGIN
            SELECT c.total INTO v_last FROM chatcore_counts c
                WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
            IF v_last IS NULL THEN
                RAISE EXCEPTION 'the chatcore message id sequence is missing: run Backend::migrate()'
                    USING ERRCODE = 'XX000';
            END IF;
            SELECT m.sender_id, m.recipient_id, m.created_at, m.deleted
                INTO v_from, v_to, v_created, v_deleted
                FROM chatcore_messages m WHERE m.id = p_id FOR UPDATE;
            IF v_from IS NULL OR (v_from <> p_sender AND v_to <> p_sender) THEN
                RETURN QUERY SELECT 'missing'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT,
                    NULL::BIGINT, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ, NULL::TEXT,
                    NULL::TIMESTAMPTZ, NULL::BOOLEAN;
                RETURN;
            END IF;
            IF v_from <> p_sender THEN
                v_outcome := 'not_sender';
            ELSIF v_deleted THEN
                v_outcome := 'gone';
            ELSIF NOT p_delete AND p_not_before IS NOT NULL AND v_created < p_not_before THEN
                v_outcome := 'window';
            ELSE
                v_outcome := 'changed';
                v_sender_prev := GREATEST(
                    COALESCE((SELECT ms.id FROM chatcore_messages ms
                        WHERE ms.sender_id = v_from ORDER BY ms.id DESC LIMIT 1), 0),
                    COALESCE((SELECT mr.id FROM chatcore_messages mr
                        WHERE mr.recipient_id = v_from ORDER BY mr.id DESC LIMIT 1), 0),
                    COALESCE((SELECT er.position FROM chatcore_read_events er
                        WHERE er.reader_id = v_from ORDER BY er.position DESC LIMIT 1), 0),
                    COALESCE((SELECT ep.position FROM chatcore_read_events ep
                        WHERE ep.peer_id = v_from ORDER BY ep.position DESC LIMIT 1), 0));
                v_recipient_prev := GREATEST(
                    COALESCE((SELECT ms.id FROM chatcore_messages ms
                        WHERE ms.sender_id = v_to ORDER BY ms.id DESC LIMIT 1), 0),
                    COALESCE((SELECT mr.id FROM chatcore_messages mr
                        WHERE mr.recipient_id = v_to ORDER BY mr.id DESC LIMIT 1), 0),
                    COALESCE((SELECT er.position FROM chatcore_read_events er
                        WHERE er.reader_id = v_to ORDER BY er.position DESC LIMIT 1), 0),
                    COALESCE((SELECT ep.position FROM chatcore_read_events ep
                        WHERE ep.peer_id = v_to ORDER BY ep.position DESC LIMIT 1), 0));
                UPDATE chatcore_counts c SET total = v_last + 1 WHERE c.low_id = 0 AND c.high_id = 0;
                IF p_delete THEN
                    UPDATE chatcore_messages m SET body = '', edited_at = NULL, deleted = TRUE
                        WHERE m.id = p_id;
                ELSE
                    UPDATE chatcore_messages m
                        SET body = p_body, edited_at = date_trunc('microseconds', clock_timestamp())
                        WHERE m.id = p_id;
                END IF;
                INSERT INTO chatcore_read_events (position, reader_id, peer_id, up_to, kind)
                    VALUES (v_last + 1, v_from, v_to, p_id, CASE WHEN p_delete THEN 2 ELSE 1 END);
            END IF;
            RETURN QUERY SELECT v_outcome, v_to,
                CASE WHEN v_outcome = 'changed' THEN v_last + 1 END, v_sender_prev, v_recipient_prev,
                m.id, s.username, r.username, m.created_at, m.body, m.edited_at, m.deleted
                FROM chatcore_messages m
                JOIN chatcore_users s ON s.id = m.sender_id JOIN chatcore_users r ON r.id = m.recipient_id
                WHERE m.id = p_id;
        END
        $fn$",
        "ALTER FUNCTION chatcore_change_message(BIGINT, BIGINT, BOOLEAN, TEXT, TIMESTAMPTZ) \
            SET plan_cache_mode = force_generic_plan",
    ],
}, Migration {
    version: 6,
    description: "blocks between users",
    // A block is a row per blocker and blocked user: durable state, not an event (no
    // position). The batch function and `chatcore_change_message` are replaced by the same
    // functions that look each pair they would write up both ways by primary key, after they
    // locked the sequence row (each statement of a function reads a snapshot taken when it
    // starts, so after the lock): `chatcore_set_block` takes that lock too, so a block and the
    // writes of its pair commit one after the other, and once a block is confirmed nothing of
    // the pair is stored. A refused send is the batch's outcome 'blocked' (no id taken, the
    // other sends of the batch go on); a refused edit is 'blocked', checked after 'gone' and
    // before 'window' (`Store::change_message`'s order). A user's block list is sorted by the
    // blocked user's key (copied here: keys never change), so a page is one range of the
    // second index.
    steps: &[
        "CREATE TABLE chatcore_blocks (
            blocker_id BIGINT NOT NULL REFERENCES chatcore_users (id),
            blocked_id BIGINT NOT NULL REFERENCES chatcore_users (id),
            blocked_key TEXT COLLATE \"C\" NOT NULL,
            PRIMARY KEY (blocker_id, blocked_id)
        )",
        "CREATE UNIQUE INDEX chatcore_blocks_by_key ON chatcore_blocks (blocker_id, blocked_key)",
        // Migration 2's batch function, with the blocked sends set apart (`refused`).
        "CREATE OR REPLACE FUNCTION chatcore_insert_messages(
            p_senders BIGINT[], p_recipient_keys TEXT[], p_bodies TEXT[], p_key_hashes BYTEA[])
        RETURNS TABLE (
            ord INT, outcome TEXT, message_id BIGINT, recipient_id BIGINT, recipient_name TEXT,
            sender_name TEXT, created_at TIMESTAMPTZ, body TEXT, user_id BIGINT, previous BIGINT)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        DECLARE
            v_last BIGINT;
            v_at TIMESTAMPTZ;
        BEGIN
            SELECT c.total INTO v_last FROM chatcore_counts c
                WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
            IF v_last IS NULL THEN
                RAISE EXCEPTION 'the chatcore message id sequence is missing: run Backend::migrate()'
                    USING ERRCODE = 'XX000';
            END IF;
            v_at := date_trunc('microseconds', clock_timestamp());
            RETURN QUERY
            WITH input AS (
                SELECT t.ord::INT AS ord, t.sender_id, t.rkey, t.body, t.khash
                FROM unnest(p_senders, p_recipient_keys, p_bodies, p_key_hashes)
                    WITH ORDINALITY AS t(sender_id, rkey, body, khash, ord)
            ), resolved AS (
                SELECT i.*, r.id AS rid, r.username AS rname, s.username AS sname
                FROM input i
                LEFT JOIN chatcore_users r ON r.username_key = i.rkey
                LEFT JOIN chatcore_users s ON s.id = i.sender_id
            ), earlier AS (
                SELECT rs.ord, m.id, m.recipient_id, ru.username AS rname, su.username AS sname,
                    m.created_at, m.body
                FROM resolved rs
                JOIN chatcore_messages m
                    ON m.sender_id = rs.sender_id AND m.idempotency_key_hash = rs.khash
                JOIN chatcore_users su ON su.id = m.sender_id
                JOIN chatcore_users ru ON ru.id = m.recipient_id
                WHERE rs.khash IS NOT NULL AND rs.rid IS NOT NULL AND rs.sname IS NOT NULL
            ), refused AS (
                SELECT rs.ord FROM resolved rs
                WHERE rs.rid IS NOT NULL AND rs.sname IS NOT NULL AND rs.rid <> rs.sender_id
                    AND NOT EXISTS (SELECT 1 FROM earlier e WHERE e.ord = rs.ord)
                    AND (EXISTS (SELECT 1 FROM chatcore_blocks b
                            WHERE b.blocker_id = rs.sender_id AND b.blocked_id = rs.rid)
                        OR EXISTS (SELECT 1 FROM chatcore_blocks b
                            WHERE b.blocker_id = rs.rid AND b.blocked_id = rs.sender_id))
            ), fresh AS (
                SELECT rs.*, v_last + row_number() OVER (ORDER BY rs.ord) AS new_id
                FROM resolved rs
                WHERE rs.rid IS NOT NULL AND rs.sname IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM earlier e WHERE e.ord = rs.ord)
                    AND NOT EXISTS (SELECT 1 FROM refused x WHERE x.ord = rs.ord)
            ), stored AS (
                INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low,
                    conversation_high, created_at, body, idempotency_key_hash)
                SELECT f.new_id, f.sender_id, f.rid, LEAST(f.sender_id, f.rid),
                    GREATEST(f.sender_id, f.rid), v_at, f.body, f.khash
                FROM fresh f
                RETURNING id
            ), counted AS (
                INSERT INTO chatcore_counts AS c (low_id, high_id, total)
                SELECT k.low_id, k.high_id, count(*) FROM (
                    SELECT 0::BIGINT AS low_id, 0::BIGINT AS high_id FROM fresh
                    UNION ALL SELECT LEAST(f.sender_id, f.rid), GREATEST(f.sender_id, f.rid) FROM fresh f
                    UNION ALL SELECT f.sender_id, 0 FROM fresh f
                    UNION ALL SELECT f.rid, 0 FROM fresh f WHERE f.rid <> f.sender_id
                    UNION ALL SELECT f.rid, -1 FROM fresh f WHERE f.rid <> f.sender_id
                ) k
                GROUP BY k.low_id, k.high_id
                ORDER BY k.low_id, k.high_id
                ON CONFLICT (low_id, high_id) DO UPDATE SET total = c.total + EXCLUDED.total
                RETURNING c.low_id
            ), boxed AS (
                INSERT INTO chatcore_inbox AS b (user_id, peer_id, last_id, unread, read_up_to)
                SELECT k.uid, k.pid, MAX(k.mid), SUM(k.n), NULL::BIGINT FROM (
                    SELECT f.sender_id AS uid, f.rid AS pid, f.new_id AS mid, 0::BIGINT AS n
                    FROM fresh f
                    UNION ALL SELECT f.rid, f.sender_id, f.new_id, 1 FROM fresh f
                    WHERE f.rid <> f.sender_id
                ) k
                GROUP BY k.uid, k.pid
                ORDER BY k.uid, k.pid
                ON CONFLICT ON CONSTRAINT chatcore_inbox_pkey DO UPDATE
                    SET last_id = GREATEST(b.last_id, EXCLUDED.last_id),
                        unread = b.unread + EXCLUDED.unread
                RETURNING b.user_id
            ), users AS (
                SELECT f.sender_id AS uid FROM fresh f UNION SELECT f.rid FROM fresh f
            )
            SELECT rs.ord, 'missing'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT, NULL::TEXT,
                NULL::TIMESTAMPTZ, NULL::TEXT, NULL::BIGINT, NULL::BIGINT
            FROM resolved rs WHERE rs.rid IS NULL OR rs.sname IS NULL
            UNION ALL
            SELECT e.ord, 'replay', e.id, e.recipient_id, e.rname, e.sname, e.created_at, e.body,
                NULL, NULL
            FROM earlier e
            UNION ALL
            SELECT x.ord, 'blocked', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
            FROM refused x
            UNION ALL
            SELECT f.ord, 'stored', f.new_id, f.rid, f.rname, f.sname, v_at, NULL, NULL, NULL
            FROM fresh f
            UNION ALL
            SELECT NULL, 'previous', NULL, NULL, NULL, NULL, NULL, NULL, u.uid, GREATEST(
                COALESCE((SELECT ms.id FROM chatcore_messages ms
                    WHERE ms.sender_id = u.uid AND ms.id <= v_last ORDER BY ms.id DESC LIMIT 1), 0),
                COALESCE((SELECT mr.id FROM chatcore_messages mr
                    WHERE mr.recipient_id = u.uid AND mr.id <= v_last ORDER BY mr.id DESC LIMIT 1), 0),
                COALESCE((SELECT er.position FROM chatcore_read_events er
                    WHERE er.reader_id = u.uid AND er.position <= v_last
                    ORDER BY er.position DESC LIMIT 1), 0),
                COALESCE((SELECT ep.position FROM chatcore_read_events ep
                    WHERE ep.peer_id = u.uid AND ep.position <= v_last
                    ORDER BY ep.position DESC LIMIT 1), 0))
            FROM users u;
        END
        $fn$",
        "ALTER FUNCTION chatcore_insert_messages(BIGINT[], TEXT[], TEXT[], BYTEA[])
            SET plan_cache_mode = force_generic_plan",
        // Migration 5's change function, with edits refused while a block stands.
        "CREATE OR REPLACE FUNCTION chatcore_change_message(
            p_sender BIGINT, p_id BIGINT, p_delete BOOLEAN, p_body TEXT, p_not_before TIMESTAMPTZ)
        RETURNS TABLE (
            r_outcome TEXT, r_recipient_id BIGINT, r_position BIGINT, r_sender_previous BIGINT,
            r_recipient_previous BIGINT, r_id BIGINT, r_sender TEXT, r_recipient TEXT,
            r_created_at TIMESTAMPTZ, r_body TEXT, r_edited_at TIMESTAMPTZ, r_deleted BOOLEAN)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        DECLARE
            v_last BIGINT;
            v_from BIGINT;
            v_to BIGINT;
            v_created TIMESTAMPTZ;
            v_deleted BOOLEAN;
            v_outcome TEXT;
            v_sender_prev BIGINT;
            v_recipient_prev BIGINT;
        BEGIN
            SELECT c.total INTO v_last FROM chatcore_counts c
                WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
            IF v_last IS NULL THEN
                RAISE EXCEPTION 'the chatcore message id sequence is missing: run Backend::migrate()'
                    USING ERRCODE = 'XX000';
            END IF;
            SELECT m.sender_id, m.recipient_id, m.created_at, m.deleted
                INTO v_from, v_to, v_created, v_deleted
                FROM chatcore_messages m WHERE m.id = p_id FOR UPDATE;
            IF v_from IS NULL OR (v_from <> p_sender AND v_to <> p_sender) THEN
                RETURN QUERY SELECT 'missing'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT,
                    NULL::BIGINT, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ, NULL::TEXT,
                    NULL::TIMESTAMPTZ, NULL::BOOLEAN;
                RETURN;
            END IF;
            IF v_from <> p_sender THEN
                v_outcome := 'not_sender';
            ELSIF v_deleted THEN
                v_outcome := 'gone';
            ELSIF NOT p_delete AND (
                    EXISTS (SELECT 1 FROM chatcore_blocks b WHERE b.blocker_id = v_from AND b.blocked_id = v_to)
                    OR EXISTS (SELECT 1 FROM chatcore_blocks b WHERE b.blocker_id = v_to AND b.blocked_id = v_from))
                    THEN
                v_outcome := 'blocked';
            ELSIF NOT p_delete AND p_not_before IS NOT NULL AND v_created < p_not_before THEN
                v_outcome := 'window';
            ELSE
                v_outcome := 'changed';
                v_sender_prev := GREATEST(
                    COALESCE((SELECT ms.id FROM chatcore_messages ms
                        WHERE ms.sender_id = v_from ORDER BY ms.id DESC LIMIT 1), 0),
                    COALESCE((SELECT mr.id FROM chatcore_messages mr
                        WHERE mr.recipient_id = v_from ORDER BY mr.id DESC LIMIT 1), 0),
                    COALESCE((SELECT er.position FROM chatcore_read_events er
                        WHERE er.reader_id = v_from ORDER BY er.position DESC LIMIT 1), 0),
                    COALESCE((SELECT ep.position FROM chatcore_read_events ep
                        WHERE ep.peer_id = v_from ORDER BY ep.position DESC LIMIT 1), 0));
                v_recipient_prev := GREATEST(
                    COALESCE((SELECT ms.id FROM chatcore_messages ms
                        WHERE ms.sender_id = v_to ORDER BY ms.id DESC LIMIT 1), 0),
                    COALESCE((SELECT mr.id FROM chatcore_messages mr
                        WHERE mr.recipient_id = v_to ORDER BY mr.id DESC LIMIT 1), 0),
                    COALESCE((SELECT er.position FROM chatcore_read_events er
                        WHERE er.reader_id = v_to ORDER BY er.position DESC LIMIT 1), 0),
                    COALESCE((SELECT ep.position FROM chatcore_read_events ep
                        WHERE ep.peer_id = v_to ORDER BY ep.position DESC LIMIT 1), 0));
                UPDATE chatcore_counts c SET total = v_last + 1 WHERE c.low_id = 0 AND c.high_id = 0;
                IF p_delete THEN
                    UPDATE chatcore_messages m SET body = '', edited_at = NULL, deleted = TRUE
                        WHERE m.id = p_id;
                ELSE
                    UPDATE chatcore_messages m
                        SET body = p_body, edited_at = date_trunc('microseconds', clock_timestamp())
                        WHERE m.id = p_id;
                END IF;
                INSERT INTO chatcore_read_events (position, reader_id, peer_id, up_to, kind)
                    VALUES (v_last + 1, v_from, v_to, p_id, CASE WHEN p_delete THEN 2 ELSE 1 END);
            END IF;
            RETURN QUERY SELECT v_outcome, v_to,
                CASE WHEN v_outcome = 'changed' THEN v_last + 1 END, v_sender_prev, v_recipient_prev,
                m.id, s.username, r.username, m.created_at, m.body, m.edited_at, m.deleted
                FROM chatcore_messages m
                JOIN chatcore_users s ON s.id = m.sender_id JOIN chatcore_users r ON r.id = m.recipient_id
                WHERE m.id = p_id;
        END
        $fn$",
        "ALTER FUNCTION chatcore_change_message(BIGINT, BIGINT, BOOLEAN, TEXT, TIMESTAMPTZ) \
            SET plan_cache_mode = force_generic_plan",
        // A block started (`p_on`) or ended, in one statement (one transaction). Outcomes:
        // 'no_user' (no user holds `p_key`, or, to start a block, `p_blocker` is no user),
        // 'self', 'done'; the target comes back with its name as chosen.
        "CREATE FUNCTION chatcore_set_block(p_blocker BIGINT, p_key TEXT, p_on BOOLEAN)
        RETURNS TABLE (r_outcome TEXT, r_id BIGINT, r_username TEXT)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        DECLARE
            v_target BIGINT;
            v_name TEXT;
            v_key TEXT;
        BEGIN
            PERFORM 1 FROM chatcore_counts c WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
            SELECT u.id, u.username, u.username_key INTO v_target, v_name, v_key
                FROM chatcore_users u WHERE u.username_key = p_key;
            IF v_target IS NULL OR (p_on AND NOT EXISTS (
                    SELECT 1 FROM chatcore_users u WHERE u.id = p_blocker)) THEN
                RETURN QUERY SELECT 'no_user'::TEXT, NULL::BIGINT, NULL::TEXT;
                RETURN;
            END IF;
            IF v_target = p_blocker THEN
                RETURN QUERY SELECT 'self'::TEXT, v_target, v_name;
                RETURN;
            END IF;
            IF p_on THEN
                INSERT INTO chatcore_blocks (blocker_id, blocked_id, blocked_key)
                    VALUES (p_blocker, v_target, v_key) ON CONFLICT DO NOTHING;
            ELSE
                DELETE FROM chatcore_blocks b WHERE b.blocker_id = p_blocker AND b.blocked_id = v_target;
            END IF;
            RETURN QUERY SELECT 'done'::TEXT, v_target, v_name;
        END
        $fn$",
    ],}, Migration {
    version: 7,
    description: "removed accounts: refused sends, and deleting a sender's messages in batches",
    // A removed account keeps its row (the name stays taken, histories still name it) with
    // `removed_at` set, its password hash emptied and its sessions deleted
    // (`Store::remove_user`). The batch insert function of migration 6 (migration 2's with
    // blocked sends set apart as 'blocked'), whose only change is that a removed sender's
    // sends are refused ('removed', before the idempotency replay and the block check): it
    // reads the senders after locking the id sequence row, so a send racing a removal either
    // commits before the sender's messages are deleted (each deleting batch takes the same
    // lock first, then looks) or sees the removal.
    steps: &[
        "ALTER TABLE chatcore_users ADD COLUMN removed_at TIMESTAMPTZ NULL",
        "CREATE OR REPLACE FUNCTION chatcore_insert_messages(
            p_senders BIGINT[], p_recipient_keys TEXT[], p_bodies TEXT[], p_key_hashes BYTEA[])
        RETURNS TABLE (
            ord INT, outcome TEXT, message_id BIGINT, recipient_id BIGINT, recipient_name TEXT,
            sender_name TEXT, created_at TIMESTAMPTZ, body TEXT, user_id BIGINT, previous BIGINT)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        DECLARE
            v_last BIGINT;
            v_at TIMESTAMPTZ;
        BEGIN
            SELECT c.total INTO v_last FROM chatcore_counts c
                WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
            IF v_last IS NULL THEN
                RAISE EXCEPTION 'the chatcore message id sequence is missing: run Backend::migrate()'
                    USING ERRCODE = 'XX000';
            END IF;
            v_at := date_trunc('microseconds', clock_timestamp());
            RETURN QUERY
            WITH input AS (
                SELECT t.ord::INT AS ord, t.sender_id, t.rkey, t.body, t.khash
                FROM unnest(p_senders, p_recipient_keys, p_bodies, p_key_hashes)
                    WITH ORDINALITY AS t(sender_id, rkey, body, khash, ord)
            ), resolved AS (
                SELECT i.*, r.id AS rid, r.username AS rname, s.username AS sname,
                    s.removed_at IS NOT NULL AS sremoved
                FROM input i
                LEFT JOIN chatcore_users r ON r.username_key = i.rkey
                LEFT JOIN chatcore_users s ON s.id = i.sender_id
            ), earlier AS (
                SELECT rs.ord, m.id, m.recipient_id, ru.username AS rname, su.username AS sname,
                    m.created_at, m.body
                FROM resolved rs
                JOIN chatcore_messages m
                    ON m.sender_id = rs.sender_id AND m.idempotency_key_hash = rs.khash
                JOIN chatcore_users su ON su.id = m.sender_id
                JOIN chatcore_users ru ON ru.id = m.recipient_id
                WHERE rs.khash IS NOT NULL AND rs.rid IS NOT NULL AND rs.sname IS NOT NULL
                    AND NOT rs.sremoved
            ), refused AS (
                SELECT rs.ord FROM resolved rs
                WHERE rs.rid IS NOT NULL AND rs.sname IS NOT NULL AND NOT rs.sremoved
                    AND rs.rid <> rs.sender_id
                    AND NOT EXISTS (SELECT 1 FROM earlier e WHERE e.ord = rs.ord)
                    AND (EXISTS (SELECT 1 FROM chatcore_blocks b
                            WHERE b.blocker_id = rs.sender_id AND b.blocked_id = rs.rid)
                        OR EXISTS (SELECT 1 FROM chatcore_blocks b
                            WHERE b.blocker_id = rs.rid AND b.blocked_id = rs.sender_id))
            ), fresh AS (
                SELECT rs.*, v_last + row_number() OVER (ORDER BY rs.ord) AS new_id
                FROM resolved rs
                WHERE rs.rid IS NOT NULL AND rs.sname IS NOT NULL AND NOT rs.sremoved
                    AND NOT EXISTS (SELECT 1 FROM earlier e WHERE e.ord = rs.ord)
                    AND NOT EXISTS (SELECT 1 FROM refused x WHERE x.ord = rs.ord)
            ), stored AS (
                INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low,
                    conversation_high, created_at, body, idempotency_key_hash)
                SELECT f.new_id, f.sender_id, f.rid, LEAST(f.sender_id, f.rid),
                    GREATEST(f.sender_id, f.rid), v_at, f.body, f.khash
                FROM fresh f
                RETURNING id
            ), counted AS (
                INSERT INTO chatcore_counts AS c (low_id, high_id, total)
                SELECT k.low_id, k.high_id, count(*) FROM (
                    SELECT 0::BIGINT AS low_id, 0::BIGINT AS high_id FROM fresh
                    UNION ALL SELECT LEAST(f.sender_id, f.rid), GREATEST(f.sender_id, f.rid) FROM fresh f
                    UNION ALL SELECT f.sender_id, 0 FROM fresh f
                    UNION ALL SELECT f.rid, 0 FROM fresh f WHERE f.rid <> f.sender_id
                    UNION ALL SELECT f.rid, -1 FROM fresh f WHERE f.rid <> f.sender_id
                ) k
                GROUP BY k.low_id, k.high_id
                ORDER BY k.low_id, k.high_id
                ON CONFLICT (low_id, high_id) DO UPDATE SET total = c.total + EXCLUDED.total
                RETURNING c.low_id
            ), boxed AS (
                INSERT INTO chatcore_inbox AS b (user_id, peer_id, last_id, unread, read_up_to)
                SELECT k.uid, k.pid, MAX(k.mid), SUM(k.n), NULL::BIGINT FROM (
                    SELECT f.sender_id AS uid, f.rid AS pid, f.new_id AS mid, 0::BIGINT AS n
                    FROM fresh f
                    UNION ALL SELECT f.rid, f.sender_id, f.new_id, 1 FROM fresh f
                    WHERE f.rid <> f.sender_id
                ) k
                GROUP BY k.uid, k.pid
                ORDER BY k.uid, k.pid
                ON CONFLICT ON CONSTRAINT chatcore_inbox_pkey DO UPDATE
                    SET last_id = GREATEST(b.last_id, EXCLUDED.last_id),
                        unread = b.unread + EXCLUDED.unread
                RETURNING b.user_id
            ), users AS (
                SELECT f.sender_id AS uid FROM fresh f UNION SELECT f.rid FROM fresh f
            )
            SELECT rs.ord, 'missing'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT, NULL::TEXT,
                NULL::TIMESTAMPTZ, NULL::TEXT, NULL::BIGINT, NULL::BIGINT
            FROM resolved rs WHERE rs.rid IS NULL OR rs.sname IS NULL
            UNION ALL
            SELECT rs.ord, 'removed'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::TEXT, NULL::TEXT,
                NULL::TIMESTAMPTZ, NULL::TEXT, NULL::BIGINT, NULL::BIGINT
            FROM resolved rs WHERE rs.rid IS NOT NULL AND rs.sname IS NOT NULL AND rs.sremoved
            UNION ALL
            SELECT e.ord, 'replay', e.id, e.recipient_id, e.rname, e.sname, e.created_at, e.body,
                NULL, NULL
            FROM earlier e
            UNION ALL
            SELECT x.ord, 'blocked', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
            FROM refused x
            UNION ALL
            SELECT f.ord, 'stored', f.new_id, f.rid, f.rname, f.sname, v_at, NULL, NULL, NULL
            FROM fresh f
            UNION ALL
            SELECT NULL, 'previous', NULL, NULL, NULL, NULL, NULL, NULL, u.uid, GREATEST(
                COALESCE((SELECT ms.id FROM chatcore_messages ms
                    WHERE ms.sender_id = u.uid AND ms.id <= v_last ORDER BY ms.id DESC LIMIT 1), 0),
                COALESCE((SELECT mr.id FROM chatcore_messages mr
                    WHERE mr.recipient_id = u.uid AND mr.id <= v_last ORDER BY mr.id DESC LIMIT 1), 0),
                COALESCE((SELECT er.position FROM chatcore_read_events er
                    WHERE er.reader_id = u.uid AND er.position <= v_last
                    ORDER BY er.position DESC LIMIT 1), 0),
                COALESCE((SELECT ep.position FROM chatcore_read_events ep
                    WHERE ep.peer_id = u.uid AND ep.position <= v_last
                    ORDER BY ep.position DESC LIMIT 1), 0))
            FROM users u;
        END
        $fn$",
        "ALTER FUNCTION chatcore_insert_messages(BIGINT[], TEXT[], TEXT[], BYTEA[])
            SET plan_cache_mode = force_generic_plan",
        // Up to `p_limit` of `p_sender`'s messages after `p_after` that still have a body,
        // oldest first, each deleted by `chatcore_change_message` (its event included), in one
        // transaction. The sequence row is locked before the messages are looked for (see
        // above); the look is a range of `chatcore_messages_sender` from the cursor.
        "CREATE FUNCTION chatcore_delete_sent(p_sender BIGINT, p_after BIGINT, p_limit INT)
        RETURNS TABLE (
            r_outcome TEXT, r_recipient_id BIGINT, r_position BIGINT, r_sender_previous BIGINT,
            r_recipient_previous BIGINT, r_id BIGINT, r_sender TEXT, r_recipient TEXT,
            r_created_at TIMESTAMPTZ, r_body TEXT, r_edited_at TIMESTAMPTZ, r_deleted BOOLEAN)
        LANGUAGE plpgsql VOLATILE AS $fn$
        DECLARE
            v_last BIGINT;
            v_id BIGINT;
        BEGIN
            SELECT c.total INTO v_last FROM chatcore_counts c
                WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
            FOR v_id IN SELECT m.id FROM chatcore_messages m
                WHERE m.sender_id = p_sender AND m.id > p_after AND NOT m.deleted
                ORDER BY m.id LIMIT p_limit
            LOOP
                RETURN QUERY SELECT * FROM chatcore_change_message(p_sender, v_id, TRUE, NULL, NULL);
            END LOOP;
        END
        $fn$",
    ],
}, Migration {
    version: 8,
    description: "each user's newest position kept on their total row; the batch function in parts",
    // A send's previous positions were eight backward index dives (four per user: messages
    // sent and received, read events as reader and as peer), about a quarter of the server's
    // CPU per send. Every function that hands out positions (the batch insert,
    // `chatcore_mark_read`, `chatcore_change_message` and through it `chatcore_delete_sent`)
    // now also moves each participant's newest position, under the sequence lock they all
    // take first, so the previous position is one primary-key lookup per user. Catch-up reads
    // are unchanged (positions themselves are the same). The batch function is split so that
    // later migrations replace a part: the rules (`chatcore_send_outcomes`, inlined by the
    // planner, so it costs no call) apart from the writes.
    steps: &[
        // Each user's newest position (the position of their newest durable event: a message
        // sent or received, a read marker, an edit or deletion, as either side) on their total
        // row `(user, 0)`, so a new event's previous position is one primary-key lookup
        // instead of a backward dive into four indexes. Every user with an event has that row
        // (a message adds to both participants' totals, and every other event needs a
        // message between the two). NULL on the other rows.
        "ALTER TABLE chatcore_counts ADD COLUMN last_position BIGINT NULL",
        // The positions of the events stored so far: the four dives, once per user.
        "UPDATE chatcore_counts c SET last_position = GREATEST(
            COALESCE((SELECT max(m.id) FROM chatcore_messages m WHERE m.sender_id = c.low_id), 0),
            COALESCE((SELECT max(m.id) FROM chatcore_messages m WHERE m.recipient_id = c.low_id), 0),
            COALESCE((SELECT max(e.position) FROM chatcore_read_events e WHERE e.reader_id = c.low_id), 0),
            COALESCE((SELECT max(e.position) FROM chatcore_read_events e WHERE e.peer_id = c.low_id), 0))
        WHERE c.high_id = 0 AND c.low_id > 0",
        // The lock every function that hands out positions takes first (see migration 1):
        // the position sequence row `(0, 0)`, held until the transaction commits. Returns the
        // last position handed out.
        "CREATE FUNCTION chatcore_lock_positions() RETURNS BIGINT
        LANGUAGE plpgsql VOLATILE AS $fn$
        DECLARE
            v_last BIGINT;
        BEGIN
            SELECT c.total INTO v_last FROM chatcore_counts c
                WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
            IF v_last IS NULL THEN
                RAISE EXCEPTION 'the chatcore message id sequence is missing: run Backend::migrate()'
                    USING ERRCODE = 'XX000';
            END IF;
            RETURN v_last;
        END
        $fn$",
        // What becomes of each send of a batch, decided without writing anything: 'missing'
        // (unknown sender or recipient), 'removed' (the sender's account was removed), 'replay'
        // (the sender stored a message under this key before: that message, with its names),
        // 'blocked' (a block stands between the two; notes to self never are), else 'send'
        // (the recipient and both names resolved, with the body and key to store), in that
        // order of precedence. A single SELECT in SQL, STABLE: the planner inlines it into the
        // calling statement (no call of its own, read with that statement's snapshot, planned
        // with it), so a later migration that changes the rules replaces this function alone.
        // `OFFSET 0` keeps each block check a primary-key probe per send: without it the
        // planner may turn the EXISTS into a hashed subplan that reads the whole of
        // `chatcore_blocks` on every call (measured: 3 ms a send with 4,000 blocks).
        "CREATE FUNCTION chatcore_send_outcomes(
            p_senders BIGINT[], p_recipient_keys TEXT[], p_bodies TEXT[], p_key_hashes BYTEA[])
        RETURNS TABLE (
            ord INT, outcome TEXT, sender_id BIGINT, recipient_id BIGINT, recipient_name TEXT,
            sender_name TEXT, message_id BIGINT, created_at TIMESTAMPTZ, body TEXT, key_hash BYTEA)
        LANGUAGE sql STABLE AS $fn$
            SELECT rs.ord, d.outcome, rs.sender_id,
                CASE WHEN e.id IS NULL THEN rs.rid ELSE e.recipient_id END,
                CASE WHEN e.id IS NULL THEN rs.rname ELSE e.rname END,
                CASE WHEN e.id IS NULL THEN rs.sname ELSE e.sname END,
                e.id, e.created_at,
                CASE WHEN e.id IS NULL THEN rs.body ELSE e.body END,
                rs.khash
            FROM (
                SELECT t.ord::INT AS ord, t.sender_id, t.body, t.khash, r.id AS rid, r.username AS rname,
                    s.username AS sname, s.removed_at IS NOT NULL AS sremoved
                FROM unnest(p_senders, p_recipient_keys, p_bodies, p_key_hashes)
                    WITH ORDINALITY AS t(sender_id, rkey, body, khash, ord)
                LEFT JOIN chatcore_users r ON r.username_key = t.rkey
                LEFT JOIN chatcore_users s ON s.id = t.sender_id
            ) rs
            LEFT JOIN LATERAL (
                SELECT m.id, m.recipient_id, ru.username AS rname, su.username AS sname, m.created_at, m.body
                FROM chatcore_messages m
                JOIN chatcore_users su ON su.id = m.sender_id
                JOIN chatcore_users ru ON ru.id = m.recipient_id
                WHERE m.sender_id = rs.sender_id AND m.idempotency_key_hash = rs.khash
            ) e ON rs.khash IS NOT NULL AND rs.rid IS NOT NULL AND rs.sname IS NOT NULL AND NOT rs.sremoved
            CROSS JOIN LATERAL (SELECT CASE
                WHEN rs.rid IS NULL OR rs.sname IS NULL THEN 'missing'
                WHEN rs.sremoved THEN 'removed'
                WHEN e.id IS NOT NULL THEN 'replay'
                WHEN rs.rid <> rs.sender_id AND (
                    EXISTS (SELECT 1 FROM chatcore_blocks b
                        WHERE b.blocker_id = rs.sender_id AND b.blocked_id = rs.rid OFFSET 0)
                    OR EXISTS (SELECT 1 FROM chatcore_blocks b
                        WHERE b.blocker_id = rs.rid AND b.blocked_id = rs.sender_id OFFSET 0))
                    THEN 'blocked'
                ELSE 'send' END AS outcome) d
        $fn$",
        // The batch function of migration 7 in parts: the lock (`chatcore_lock_positions`),
        // the decisions (`chatcore_send_outcomes`), then, in one statement, the inserts, the
        // counters (each participant's newest position now kept on their total row) and the
        // inbox, and the 'previous' rows read from the total rows: that statement's snapshot
        // is taken after the lock and its reads never see its own writes, so they are the
        // newest positions before the batch.
        "CREATE OR REPLACE FUNCTION chatcore_insert_messages(
            p_senders BIGINT[], p_recipient_keys TEXT[], p_bodies TEXT[], p_key_hashes BYTEA[])
        RETURNS TABLE (
            ord INT, outcome TEXT, message_id BIGINT, recipient_id BIGINT, recipient_name TEXT,
            sender_name TEXT, created_at TIMESTAMPTZ, body TEXT, user_id BIGINT, previous BIGINT)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        DECLARE
            v_last BIGINT;
            v_at TIMESTAMPTZ;
        BEGIN
            v_last := chatcore_lock_positions();
            v_at := date_trunc('microseconds', clock_timestamp());
            RETURN QUERY
            WITH decided AS (
                SELECT * FROM chatcore_send_outcomes(p_senders, p_recipient_keys, p_bodies, p_key_hashes)
            ), fresh AS (
                SELECT d.ord, d.sender_id, d.recipient_id AS rid, d.recipient_name AS rname,
                    d.sender_name AS sname, d.body, d.key_hash,
                    v_last + row_number() OVER (ORDER BY d.ord) AS new_id
                FROM decided d WHERE d.outcome = 'send'
            ), stored AS (
                INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low,
                    conversation_high, created_at, body, idempotency_key_hash)
                SELECT f.new_id, f.sender_id, f.rid, LEAST(f.sender_id, f.rid),
                    GREATEST(f.sender_id, f.rid), v_at, f.body, f.key_hash
                FROM fresh f
                RETURNING id
            ), counted AS (
                INSERT INTO chatcore_counts AS c (low_id, high_id, total, last_position)
                SELECT k.low_id, k.high_id, count(*), max(k.pos) FROM (
                    SELECT 0::BIGINT AS low_id, 0::BIGINT AS high_id, NULL::BIGINT AS pos FROM fresh
                    UNION ALL SELECT LEAST(f.sender_id, f.rid), GREATEST(f.sender_id, f.rid), NULL FROM fresh f
                    UNION ALL SELECT f.sender_id, 0, f.new_id FROM fresh f
                    UNION ALL SELECT f.rid, 0, f.new_id FROM fresh f WHERE f.rid <> f.sender_id
                    UNION ALL SELECT f.rid, -1, NULL FROM fresh f WHERE f.rid <> f.sender_id
                ) k
                GROUP BY k.low_id, k.high_id
                ORDER BY k.low_id, k.high_id
                ON CONFLICT (low_id, high_id) DO UPDATE SET total = c.total + EXCLUDED.total,
                    last_position = GREATEST(c.last_position, EXCLUDED.last_position)
                RETURNING c.low_id
            ), boxed AS (
                INSERT INTO chatcore_inbox AS b (user_id, peer_id, last_id, unread, read_up_to)
                SELECT k.uid, k.pid, MAX(k.mid), SUM(k.n), NULL::BIGINT FROM (
                    SELECT f.sender_id AS uid, f.rid AS pid, f.new_id AS mid, 0::BIGINT AS n
                    FROM fresh f
                    UNION ALL SELECT f.rid, f.sender_id, f.new_id, 1 FROM fresh f
                    WHERE f.rid <> f.sender_id
                ) k
                GROUP BY k.uid, k.pid
                ORDER BY k.uid, k.pid
                ON CONFLICT ON CONSTRAINT chatcore_inbox_pkey DO UPDATE
                    SET last_id = GREATEST(b.last_id, EXCLUDED.last_id),
                        unread = b.unread + EXCLUDED.unread
                RETURNING b.user_id
            ), users AS (
                SELECT f.sender_id AS uid FROM fresh f UNION SELECT f.rid FROM fresh f
            )
            SELECT d.ord, d.outcome, d.message_id, d.recipient_id, d.recipient_name, d.sender_name,
                d.created_at, d.body, NULL::BIGINT, NULL::BIGINT
            FROM decided d WHERE d.outcome = 'replay'
            UNION ALL
            SELECT d.ord, d.outcome, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
            FROM decided d WHERE d.outcome NOT IN ('send', 'replay')
            UNION ALL
            SELECT f.ord, 'stored', f.new_id, f.rid, f.rname, f.sname, v_at, NULL, NULL, NULL
            FROM fresh f
            UNION ALL
            SELECT NULL, 'previous', NULL, NULL, NULL, NULL, NULL, NULL, u.uid, COALESCE(p.last_position, 0)
            FROM users u LEFT JOIN chatcore_counts p ON p.low_id = u.uid AND p.high_id = 0;
        END
        $fn$",
        "ALTER FUNCTION chatcore_insert_messages(BIGINT[], TEXT[], TEXT[], BYTEA[]) SET plan_cache_mode = force_generic_plan",
        // The next position for an event of users `p_a` and `p_b` (the same user for notes to
        // self): moves the sequence row to `p_last + 1` and both users' newest positions to it,
        // returning their newest positions before. For `chatcore_mark_read` and
        // `chatcore_change_message`, which hold the lock; their two users have total rows
        // (the event needs a message between them), so a missing row is corruption.
        "CREATE FUNCTION chatcore_take_position(
            p_last BIGINT, p_a BIGINT, p_b BIGINT, OUT a_previous BIGINT, OUT b_previous BIGINT)
        LANGUAGE plpgsql VOLATILE AS $fn$
        DECLARE
            v_rows BIGINT;
        BEGIN
            SELECT c.last_position INTO a_previous FROM chatcore_counts c
                WHERE c.low_id = p_a AND c.high_id = 0;
            SELECT c.last_position INTO b_previous FROM chatcore_counts c
                WHERE c.low_id = p_b AND c.high_id = 0;
            UPDATE chatcore_counts c SET total = p_last + 1 WHERE c.low_id = 0 AND c.high_id = 0;
            UPDATE chatcore_counts c SET last_position = p_last + 1
                WHERE c.low_id IN (p_a, p_b) AND c.high_id = 0;
            GET DIAGNOSTICS v_rows = ROW_COUNT;
            IF v_rows <> 2 - (p_a = p_b)::INT THEN
                RAISE EXCEPTION 'chatcore_counts lacks the total row of a user with messages'
                    USING ERRCODE = 'XX000';
            END IF;
            a_previous := COALESCE(a_previous, 0);
            b_previous := COALESCE(b_previous, 0);
        END
        $fn$",
        // Migration 2's mark function, the lock and the previous positions now through
        // `chatcore_lock_positions` and `chatcore_take_position`.
        "CREATE OR REPLACE FUNCTION chatcore_mark_read(p_reader BIGINT, p_peer_key TEXT, p_up_to BIGINT)
        RETURNS TABLE (
            r_outcome TEXT, r_peer_id BIGINT, r_peer_name TEXT, r_position BIGINT,
            r_read_up_to BIGINT, r_unread BIGINT, r_reader_previous BIGINT, r_peer_previous BIGINT)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        DECLARE
            v_last BIGINT;
            v_peer BIGINT;
            v_peer_name TEXT;
            v_old BIGINT;
            v_unread BIGINT;
            v_passed BIGINT;
            v_reader_prev BIGINT;
            v_peer_prev BIGINT;
        BEGIN
            v_last := chatcore_lock_positions();
            SELECT u.id, u.username INTO v_peer, v_peer_name FROM chatcore_users u
                WHERE u.username_key = p_peer_key;
            IF v_peer IS NULL THEN
                RETURN QUERY SELECT 'no_user'::TEXT, NULL::BIGINT, NULL::TEXT, NULL::BIGINT,
                    NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT;
                RETURN;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM chatcore_messages m WHERE m.id = p_up_to
                    AND m.conversation_low = LEAST(p_reader, v_peer)
                    AND m.conversation_high = GREATEST(p_reader, v_peer)) THEN
                RETURN QUERY SELECT 'no_message'::TEXT, v_peer, v_peer_name, NULL::BIGINT,
                    NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT;
                RETURN;
            END IF;
            SELECT i.read_up_to, i.unread INTO v_old, v_unread FROM chatcore_inbox i
                WHERE i.user_id = p_reader AND i.peer_id = v_peer FOR UPDATE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'chatcore_inbox lacks the row of a conversation with messages'
                    USING ERRCODE = 'XX000';
            END IF;
            IF v_old IS NOT NULL AND v_old >= p_up_to THEN
                RETURN QUERY SELECT 'kept'::TEXT, v_peer, v_peer_name, NULL::BIGINT, v_old,
                    v_unread, NULL::BIGINT, NULL::BIGINT;
                RETURN;
            END IF;
            IF p_reader = v_peer THEN
                v_passed := 0;
            ELSE
                SELECT count(*) INTO v_passed FROM chatcore_messages m
                    WHERE m.conversation_low = LEAST(p_reader, v_peer)
                    AND m.conversation_high = GREATEST(p_reader, v_peer)
                    AND m.id > COALESCE(v_old, 0) AND m.id <= p_up_to AND m.sender_id = v_peer;
            END IF;
            SELECT t.a_previous, t.b_previous INTO v_reader_prev, v_peer_prev
                FROM chatcore_take_position(v_last, p_reader, v_peer) t;
            INSERT INTO chatcore_read_events (position, reader_id, peer_id, up_to)
                VALUES (v_last + 1, p_reader, v_peer, p_up_to);
            UPDATE chatcore_inbox i SET read_up_to = p_up_to, unread = i.unread - v_passed
                WHERE i.user_id = p_reader AND i.peer_id = v_peer;
            IF v_passed > 0 THEN
                UPDATE chatcore_counts c SET total = c.total - v_passed
                    WHERE c.low_id = p_reader AND c.high_id = -1;
            END IF;
            RETURN QUERY SELECT 'moved'::TEXT, v_peer, v_peer_name, v_last + 1, p_up_to,
                v_unread - v_passed, v_reader_prev, v_peer_prev;
        END
        $fn$",
        "ALTER FUNCTION chatcore_mark_read(BIGINT, TEXT, BIGINT) SET plan_cache_mode = force_generic_plan",
        // Migration 6's change function (also run by `chatcore_delete_sent`), the same way.
        "CREATE OR REPLACE FUNCTION chatcore_change_message(
            p_sender BIGINT, p_id BIGINT, p_delete BOOLEAN, p_body TEXT, p_not_before TIMESTAMPTZ)
        RETURNS TABLE (
            r_outcome TEXT, r_recipient_id BIGINT, r_position BIGINT, r_sender_previous BIGINT,
            r_recipient_previous BIGINT, r_id BIGINT, r_sender TEXT, r_recipient TEXT,
            r_created_at TIMESTAMPTZ, r_body TEXT, r_edited_at TIMESTAMPTZ, r_deleted BOOLEAN)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        DECLARE
            v_last BIGINT;
            v_from BIGINT;
            v_to BIGINT;
            v_created TIMESTAMPTZ;
            v_deleted BOOLEAN;
            v_outcome TEXT;
            v_sender_prev BIGINT;
            v_recipient_prev BIGINT;
        BEGIN
            v_last := chatcore_lock_positions();
            SELECT m.sender_id, m.recipient_id, m.created_at, m.deleted
                INTO v_from, v_to, v_created, v_deleted
                FROM chatcore_messages m WHERE m.id = p_id FOR UPDATE;
            IF v_from IS NULL OR (v_from <> p_sender AND v_to <> p_sender) THEN
                RETURN QUERY SELECT 'missing'::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT,
                    NULL::BIGINT, NULL::BIGINT, NULL::TEXT, NULL::TEXT, NULL::TIMESTAMPTZ, NULL::TEXT,
                    NULL::TIMESTAMPTZ, NULL::BOOLEAN;
                RETURN;
            END IF;
            IF v_from <> p_sender THEN
                v_outcome := 'not_sender';
            ELSIF v_deleted THEN
                v_outcome := 'gone';
            ELSIF NOT p_delete AND (
                    EXISTS (SELECT 1 FROM chatcore_blocks b WHERE b.blocker_id = v_from AND b.blocked_id = v_to)
                    OR EXISTS (SELECT 1 FROM chatcore_blocks b WHERE b.blocker_id = v_to AND b.blocked_id = v_from))
                    THEN
                v_outcome := 'blocked';
            ELSIF NOT p_delete AND p_not_before IS NOT NULL AND v_created < p_not_before THEN
                v_outcome := 'window';
            ELSE
                v_outcome := 'changed';
                SELECT t.a_previous, t.b_previous INTO v_sender_prev, v_recipient_prev
                    FROM chatcore_take_position(v_last, v_from, v_to) t;
                IF p_delete THEN
                    UPDATE chatcore_messages m SET body = '', edited_at = NULL, deleted = TRUE
                        WHERE m.id = p_id;
                ELSE
                    UPDATE chatcore_messages m
                        SET body = p_body, edited_at = date_trunc('microseconds', clock_timestamp())
                        WHERE m.id = p_id;
                END IF;
                INSERT INTO chatcore_read_events (position, reader_id, peer_id, up_to, kind)
                    VALUES (v_last + 1, v_from, v_to, p_id, CASE WHEN p_delete THEN 2 ELSE 1 END);
            END IF;
            RETURN QUERY SELECT v_outcome, v_to,
                CASE WHEN v_outcome = 'changed' THEN v_last + 1 END, v_sender_prev, v_recipient_prev,
                m.id, s.username, r.username, m.created_at, m.body, m.edited_at, m.deleted
                FROM chatcore_messages m
                JOIN chatcore_users s ON s.id = m.sender_id JOIN chatcore_users r ON r.id = m.recipient_id
                WHERE m.id = p_id;
        END
        $fn$",
        "ALTER FUNCTION chatcore_change_message(BIGINT, BIGINT, BOOLEAN, TEXT, TIMESTAMPTZ) SET plan_cache_mode = force_generic_plan",
    ],
}, Migration {
    version: 9,
    description: "a send's users looked up by key; room on the counter and inbox pages for their updates",
    // Measured with callgrind on a single-user backend (BENCHMARKS.md, "Issue 21, session 11",
    // `scripts/bench/pg_batch_instructions.sh`): with 500 users, a batch of 6 sends spent 14% of
    // the function's instructions building two hash tables of the whole `chatcore_users` table
    // (the generic plan joins the batch's 10 estimated rows to a table it thinks small by
    // hashing it: two sequential scans of every user per batch, dearer as the table grows until
    // the planner turns), and 13% pruning full pages of the counters, which every send updates.
    // The function's instructions per batch: 6 sends -27%, a lone send -50%.
    steps: &[
        // Migration 8's rules, unchanged, but each send's recipient and sender found by one
        // unique-index probe: `OFFSET 0` keeps each lookup a subquery of its own that the
        // planner cannot turn back into a join (as for the block checks), so it is a
        // parameterised index scan per send whatever the table's size and statistics.
        "CREATE OR REPLACE FUNCTION chatcore_send_outcomes(
            p_senders BIGINT[], p_recipient_keys TEXT[], p_bodies TEXT[], p_key_hashes BYTEA[])
        RETURNS TABLE (
            ord INT, outcome TEXT, sender_id BIGINT, recipient_id BIGINT, recipient_name TEXT,
            sender_name TEXT, message_id BIGINT, created_at TIMESTAMPTZ, body TEXT, key_hash BYTEA)
        LANGUAGE sql STABLE AS $fn$
            SELECT rs.ord, d.outcome, rs.sender_id,
                CASE WHEN e.id IS NULL THEN rs.rid ELSE e.recipient_id END,
                CASE WHEN e.id IS NULL THEN rs.rname ELSE e.rname END,
                CASE WHEN e.id IS NULL THEN rs.sname ELSE e.sname END,
                e.id, e.created_at,
                CASE WHEN e.id IS NULL THEN rs.body ELSE e.body END,
                rs.khash
            FROM (
                SELECT t.ord::INT AS ord, t.sender_id, t.body, t.khash, r.id AS rid, r.username AS rname,
                    s.username AS sname, s.removed_at IS NOT NULL AS sremoved
                FROM unnest(p_senders, p_recipient_keys, p_bodies, p_key_hashes)
                    WITH ORDINALITY AS t(sender_id, rkey, body, khash, ord)
                LEFT JOIN LATERAL (SELECT u.id, u.username FROM chatcore_users u
                    WHERE u.username_key = t.rkey OFFSET 0) r ON TRUE
                LEFT JOIN LATERAL (SELECT u.username, u.removed_at FROM chatcore_users u
                    WHERE u.id = t.sender_id OFFSET 0) s ON TRUE
            ) rs
            LEFT JOIN LATERAL (
                SELECT m.id, m.recipient_id, ru.username AS rname, su.username AS sname, m.created_at, m.body
                FROM chatcore_messages m
                JOIN chatcore_users su ON su.id = m.sender_id
                JOIN chatcore_users ru ON ru.id = m.recipient_id
                WHERE m.sender_id = rs.sender_id AND m.idempotency_key_hash = rs.khash
            ) e ON rs.khash IS NOT NULL AND rs.rid IS NOT NULL AND rs.sname IS NOT NULL AND NOT rs.sremoved
            CROSS JOIN LATERAL (SELECT CASE
                WHEN rs.rid IS NULL OR rs.sname IS NULL THEN 'missing'
                WHEN rs.sremoved THEN 'removed'
                WHEN e.id IS NOT NULL THEN 'replay'
                WHEN rs.rid <> rs.sender_id AND (
                    EXISTS (SELECT 1 FROM chatcore_blocks b
                        WHERE b.blocker_id = rs.sender_id AND b.blocked_id = rs.rid OFFSET 0)
                    OR EXISTS (SELECT 1 FROM chatcore_blocks b
                        WHERE b.blocker_id = rs.rid AND b.blocked_id = rs.sender_id OFFSET 0))
                    THEN 'blocked'
                ELSE 'send' END AS outcome) d
        $fn$",
        // Every send updates 4 counter rows and 2 inbox rows (and the sequence row once per
        // batch). Filled to the brim, a page has no room for the new row versions: each
        // update then prunes the whole page again to find a few bytes. Half-full counter
        // pages (their rows are small and few: a row per user and per conversation) and
        // inbox pages 70% full leave room for many versions between prunes. Pages written
        // from now on; existing ones keep their fill until rewritten (VACUUM FULL, if wanted).
        "ALTER TABLE chatcore_counts SET (fillfactor = 50)",
        "ALTER TABLE chatcore_inbox SET (fillfactor = 70)",
    ],
}, Migration {
    version: 10,
    description: "a batch function for lone sends: a few small statements per send",
    // Counted with callgrind (BENCHMARKS.md, "Issue 21, session 12",
    // `scripts/bench/pg_batch_instructions.sh`): `chatcore_insert_messages` starts about 65
    // plan nodes on every call, 40% of a lone send's 1.0 M instructions, built for sets of
    // sends, while most batches at moderate load hold one. The store calls this function for
    // a batch of one and `chatcore_insert_messages` for more (about equal at two sends, then
    // its start-up is shared by more). Same arguments, same rows returned, same rules and precedence as
    // `chatcore_send_outcomes`, the same writes (a test runs both on the same batches and
    // compares every row of every table).
    steps: &[
        // The lock (inline, as `chatcore_lock_positions`), then per send in the batch's
        // order: one statement that finds both users, any block between them and both users'
        // newest positions; the replay lookup when the send has a key; then for a stored
        // message its row, the counters (the sequence row, the conversation's total, each
        // participant's total and newest position, the recipient's unread total) in one
        // upsert, and both inbox rows in one upsert. Each statement sees the batch's earlier
        // sends (a function's statement takes its snapshot after the previous one's writes).
        // A user's newest position before the batch is returned as a 'previous' row the
        // first time the batch names them, as `chatcore_insert_messages` does. The set-wise
        // function decides every send on the snapshot before the batch, this one after the
        // batch's earlier sends: the same outcomes as long as no sender repeats an
        // idempotency key within a batch, which the writer sees to (it answers a repeat
        // itself, from the first), and the writer calls this one for batches of one.
        "CREATE FUNCTION chatcore_insert_messages_each(
            p_senders BIGINT[], p_recipient_keys TEXT[], p_bodies TEXT[], p_key_hashes BYTEA[])
        RETURNS TABLE (
            ord INT, outcome TEXT, message_id BIGINT, recipient_id BIGINT, recipient_name TEXT,
            sender_name TEXT, created_at TIMESTAMPTZ, body TEXT, user_id BIGINT, previous BIGINT)
        LANGUAGE plpgsql VOLATILE AS $fn$
        #variable_conflict use_column
        DECLARE
            v_last BIGINT;
            v_at TIMESTAMPTZ;
            v_sender BIGINT;
            v_hash BYTEA;
            v_rid BIGINT;
            v_rname TEXT;
            v_sname TEXT;
            v_removed BOOLEAN;
            v_blocked BOOLEAN;
            v_prev_s BIGINT;
            v_prev_r BIGINT;
            v_low BIGINT;
            v_high BIGINT;
            v_seen BIGINT[] := '{}';
            v_replay RECORD;
        BEGIN
            SELECT c.total INTO v_last FROM chatcore_counts c
                WHERE c.low_id = 0 AND c.high_id = 0 FOR UPDATE;
            IF v_last IS NULL THEN
                RAISE EXCEPTION 'the chatcore message id sequence is missing: run Backend::migrate()'
                    USING ERRCODE = 'XX000';
            END IF;
            v_at := date_trunc('microseconds', clock_timestamp());
            FOR i IN 1 .. COALESCE(array_length(p_senders, 1), 0) LOOP
                v_sender := p_senders[i];
                v_hash := p_key_hashes[i];
                SELECT r.id, r.username, s.username, s.removed_at IS NOT NULL,
                    r.id <> s.id AND (
                        EXISTS (SELECT 1 FROM chatcore_blocks b
                            WHERE b.blocker_id = s.id AND b.blocked_id = r.id)
                        OR EXISTS (SELECT 1 FROM chatcore_blocks b
                            WHERE b.blocker_id = r.id AND b.blocked_id = s.id)),
                    ps.last_position, pr.last_position
                    INTO v_rid, v_rname, v_sname, v_removed, v_blocked, v_prev_s, v_prev_r
                    FROM (SELECT 1) AS one
                    LEFT JOIN chatcore_users r ON r.username_key = p_recipient_keys[i]
                    LEFT JOIN chatcore_users s ON s.id = v_sender
                    LEFT JOIN chatcore_counts ps ON ps.low_id = v_sender AND ps.high_id = 0
                    LEFT JOIN chatcore_counts pr ON pr.low_id = r.id AND pr.high_id = 0;
                ord := i;
                message_id := NULL; recipient_id := NULL; recipient_name := NULL;
                sender_name := NULL; created_at := NULL; body := NULL;
                user_id := NULL; previous := NULL;
                IF v_rid IS NULL OR v_sname IS NULL THEN
                    outcome := 'missing';
                    RETURN NEXT;
                    CONTINUE;
                ELSIF v_removed THEN
                    outcome := 'removed';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                IF v_hash IS NOT NULL THEN
                    SELECT m.id, m.recipient_id, ru.username AS rname, su.username AS sname,
                        m.created_at, m.body
                        INTO v_replay
                        FROM chatcore_messages m
                        JOIN chatcore_users su ON su.id = m.sender_id
                        JOIN chatcore_users ru ON ru.id = m.recipient_id
                        WHERE m.sender_id = v_sender AND m.idempotency_key_hash = v_hash;
                    IF FOUND THEN
                        outcome := 'replay';
                        message_id := v_replay.id;
                        recipient_id := v_replay.recipient_id;
                        recipient_name := v_replay.rname;
                        sender_name := v_replay.sname;
                        created_at := v_replay.created_at;
                        body := v_replay.body;
                        RETURN NEXT;
                        CONTINUE;
                    END IF;
                END IF;
                IF v_blocked THEN
                    outcome := 'blocked';
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                outcome := 'previous';
                ord := NULL;
                IF NOT v_sender = ANY (v_seen) THEN
                    user_id := v_sender;
                    previous := COALESCE(v_prev_s, 0);
                    v_seen := v_seen || v_sender;
                    RETURN NEXT;
                END IF;
                IF NOT v_rid = ANY (v_seen) THEN
                    user_id := v_rid;
                    previous := COALESCE(v_prev_r, 0);
                    v_seen := v_seen || v_rid;
                    RETURN NEXT;
                END IF;
                user_id := NULL;
                previous := NULL;
                v_last := v_last + 1;
                v_low := LEAST(v_sender, v_rid);
                v_high := GREATEST(v_sender, v_rid);
                INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low,
                    conversation_high, created_at, body, idempotency_key_hash)
                    VALUES (v_last, v_sender, v_rid, v_low, v_high, v_at, p_bodies[i], v_hash);
                INSERT INTO chatcore_counts AS c (low_id, high_id, total, last_position)
                    SELECT k.low_id, k.high_id, k.total, k.pos FROM (VALUES
                        (0::BIGINT, 0::BIGINT, v_last, NULL::BIGINT, TRUE),
                        (v_low, v_high, 1::BIGINT, NULL::BIGINT, TRUE),
                        (v_sender, 0::BIGINT, 1::BIGINT, v_last, TRUE),
                        (v_rid, 0::BIGINT, 1::BIGINT, v_last, v_rid <> v_sender),
                        (v_rid, -1::BIGINT, 1::BIGINT, NULL::BIGINT, v_rid <> v_sender)
                    ) k(low_id, high_id, total, pos, wanted)
                    WHERE k.wanted
                    ON CONFLICT (low_id, high_id) DO UPDATE
                        SET total = CASE WHEN c.low_id = 0 THEN EXCLUDED.total
                                ELSE c.total + EXCLUDED.total END,
                            last_position = GREATEST(c.last_position, EXCLUDED.last_position);
                INSERT INTO chatcore_inbox AS b (user_id, peer_id, last_id, unread, read_up_to)
                    SELECT k.uid, k.pid, v_last, k.n, NULL::BIGINT FROM (VALUES
                        (v_sender, v_rid, 0::BIGINT, TRUE),
                        (v_rid, v_sender, 1::BIGINT, v_rid <> v_sender)
                    ) k(uid, pid, n, wanted)
                    WHERE k.wanted
                    ON CONFLICT ON CONSTRAINT chatcore_inbox_pkey DO UPDATE
                        SET last_id = GREATEST(b.last_id, EXCLUDED.last_id),
                            unread = b.unread + EXCLUDED.unread;
                ord := i;
                outcome := 'stored';
                message_id := v_last;
                recipient_id := v_rid;
                recipient_name := v_rname;
                sender_name := v_sname;
                created_at := v_at;
                RETURN NEXT;
            END LOOP;
        END
        $fn$",
        "ALTER FUNCTION chatcore_insert_messages_each(BIGINT[], TEXT[], TEXT[], BYTEA[]) SET plan_cache_mode = force_generic_plan",
    ],
}];

/// The newest version this code knows.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies the missing migrations in one transaction, under an advisory lock that other
/// processes migrating the same database wait for (at most `lock_timeout_ms`).
pub(crate) async fn migrate(conn: &mut PgConnection, lock_timeout_ms: u128) -> Result<MigrationReport> {
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| error::map("starting the migration", e))?;
    sqlx::query(&format!("SET LOCAL lock_timeout = {lock_timeout_ms}"))
        .execute(&mut *tx)
        .await
        .map_err(|e| error::map("setting the migration lock timeout", e))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(|e| error::map("waiting for the migration lock", e))?;
    // Quiet: the table usually exists, and the notice would be logged on every start.
    sqlx::query("SET LOCAL client_min_messages = warning")
        .execute(&mut *tx)
        .await
        .map_err(|e| error::map("migrating", e))?;
    sqlx::query(MIGRATIONS_TABLE)
        .execute(&mut *tx)
        .await
        .map_err(|e| error::map("creating chatcore_migrations", e))?;
    let applied = sqlx::query("SELECT version, checksum FROM chatcore_migrations ORDER BY version")
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| error::map("reading chatcore_migrations", e))?;
    let mut previous = 0i64;
    for row in &applied {
        let version: i64 = row
            .try_get("version")
            .map_err(|e| error::map("reading chatcore_migrations", e))?;
        let checksum: Vec<u8> = row
            .try_get("checksum")
            .map_err(|e| error::map("reading chatcore_migrations", e))?;
        let Some(known) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(Error::Corrupt {
                message: format!(
                    "the database has chatcore schema version {version}, newer than this code knows ({})",
                    latest_version()
                ),
                source: None,
            });
        };
        if known.checksum() != checksum {
            return Err(Error::Corrupt {
                message: format!("chatcore migration {version} was changed after it was applied"),
                source: None,
            });
        }
        previous = previous.max(version);
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > previous) {
        for step in migration.steps {
            sqlx::query(step)
                .execute(&mut *tx)
                .await
                .map_err(|e| error::map("applying a chatcore migration", e))?;
        }
        sqlx::query("INSERT INTO chatcore_migrations (version, description, checksum) VALUES ($1, $2, $3)")
            .bind(migration.version)
            .bind(migration.description)
            .bind(migration.checksum())
            .execute(&mut *tx)
            .await
            .map_err(|e| error::map("recording a chatcore migration", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| error::map("committing the migration", e))?;
    // Versions are small positive constants.
    Ok(MigrationReport {
        previous: previous as u32,
        current: latest_version().max(previous) as u32,
        notes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use chatcore::{
        Backend, InboxRequest, MessageChange, NewMessage, Position, Store, User, UserId, Username,
    };
    use sqlx::{ConnectOptions, Row};

    use super::*;
    use crate::testing::TestDatabase;
    use crate::{PostgresConfig, PostgresStore};

    /// Applies and records the migrations up to `version`, as a release that knew no later
    /// one left the database.
    async fn migrate_to(conn: &mut PgConnection, version: i64) {
        sqlx::query(MIGRATIONS_TABLE).execute(&mut *conn).await.unwrap();
        for migration in MIGRATIONS.iter().filter(|m| m.version <= version) {
            for step in migration.steps {
                sqlx::query(step).execute(&mut *conn).await.unwrap();
            }
            sqlx::query(
                "INSERT INTO chatcore_migrations (version, description, checksum) VALUES ($1, $2, $3)",
            )
            .bind(migration.version)
            .bind(migration.description)
            .bind(migration.checksum())
            .execute(&mut *conn)
            .await
            .unwrap();
        }
    }

    /// The batch functions keep one generic plan (migration 3): a later `CREATE OR REPLACE`
    /// of one without the setting would quietly bring back planning on every call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batch_functions_use_generic_plans() {
        let database = TestDatabase::create("chatcore_pg_test_").await.unwrap();
        let store = database.store(PostgresConfig::default()).await.unwrap();
        let mut conn = database.options().unwrap().connect().await.unwrap();
        let settings: Vec<(String, Option<Vec<String>>)> = sqlx::query_as(
            "SELECT proname::TEXT, proconfig FROM pg_proc \
             WHERE proname IN ('chatcore_change_message', 'chatcore_insert_messages', \
             'chatcore_insert_messages_each', 'chatcore_mark_read') \
             ORDER BY proname",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let generic = Some(vec!["plan_cache_mode=force_generic_plan".to_owned()]);
        assert_eq!(
            settings,
            [
                ("chatcore_change_message".to_owned(), generic.clone()),
                ("chatcore_insert_messages".to_owned(), generic.clone()),
                ("chatcore_insert_messages_each".to_owned(), generic.clone()),
                ("chatcore_mark_read".to_owned(), generic)
            ]
        );
        store.close().await.unwrap();
    }

    /// The lone-send function (migration 10) and the set-wise batch function give the same
    /// rows and leave the same tables for the same batches: every outcome (missing sender or
    /// recipient, removed sender, replay, block either way, note to self), the precedence
    /// between them (a replay beats a block and a changed recipient, a missing recipient or
    /// a removed sender beats a replay), users named twice in a batch, an empty batch,
    /// batches of one. A replay answers with the stored message's own time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lone_send_function_matches_the_batch_function() {
        type Batch = (
            Vec<i64>,
            Vec<&'static str>,
            Vec<&'static str>,
            Vec<Option<Vec<u8>>>,
        );
        /// A batch through the function under test, or SQL run between batches.
        enum Step {
            Send(Batch),
            Sql(&'static str),
        }
        let key = |k: u8| Some(vec![k; 32]);
        let one = |sender: i64, recipient: &'static str, body: &'static str, hash: Option<Vec<u8>>| {
            Step::Send((vec![sender], vec![recipient], vec![body], vec![hash]))
        };
        let steps: Vec<Step> = vec![
            Step::Send((
                vec![1, 2, 1, 1, 5, 4, 3, 1, 9, 1, 6],
                vec![
                    "user2", "user1", "user1", "user2", "user1", "user3", "user4", "nobody", "user1",
                    "user2", "user6",
                ],
                vec!["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "self"],
                vec![None, None, None, key(1), None, None, None, None, None, None, None],
            )),
            Step::Send((
                vec![1, 2],
                vec!["user2", "user6"],
                vec!["k", "l"],
                vec![key(1), key(2)],
            )),
            one(6, "user6", "self again", None),
            one(1, "user3", "m", None),
            one(2, "user6", "replayed", key(2)),
            one(4, "user3", "blocked", None),
            Step::Send((vec![], vec![], vec![], vec![])),
            one(1, "user4", "before the block", key(4)),
            Step::Sql(
                "INSERT INTO chatcore_blocks (blocker_id, blocked_id, blocked_key) \
                 SELECT a.id, b.id, b.username_key FROM chatcore_users a, chatcore_users b \
                 WHERE a.username_key = 'user4' AND b.username_key = 'user1'",
            ),
            one(1, "user4", "replay beats the block", key(4)),
            one(1, "nobody", "a missing recipient beats the replay", key(4)),
            one(1, "user2", "the replay keeps its recipient", key(4)),
            one(6, "user6", "a keyed note", key(5)),
            one(6, "user6", "the keyed note again", key(5)),
            Step::Sql("UPDATE chatcore_users SET removed_at = now() WHERE username_key = 'user2'"),
            one(2, "user6", "a removed sender beats the replay", key(2)),
        ];
        let mut seen = Vec::new();
        for function in ["chatcore_insert_messages", "chatcore_insert_messages_each"] {
            let database = TestDatabase::create("chatcore_pg_test_").await.unwrap();
            let store = database.store(PostgresConfig::default()).await.unwrap();
            let mut conn = database.options().unwrap().connect().await.unwrap();
            sqlx::raw_sql(
                "INSERT INTO chatcore_users (username, username_key) \
                   SELECT 'User' || i, 'user' || i FROM generate_series(1, 6) i; \
                 UPDATE chatcore_users SET removed_at = now() WHERE username_key = 'user5'; \
                 INSERT INTO chatcore_blocks (blocker_id, blocked_id, blocked_key) \
                   SELECT a.id, b.id, b.username_key FROM chatcore_users a, chatcore_users b \
                   WHERE a.username_key = 'user3' AND b.username_key = 'user4'",
            )
            .execute(&mut conn)
            .await
            .unwrap();
            let mut out = Vec::new();
            for step in &steps {
                let (senders, keys, bodies, hashes) = match step {
                    Step::Sql(sql) => {
                        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                        continue;
                    }
                    Step::Send(batch) => batch,
                };
                // A replay's time is compared with its message's, stored by an earlier batch
                // (so visible to this statement); other rows only say whether they have one.
                let rows: Vec<String> = sqlx::query_scalar(&format!(
                    "SELECT ROW(r.ord, r.outcome, r.message_id, r.recipient_id, r.recipient_name, \
                       r.sender_name, r.body, r.user_id, r.previous, \
                       CASE WHEN r.outcome = 'replay' THEN r.created_at = \
                         (SELECT m.created_at FROM chatcore_messages m WHERE m.id = r.message_id) \
                       ELSE r.created_at IS NOT NULL END)::TEXT \
                     FROM {function}($1, $2, $3, $4) r ORDER BY r.outcome, r.ord, r.user_id"
                ))
                .bind(senders)
                .bind(keys)
                .bind(bodies)
                .bind(hashes)
                .fetch_all(&mut conn)
                .await
                .unwrap();
                out.push(rows);
            }
            for table in [
                "SELECT ROW(low_id, high_id, total, last_position)::TEXT FROM chatcore_counts \
                 ORDER BY low_id, high_id",
                "SELECT ROW(user_id, peer_id, last_id, unread, read_up_to)::TEXT FROM chatcore_inbox \
                 ORDER BY user_id, peer_id",
                "SELECT ROW(id, sender_id, recipient_id, conversation_low, conversation_high, body, \
                   encode(idempotency_key_hash, 'hex'))::TEXT FROM chatcore_messages ORDER BY id",
                "SELECT count(DISTINCT created_at)::TEXT FROM chatcore_messages",
            ] {
                out.push(sqlx::query_scalar(table).fetch_all(&mut conn).await.unwrap());
            }
            seen.push(out);
            store.close().await.unwrap();
        }
        assert_eq!(seen[0], seen[1]);
        let rows = seen[0].concat();
        for outcome in ["stored", "replay", "missing", "removed", "blocked", "previous"] {
            assert!(
                rows.iter().any(|row| row.contains(&format!(",{outcome},"))),
                "no {outcome} row"
            );
        }
        // The precedence cases, as both functions answered them (the replay of message 10,
        // sent to user 4 before the block, with its own time).
        let last_sends = &seen[0][8..15];
        assert_eq!(
            last_sends[0],
            ["(1,replay,10,4,User4,User1,\"before the block\",,,t)"]
        );
        assert_eq!(last_sends[1], ["(1,missing,,,,,,,,f)"]);
        assert_eq!(
            last_sends[2],
            ["(1,replay,10,4,User4,User1,\"before the block\",,,t)"]
        );
        assert!(last_sends[3].iter().any(|row| row.starts_with("(1,stored,")));
        assert_eq!(
            last_sends[4],
            ["(1,replay,11,6,User6,User6,\"a keyed note\",,,t)"]
        );
        assert_eq!(last_sends[5], ["(1,removed,,,,,,,,f)"]);
    }

    /// A send's recipient and sender are found by index probes in the batch statement's
    /// generic plan (migration 9): with a few hundred users, migration 8's form hashed the
    /// whole `chatcore_users` table, twice per batch. Also the fill factors that leave room
    /// for the counters' and inbox rows' updates.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn send_outcomes_probe_users_by_index() {
        let database = TestDatabase::create("chatcore_pg_test_").await.unwrap();
        let store = database.store(PostgresConfig::default()).await.unwrap();
        let mut conn = database.options().unwrap().connect().await.unwrap();
        sqlx::query(
            "INSERT INTO chatcore_users (username, username_key) \
             SELECT 'user' || i, 'user' || i FROM generate_series(1, 500) i",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        for statement in [
            "ANALYZE chatcore_users",
            "SET plan_cache_mode = force_generic_plan",
            "PREPARE outcomes (BIGINT[], TEXT[], TEXT[], BYTEA[]) AS \
             SELECT * FROM chatcore_send_outcomes($1, $2, $3, $4)",
        ] {
            sqlx::raw_sql(statement).execute(&mut conn).await.unwrap();
        }
        let plan: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE outcomes (NULL, NULL, NULL, NULL)")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let users: Vec<&String> = plan
            .iter()
            .filter(|line| line.contains("on chatcore_users"))
            .collect();
        assert!(
            users
                .iter()
                .all(|line| line.contains("Index Scan using chatcore_users_")),
            "every lookup of chatcore_users should be an index probe: {plan:#?}"
        );
        assert_eq!(
            users.len(),
            4,
            "recipient, sender, and both names of a replay: {plan:#?}"
        );
        let options: Vec<(String, Option<Vec<String>>)> = sqlx::query_as(
            "SELECT relname::TEXT, reloptions FROM pg_class \
             WHERE relname IN ('chatcore_counts', 'chatcore_inbox') ORDER BY relname",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(
            options,
            [
                (
                    "chatcore_counts".to_owned(),
                    Some(vec!["fillfactor=50".to_owned()])
                ),
                (
                    "chatcore_inbox".to_owned(),
                    Some(vec!["fillfactor=70".to_owned()])
                )
            ]
        );
        store.close().await.unwrap();
    }

    /// A database at schema version 7 with every kind of event gets each user's newest
    /// position from migration 8, so the first events after it link to the events before it:
    /// the previous positions they report are the users' newest events, and catching up from
    /// them finds exactly the new event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_8_keeps_the_previous_positions_of_existing_events() {
        let database = TestDatabase::create("chatcore_pg_test_").await.unwrap();
        let mut conn = database.options().unwrap().connect().await.unwrap();
        // Version 7 as the previous release left it.
        migrate_to(&mut conn, 7).await;
        let mut users = Vec::new();
        for name in ["ann", "bob", "cy", "dee"] {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO chatcore_users (username, username_key) VALUES ($1, $1) RETURNING id",
            )
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            users.push(User {
                id: UserId(id),
                username: Username::parse(name).unwrap(),
            });
        }
        let [ann, bob, cy, dee] = &users[..] else {
            unreachable!()
        };
        // Every kind of event through version 7's functions: messages (one a note to self),
        // a read marker, an edit, a deletion; dee has none.
        async fn send(conn: &mut PgConnection, sender: &User, recipient: &str) -> i64 {
            sqlx::query_scalar(
                "SELECT message_id FROM chatcore_insert_messages($1, $2, $3, $4) WHERE outcome = 'stored'",
            )
            .bind(vec![sender.id.0])
            .bind(vec![recipient])
            .bind(vec!["hi"])
            .bind(vec![None::<Vec<u8>>])
            .fetch_one(conn)
            .await
            .unwrap()
        }
        let m1 = send(&mut conn, ann, "bob").await;
        send(&mut conn, bob, "ann").await;
        send(&mut conn, ann, "ann").await;
        let m4 = send(&mut conn, cy, "ann").await;
        let marked: i64 = sqlx::query_scalar("SELECT r_position FROM chatcore_mark_read($1, 'ann', $2)")
            .bind(bob.id.0)
            .bind(m1)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let edited: i64 =
            sqlx::query_scalar("SELECT r_position FROM chatcore_change_message($1, $2, FALSE, 'hey', NULL)")
                .bind(cy.id.0)
                .bind(m4)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        let deleted: i64 =
            sqlx::query_scalar("SELECT r_position FROM chatcore_change_message($1, $2, TRUE, NULL, NULL)")
                .bind(ann.id.0)
                .bind(m1)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        let note = send(&mut conn, bob, "bob").await;
        assert!(m4 < marked && marked < edited && edited < deleted && deleted < note);

        let store =
            PostgresStore::connect_with(database.options().unwrap(), PostgresConfig::default()).unwrap();
        let report = store.migrate().await.unwrap();
        assert_eq!((report.previous, report.current), (7, latest_version() as u32));
        // ann's newest event is the deletion of her message to bob, bob's his note, cy's the
        // edit of his message to ann.
        let mut latest = Vec::new();
        for user in &users {
            latest.push(store.latest_position(user.id).await.unwrap().0);
        }
        assert_eq!(latest, [deleted, note, edited, 0]);

        // The first events after the migration report them as their previous positions.
        let sent = store
            .insert_message(NewMessage {
                sender: ann.clone(),
                recipient: cy.username.clone(),
                body: "after".to_owned(),
                idempotency_key: None,
            })
            .await
            .unwrap();
        assert_eq!(
            (sent.sender_previous.0, sent.recipient_previous.0),
            (deleted, edited)
        );
        // Catching up from a previous position finds the new message and nothing else.
        for (user, previous) in [(ann, deleted), (cy, edited)] {
            let events = store.events_after(user.id, Position(previous), 10).await.unwrap();
            let positions: Vec<i64> = events.iter().map(|e| e.position().0).collect();
            assert_eq!(positions, [sent.message.id.0], "{}", user.username.as_str());
        }
        let first = store
            .insert_message(NewMessage {
                sender: dee.clone(),
                recipient: bob.username.clone(),
                body: "first".to_owned(),
                idempotency_key: None,
            })
            .await
            .unwrap();
        assert_eq!((first.sender_previous.0, first.recipient_previous.0), (0, note));
        let read = store.mark_read(cy, &ann.username, sent.message.id).await.unwrap();
        let moved = read.moved.expect("the marker moved");
        assert_eq!(
            (moved.reader_previous.0, moved.peer_previous.0),
            (sent.message.id.0, sent.message.id.0)
        );
        let changed = store
            .change_message(
                ann.id,
                sent.message.id,
                &MessageChange::Edit {
                    body: "edited".to_owned(),
                    not_before: None,
                },
            )
            .await
            .unwrap();
        let event = changed.event.expect("an edit event");
        let mark = moved.marker.position.0;
        assert_eq!(
            (event.sender_previous.0, event.recipient_previous.0),
            (mark, mark)
        );
        for (user, position) in [
            (ann, event.position.0),
            (bob, first.message.id.0),
            (cy, event.position.0),
        ] {
            assert_eq!(store.latest_position(user.id).await.unwrap().0, position);
        }
        store.close().await.unwrap();
    }

    /// A database at schema version 1 with messages gets its inbox filled by migration 2:
    /// every received message unread (no markers yet), notes to self never, totals the sums,
    /// last activity the newest message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_2_fills_the_inbox_of_existing_messages() {
        let database = TestDatabase::create("chatcore_pg_test_").await.unwrap();
        let mut conn = database.options().unwrap().connect().await.unwrap();
        // Version 1 as an older release left it.
        migrate_to(&mut conn, 1).await;
        let mut ids = Vec::new();
        for name in ["ann", "bob", "cy"] {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO chatcore_users (username, username_key) VALUES ($1, $1) RETURNING id",
            )
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            ids.push(id);
        }
        let (ann, bob, cy) = (ids[0], ids[1], ids[2]);
        // ann→bob, bob→ann, ann→bob, ann→ann (note), cy→ann, in that id order.
        let sends = [
            (ann, "bob"),
            (bob, "ann"),
            (ann, "bob"),
            (ann, "ann"),
            (cy, "ann"),
        ];
        for (sender, recipient) in sends {
            sqlx::query("SELECT * FROM chatcore_insert_messages($1, $2, $3, $4)")
                .bind(vec![sender])
                .bind(vec![recipient])
                .bind(vec!["hi"])
                .bind(vec![None::<Vec<u8>>])
                .fetch_all(&mut conn)
                .await
                .unwrap();
        }
        let version_1_ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM chatcore_messages ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(version_1_ids.len(), 5);
        let [_, _, m3, m4, m5] = version_1_ids[..] else {
            unreachable!()
        };

        let store =
            PostgresStore::connect_with(database.options().unwrap(), PostgresConfig::default()).unwrap();
        let report = store.migrate().await.unwrap();
        assert_eq!((report.previous, report.current), (1, latest_version() as u32));
        // The host's feed lists the messages stored before, in id order.
        let feed: Vec<i64> = store
            .feed_after(chatcore::Position::START, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.position().0)
            .collect();
        assert_eq!(feed, version_1_ids);

        let rows = sqlx::query("SELECT user_id, peer_id, last_id, unread, read_up_to FROM chatcore_inbox ORDER BY user_id, peer_id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let inbox: Vec<(i64, i64, i64, i64, Option<i64>)> = rows
            .iter()
            .map(|r| {
                (
                    r.get("user_id"),
                    r.get("peer_id"),
                    r.get("last_id"),
                    r.get("unread"),
                    r.get("read_up_to"),
                )
            })
            .collect();
        assert_eq!(
            inbox,
            [
                (ann, ann, m4, 0, None),
                (ann, bob, m3, 1, None),
                (ann, cy, m5, 1, None),
                (bob, ann, m3, 2, None),
                (cy, ann, m5, 0, None),
            ]
        );

        let ann_inbox = store
            .inbox(
                UserId(ann),
                &InboxRequest {
                    before: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(ann_inbox.unread_total, 2);
        let peers: Vec<_> = ann_inbox
            .conversations
            .iter()
            .map(|c| (c.peer.as_str(), c.unread))
            .collect();
        assert_eq!(peers, [("cy", 1), ("ann", 0), ("bob", 1)]);
        let bob_inbox = store
            .inbox(
                UserId(bob),
                &InboxRequest {
                    before: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(bob_inbox.unread_total, 2);
        let cy_inbox = store
            .inbox(
                UserId(cy),
                &InboxRequest {
                    before: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(cy_inbox.unread_total, 0);
        assert_eq!(cy_inbox.conversations.len(), 1);
        assert_eq!(cy_inbox.conversations[0].last_message.id.0, m5);
        store.close().await.unwrap();
    }
}
