//! The read queries (each with the index it reads) and the decoding of their rows.

use sqlx::Row;
use sqlx::postgres::PgRow;

use chatcore::{
    BoxError, ChangedMessage, Conversation, Message, MessageId, Position, ReadMarker, StoredEvent, User,
    UserId, Username,
};

/// A user by name without regard to case: `chatcore_users_username_key`.
pub(crate) const FIND_USER: &str = "SELECT id, username FROM chatcore_users WHERE username_key = $1";

/// A user and password hash by key: `chatcore_users_username_key`.
pub(crate) const CREDENTIALS: &str =
    "SELECT id, username, password_hash FROM chatcore_users WHERE username_key = $1";

/// The directory: a range of `chatcore_users_username_key` (collation "C", so `LIKE 'p%'`
/// is a range and the order is byte order) after the cursor's key, stopping after `LIMIT`.
/// Binds: pattern, after's key ('' for none), excluded id (0 for none), limit.
pub(crate) const LIST_USERS: &str = "SELECT id, username FROM chatcore_users \
     WHERE username_key LIKE $1 ESCAPE '!' AND username_key > $2 AND id <> $3 AND removed_at IS NULL \
     ORDER BY username_key LIMIT $4";

/// A user's blocks by the blocked user's key after a key ('' for all), at most `LIMIT`: a
/// range of `chatcore_blocks_by_key`, the names by primary key. Binds: blocker, after's key,
/// limit.
pub(crate) const BLOCKED_USERS: &str = "SELECT u.id AS id, u.username AS username \
     FROM chatcore_blocks b JOIN chatcore_users u ON u.id = b.blocked_id \
     WHERE b.blocker_id = $1 AND b.blocked_key > $2 ORDER BY b.blocked_key LIMIT $3";

/// A block started or ended (`chatcore_set_block`, schema version 6). Binds: blocker, the
/// blocked user's key, on.
pub(crate) const SET_BLOCK: &str = "SELECT r_outcome, r_id AS id, r_username AS username \
     FROM chatcore_set_block($1, $2, $3)";

/// The id of the user keyed `$2` when `$1` shares a conversation with them (`$1`'s inbox row,
/// by primary key), they are not `$1` and no block stands between the two (two primary-key
/// lookups).
pub(crate) const REACHABLE_PEER: &str = "SELECT u.id FROM chatcore_users u \
     JOIN chatcore_inbox i ON i.user_id = $1 AND i.peer_id = u.id \
     WHERE u.username_key = $2 AND u.id <> $1 \
       AND NOT EXISTS (SELECT 1 FROM chatcore_blocks b WHERE b.blocker_id = $1 AND b.blocked_id = u.id) \
       AND NOT EXISTS (SELECT 1 FROM chatcore_blocks b WHERE b.blocker_id = u.id AND b.blocked_id = $1)";

/// Which of the listed users `$2` share a conversation with `$1`: `$1`'s inbox rows by
/// primary key, one probe per listed id.
pub(crate) const CONVERSATION_PEERS: &str =
    "SELECT DISTINCT peer_id FROM chatcore_inbox WHERE user_id = $1 AND peer_id = ANY($2)";

/// A live session's user and expiry: the session and the user by primary key.
pub(crate) const SESSION_USER: &str = "SELECT u.id AS id, u.username AS username, t.expires_at AS expires_at \
     FROM chatcore_sessions t JOIN chatcore_users u ON u.id = t.user_id \
     WHERE t.token_hash = $1 AND t.expires_at > $2";

/// Sessions expired at a time: a range of `chatcore_sessions_expires`.
pub(crate) const DELETE_EXPIRED_SESSIONS: &str = "DELETE FROM chatcore_sessions WHERE expires_at <= $1";

/// A user's newest durable event of any kind (0 for none): the newest position kept on their
/// total row of `chatcore_counts` (schema version 8), one primary-key lookup. Every function
/// that hands out a position moves it in the same transaction, so it is as committed as the
/// events themselves.
pub(crate) const LATEST_POSITION: &str = "SELECT COALESCE((SELECT last_position FROM chatcore_counts \
     WHERE low_id = $1 AND high_id = 0), 0) AS latest";

/// The columns every message query returns, names joined by primary key.
macro_rules! message_columns {
    ($m:literal) => {
        concat!(
            $m,
            ".id AS id, s.username AS sender, r.username AS recipient, ",
            $m,
            ".created_at AS created_at, ",
            $m,
            ".body AS body, ",
            $m,
            ".edited_at AS edited_at, ",
            $m,
            ".deleted AS deleted"
        )
    };
}

