//! The `NOTIFY` payload: a one-line text header, then the event's frame, unchanged.
//!
//! ```text
//! v1 <node> <kind> <position> <user>:<previous>[,<user>:<previous>...] <where>\n<frame>
//! v1 3f2a9c0d11e4b5a7 message 17 4:12,9:15 =\n{"type":"message","position":17,...}
//! v1 3f2a9c0d11e4b5a7 message 18 4:17,9:18 @5521\n
//! v1 3f2a9c0d11e4b5a7 gap - 4:-,9:- =\n
//! ```
//!
//! - `node`: the publishing node's id, 16 lowercase hex digits, random per
//!   [`crate::PgNotifier`]; a node ignores what it published itself (it delivered it
//!   locally already).
//! - `kind`: [`EventKind::as_str`], or `gap`: "these users may have missed events" (the
//!   notice a node publishes after a failed publish), which carries no frame.
//! - `position`: the event's [`Position`], `-` for none.
//! - the recipients: each user once, with their previous durable position (`-` for none).
//!   One channel carries every user's events, so the users travel in the header.
//! - `where`: `=` when the frame follows the header; `@<id>` when it was too large for a
//!   `NOTIFY` (PostgreSQL refuses 8000 bytes or more) and waits in row `<id>` of
//!   `chatcore_notify_payloads`, read back once by each node that has a subscriber for it.
//!
//! A header this version cannot read is delivered as a [`chatcore::Delivery::Gap`] to the
//! users it names, or to every local subscription when not even those can be read.

use std::fmt::{self, Write as _};

use chatcore::{EventKind, Position, UserId};

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

/// Writes the header (without `where` and the newline) of an event or gap notice.
pub(crate) fn header(
    node: NodeId,
    kind: &str,
    position: Option<Position>,
    recipients: &[(UserId, Option<Position>)],
) -> String {
    let mut out = String::with_capacity(48 + 24 * recipients.len());
    let _ = write!(out, "{VERSION} {node} {kind} ");
    write_position(&mut out, position);
    out.push(' ');
    for (n, (user, previous)) in recipients.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}:", user.0);
        write_position(&mut out, *previous);
    }
    out
}

/// An inline payload: the header, `=`, and the frame.
pub(crate) fn inline(header: &str, frame: &str) -> String {
    let mut out = String::with_capacity(header.len() + 3 + frame.len());
    out.push_str(header);
    out.push_str(" =\n");
    out.push_str(frame);
    out
}

/// The prefix of a payload by reference; the row id and a newline follow.
pub(crate) fn reference_prefix(header: &str) -> String {
    format!("{header} @")
}

/// A gap notice for `users`.
pub(crate) fn gap(node: NodeId, users: &[UserId]) -> String {
    let recipients: Vec<_> = users.iter().map(|&user| (user, None)).collect();
    inline(&header(node, GAP, None, &recipients), "")
}

fn write_position(out: &mut String, position: Option<Position>) {
    match position {
        Some(position) => {
            let _ = write!(out, "{position}");
        }
        None => out.push('-'),
    }
}

/// What a payload says, once its header was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    /// An event whose frame followed the header.
    Inline {
        kind: EventKind,
        position: Option<Position>,
        frame: &'a str,
    },
    /// An event whose frame waits in `chatcore_notify_payloads`.
    Reference {
        kind: EventKind,
        position: Option<Position>,
        id: i64,
    },
    /// The recipients may have missed events.
    Gap,
}

/// A payload whose header names its publisher and recipients.
#[derive(Debug)]
pub(crate) struct Received<'a> {
    pub(crate) node: NodeId,
    pub(crate) recipients: Vec<(UserId, Option<Position>)>,
    /// What it says, or why it could not be read.
    pub(crate) body: Result<Body<'a>, String>,
}

