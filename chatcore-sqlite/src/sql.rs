//! Every statement the store runs, in one place, so the query-plan test can check them all.
//!
//! The joins to `chatcore_users` are `CROSS JOIN`s on purpose: in SQLite that fixes the loop
//! order, so the message index drives the query and names are two rowid lookups per row.

/// Columns of a [`chatcore::Message`], in the order `reader::message_from_row` reads them.
macro_rules! message_select {
    () => {
        "SELECT m.id, s.username, r.username, m.created_at, m.body, m.edited_at, m.deleted FROM "
    };
}

// ---- writer ----

/// `?1` the name as chosen, `?2` its `Username::key` (unique), `?3` the password hash.
pub(crate) const INSERT_USER: &str =
    "INSERT INTO chatcore_users (username, username_key, password_hash) VALUES (?1, ?2, ?3)";

/// Whether the user `?1` exists (a row) and was removed (its value).
pub(crate) const USER_EXISTS: &str = "SELECT removed_at IS NOT NULL FROM chatcore_users WHERE id = ?1";

/// Marks user `?1` removed at `?2` (µs), keeping the first time, and forgets its password.
pub(crate) const REMOVE_USER: &str =
    "UPDATE chatcore_users SET removed_at = coalesce(removed_at, ?2), password_hash = NULL WHERE id = ?1";

/// Every session of user `?1`: one range of `chatcore_sessions_user`.
pub(crate) const DELETE_USER_SESSIONS: &str = "DELETE FROM chatcore_sessions WHERE user_id = ?1";

/// `?2` the new hash of the account keyed `?1`, unless it was removed; answers its id and name.
pub(crate) const SET_PASSWORD_HASH: &str = "UPDATE chatcore_users SET password_hash = ?2
     WHERE username_key = ?1 AND removed_at IS NULL RETURNING id, username";

/// The name of user `?1` as chosen.
pub(crate) const USERNAME_OF: &str = "SELECT username FROM chatcore_users WHERE id = ?1";

pub(crate) const UPSERT_SESSION: &str = "INSERT INTO chatcore_sessions (token_hash, user_id, expires_at)
     VALUES (?1, ?2, ?3)
     ON CONFLICT (token_hash) DO UPDATE SET user_id = excluded.user_id, expires_at = excluded.expires_at";

pub(crate) const DELETE_SESSION: &str = "DELETE FROM chatcore_sessions WHERE token_hash = ?1";

/// Every session expired at `?1`: one range of the expiry index.
pub(crate) const DELETE_EXPIRED_SESSIONS: &str = "DELETE FROM chatcore_sessions WHERE expires_at <= ?1";

/// `?1` the id (the writer's next position), `?9` the conversation's previous message
/// (`NULL` for its first), `?10` this message's number in the conversation (1, 2, ...: see
/// `chain`), `?11` its number among its sender's messages of the conversation.
pub(crate) const INSERT_MESSAGE: &str = "INSERT INTO chatcore_messages
     (id, sender_id, recipient_id, conv_low, conv_high, created_at, body, idempotency_key, prev_id, seq,
      sender_seq)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// The last position handed out, messages and read events alike: where the writer's
/// sequence resumes (two lookups at the ends of rowid b-trees).
pub(crate) const LAST_POSITION: &str = "SELECT max(
         coalesce((SELECT max(id) FROM chatcore_messages), 0),
         coalesce((SELECT max(position) FROM chatcore_reads), 0),
         coalesce((SELECT max(position) FROM chatcore_changes), 0))";

/// A message to change, with its participants' ids (columns 7 and 8) for the checks and the
/// event: `change_message`.
pub(crate) const MESSAGE_TO_CHANGE: &str = concat!(
    "SELECT m.id, s.username, r.username, m.created_at, m.body, m.edited_at, m.deleted,
         m.sender_id, m.recipient_id FROM ",
    "chatcore_messages AS m
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE m.id = ?1"
);

/// An edit: `?1` the message, `?2` the new body, `?3` when (µs).
pub(crate) const EDIT_MESSAGE: &str = "UPDATE chatcore_messages SET body = ?2, edited_at = ?3 WHERE id = ?1";

