//! The read side: a connection plus a username cache, the queries run on it, and the reader
//! threads that pull jobs from the shared queue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use chatcore::store::{
    BlockQuery, ChangedMessage, Conversation as InboxConversation, Credentials, InboxPage, InboxRequest,
    MessagePage, PageRequest, ReadMarker, SessionRecord, StoredEvent, UserQuery,
};
use chatcore::{
    ConversationKey, Entity, Error, Message, MessageId, Position, Result, User, UserId, Username,
};
use chrono::{DateTime, Utc};
use crossbeam_channel::Receiver;
use rusqlite::{Connection, OptionalExtension, Row};

use crate::activity::{Activity, Entry};
use crate::chain::{self, Conversation};
use crate::{error, sql};

/// A read job: runs on a reader thread (or on the writer thread for in-memory stores) and
/// answers its caller through the oneshot it captured.
pub(crate) type ReadJob = Box<dyn FnOnce(&mut ReadCtx) + Send>;

/// What the reader queue carries.
pub(crate) enum ReadMsg {
    Job(ReadJob),
    /// Finish: each reader takes one and exits.
    Stop,
}

/// A connection and this thread's username cache.
pub(crate) struct ReadCtx {
    pub(crate) conn: Connection,
    names: NameCache,
    /// Every user's conversations by latest activity, shared with the writer, which moves it.
    activity: Arc<Activity>,
}

/// [`Username::key`] to the user holding it (id and name as chosen). Users are never renamed
/// or deleted, so an entry read from a committed snapshot stays true forever; only committed
/// names go in.
pub(crate) struct NameCache {
    map: HashMap<String, User>,
    capacity: usize,
}

impl NameCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            capacity,
        }
    }

    /// The user holding `key`, if cached.
    pub(crate) fn get(&self, key: &str) -> Option<&User> {
        self.map.get(key)
    }

    /// Caches the user holding `key` (a committed row).
    pub(crate) fn insert(&mut self, key: String, user: User) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(key, user);
    }
}

/// Reads one message row (the columns of `sql::message_select!`).
pub(crate) fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    message_at(row, 0)
}

/// Reads a message from the seven columns of `sql::message_select!` starting at `at`.
pub(crate) fn message_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Message> {
    let time = |index: usize, micros: i64| {
        micros_to_datetime(micros).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Integer, e.into())
        })
    };
    Ok(Message {
        id: MessageId(row.get(at)?),
        sender: stored_username(row, at + 1)?,
        recipient: stored_username(row, at + 2)?,
        created_at: time(at + 3, row.get(at + 3)?)?,
        body: row.get(at + 4)?,
        edited: match row.get::<_, Option<i64>>(at + 5)? {
            Some(micros) => Some(time(at + 5, micros)?),
            None => None,
        },
        deleted: row.get::<_, i64>(at + 6)? != 0,
    })
}

/// An edit or deletion event from the columns of `sql::CHANGES_AS_SENDER` (and its siblings).
fn change_from_row(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let changed = ChangedMessage {
        position: Position(row.get(0)?),
        message: message_at(row, 2)?,
    };
    Ok(if row.get::<_, i64>(1)? != 0 {
        StoredEvent::Delete(changed)
    } else {
        StoredEvent::Edit(changed)
    })
}

/// A read event from the columns of `sql::READS_AS_READER` (and its siblings).
fn read_from_row(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent::Read(ReadMarker {
        position: Position(row.get(0)?),
        reader: stored_username(row, 1)?,
        peer: stored_username(row, 2)?,
        up_to: MessageId(row.get(3)?),
    }))
}

/// A name as stored: not validated again, since it may predate today's rules.
pub(crate) fn stored_username(row: &Row<'_>, index: usize) -> rusqlite::Result<Username> {
    Ok(Username::from_stored(row.get::<_, String>(index)?))
}

/// A user from columns 0 (id) and 1 (name).
pub(crate) fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: UserId(row.get(0)?),
        username: stored_username(row, 1)?,
    })
}

pub(crate) fn datetime_to_micros(ts: &DateTime<Utc>) -> i64 {
    ts.timestamp_micros()
}

pub(crate) fn micros_to_datetime(micros: i64) -> std::result::Result<DateTime<Utc>, String> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| format!("timestamp {micros} µs is out of range"))
}

