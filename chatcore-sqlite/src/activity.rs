//! Each user's conversations by latest activity, kept in memory instead of in a tree of the
//! file.
//!
//! The inbox (newest activity first), a user's messages newest first and a catch-up after a
//! position all start from the same question: which of this user's conversations have their
//! newest message where. Schema 8 answered it with a tree in the file, keyed by (user,
//! newest id), which every commit had to move: a delete and an insert per participant and
//! conversation, about a quarter of a send's work in the store (BENCHMARKS.md, "Issue 18: the
//! inbox's write cost"). This store is the only one that writes its file (the lock file sees
//! to that), so the order can live in memory instead: built once from
//! `chatcore_conversations` when the writer opens the file (and again after a migration),
//! moved by the writer as it inserts each message, in the batch that writes the rows.
//!
//! # Memory against a snapshot
//!
//! Readers read rows from a snapshot (one read transaction) and the order from here, and the
//! two must agree. The writer moves the order as it inserts each message, **before** its
//! `COMMIT`, and moves it back if the batch rolls back, so for every snapshot that was opened before the order is read, each
//! entry is at or above the newest id the snapshot holds for that conversation: memory is
//! never behind. It can be ahead, for conversations written after the snapshot opened (or in
//! the batch being committed). A reader tells which by the snapshot's newest message id
//! (`newest`): the writer hands out ids in commit order, so the snapshot holds every message
//! up to `newest` and none above. An entry at or below `newest` names a committed message
//! the snapshot holds, so it is exact; an entry above it is *ahead*, and the reader takes that
//! conversation's newest id from the snapshot's own row (`chain::tail`). Only conversations
//! written in the last instant are ahead, so a read resolves a handful of them at most.
//!
//! Locks: the map is split into [`SHARDS`] shards by user, each behind its own mutex, held
//! only to move or copy a few entries: no lock is held across a statement or a sync, and
//! none is shared by all users.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

/// How many independently locked parts the order is split into (by user id).
pub(crate) const SHARDS: usize = 64;

/// Every user's conversations, newest activity first: per user, the newest message id of each
/// conversation to the peer (the user themself for notes to self). A user's conversations
/// have distinct newest ids (a message belongs to one conversation), so the id is the key.
pub(crate) struct Activity {
    shards: Box<[Mutex<Shard>]>,
}

/// The users of one shard: user id to their order.
type Shard = HashMap<i64, Order>;

/// Past this many conversations a user's order moves from a sorted vector to a `BTreeMap`.
const FEW: usize = 32;

/// One user's conversations, by newest id. Most users have a handful, and a `BTreeMap`'s
/// first leaf alone takes 192 bytes, so a sorted vector (16 bytes an entry) holds up to
/// [`FEW`] of them; a new message's id is the largest, so it goes at the end. Past that, a
/// `BTreeMap` (about 30-40 bytes an entry), so that a user with 10,000 conversations moves
/// one without shifting the others.
#[derive(Debug)]
enum Order {
    Few(Vec<Entry>),
    Many(BTreeMap<i64, i64>),
}

impl Default for Order {
    fn default() -> Self {
        Order::Few(Vec::new())
    }
}

impl Order {
    fn insert(&mut self, last_id: i64, peer: i64) {
        match self {
            Order::Few(entries) => {
                let at = entries.partition_point(|e| e.last_id < last_id);
                match entries.get_mut(at) {
                    Some(found) if found.last_id == last_id => found.peer = peer,
                    _ => entries.insert(at, Entry { last_id, peer }),
                }
                if entries.len() > FEW {
                    *self = Order::Many(entries.iter().map(|e| (e.last_id, e.peer)).collect());
                }
            }
            Order::Many(map) => {
                map.insert(last_id, peer);
            }
        }
    }

