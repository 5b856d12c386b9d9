//! A conversation's messages as a chain, read without a per-conversation index.
//!
//! Each message row names the previous message of its conversation (`prev_id`, `NULL` for the
//! first) and its number in the conversation (`seq`: 1, 2, ...); the conversation's row holds
//! the newest id. Every [`MARK_EVERY`]th message also gets a row in
//! `chatcore_conversation_marks`, keyed by number and by id. So a commit writes the message
//! table's newest leaf and the counters, and a mark now and then, instead of one index leaf per
//! conversation it touches; and a read still costs the same whatever the size of the table:
//! finding where to start is one mark lookup plus at most [`MARK_EVERY`] steps back, and each
//! message read after that is one step (a rowid lookup).
//!
//! Ids and numbers grow together within a conversation (both follow commit order), which is
//! what lets a mark found by id or by number bound the walk.

use rusqlite::{Connection, OptionalExtension};

use chatcore::{Error, Result};

use crate::{error, sql};

/// One message in this many has a mark.
pub(crate) const MARK_EVERY: i64 = 16;

/// A message's place in its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) id: i64,
    pub(crate) prev: Option<i64>,
    pub(crate) seq: i64,
}

/// One conversation and the newest message of its chain (`0`: none yet).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conversation {
    pub(crate) low: i64,
    pub(crate) high: i64,
    pub(crate) last_id: i64,
}

/// The link of message `id`, which the chain says exists.
pub(crate) fn link(conn: &Connection, id: i64) -> Result<Link> {
    let mut stmt = conn.prepare_cached(sql::CHAIN_LINK).map_err(error::map)?;
    let found = stmt
        .query_row([id], |row| {
            Ok(Link {
                id,
                prev: row.get(0)?,
                seq: row.get(1)?,
            })
        })
        .optional()
        .map_err(error::map)?;
    found.ok_or_else(|| Error::Corrupt {
        message: format!("a conversation's chain names message {id}, which does not exist"),
        source: None,
    })
}