/// `before` as an exclusive upper bound on ids.
fn before_bound(page: &PageRequest) -> i64 {
    page.before.map_or(i64::MAX, |id| id.0)
}

/// A corrupt row (a timestamp or a value of a type this code never writes).
fn row_error(error: rusqlite::Error) -> Error {
    match error {
        rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
            Error::Corrupt {
                message: "a stored row does not have the expected shape".to_owned(),
                source: Some(Box::new(error)),
            }
        }
        other => error::map(other),
    }
}

impl ReadCtx {
    pub(crate) fn new(conn: Connection, name_cache: usize, activity: Arc<Activity>) -> Self {
        Self {
            conn,
            names: NameCache::new(name_cache),
            activity,
        }
    }

    /// The order the writer moves (and reloads after a migration).
    pub(crate) fn activity(&self) -> &Activity {
        &self.activity
    }

    pub(crate) fn names_mut(&mut self) -> &mut NameCache {
        &mut self.names
    }

    /// Runs `f` in one read transaction, so every statement of a job sees one snapshot.
    /// Runs `f` in one read transaction, with this thread's name cache and the activity
    /// order (to be read only after a statement has opened the snapshot: `activity.rs`).
    fn snapshot<T>(
        &mut self,
        f: impl FnOnce(&Connection, &mut NameCache, &Activity) -> Result<T>,
    ) -> Result<T> {
        let tx = self.conn.transaction().map_err(error::map)?;
        let out = f(&tx, &mut self.names, &self.activity)?;
        tx.commit().map_err(error::map)?;
        Ok(out)
    }

    /// The user holding `name`'s key, with their name as chosen.
    fn resolve(conn: &Connection, names: &mut NameCache, name: &Username) -> Result<Option<User>> {
        let key = name.key();
        if let Some(user) = names.get(&key) {
            return Ok(Some(user.clone()));
        }
        let user = conn
            .prepare_cached(sql::USER_BY_KEY)
            .and_then(|mut s| s.query_row([&key], user_from_row).optional())
            .map_err(row_error)?;
        if let Some(user) = &user {
            names.insert(key, user.clone());
        }
        Ok(user)
    }

    pub(crate) fn find_user(&mut self, name: &Username) -> Result<Option<User>> {
        Self::resolve(&self.conn, &mut self.names, name)
    }

    /// The directory by key: the prefix's key bounds a range, `after`'s key starts it.
    pub(crate) fn list_users(&mut self, query: &UserQuery) -> Result<Vec<User>> {
        let prefix = Username::key_of(&query.prefix);
        let after = query.after.as_ref().map(Username::key);
        let (lower, inclusive) = match &after {
            Some(after) if *after >= prefix => (after.as_str(), false),
            _ => (prefix.as_str(), true),
        };
        let upper = sql::prefix_successor(&prefix);
        let mut stmt = self
            .conn
            .prepare_cached(sql::list_users(inclusive, upper.is_some()))
            .map_err(error::map)?;
        let rows = stmt
            .query_map(
                rusqlite::params![
                    lower,
                    upper.as_deref(),
                    query.exclude.map(|u| u.0),
                    i64::from(query.limit)
                ],
                user_from_row,
            )
            .map_err(error::map)?;
        rows.map(|r| r.map_err(row_error)).collect()
    }

    /// `user`'s blocks by key, after `query.after`'s key: one range of the key index.
    pub(crate) fn blocked_users(&mut self, user: UserId, query: &BlockQuery) -> Result<Vec<User>> {
        let after = query.after.as_ref().map(Username::key).unwrap_or_default();
        let mut stmt = self.conn.prepare_cached(sql::BLOCKED_USERS).map_err(error::map)?;
        let rows = stmt
            .query_map(
                rusqlite::params![user.0, after, i64::from(query.limit)],
                user_from_row,
            )
            .map_err(error::map)?;
        rows.map(|r| r.map_err(row_error)).collect()
    }

    /// `Store::reachable_peer`: one statement.
    pub(crate) fn reachable_peer(&mut self, user: UserId, peer: &Username) -> Result<Option<UserId>> {
        let mut stmt = self
            .conn
            .prepare_cached(sql::REACHABLE_PEER)
            .map_err(error::map)?;
        stmt.query_row(rusqlite::params![user.0, peer.key()], |row| {
            Ok(UserId(row.get(0)?))
        })
        .optional()
        .map_err(row_error)
    }