/// A deletion: the body is overwritten (with `secure_delete`, the old text is zeroed on its
/// page too) and the row stays as the tombstone.
pub(crate) const DELETE_MESSAGE: &str =
    "UPDATE chatcore_messages SET body = '', edited_at = NULL, deleted = 1 WHERE id = ?1";

/// An edit or deletion event: `?1` position, `?2` message, `?3` sender, `?4` recipient,
/// `?5` 1 for a deletion.
pub(crate) const INSERT_CHANGE: &str =
    "INSERT INTO chatcore_changes (position, message_id, sender_id, recipient_id, deleted)
     VALUES (?1, ?2, ?3, ?4, ?5)";

/// A message's conversation and place in it, for `mark_read`: `conv_low`, `conv_high`,
/// `sender_id`, `seq`, `sender_seq`.
pub(crate) const MESSAGE_PLACE: &str =
    "SELECT conv_low, conv_high, sender_id, seq, sender_seq FROM chatcore_messages WHERE id = ?1";

/// A user's read marker on their conversation with a peer: the newest message read and how
/// many of the peer's messages of the conversation lie at or below it.
pub(crate) const READ_MARKER: &str =
    "SELECT up_to, peer_seen FROM chatcore_read_markers WHERE user_id = ?1 AND peer_id = ?2";

/// `?1` reader, `?2` peer, `?3` the newest message read, `?4` how many of the peer's messages
/// of the conversation lie at or below it (replacing the marker before: the writer checked it
/// is older).
pub(crate) const SAVE_READ_MARKER: &str =
    "INSERT INTO chatcore_read_markers (user_id, peer_id, up_to, peer_seen)
     VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (user_id, peer_id) DO UPDATE SET up_to = excluded.up_to, peer_seen = excluded.peer_seen";

/// A read event: `?1` position, `?2` reader, `?3` peer, `?4` the newest message read.
pub(crate) const INSERT_READ: &str =
    "INSERT INTO chatcore_reads (position, reader_id, peer_id, up_to) VALUES (?1, ?2, ?3, ?4)";

/// Every `chain::MARK_EVERY`th message of a conversation.
pub(crate) const INSERT_MARK: &str =
    "INSERT INTO chatcore_conversation_marks (conv_low, conv_high, seq, id) VALUES (?1, ?2, ?3, ?4)";

/// Adds `?3` messages up to id `?4` to a conversation, `?5` of them sent by `conv_low`.
pub(crate) const ADD_CONVERSATION_COUNT: &str =
    "INSERT INTO chatcore_conversations (conv_low, conv_high, message_count, last_id, low_count)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (conv_low, conv_high) DO UPDATE SET
         message_count = message_count + excluded.message_count,
         last_id = max(last_id, excluded.last_id),
         low_count = low_count + excluded.low_count";

/// What the writer needs to link and number a conversation's next message: its count, newest
/// id and how many of its messages `conv_low` sent.
pub(crate) const CONVERSATION_TAIL_COUNTS: &str = "SELECT message_count, last_id, low_count
     FROM chatcore_conversations WHERE conv_low = ?1 AND conv_high = ?2";

/// Adds `?2` messages to a user, moves their newest position up to `?3` and adds `?4` to
/// their unread total (negative when a marker moved).
pub(crate) const ADD_USER_COUNT: &str =
    "INSERT INTO chatcore_user_counts (user_id, message_count, last_id, unread_total) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (user_id) DO UPDATE SET
         message_count = message_count + excluded.message_count,
         last_id = max(last_id, excluded.last_id),
         unread_total = unread_total + excluded.unread_total";

/// Whether a block stands between `?1` and `?2`, either way: two primary-key lookups.
pub(crate) const BLOCK_BETWEEN: &str =
    "SELECT 1 FROM chatcore_blocks WHERE blocker_id = ?1 AND blocked_id = ?2
     UNION ALL SELECT 1 FROM chatcore_blocks WHERE blocker_id = ?2 AND blocked_id = ?1 LIMIT 1";

/// Adds `?2` (1 or -1) to the blocks user `?1` takes part in.
pub(crate) const ADD_BLOCK_COUNT: &str =
    "INSERT INTO chatcore_user_counts (user_id, message_count, last_id, unread_total, block_count)
     VALUES (?1, 0, 0, 0, ?2)
     ON CONFLICT (user_id) DO UPDATE SET block_count = block_count + excluded.block_count";