/// A conversation's message count and newest id, from its counter row (`(0, 0)` before its
/// first message): where its chain ends. The writer links new messages to it; readers start
/// there.
pub(crate) fn tail(conn: &Connection, low: i64, high: i64) -> rusqlite::Result<(i64, i64)> {
    conn.prepare_cached(sql::CONVERSATION_TAIL)?
        .query_row([low, high], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
        .map(|tail| tail.unwrap_or((0, 0)))
}

/// Checks that message `id` links back to an older message: a link that does not (a
/// smaller id) is [`Error::Corrupt`], so a damaged file can never send a walk round in
/// circles.
pub(crate) fn check_goes_back(id: i64, prev: i64) -> Result<()> {
    if prev < id {
        return Ok(());
    }
    Err(Error::Corrupt {
        message: format!("message {id} links back to message {prev}, not an older one"),
        source: None,
    })
}

/// The message before `at` in its conversation, `None` at the first. A link that does not
/// go back (to a smaller id and number) is [`Error::Corrupt`] (see [`check_goes_back`]).
pub(crate) fn back(conn: &Connection, at: &Link) -> Result<Option<Link>> {
    let Some(prev) = at.prev else {
        return Ok(None);
    };
    check_goes_back(at.id, prev)?;
    let before = link(conn, prev)?;
    if before.seq >= at.seq {
        return Err(Error::Corrupt {
            message: format!(
                "message {} (number {}) links back to message {} (number {})",
                at.id, at.seq, before.id, before.seq
            ),
            source: None,
        });
    }
    Ok(Some(before))
}

/// Walks back from message `start` while `too_new` holds; the first message it does not
/// hold for, or `None` when the chain ends first.
fn walk_back_while(conn: &Connection, start: i64, too_new: impl Fn(&Link) -> bool) -> Result<Option<Link>> {
    let mut at = link(conn, start)?;
    while too_new(&at) {
        match back(conn, &at)? {
            Some(before) => at = before,
            None => return Ok(None),
        }
    }
    Ok(Some(at))
}

impl Conversation {
    /// The id of the first mark at or above id `id` (`sql::MARK_FROM_ID`) or number `seq`
    /// (`sql::MARK_FROM_SEQ`), else the newest message: where a walk back starts.
    fn anchor(&self, conn: &Connection, query: &str, from: i64) -> Result<Option<i64>> {
        if self.last_id == 0 {
            return Ok(None);
        }
        let mut stmt = conn.prepare_cached(query).map_err(error::map)?;
        let mark: Option<i64> = stmt
            .query_row([self.low, self.high, from], |row| row.get(0))
            .optional()
            .map_err(error::map)?;
        Ok(Some(mark.unwrap_or(self.last_id)))
    }

    /// The newest message with an id below `bound`.
    pub(crate) fn newest_below(&self, conn: &Connection, bound: i64) -> Result<Option<Link>> {
        let Some(anchor) = self.anchor(conn, sql::MARK_FROM_ID, bound)? else {
            return Ok(None);
        };
        walk_back_while(conn, anchor, |at| at.id >= bound)
    }

    /// The oldest message with an id above `after`.
    pub(crate) fn first_above(&self, conn: &Connection, after: i64) -> Result<Option<Link>> {
        if self.last_id <= after {
            return Ok(None);
        }
        let Some(anchor) = self.anchor(conn, sql::MARK_FROM_ID, after.saturating_add(1))? else {
            return Ok(None);
        };
        let mut at = link(conn, anchor)?;
        while let Some(before) = back(conn, &at)? {
            if before.id <= after {
                break;
            }
            at = before;
        }
        Ok((at.id > after).then_some(at))
    }

    /// The message numbered `seq`, or the newest one when there are fewer; `None` below 1.
    pub(crate) fn at_seq(&self, conn: &Connection, seq: i64) -> Result<Option<Link>> {
        if seq < 1 {
            return Ok(None);
        }
        let Some(anchor) = self.anchor(conn, sql::MARK_FROM_SEQ, seq)? else {
            return Ok(None);
        };
        walk_back_while(conn, anchor, |at| at.seq > seq)
    }

    /// Ids from `start` back to the conversation's first message, newest first, each read
    /// only when asked for.
    pub(crate) fn ids_back<'c>(
        conn: &'c Connection,
        start: Option<Link>,
    ) -> impl Iterator<Item = Result<i64>> + 'c {
        let mut current = start;
        let mut started = false;
        std::iter::from_fn(move || {
            if started {
                current = match back(conn, &current?) {
                    Ok(before) => before,
                    Err(e) => {
                        current = None;
                        return Some(Err(e));
                    }
                };
            }
            started = true;
            current.map(|at| Ok(at.id))
        })
    }

    /// Ids from `first` up to the newest message, oldest first, read a mark's stretch at a
    /// time (one mark lookup and at most [`MARK_EVERY`] steps per stretch) as they are asked for.
    pub(crate) fn ids_forward<'c>(
        self,
        conn: &'c Connection,
        first: Option<Link>,
    ) -> impl Iterator<Item = Result<i64>> + 'c {
        let mut next_seq = first.map(|at| at.seq);
        let mut stretch: Vec<i64> = Vec::new();
        std::iter::from_fn(move || {
            if stretch.is_empty() {
                let from = next_seq.take()?;
                // The stretch ends at the next mark's number (or at the newest message).
                let end = (from - 1) / MARK_EVERY * MARK_EVERY + MARK_EVERY;
                let mut at = match self.at_seq(conn, end) {
                    Ok(Some(at)) => at,
                    Ok(None) => return None,
                    Err(e) => return Some(Err(e)),
                };
                if at.seq == end {
                    next_seq = Some(end + 1);
                }
                loop {
                    if at.seq < from {
                        break;
                    }
                    stretch.push(at.id);
                    if at.seq == from {
                        break;
                    }
                    match back(conn, &at) {
                        Ok(Some(before)) => at = before,
                        Ok(None) => break,
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
            // Collected newest first: hand out from the end.
            stretch.pop().map(Ok)
        })
    }
}

/// Building chains by hand in tests, the way the writer links messages.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashMap;

    use rusqlite::Connection;

    use super::MARK_EVERY;
    use crate::sql;

    /// Each conversation's number, newest id and messages from `conv_low` so far, and the
    /// last id handed out.
    #[derive(Default)]
    pub(crate) struct Linker {
        tails: HashMap<(i64, i64), (i64, Option<i64>, i64)>,
        last_id: i64,
    }

    impl Linker {
        /// Inserts a message from `from` to `to` linked into its conversation (with a mark on
        /// every [`MARK_EVERY`]th) and returns its id.
        pub(crate) fn insert(&mut self, conn: &Connection, from: i64, to: i64, key: Option<&str>) -> i64 {
            let (low, high) = (from.min(to), from.max(to));
            let (seq, prev, from_low) = self.tails.entry((low, high)).or_default();
            *seq += 1;
            let sender_seq = if from == low {
                *from_low += 1;
                *from_low
            } else {
                *seq - *from_low
            };
            self.last_id += 1;
            let id = self.last_id;
            conn.execute(
                sql::INSERT_MESSAGE,
                rusqlite::params![id, from, to, low, high, 0, "body", key, *prev, *seq, sender_seq],
            )
            .unwrap();
            if *seq % MARK_EVERY == 0 {
                conn.execute(sql::INSERT_MARK, [low, high, *seq, id]).unwrap();
            }
            *prev = Some(id);
            id
        }

        /// The newest id of a conversation (`0`: none).
        pub(crate) fn last_id(&self, low: i64, high: i64) -> i64 {
            self.tails
                .get(&(low, high))
                .and_then(|(_, prev, _)| *prev)
                .unwrap_or(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;

    /// Messages 1..=n alternating between conversations (1, 2) and (1, 3), so ids have gaps
    /// within a conversation; returns the two conversations.
    fn chains(n: i64) -> (Connection, Conversation, Conversation) {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::migrate(&mut conn, 0).unwrap();
        conn.execute_batch("INSERT INTO chatcore_users (id, username, username_key) VALUES (1, 'a', 'a'), (2, 'b', 'b'), (3, 'c', 'c')")
            .unwrap();
        let mut linker = testing::Linker::default();
        for id in 1..=n {
            assert_eq!(linker.insert(&conn, 1, 2 + id % 2, None), id);
        }
        let conversation = |high: i64| Conversation {
            low: 1,
            high,
            last_id: linker.last_id(1, high),
        };
        (conn, conversation(2), conversation(3))
    }

    fn ids(iter: impl Iterator<Item = Result<i64>>) -> Vec<i64> {
        iter.map(|r| r.unwrap()).collect()
    }

    #[test]
    fn walks_agree_with_a_scan_at_every_bound() {
        for n in [0, 1, 2, 31, 32, 33, 64, 100] {
            let (conn, even, odd) = chains(n);
            for conversation in [even, odd] {
                let all: Vec<i64> = (1..=n).filter(|id| 2 + id % 2 == conversation.high).collect();
                for bound in 0..=n + 2 {
                    let below = conversation.newest_below(&conn, bound).unwrap();
                    assert_eq!(
                        below.map(|l| l.id),
                        all.iter().rev().find(|&&id| id < bound).copied()
                    );
                    let back = ids(Conversation::ids_back(&conn, below));
                    let want: Vec<i64> = all.iter().rev().filter(|&&id| id < bound).copied().collect();
                    assert_eq!(back, want, "n={n} bound={bound}");

                    let above = conversation.first_above(&conn, bound).unwrap();
                    assert_eq!(above.map(|l| l.id), all.iter().find(|&&id| id > bound).copied());
                    let forward = ids(conversation.ids_forward(&conn, above));
                    let want: Vec<i64> = all.iter().filter(|&&id| id > bound).copied().collect();
                    assert_eq!(forward, want, "n={n} after={bound}");
                }
                for seq in -1..=all.len() as i64 + 2 {
                    let at = conversation.at_seq(&conn, seq).unwrap();
                    let want = if seq < 1 {
                        None
                    } else {
                        all.get((seq as usize).min(all.len()).wrapping_sub(1)).copied()
                    };
                    assert_eq!(at.map(|l| l.id), want, "n={n} seq={seq}");
                    if let Some(at) = at {
                        assert_eq!(at.seq, seq.min(all.len() as i64));
                    }
                }
            }
        }
    }

    #[test]
    fn a_chain_that_does_not_go_back_is_corrupt_not_a_loop() {
        let (conn, even, _) = chains(40);
        // Message 10 now points forward to 30, which leads back down to 10 again.
        conn.execute("UPDATE chatcore_messages SET prev_id = 30 WHERE id = 10", [])
            .unwrap();
        let start = Some(link(&conn, even.last_id).unwrap());
        let walked: Vec<Result<i64>> = Conversation::ids_back(&conn, start).collect();
        assert!(
            matches!(walked.last(), Some(Err(Error::Corrupt { .. }))),
            "{walked:?}"
        );
        assert!(walked.len() < 40);
        assert!(matches!(even.at_seq(&conn, 1), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn a_broken_chain_is_corrupt_not_a_panic() {
        let (conn, even, _) = chains(40);
        conn.execute("DELETE FROM chatcore_messages WHERE id = 20", [])
            .unwrap();
        let walked: Vec<Result<i64>> =
            Conversation::ids_back(&conn, Some(link(&conn, even.last_id).unwrap())).collect();
        assert!(
            matches!(walked.last(), Some(Err(Error::Corrupt { .. }))),
            "{walked:?}"
        );
    }
}