macro_rules! message_joins {
    ($m:literal) => {
        concat!(
            " JOIN chatcore_users s ON s.id = ",
            $m,
            ".sender_id JOIN chatcore_users r ON r.id = ",
            $m,
            ".recipient_id"
        )
    };
}

/// One message if the viewer is a participant: primary key. Binds: id, viewer.
pub(crate) const MESSAGE_FOR: &str = concat!(
    "SELECT ",
    message_columns!("m"),
    " FROM chatcore_messages m",
    message_joins!("m"),
    " WHERE m.id = $1 AND (m.sender_id = $2 OR m.recipient_id = $2)"
);

/// A conversation page and its total in one round trip: the other user by key, the total by
/// `chatcore_counts` primary key, the page as one backward range of
/// `chatcore_messages_conversation` from the cursor. No row: the other user does not exist;
/// one row with a NULL id: an empty page. Binds: viewer, other's key, before, limit, offset.
pub(crate) const CONVERSATION_PAGE: &str = concat!(
    "SELECT o.id AS other_id, \
       (SELECT c.total FROM chatcore_counts c WHERE c.low_id = LEAST($1, o.id) AND c.high_id = GREATEST($1, o.id)) AS total, \
       p.id, p.sender, p.recipient, p.created_at, p.body, p.edited_at, p.deleted \
     FROM chatcore_users o LEFT JOIN LATERAL (SELECT ",
    message_columns!("m"),
    " FROM chatcore_messages m",
    message_joins!("m"),
    " WHERE m.conversation_low = LEAST($1, o.id) AND m.conversation_high = GREATEST($1, o.id) \
       AND m.id < $3 ORDER BY m.id DESC LIMIT $4 OFFSET $5) p ON TRUE \
     WHERE o.username_key = $2"
);

/// A user's messages, newest first, and their total, in one round trip: the total by
/// `chatcore_counts` primary key, the page as the merge of two backward ranges, one of
/// `chatcore_messages_sender` and one of `chatcore_messages_recipient` (a note to oneself only
/// in the first), each at most `offset + limit` rows. One row with a NULL id: an empty page.
/// Binds: user, before, window (offset + limit), limit, offset.
pub(crate) const USER_MESSAGES: &str = concat!(
    "SELECT (SELECT c.total FROM chatcore_counts c WHERE c.low_id = $1 AND c.high_id = 0) AS total, \
       p.id, p.sender, p.recipient, p.created_at, p.body, p.edited_at, p.deleted \
     FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT ",
    message_columns!("u"),
    " FROM ((SELECT * FROM chatcore_messages WHERE sender_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3) \
        UNION ALL \
        (SELECT * FROM chatcore_messages WHERE recipient_id = $1 AND sender_id <> $1 AND id < $2 \
         ORDER BY id DESC LIMIT $3)) u",
    message_joins!("u"),
    " ORDER BY u.id DESC LIMIT $4 OFFSET $5) p ON TRUE"
);

/// Catch-up: a user's messages after an id, oldest first, as the merge of two forward ranges
/// of `chatcore_messages_sender` and `chatcore_messages_recipient`.
/// Binds: user, after, limit.
pub(crate) const MESSAGES_AFTER: &str = concat!(
    "SELECT ",
    message_columns!("u"),
    " FROM ((SELECT * FROM chatcore_messages WHERE sender_id = $1 AND id > $2 ORDER BY id LIMIT $3) \
        UNION ALL \
        (SELECT * FROM chatcore_messages WHERE recipient_id = $1 AND sender_id <> $1 AND id > $2 \
         ORDER BY id LIMIT $3)) u",
    message_joins!("u"),
    " ORDER BY u.id LIMIT $3"
);

