//! The read queries and the decoding of their rows. Page queries name their index with
//! `FORCE INDEX`: on a large table the optimizer otherwise reads the index as `ref` on the
//! equality columns and filters the id cursor row by row (measured: 145 ms for a page in the
//! middle of a 100,000-message conversation), instead of seeking to the cursor as a range.
//! Each query's comment names the index it
//! runs on; `tests::plans_use_indexes` checks them with `EXPLAIN`.

use chrono::NaiveDateTime;
use sqlx::Row;
use sqlx::mysql::MySqlRow;

use chatcore::{
    BoxError, ChangedMessage, Conversation, Message, MessageId, Position, ReadMarker, StoredEvent, User,
    UserId, Username,
};

/// The columns every message query returns, with sender and recipient names joined by
/// primary key (`eq_ref`).
macro_rules! message_columns {
    () => {
        "m.id AS id, s.username AS sender, r.username AS recipient, m.created_at AS created_at, m.body AS body, \
         m.edited_at AS edited_at, m.deleted AS deleted"
    };
}

macro_rules! message_joins {
    () => {
        " JOIN chatcore_users s ON s.id = m.sender_id JOIN chatcore_users r ON r.id = m.recipient_id"
    };
}

/// A user by name without regard to case (the name's [`Username::key`]):
/// `chatcore_users_username_key`, const.
pub(crate) const FIND_USER: &str = "SELECT id, username FROM chatcore_users WHERE username_key = ?";

/// A user and password hash by key: `chatcore_users_username_key`, const.
pub(crate) const CREDENTIALS: &str =
    "SELECT id, username, password_hash FROM chatcore_users WHERE username_key = ?";

/// The directory: a range of `chatcore_users_username_key` in byte order (the prefix's key as
/// `LIKE 'p%'`, the cursor's key as `>`), stopping after `LIMIT` rows. The cursor is the key
/// of `after`; when a user is named exactly `after`, their stored key is the cursor (a user
/// kept apart by migration 3 has a key of its own, just above their name's key, and paging
/// past them must not return them again). That second bound is a filter on the range (the
/// optimizer does not open a range on a subquery's value). The index is forced: it does not
/// cover `username`, and with every row in range the optimizer would rather scan the table
/// and sort it than look up the `LIMIT` rows.
/// Binds: pattern, after's key, after (name or NULL), after's key, excluded id, limit.
pub(crate) const LIST_USERS: &str = "SELECT id, username FROM chatcore_users \
     FORCE INDEX (chatcore_users_username_key) \
     WHERE username_key LIKE ? ESCAPE '!' AND username_key > ? \
       AND username_key > IFNULL((SELECT a.username_key FROM chatcore_users a WHERE a.username = ?), ?) \
       AND id <> ? AND removed_at IS NULL ORDER BY username_key LIMIT ?";

/// Up to `?` (third) messages of sender `?` after id `?` that still have a body, oldest
/// first: a range of `chatcore_messages_sender`.
pub(crate) const SENT_TO_DELETE: &str = "SELECT id FROM chatcore_messages FORCE INDEX (chatcore_messages_sender) \
     WHERE sender_id = ? AND id > ? AND deleted = 0 ORDER BY id LIMIT ?";

/// A new password hash (second) for the account keyed `?` (first), unless removed.
pub(crate) const SET_PASSWORD_HASH: &str =
    "UPDATE chatcore_users SET password_hash = ? WHERE username_key = ? AND removed_at IS NULL";

/// A session for a user who exists and was not removed, the user row read with a shared lock
/// (a concurrent removal either waits for this session and then deletes it, or comes first
/// and no session is made). Binds: token hash, expiry, user.
pub(crate) const CREATE_SESSION: &str = "INSERT INTO chatcore_sessions (token_hash, user_id, expires_at) \
     SELECT ?, u.id, ? FROM chatcore_users u WHERE u.id = ? AND u.removed_at IS NULL LOCK IN SHARE MODE \
     ON DUPLICATE KEY UPDATE user_id = VALUES(user_id), expires_at = VALUES(expires_at)";

