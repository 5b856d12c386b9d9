//! Domain types: users, usernames, messages and the conversation key.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// A user's numeric id, assigned by the store. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

impl UserId {
    /// Never a user (stores hand out ids from 1): the notifier channel on which
    /// [`crate::ChatService::end_session`] also announces every ended session, so that each
    /// node's session cache hears every revocation.
    pub const SESSION_REVOCATIONS: UserId = UserId(0);
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A message's id. Ids increase in commit order: a message with a larger id was
/// committed later, which is what makes `since`/`before` cursors safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub i64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A validated username, NFKC-normalized: 1 to 150 characters, each a letter, a digit or one
/// of `@ . + - _` (the rule of Django's default user model, which the original app used),
/// with Unicode's identifier security rules on top (UTS #39), so that one name cannot pass
/// for another: letters and digits must be allowed in identifiers (no invisible or filler
/// characters, no obsolete or exotic scripts), and a name keeps to one script (no Latin
/// `alice` with a Cyrillic `а`). Names are unique without regard to case: [`Username::key`]
/// is what a store keeps unique and looks up by; the name itself keeps the case its owner
/// chose, for display.
///
/// ```
/// use chatcore::Username;
/// assert!(Username::parse("alice.b+chat@example").is_ok());
/// assert!(Username::parse("").is_err());
/// assert!(Username::parse("no spaces").is_err());
/// // Full-width and mathematical letters are the same name as plain ones.
/// assert_eq!(Username::parse("ａｌｉｃｅ").unwrap().as_str(), "alice");
/// assert_eq!(Username::parse("Alice").unwrap().key(), Username::parse("alice").unwrap().key());
/// assert!(Username::parse("\u{0430}lice").is_err()); // Cyrillic а among Latin letters
/// assert!(Username::parse("alice\u{3164}").is_err()); // a Hangul filler
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    /// Longest accepted username, in characters.
    pub const MAX_CHARS: usize = 150;