/// Catch-up on every durable event, in one statement (one consistent view): four forward
/// ranges, each limited, of `chatcore_messages_sender`, `chatcore_messages_recipient` (notes
/// to self only in the first), `chatcore_read_events_reader` and `chatcore_read_events_peer`
/// (notes to self only in the first), merged, ordered and limited. A read event fills a
/// message's columns: `id` is its position, `sender` the reader, `recipient` the peer. An
/// edit or deletion is kept in `chatcore_read_events` too (`kind` 1 or 2: the sender as
/// reader, the recipient as peer, the message as `up_to`; kind 2 or 3 here) and fills the
/// message's other columns with the message as it is now.
/// Binds: user, after, limit.
pub(crate) const EVENTS_AFTER: &str = concat!(
    "SELECT ev.* FROM (SELECT 0 AS kind, ",
    message_columns!("u"),
    ", NULL::BIGINT AS up_to \
     FROM ((SELECT * FROM chatcore_messages WHERE sender_id = $1 AND id > $2 ORDER BY id LIMIT $3) \
        UNION ALL \
        (SELECT * FROM chatcore_messages WHERE recipient_id = $1 AND sender_id <> $1 AND id > $2 \
         ORDER BY id LIMIT $3)) u",
    message_joins!("u"),
    " UNION ALL \
     SELECT 1 + e.kind, e.position, s.username, r.username, cm.created_at, cm.body, cm.edited_at, \
       cm.deleted, e.up_to \
     FROM ((SELECT * FROM chatcore_read_events WHERE reader_id = $1 AND position > $2 \
         ORDER BY position LIMIT $3) \
        UNION ALL \
        (SELECT * FROM chatcore_read_events WHERE peer_id = $1 AND reader_id <> $1 AND position > $2 \
         ORDER BY position LIMIT $3)) e \
     JOIN chatcore_users s ON s.id = e.reader_id JOIN chatcore_users r ON r.id = e.peer_id \
     LEFT JOIN chatcore_messages cm ON cm.id = e.up_to AND e.kind <> 0) ev \
     ORDER BY ev.id LIMIT $3"
);

/// Every user's events after a position, oldest first (the host's feed), in one statement
/// (one snapshot): a forward range of each primary key, `chatcore_messages` and
/// `chatcore_read_events`, merged. Columns as [`EVENTS_AFTER`]. Binds: after, limit.
pub(crate) const FEED_AFTER: &str = concat!(
    "SELECT ev.* FROM (SELECT 0 AS kind, ",
    message_columns!("u"),
    ", NULL::BIGINT AS up_to \
     FROM (SELECT * FROM chatcore_messages WHERE id > $1 ORDER BY id LIMIT $2) u",
    message_joins!("u"),
    " UNION ALL \
     SELECT 1 + e.kind, e.position, s.username, r.username, cm.created_at, cm.body, cm.edited_at, \
       cm.deleted, e.up_to \
     FROM (SELECT * FROM chatcore_read_events WHERE position > $1 ORDER BY position LIMIT $2) e \
     JOIN chatcore_users s ON s.id = e.reader_id JOIN chatcore_users r ON r.id = e.peer_id \
     LEFT JOIN chatcore_messages cm ON cm.id = e.up_to AND e.kind <> 0) ev \
     ORDER BY ev.id LIMIT $2"
);

/// A feed consumer's checkpoint by name: the primary key of `chatcore_checkpoints`.
pub(crate) const LOAD_CHECKPOINT: &str = "SELECT position FROM chatcore_checkpoints WHERE name = $1";

/// Saves a checkpoint, replacing the one saved before. Binds: name, position.
pub(crate) const SAVE_CHECKPOINT: &str = "INSERT INTO chatcore_checkpoints (name, position) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position";

/// A page of a user's inbox and their unread total in one round trip: the total by
/// `chatcore_counts` primary key (row (user, -1)), the page as one backward range of
/// `chatcore_inbox_activity` from the cursor, each row joined by primary key to the peer, the
/// newest message and the peer's own inbox row (their marker). One row with a NULL peer: an
/// empty page. Binds: user, before, limit.
pub(crate) const INBOX_PAGE: &str = concat!(
    "SELECT (SELECT c.total FROM chatcore_counts c WHERE c.low_id = $1 AND c.high_id = -1) AS unread_total, \
       p.* FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT pu.username AS peer, i.unread AS unread, \
       i.read_up_to AS read_up_to, pi.read_up_to AS peer_read_up_to, ",
    message_columns!("m"),
    " FROM chatcore_inbox i JOIN chatcore_users pu ON pu.id = i.peer_id \
       JOIN chatcore_messages m ON m.id = i.last_id",
    message_joins!("m"),
    " LEFT JOIN chatcore_inbox pi ON pi.user_id = i.peer_id AND pi.peer_id = i.user_id \
     WHERE i.user_id = $1 AND i.last_id < $2 ORDER BY i.last_id DESC LIMIT $3) p ON TRUE"
);

/// One edit or deletion: the function `chatcore_change_message` (see `schema.rs`).
/// Binds: sender, message id, delete?, new body (NULL for a deletion), not before (NULL: no
/// window).
pub(crate) const CHANGE_MESSAGE: &str = "SELECT r_outcome, r_recipient_id, r_position, r_sender_previous, \
     r_recipient_previous, r_id AS id, r_sender AS sender, r_recipient AS recipient, r_created_at AS created_at, \
     r_body AS body, r_edited_at AS edited_at, r_deleted AS deleted \
     FROM chatcore_change_message($1, $2, $3, $4, $5)";

