//! [`Cursor`]: where a `/ws` connection stands in its user's event stream, and the live
//! events that arrived before one they follow.
//!
//! Live events of one user can arrive out of position order (two senders publish in the
//! other order than they committed, or two nodes' publishes cross in the broker). Each
//! carries the position of the user's event before it (`previous`), so the cursor can tell
//! "next in line" (deliver), "already delivered" (drop) and "something is missing" (hold it,
//! and let the connection read the missing events from storage if they do not turn up).

use std::collections::BTreeMap;

use chatcore::{Event, Position};
use tokio::time::Instant;

/// Most live events held while waiting for an earlier one; beyond it the connection reads
/// storage at once instead of waiting.
pub(crate) const MAX_HELD: usize = 64;

/// What [`Cursor::accept`] decided about a live event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Next in line: write it (then [`Cursor::next_ready`] for held ones it unblocked).
    Now(Event),
    /// Already delivered (from storage, or twice by the transport): drop it.
    Duplicate,
    /// An earlier event has not arrived yet: held until it does, or storage fills the gap.
    Held,
}

/// A connection's delivered position and its held live events.
#[derive(Debug)]
pub(crate) struct Cursor {
    last: Position,
    held: BTreeMap<Position, (Event, Position)>,
    held_since: Option<Instant>,
}

impl Cursor {
    /// A cursor that has delivered everything up to `last`.
    pub(crate) fn new(last: Position) -> Self {
        Self {
            last,
            held: BTreeMap::new(),
            held_since: None,
        }
    }

    /// The last position delivered (or the start it was given).
    pub(crate) fn last(&self) -> Position {
        self.last
    }

    /// Decides about a live durable event at `position` whose user's previous event is at
    /// `previous`.
    pub(crate) fn accept(
        &mut self,
        event: Event,
        position: Position,
        previous: Position,
        now: Instant,
    ) -> Accepted {
        if position <= self.last {
            return Accepted::Duplicate;
        }
        if previous <= self.last {
            self.last = position;
            return Accepted::Now(event);
        }
        if self.held.is_empty() {
            self.held_since = Some(now);
        }
        self.held.insert(position, (event, previous));
        Accepted::Held
    }

    /// The next held event that can go now (its previous has been delivered), dropping held
    /// ones that were delivered meanwhile from storage.
    pub(crate) fn next_ready(&mut self) -> Option<Event> {
        let ready = loop {
            let Some(entry) = self.held.first_entry() else {
                break None;
            };
            let position = *entry.key();
            if position <= self.last {
                entry.remove();
                continue;
            }
            if entry.get().1 > self.last {
                break None;
            }
            let (event, _) = entry.remove();
            self.last = position;
            break Some(event);
        };
        if self.held.is_empty() {
            self.held_since = None;
        }
        ready
    }

    /// An event read from storage at `position`: `true` when it is new and must be written.
    pub(crate) fn stored(&mut self, position: Position) -> bool {
        if position <= self.last {
            return false;
        }
        self.last = position;
        true
    }

    /// Storage has been read up to `position` (a catch-up ended there, or a resync resumes
    /// there): everything up to it counts as delivered.
    pub(crate) fn caught_up_to(&mut self, position: Position) {
        self.last = position;
        self.held.retain(|&held, _| held > position);
        if self.held.is_empty() {
            self.held_since = None;
        }
    }

    /// How many live events are held, and since when the oldest wait began.
    pub(crate) fn waiting(&self) -> Option<(usize, Instant)> {
        self.held_since.map(|since| (self.held.len(), since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatcore::{Message, MessageId, Username, now_micros};

    fn event(id: i64) -> Event {
        Event::message(&Message {
            id: MessageId(id),
            sender: Username::parse("a").unwrap(),
            recipient: Username::parse("b").unwrap(),
            created_at: now_micros(),
            body: "x".into(),
            edited: None,
            deleted: false,
        })
    }

    /// `Now(position)`, `Duplicate` or `Held`, as a string for short asserts.
    fn offer(cursor: &mut Cursor, id: i64, previous: i64) -> String {
        match cursor.accept(event(id), Position(id), Position(previous), Instant::now()) {
            Accepted::Now(event) => format!("now {}", event.position().unwrap()),
            Accepted::Duplicate => "duplicate".into(),
            Accepted::Held => "held".into(),
        }
    }

    fn drain(cursor: &mut Cursor) -> Vec<i64> {
        std::iter::from_fn(|| cursor.next_ready())
            .map(|e| e.position().unwrap().0)
            .collect()
    }

    #[test]
    fn in_order_events_go_at_once_and_duplicates_are_dropped() {
        let mut cursor = Cursor::new(Position(3));
        assert_eq!(offer(&mut cursor, 5, 3), "now 5");
        assert_eq!(offer(&mut cursor, 5, 3), "duplicate");
        assert_eq!(offer(&mut cursor, 4, 1), "duplicate");
        assert_eq!(cursor.last(), Position(5));
        assert_eq!(cursor.waiting(), None);
    }

    #[test]
    fn a_start_between_events_takes_the_next_one() {
        // `since` need not be one of the user's positions.
        let mut cursor = Cursor::new(Position(10));
        assert_eq!(offer(&mut cursor, 12, 7), "now 12");
    }

    #[test]
    fn out_of_order_events_wait_for_the_missing_one_then_go_in_order() {
        let mut cursor = Cursor::new(Position(1));
        assert_eq!(offer(&mut cursor, 4, 3), "held");
        assert_eq!(offer(&mut cursor, 3, 2), "held");
        assert_eq!(cursor.waiting().map(|(n, _)| n), Some(2));
        assert!(drain(&mut cursor).is_empty());
        assert_eq!(offer(&mut cursor, 2, 1), "now 2");
        assert_eq!(drain(&mut cursor), [3, 4]);
        assert_eq!(cursor.last(), Position(4));
        assert_eq!(cursor.waiting(), None);
    }

    #[test]
    fn storage_fills_a_gap_and_releases_what_was_held() {
        let mut cursor = Cursor::new(Position(1));
        assert_eq!(offer(&mut cursor, 5, 4), "held");
        assert_eq!(offer(&mut cursor, 7, 5), "held");
        // The catch-up reads 2..=5 (it may see 5 too: it was committed before being held).
        for (id, new) in [(2, true), (4, true), (5, true), (5, false)] {
            assert_eq!(cursor.stored(Position(id)), new);
        }
        cursor.caught_up_to(Position(5));
        assert_eq!(drain(&mut cursor), [7]);
        assert_eq!(cursor.waiting(), None);
    }

    #[test]
    fn a_resync_resumes_after_the_given_position() {
        let mut cursor = Cursor::new(Position(1));
        assert_eq!(offer(&mut cursor, 50, 40), "held");
        assert_eq!(offer(&mut cursor, 60, 55), "held");
        cursor.caught_up_to(Position(55));
        assert_eq!(drain(&mut cursor), [60]);
        assert_eq!(offer(&mut cursor, 50, 40), "duplicate");
    }
}