/// What the writer needs of a user the first time a batch meets them: their newest position
/// and how many blocks they take part in.
pub(crate) const USER_TAIL: &str = "SELECT last_id, block_count FROM chatcore_user_counts WHERE user_id = ?1";

/// `?1` blocks `?2`, whose key is `?3` (again: nothing changes).
pub(crate) const INSERT_BLOCK: &str =
    "INSERT OR IGNORE INTO chatcore_blocks (blocker_id, blocked_id, blocked_key) VALUES (?1, ?2, ?3)";

/// `?1` no longer blocks `?2`.
pub(crate) const DELETE_BLOCK: &str = "DELETE FROM chatcore_blocks WHERE blocker_id = ?1 AND blocked_id = ?2";

// ---- both ----

/// A user by `Username::key`: their id and their name as chosen.
pub(crate) const USER_BY_KEY: &str = "SELECT id, username FROM chatcore_users WHERE username_key = ?1";

/// The sender's earlier message under an idempotency key, and (column 7) its recipient's id.
pub(crate) const IDEMPOTENT_MESSAGE: &str = concat!(
    "SELECT m.id, s.username, r.username, m.created_at, m.body, m.edited_at, m.deleted, m.recipient_id FROM ",
    "chatcore_messages AS m
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE m.sender_id = ?1 AND m.idempotency_key = ?2"
);

// ---- readers ----

pub(crate) const CREDENTIALS: &str =
    "SELECT id, username, password_hash FROM chatcore_users WHERE username_key = ?1";

pub(crate) const SESSION_USER: &str = "SELECT u.id, u.username, t.expires_at FROM chatcore_sessions AS t
     CROSS JOIN chatcore_users AS u ON u.id = t.user_id
     WHERE t.token_hash = ?1 AND t.expires_at > ?2";

pub(crate) const MESSAGE_FOR: &str = concat!(
    message_select!(),
    "chatcore_messages AS m
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE m.id = ?1 AND (m.sender_id = ?2 OR m.recipient_id = ?2)"
);

/// A conversation's message count and newest id (the head of its chain); the writer reads
/// it too, to link a conversation's first message of a batch.
pub(crate) const CONVERSATION_TAIL: &str =
    "SELECT message_count, last_id FROM chatcore_conversations WHERE conv_low = ?1 AND conv_high = ?2";

/// One step along a conversation's chain: the message before `?1` and `?1`'s number.
pub(crate) const CHAIN_LINK: &str = "SELECT prev_id, seq FROM chatcore_messages WHERE id = ?1";

/// The conversation's first mark at or above id `?3`.
pub(crate) const MARK_FROM_ID: &str = "SELECT id FROM chatcore_conversation_marks
     WHERE conv_low = ?1 AND conv_high = ?2 AND id >= ?3 ORDER BY id LIMIT 1";

/// The conversation's first mark at or above number `?3`.
pub(crate) const MARK_FROM_SEQ: &str = "SELECT id FROM chatcore_conversation_marks
     WHERE conv_low = ?1 AND conv_high = ?2 AND seq >= ?3 ORDER BY seq LIMIT 1";

pub(crate) const USER_COUNT: &str = "SELECT message_count FROM chatcore_user_counts WHERE user_id = ?1";

/// A user's newest position, message or read event (no row: none yet): `latest_position`,
/// and the previous position of the user's first event in a batch, which the writer reads too.
pub(crate) const USER_LAST_ID: &str = "SELECT last_id FROM chatcore_user_counts WHERE user_id = ?1";

/// The newest message id a snapshot holds (`0`: none): the writer commits ids in order, so
/// the snapshot holds every message up to it and none above (`activity.rs`). One seek to the
/// end of the table.
pub(crate) const NEWEST_MESSAGE: &str = "SELECT coalesce(max(id), 0) FROM chatcore_messages";

/// A message, and (column 7) its conversation's previous message, so a page can follow the
/// chain as it reads.
pub(crate) const MESSAGE_BY_ID: &str = concat!(
    "SELECT m.id, s.username, r.username, m.created_at, m.body, m.edited_at, m.deleted, m.prev_id FROM ",
    "chatcore_messages AS m
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE m.id = ?1"
);

/// A user's unread total over all their conversations (a counter, never a sum).
pub(crate) const USER_UNREAD_TOTAL: &str = "SELECT unread_total FROM chatcore_user_counts WHERE user_id = ?1";