/// Reads a payload. `Err` when not even the publisher and recipients can be read.
pub(crate) fn decode(payload: &str) -> Result<Received<'_>, String> {
    let (header, frame) = payload.split_once('\n').ok_or("no header line")?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [version, node, kind, position, recipients, place] = fields[..] else {
        return Err(format!("the header {header:?} does not have six fields"));
    };
    if version != VERSION {
        return Err(format!("unknown payload version {version:?}"));
    }
    if node.len() != 16 {
        return Err(format!("bad node id {node:?}"));
    }
    let node = NodeId(u64::from_str_radix(node, 16).map_err(|_| format!("bad node id {node:?}"))?);
    let mut users = Vec::new();
    for entry in recipients.split(',') {
        let (user, previous) = entry
            .split_once(':')
            .ok_or_else(|| format!("bad recipient {entry:?}"))?;
        let user = user.parse().map_err(|_| format!("bad user {user:?}"))?;
        users.push((UserId(user), parse_position(previous)?));
    }
    let body = body(kind, position, place, frame);
    Ok(Received {
        node,
        recipients: users,
        body,
    })
}

fn body<'a>(kind: &str, position: &str, place: &str, frame: &'a str) -> Result<Body<'a>, String> {
    if kind == GAP {
        return Ok(Body::Gap);
    }
    let kind = EventKind::parse(kind).ok_or_else(|| format!("unknown event kind {kind:?}"))?;
    let position = parse_position(position)?;
    if place == "=" {
        return Ok(Body::Inline {
            kind,
            position,
            frame,
        });
    }
    let id = place
        .strip_prefix('@')
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| format!("bad payload place {place:?}"))?;
    Ok(Body::Reference { kind, position, id })
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

    const NODE: NodeId = NodeId(0x3f2a_9c0d_11e4_b5a7);

    #[test]
    fn inline_events_round_trip_with_their_frame_unchanged() {
        let frame = "{\"type\":\"message\",\"body\":\"hi\\nthere ✓ 🦀\"}\nsecond line";
        let recipients = [(UserId(4), Some(Position(12))), (UserId(9), None)];
        let payload = inline(&header(NODE, "message", Some(Position(17)), &recipients), frame);
        assert!(
            payload.starts_with("v1 3f2a9c0d11e4b5a7 message 17 4:12,9:- =\n"),
            "{payload}"
        );
        let received = decode(&payload).unwrap();
        assert_eq!(received.node, NODE);
        assert_eq!(received.recipients, recipients);
        assert_eq!(
            received.body,
            Ok(Body::Inline {
                kind: EventKind::Message,
                position: Some(Position(17)),
                frame
            })
        );
    }

    #[test]
    fn references_and_gaps_round_trip() {
        let recipients = [(UserId(4), Some(Position(0)))];
        let payload = format!(
            "{}5521\n",
            reference_prefix(&header(NODE, "message", Some(Position(18)), &recipients))
        );
        let received = decode(&payload).unwrap();
        assert_eq!(
            received.body,
            Ok(Body::Reference {
                kind: EventKind::Message,
                position: Some(Position(18)),
                id: 5521
            })
        );
        let notice = gap(NODE, &[UserId(4), UserId(9)]);
        let received = decode(&notice).unwrap();
        assert_eq!(received.body, Ok(Body::Gap));
        assert_eq!(received.recipients, [(UserId(4), None), (UserId(9), None)]);
    }

    #[test]
    fn unreadable_payloads_are_errors_not_panics() {
        for bad in [
            "",
            "no newline",
            "v2 3f2a9c0d11e4b5a7 message 1 4:0 =\n{}",
            "v1 xyz message 1 4:0 =\n{}",
            "v1 3f2a9c0d11e4b5a7 message 1 4 =\n{}",
            "v1 3f2a9c0d11e4b5a7 message 1 a:0 =\n{}",
            "v1 3f2a9c0d11e4b5a7 message 1 4:0\n{}",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        // The recipients are readable, the rest is not: a gap for them.
        for bad in [
            "v1 3f2a9c0d11e4b5a7 shout 1 4:0 =\n{}",
            "v1 3f2a9c0d11e4b5a7 message x 4:0 =\n{}",
            "v1 3f2a9c0d11e4b5a7 message 1 4:0 @x\n",
        ] {
            let received = decode(bad).unwrap();
            assert_eq!(received.recipients, [(UserId(4), Some(Position(0)))]);
            assert!(received.body.is_err(), "{bad:?}");
        }
    }
}
