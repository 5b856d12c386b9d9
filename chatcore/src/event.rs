//! [`Event`]: everything a user's connections receive, rendered once into the bytes every
//! socket writes; [`Position`]: a durable event's place in its user's stream.
//!
//! # The ordering promise
//! Every durable event (a stored message, a read marker that moved, an edit or a deletion) has
//! a [`Position`]. A store hands positions
//! out so that, for each user, a larger position was committed later, and it tells the
//! publisher, for each participant, the position of that user's previous durable event
//! ([`crate::store::Inserted::sender_previous`]). The notifier carries that `previous` beside
//! the event ([`crate::Delivery::Event`]), so a consumer that has delivered position `p` and
//! receives an event whose `previous` is above `p` knows it is missing something and reads it
//! from storage before going on. That is how `/ws` keeps its promise: it delivers a user's
//! durable events in position order, and once it has delivered `p` it has delivered every
//! event of that user before `p` (after the `since` it started from). Positions of message
//! events are their message ids, so a client that resumes with a message id keeps working.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::{ChangedMessage, ReadMarker};
use crate::{Error, Message, MessageId, Result, Username};

/// A durable event's place in its user's event stream. Positions increase in commit order
/// for each user; [`Position::START`] is before every event.
///
/// ```
/// use chatcore::{MessageId, Position};
/// assert!(Position::START < Position::from(MessageId(1)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub i64);

impl Position {
    /// Before every event: the `previous` of a user's first event.
    pub const START: Position = Position(0);
}

impl From<MessageId> for Position {
    fn from(id: MessageId) -> Self {
        Position(id.0)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Identifies one login session among a user's sessions, so that ending it can close
/// exactly its connections. Derived from the session token by the authenticator; it is not
/// a secret and cannot be turned back into the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub u64);

impl SessionId {
    /// Every session of the user: [`Event::session_ended`] with it closes all of the
    /// user's connections, whatever session (or none) they were opened with, and makes
    /// every node's session cache start over (account removal, "log out everywhere"). An
    /// authenticator never hands out this id for one session.
    pub const ALL: SessionId = SessionId(u64::MAX);
}

/// What kind of thing an [`Event`] says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// A message the user sent or received was stored (durable, has a position).
    Message,
    /// A read marker of one of the user's conversations moved (durable, has a position).
    Read,
    /// A message the user sent or received was edited by its sender (durable, has a
    /// position).
    Edit,
    /// A message the user sent or received was deleted by its sender (durable, has a
    /// position).
    Delete,
    /// One of the user's login sessions ended (logout, expiry, account removal): the
    /// connections opened with it must close. Never forwarded to a client.
    SessionEnded,
    /// Someone the user shares a conversation with is typing to them, or stopped
    /// ([`Event::typing`]). Ephemeral: never stored, never replayed.
    Typing,
    /// Users the user shares a conversation with came online or went offline
    /// ([`Event::presence`]). Ephemeral: never stored, never replayed.
    Presence,
    /// One node's account of who is connected to it, exchanged between the nodes of a
    /// deployment on [`crate::UserId::PRESENCE`] (see [`crate::ChatConfig::presence`]).
    /// Ephemeral, and never forwarded to a client.
    PresenceSync,
}

impl EventKind {
    /// The kind's name on the wire (`"type"` of the frame, and in transports' headers).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Read => "read",
            EventKind::Edit => "edit",
            EventKind::Delete => "delete",
            EventKind::SessionEnded => "session_ended",
            EventKind::Typing => "typing",
            EventKind::Presence => "presence",
            EventKind::PresenceSync => "presence_sync",
        }
    }

    /// The kind named `name` ([`EventKind::as_str`]); `None` for a name this version does
    /// not know.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "message" => Some(EventKind::Message),
            "read" => Some(EventKind::Read),
            "edit" => Some(EventKind::Edit),
            "delete" => Some(EventKind::Delete),
            "session_ended" => Some(EventKind::SessionEnded),
            "typing" => Some(EventKind::Typing),
            "presence" => Some(EventKind::Presence),
            "presence_sync" => Some(EventKind::PresenceSync),
            _ => None,
        }
    }

    /// Whether events of this kind are stored and have a position.
    pub fn is_durable(self) -> bool {
        matches!(
            self,
            EventKind::Message | EventKind::Read | EventKind::Edit | EventKind::Delete
        )
    }
}