/// The conversations of `?1`'s inbox page, one per newest message id in the JSON array `?2`
/// (from the activity order; the peer is the message's other side). Columns: the peer's name,
/// unread, the user's marker, the peer's marker (the user's own for notes to self), then the
/// newest message as `reader::message_from_row` reads it from column 4 (its sender and
/// recipient are the peer and the user, so their names come from two rows read once per
/// conversation). Unread is the peer's messages up to the newest (its `sender_seq`, or the
/// other side of its `seq`) less those the user's marker covers; never any in a note to self.
/// One statement for the page: a statement per conversation cost about 4 µs each.
pub(crate) const INBOX_ROWS: &str = "SELECT p.username,
         CASE WHEN p.id = ?1 THEN 0
              ELSE CASE WHEN m.sender_id = p.id THEN m.sender_seq ELSE m.seq - m.sender_seq END
                   - coalesce(mine.peer_seen, 0) END,
         mine.up_to, theirs.up_to,
         m.id,
         CASE WHEN m.sender_id = p.id THEN p.username ELSE u.username END,
         CASE WHEN m.recipient_id = p.id THEN p.username ELSE u.username END,
         m.created_at, m.body, m.edited_at, m.deleted
     FROM json_each(?2) AS j
     CROSS JOIN chatcore_messages AS m ON m.id = j.value
     CROSS JOIN chatcore_users AS p
         ON p.id = CASE WHEN m.sender_id = ?1 THEN m.recipient_id ELSE m.sender_id END
     CROSS JOIN chatcore_users AS u ON u.id = ?1
     LEFT JOIN chatcore_read_markers AS mine ON mine.user_id = ?1 AND mine.peer_id = p.id
     LEFT JOIN chatcore_read_markers AS theirs ON theirs.user_id = p.id AND theirs.peer_id = ?1";

/// `?1`'s read events as the reader after position `?2`, oldest first, at most `?3`: position,
/// reader's name, peer's name, up_to.
pub(crate) const READS_AS_READER: &str = "SELECT e.position, u.username, p.username, e.up_to
     FROM chatcore_reads AS e
     CROSS JOIN chatcore_users AS u ON u.id = e.reader_id
     CROSS JOIN chatcore_users AS p ON p.id = e.peer_id
     WHERE e.reader_id = ?1 AND e.position > ?2
     ORDER BY e.position LIMIT ?3";

/// The same as the peer, notes to self left out (they are the reader's): the condition on
/// `reader_id` is the partial index's, so the index applies.
pub(crate) const READS_AS_PEER: &str = "SELECT e.position, u.username, p.username, e.up_to
     FROM chatcore_reads AS e
     CROSS JOIN chatcore_users AS u ON u.id = e.reader_id
     CROSS JOIN chatcore_users AS p ON p.id = e.peer_id
     WHERE e.peer_id = ?1 AND e.peer_id <> e.reader_id AND e.position > ?2
     ORDER BY e.position LIMIT ?3";

/// Every user's messages after position `?1`, oldest first, at most `?2`: the host's feed, a
/// forward range of the primary key.
pub(crate) const FEED_MESSAGES: &str = concat!(
    message_select!(),
    "chatcore_messages AS m
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE m.id > ?1 ORDER BY m.id LIMIT ?2"
);

/// Every read event after position `?1`, oldest first, at most `?2` (columns as
/// [`READS_AS_READER`]): the feed's other forward range of a primary key.
pub(crate) const FEED_READS: &str = "SELECT e.position, u.username, p.username, e.up_to
     FROM chatcore_reads AS e
     CROSS JOIN chatcore_users AS u ON u.id = e.reader_id
     CROSS JOIN chatcore_users AS p ON p.id = e.peer_id
     WHERE e.position > ?1 ORDER BY e.position LIMIT ?2";

/// `?1`'s edits and deletions as the sender after position `?2`, oldest first, at most `?3`:
/// position, 1 for a deletion, then the message as it is now (columns of
/// `reader::message_at` from 2).
pub(crate) const CHANGES_AS_SENDER: &str = "SELECT c.position, c.deleted,
         m.id, s.username, r.username, m.created_at, m.body, m.edited_at, m.deleted
     FROM chatcore_changes AS c
     CROSS JOIN chatcore_messages AS m ON m.id = c.message_id
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE c.sender_id = ?1 AND c.position > ?2
     ORDER BY c.position LIMIT ?3";

