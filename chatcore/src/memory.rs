//! [`MemoryStore`]: a [`Store`] that keeps everything in process memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::RwLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::store::{
    Backend, BlockQuery, ChangeEvent, Changed, ChangedMessage, Conversation, Credentials, InboxPage,
    InboxRequest, Inserted, MarkedRead, MessageChange, MessagePage, MigrationReport, MovedMarker,
    PageRequest, ReadMarker, SessionRecord, SessionStore, Store, StoredEvent, TokenHash, UserQuery,
    check_checkpoint_name,
};
use crate::{
    ConversationKey, Entity, Error, Forbidden, Message, MessageId, NewMessage, Position, Result, User,
    UserId, Username, now_micros,
};

/// A [`Store`] in process memory: for tests, and for hosts that need no persistence.
/// Everything is lost when it is dropped. Passes the whole conformance suite.
///
/// ```
/// let store: std::sync::Arc<dyn chatcore::Store> = std::sync::Arc::new(chatcore::MemoryStore::new());
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Indexed by `UserId - 1`.
    users: Vec<UserRecord>,
    /// By [`Username::key`]: names are unique without regard to case.
    by_name: BTreeMap<String, UserId>,
    sessions: HashMap<TokenHash, (UserId, DateTime<Utc>)>,
    /// Ascending by id (ids share the position sequence with read events, so they have gaps).
    messages: Vec<Message>,
    /// Read events, ascending by position.
    reads: Vec<ReadMarker>,
    /// Edits and deletions, ascending by position.
    changes: Vec<ChangeRecord>,
    /// The last position handed out.
    last_position: i64,
    /// Each user's durable events, ascending by position.
    streams: HashMap<UserId, Vec<EventRef>>,
    /// Each user's conversations.
    inboxes: HashMap<UserId, Inbox>,
    /// Indexes into `messages`, ascending.
    conversations: HashMap<ConversationKey, Vec<usize>>,
    by_user: HashMap<UserId, Vec<usize>>,
    idempotency: HashMap<(UserId, String), usize>,
    /// Feed consumers' checkpoints by name.
    checkpoints: HashMap<String, Position>,
    /// (blocker, blocked) pairs.
    blocks: HashSet<(UserId, UserId)>,
    /// Each blocker's blocked users by [`Username::key`]: the listing order.
    blocks_by_name: HashMap<UserId, BTreeMap<String, UserId>>,
}

/// One of a user's durable events: an index into `messages`, `reads` or `changes`.
#[derive(Debug, Clone, Copy)]
enum EventRef {
    Message(usize),
    Read(usize),
    Change(usize),
}

/// An edit or a deletion of `messages[index]`: the event names the message, whose current
/// state it renders (so no text that was edited or deleted stays behind in the events).
#[derive(Debug, Clone, Copy)]
struct ChangeRecord {
    position: Position,
    index: usize,
    deleted: bool,
}

#[derive(Debug, Default)]
struct Inbox {
    by_peer: HashMap<UserId, InboxEntry>,
    /// Conversation's newest message id -> peer: the inbox order.
    by_activity: BTreeMap<MessageId, UserId>,
    unread_total: u64,
}

#[derive(Debug, Clone, Copy)]
struct InboxEntry {
    last: MessageId,
    unread: u64,
    read_up_to: Option<MessageId>,
}

#[derive(Debug)]
struct UserRecord {
    user: User,
    password_hash: Option<String>,
    /// Removed by [`Store::remove_user`]: the name stays taken, nothing else works.
    removed: bool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // Every mutation completes before the guard drops, so a poisoned lock holds valid data.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn add_user(&self, username: &Username, password_hash: Option<&str>) -> Result<User> {
        let mut state = self.write();
        if state.by_name.contains_key(&username.key()) {
            return Err(Error::conflict(format!("username {username} is taken")));
        }
        let user = User {
            id: UserId(state.users.len() as i64 + 1),
            username: username.clone(),
        };
        state.by_name.insert(username.key(), user.id);
        state.users.push(UserRecord {
            user: user.clone(),
            password_hash: password_hash.map(str::to_owned),
            removed: false,
        });
        Ok(user)
    }
}

impl State {
    fn user(&self, id: UserId) -> Option<&UserRecord> {
        usize::try_from(id.0 - 1).ok().and_then(|i| self.users.get(i))
    }