/// Something that happened that a user's connections must hear about, rendered once into
/// its JSON frame. Cloning shares the bytes: a transport forwards them and every socket
/// writes them without encoding anything again.
///
/// A message event renders as
/// `{"type":"message","position":17,"message":"17","data":<the message>}` (`message` and
/// `data` are the original app's frame).
///
/// ```
/// use chatcore::{Event, EventKind, Message, MessageId, Position, Username, now_micros};
/// let message = Message {
///     id: MessageId(17),
///     sender: Username::parse("alice").unwrap(),
///     recipient: Username::parse("bob").unwrap(),
///     created_at: now_micros(),
///     body: "hi".into(),
///     edited: None,
///     deleted: false,
/// };
/// let event = Event::message(&message);
/// assert_eq!(event.kind(), EventKind::Message);
/// assert_eq!(event.position(), Some(Position(17)));
/// assert!(event.frame_str().starts_with(r#"{"type":"message","position":17,"message":"17","data":{"#));
/// ```
#[derive(Clone)]
pub struct Event(Arc<Rendered>);

struct Rendered {
    kind: EventKind,
    position: Option<Position>,
    session: Option<SessionId>,
    /// UTF-8 JSON, checked when built.
    frame: Bytes,
    /// When this process's service accepted the send the event reports: what the delivery
    /// latency is measured from. Not part of what the event says, so not compared.
    accepted_at: Option<Instant>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        a.kind == b.kind && a.position == b.position && a.session == b.session && a.frame == b.frame
    }
}

impl Eq for Event {}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("kind", &self.0.kind)
            .field("position", &self.0.position)
            .field("frame", &self.frame_str())
            .finish()
    }
}

/// What a frame says, decoded again ([`Event::decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventData {
    /// A stored message.
    Message(Message),
    /// A read marker that moved.
    Read(ReadMarker),
    /// A message its sender edited.
    Edit(ChangedMessage),
    /// A message its sender deleted (its tombstone).
    Delete(ChangedMessage),
    /// A session ended.
    SessionEnded(SessionId),
    /// `from` is typing (for `expires_in_ms` more milliseconds; 0: they stopped).
    Typing {
        /// Who types.
        from: Username,
        /// How long the indication holds unless renewed; 0 when they stopped.
        expires_in_ms: u64,
    },
    /// Users came online or went offline.
    Presence(Vec<PresenceChange>),
    /// A node's presence account (internal to the service; its frame is not decoded here).
    PresenceSync,
}

/// One user's presence as a `presence` frame reports it ([`Event::presence`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChange {
    /// The user.
    pub user: Username,
    /// Whether at least one of their connections is open anywhere in the deployment.
    pub online: bool,
    /// When they were last online (when their last connection closed), as far as the
    /// deployment remembers since it started; `None` while online, or when unknown.
    #[serde(with = "optional_timestamp")]
    pub last_seen: Option<chrono::DateTime<chrono::Utc>>,
}

mod optional_timestamp {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ts: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match ts {
            Some(ts) => crate::timestamp_micros::serialize(ts, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

#[derive(Serialize, Deserialize)]
struct TypingFrame {
    r#type: String,
    from: Username,
    expires_in_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct PresenceFrame {
    r#type: String,
    users: Vec<PresenceChange>,
}

#[derive(Serialize)]
struct MessageFrame<'a> {
    r#type: &'static str,
    position: Position,
    message: String,
    data: &'a Message,
}

#[derive(Serialize)]
struct ChangeFrame<'a> {
    r#type: &'static str,
    position: Position,
    data: &'a Message,
}

#[derive(Deserialize)]
struct ChangeFrameIn {
    position: Position,
    data: Message,
}

#[derive(Serialize, Deserialize)]
struct ReadFrame {
    r#type: String,
    position: Position,
    reader: Username,
    peer: Username,
    up_to: MessageId,
}

#[derive(Serialize, Deserialize)]
struct SessionEndedFrame {
    r#type: String,
    session: SessionId,
}

#[derive(Deserialize)]
struct AnyFrame {
    r#type: String,
}

#[derive(Deserialize)]
struct MessageFrameIn {
    data: Message,
}

impl Event {
    /// The event "this message was stored", rendered.
    pub fn message(message: &Message) -> Self {
        Self::message_accepted_at(message, None)
    }