/// The same as the recipient, notes to self left out (they are the sender's): the condition
/// on `sender_id` is the partial index's.
pub(crate) const CHANGES_AS_RECIPIENT: &str = "SELECT c.position, c.deleted,
         m.id, s.username, r.username, m.created_at, m.body, m.edited_at, m.deleted
     FROM chatcore_changes AS c
     CROSS JOIN chatcore_messages AS m ON m.id = c.message_id
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE c.recipient_id = ?1 AND c.recipient_id <> c.sender_id AND c.position > ?2
     ORDER BY c.position LIMIT ?3";

/// Every edit and deletion after position `?1`, oldest first, at most `?2` (columns as
/// [`CHANGES_AS_SENDER`]): the feed's third forward range of a primary key.
pub(crate) const FEED_CHANGES: &str = "SELECT c.position, c.deleted,
         m.id, s.username, r.username, m.created_at, m.body, m.edited_at, m.deleted
     FROM chatcore_changes AS c
     CROSS JOIN chatcore_messages AS m ON m.id = c.message_id
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE c.position > ?1 ORDER BY c.position LIMIT ?2";

/// A feed consumer's checkpoint by name.
/// The users `?1` blocks whose key sorts after `?2` (`''` for all), by key, at most `?3`: one
/// range of `chatcore_blocks_by_key`, and the names by rowid.
pub(crate) const BLOCKED_USERS: &str = "SELECT u.id, u.username FROM chatcore_blocks AS b
     CROSS JOIN chatcore_users AS u ON u.id = b.blocked_id
     WHERE b.blocker_id = ?1 AND b.blocked_key > ?2 ORDER BY b.blocked_key LIMIT ?3";

/// The id of the user keyed `?2` when `?1` shares a conversation with them, they are not `?1`
/// and no block stands between the two: the key, the conversation's counter row and two
/// block lookups, all by index.
pub(crate) const REACHABLE_PEER: &str = "SELECT u.id FROM chatcore_users AS u
     CROSS JOIN chatcore_conversations AS c ON c.conv_low = min(?1, u.id) AND c.conv_high = max(?1, u.id)
     WHERE u.username_key = ?2 AND u.id <> ?1 AND c.message_count > 0
       AND NOT EXISTS (SELECT 1 FROM chatcore_blocks AS b WHERE b.blocker_id = ?1 AND b.blocked_id = u.id)
       AND NOT EXISTS (SELECT 1 FROM chatcore_blocks AS b WHERE b.blocker_id = u.id AND b.blocked_id = ?1)";

/// Whether the conversation (`?1` the lower id, `?2` the higher) holds a message.
pub(crate) const CONVERSATION_EXISTS: &str =
    "SELECT 1 FROM chatcore_conversations WHERE conv_low = ?1 AND conv_high = ?2 AND message_count > 0";

pub(crate) const LOAD_CHECKPOINT: &str = "SELECT position FROM chatcore_checkpoints WHERE name = ?1";

/// `?1` the checkpoint's name, `?2` its position (replacing the one saved before).
pub(crate) const SAVE_CHECKPOINT: &str = "INSERT INTO chatcore_checkpoints (name, position) VALUES (?1, ?2)
     ON CONFLICT (name) DO UPDATE SET position = excluded.position";

/// The directory, by `Username::key`: `?1` lower bound, `?2` upper bound (the prefix key's
/// successor), `?3` excluded id (`NULL` for none), `?4` limit. Four shapes, by which bounds
/// apply.
pub(crate) fn list_users(lower_inclusive: bool, has_upper: bool) -> &'static str {
    match (lower_inclusive, has_upper) {
        (true, true) => {
            "SELECT id, username FROM chatcore_users
             WHERE username_key >= ?1 AND username_key < ?2 AND id IS NOT ?3 AND removed_at IS NULL
             ORDER BY username_key LIMIT ?4"
        }
        (true, false) => {
            "SELECT id, username FROM chatcore_users
             WHERE username_key >= ?1 AND id IS NOT ?3 AND removed_at IS NULL
             ORDER BY username_key LIMIT ?4"
        }
        (false, true) => {
            "SELECT id, username FROM chatcore_users
             WHERE username_key > ?1 AND username_key < ?2 AND id IS NOT ?3 AND removed_at IS NULL
             ORDER BY username_key LIMIT ?4"
        }
        (false, false) => {
            "SELECT id, username FROM chatcore_users
             WHERE username_key > ?1 AND id IS NOT ?3 AND removed_at IS NULL
             ORDER BY username_key LIMIT ?4"
        }
    }
}