/// A user's blocks by the blocked user's key after a key, at most `LIMIT`: a range of
/// `chatcore_blocks_by_key`, the names by primary key. Binds: blocker, after's key (empty for
/// all), limit.
pub(crate) const BLOCKED_USERS: &str = "SELECT u.id AS id, u.username AS username \
     FROM chatcore_blocks b FORCE INDEX (chatcore_blocks_by_key) JOIN chatcore_users u ON u.id = b.blocked_id \
     WHERE b.blocker_id = ? AND b.blocked_key > ? ORDER BY b.blocked_key LIMIT ?";

/// The id of the user keyed `?` when the caller shares a conversation with them (their inbox
/// row, by primary key), they are not the caller and no block stands between the two (the
/// pair's two block rows, by primary key, must be missing). Binds: caller, caller, caller,
/// key, caller.
pub(crate) const REACHABLE_PEER: &str = "SELECT u.id AS id FROM chatcore_users u \
     JOIN chatcore_inbox i ON i.user_id = ? AND i.peer_id = u.id \
     LEFT JOIN chatcore_blocks b FORCE INDEX (PRIMARY) ON b.blocker_id = ? AND b.blocked_id = u.id \
     LEFT JOIN chatcore_blocks c FORCE INDEX (PRIMARY) ON c.blocker_id = u.id AND c.blocked_id = ? \
     WHERE u.username_key = ? AND u.id <> ? AND b.blocker_id IS NULL AND c.blocker_id IS NULL";

/// The start of the query of which listed users share a conversation with a user: their
/// inbox rows by primary key (`user_id = ? AND peer_id IN (...)`, the list appended), one
/// point range per listed id. The index is forced: for a long list the optimizer would rather
/// read all of the user's entries in the activity index, which grows with their
/// conversations.
pub(crate) const CONVERSATION_PEERS: &str =
    "SELECT peer_id FROM chatcore_inbox FORCE INDEX (PRIMARY) WHERE user_id = ";

/// A live session's user and expiry: the session by primary key, the user by primary key.
pub(crate) const SESSION_USER: &str = "SELECT u.id AS id, u.username AS username, t.expires_at AS expires_at \
     FROM chatcore_sessions t JOIN chatcore_users u ON u.id = t.user_id \
     WHERE t.token_hash = ? AND t.expires_at > ?";

/// Sessions expired at a time: a range of `chatcore_sessions_expires`.
pub(crate) const DELETE_EXPIRED_SESSIONS: &str = "DELETE FROM chatcore_sessions WHERE expires_at <= ?";

/// A user's newest position, message or other event (0 for none): the largest entry of
/// `chatcore_messages_sender`, `chatcore_messages_recipient`, `chatcore_read_events_reader`
/// and `chatcore_read_events_peer` for the user, each one index dive (MIN/MAX optimization:
/// "Select tables optimized away"), whatever the user's history.
/// Binds: user, user, user, user.
pub(crate) const LATEST_POSITION: &str = "SELECT GREATEST(\
     IFNULL((SELECT MAX(id) FROM chatcore_messages WHERE sender_id = ?), 0), \
     IFNULL((SELECT MAX(id) FROM chatcore_messages WHERE recipient_id = ?), 0), \
     IFNULL((SELECT MAX(position) FROM chatcore_read_events WHERE reader_id = ?), 0), \
     IFNULL((SELECT MAX(position) FROM chatcore_read_events WHERE peer_id = ?), 0)) AS latest";

/// The columns of a read event in [`EVENTS_AFTER`], in the places of a message's: the reader's
/// name as `sender`, the peer's as `recipient`. An edit or deletion (`e.kind` 1 or 2, kind 2
/// or 3 here) is kept in the same table with the sender as reader and the message as
/// `up_to`: its message, as it is now, fills the message's columns.
macro_rules! read_event_columns {
    () => {
        "1 + e.kind AS kind, e.position AS id, rd.username AS sender, pe.username AS recipient, \
         cm.created_at AS created_at, cm.body AS body, cm.edited_at AS edited_at, cm.deleted AS deleted, \
         e.up_to AS up_to"
    };
}

