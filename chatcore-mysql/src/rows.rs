//! The read queries and the decoding of their rows. Page queries name their index with
//! `FORCE INDEX`: on a large table the optimizer otherwise reads the index as `ref` on the
//! equality columns and filters the id cursor row by row (measured: 145 ms for a page in the
//! middle of a 100,000-message conversation), instead of seeking to the cursor as a range.
//! Each query's comment names the index it
//! runs on; `tests::plans_use_indexes` checks them with `EXPLAIN`.

use chrono::NaiveDateTime;
use sqlx::Row;
use sqlx::mysql::MySqlRow;

use chatcore::{BoxError, Message, MessageId, User, UserId, Username};

/// The columns every message query returns, with sender and recipient names joined by
/// primary key (`eq_ref`).
macro_rules! message_columns {
    () => {
        "m.id AS id, s.username AS sender, r.username AS recipient, m.created_at AS created_at, m.body AS body"
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
       AND id <> ? ORDER BY username_key LIMIT ?";

/// A live session's user and expiry: the session by primary key, the user by primary key.
pub(crate) const SESSION_USER: &str = "SELECT u.id AS id, u.username AS username, t.expires_at AS expires_at \
     FROM chatcore_sessions t JOIN chatcore_users u ON u.id = t.user_id \
     WHERE t.token_hash = ? AND t.expires_at > ?";

/// Sessions expired at a time: a range of `chatcore_sessions_expires`.
pub(crate) const DELETE_EXPIRED_SESSIONS: &str = "DELETE FROM chatcore_sessions WHERE expires_at <= ?";

/// A user's newest message id (0 for none): the largest id of `chatcore_messages_sender` and
/// of `chatcore_messages_recipient` for the user, each one index dive (MIN/MAX optimization:
/// "Select tables optimized away"), whatever the user's history.
/// Binds: user, user.
pub(crate) const LATEST_POSITION: &str = "SELECT GREATEST(\
     IFNULL((SELECT MAX(id) FROM chatcore_messages WHERE sender_id = ?), 0), \
     IFNULL((SELECT MAX(id) FROM chatcore_messages WHERE recipient_id = ?), 0)) AS latest";

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
      NULL AS created_at, NULL AS body \
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
       p.created_at AS created_at, p.body AS body \
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
    let created_at: NaiveDateTime = get(row, "created_at")?;
    Ok(Message {
        id: MessageId(get(row, "id")?),
        sender: username(text(row, "sender")?),
        recipient: username(text(row, "recipient")?),
        created_at: created_at.and_utc(),
        body: text(row, "body")?,
    })
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
