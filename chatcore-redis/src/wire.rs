//! The payload on a user's channel: a one-line text header, then the event's frame bytes,
//! unchanged.
//!
//! ```text
//! v1 <node> <kind> <position> <previous>\n<frame>
//! v1 3f2a9c0d11e4b5a7 message 17 12\n{"type":"message","position":17,...}
//! v1 3f2a9c0d11e4b5a7 session_ended - -\n{"type":"session_ended","session":99}
//! v1 3f2a9c0d11e4b5a7 gap - -\n
//! ```
//!
//! - `node`: the publishing node's id, 16 lowercase hex digits, random per
//!   [`crate::RedisNotifier`]; a node ignores what it published itself (it delivered it
//!   locally already).
//! - `kind`: [`EventKind::as_str`], or `gap`: "this user may have missed events" (the
//!   notice a node publishes after a failed publish), which carries no frame.
//! - `position`: the event's [`Position`], `-` for an event without one.
//! - `previous`: this channel's user's previous durable position
//!   ([`chatcore::Recipient::previous`]), `-` for none.
//! - `frame`: everything after the first newline, [`Event::frame`] as published. The
//!   receiver copies it once into a [`Bytes`] and never decodes it (except a session event,
//!   whose session id [`Event::from_frame`] reads).
//!
//! A header this version cannot read (another version, an unknown kind, a malformed field)
//! is delivered as a [`chatcore::Delivery::Gap`]: nothing is silently lost.

use std::fmt;

use bytes::Bytes;
use chatcore::{Event, EventKind, Position};
use redis::{RedisWrite, ToRedisArgs};

/// The header's first field.
const VERSION: &str = "v1";
/// The kind of a gap notice.
const GAP: &str = "gap";

/// A node's id on the wire: random, chosen when the notifier connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeId(pub(crate) u64);

impl NodeId {
    pub(crate) fn random() -> Self {
        NodeId(rand::random())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One payload to `PUBLISH`, written straight into the command's buffer (the frame is
/// copied once, there, and never encoded again).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Payload<'a> {
    node: NodeId,
    kind: &'static str,
    position: Option<Position>,
    previous: Option<Position>,
    frame: &'a [u8],
}

impl<'a> Payload<'a> {
    /// `event`, for a user whose previous durable position is `previous`.
    pub(crate) fn event(node: NodeId, event: &'a Event, previous: Option<Position>) -> Self {
        Self {
            node,
            kind: event.kind().as_str(),
            position: event.position(),
            previous,
            frame: event.frame(),
        }
    }

    /// "This user may have missed events published by `node`."
    pub(crate) fn gap(node: NodeId) -> Payload<'static> {
        Payload {
            node,
            kind: GAP,
            position: None,
            previous: None,
            frame: &[],
        }
    }

    fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        write!(out, "{VERSION} {} {} ", self.node, self.kind)?;
        write_position(out, self.position)?;
        out.write_all(b" ")?;
        write_position(out, self.previous)?;
        out.write_all(b"\n")?;
        out.write_all(self.frame)
    }

    #[cfg(test)]
    fn to_vec(self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).unwrap();
        out
    }
}

fn write_position(out: &mut impl std::io::Write, position: Option<Position>) -> std::io::Result<()> {
    match position {
        Some(position) => write!(out, "{position}"),
        None => out.write_all(b"-"),
    }
}

impl ToRedisArgs for Payload<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        // The writer appends to the command's buffer in memory: it cannot fail.
        let _ = self.write_to(&mut out.writer_for_next_arg());
    }
}

/// What a payload says, once its header was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// An event for the channel's user.
    Event {
        event: Event,
        previous: Option<Position>,
    },
    /// The channel's user may have missed events.
    Gap,
}

/// A payload whose header names its publisher.
#[derive(Debug)]
pub(crate) struct Received {
    /// Who published it.
    pub(crate) node: NodeId,
    /// What it says, or why it could not be read.
    pub(crate) notice: Result<Notice, String>,
}

/// Reads a payload. `Err` when not even the publisher can be read from the header.
pub(crate) fn decode(payload: &[u8]) -> Result<Received, String> {
    let newline = payload.iter().position(|&b| b == b'\n').ok_or("no header line")?;
    let header =
        std::str::from_utf8(&payload[..newline]).map_err(|_| "the header is not UTF-8".to_owned())?;
    let mut fields = header.split(' ');
    let (Some(version), Some(node), Some(kind), Some(position), Some(previous), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(format!("the header {header:?} does not have five fields"));
    };
    if version != VERSION {
        return Err(format!("unknown payload version {version:?}"));
    }
    if node.len() != 16 {
        return Err(format!("bad node id {node:?}"));
    }
    let node = NodeId(u64::from_str_radix(node, 16).map_err(|_| format!("bad node id {node:?}"))?);
    let notice = notice(kind, position, previous, &payload[newline + 1..]);
    Ok(Received { node, notice })
}