    /// `Store::conversation_peers`: a primary-key lookup of each listed conversation's
    /// counter row, in one snapshot.
    pub(crate) fn conversation_peers(&mut self, user: UserId, among: &[UserId]) -> Result<Vec<UserId>> {
        self.snapshot(|conn, _, _| {
            let mut stmt = conn
                .prepare_cached(sql::CONVERSATION_EXISTS)
                .map_err(error::map)?;
            let mut found = Vec::new();
            let mut asked = std::collections::HashSet::with_capacity(among.len());
            for &peer in among {
                if !asked.insert(peer) {
                    continue;
                }
                let key = ConversationKey::new(user, peer);
                let exists = stmt
                    .query_row([key.low().0, key.high().0], |_| Ok(()))
                    .optional()
                    .map_err(row_error)?
                    .is_some();
                if exists {
                    found.push(peer);
                }
            }
            Ok(found)
        })
    }

    pub(crate) fn credentials(&mut self, name: &Username) -> Result<Option<Credentials>> {
        let mut stmt = self.conn.prepare_cached(sql::CREDENTIALS).map_err(error::map)?;
        stmt.query_row([name.key()], |row| {
            Ok(Credentials {
                user: user_from_row(row)?,
                password_hash: row.get(2)?,
            })
        })
        .optional()
        .map_err(row_error)
    }