macro_rules! read_event_joins {
    () => {
        " JOIN chatcore_users rd ON rd.id = e.reader_id JOIN chatcore_users pe ON pe.id = e.peer_id \
         LEFT JOIN chatcore_messages cm ON cm.id = e.up_to AND e.kind <> 0"
    };
}

/// Catch-up over every durable event of a user after a position, oldest first (edits and
/// deletions ride in `chatcore_read_events`, see [`read_event_columns`]): one statement,
/// so one consistent view (positions are committed in order, so a view holding a position
/// holds every lower one). The merge of four forward ranges, each at most `limit` rows:
/// `chatcore_messages_sender`, `chatcore_messages_recipient` (a note to oneself only in the
/// first), `chatcore_read_events_reader` and `chatcore_read_events_peer` (a note to oneself's
/// marker only in the first). `kind` is 0 for a message, 1 for a read event, 2 for an edit,
/// 3 for a deletion.
/// Binds: user, after, limit, user, user, after, limit, user, after, limit, user, user, after,
/// limit, limit.
pub(crate) const EVENTS_AFTER: &str = concat!(
    "(SELECT 0 AS kind, ",
    message_columns!(),
    ", NULL AS up_to FROM chatcore_messages m FORCE INDEX (chatcore_messages_sender)",
    message_joins!(),
    " WHERE m.sender_id = ? AND m.id > ? ORDER BY m.id LIMIT ?) \
     UNION ALL \
     (SELECT 0, ",
    message_columns!(),
    ", NULL FROM chatcore_messages m FORCE INDEX (chatcore_messages_recipient)",
    message_joins!(),
    " WHERE m.recipient_id = ? AND m.sender_id <> ? AND m.id > ? ORDER BY m.id LIMIT ?) \
     UNION ALL \
     (SELECT ",
    read_event_columns!(),
    " FROM chatcore_read_events e FORCE INDEX (chatcore_read_events_reader)",
    read_event_joins!(),
    " WHERE e.reader_id = ? AND e.position > ? ORDER BY e.position LIMIT ?) \
     UNION ALL \
     (SELECT ",
    read_event_columns!(),
    " FROM chatcore_read_events e FORCE INDEX (chatcore_read_events_peer)",
    read_event_joins!(),
    " WHERE e.peer_id = ? AND e.reader_id <> ? AND e.position > ? ORDER BY e.position LIMIT ?) \
     ORDER BY id LIMIT ?"
);

/// Every user's events after a position, oldest first (the host's feed): one statement, so
/// one consistent view (positions are committed in order across all users, so a view
/// holding a position holds every lower one), merging two forward ranges of primary keys,
/// `chatcore_messages` by id and `chatcore_read_events` by position, each at most `limit`
/// rows. Columns as [`EVENTS_AFTER`]. Binds: after, limit, after, limit, limit.
pub(crate) const FEED_AFTER: &str = concat!(
    "(SELECT 0 AS kind, ",
    message_columns!(),
    ", NULL AS up_to FROM chatcore_messages m FORCE INDEX (PRIMARY)",
    message_joins!(),
    " WHERE m.id > ? ORDER BY m.id LIMIT ?) \
     UNION ALL \
     (SELECT ",
    read_event_columns!(),
    " FROM chatcore_read_events e FORCE INDEX (PRIMARY)",
    read_event_joins!(),
    " WHERE e.position > ? ORDER BY e.position LIMIT ?) \
     ORDER BY id LIMIT ?"
);

/// A feed consumer's checkpoint by name: the primary key of `chatcore_checkpoints`.
pub(crate) const LOAD_CHECKPOINT: &str = "SELECT position FROM chatcore_checkpoints WHERE name = ?";

/// Saves a checkpoint, replacing the one saved before. Binds: name, position.
pub(crate) const SAVE_CHECKPOINT: &str = "INSERT INTO chatcore_checkpoints (name, position) VALUES (?, ?) \
     ON DUPLICATE KEY UPDATE position = VALUES(position)";

