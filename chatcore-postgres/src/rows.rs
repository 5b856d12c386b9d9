//! The read queries (each with the index it reads) and the decoding of their rows.

use sqlx::Row;
use sqlx::postgres::PgRow;

use chatcore::{BoxError, Message, MessageId, User, UserId, Username};

/// A user by name without regard to case: `chatcore_users_username_key`.
pub(crate) const FIND_USER: &str = "SELECT id, username FROM chatcore_users WHERE username_key = $1";

/// A user and password hash by key: `chatcore_users_username_key`.
pub(crate) const CREDENTIALS: &str =
    "SELECT id, username, password_hash FROM chatcore_users WHERE username_key = $1";

/// The directory: a range of `chatcore_users_username_key` (collation "C", so `LIKE 'p%'`
/// is a range and the order is byte order) after the cursor's key, stopping after `LIMIT`.
/// Binds: pattern, after's key ('' for none), excluded id (0 for none), limit.
pub(crate) const LIST_USERS: &str = "SELECT id, username FROM chatcore_users \
     WHERE username_key LIKE $1 ESCAPE '!' AND username_key > $2 AND id <> $3 \
     ORDER BY username_key LIMIT $4";

/// A live session's user and expiry: the session and the user by primary key.
pub(crate) const SESSION_USER: &str = "SELECT u.id AS id, u.username AS username, t.expires_at AS expires_at \
     FROM chatcore_sessions t JOIN chatcore_users u ON u.id = t.user_id \
     WHERE t.token_hash = $1 AND t.expires_at > $2";

/// Sessions expired at a time: a range of `chatcore_sessions_expires`.
pub(crate) const DELETE_EXPIRED_SESSIONS: &str = "DELETE FROM chatcore_sessions WHERE expires_at <= $1";

/// A user's newest message id (0 for none): one backward dive into each of
/// `chatcore_messages_sender` and `chatcore_messages_recipient`, whatever the user's history.
pub(crate) const LATEST_POSITION: &str = "SELECT GREATEST(\
     COALESCE((SELECT MAX(id) FROM chatcore_messages WHERE sender_id = $1), 0), \
     COALESCE((SELECT MAX(id) FROM chatcore_messages WHERE recipient_id = $1), 0)) AS latest";

/// The columns every message query returns, names joined by primary key.
macro_rules! message_columns {
    ($m:literal) => {
        concat!(
            $m,
            ".id AS id, s.username AS sender, r.username AS recipient, ",
            $m,
            ".created_at AS created_at, ",
            $m,
            ".body AS body"
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
       p.id, p.sender, p.recipient, p.created_at, p.body \
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
       p.id, p.sender, p.recipient, p.created_at, p.body \
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
    Ok(Message {
        id: MessageId(get(row, "id")?),
        sender: Username::from_stored(get::<String>(row, "sender")?),
        recipient: Username::from_stored(get::<String>(row, "recipient")?),
        created_at: get(row, "created_at")?,
        body: get(row, "body")?,
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