    /// The position of `user`'s newest durable event.
    fn latest(&self, user: UserId) -> Position {
        self.streams
            .get(&user)
            .and_then(|events| events.last())
            .map_or(Position::START, |&e| self.position_of(e))
    }

    fn position_of(&self, event: EventRef) -> Position {
        match event {
            EventRef::Message(i) => Position::from(self.messages[i].id),
            EventRef::Read(i) => self.reads[i].position,
            EventRef::Change(i) => self.changes[i].position,
        }
    }

    fn change_event(&self, change: &ChangeRecord) -> StoredEvent {
        let changed = ChangedMessage {
            position: change.position,
            message: self.messages[change.index].clone(),
        };
        if change.deleted {
            StoredEvent::Delete(changed)
        } else {
            StoredEvent::Edit(changed)
        }
    }

    fn stored(&self, event: EventRef) -> StoredEvent {
        match event {
            EventRef::Message(i) => StoredEvent::Message(self.messages[i].clone()),
            EventRef::Read(i) => StoredEvent::Read(self.reads[i].clone()),
            EventRef::Change(i) => self.change_event(&self.changes[i]),
        }
    }

    fn message_index(&self, id: MessageId) -> Option<usize> {
        self.messages.binary_search_by_key(&id, |m| m.id).ok()
    }

    /// `Store::change_message` under the lock.
    fn change(&mut self, sender: UserId, id: MessageId, change: &MessageChange) -> Result<Changed> {
        let state = self;
        let Some(user) = state.user(sender).map(|r| r.user.username.clone()) else {
            return Err(Error::NotFound(Entity::Message));
        };
        let Some(index) = state
            .message_index(id)
            .filter(|&i| state.messages[i].involves(&user))
        else {
            return Err(Error::NotFound(Entity::Message));
        };
        let message = &state.messages[index];
        if message.sender != user {
            return Err(Error::Forbidden(Forbidden::NotTheSender));
        }
        if message.deleted {
            return match change {
                MessageChange::Edit { .. } => Err(Error::NotFound(Entity::Message)),
                MessageChange::Delete => Ok(Changed {
                    message: message.clone(),
                    event: None,
                }),
            };
        }
        let recipient_id = *state
            .by_name
            .get(&message.recipient.key())
            .expect("a message names stored users");
        if matches!(change, MessageChange::Edit { .. }) && state.blocked(sender, recipient_id) {
            return Err(Error::Forbidden(Forbidden::Blocked));
        }
        if let MessageChange::Edit {
            not_before: Some(not_before),
            ..
        } = change
            && message.created_at < *not_before
        {
            return Err(Error::Forbidden(Forbidden::EditWindowClosed));
        }
        let sender_previous = state.latest(sender);
        let recipient_previous = if recipient_id == sender {
            sender_previous
        } else {
            state.latest(recipient_id)
        };
        let position = Position(state.next_position());
        let message = &mut state.messages[index];
        match change {
            MessageChange::Edit { body, .. } => {
                message.body = body.clone();
                message.edited = Some(now_micros());
            }
            MessageChange::Delete => *message = message.clone().into_tombstone(),
        }
        let message = message.clone();
        let change_index = state.changes.len();
        state.changes.push(ChangeRecord {
            position,
            index,
            deleted: message.deleted,
        });
        state
            .streams
            .entry(sender)
            .or_default()
            .push(EventRef::Change(change_index));
        if recipient_id != sender {
            state
                .streams
                .entry(recipient_id)
                .or_default()
                .push(EventRef::Change(change_index));
        }
        Ok(Changed {
            message,
            event: Some(ChangeEvent {
                position,
                recipient_id,
                sender_previous,
                recipient_previous,
            }),
        })
    }

    fn next_position(&mut self) -> i64 {
        self.last_position += 1;
        self.last_position
    }

    /// Records `message` (at `index`) as the newest of `user`'s conversation with `peer`,
    /// one more unread when `unread`.
    fn touch_inbox(&mut self, user: UserId, peer: UserId, id: MessageId, unread: bool) {
        let inbox = self.inboxes.entry(user).or_default();
        let entry = inbox.by_peer.entry(peer).or_insert(InboxEntry {
            last: id,
            unread: 0,
            read_up_to: None,
        });
        inbox.by_activity.remove(&entry.last);
        entry.last = id;
        inbox.by_activity.insert(id, peer);
        if unread {
            entry.unread += 1;
            inbox.unread_total += 1;
        }
    }