/// One batch of `Store::delete_sent_messages`: the function `chatcore_delete_sent` (see
/// `schema.rs`), its rows shaped as [`CHANGE_MESSAGE`]'s. Binds: sender, after, limit.
pub(crate) const DELETE_SENT: &str = "SELECT r_outcome, r_recipient_id, r_position, r_sender_previous, \
     r_recipient_previous, r_id AS id, r_sender AS sender, r_recipient AS recipient, r_created_at AS created_at, \
     r_body AS body, r_edited_at AS edited_at, r_deleted AS deleted \
     FROM chatcore_delete_sent($1, $2, $3)";

/// `Store::remove_user` in one statement: the flag (kept from the first time), the password,
/// every session. Binds: user. One row when the user exists.
pub(crate) const REMOVE_USER: &str = "WITH removed AS ( \
         UPDATE chatcore_users SET removed_at = COALESCE(removed_at, now()), password_hash = NULL \
         WHERE id = $1 RETURNING id), \
     ended AS (DELETE FROM chatcore_sessions WHERE user_id IN (SELECT id FROM removed)) \
     SELECT id FROM removed";

/// A session for a user who exists and was not removed. The user row is locked (`FOR SHARE`)
/// so a concurrent removal either waits for this session and then deletes it, or comes
/// first and no session is made. Binds: token hash, user, expiry.
pub(crate) const CREATE_SESSION: &str = "INSERT INTO chatcore_sessions (token_hash, user_id, expires_at) \
     SELECT $1, u.id, $3 FROM chatcore_users u WHERE u.id = $2 AND u.removed_at IS NULL FOR SHARE \
     ON CONFLICT (token_hash) DO UPDATE SET user_id = EXCLUDED.user_id, expires_at = EXCLUDED.expires_at";

/// A new password hash for the account keyed `$1`, unless removed. Binds: key, hash.
pub(crate) const SET_PASSWORD_HASH: &str = "UPDATE chatcore_users SET password_hash = $2 \
     WHERE username_key = $1 AND removed_at IS NULL RETURNING id, username";

/// One `mark_read`: the function `chatcore_mark_read` (see `schema.rs`).
/// Binds: reader, peer's key, up_to.
pub(crate) const MARK_READ: &str = "SELECT r_outcome, r_peer_id, r_peer_name, r_position, r_read_up_to, \
     r_unread, r_reader_previous, r_peer_previous FROM chatcore_mark_read($1, $2, $3)";

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, BoxError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(|e| Box::new(e) as BoxError)
}

/// A user from columns `id` and `username` (a stored name is trusted as stored).
pub(crate) fn user(row: &PgRow) -> Result<User, BoxError> {
    Ok(User {
        id: UserId(get(row, "id")?),
        username: Username::from_stored(get::<String>(row, "username")?),
    })
}

/// A message from the [`message_columns`] columns.
pub(crate) fn message(row: &PgRow) -> Result<Message, BoxError> {
    message_with_id(row, get(row, "id")?)
}

/// A message with id `id` from the other [`message_columns`] columns.
fn message_with_id(row: &PgRow, id: i64) -> Result<Message, BoxError> {
    Ok(Message {
        id: MessageId(id),
        sender: Username::from_stored(get::<String>(row, "sender")?),
        recipient: Username::from_stored(get::<String>(row, "recipient")?),
        created_at: get(row, "created_at")?,
        body: get(row, "body")?,
        edited: get(row, "edited_at")?,
        deleted: get(row, "deleted")?,
    })
}

/// A durable event from the columns of [`EVENTS_AFTER`].
pub(crate) fn event(row: &PgRow) -> Result<StoredEvent, BoxError> {
    let kind: i32 = get(row, "kind")?;
    if kind == 0 {
        return Ok(StoredEvent::Message(message(row)?));
    }
    let up_to: Option<i64> = get(row, "up_to")?;
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
        reader: Username::from_stored(get::<String>(row, "sender")?),
        peer: Username::from_stored(get::<String>(row, "recipient")?),
        up_to: MessageId(up_to.ok_or("a read event without its message")?),
    }))
}

/// A conversation from a row of [`INBOX_PAGE`]; `None` for the row of an empty page (the
/// total alone).
pub(crate) fn conversation(row: &PgRow) -> Result<Option<Conversation>, BoxError> {
    let Some(peer) = get::<Option<String>>(row, "peer")? else {
        return Ok(None);
    };
    let unread: i64 = get(row, "unread")?;
    let read_up_to: Option<i64> = get(row, "read_up_to")?;
    let peer_read_up_to: Option<i64> = get(row, "peer_read_up_to")?;
    Ok(Some(Conversation {
        peer: Username::from_stored(peer),
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