/// A page of a user's inbox and their unread total in one round trip (one view): the total
/// by `chatcore_counts` primary key `(user, -1)`, the page as a backward range of
/// `chatcore_inbox_activity (user_id, last_id)` from the cursor, stopping after `limit` rows,
/// each joined by primary key to the peer, the conversation's newest message (and its names)
/// and the peer's own inbox row (their marker). The cost is the page's, whatever the number
/// of the user's conversations.
/// Binds: user, user, before, limit.
pub(crate) const INBOX_PAGE: &str = concat!(
    "SELECT t.total AS unread_total, p.* \
     FROM (SELECT (SELECT c.total FROM chatcore_counts c WHERE c.low_id = ? AND c.high_id = -1) AS total) t \
     LEFT JOIN (\
       SELECT pu.username AS peer, i.unread AS unread, i.read_up_to AS read_up_to, \
         pi.read_up_to AS peer_read_up_to, ",
    message_columns!(),
    " FROM chatcore_inbox i FORCE INDEX (chatcore_inbox_activity) \
       JOIN chatcore_users pu ON pu.id = i.peer_id \
       JOIN chatcore_messages m ON m.id = i.last_id",
    message_joins!(),
    " LEFT JOIN chatcore_inbox pi ON pi.user_id = i.peer_id AND pi.peer_id = i.user_id \
       WHERE i.user_id = ? AND i.last_id < ? ORDER BY i.last_id DESC LIMIT ?\
     ) p ON TRUE"
);

/// The peer's messages a read marker passes over, counted in the transaction of
/// `mark_read` from its session variables: a range of `chatcore_messages_conversation`
/// between the old marker (exclusive) and the new one (inclusive), empty when the marker does
/// not move. Costs the messages passed over, never the conversation's length.
pub(crate) const MARK_READ_PASSED: &str = "SELECT COUNT(*) FROM chatcore_messages \
     FORCE INDEX (chatcore_messages_conversation) \
     WHERE conversation_low = LEAST(@chatcore_reader, @chatcore_peer) \
       AND conversation_high = GREATEST(@chatcore_reader, @chatcore_peer) \
       AND id > IFNULL(@chatcore_old, 0) AND id <= IF(@chatcore_moves, @chatcore_up_to, 0) \
       AND sender_id = @chatcore_peer";

/// One message if the viewer is a participant: primary key, const.
pub(crate) const MESSAGE_FOR: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM chatcore_messages m",
    message_joins!(),
    " WHERE m.id = ? AND (m.sender_id = ? OR m.recipient_id = ?)"
);

/// Messages looked up by idempotency key (the caller appends the `WHERE`):
/// `chatcore_messages_idempotency`.
pub(crate) const MESSAGE_WITH_KEY_SELECT: &str = concat!(
    "SELECT ",
    message_columns!(),
    ", m.sender_id AS sender_id, m.recipient_id AS recipient_id, m.idempotency_key_hash AS idempotency_key_hash",
    " FROM chatcore_messages m",
    message_joins!()
);

/// A conversation page and its total in one round trip. The first branch resolves the other
/// user (unique key, const) and reads the total (`chatcore_counts` primary key); the second
/// reads the page, newest first, as a backward range of `chatcore_messages_conversation`. The
/// other user's id comes from scalar subqueries, which the optimizer folds to constants: with
/// a join instead, it sorts the whole conversation (filesort) before taking the page.
/// Binds: viewer, viewer, other key, viewer, other key, viewer, other key, before, limit,
/// offset.
pub(crate) const CONVERSATION_PAGE: &str = concat!(
    "(SELECT o.id AS other_id, c.total AS total, NULL AS id, NULL AS sender, NULL AS recipient, \
      NULL AS created_at, NULL AS body, NULL AS edited_at, NULL AS deleted \
      FROM chatcore_users o \
      LEFT JOIN chatcore_counts c ON c.low_id = LEAST(?, o.id) AND c.high_id = GREATEST(?, o.id) \
      WHERE o.username_key = ?) \
     UNION ALL \
     (SELECT NULL, NULL, ",
    message_columns!(),
    " FROM chatcore_messages m FORCE INDEX (chatcore_messages_conversation)",
    message_joins!(),
    " WHERE m.conversation_low = LEAST(?, (SELECT id FROM chatcore_users WHERE username_key = ?)) \
        AND m.conversation_high = GREATEST(?, (SELECT id FROM chatcore_users WHERE username_key = ?)) \
        AND m.id < ? ORDER BY m.id DESC LIMIT ? OFFSET ?)"
);

