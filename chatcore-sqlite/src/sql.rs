//! Every statement the store runs, in one place, so the query-plan test can check them all.
//!
//! The joins to `chatcore_users` are `CROSS JOIN`s on purpose: in SQLite that fixes the loop
//! order, so the message index drives the query and names are two rowid lookups per row.

/// Columns of a [`chatcore::Message`], in the order `reader::message_from_row` reads them.
macro_rules! message_select {
    () => {
        "SELECT m.id, s.username, r.username, m.created_at, m.body FROM "
    };
}

// ---- writer ----

pub(crate) const INSERT_USER: &str = "INSERT INTO chatcore_users (username, password_hash) VALUES (?1, ?2)";

pub(crate) const SET_PASSWORD: &str = "UPDATE chatcore_users SET password_hash = ?2 WHERE id = ?1";

pub(crate) const USER_EXISTS: &str = "SELECT 1 FROM chatcore_users WHERE id = ?1";

pub(crate) const UPSERT_SESSION: &str = "INSERT INTO chatcore_sessions (token_hash, user_id, expires_at)
     VALUES (?1, ?2, ?3)
     ON CONFLICT (token_hash) DO UPDATE SET user_id = excluded.user_id, expires_at = excluded.expires_at";

pub(crate) const DELETE_SESSION: &str = "DELETE FROM chatcore_sessions WHERE token_hash = ?1";

pub(crate) const INSERT_MESSAGE: &str = "INSERT INTO chatcore_messages
     (sender_id, recipient_id, conv_low, conv_high, created_at, body, idempotency_key)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

pub(crate) const INSERT_USER_MESSAGE: &str =
    "INSERT INTO chatcore_user_messages (user_id, message_id) VALUES (?1, ?2)";

pub(crate) const ADD_CONVERSATION_COUNT: &str =
    "INSERT INTO chatcore_conversations (conv_low, conv_high, message_count) VALUES (?1, ?2, ?3)
     ON CONFLICT (conv_low, conv_high) DO UPDATE SET message_count = message_count + excluded.message_count";

pub(crate) const ADD_USER_COUNT: &str =
    "INSERT INTO chatcore_user_counts (user_id, message_count) VALUES (?1, ?2)
     ON CONFLICT (user_id) DO UPDATE SET message_count = message_count + excluded.message_count";

// ---- both ----

pub(crate) const USER_ID_BY_NAME: &str = "SELECT id FROM chatcore_users WHERE username = ?1";

pub(crate) const IDEMPOTENT_MESSAGE: &str = concat!(
    message_select!(),
    "chatcore_messages AS m
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE m.sender_id = ?1 AND m.idempotency_key = ?2"
);

// ---- readers ----

pub(crate) const CREDENTIALS: &str =
    "SELECT id, username, password_hash FROM chatcore_users WHERE username = ?1";

pub(crate) const SESSION_USER: &str = "SELECT u.id, u.username FROM chatcore_sessions AS t
     CROSS JOIN chatcore_users AS u ON u.id = t.user_id
     WHERE t.token_hash = ?1 AND t.expires_at > ?2";

pub(crate) const MESSAGE_FOR: &str = concat!(
    message_select!(),
    "chatcore_messages AS m
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE m.id = ?1 AND (m.sender_id = ?2 OR m.recipient_id = ?2)"
);

pub(crate) const CONVERSATION_COUNT: &str =
    "SELECT message_count FROM chatcore_conversations WHERE conv_low = ?1 AND conv_high = ?2";

pub(crate) const CONVERSATION_PAGE: &str = concat!(
    message_select!(),
    "chatcore_messages AS m
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE m.conv_low = ?1 AND m.conv_high = ?2 AND m.id < ?3
     ORDER BY m.id DESC LIMIT ?4 OFFSET ?5"
);

pub(crate) const USER_COUNT: &str = "SELECT message_count FROM chatcore_user_counts WHERE user_id = ?1";

pub(crate) const USER_PAGE: &str = concat!(
    message_select!(),
    "chatcore_user_messages AS um
     CROSS JOIN chatcore_messages AS m ON m.id = um.message_id
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE um.user_id = ?1 AND um.message_id < ?2
     ORDER BY um.message_id DESC LIMIT ?3 OFFSET ?4"
);

pub(crate) const MESSAGES_AFTER: &str = concat!(
    message_select!(),
    "chatcore_user_messages AS um
     CROSS JOIN chatcore_messages AS m ON m.id = um.message_id
     CROSS JOIN chatcore_users AS s ON s.id = m.sender_id
     CROSS JOIN chatcore_users AS r ON r.id = m.recipient_id
     WHERE um.user_id = ?1 AND um.message_id > ?2
     ORDER BY um.message_id ASC LIMIT ?3"
);

/// The directory: `?1` lower bound, `?2` upper bound (prefix's successor), `?3` excluded id
/// (`NULL` for none), `?4` limit. Four shapes, by which bounds apply.
pub(crate) fn list_users(lower_inclusive: bool, has_upper: bool) -> &'static str {
    match (lower_inclusive, has_upper) {
        (true, true) => {
            "SELECT id, username FROM chatcore_users
             WHERE username >= ?1 AND username < ?2 AND id IS NOT ?3
             ORDER BY username LIMIT ?4"
        }
        (true, false) => {
            "SELECT id, username FROM chatcore_users
             WHERE username >= ?1 AND id IS NOT ?3
             ORDER BY username LIMIT ?4"
        }
        (false, true) => {
            "SELECT id, username FROM chatcore_users
             WHERE username > ?1 AND username < ?2 AND id IS NOT ?3
             ORDER BY username LIMIT ?4"
        }
        (false, false) => {
            "SELECT id, username FROM chatcore_users
             WHERE username > ?1 AND id IS NOT ?3
             ORDER BY username LIMIT ?4"
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