    /// Normalizes (NFKC) and validates `name`, and wraps it.
    pub fn parse(name: impl Into<String>) -> Result<Self, Error> {
        use unicode_normalization::UnicodeNormalization;
        use unicode_security::{GeneralSecurityProfile, MixedScript};
        let raw = name.into();
        // The common case, checked in one pass: ASCII letters, digits and the five symbols
        // are NFKC already, all Latin (or common to every script) and allowed in identifiers.
        if !raw.is_empty()
            && raw.len() <= Self::MAX_CHARS
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@.+-_".contains(&b))
        {
            return Ok(Self(raw));
        }
        let name: String = if unicode_normalization::is_nfkc_quick(raw.chars())
            == unicode_normalization::IsNormalized::Yes
        {
            raw
        } else {
            raw.nfkc().collect()
        };
        let count = name.chars().count();
        if count == 0 {
            return Err(Error::invalid("username must not be empty"));
        }
        if count > Self::MAX_CHARS {
            return Err(Error::invalid(format!(
                "username must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        if let Some(bad) = name.chars().find(|c| !Self::allowed_char(*c)) {
            return Err(Error::invalid(format!(
                "username may contain only letters, digits and @ . + - _ (found {bad:?})"
            )));
        }
        if let Some(bad) = name
            .chars()
            .find(|&c| c.is_alphanumeric() && !c.identifier_allowed())
        {
            return Err(Error::invalid(format!(
                "username may not contain U+{:04X}: it is not allowed in identifiers (Unicode UTS #39)",
                bad as u32
            )));
        }
        if !name.as_str().is_single_script() {
            return Err(Error::invalid(
                "username must be written in one script (no Latin mixed with Cyrillic or Greek letters)",
            ));
        }
        Ok(Self(name))
    }

    /// A name read back from a store, trusted as it was stored (it was checked when the
    /// account was made, perhaps under older rules that a store's migration reported).
    pub fn from_stored(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    fn allowed_char(c: char) -> bool {
        c.is_alphanumeric() || matches!(c, '@' | '.' | '+' | '-' | '_')
    }

    /// What makes a name unique: the name lowercased (and normalized again), so `Alice` and
    /// `alice` are one account. Stores keep it unique and find users by it.
    ///
    /// ```
    /// assert_eq!(chatcore::Username::parse("ÅSA").unwrap().key(), "åsa");
    /// ```
    pub fn key(&self) -> String {
        Self::key_of(&self.0)
    }

    /// [`Username::key`] of any text (for stores migrating names made before the rules).
    pub fn key_of(name: &str) -> String {
        use unicode_normalization::UnicodeNormalization;
        if name.is_ascii() {
            // ASCII is NFKC, and lowercasing keeps it so.
            return name.to_ascii_lowercase();
        }
        let lower = name.nfkc().collect::<String>().to_lowercase();
        lower.nfkc().collect()
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Unwraps the name.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Hash, Eq and Ord agree with `str`'s, so maps keyed by `Username` can be searched by `&str`.
impl std::borrow::Borrow<str> for Username {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Username {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Username::parse(raw).map_err(serde::de::Error::custom)
    }
}

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct User {
    /// Store-assigned id.
    pub id: UserId,
    /// Unique name.
    pub username: Username,
}

/// The unordered pair of users a conversation belongs to: `(a, b)` and `(b, a)` give the
/// same key, so a store can index a conversation with one range.
///
/// ```
/// use chatcore::{ConversationKey, UserId};
/// assert_eq!(ConversationKey::new(UserId(7), UserId(3)), ConversationKey::new(UserId(3), UserId(7)));
/// assert_eq!(ConversationKey::new(UserId(7), UserId(3)).low(), UserId(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConversationKey {
    low: UserId,
    high: UserId,
}

impl ConversationKey {
    /// The key of the conversation between `a` and `b`, in either order.
    pub fn new(a: UserId, b: UserId) -> Self {
        if a <= b {
            Self { low: a, high: b }
        } else {
            Self { low: b, high: a }
        }
    }

    /// The participant with the smaller id.
    pub fn low(&self) -> UserId {
        self.low
    }

    /// The participant with the larger id (equal to `low` for a note to oneself).
    pub fn high(&self) -> UserId {
        self.high
    }
}

/// A stored message. Serializes to the wire shape of the original app, with `edited` added:
/// `{"id": 1, "user": "alice", "recipient": "bob", "timestamp": "2019-06-04T10:00:00.123456Z", "body": "hi", "edited": null}`.
///
/// A message its sender deleted stays in history as a tombstone: its id, participants and
/// timestamp, an empty body (the text is gone from the store, not only hidden), `edited`
/// `null` and `"deleted": true` (the field is left out of messages that are not deleted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Id, increasing in commit order.
    pub id: MessageId,
    /// Who sent it (`user` on the wire, as in the original app).
    #[serde(rename = "user")]
    pub sender: Username,
    /// Who it was sent to.
    pub recipient: Username,
    /// When the store accepted it, UTC, microsecond precision (`timestamp` on the wire).
    #[serde(rename = "timestamp", with = "timestamp_micros")]
    pub created_at: DateTime<Utc>,
    /// The trimmed text; empty for a tombstone.
    pub body: String,
    /// When the sender last edited it (`null` on the wire until then, and for a tombstone).
    #[serde(default, with = "timestamp_micros::option")]
    pub edited: Option<DateTime<Utc>>,
    /// Whether the sender deleted it: the body is gone and only this tombstone remains. On
    /// the wire only when `true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl Message {
    /// A message as a store keeps it before any edit: not edited, not deleted.
    pub fn new(
        id: MessageId,
        sender: Username,
        recipient: Username,
        created_at: DateTime<Utc>,
        body: String,
    ) -> Self {
        Self {
            id,
            sender,
            recipient,
            created_at,
            body,
            edited: None,
            deleted: false,
        }
    }

    /// This message as a tombstone: the body gone, not edited, deleted.
    pub fn into_tombstone(self) -> Self {
        Self {
            body: String::new(),
            edited: None,
            deleted: true,
            ..self
        }
    }

    /// Whether `user` sent or received this message.
    pub fn involves(&self, user: &Username) -> bool {
        &self.sender == user || &self.recipient == user
    }
}

/// A message on its way into a store: validated by the service, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The sender, already authenticated.
    pub sender: User,
    /// The recipient's name; the store resolves it (and answers `NotFound` when there is no
    /// such user) in the same round trip as the insert.
    pub recipient: Username,
    /// Trimmed, non-empty, within the configured length.
    pub body: String,
    /// The sender's idempotency key, if the client sent one.
    pub idempotency_key: Option<String>,
}

/// The current time truncated to microseconds, the precision every store keeps.
pub fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Serde helpers for timestamps in the wire format `2026-11-28T10:00:00.123456Z`
/// (always six fractional digits, always `Z`).
pub mod timestamp_micros {
    use super::*;

    /// Writes `ts` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` into a stack buffer. Hand-rolled because
    /// chrono's generic formatter dominated the cost of serializing a history page.
    /// The fixed 27-byte layout, or `None` outside four-digit years, which chrono formats
    /// (whole, never cut to the buffer).
    fn render(ts: &DateTime<Utc>) -> Option<[u8; 27]> {
        use chrono::{Datelike, Timelike};
        let mut buf = [0u8; 27];
        let year = ts.year();
        if !(0..=9999).contains(&year) {
            return None;
        }
        let micros = ts.nanosecond() % 1_000_000_000 / 1_000;
        let fields: [(usize, u32, usize); 7] = [
            (0, year as u32, 4),
            (5, ts.month(), 2),
            (8, ts.day(), 2),
            (11, ts.hour(), 2),
            (14, ts.minute(), 2),
            (17, ts.second(), 2),
            (20, micros, 6),
        ];
        for (at, mut value, width) in fields {
            for i in (0..width).rev() {
                buf[at + i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        buf[4] = b'-';
        buf[7] = b'-';
        buf[10] = b'T';
        buf[13] = b':';
        buf[16] = b':';
        buf[19] = b'.';
        buf[26] = b'Z';
        Some(buf)
    }

    fn slow(ts: &DateTime<Utc>) -> String {
        ts.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }

    /// Formats `ts` in the wire format.
    pub fn format(ts: &DateTime<Utc>) -> String {
        match render(ts) {
            Some(buf) => buf.iter().map(|&b| char::from(b)).collect(),
            None => slow(ts),
        }
    }

    /// Serializes in the wire format.
    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        match render(ts) {
            // Only ASCII digits and separators were written.
            Some(buf) => match std::str::from_utf8(&buf) {
                Ok(text) => serializer.serialize_str(text),
                Err(e) => Err(serde::ser::Error::custom(e)),
            },
            None => serializer.serialize_str(&slow(ts)),
        }
    }

    /// Accepts any RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|ts| ts.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    /// The same for an optional timestamp: `null` for `None`.
    pub mod option {
        use super::*;

        /// Serializes `Some` in the wire format, `None` as `null`.
        pub fn serialize<S: Serializer>(
            ts: &Option<DateTime<Utc>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match ts {
                Some(ts) => super::serialize(ts, serializer),
                None => serializer.serialize_none(),
            }
        }

        /// Accepts `null` or any RFC 3339 timestamp.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            let raw = Option::<std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            raw.map(|raw| {
                DateTime::parse_from_rfc3339(&raw)
                    .map(|ts| ts.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_impersonate() {
        let alice = Username::parse("alice").unwrap();
        // Six spellings that used to be six users: one key, or refused.
        for same in [
            "Alice",
            "ALICE",
            "ａｌｉｃｅ",
            "\u{1D41A}\u{1D425}\u{1D422}\u{1D41C}\u{1D41E}",
        ] {
            assert_eq!(Username::parse(same).unwrap().key(), alice.key(), "{same}");
        }
        assert_eq!(
            Username::parse("Alice").unwrap().as_str(),
            "Alice",
            "display case kept"
        );
        for refused in [
            "\u{0430}lice",  // Cyrillic а with Latin
            "alice\u{3164}", // Hangul filler
            "alice\u{FFA0}", // half-width Hangul filler
            "al\u{200B}ice", // zero-width space
            "al\u{200D}ice", // zero-width joiner
            "\u{03B1}lice",  // Greek alpha with Latin
        ] {
            assert!(Username::parse(refused).is_err(), "{refused:?}");
        }
        // One script at a time is fine, digits and the symbols go with any.
        for fine in [
            "Ωμέγα",
            "иван_1",
            "田中.太郎",
            "たなか",
            "김철수",
            "user@example.com",
            "Zoë-2",
        ] {
            assert!(Username::parse(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn username_rules() {
        assert!(Username::parse("a").is_ok());
        assert!(Username::parse("Ünïcode_ok-1.2+3@x").is_ok());
        assert!(Username::parse("x".repeat(150)).is_ok());
        assert!(Username::parse("x".repeat(151)).is_err());
        assert!(Username::parse("tab\t").is_err());
        assert!(Username::parse("slash/").is_err());
        assert!(Username::parse("emoji😀").is_err());
    }

    #[test]
    fn message_wire_shape() {
        let ts = DateTime::parse_from_rfc3339("2026-11-28T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let m = Message {
            id: MessageId(17),
            sender: Username::parse("alice").unwrap(),
            recipient: Username::parse("bob").unwrap(),
            created_at: ts,
            body: "hi".into(),
            edited: None,
            deleted: false,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"id":17,"user":"alice","recipient":"bob","timestamp":"2026-11-28T10:00:00.123456Z","body":"hi","edited":null}"#
        );
        let back: Message = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        let edited = Message {
            edited: Some(ts),
            ..m.clone()
        };
        let json = serde_json::to_string(&edited).unwrap();
        assert!(
            json.ends_with(r#""edited":"2026-11-28T10:00:00.123456Z"}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), edited);
        let tombstone = edited.into_tombstone();
        let json = serde_json::to_string(&tombstone).unwrap();
        assert!(
            json.ends_with(r#""body":"","edited":null,"deleted":true}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), tombstone);
        // Years beyond four digits are written whole, never cut short.
        let far = DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999999Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::days(400);
        assert_eq!(timestamp_micros::format(&far), "+10001-02-03T23:59:59.999999Z");
        let json = serde_json::to_string(&Message {
            created_at: far,
            ..m.clone()
        })
        .unwrap();
        assert!(
            json.contains(r#""timestamp":"+10001-02-03T23:59:59.999999Z""#),
            "{json}"
        );
        let whole = ts.trunc_subsecs(0);
        assert_eq!(timestamp_micros::format(&whole), "2026-11-28T10:00:00.000000Z");
        // The hand-rolled formatter agrees with chrono's over many instants.
        let mut t = DateTime::parse_from_rfc3339("1970-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for _ in 0..2000 {
            t += chrono::Duration::microseconds(987_654_321_987);
            assert_eq!(
                timestamp_micros::format(&t),
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            );
        }
    }

    #[test]
    fn conversation_key_is_symmetric() {
        let k = ConversationKey::new(UserId(9), UserId(2));
        assert_eq!((k.low(), k.high()), (UserId(2), UserId(9)));
        assert_eq!(k, ConversationKey::new(UserId(2), UserId(9)));
    }
}
