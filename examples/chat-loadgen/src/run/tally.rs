//! Notification accounting: every connection of the sender and of the recipient must get each
//! message exactly once. No I/O, so it is unit-tested on its own.

use std::collections::HashMap;
use std::time::Duration;

use crate::report::{Latency, NotificationReport};

/// One successful send, as its sender recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SendRecord {
    /// The message id the server answered with.
    pub(super) id: i64,
    /// When the POST started (scheduled start in open loop), nanoseconds after the epoch.
    pub(super) start_ns: u64,
    /// Index of the sending user.
    pub(super) sender: u32,
    /// Index of the recipient.
    pub(super) recipient: u32,
}

/// What one connection saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ConnectionLog {
    /// Index of the connection's user.
    pub(super) user: u32,
    /// `(message id, arrival in nanoseconds after the epoch)` for each notification frame.
    pub(super) frames: Vec<(i64, u64)>,
    /// `{"resync": true}` frames.
    pub(super) resyncs: u64,
    /// Frames that were not notifications.
    pub(super) other: u64,
    /// Whether the connection closed or failed before it was told to stop.
    pub(super) dropped: bool,
}

/// How many frames a message from `sender` to `recipient` calls for: one per connection of
/// each (one per connection when they are the same user).
pub(super) fn frames_for(conns_per_user: &[u32], sender: u32, recipient: u32) -> u64 {
    let conns = |user: u32| u64::from(conns_per_user.get(user as usize).copied().unwrap_or(0));
    if sender == recipient {
        conns(sender)
    } else {
        conns(sender) + conns(recipient)
    }
}

/// Matches frames to sends. Sorts each connection's frames by id in place (stable, so the
/// first arrival of an id stays first).
pub(super) fn tally(
    records: &[SendRecord],
    connections: &mut [ConnectionLog],
    conns_per_user: &[u32],
) -> NotificationReport {
    let by_id: HashMap<i64, &SendRecord> = records.iter().map(|r| (r.id, r)).collect();
    let expected = records
        .iter()
        .map(|r| frames_for(conns_per_user, r.sender, r.recipient))
        .sum();
    let mut report = NotificationReport {
        expected,
        ..Default::default()
    };
    let mut latency = Latency::new();
    for connection in connections {
        report.resyncs += connection.resyncs;
        report.other_frames += connection.other;
        report.connections_dropped += u64::from(connection.dropped);
        // Stable: the first arrival of an id stays first.
        connection.frames.sort_by_key(|&(id, _)| id);
        let mut previous = None;
        for &(id, arrival_ns) in &connection.frames {
            if previous == Some(id) {
                report.duplicated += 1;
                continue;
            }
            previous = Some(id);
            match by_id.get(&id) {
                Some(send) if send.sender == connection.user || send.recipient == connection.user => {
                    report.received += 1;
                    if send.recipient == connection.user {
                        latency.record(Duration::from_nanos(arrival_ns.saturating_sub(send.start_ns)));
                    }
                }
                _ => report.unexpected += 1,
            }
        }
    }
    report.lost = report.expected.saturating_sub(report.received);
    report.latency = latency.summary();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(id: i64, start_ns: u64, sender: u32, recipient: u32) -> SendRecord {
        SendRecord {
            id,
            start_ns,
            sender,
            recipient,
        }
    }

    fn conn(user: u32, frames: &[(i64, u64)]) -> ConnectionLog {
        ConnectionLog {
            user,
            frames: frames.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn exact_delivery_is_clean() {
        // Users 0 and 1 have two connections each, user 2 one.
        let per_user = [2, 2, 1];
        let sends = [send(1, 0, 0, 1), send(2, 1_000_000, 2, 2)];
        let mut conns = [
            conn(0, &[(1, 500_000)]),
            conn(0, &[(1, 600_000)]),
            conn(1, &[(1, 2_000_000)]),
            conn(1, &[(1, 3_000_000)]),
            conn(2, &[(2, 4_000_000)]),
        ];
        let r = tally(&sends, &mut conns, &per_user);
        assert_eq!(
            (r.expected, r.received, r.lost, r.duplicated, r.unexpected),
            (5, 5, 0, 0, 0)
        );
        // Latency only at the recipient's connections: 2 ms, 3 ms, and the self-send's 3 ms.
        assert_eq!(r.latency.count, 3);
        assert!((r.latency.max_ms - 3.0).abs() < 0.01, "{:?}", r.latency);
        assert!((r.latency.p50_ms - 3.0).abs() < 0.01, "{:?}", r.latency);
    }

    #[test]
    fn lost_duplicated_and_unexpected_are_counted() {
        let per_user = [1, 2];
        let sends = [send(10, 0, 0, 1), send(11, 0, 1, 0)];
        let mut dropped = conn(1, &[(10, 5), (10, 6), (99, 7)]);
        dropped.dropped = true;
        dropped.resyncs = 1;
        let mut conns = [
            conn(0, &[(10, 1), (11, 2), (11, 3)]),
            dropped,
            conn(1, &[(11, 4), (10, 2)]),
        ];
        let r = tally(&sends, &mut conns, &per_user);
        assert_eq!(r.expected, 6);
        // Missing: message 11 on the dropped connection.
        assert_eq!((r.received, r.lost), (5, 1));
        assert_eq!(r.duplicated, 2);
        assert_eq!(r.unexpected, 1);
        assert_eq!((r.resyncs, r.connections_dropped), (1, 1));
    }

    #[test]
    fn a_frame_for_someone_elses_message_is_unexpected() {
        let r = tally(&[send(1, 0, 0, 1)], &mut [conn(2, &[(1, 9)])], &[0, 0, 1]);
        assert_eq!((r.expected, r.received, r.unexpected), (0, 0, 1));
    }

    #[test]
    fn frames_per_message() {
        assert_eq!(frames_for(&[2, 3], 0, 1), 5);
        assert_eq!(frames_for(&[2, 3], 1, 1), 3);
        // A user beyond the list has no connection.
        assert_eq!(frames_for(&[2], 0, 5), 2);
    }
}