    /// Removes the entry at `last_id`; `false` when there is none.
    fn remove(&mut self, last_id: i64) -> bool {
        match self {
            Order::Few(entries) => {
                let at = entries.partition_point(|e| e.last_id < last_id);
                let found = entries.get(at).is_some_and(|e| e.last_id == last_id);
                if found {
                    entries.remove(at);
                }
                found
            }
            Order::Many(map) => map.remove(&last_id).is_some(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Order::Few(entries) => entries.is_empty(),
            Order::Many(map) => map.is_empty(),
        }
    }

    /// The entries with a newest id in `from..to`, newest first, at most `limit`.
    fn newest_first(&self, from: i64, to: i64, limit: usize) -> Vec<Entry> {
        if from >= to {
            return Vec::new();
        }
        match self {
            Order::Few(entries) => {
                let start = entries.partition_point(|e| e.last_id < from);
                let end = entries.partition_point(|e| e.last_id < to);
                entries[start..end].iter().rev().take(limit).copied().collect()
            }
            Order::Many(map) => map
                .range(from..to)
                .rev()
                .take(limit)
                .map(|(&last_id, &peer)| Entry { last_id, peer })
                .collect(),
        }
    }
}

/// One conversation's entry in one participant's order, moved by a message: from the newest
/// id before it (`from`, `0` for a conversation's first message) to the message's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Move {
    pub(crate) user: i64,
    pub(crate) peer: i64,
    pub(crate) from: i64,
    pub(crate) to: i64,
}

impl Move {
    /// The moves of conversation `low`-`high` from `from` to `to` in its participants'
    /// orders: two, or one for a note to self.
    pub(crate) fn sides(low: i64, high: i64, from: i64, to: i64) -> impl Iterator<Item = Move> {
        let sides = if low == high { 1 } else { 2 };
        [(low, high), (high, low)]
            .into_iter()
            .take(sides)
            .map(move |(user, peer)| Move { user, peer, from, to })
    }
}

/// A conversation as one participant sees it: the peer and the newest message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) last_id: i64,
    pub(crate) peer: i64,
}

/// What [`Activity::view`] copies out for one user and one snapshot.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// Exact entries (at or below the snapshot's newest id) in the asked range, newest first,
    /// at most the asked number.
    pub(crate) settled: Vec<Entry>,
    /// Every entry above the snapshot's newest id, whatever the range: their newest id in
    /// the snapshot is to be read from the file.
    pub(crate) ahead: Vec<Entry>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity").finish_non_exhaustive()
    }
}