    /// The session's user and its expiry, if it exists and is live at `now` (microseconds).
    pub(crate) fn session_user(&mut self, token_hash: &[u8], now: i64) -> Result<Option<SessionRecord>> {
        let mut stmt = self.conn.prepare_cached(sql::SESSION_USER).map_err(error::map)?;
        stmt.query_row(rusqlite::params![token_hash, now], |row| {
            let expires_at = micros_to_datetime(row.get(2)?).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Integer, e.into())
            })?;
            Ok(SessionRecord {
                user: user_from_row(row)?,
                expires_at,
            })
        })
        .optional()
        .map_err(row_error)
    }

    pub(crate) fn message_for(&mut self, viewer: UserId, id: MessageId) -> Result<Option<Message>> {
        let mut stmt = self.conn.prepare_cached(sql::MESSAGE_FOR).map_err(error::map)?;
        stmt.query_row([id.0, viewer.0], message_from_row)
            .optional()
            .map_err(row_error)
    }

    pub(crate) fn conversation_page(
        &mut self,
        viewer: UserId,
        other: &Username,
        page: &PageRequest,
    ) -> Result<MessagePage> {
        self.snapshot(|conn, names, _| {
            let other = Self::resolve(conn, names, other)?
                .ok_or(Error::NotFound(Entity::User))?
                .id;
            let key = ConversationKey::new(viewer, other);
            let Some((total, conversation)) = conversation_tail(conn, key.low().0, key.high().0)? else {
                return Ok(MessagePage::default());
            };
            let mut start = conversation.newest_below(conn, before_bound(page))?;
            if page.offset > 0 {
                start = match start {
                    Some(newest) => conversation.at_seq(conn, newest.seq - i64::from(page.offset))?,
                    None => None,
                };
            }
            let mut messages = Vec::with_capacity(page.limit.min(1024) as usize);
            let mut next = start.map(|at| at.id);
            let mut stmt = conn.prepare_cached(sql::MESSAGE_BY_ID).map_err(error::map)?;
            while let Some(id) = next
                && messages.len() < page.limit as usize
            {
                let (message, prev) = stmt
                    .query_row([id], |row| {
                        Ok((message_from_row(row)?, row.get::<_, Option<i64>>(7)?))
                    })
                    .map_err(row_error)?;
                if let Some(prev) = prev {
                    chain::check_goes_back(id, prev)?;
                }
                messages.push(message);
                next = prev;
            }
            Ok(MessagePage { messages, total })
        })
    }

    /// A user's messages newest first, read through their conversations: each
    /// conversation's chain below the cursor, walked only as far as it can add to the page.
    /// The conversations are visited newest activity first, and the walk stops at the first
    /// one whose newest message cannot make the page, so a page usually reads only the few
    /// conversations active most recently. The work grows with the user's number of
    /// conversations (one small row each), never with the table.
    pub(crate) fn user_messages(&mut self, user: UserId, page: &PageRequest) -> Result<MessagePage> {
        self.snapshot(|conn, _, activity| {
            let total = count(conn, sql::USER_COUNT, &[user.0])?;
            if page.limit == 0 || u64::from(page.offset) >= total {
                return Ok(MessagePage {
                    messages: Vec::new(),
                    total,
                });
            }
            let before = before_bound(page);
            let want = page.offset as usize + page.limit as usize;
            let conversations = conversations_between(conn, activity, user, 0, i64::MAX, usize::MAX)?;
            // The `want` largest ids seen so far (a min-heap: its top is the smallest kept).
            let mut kept: BinaryHeap<Reverse<i64>> = BinaryHeap::with_capacity(want.min(1024) + 1);
            for (conversation, _) in &conversations {
                let newest = conversation.last_id.min(before.saturating_sub(1));
                if kept.len() == want && kept.peek().is_some_and(|Reverse(min)| newest <= *min) {
                    break;
                }
                let start = conversation.newest_below(conn, before)?;
                keep_best(Conversation::ids_back(conn, start), &mut kept, want, Reverse)?;
            }
            let mut chosen: Vec<i64> = kept.into_iter().map(|Reverse(id)| id).collect();
            chosen.sort_unstable_by(|a, b| b.cmp(a));
            let messages = messages_by_id(conn, chosen.into_iter().skip(page.offset as usize))?;
            Ok(MessagePage { messages, total })
        })
    }

    /// The first `limit` messages of `user` after `after`, oldest first: the smallest ids
    /// above `after` of every conversation that has one (its newest id says so).
    pub(crate) fn messages_after(
        &mut self,
        user: UserId,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<Message>> {
        self.snapshot(|conn, _, activity| messages_after(conn, activity, user, after, limit))
    }

    /// The first `limit` of `user`'s events after `after`, oldest first: their first `limit`
    /// messages and first `limit` read events of each kind, merged by position and cut, all
    /// in one read transaction, so every position below the last one returned is there.
    pub(crate) fn events_after(
        &mut self,
        user: UserId,
        after: Position,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        self.snapshot(|conn, _, activity| {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let messages = messages_after(conn, activity, user, MessageId(after.0), limit)?;
            let mut events: Vec<StoredEvent> = messages.into_iter().map(StoredEvent::Message).collect();
            type FromRow = fn(&Row<'_>) -> rusqlite::Result<StoredEvent>;
            let ranges: [(&str, FromRow); 4] = [
                (sql::READS_AS_READER, read_from_row),
                (sql::READS_AS_PEER, read_from_row),
                (sql::CHANGES_AS_SENDER, change_from_row),
                (sql::CHANGES_AS_RECIPIENT, change_from_row),
            ];
            for (sql, from_row) in ranges {
                let mut stmt = conn.prepare_cached(sql).map_err(error::map)?;
                let rows = stmt
                    .query_map([user.0, after.0, i64::from(limit)], from_row)
                    .map_err(error::map)?;
                for row in rows {
                    events.push(row.map_err(row_error)?);
                }
            }
            events.sort_unstable_by_key(StoredEvent::position);
            events.truncate(limit as usize);
            Ok(events)
        })
    }

    /// The first `limit` events of every user after `after`, oldest first: the first `limit`
    /// messages and the first `limit` read events, merged by position and cut, from one read
    /// transaction. The writer commits one position after another, so a snapshot never
    /// holds a position without every smaller one.
    pub(crate) fn feed_after(&mut self, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
        self.snapshot(|conn, _, _| {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let bounds = [after.0, i64::from(limit)];
            let mut events = Vec::new();
            let mut stmt = conn.prepare_cached(sql::FEED_MESSAGES).map_err(error::map)?;
            let rows = stmt
                .query_map(bounds, |row| message_from_row(row).map(StoredEvent::Message))
                .map_err(error::map)?;
            for row in rows {
                events.push(row.map_err(row_error)?);
            }
            let mut stmt = conn.prepare_cached(sql::FEED_READS).map_err(error::map)?;
            let rows = stmt.query_map(bounds, read_from_row).map_err(error::map)?;
            for row in rows {
                events.push(row.map_err(row_error)?);
            }
            let mut stmt = conn.prepare_cached(sql::FEED_CHANGES).map_err(error::map)?;
            let rows = stmt.query_map(bounds, change_from_row).map_err(error::map)?;
            for row in rows {
                events.push(row.map_err(row_error)?);
            }
            events.sort_unstable_by_key(StoredEvent::position);
            events.truncate(limit as usize);
            Ok(events)
        })
    }

    /// The checkpoint saved under `name`, `0` when none was.
    pub(crate) fn load_checkpoint(&mut self, name: &str) -> Result<Position> {
        let mut stmt = self
            .conn
            .prepare_cached(sql::LOAD_CHECKPOINT)
            .map_err(error::map)?;
        let position: Option<i64> = stmt
            .query_row([name], |r| r.get(0))
            .optional()
            .map_err(error::map)?;
        Ok(Position(position.unwrap_or(0)))
    }

    /// A page of `user`'s inbox: a range of their activity order (newest first, stopping at
    /// the limit), one row of each conversation's newest message and markers, and their
    /// unread counter, from one snapshot.
    pub(crate) fn inbox(&mut self, user: UserId, request: &InboxRequest) -> Result<InboxPage> {
        self.snapshot(|conn, _, activity| {
            let unread_total = count(conn, sql::USER_UNREAD_TOTAL, &[user.0])?;
            let before = request.before.map_or(i64::MAX, |id| id.0);
            let listed = conversations_between(conn, activity, user, 0, before, request.limit as usize)?;
            if listed.is_empty() {
                return Ok(InboxPage {
                    conversations: Vec::new(),
                    unread_total,
                });
            }
            let mut ids = String::with_capacity(2 + listed.len() * 12);
            for (i, (conversation, _)) in listed.iter().enumerate() {
                ids.push(if i == 0 { '[' } else { ',' });
                // Writing to a `String` cannot fail.
                let _ = write!(ids, "{}", conversation.last_id);
            }
            ids.push(']');
            let mut stmt = conn.prepare_cached(sql::INBOX_ROWS).map_err(error::map)?;
            let rows = stmt
                .query_map(rusqlite::params![user.0, ids], |row| {
                    let message = message_at(row, 4)?;
                    Ok(InboxConversation {
                        peer: stored_username(row, 0)?,
                        last_message: message,
                        unread: row.get::<_, i64>(1)?.max(0) as u64,
                        read_up_to: row.get::<_, Option<i64>>(2)?.map(MessageId),
                        peer_read_up_to: row.get::<_, Option<i64>>(3)?.map(MessageId),
                    })
                })
                .map_err(error::map)?;
            let mut conversations: Vec<InboxConversation> =
                rows.map(|r| r.map_err(row_error)).collect::<Result<_>>()?;
            if conversations.len() != listed.len() {
                return Err(Error::Corrupt {
                    message: format!(
                        "user {}'s conversations name {} newest messages, of which {} exist",
                        user.0,
                        listed.len(),
                        conversations.len()
                    ),
                    source: None,
                });
            }
            // Newest activity first, as listed (the rows come in the list's order; this does
            // not depend on it).
            conversations.sort_unstable_by_key(|c| Reverse(c.last_message.id));
            Ok(InboxPage {
                conversations,
                unread_total,
            })
        })
    }

    /// The user's newest position, message or read event (`0` for none, and for an unknown
    /// user): one primary-key read of their counter row.
    pub(crate) fn latest_position(&mut self, user: UserId) -> Result<Position> {
        let mut stmt = self.conn.prepare_cached(sql::USER_LAST_ID).map_err(error::map)?;
        let last_id: Option<i64> = stmt
            .query_row([user.0], |r| r.get(0))
            .optional()
            .map_err(error::map)?;
        Ok(Position(last_id.unwrap_or(0)))
    }
}

/// The first `limit` messages of `user` after `after`, oldest first: the smallest ids
/// above `after` of every conversation that has one (its newest id says so).
pub(crate) fn messages_after(
    conn: &Connection,
    activity: &Activity,
    user: UserId,
    after: MessageId,
    limit: u32,
) -> Result<Vec<Message>> {
    let want = limit as usize;
    if want == 0 {
        return Ok(Vec::new());
    }
    let conversations = conversations_between(conn, activity, user, after.0, i64::MAX, usize::MAX)?;
    // The `want` smallest ids seen so far (a max-heap: its top is the largest kept).
    let mut kept: BinaryHeap<i64> = BinaryHeap::with_capacity(want.min(1024) + 1);
    for (conversation, _) in conversations {
        let first = conversation.first_above(conn, after.0)?;
        if kept.len() == want && first.is_none_or(|first| kept.peek().is_some_and(|&worst| first.id >= worst))
        {
            continue;
        }
        keep_best(conversation.ids_forward(conn, first), &mut kept, want, |id| id)?;
    }
    messages_by_id(conn, kept.into_sorted_vec().into_iter())
}

/// `user`'s conversations whose newest message id, as this snapshot holds it, lies strictly
/// between `above` and `below`: newest first, at most `limit`, each with its peer. The order
/// comes from memory and is checked against the snapshot (`activity.rs`, "Memory against a
/// snapshot"): entries the snapshot cannot hold yet take the conversation's newest id from
/// its row. The caller's snapshot must already be open (a statement read in it), so that the
/// order is read after it.
fn conversations_between(
    conn: &Connection,
    activity: &Activity,
    user: UserId,
    above: i64,
    below: i64,
    limit: usize,
) -> Result<Vec<(Conversation, i64)>> {
    let newest: i64 = conn
        .prepare_cached(sql::NEWEST_MESSAGE)
        .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
        .map_err(error::map)?;
    let view = activity.view(user.0, newest, above, below, limit);
    let conversation = |entry: &Entry| {
        let key = ConversationKey::new(user, UserId(entry.peer));
        let (low, high) = (key.low().0, key.high().0);
        (
            Conversation {
                low,
                high,
                last_id: entry.last_id,
            },
            entry.peer,
        )
    };
    let mut found: Vec<(Conversation, i64)> = view.settled.iter().map(conversation).collect();
    for entry in &view.ahead {
        let (mut ahead, peer) = conversation(entry);
        let (count, last_id) = chain::tail(conn, ahead.low, ahead.high).map_err(error::map)?;
        ahead.last_id = last_id;
        if count > 0 && last_id > above && last_id < below {
            found.push((ahead, peer));
        }
    }
    if !view.ahead.is_empty() {
        found.sort_unstable_by_key(|(c, _)| Reverse(c.last_id));
        found.truncate(limit);
    }
    Ok(found)
}

/// A conversation's message count and chain, `None` before its first message.
pub(crate) fn conversation_tail(
    conn: &Connection,
    low: i64,
    high: i64,
) -> Result<Option<(u64, Conversation)>> {
    let (count, last_id) = chain::tail(conn, low, high).map_err(error::map)?;
    Ok((count > 0).then_some((count as u64, Conversation { low, high, last_id })))
}

/// Reads ids (best first) into `kept`, which holds the `want` smallest keys seen so far (its
/// top is the worst kept); stops at the first id that cannot be kept, since the rest are
/// worse still.
fn keep_best<K: Ord>(
    ids: impl Iterator<Item = Result<i64>>,
    kept: &mut BinaryHeap<K>,
    want: usize,
    key: impl Fn(i64) -> K,
) -> Result<()> {
    for id in ids {
        let candidate = key(id?);
        if kept.len() < want {
            kept.push(candidate);
        } else if kept.peek().is_some_and(|worst| candidate < *worst) {
            kept.pop();
            kept.push(candidate);
        } else {
            break;
        }
    }
    Ok(())
}

/// The messages with these ids, in this order (each a rowid lookup).
fn messages_by_id(conn: &Connection, ids: impl Iterator<Item = i64>) -> Result<Vec<Message>> {
    let mut stmt = conn.prepare_cached(sql::MESSAGE_BY_ID).map_err(error::map)?;
    ids.map(|id| stmt.query_row([id], message_from_row).map_err(row_error))
        .collect()
}

/// A counter row's value, `0` when there is no row yet.
fn count(conn: &Connection, sql: &str, key: &[i64]) -> Result<u64> {
    let mut stmt = conn.prepare_cached(sql).map_err(error::map)?;
    let value: Option<i64> = stmt
        .query_row(rusqlite::params_from_iter(key), |r| r.get(0))
        .optional()
        .map_err(error::map)?;
    Ok(value.unwrap_or(0).max(0) as u64)
}

/// A reader thread's loop: run jobs until told to stop or the store is gone.
pub(crate) fn run(mut ctx: ReadCtx, jobs: Receiver<ReadMsg>) {
    while let Ok(msg) = jobs.recv() {
        match msg {
            ReadMsg::Job(job) => job(&mut ctx),
            ReadMsg::Stop => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Move;
    use crate::chain::testing::Linker;

    /// Sends one message the way the writer does (message row, conversation row, then the
    /// order's move), inside whatever transaction `conn` has open.
    fn send(conn: &Connection, linker: &mut Linker, activity: &Activity, from: i64, to: i64) -> Vec<Move> {
        let (low, high) = (from.min(to), from.max(to));
        let (count, stored) = chain::tail(conn, low, high).unwrap();
        let id = linker.insert(conn, from, to, None);
        conn.execute(
            sql::ADD_CONVERSATION_COUNT,
            [low, high, 1, id, i64::from(from == low)],
        )
        .unwrap();
        let from_id = if count > 0 { stored } else { 0 };
        let moves: Vec<Move> = Move::sides(low, high, from_id, id).collect();
        activity.apply(&moves);
        moves
    }

    fn listed(conn: &Connection, activity: &Activity, user: i64, below: i64) -> Vec<(i64, i64)> {
        conversations_between(conn, activity, UserId(user), 0, below, 10)
            .unwrap()
            .into_iter()
            .map(|(c, peer)| (c.last_id, peer))
            .collect()
    }

    /// The order in memory runs ahead of older snapshots (the writer moves it before its
    /// `COMMIT`); a read in such a snapshot still lists the conversations as the snapshot
    /// holds them, `before` cursor included. A reader that trusted memory would list
    /// conversation (1, 3) at message 4, which its snapshot does not hold, and miss it below
    /// the cursor 3.
    #[test]
    fn a_snapshot_older_than_the_order_lists_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("order.db");
        let mut writer = Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        crate::schema::migrate(&mut writer, 0).unwrap();
        for name in ["a", "b", "c"] {
            writer
                .execute(sql::INSERT_USER, rusqlite::params![name, name, None::<String>])
                .unwrap();
        }
        let activity = Activity::default();
        let mut linker = Linker::default();
        writer.execute_batch("BEGIN").unwrap();
        for (from, to) in [(1, 2), (1, 3), (2, 1)] {
            send(&writer, &mut linker, &activity, from, to);
        }
        writer.execute_batch("COMMIT").unwrap();
        let reader = Connection::open(&path).unwrap();
        let before = vec![(3, 2), (2, 3)];

        // A snapshot opened, then a batch moved the order and committed.
        reader.execute_batch("BEGIN").unwrap();
        assert_eq!(listed(&reader, &activity, 1, i64::MAX), before);
        writer.execute_batch("BEGIN").unwrap();
        send(&writer, &mut linker, &activity, 3, 1);
        writer.execute_batch("COMMIT").unwrap();
        assert_eq!(listed(&reader, &activity, 1, i64::MAX), before);
        assert_eq!(listed(&reader, &activity, 1, 3), vec![(2, 3)]);
        assert_eq!(listed(&reader, &activity, 3, i64::MAX), vec![(2, 1)]);
        reader.execute_batch("COMMIT").unwrap();

        // A batch moved the order and has not committed (or rolls back): a new snapshot
        // holds the committed conversations only.
        let after = vec![(4, 3), (3, 2)];
        writer.execute_batch("BEGIN").unwrap();
        let moves = send(&writer, &mut linker, &activity, 1, 2);
        reader.execute_batch("BEGIN").unwrap();
        assert_eq!(listed(&reader, &activity, 1, i64::MAX), after);
        reader.execute_batch("COMMIT").unwrap();
        writer.execute_batch("ROLLBACK").unwrap();
        activity.undo(&moves);
        reader.execute_batch("BEGIN").unwrap();
        assert_eq!(listed(&reader, &activity, 1, i64::MAX), after);
        assert_eq!(listed(&reader, &activity, 2, i64::MAX), vec![(3, 1)]);
        reader.execute_batch("COMMIT").unwrap();
    }
}