    /// [`Event::message`] for a send this process accepted at `accepted_at`
    /// ([`Event::accepted_at`]).
    pub(crate) fn message_accepted_at(message: &Message, accepted_at: Option<Instant>) -> Self {
        let position = Position::from(message.id);
        let frame = MessageFrame {
            r#type: EventKind::Message.as_str(),
            position,
            message: message.id.to_string(),
            data: message,
        };
        let mut event = Self::rendered(EventKind::Message, Some(position), None, &frame);
        if let Some(rendered) = Arc::get_mut(&mut event.0) {
            rendered.accepted_at = accepted_at;
        }
        event
    }

    /// The event "`marker.reader` has read up to `marker.up_to`", rendered as
    /// `{"type":"read","position":P,"reader":"bob","peer":"alice","up_to":17}`.
    ///
    /// ```
    /// use chatcore::store::ReadMarker;
    /// use chatcore::{Event, EventKind, MessageId, Position, Username};
    /// let event = Event::read(&ReadMarker {
    ///     position: Position(18),
    ///     reader: Username::parse("bob").unwrap(),
    ///     peer: Username::parse("alice").unwrap(),
    ///     up_to: MessageId(17),
    /// });
    /// assert_eq!(event.kind(), EventKind::Read);
    /// assert_eq!(event.frame_str(), r#"{"type":"read","position":18,"reader":"bob","peer":"alice","up_to":17}"#);
    /// ```
    pub fn read(marker: &ReadMarker) -> Self {
        let frame = ReadFrame {
            r#type: EventKind::Read.as_str().to_owned(),
            position: marker.position,
            reader: marker.reader.clone(),
            peer: marker.peer.clone(),
            up_to: marker.up_to,
        };
        Self::rendered(EventKind::Read, Some(marker.position), None, &frame)
    }

    /// The event "the sender edited this message", rendered as
    /// `{"type":"edit","position":P,"data":<the message as edited>}`.
    ///
    /// ```
    /// use chatcore::{ChangedMessage, Event, EventKind, Message, MessageId, Position, Username, now_micros};
    /// let mut message = Message::new(MessageId(17), Username::parse("alice").unwrap(),
    ///     Username::parse("bob").unwrap(), now_micros(), "hi!".into());
    /// message.edited = Some(now_micros());
    /// let event = Event::edit(&ChangedMessage { position: Position(20), message });
    /// assert_eq!(event.kind(), EventKind::Edit);
    /// assert!(event.frame_str().starts_with(r#"{"type":"edit","position":20,"data":{"id":17,"#));
    /// ```
    pub fn edit(changed: &ChangedMessage) -> Self {
        Self::change(EventKind::Edit, changed)
    }

    /// The event "the sender deleted this message", rendered as
    /// `{"type":"delete","position":P,"data":<the tombstone>}`.
    pub fn delete(changed: &ChangedMessage) -> Self {
        Self::change(EventKind::Delete, changed)
    }

    fn change(kind: EventKind, changed: &ChangedMessage) -> Self {
        let frame = ChangeFrame {
            r#type: kind.as_str(),
            position: changed.position,
            data: &changed.message,
        };
        Self::rendered(kind, Some(changed.position), None, &frame)
    }

    /// The event "session `session` ended": its connections close.
    pub fn session_ended(session: SessionId) -> Self {
        let frame = SessionEndedFrame {
            r#type: EventKind::SessionEnded.as_str().to_owned(),
            session,
        };
        Self::rendered(EventKind::SessionEnded, None, Some(session), &frame)
    }

