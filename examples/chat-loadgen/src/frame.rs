//! Reading notification frames and send answers.
//!
//! A chatcore frame is `{"message": "<id>", "data": {...the message...}}`; the original app's
//! is `{"message": "<id>"}`. Only the id matters to the load generator: sends are matched to
//! frames by id after the run, so a frame that arrives before its POST has answered is no
//! problem.

use serde::Deserialize;

/// What one text frame on `/ws` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A notification about message `id` (with or without `data`).
    Message(i64),
    /// `{"resync": true}`: the server asks the client to reload history.
    Resync,
    /// Anything else (unknown JSON, not JSON); counted, never fatal.
    Other,
}

/// A message id as servers write it: the original app sends it as a string in frames and as
/// a number in REST answers; accept both everywhere.
#[derive(Deserialize)]
#[serde(untagged)]
enum WireId {
    Number(i64),
    Text(String),
}

impl WireId {
    fn get(self) -> Option<i64> {
        match self {
            WireId::Number(id) => Some(id),
            WireId::Text(text) => text.trim().parse().ok(),
        }
    }
}

#[derive(Deserialize)]
struct RawFrame {
    message: Option<WireId>,
    #[serde(default)]
    resync: bool,
}

/// Reads one text frame.
pub fn parse_frame(text: &str) -> Frame {
    match serde_json::from_str::<RawFrame>(text) {
        Ok(RawFrame { resync: true, .. }) => Frame::Resync,
        Ok(RawFrame {
            message: Some(id), ..
        }) => id.get().map_or(Frame::Other, Frame::Message),
        _ => Frame::Other,
    }
}

#[derive(Deserialize)]
struct Created {
    id: WireId,
}

/// The id in the answer to `POST /api/v1/message/` (`{"id": 17, ...}`), if there is one.
pub(crate) fn parse_created_id(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<Created>(body).ok()?.id.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_both_servers() {
        let full = r#"{"message":"9","data":{"id":9,"user":"a","recipient":"b","timestamp":"2026-11-28T10:00:00.123456Z","body":"x"}}"#;
        assert_eq!(parse_frame(full), Frame::Message(9));
        assert_eq!(parse_frame(r#"{"message":"42"}"#), Frame::Message(42));
        assert_eq!(parse_frame(r#"{"message": " 42 "}"#), Frame::Message(42));
        assert_eq!(parse_frame(r#"{"resync": true}"#), Frame::Resync);
        assert_eq!(parse_frame("hello"), Frame::Other);
        assert_eq!(parse_frame(r#"{"message":42}"#), Frame::Message(42));
        assert_eq!(parse_frame(r#"{"resync":true}"#), Frame::Resync);
        assert_eq!(parse_frame(r#"{"resync":false}"#), Frame::Other);
        assert_eq!(parse_frame(r#"{"message":"x1"}"#), Frame::Other);
        assert_eq!(parse_frame(r#"{"message":null}"#), Frame::Other);
        assert_eq!(parse_frame(""), Frame::Other);
        assert_eq!(parse_frame("[1,2]"), Frame::Other);
    }

    #[test]
    fn created_ids() {
        assert_eq!(parse_created_id(br#"{"id":17,"user":"a","body":"x"}"#), Some(17));
        assert_eq!(parse_created_id(br#"{"id":"5"}"#), Some(5));
        assert_eq!(parse_created_id(b"{}"), None);
        assert_eq!(parse_created_id(br#"{"error":"nope"}"#), None);
        assert_eq!(parse_created_id(b"<html>"), None);
    }
}