fn notice(kind: &str, position: &str, previous: &str, frame: &[u8]) -> Result<Notice, String> {
    if kind == GAP {
        return Ok(Notice::Gap);
    }
    let kind = EventKind::parse(kind).ok_or_else(|| format!("unknown event kind {kind:?}"))?;
    let position = parse_position(position)?;
    let previous = parse_position(previous)?;
    let event = Event::from_frame(kind, position, Bytes::copy_from_slice(frame))
        .map_err(|error| error.to_string())?;
    Ok(Notice::Event { event, previous })
}

fn parse_position(field: &str) -> Result<Option<Position>, String> {
    if field == "-" {
        return Ok(None);
    }
    field
        .parse()
        .map(|p| Some(Position(p)))
        .map_err(|_| format!("bad position {field:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatcore::{Message, MessageId, SessionId, Username, now_micros};

    fn message(id: i64, body: &str) -> Event {
        Event::message(&Message {
            id: MessageId(id),
            sender: Username::parse("alice").unwrap(),
            recipient: Username::parse("bob").unwrap(),
            created_at: now_micros(),
            body: body.into(),
            edited: None,
            deleted: false,
        })
    }

    #[test]
    fn events_round_trip_with_their_frame_unchanged() {
        let node = NodeId(0x3f2a_9c0d_11e4_b5a7);
        let event = message(17, "hi \"there\"\nnew line ✓ 🦀");
        let payload = Payload::event(node, &event, Some(Position(12))).to_vec();
        let header = "v1 3f2a9c0d11e4b5a7 message 17 12\n";
        assert!(payload.starts_with(header.as_bytes()));
        assert_eq!(&payload[header.len()..], &event.frame()[..]);

        let received = decode(&payload).unwrap();
        assert_eq!(received.node, node);
        assert_eq!(
            received.notice,
            Ok(Notice::Event {
                event: event.clone(),
                previous: Some(Position(12))
            })
        );

        let ended = Event::session_ended(SessionId(99));
        let payload = Payload::event(NodeId(1), &ended, None).to_vec();
        assert!(payload.starts_with(b"v1 0000000000000001 session_ended - -\n{"));
        let Ok(Notice::Event { event, previous }) = decode(&payload).unwrap().notice else {
            panic!("not an event")
        };
        assert_eq!((event.session(), previous), (Some(SessionId(99)), None));
        assert_eq!(event, ended);

        // A frame may hold newlines and anything else: only the first newline ends the header.
        let raw = Event::from_frame(
            EventKind::Message,
            Some(Position(-3)),
            Bytes::from_static(b"{\n \"type\": \"message\" }\n\n"),
        )
        .unwrap();
        let payload = Payload::event(NodeId(u64::MAX), &raw, Some(Position::START)).to_vec();
        let Ok(Notice::Event { event, previous }) = decode(&payload).unwrap().notice else {
            panic!("not an event")
        };
        assert_eq!(event.frame(), raw.frame());
        assert_eq!(
            (event.position(), previous),
            (Some(Position(-3)), Some(Position::START))
        );
    }

    #[test]
    fn gap_notices_round_trip() {
        let payload = Payload::gap(NodeId(0xab)).to_vec();
        assert_eq!(payload, b"v1 00000000000000ab gap - -\n");
        let received = decode(&payload).unwrap();
        assert_eq!((received.node, received.notice), (NodeId(0xab), Ok(Notice::Gap)));
    }

    #[test]
    fn unreadable_payloads_are_errors() {
        // Not even a publisher: the old JSON payloads, junk, a header cut short.
        for junk in [
            &b"{\"id\":1}"[..],
            b"",
            b"v1 00000000000000ab gap -\n",
            b"v2 00000000000000ab gap - -\n",
            b"v1 zz gap - -\n",
            b"v1 00000000000000zz gap - -\n",
            b"v1 00000000000000ab gap - - x\n",
            b"v1 \xff\xfe gap - -\n",
        ] {
            assert!(decode(junk).is_err(), "{:?}", String::from_utf8_lossy(junk));
        }
        // The publisher is known, the event is not.
        for junk in [
            &b"v1 00000000000000ab reaction 1 0\n{}"[..],
            b"v1 00000000000000ab message x 0\n{}",
            b"v1 00000000000000ab message 1 x\n{}",
            b"v1 00000000000000ab message - 0\n{}",
            b"v1 00000000000000ab message 1 0\n\xff",
            b"v1 00000000000000ab session_ended - -\n{}",
        ] {
            let received = decode(junk).unwrap();
            assert_eq!(received.node, NodeId(0xab));
            assert!(received.notice.is_err(), "{:?}", String::from_utf8_lossy(junk));
        }
    }
}