    /// The event "`from` is typing": `{"type":"typing","from":"alice","expires_in_ms":6000}`.
    /// The indication holds for `expires_in_ms` unless renewed; `0` says `from` stopped.
    ///
    /// ```
    /// use chatcore::{Event, EventKind, Username};
    /// let event = Event::typing(&Username::parse("alice").unwrap(), 6000);
    /// assert_eq!(event.kind(), EventKind::Typing);
    /// assert_eq!(event.position(), None);
    /// assert_eq!(event.frame_str(), r#"{"type":"typing","from":"alice","expires_in_ms":6000}"#);
    /// ```
    pub fn typing(from: &Username, expires_in_ms: u64) -> Self {
        let frame = TypingFrame {
            r#type: EventKind::Typing.as_str().to_owned(),
            from: from.clone(),
            expires_in_ms,
        };
        Self::rendered(EventKind::Typing, None, None, &frame)
    }

    /// The event "these users came online or went offline":
    /// `{"type":"presence","users":[{"user":"bob","online":false,"last_seen":"2026-11-28T10:00:00.123456Z"}]}`.
    ///
    /// ```
    /// use chatcore::{Event, EventKind, PresenceChange, Username};
    /// let change = PresenceChange { user: Username::parse("bob").unwrap(), online: true, last_seen: None };
    /// let event = Event::presence(&[change]);
    /// assert_eq!(event.kind(), EventKind::Presence);
    /// assert_eq!(event.frame_str(), r#"{"type":"presence","users":[{"user":"bob","online":true,"last_seen":null}]}"#);
    /// ```
    pub fn presence(changes: &[PresenceChange]) -> Self {
        let frame = PresenceFrame {
            r#type: EventKind::Presence.as_str().to_owned(),
            users: changes.to_vec(),
        };
        Self::rendered(EventKind::Presence, None, None, &frame)
    }

    /// An ephemeral event of `kind` around a frame rendered elsewhere (checked to be UTF-8
    /// by construction: it is a `String`).
    pub(crate) fn ephemeral(kind: EventKind, frame: String) -> Self {
        Event(Arc::new(Rendered {
            kind,
            position: None,
            session: None,
            frame: Bytes::from(frame),
            accepted_at: None,
        }))
    }

    fn rendered(
        kind: EventKind,
        position: Option<Position>,
        session: Option<SessionId>,
        frame: &impl Serialize,
    ) -> Self {
        // Every field of every frame is a string, an integer or a `Message`, whose fields are
        // strings and integers: serializing cannot fail.
        let frame = serde_json::to_vec(frame).expect("event frames always serialize");
        Event(Arc::new(Rendered {
            kind,
            position,
            session,
            frame: Bytes::from(frame),
            accepted_at: None,
        }))
    }

    /// Rebuilds an event from the parts a transport carried: its kind, its position and
    /// its frame, unchanged. The frame is checked to be UTF-8 (and, for a session event,
    /// decoded to learn which session), never re-encoded.
    ///
    /// Errors: [`Error::Invalid`] when the frame is not UTF-8, a durable kind has no
    /// position, or a session event's frame does not name a session.
    pub fn from_frame(kind: EventKind, position: Option<Position>, frame: Bytes) -> Result<Self> {
        if std::str::from_utf8(&frame).is_err() {
            return Err(Error::invalid("event frame is not UTF-8"));
        }
        if kind.is_durable() != position.is_some() {
            return Err(Error::invalid(format!(
                "a {} event {} a position",
                kind.as_str(),
                if kind.is_durable() { "needs" } else { "has no" }
            )));
        }
        let session = match kind {
            EventKind::SessionEnded => Some(
                serde_json::from_slice::<SessionEndedFrame>(&frame)
                    .map_err(|e| Error::invalid(format!("bad session_ended frame: {e}")))?
                    .session,
            ),
            _ => None,
        };
        Ok(Event(Arc::new(Rendered {
            kind,
            position,
            session,
            frame,
            accepted_at: None,
        })))
    }

    /// What kind of event this is.
    pub fn kind(&self) -> EventKind {
        self.0.kind
    }

    /// The event's position, for durable events.
    pub fn position(&self) -> Option<Position> {
        self.0.position
    }

    /// The session a [`EventKind::SessionEnded`] event ends.
    pub fn session(&self) -> Option<SessionId> {
        self.0.session
    }

    /// When [`crate::ChatService::send`] on this process accepted the send this message event
    /// reports, for measuring how long it took to reach a socket
    /// ([`crate::metrics::WS_DELIVERY_SECONDS`]). `None` for events built elsewhere: read
    /// from storage, rebuilt from a transport's frame (another node's send), or made by
    /// [`Event::message`].
    pub fn accepted_at(&self) -> Option<Instant> {
        self.0.accepted_at
    }