/// A user's messages, newest first, and their total, in one round trip: the total by
/// `chatcore_counts` primary key, the page as the merge of two backward ranges, one of
/// `chatcore_messages_sender` and one of `chatcore_messages_recipient` (a note to oneself only
/// in the first), each at most `offset + limit` rows.
/// Binds: user, user, before, window, user, user, before, window, limit, offset.
pub(crate) const USER_MESSAGES: &str = concat!(
    "SELECT t.total AS total, p.id AS id, p.sender AS sender, p.recipient AS recipient, \
       p.created_at AS created_at, p.body AS body, p.edited_at AS edited_at, p.deleted AS deleted \
     FROM (SELECT (SELECT c.total FROM chatcore_counts c WHERE c.low_id = ? AND c.high_id = 0) AS total) t \
     LEFT JOIN (\
       (SELECT ",
    message_columns!(),
    " FROM chatcore_messages m FORCE INDEX (chatcore_messages_sender)",
    message_joins!(),
    " WHERE m.sender_id = ? AND m.id < ? ORDER BY m.id DESC LIMIT ?) \
       UNION ALL \
       (SELECT ",
    message_columns!(),
    " FROM chatcore_messages m FORCE INDEX (chatcore_messages_recipient)",
    message_joins!(),
    " WHERE m.recipient_id = ? AND m.sender_id <> ? AND m.id < ? ORDER BY m.id DESC LIMIT ?) \
       ORDER BY id DESC LIMIT ? OFFSET ?\
     ) p ON TRUE"
);

/// Catch-up: a user's messages after an id, oldest first, as the merge of two forward ranges
/// of `chatcore_messages_sender` and `chatcore_messages_recipient`.
/// Binds: user, after, limit, user, user, after, limit, limit.
pub(crate) const MESSAGES_AFTER: &str = concat!(
    "(SELECT ",
    message_columns!(),
    " FROM chatcore_messages m FORCE INDEX (chatcore_messages_sender)",
    message_joins!(),
    " WHERE m.sender_id = ? AND m.id > ? ORDER BY m.id LIMIT ?) \
     UNION ALL \
     (SELECT ",
    message_columns!(),
    " FROM chatcore_messages m FORCE INDEX (chatcore_messages_recipient)",
    message_joins!(),
    " WHERE m.recipient_id = ? AND m.sender_id <> ? AND m.id > ? ORDER BY m.id LIMIT ?) \
     ORDER BY id LIMIT ?"
);

/// A name as stored: trusted, not checked again (it may predate today's rules).
fn username(raw: String) -> Username {
    Username::from_stored(raw)
}

fn get<'r, T>(row: &'r MySqlRow, column: &str) -> Result<T, BoxError>
where
    T: sqlx::Decode<'r, sqlx::MySql> + sqlx::Type<sqlx::MySql>,
{
    row.try_get(column).map_err(|e| Box::new(e) as BoxError)
}

/// A text column. Columns in a `_bin` collation carry MySQL's BINARY flag, which sqlx 0.8
/// takes for `VARBINARY` and refuses to decode as `String`; the bytes are checked as UTF-8 by
/// the decoder itself, so the type check is skipped on purpose.
pub(crate) fn text(row: &MySqlRow, column: &str) -> Result<String, BoxError> {
    row.try_get_unchecked::<String, _>(column)
        .map_err(|e| Box::new(e) as BoxError)
}