    /// Whether a block stands between `a` and `b`, in either direction.
    fn blocked(&self, a: UserId, b: UserId) -> bool {
        self.blocks.contains(&(a, b)) || self.blocks.contains(&(b, a))
    }

    /// Whether `a` and `b` have at least one message between them.
    fn share_conversation(&self, a: UserId, b: UserId) -> bool {
        self.conversations
            .get(&ConversationKey::new(a, b))
            .is_some_and(|indexes| !indexes.is_empty())
    }

    /// Newest-first page of `indexes` (ascending by id).
    fn page(&self, indexes: &[usize], page: &PageRequest) -> MessagePage {
        let end = match page.before {
            Some(before) => indexes.partition_point(|&i| self.messages[i].id < before),
            None => indexes.len(),
        };
        let messages = indexes[..end]
            .iter()
            .rev()
            .skip(page.offset as usize)
            .take(page.limit as usize)
            .map(|&i| self.messages[i].clone())
            .collect();
        MessagePage {
            messages,
            total: indexes.len() as u64,
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_user(&self, username: &Username) -> Result<User> {
        self.add_user(username, None)
    }

    async fn find_user(&self, username: &Username) -> Result<Option<User>> {
        let state = self.read();
        Ok(state
            .by_name
            .get(&username.key())
            .and_then(|id| state.user(*id))
            .map(|r| r.user.clone()))
    }

    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>> {
        let state = self.read();
        let prefix = Username::key_of(&query.prefix);
        let after = query.after.as_ref().map(Username::key);
        let lower = match &after {
            Some(after) if after.as_str() >= prefix.as_str() => Bound::Excluded(after.as_str()),
            _ => Bound::Included(prefix.as_str()),
        };
        Ok(state
            .by_name
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(&prefix))
            .filter(|(_, id)| Some(**id) != query.exclude)
            .filter(|(_, id)| state.user(**id).is_some_and(|r| !r.removed))
            .take(query.limit as usize)
            .filter_map(|(_, id)| state.user(*id).map(|r| r.user.clone()))
            .collect())
    }

    async fn insert_message(&self, new: NewMessage) -> Result<Inserted> {
        let mut state = self.write();
        let recipient_id = *state
            .by_name
            .get(&new.recipient.key())
            .ok_or(Error::NotFound(Entity::User))?;
        match state.user(new.sender.id) {
            None => return Err(Error::NotFound(Entity::User)),
            Some(record) if record.removed => return Err(Error::Forbidden(Forbidden::AccountRemoved)),
            Some(_) => {}
        }
        if let Some(key) = &new.idempotency_key
            && let Some(&index) = state.idempotency.get(&(new.sender.id, key.clone()))
        {
            return Ok(Inserted {
                message: state.messages[index].clone(),
                recipient_id,
                replayed: true,
                sender_previous: Position::START,
                recipient_previous: Position::START,
            });
        }
        if state.blocked(new.sender.id, recipient_id) {
            return Err(Error::Forbidden(Forbidden::Blocked));
        }
        let sender_previous = state.latest(new.sender.id);
        let recipient_previous = state.latest(recipient_id);
        let index = state.messages.len();
        let message = Message::new(
            MessageId(state.next_position()),
            new.sender.username.clone(),
            // As the recipient chose to write it, whatever case the sender typed.
            state
                .user(recipient_id)
                .map_or(new.recipient, |r| r.user.username.clone()),
            now_micros(),
            new.body,
        );
        state.messages.push(message.clone());
        state
            .conversations
            .entry(ConversationKey::new(new.sender.id, recipient_id))
            .or_default()
            .push(index);
        state.by_user.entry(new.sender.id).or_default().push(index);
        state
            .streams
            .entry(new.sender.id)
            .or_default()
            .push(EventRef::Message(index));
        state.touch_inbox(new.sender.id, recipient_id, message.id, false);
        if recipient_id != new.sender.id {
            state.by_user.entry(recipient_id).or_default().push(index);
            state
                .streams
                .entry(recipient_id)
                .or_default()
                .push(EventRef::Message(index));
            state.touch_inbox(recipient_id, new.sender.id, message.id, true);
        }
        if let Some(key) = new.idempotency_key {
            state.idempotency.insert((new.sender.id, key), index);
        }
        Ok(Inserted {
            message,
            recipient_id,
            replayed: false,
            sender_previous,
            recipient_previous,
        })
    }

    async fn message_for(&self, viewer: UserId, id: MessageId) -> Result<Option<Message>> {
        let state = self.read();
        let Some(viewer) = state.user(viewer) else {
            return Ok(None);
        };
        let message = state.message_index(id).map(|i| &state.messages[i]);
        Ok(message.filter(|m| m.involves(&viewer.user.username)).cloned())
    }

    async fn conversation_page(
        &self,
        viewer: UserId,
        other: &Username,
        page: &PageRequest,
    ) -> Result<MessagePage> {
        let state = self.read();
        let other = *state
            .by_name
            .get(&other.key())
            .ok_or(Error::NotFound(Entity::User))?;
        Ok(
            match state.conversations.get(&ConversationKey::new(viewer, other)) {
                Some(indexes) => state.page(indexes, page),
                None => MessagePage::default(),
            },
        )
    }

    async fn user_messages(&self, user: UserId, page: &PageRequest) -> Result<MessagePage> {
        let state = self.read();
        Ok(match state.by_user.get(&user) {
            Some(indexes) => state.page(indexes, page),
            None => MessagePage::default(),
        })
    }

    async fn messages_after(&self, user: UserId, after: MessageId, limit: u32) -> Result<Vec<Message>> {
        let state = self.read();
        let Some(indexes) = state.by_user.get(&user) else {
            return Ok(Vec::new());
        };
        let start = indexes.partition_point(|&i| state.messages[i].id <= after);
        Ok(indexes[start..]
            .iter()
            .take(limit as usize)
            .map(|&i| state.messages[i].clone())
            .collect())
    }

    async fn latest_position(&self, user: UserId) -> Result<Position> {
        Ok(self.read().latest(user))
    }

    async fn events_after(&self, user: UserId, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
        let state = self.read();
        let Some(events) = state.streams.get(&user) else {
            return Ok(Vec::new());
        };
        let start = events.partition_point(|&e| state.position_of(e) <= after);
        Ok(events[start..]
            .iter()
            .take(limit as usize)
            .map(|&e| state.stored(e))
            .collect())
    }

    async fn inbox(&self, user: UserId, request: &InboxRequest) -> Result<InboxPage> {
        let state = self.read();
        let Some(inbox) = state.inboxes.get(&user) else {
            return Ok(InboxPage::default());
        };
        let upper = request.before.map_or(Bound::Unbounded, Bound::Excluded);
        let conversations = inbox
            .by_activity
            .range((Bound::Unbounded, upper))
            .rev()
            .take(request.limit as usize)
            .map(|(&last, &peer)| {
                let entry = inbox.by_peer[&peer];
                let peer_read_up_to = state
                    .inboxes
                    .get(&peer)
                    .and_then(|theirs| theirs.by_peer.get(&user))
                    .and_then(|theirs| theirs.read_up_to);
                let index = state.message_index(last).expect("an inbox names stored messages");
                Conversation {
                    peer: state
                        .user(peer)
                        .expect("an inbox names stored users")
                        .user
                        .username
                        .clone(),
                    last_message: state.messages[index].clone(),
                    unread: entry.unread,
                    read_up_to: entry.read_up_to,
                    peer_read_up_to,
                }
            })
            .collect();
        Ok(InboxPage {
            conversations,
            unread_total: inbox.unread_total,
        })
    }

    async fn mark_read(&self, reader: &User, peer: &Username, up_to: MessageId) -> Result<MarkedRead> {
        let mut state = self.write();
        let peer_id = *state
            .by_name
            .get(&peer.key())
            .ok_or(Error::NotFound(Entity::User))?;
        let key = ConversationKey::new(reader.id, peer_id);
        let in_conversation = state.message_index(up_to).is_some_and(|i| {
            state
                .conversations
                .get(&key)
                .is_some_and(|indexes| indexes.binary_search(&i).is_ok())
        });
        let entry = state
            .inboxes
            .get(&reader.id)
            .and_then(|inbox| inbox.by_peer.get(&peer_id))
            .copied();
        let (true, Some(entry)) = (in_conversation, entry) else {
            return Err(Error::NotFound(Entity::Message));
        };
        if entry.read_up_to.is_some_and(|read| read >= up_to) {
            return Ok(MarkedRead {
                unread: entry.unread,
                read_up_to: entry.read_up_to.unwrap_or(up_to),
                moved: None,
            });
        }
        // Only the messages the marker passes over are looked at.
        let passed = if peer_id == reader.id {
            0
        } else {
            let indexes = &state.conversations[&key];
            let from = entry.read_up_to.unwrap_or(MessageId(0));
            let start = indexes.partition_point(|&i| state.messages[i].id <= from);
            let end = indexes.partition_point(|&i| state.messages[i].id <= up_to);
            indexes[start..end]
                .iter()
                .filter(|&&i| state.messages[i].sender != reader.username)
                .count() as u64
        };
        let reader_previous = state.latest(reader.id);
        let peer_previous = state.latest(peer_id);
        let position = Position(state.next_position());
        let peer_name = state.user(peer_id).expect("found by name").user.username.clone();
        let marker = ReadMarker {
            position,
            reader: reader.username.clone(),
            peer: peer_name,
            up_to,
        };
        let read_index = state.reads.len();
        state.reads.push(marker.clone());
        state
            .streams
            .entry(reader.id)
            .or_default()
            .push(EventRef::Read(read_index));
        if peer_id != reader.id {
            state
                .streams
                .entry(peer_id)
                .or_default()
                .push(EventRef::Read(read_index));
        }
        let inbox = state.inboxes.get_mut(&reader.id).expect("checked above");
        inbox.unread_total -= passed;
        let entry = inbox.by_peer.get_mut(&peer_id).expect("checked above");
        entry.unread -= passed;
        entry.read_up_to = Some(up_to);
        Ok(MarkedRead {
            unread: entry.unread,
            read_up_to: up_to,
            moved: Some(MovedMarker {
                marker,
                peer_id,
                reader_previous,
                peer_previous: if peer_id == reader.id {
                    reader_previous
                } else {
                    peer_previous
                },
            }),
        })
    }

    async fn change_message(&self, sender: UserId, id: MessageId, change: &MessageChange) -> Result<Changed> {
        self.write().change(sender, id, change)
    }

    async fn remove_user(&self, user: UserId) -> Result<()> {
        let mut state = self.write();
        let record = usize::try_from(user.0 - 1)
            .ok()
            .and_then(|i| state.users.get_mut(i))
            .ok_or(Error::NotFound(Entity::User))?;
        record.removed = true;
        record.password_hash = None;
        state.sessions.retain(|_, (owner, _)| *owner != user);
        Ok(())
    }

    async fn delete_sent_messages(
        &self,
        sender: UserId,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<Changed>> {
        let mut state = self.write();
        let Some(name) = state.user(sender).map(|r| r.user.username.clone()) else {
            return Ok(Vec::new());
        };
        let ids: Vec<MessageId> = state.by_user.get(&sender).map_or_else(Vec::new, |indexes| {
            let first = indexes.partition_point(|&i| state.messages[i].id <= after);
            indexes[first..]
                .iter()
                .map(|&i| &state.messages[i])
                .filter(|m| m.sender == name && !m.deleted)
                .take(limit as usize)
                .map(|m| m.id)
                .collect()
        });
        ids.into_iter()
            .map(|id| state.change(sender, id, &MessageChange::Delete))
            .collect()
    }

    async fn set_block(&self, blocker: UserId, blocked: &Username, on: bool) -> Result<User> {
        let mut state = self.write();
        let target = state
            .by_name
            .get(&blocked.key())
            .and_then(|id| state.user(*id))
            .map(|r| r.user.clone())
            .ok_or(Error::NotFound(Entity::User))?;
        if state.user(blocker).is_none() {
            return Err(Error::NotFound(Entity::User));
        }
        if target.id == blocker {
            return Err(Error::invalid("you cannot block yourself"));
        }
        if on {
            state.blocks.insert((blocker, target.id));
            state
                .blocks_by_name
                .entry(blocker)
                .or_default()
                .insert(target.username.key(), target.id);
        } else {
            state.blocks.remove(&(blocker, target.id));
            if let Some(names) = state.blocks_by_name.get_mut(&blocker) {
                names.remove(&target.username.key());
            }
        }
        Ok(target)
    }

    async fn blocked_users(&self, user: UserId, query: &BlockQuery) -> Result<Vec<User>> {
        let state = self.read();
        let Some(names) = state.blocks_by_name.get(&user) else {
            return Ok(Vec::new());
        };
        let lower = query
            .after
            .as_ref()
            .map_or(Bound::Unbounded, |after| Bound::Excluded(after.key()));
        Ok(names
            .range((lower, Bound::Unbounded))
            .take(query.limit as usize)
            .filter_map(|(_, id)| state.user(*id).map(|r| r.user.clone()))
            .collect())
    }

    async fn reachable_peer(&self, user: UserId, peer: &Username) -> Result<Option<UserId>> {
        let state = self.read();
        Ok(state.by_name.get(&peer.key()).copied().filter(|&peer| {
            peer != user && state.share_conversation(user, peer) && !state.blocked(user, peer)
        }))
    }

    async fn conversation_peers(&self, user: UserId, among: &[UserId]) -> Result<Vec<UserId>> {
        let state = self.read();
        let mut seen = HashSet::new();
        Ok(among
            .iter()
            .copied()
            .filter(|&peer| state.share_conversation(user, peer) && seen.insert(peer))
            .collect())
    }

    async fn feed_after(&self, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
        let state = self.read();
        let first_message = state.messages.partition_point(|m| Position::from(m.id) <= after);
        let first_read = state.reads.partition_point(|r| r.position <= after);
        let first_change = state.changes.partition_point(|c| c.position <= after);
        let mut events: Vec<StoredEvent> = state.messages[first_message..]
            .iter()
            .take(limit as usize)
            .cloned()
            .map(StoredEvent::Message)
            .chain(
                state.reads[first_read..]
                    .iter()
                    .take(limit as usize)
                    .cloned()
                    .map(StoredEvent::Read),
            )
            .chain(
                state.changes[first_change..]
                    .iter()
                    .take(limit as usize)
                    .map(|c| state.change_event(c)),
            )
            .collect();
        events.sort_by_key(StoredEvent::position);
        events.truncate(limit as usize);
        Ok(events)
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Position> {
        check_checkpoint_name(name)?;
        Ok(self
            .read()
            .checkpoints
            .get(name)
            .copied()
            .unwrap_or(Position::START))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        check_checkpoint_name(name)?;
        self.write().checkpoints.insert(name.to_owned(), position);
        Ok(())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create_account(&self, username: &Username, password_hash: &str) -> Result<User> {
        self.add_user(username, Some(password_hash))
    }

    async fn credentials(&self, username: &Username) -> Result<Option<Credentials>> {
        let state = self.read();
        Ok(state
            .by_name
            .get(&username.key())
            .and_then(|id| state.user(*id))
            .map(|r| Credentials {
                user: r.user.clone(),
                password_hash: r.password_hash.clone(),
            }))
    }

    async fn create_session(
        &self,
        token_hash: &TokenHash,
        user: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut state = self.write();
        if state.user(user).is_none_or(|r| r.removed) {
            return Err(Error::NotFound(Entity::User));
        }
        state.sessions.insert(*token_hash, (user, expires_at));
        Ok(())
    }

    async fn session_user(
        &self,
        token_hash: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>> {
        let state = self.read();
        Ok(match state.sessions.get(token_hash) {
            Some((user, expires_at)) if *expires_at > now => state.user(*user).map(|r| SessionRecord {
                user: r.user.clone(),
                expires_at: *expires_at,
            }),
            _ => None,
        })
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<()> {
        self.write().sessions.remove(token_hash);
        Ok(())
    }

    async fn delete_user_sessions(&self, user: UserId) -> Result<u64> {
        let mut state = self.write();
        let before = state.sessions.len();
        state.sessions.retain(|_, (owner, _)| *owner != user);
        Ok((before - state.sessions.len()) as u64)
    }

    async fn set_password_hash(&self, username: &Username, password_hash: &str) -> Result<User> {
        let mut state = self.write();
        let id = *state
            .by_name
            .get(&username.key())
            .ok_or(Error::NotFound(Entity::User))?;
        let record = usize::try_from(id.0 - 1)
            .ok()
            .and_then(|i| state.users.get_mut(i))
            .filter(|r| !r.removed)
            .ok_or(Error::NotFound(Entity::User))?;
        record.password_hash = Some(password_hash.to_owned());
        Ok(record.user.clone())
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        let mut state = self.write();
        let before = state.sessions.len();
        state.sessions.retain(|_, (_, expires_at)| *expires_at > now);
        Ok((before - state.sessions.len()) as u64)
    }
}

#[async_trait]
impl Backend for MemoryStore {
    /// Nothing to migrate: the schema is the code.
    async fn migrate(&self) -> Result<MigrationReport> {
        Ok(MigrationReport::default())
    }

    /// Nothing to flush; the data stays until the store is dropped.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