    /// The rendered frame: UTF-8 JSON, shared by every clone.
    pub fn frame(&self) -> &Bytes {
        &self.0.frame
    }

    /// The rendered frame as text.
    pub fn frame_str(&self) -> &str {
        // Checked to be UTF-8 when the event was built.
        std::str::from_utf8(&self.0.frame).unwrap_or_default()
    }

    /// Decodes the frame (costs a JSON parse; sockets never need it).
    pub fn decode(&self) -> Result<EventData> {
        let bad = |e: serde_json::Error| Error::invalid(format!("undecodable event frame: {e}"));
        let any: AnyFrame = serde_json::from_slice(&self.0.frame).map_err(bad)?;
        match EventKind::parse(&any.r#type) {
            Some(EventKind::Message) => Ok(EventData::Message(
                serde_json::from_slice::<MessageFrameIn>(&self.0.frame)
                    .map_err(bad)?
                    .data,
            )),
            Some(EventKind::Read) => {
                let frame: ReadFrame = serde_json::from_slice(&self.0.frame).map_err(bad)?;
                Ok(EventData::Read(ReadMarker {
                    position: frame.position,
                    reader: frame.reader,
                    peer: frame.peer,
                    up_to: frame.up_to,
                }))
            }
            Some(kind @ (EventKind::Edit | EventKind::Delete)) => {
                let frame: ChangeFrameIn = serde_json::from_slice(&self.0.frame).map_err(bad)?;
                let changed = ChangedMessage {
                    position: frame.position,
                    message: frame.data,
                };
                Ok(if kind == EventKind::Edit {
                    EventData::Edit(changed)
                } else {
                    EventData::Delete(changed)
                })
            }
            Some(EventKind::SessionEnded) => Ok(EventData::SessionEnded(
                serde_json::from_slice::<SessionEndedFrame>(&self.0.frame)
                    .map_err(bad)?
                    .session,
            )),
            Some(EventKind::Typing) => {
                let frame: TypingFrame = serde_json::from_slice(&self.0.frame).map_err(bad)?;
                Ok(EventData::Typing {
                    from: frame.from,
                    expires_in_ms: frame.expires_in_ms,
                })
            }
            Some(EventKind::Presence) => Ok(EventData::Presence(
                serde_json::from_slice::<PresenceFrame>(&self.0.frame)
                    .map_err(bad)?
                    .users,
            )),
            Some(EventKind::PresenceSync) => Ok(EventData::PresenceSync),
            None => Err(Error::invalid(format!("unknown event type {:?}", any.r#type))),
        }
    }

    /// The message, for a message event (decodes the frame).
    pub fn message_data(&self) -> Option<Message> {
        match self.decode() {
            Ok(EventData::Message(message)) => Some(message),
            _ => None,
        }
    }
}

/// The frame that tells a client to reload its state: it missed more than a catch-up
/// replays. `{"type":"resync","resync":true}` (`resync` is the original field).
pub const RESYNC_FRAME: &str = r#"{"type":"resync","resync":true}"#;

#[cfg(test)]
mod tests {
    #[test]
    fn ephemeral_frames_round_trip() {
        let alice = Username::parse("alice").unwrap();
        let typing = Event::typing(&alice, 0);
        assert_eq!(
            typing.decode().unwrap(),
            EventData::Typing {
                from: alice.clone(),
                expires_in_ms: 0
            }
        );
        let again = Event::from_frame(EventKind::Typing, None, typing.frame().clone()).unwrap();
        assert_eq!(again, typing);
        let seen = now_micros();
        let changes = vec![
            PresenceChange {
                user: alice,
                online: false,
                last_seen: Some(seen),
            },
            PresenceChange {
                user: Username::parse("bob").unwrap(),
                online: true,
                last_seen: None,
            },
        ];
        let presence = Event::presence(&changes);
        assert_eq!(presence.decode().unwrap(), EventData::Presence(changes));
        assert!(Event::from_frame(EventKind::Presence, Some(Position(1)), presence.frame().clone()).is_err());
    }

    use super::*;
    use crate::{Username, now_micros};

    fn message(id: i64) -> Message {
        Message {
            id: MessageId(id),
            sender: Username::parse("alice").unwrap(),
            recipient: Username::parse("bob").unwrap(),
            created_at: now_micros(),
            body: "hi \"there\"".into(),
            edited: None,
            deleted: false,
        }
    }

    #[test]
    fn message_frame_keeps_the_original_fields_and_adds_type_and_position() {
        let m = message(42);
        let event = Event::message(&m);
        let value: serde_json::Value = serde_json::from_str(event.frame_str()).unwrap();
        assert_eq!(value["type"], "message");
        assert_eq!(value["position"], 42);
        assert_eq!(value["message"], "42");
        assert_eq!(value["data"]["body"], "hi \"there\"");
        assert_eq!(value["data"]["user"], "alice");
        assert_eq!(event.decode().unwrap(), EventData::Message(m));
    }

    #[test]
    fn from_frame_shares_the_bytes_and_checks_them() {
        let event = Event::message(&message(7));
        let again = Event::from_frame(EventKind::Message, event.position(), event.frame().clone()).unwrap();
        assert_eq!(again.frame().as_ptr(), event.frame().as_ptr());
        assert_eq!(again, event);
        assert!(Event::from_frame(EventKind::Message, None, event.frame().clone()).is_err());
        assert!(
            Event::from_frame(EventKind::Message, Some(Position(7)), Bytes::from_static(b"\xff")).is_err()
        );
        let ended = Event::session_ended(SessionId(99));
        let again = Event::from_frame(EventKind::SessionEnded, None, ended.frame().clone()).unwrap();
        assert_eq!(again.session(), Some(SessionId(99)));
        assert_eq!(again.decode().unwrap(), EventData::SessionEnded(SessionId(99)));
        assert!(Event::from_frame(EventKind::SessionEnded, None, Bytes::from_static(b"{}")).is_err());
    }

    #[test]
    fn read_frame_round_trips() {
        let marker = ReadMarker {
            position: Position(9),
            reader: Username::parse("bob").unwrap(),
            peer: Username::parse("alice").unwrap(),
            up_to: MessageId(8),
        };
        let event = Event::read(&marker);
        assert_eq!(event.position(), Some(Position(9)));
        assert_eq!(event.decode().unwrap(), EventData::Read(marker));
        let again = Event::from_frame(EventKind::Read, Some(Position(9)), event.frame().clone()).unwrap();
        assert_eq!(again, event);
    }

    #[test]
    fn change_frames_round_trip() {
        let mut edited = message(5);
        edited.edited = Some(now_micros());
        let changed = ChangedMessage {
            position: Position(12),
            message: edited,
        };
        let event = Event::edit(&changed);
        let value: serde_json::Value = serde_json::from_str(event.frame_str()).unwrap();
        assert_eq!(
            (value["type"].as_str(), value["position"].as_i64()),
            (Some("edit"), Some(12))
        );
        assert_eq!(value["data"]["id"], 5);
        assert_eq!(event.decode().unwrap(), EventData::Edit(changed.clone()));
        let gone = ChangedMessage {
            position: Position(13),
            message: changed.message.into_tombstone(),
        };
        let event = Event::delete(&gone);
        let value: serde_json::Value = serde_json::from_str(event.frame_str()).unwrap();
        assert_eq!(value["type"], "delete");
        assert_eq!(
            (value["data"]["body"].as_str(), value["data"]["deleted"].as_bool()),
            (Some(""), Some(true))
        );
        let again = Event::from_frame(EventKind::Delete, Some(Position(13)), event.frame().clone()).unwrap();
        assert_eq!(again.decode().unwrap(), EventData::Delete(gone));
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in [
            EventKind::Message,
            EventKind::Read,
            EventKind::Edit,
            EventKind::Delete,
            EventKind::SessionEnded,
            EventKind::Typing,
            EventKind::Presence,
            EventKind::PresenceSync,
        ] {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("nope"), None);
        let value: serde_json::Value = serde_json::from_str(RESYNC_FRAME).unwrap();
        assert_eq!(
            (value["type"].as_str(), value["resync"].as_bool()),
            (Some("resync"), Some(true))
        );
    }
}