/// The smallest string greater than every string starting with `prefix`, if there is one:
/// the prefix with its last character incremented (dropping trailing `char::MAX`s). UTF-8
/// byte order is code point order, so this bounds the prefix range in SQLite's BINARY
/// collation.
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor_bounds_the_prefix() {
        assert_eq!(prefix_successor("user1").as_deref(), Some("user2"));
        assert_eq!(prefix_successor("a_").as_deref(), Some("a`"));
        assert_eq!(prefix_successor("").as_deref(), None);
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        let upper = prefix_successor("ab").unwrap();
        for s in ["ab", "ab\u{10FFFF}", "abzzz", "ab\u{FFFF}x"] {
            assert!(s >= "ab" && s < upper.as_str(), "{s:?}");
        }
        assert!("ac" >= upper.as_str());
    }
}

/// `EXPLAIN QUERY PLAN` of every read: each is a search of the intended index, never a scan
/// of a table and never a sort, so its cost does not grow with the table.
#[cfg(test)]
mod query_plans {
    use rusqlite::Connection;

    use super::*;

    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // Parameters stay unbound (NULL): the plan is chosen at prepare time.
        let mut rows = stmt.raw_query();
        let mut details = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            details.push(row.get::<_, String>(3).unwrap());
        }
        details
    }

    fn assert_plan(conn: &Connection, sql: &str, expected: &[&str]) {
        let details = plan(conn, sql);
        for detail in &details {
            // The one row of a SELECT without FROM (around scalar subqueries) is no table.
            // A scan of a virtual table is a scan of the list passed in (`json_each`).
            assert!(
                !detail.starts_with("SCAN")
                    || detail == "SCAN CONSTANT ROW"
                    || detail.contains("VIRTUAL TABLE"),
                "a scan in {details:?} for {sql}"
            );
            assert!(!detail.contains("TEMP B-TREE"), "a sort in {details:?} for {sql}");
        }
        for want in expected {
            assert!(
                details.iter().any(|d| d.contains(want)),
                "expected {want:?} in {details:?} for {sql}"
            );
        }
    }

    fn check_all(conn: &Connection) {
        const BY_ROWID: &str = "USING INTEGER PRIMARY KEY (rowid=?)";
        assert_plan(
            conn,
            CHAIN_LINK,
            &[&format!("SEARCH chatcore_messages {BY_ROWID}")],
        );
        assert_plan(
            conn,
            CONVERSATION_TAIL,
            &["SEARCH chatcore_conversations USING PRIMARY KEY (conv_low=? AND conv_high=?)"],
        );
        assert_plan(
            conn,
            MARK_FROM_ID,
            &[
                "SEARCH chatcore_conversation_marks USING COVERING INDEX chatcore_conversation_marks_id (conv_low=? AND conv_high=? AND id>?)",
            ],
        );
        assert_plan(
            conn,
            MARK_FROM_SEQ,
            &["SEARCH chatcore_conversation_marks USING PRIMARY KEY (conv_low=? AND conv_high=? AND seq>?)"],
        );
        for sql in [USER_COUNT, USER_LAST_ID, USER_TAIL] {
            assert_plan(conn, sql, &[&format!("SEARCH chatcore_user_counts {BY_ROWID}")]);
        }
        assert_plan(conn, NEWEST_MESSAGE, &["SEARCH chatcore_messages"]);
        assert_plan(
            conn,
            MESSAGE_BY_ID,
            &[
                &format!("SEARCH m {BY_ROWID}"),
                &format!("SEARCH s {BY_ROWID}"),
                &format!("SEARCH r {BY_ROWID}"),
            ],
        );
        assert_plan(conn, MESSAGE_FOR, &[&format!("SEARCH m {BY_ROWID}")]);
        assert_plan(
            conn,
            IDEMPOTENT_MESSAGE,
            &["SEARCH m USING INDEX chatcore_messages_idempotency (sender_id=? AND idempotency_key=?)"],
        );
        for sql in [USER_BY_KEY, CREDENTIALS] {
            assert_plan(
                conn,
                sql,
                &["SEARCH chatcore_users USING INDEX chatcore_users_key (username_key=?)"],
            );
        }
        assert_plan(conn, SESSION_USER, &["SEARCH t USING PRIMARY KEY (token_hash=?)"]);
        for (inclusive, upper, range) in [
            (true, true, "(username_key>? AND username_key<?)"),
            (true, false, "(username_key>?)"),
            (false, true, "(username_key>? AND username_key<?)"),
            (false, false, "(username_key>?)"),
        ] {
            assert_plan(
                conn,
                list_users(inclusive, upper),
                &[&format!(
                    "SEARCH chatcore_users USING INDEX chatcore_users_key {range}"
                )],
            );
        }
        assert_plan(conn, USER_EXISTS, &[&format!("SEARCH chatcore_users {BY_ROWID}")]);
        assert_plan(
            conn,
            CONVERSATION_TAIL_COUNTS,
            &["SEARCH chatcore_conversations USING PRIMARY KEY (conv_low=? AND conv_high=?)"],
        );
        assert_plan(
            conn,
            LAST_POSITION,
            &[
                "SEARCH chatcore_messages",
                "SEARCH chatcore_reads",
                "SEARCH chatcore_changes",
            ],
        );
        assert_plan(conn, MESSAGE_TO_CHANGE, &[&format!("SEARCH m {BY_ROWID}")]);
        assert_plan(
            conn,
            CHANGES_AS_SENDER,
            &[
                "SEARCH c USING INDEX chatcore_changes_sender (sender_id=? AND rowid>?)",
                &format!("SEARCH m {BY_ROWID}"),
            ],
        );
        assert_plan(
            conn,
            CHANGES_AS_RECIPIENT,
            &["SEARCH c USING INDEX chatcore_changes_recipient (recipient_id=? AND rowid>?)"],
        );
        assert_plan(
            conn,
            FEED_CHANGES,
            &[
                "SEARCH c USING INTEGER PRIMARY KEY (rowid>?)",
                &format!("SEARCH m {BY_ROWID}"),
            ],
        );
        assert_plan(
            conn,
            MESSAGE_PLACE,
            &[&format!("SEARCH chatcore_messages {BY_ROWID}")],
        );
        assert_plan(
            conn,
            READ_MARKER,
            &["SEARCH chatcore_read_markers USING PRIMARY KEY (user_id=? AND peer_id=?)"],
        );
        assert_plan(
            conn,
            USER_UNREAD_TOTAL,
            &[&format!("SEARCH chatcore_user_counts {BY_ROWID}")],
        );
        assert_plan(
            conn,
            INBOX_ROWS,
            &[
                "SCAN j VIRTUAL TABLE",
                &format!("SEARCH m {BY_ROWID}"),
                &format!("SEARCH p {BY_ROWID}"),
                &format!("SEARCH u {BY_ROWID}"),
                "SEARCH mine USING PRIMARY KEY (user_id=? AND peer_id=?)",
                "SEARCH theirs USING PRIMARY KEY (user_id=? AND peer_id=?)",
            ],
        );
        assert_plan(
            conn,
            READS_AS_READER,
            &[
                "SEARCH e USING INDEX chatcore_reads_reader (reader_id=? AND rowid>?)",
                &format!("SEARCH u {BY_ROWID}"),
                &format!("SEARCH p {BY_ROWID}"),
            ],
        );
        assert_plan(
            conn,
            READS_AS_PEER,
            &["SEARCH e USING INDEX chatcore_reads_peer (peer_id=? AND rowid>?)"],
        );
        assert_plan(
            conn,
            FEED_MESSAGES,
            &[
                "SEARCH m USING INTEGER PRIMARY KEY (rowid>?)",
                &format!("SEARCH s {BY_ROWID}"),
                &format!("SEARCH r {BY_ROWID}"),
            ],
        );
        assert_plan(
            conn,
            FEED_READS,
            &[
                "SEARCH e USING INTEGER PRIMARY KEY (rowid>?)",
                &format!("SEARCH u {BY_ROWID}"),
                &format!("SEARCH p {BY_ROWID}"),
            ],
        );
        assert_plan(
            conn,
            BLOCK_BETWEEN,
            &["SEARCH chatcore_blocks USING PRIMARY KEY (blocker_id=? AND blocked_id=?)"],
        );
        assert_plan(
            conn,
            DELETE_BLOCK,
            &["SEARCH chatcore_blocks USING PRIMARY KEY (blocker_id=? AND blocked_id=?)"],
        );
        assert_plan(
            conn,
            BLOCKED_USERS,
            &[
                "SEARCH b USING COVERING INDEX chatcore_blocks_by_key (blocker_id=? AND blocked_key>?)",
                &format!("SEARCH u {BY_ROWID}"),
            ],
        );
        assert_plan(
            conn,
            REACHABLE_PEER,
            &[
                "SEARCH u USING COVERING INDEX chatcore_users_key (username_key=?)",
                "SEARCH c USING PRIMARY KEY (conv_low=? AND conv_high=?)",
                "SEARCH b USING PRIMARY KEY (blocker_id=? AND blocked_id=?)",
            ],
        );
        assert_plan(
            conn,
            CONVERSATION_EXISTS,
            &["SEARCH chatcore_conversations USING PRIMARY KEY (conv_low=? AND conv_high=?)"],
        );
        assert_plan(
            conn,
            LOAD_CHECKPOINT,
            &["SEARCH chatcore_checkpoints USING PRIMARY KEY (name=?)"],
        );
        assert_plan(
            conn,
            DELETE_SESSION,
            &["SEARCH chatcore_sessions USING PRIMARY KEY (token_hash=?)"],
        );
        assert_plan(
            conn,
            DELETE_EXPIRED_SESSIONS,
            &["SEARCH chatcore_sessions USING COVERING INDEX chatcore_sessions_expires (expires_at<?)"],
        );
    }

    fn populated() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn, 0).unwrap();
        let tx = conn.transaction().unwrap();
        for i in 1..=50 {
            let name = format!("user{i}");
            tx.execute(INSERT_USER, rusqlite::params![name, name, None::<String>])
                .unwrap();
        }
        let mut linker = crate::chain::testing::Linker::default();
        for id in 1..=2000i64 {
            let (from, to) = (id % 50 + 1, (id * 7) % 50 + 1);
            let key = (id % 3 == 0).then(|| format!("k{id}"));
            let (low, high) = (from.min(to), from.max(to));
            linker.insert(&tx, from, to, key.as_deref());
            tx.execute(ADD_CONVERSATION_COUNT, [low, high, 1, id, i64::from(from == low)])
                .unwrap();
            tx.execute(ADD_USER_COUNT, [from, 1, id, 0]).unwrap();
            if to != from {
                tx.execute(ADD_USER_COUNT, [to, 1, id, 1]).unwrap();
            }
        }
        // Read events, a tenth of them on notes to oneself.
        for position in 2001..=2500i64 {
            let (reader, peer) = (position % 50 + 1, (position * 7) % 50 + 1);
            let peer = if position % 10 == 0 { reader } else { peer };
            tx.execute(INSERT_READ, [position, reader, peer, position - 2000])
                .unwrap();
            tx.execute(ADD_USER_COUNT, [reader, 0, position, 0]).unwrap();
            tx.execute(SAVE_READ_MARKER, [reader, peer, position - 2000, 1])
                .unwrap();
        }
        // Each user blocks a few others.
        for blocker in 1..=50i64 {
            for step in [3, 11, 29] {
                let blocked = (blocker + step - 1) % 50 + 1;
                tx.execute(
                    INSERT_BLOCK,
                    rusqlite::params![blocker, blocked, format!("user{blocked}")],
                )
                .unwrap();
            }
        }
        tx.commit().unwrap();
        conn
    }

    #[test]
    fn every_read_is_an_index_search_without_statistics() {
        check_all(&populated());
    }

    #[test]
    fn every_read_is_an_index_search_after_analyze() {
        let conn = populated();
        conn.execute_batch("ANALYZE").unwrap();
        check_all(&conn);
    }

    #[test]
    fn every_read_is_an_index_search_on_an_empty_database() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn, 0).unwrap();
        check_all(&conn);
    }
}