/// A nullable text column, see [`text`].
pub(crate) fn text_opt(row: &MySqlRow, column: &str) -> Result<Option<String>, BoxError> {
    row.try_get_unchecked::<Option<String>, _>(column)
        .map_err(|e| Box::new(e) as BoxError)
}

/// A user from columns `id` and `username`.
pub(crate) fn user(row: &MySqlRow) -> Result<User, BoxError> {
    Ok(User {
        id: UserId(get(row, "id")?),
        username: username(text(row, "username")?),
    })
}

/// A message from the [`message_columns`] columns.
pub(crate) fn message(row: &MySqlRow) -> Result<Message, BoxError> {
    message_with_id(row, get(row, "id")?)
}

/// A message with id `id` from the other [`message_columns`] columns.
fn message_with_id(row: &MySqlRow, id: i64) -> Result<Message, BoxError> {
    let created_at: NaiveDateTime = get(row, "created_at")?;
    let edited_at: Option<NaiveDateTime> = get(row, "edited_at")?;
    let deleted: i64 = row
        .try_get_unchecked("deleted")
        .map_err(|e| Box::new(e) as BoxError)?;
    Ok(Message {
        id: MessageId(id),
        sender: username(text(row, "sender")?),
        recipient: username(text(row, "recipient")?),
        created_at: created_at.and_utc(),
        body: text(row, "body")?,
        edited: edited_at.map(|at| at.and_utc()),
        deleted: deleted != 0,
    })
}

/// A durable event from the columns of [`EVENTS_AFTER`].
pub(crate) fn event(row: &MySqlRow) -> Result<StoredEvent, BoxError> {
    let kind: i64 = row
        .try_get_unchecked("kind")
        .map_err(|e| Box::new(e) as BoxError)?;
    if kind == 0 {
        return Ok(StoredEvent::Message(message(row)?));
    }
    let up_to: Option<i64> = row
        .try_get_unchecked("up_to")
        .map_err(|e| Box::new(e) as BoxError)?;
    if kind == 2 || kind == 3 {
        let changed = ChangedMessage {
            position: Position(get(row, "id")?),
            message: message_with_id(row, up_to.ok_or("a change event without its message")?)?,
        };
        return Ok(if kind == 2 {
            StoredEvent::Edit(changed)
        } else {
            StoredEvent::Delete(changed)
        });
    }
    Ok(StoredEvent::Read(ReadMarker {
        position: Position(get(row, "id")?),
        reader: username(text(row, "sender")?),
        peer: username(text(row, "recipient")?),
        up_to: MessageId(up_to.ok_or("a read event without its message")?),
    }))
}

/// A conversation from a row of [`INBOX_PAGE`]; `None` for the row of a user with an empty
/// page (the total alone).
pub(crate) fn conversation(row: &MySqlRow) -> Result<Option<Conversation>, BoxError> {
    let Some(peer) = text_opt(row, "peer")? else {
        return Ok(None);
    };
    let unread: i64 = get(row, "unread")?;
    let read_up_to: Option<i64> = get(row, "read_up_to")?;
    let peer_read_up_to: Option<i64> = get(row, "peer_read_up_to")?;
    Ok(Some(Conversation {
        peer: username(peer),
        last_message: message(row)?,
        unread: u64::try_from(unread)?,
        read_up_to: read_up_to.map(MessageId),
        peer_read_up_to: peer_read_up_to.map(MessageId),
    }))
}

/// The key of `prefix` ([`Username::key_of`]) as a `LIKE` pattern with `!` as the escape
/// character, matching literally.
pub(crate) fn like_prefix(prefix: &str) -> String {
    let prefix = Username::key_of(prefix);
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '!' | '%' | '_') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_prefix_escapes_metacharacters() {
        assert_eq!(like_prefix("a_b%c!"), "a!_b!%c!!%");
        assert_eq!(like_prefix(""), "%");
        assert_eq!(like_prefix("ÅSA_"), "åsa!_%", "the prefix's key");
    }
}