impl Activity {
    fn shard(&self, user: i64) -> MutexGuard<'_, Shard> {
        // The maps hold plain data, changed by one whole insert or remove at a time: a
        // poisoned lock still holds a consistent map.
        self.shards[user.rem_euclid(SHARDS as i64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the whole order with the one `conn`'s committed rows hold: each
    /// conversation with a message, in both participants' orders (once in a note to self).
    /// Reads `chatcore_conversations` once. A file at a schema older than version 8 (whose
    /// inbox was kept otherwise; never migrated, or not yet) gets an empty order, and the
    /// migration that brings it up to date loads it again. Called by the writer, between
    /// batches.
    pub(crate) fn load(&self, conn: &Connection) -> rusqlite::Result<()> {
        let exists = crate::schema::current_version(conn)? >= 8;
        let mut built: Vec<Shard> = (0..SHARDS).map(|_| HashMap::new()).collect();
        if exists {
            let mut stmt = conn.prepare(
                "SELECT conv_low, conv_high, last_id FROM chatcore_conversations WHERE message_count > 0",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let (low, high, last_id): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
                for side in Move::sides(low, high, 0, last_id) {
                    built[side.user.rem_euclid(SHARDS as i64) as usize]
                        .entry(side.user)
                        .or_default()
                        .insert(side.to, side.peer);
                }
            }
        }
        for (shard, map) in self.shards.iter().zip(built) {
            *shard.lock().unwrap_or_else(|p| p.into_inner()) = map;
        }
        Ok(())
    }

    /// Applies moves; the writer calls it as it inserts each message. A move whose
    /// `from` entry is missing (a file changed behind the store's back) still puts the
    /// conversation at `to`, with a warning.
    pub(crate) fn apply(&self, moves: &[Move]) {
        for m in moves {
            let mut shard = self.shard(m.user);
            let order = shard.entry(m.user).or_default();
            if m.from != 0 && !order.remove(m.from) {
                tracing::warn!(
                    user = m.user,
                    peer = m.peer,
                    last_id = m.from,
                    "a conversation had no activity entry at its newest id; adding one"
                );
            }
            order.insert(m.to, m.peer);
        }
    }

    /// Takes back moves [`Activity::apply`] made, for a batch that rolled back.
    pub(crate) fn undo(&self, moves: &[Move]) {
        for m in moves.iter().rev() {
            let mut shard = self.shard(m.user);
            let Some(order) = shard.get_mut(&m.user) else {
                continue;
            };
            order.remove(m.to);
            if m.from != 0 {
                order.insert(m.from, m.peer);
            } else if order.is_empty() {
                shard.remove(&m.user);
            }
        }
    }

    /// `user`'s entries for a snapshot whose newest message id is `newest`: the exact ones
    /// with a newest id strictly between `above` and `below`, newest first, at most `limit`;
    /// and every entry above `newest` (see the module docs).
    pub(crate) fn view(&self, user: i64, newest: i64, above: i64, below: i64, limit: usize) -> View {
        let shard = self.shard(user);
        let Some(order) = shard.get(&user) else {
            return View::default();
        };
        let past_newest = newest.saturating_add(1);
        View {
            settled: order.newest_first(above.saturating_add(1), below.min(past_newest), limit),
            ahead: order.newest_first(past_newest, i64::MAX, usize::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(entries: &[Entry]) -> Vec<(i64, i64)> {
        entries.iter().map(|e| (e.last_id, e.peer)).collect()
    }

    #[test]
    fn moves_keep_one_entry_per_conversation_newest_first() {
        let activity = Activity::default();
        activity.apply(&[
            Move {
                user: 1,
                peer: 2,
                from: 0,
                to: 10,
            },
            Move {
                user: 1,
                peer: 3,
                from: 0,
                to: 11,
            },
            Move {
                user: 1,
                peer: 2,
                from: 10,
                to: 12,
            },
        ]);
        let view = activity.view(1, 100, 0, i64::MAX, 10);
        assert_eq!(ids(&view.settled), vec![(12, 2), (11, 3)]);
        assert!(view.ahead.is_empty());
    }

    #[test]
    fn undo_restores_the_order_before_the_batch() {
        let activity = Activity::default();
        activity.apply(&[Move {
            user: 1,
            peer: 2,
            from: 0,
            to: 10,
        }]);
        let batch = [
            Move {
                user: 1,
                peer: 2,
                from: 10,
                to: 20,
            },
            Move {
                user: 1,
                peer: 4,
                from: 0,
                to: 21,
            },
            Move {
                user: 4,
                peer: 1,
                from: 0,
                to: 21,
            },
        ];
        activity.apply(&batch);
        activity.undo(&batch);
        assert_eq!(
            ids(&activity.view(1, 100, 0, i64::MAX, 10).settled),
            vec![(10, 2)]
        );
        assert!(activity.view(4, 100, 0, i64::MAX, 10).settled.is_empty());
    }

    #[test]
    fn entries_above_the_snapshot_are_ahead_whatever_the_range() {
        let activity = Activity::default();
        for (to, peer) in [(5, 2), (7, 3), (9, 4), (12, 5), (14, 6)] {
            activity.apply(&[Move {
                user: 1,
                peer,
                from: 0,
                to,
            }]);
        }
        // The snapshot holds messages up to 10: 12 and 14 are ahead of it.
        let view = activity.view(1, 10, 0, 8, 10);
        assert_eq!(ids(&view.settled), vec![(7, 3), (5, 2)]);
        assert_eq!(ids(&view.ahead), vec![(14, 6), (12, 5)]);
        // A range above the snapshot: nothing settled, the same ones ahead.
        let view = activity.view(1, 10, 10, i64::MAX, 10);
        assert!(view.settled.is_empty());
        assert_eq!(view.ahead.len(), 2);
        // `above` is exclusive, and `limit` keeps the newest.
        let view = activity.view(1, 100, 5, i64::MAX, 2);
        assert_eq!(ids(&view.settled), vec![(14, 6), (12, 5)]);
    }

    /// Users with few conversations (a sorted vector) and many (a map, past `FEW`) answer
    /// alike: 2,000 messages over up to 100 peers each, checked against a plain map.
    #[test]
    fn few_and_many_conversations_keep_the_same_order() {
        let activity = Activity::default();
        let mut newest: HashMap<(i64, i64), i64> = HashMap::new();
        for id in 1..=2000i64 {
            // User 1 talks to 100 peers, user 2 to 5.
            let (user, peer) = if id % 3 == 0 {
                (2, 100 + id % 5)
            } else {
                (1, 200 + (id * 7) % 100)
            };
            let from = newest.insert((user, peer), id).unwrap_or(0);
            activity.apply(&[Move {
                user,
                peer,
                from,
                to: id,
            }]);
        }
        for user in [1, 2] {
            let mut want: Vec<(i64, i64)> = newest
                .iter()
                .filter(|((u, _), _)| *u == user)
                .map(|((_, peer), id)| (*id, *peer))
                .collect();
            want.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!(
                ids(&activity.view(user, 5000, 0, i64::MAX, usize::MAX).settled),
                want
            );
            let below: Vec<_> = want
                .iter()
                .copied()
                .filter(|(id, _)| *id < 1500 && *id > 900)
                .take(7)
                .collect();
            assert_eq!(ids(&activity.view(user, 5000, 900, 1500, 7).settled), below);
            let ahead: Vec<_> = want.iter().copied().filter(|(id, _)| *id > 1990).collect();
            assert_eq!(ids(&activity.view(user, 1990, 0, i64::MAX, 3).ahead), ahead);
        }
        assert!(matches!(activity.shard(1).get(&1), Some(Order::Many(_))));
        assert!(matches!(activity.shard(2).get(&2), Some(Order::Few(_))));
    }

    #[test]
    fn load_reads_both_sides_of_each_conversation_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        let activity = Activity::default();
        activity.apply(&[Move {
            user: 9,
            peer: 9,
            from: 0,
            to: 1,
        }]);
        activity.load(&conn).unwrap();
        assert!(
            activity.view(9, 100, 0, i64::MAX, 10).settled.is_empty(),
            "never migrated: empty"
        );
        activity.apply(&[Move {
            user: 9,
            peer: 9,
            from: 0,
            to: 1,
        }]);
        crate::schema::migrate(&mut conn, 0).unwrap();
        conn.execute_batch(
            "INSERT INTO chatcore_conversations (conv_low, conv_high, message_count, last_id)
                 VALUES (1, 2, 3, 30), (1, 1, 1, 31), (2, 3, 0, 0);",
        )
        .unwrap();
        activity.load(&conn).unwrap();
        assert_eq!(
            ids(&activity.view(1, 100, 0, i64::MAX, 10).settled),
            vec![(31, 1), (30, 2)]
        );
        assert_eq!(
            ids(&activity.view(2, 100, 0, i64::MAX, 10).settled),
            vec![(30, 1)]
        );
        assert!(activity.view(3, 100, 0, i64::MAX, 10).settled.is_empty());
        assert!(
            activity.view(9, 100, 0, i64::MAX, 10).settled.is_empty(),
            "load replaces"
        );
    }
}
