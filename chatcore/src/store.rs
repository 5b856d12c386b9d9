//! The storage trait every backend implements, and the values it exchanges.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{Message, MessageId, NewMessage, Position, Result, User, UserId, Username};

/// Which slice of a message list to read, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Only messages with an id below this one (the `before` cursor).
    pub before: Option<MessageId>,
    /// Messages to skip after applying `before` (the original app's `?page=N`). Keyset paging
    /// with `before` is the fast path: on some backends (MySQL, a user's own list on SQLite)
    /// offsets cost time proportional to their size; SQLite's conversation pages jump to an
    /// offset in constant time.
    pub offset: u32,
    /// At most this many messages.
    pub limit: u32,
}

impl PageRequest {
    /// The newest `limit` messages.
    pub fn latest(limit: u32) -> Self {
        Self {
            before: None,
            offset: 0,
            limit,
        }
    }

    /// The `limit` messages just older than `before`.
    pub fn before(before: MessageId, limit: u32) -> Self {
        Self {
            before: Some(before),
            offset: 0,
            limit,
        }
    }
}

/// One page of a message list, newest first, with the list's total size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessagePage {
    /// The messages, newest first.
    pub messages: Vec<Message>,
    /// How many messages the whole list holds (the conversation's, or the user's), whatever
    /// the cursor. Stores keep this as a counter; it is never a scan.
    pub total: u64,
}

/// Which users to list: sorted by [`Username::key`] (byte order), optionally after a name,
/// with a name prefix, all without regard to case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserQuery {
    /// Leave this user out (the caller).
    pub exclude: Option<UserId>,
    /// Only names whose key starts with this prefix's key ([`Username::key_of`]): the
    /// prefix matches without regard to case. Empty for all.
    pub prefix: String,
    /// Only names whose key sorts after this name's key (keyset paging).
    pub after: Option<Username>,
    /// At most this many users.
    pub limit: u32,
}

/// Which of a user's blocks to list ([`Store::blocked_users`]): sorted by the blocked users'
/// [`Username::key`] (byte order), after a name (keyset paging), like the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockQuery {
    /// Only users whose key sorts after this name's key (the last name of the previous page).
    pub after: Option<Username>,
    /// At most this many users.
    pub limit: u32,
}

/// What [`Store::insert_message`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    /// The stored message (or the one stored earlier under the same idempotency key).
    pub message: Message,
    /// The recipient's id, so the service can notify them without another lookup.
    pub recipient_id: UserId,
    /// `true` when the idempotency key had been used before and nothing new was stored.
    pub replayed: bool,
    /// The position of the sender's durable event just before this message
    /// ([`Position::START`] when this is their first). Meaningless when `replayed`.
    pub sender_previous: Position,
    /// The same for the recipient (equal to `sender_previous` for a note to oneself).
    pub recipient_previous: Position,
}

/// Which slice of a user's inbox to read: conversations by latest activity, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxRequest {
    /// Only conversations whose newest message is older than this id (the `next` cursor: the
    /// previous page's last [`Conversation::last_message`] id).
    pub before: Option<MessageId>,
    /// At most this many conversations.
    pub limit: u32,
}

/// One conversation of a user's inbox, as that user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The other participant (the user themself for their notes to self), with their name as
    /// they chose it.
    pub peer: Username,
    /// The conversation's newest message: its id orders the inbox.
    pub last_message: Message,
    /// Messages from the peer after [`Conversation::read_up_to`] (all of them without a
    /// marker); always 0 for notes to self.
    pub unread: u64,
    /// The user's read marker: the newest message they have read, if they marked any.
    pub read_up_to: Option<MessageId>,
    /// The peer's read marker on the same conversation (the user's own for notes to self).
    pub peer_read_up_to: Option<MessageId>,
}

/// A page of a user's inbox, latest activity first, with their unread total.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboxPage {
    /// The conversations, latest activity first.
    pub conversations: Vec<Conversation>,
    /// Unread messages over all the user's conversations (not only this page's). Stores keep
    /// it as a counter; it is never a scan.
    pub unread_total: u64,
}

/// A read marker that moved: a durable event of both users of the conversation, at its own
/// position in each one's stream (rendered by [`crate::Event::read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMarker {
    /// The event's position.
    pub position: Position,
    /// Who read.
    pub reader: Username,
    /// The other participant of the conversation (the reader for notes to self).
    pub peer: Username,
    /// The newest message the reader has now read.
    pub up_to: MessageId,
}

/// A message its sender edited or deleted: a durable event of both participants, at its own
/// position in each one's stream (rendered by [`crate::Event::edit`] and
/// [`crate::Event::delete`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedMessage {
    /// The event's position.
    pub position: Position,
    /// The message as it is now: read back later, an edit event shows the latest text (or
    /// the tombstone, once deleted), so a replay never brings back text that is gone.
    pub message: Message,
}

/// A durable event as a store keeps it and reads it back ([`Store::events_after`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoredEvent {
    /// A message was stored; its position is its id.
    Message(Message),
    /// A read marker moved.
    Read(ReadMarker),
    /// A message was edited by its sender.
    Edit(ChangedMessage),
    /// A message was deleted by its sender (the message is its tombstone).
    Delete(ChangedMessage),
}

impl StoredEvent {
    /// The event's position in its users' streams.
    pub fn position(&self) -> Position {
        match self {
            StoredEvent::Message(message) => Position::from(message.id),
            StoredEvent::Read(marker) => marker.position,
            StoredEvent::Edit(changed) | StoredEvent::Delete(changed) => changed.position,
        }
    }

    /// The event rendered into its frame.
    pub fn render(&self) -> crate::Event {
        match self {
            StoredEvent::Message(message) => crate::Event::message(message),
            StoredEvent::Read(marker) => crate::Event::read(marker),
            StoredEvent::Edit(changed) => crate::Event::edit(changed),
            StoredEvent::Delete(changed) => crate::Event::delete(changed),
        }
    }

    /// The bytes of message text the event carries (what a catch-up page is bounded by).
    pub fn body_len(&self) -> usize {
        match self {
            StoredEvent::Message(message) => message.body.len(),
            StoredEvent::Edit(changed) | StoredEvent::Delete(changed) => changed.message.body.len(),
            StoredEvent::Read(_) => 0,
        }
    }
}

/// What a sender asks to do to one of their messages ([`Store::change_message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageChange {
    /// Replace the body (already trimmed and checked by the service).
    Edit {
        /// The new body.
        body: String,
        /// The edit window: a message created before this instant is not edited
        /// ([`crate::Forbidden::EditWindowClosed`]). `None`: no window.
        not_before: Option<DateTime<Utc>>,
    },
    /// Delete the body for good and keep a tombstone.
    Delete,
}

/// What [`Store::change_message`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The message now: edited, or the tombstone.
    pub message: Message,
    /// Set when something changed: the durable event stored for it. `None` for the deletion
    /// of a message already deleted.
    pub event: Option<ChangeEvent>,
}

/// The durable event of an edit or a deletion, with what the publisher needs to notify both
/// participants in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The event's position in both participants' streams.
    pub position: Position,
    /// The recipient's id (the sender's for a note to self).
    pub recipient_id: UserId,
    /// The position of the sender's durable event just before this one.
    pub sender_previous: Position,
    /// The same for the recipient (equal to `sender_previous` for a note to self).
    pub recipient_previous: Position,
}

/// What [`Store::mark_read`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedRead {
    /// The reader's unread count in this conversation now.
    pub unread: u64,
    /// The reader's marker now: the asked id, or a newer one already there.
    pub read_up_to: MessageId,
    /// Set when the marker moved: the event stored for it.
    pub moved: Option<MovedMarker>,
}

/// The durable event of a marker that moved, with what the publisher needs to notify both
/// users in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedMarker {
    /// The event.
    pub marker: ReadMarker,
    /// The peer's id (the reader's for notes to self).
    pub peer_id: UserId,
    /// The position of the reader's durable event just before this one.
    pub reader_previous: Position,
    /// The same for the peer (equal to `reader_previous` for notes to self).
    pub peer_previous: Position,
}

/// A user with the password hash kept for them, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub user: User,
    /// The PHC-format password hash, `None` for users created without a password.
    pub password_hash: Option<String>,
}

/// A live session as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Whose session it is.
    pub user: User,
    /// When it stops authenticating (connections opened with it close then).
    pub expires_at: DateTime<Utc>,
}

/// The SHA-256 of a session token. Stores keep only this, so a leaked database does not
/// leak live sessions.
pub type TokenHash = [u8; 32];

/// Durable storage for users, sessions and messages.
///
/// Object-safe: hosts and the service hold an `Arc<dyn Store>`. Every method is one round
/// trip to the backend. Implementations must pass [`crate::conformance`] (see
/// [`crate::store_conformance_tests!`]).
///
/// # Positions
/// A stored message is a durable event whose [`Position`] is its id; a read marker that moves
/// ([`Store::mark_read`]) is one too, taking its position from the same sequence, so a user's
/// messages and read events share one order. For each user, positions
/// are handed out in commit order: once any reader can see a user's event at position `p`,
/// every reader can see all of that user's events below `p`, and no event of that user below
/// `p` will appear later. [`Store::insert_message`] reports each participant's previous
/// position, the link a consumer follows to notice a missing event (see [`crate::event`]).
/// A backend that takes ids from a plain database sequence without ordering commits breaks
/// this; the conformance suite's `concurrent_writers_never_reveal_a_lower_position` catches it.
///
/// The same holds across users, for the host's event feed ([`Store::feed_after`]): once any
/// reader can see position `p`, every reader can see every event below `p`, whoever it
/// belongs to (`feed_never_skips_under_concurrent_writers` checks it). One sequence whose
/// lock is held until commit (what every backend of this workspace does) gives both.
///
/// Errors: a missing user or message is `Ok(None)` where the signature allows it, otherwise
/// [`crate::Error::NotFound`]; a taken username is [`crate::Error::Conflict`]; a backend that
/// is down or busy is [`crate::Error::Unavailable`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a user without credentials (a host's own authenticator vouches for them). A
    /// name whose [`Username::key`] is taken (in any case) is [`crate::Error::Conflict`].
    async fn create_user(&self, username: &Username) -> Result<User>;

    /// Finds a user by name without regard to case (by [`Username::key`]); the user comes
    /// back with the name as it was chosen.
    async fn find_user(&self, username: &Username) -> Result<Option<User>>;

    /// Lists users sorted by [`Username::key`] (byte order), per `query`.
    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>>;

    /// Stores a message durably and returns it with its id and timestamp. Resolves the
    /// recipient by key in the same round trip ([`crate::Error::NotFound`] when unknown); the
    /// message names the recipient as they chose to write their name, whatever case the
    /// sender typed. With an
    /// idempotency key already used by the same sender, stores nothing and returns the
    /// earlier message with `replayed: true`. Ids are handed out in commit order, and each
    /// participant's previous position is reported (trait docs, "Positions"). In the same
    /// transaction it brings both users' inboxes up to date ([`Store::inbox`]): the
    /// conversation's newest message, and one more unread for the recipient (never for a note
    /// to oneself).
    ///
    /// While a block stands between sender and recipient, in either direction
    /// ([`Store::set_block`]), stores nothing and answers [`crate::Error::Forbidden`]
    /// ([`crate::Forbidden::Blocked`]): checked in the insert's own transaction (no check
    /// before it that a block could slip past), after the idempotency key (a replay of a
    /// message stored before the block still answers that message).
    async fn insert_message(&self, message: NewMessage) -> Result<Inserted>;

    /// The message `id`, if `viewer` sent or received it; `None` for anyone else and for an id
    /// that does not exist (the same answer, so ids cannot be probed).
    async fn message_for(&self, viewer: UserId, id: MessageId) -> Result<Option<Message>>;

    /// A page of the conversation between `viewer` and `other`, newest first, and the
    /// conversation's total size. Unknown `other` is [`crate::Error::NotFound`].
    async fn conversation_page(
        &self,
        viewer: UserId,
        other: &Username,
        page: &PageRequest,
    ) -> Result<MessagePage>;

    /// A page of every message `user` sent or received, newest first, and their total.
    async fn user_messages(&self, user: UserId, page: &PageRequest) -> Result<MessagePage>;

    /// Up to `limit` messages `user` sent or received with an id greater than `after`,
    /// oldest first: the catch-up of a reconnecting client, read in pages. Never returns an
    /// id while a smaller one of the same user may still appear (trait docs, "Positions").
    async fn messages_after(&self, user: UserId, after: MessageId, limit: u32) -> Result<Vec<Message>>;

    /// The position of `user`'s newest durable event of any kind ([`Position::START`] when
    /// none, and for an unknown user). One small read, whatever the user's history.
    async fn latest_position(&self, user: UserId) -> Result<Position>;

    /// Up to `limit` of `user`'s durable events (messages they sent or received, read markers
    /// of their conversations that moved, edits and deletions of their messages) with a position greater than `after`, oldest first,
    /// read from one consistent view: the catch-up of a reconnecting client. Never returns a
    /// position while a smaller one of the same user may still appear (trait docs,
    /// "Positions").
    async fn events_after(&self, user: UserId, after: Position, limit: u32) -> Result<Vec<StoredEvent>>;

    /// A page of `user`'s inbox: their conversations, the one with the newest message first,
    /// each with the user's unread count and both read markers, and the user's unread total.
    ///
    /// Costs what the page holds, never the number of the user's conversations nor their
    /// length: unread counts and the total are kept at write time. Pages never repeat a
    /// conversation; one that gets a new message while a client pages moves above the
    /// cursor, and the client learns of it from that message's event.
    async fn inbox(&self, user: UserId, request: &InboxRequest) -> Result<InboxPage>;

    /// Moves `reader`'s read marker in their conversation with `peer` up to message `up_to`
    /// (which either of them sent). The marker only moves forward: an id at or below it
    /// changes nothing and stores no event. When it moves, the store keeps a durable
    /// [`ReadMarker`] event for both users, at the next position of each one's stream
    /// (trait docs, "Positions"), in the same transaction as the marker.
    ///
    /// Costs at most the number of messages the marker passes over, never the length of the
    /// conversation.
    ///
    /// Errors: [`crate::Error::NotFound`] with [`crate::Entity::User`] for an unknown `peer`,
    /// with [`crate::Entity::Message`] when `up_to` is not a message between the two.
    async fn mark_read(&self, reader: &User, peer: &Username, up_to: MessageId) -> Result<MarkedRead>;

    /// Applies `change` to message `id` on behalf of `sender`, in one transaction, and keeps
    /// a durable event of it for both participants at the next position of each one's stream
    /// (trait docs, "Positions"), visible in the host feed ([`Store::feed_after`]) too.
    ///
    /// - An edit replaces the body and sets [`Message::edited`] to the commit time.
    /// - A deletion removes the body from storage for good (not only hidden) and keeps the
    ///   tombstone ([`Message::into_tombstone`]) with its id, participants and timestamp, in
    ///   its place in every history. Deleting a tombstone again changes nothing, stores no
    ///   event and answers the tombstone (`event: None`).
    /// - Neither changes any unread count or read marker; the inbox shows the message as it
    ///   is now (an edited or deleted newest message shows edited or deleted).
    ///
    /// Errors, checked in this order: [`crate::Error::NotFound`] ([`crate::Entity::Message`])
    /// when `id` is not a message `sender` sent or received (the same answer as a missing id,
    /// so ids cannot be probed); [`crate::Error::Forbidden`]
    /// ([`crate::Forbidden::NotTheSender`]) when `sender` only received it;
    /// [`crate::Error::NotFound`] for an edit of a tombstone; [`crate::Forbidden::Blocked`] for an
    /// edit while a block stands between the two participants ([`Store::set_block`], either
    /// direction; checked in the same transaction; deleting is never refused for a block);
    /// [`crate::Forbidden::EditWindowClosed`] for an edit of a message created before
    /// `not_before`.
    async fn change_message(&self, sender: UserId, id: MessageId, change: &MessageChange) -> Result<Changed>;

    /// Starts (`on: true`) or ends (`on: false`) `blocker`'s block of the user holding
    /// `blocked`'s key, and returns that user (with their name as chosen). Idempotent:
    /// blocking twice keeps one block, ending a block that does not exist changes nothing.
    ///
    /// While a block stands between two users, in either direction, [`Store::insert_message`]
    /// refuses every message between them and [`Store::change_message`] every edit of one
    /// (deleting stays allowed), each with [`crate::Error::Forbidden`]
    /// ([`crate::Forbidden::Blocked`]), checked in the same transaction as the write. So once
    /// this call has returned, no message between the two is stored until the block ends:
    /// an insert that committed first is in the history, one that commits later is refused.
    /// Messages stored before stay readable by both. A block is durable state, not an event:
    /// it takes no position and is not in any user's stream nor in the feed.
    ///
    /// Errors: [`crate::Error::NotFound`] ([`crate::Entity::User`]) when no user holds
    /// `blocked`'s key, or `blocker` is not a user; [`crate::Error::Invalid`] when `blocked`
    /// is `blocker` (nobody blocks themself).
    async fn set_block(&self, blocker: UserId, blocked: &Username, on: bool) -> Result<User>;

    /// The users `user` blocks, sorted by [`Username::key`] after [`BlockQuery::after`], at
    /// most [`BlockQuery::limit`] (names as chosen). Costs an index range of at most `limit`
    /// entries, whatever the number of blocks. An unknown `user` blocks nobody.
    async fn blocked_users(&self, user: UserId, query: &BlockQuery) -> Result<Vec<User>>;

    /// The id of the user holding `peer`'s key when `user` may reach them with an ephemeral
    /// frame (typing): that user exists, is not `user`, the two share a conversation (at
    /// least one message between them, deleted or not), and no block stands between them in
    /// either direction. `None` otherwise. One read of a few index entries, whatever the
    /// length or number of conversations.
    async fn reachable_peer(&self, user: UserId, peer: &Username) -> Result<Option<UserId>>;

    /// Which of `among` share a conversation with `user` (at least one message between them;
    /// `user` themself when they wrote a note to self), in no particular order, each once.
    /// Ids of unknown users are left out. Costs one indexed lookup per id of `among` (callers
    /// pass a page: the directory's), never the number of `user`'s conversations.
    async fn conversation_peers(&self, user: UserId, among: &[UserId]) -> Result<Vec<UserId>>;

    /// Up to `limit` durable events of every user (messages, read markers that moved) with a
    /// position greater than `after`, oldest first, each once (a message is one event, not
    /// one per participant), read from one consistent view: the host's event feed, read
    /// after a checkpoint it keeps ([`Store::load_checkpoint`], [`crate::FeedConsumer`]).
    ///
    /// The promise a consumer relies on: the global order is position order, and a position
    /// becomes visible here only once every smaller position that will ever exist is visible
    /// (positions are handed out in commit order across all users, not only per user: trait
    /// docs, "Positions"). So a consumer that reads after the last position it handled never
    /// skips an event, whatever the number of concurrent writers. Costs an index range of
    /// at most `limit` rows per kind of event, whatever the size of the tables.
    async fn feed_after(&self, after: Position, limit: u32) -> Result<Vec<StoredEvent>>;

    /// The position saved under `name` by [`Store::save_checkpoint`]; [`Position::START`]
    /// when none was. Names are at most [`MAX_CHECKPOINT_NAME`] bytes (longer is
    /// [`crate::Error::Invalid`]).
    async fn load_checkpoint(&self, name: &str) -> Result<Position>;

    /// Durably saves `position` under `name`, replacing what was saved before (even a larger
    /// position: a consumer may move back to replay). Checkpoints live with the chat data, so a
    /// consumer restarted on any node resumes where the last one stopped.
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()>;

    /// Removes `user`'s account for good, in one transaction: the user is marked removed,
    /// and a backend that is also a [`SessionStore`] over the same database deletes their
    /// password hash and every session of theirs in the same transaction. Idempotent.
    ///
    /// What stays and what changes after it:
    /// - the user row stays, so the name stays reserved ([`Store::create_user`] and
    ///   [`SessionStore::create_account`] of any case of it are [`crate::Error::Conflict`]),
    ///   [`Store::find_user`] still finds them and every history still names them;
    /// - [`Store::list_users`] leaves them out;
    /// - [`Store::insert_message`] from them is [`crate::Error::Forbidden`]
    ///   ([`crate::Forbidden::AccountRemoved`]), also for a send racing the removal: once
    ///   this returns, no send of theirs commits any more, so [`Store::delete_sent_messages`]
    ///   run after it sees every message they will ever have sent;
    /// - [`SessionStore::credentials`] answers them with `password_hash: None` (no password
    ///   logs in), [`SessionStore::create_session`] for them is [`crate::Error::NotFound`]
    ///   ([`crate::Entity::User`]) and [`SessionStore::set_password_hash`] too.
    ///
    /// Their messages are not touched here: tombstone them with
    /// [`Store::delete_sent_messages`] ([`crate::ChatService::delete_account`] does both).
    /// Errors: [`crate::Error::NotFound`] ([`crate::Entity::User`]) for an unknown id.
    async fn remove_user(&self, user: UserId) -> Result<()>;

    /// Deletes, as [`Store::change_message`] with [`MessageChange::Delete`] does one by one,
    /// up to `limit` of the messages `sender` sent with an id greater than `after` that are
    /// not tombstones yet, oldest first: each body is removed from storage for good, and each
    /// deletion commits with its durable event of both participants at its own position
    /// (trait docs, "Positions"); a backend may commit the batch as one transaction or each
    /// deletion as its own. Returns the tombstones in id order, each with its
    /// event ([`Changed::event`]; `None` only for one that a concurrent deletion tombstoned
    /// first); an empty answer means none is left after `after`. The
    /// caller pages on with the last id answered, so a history of any length is deleted in
    /// bounded batches and read once. Costs an index range of `sender`'s sent messages
    /// after `after` (tombstones in it are skipped), never their whole history.
    async fn delete_sent_messages(
        &self,
        sender: UserId,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<Changed>>;

    /// Whether the storage answers a trivial read now: what a readiness probe (`/readyz` of
    /// `chatcore-axum`) asks before it sends traffic here. `Ok(())` when it answered;
    /// [`crate::Error::Unavailable`] (or whatever the read failed with) when it did not. The
    /// caller bounds the wait with its own timeout. Reads nothing a caller could see and
    /// changes nothing.
    ///
    /// The default reads [`Store::latest_position`] of user id 0, which no backend hands out
    /// (an unknown user is one small indexed read answering [`Position::START`]): it goes
    /// through the backend's own read path (its pool or reader threads, its timeouts), so a
    /// hung database or a stuck reader shows here as it would for a client. The backends of
    /// this workspace keep it for that reason; override it only with a read that is at
    /// least as honest.
    async fn check_ready(&self) -> Result<()> {
        self.latest_position(UserId(0)).await.map(|_| ())
    }
}

/// The longest checkpoint name, in bytes ([`Store::save_checkpoint`]).
pub const MAX_CHECKPOINT_NAME: usize = 100;

/// Checks a checkpoint name: 1 to [`MAX_CHECKPOINT_NAME`] bytes. Every store calls it first.
///
/// ```
/// assert!(chatcore::store::check_checkpoint_name("webhooks").is_ok());
/// assert!(chatcore::store::check_checkpoint_name("").is_err());
/// ```
pub fn check_checkpoint_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_CHECKPOINT_NAME {
        return Err(crate::Error::invalid(format!(
            "a checkpoint name is 1 to {MAX_CHECKPOINT_NAME} bytes"
        )));
    }
    Ok(())
}

/// Accounts with passwords and login sessions: what `chatcore-axum`'s `SessionAuthenticator`
/// keeps. A host that brings its own authenticator implements [`Store`] alone. The backends
/// of this workspace implement both over one database, so an account and its messages live
/// together. Implementations must pass [`crate::conformance`]'s session scenarios.
///
/// Users are the same users as [`Store`]'s: an account made here is a user there.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Creates a user with a PHC-format password hash. A name whose [`Username::key`] is
    /// taken is [`crate::Error::Conflict`].
    async fn create_account(&self, username: &Username, password_hash: &str) -> Result<User>;

    /// The user and password hash kept under `username` (found by key, as in
    /// [`Store::find_user`]); `None` for an unknown name.
    async fn credentials(&self, username: &Username) -> Result<Option<Credentials>>;

    /// Records a session: `token_hash` authenticates `user` until `expires_at`.
    async fn create_session(
        &self,
        token_hash: &TokenHash,
        user: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<()>;

    /// The user a session belongs to and when it expires, if the session exists and has not
    /// expired at `now`.
    async fn session_user(&self, token_hash: &TokenHash, now: DateTime<Utc>)
    -> Result<Option<SessionRecord>>;

    /// Ends a session at once. Ending an unknown session is not an error.
    async fn delete_session(&self, token_hash: &TokenHash) -> Result<()>;

    /// Ends every session of `user` at once (an operator's "log them out everywhere", a
    /// password change); returns how many there were. An unknown user has none (`Ok(0)`).
    async fn delete_user_sessions(&self, user: UserId) -> Result<u64>;

    /// Replaces the PHC-format password hash of the account `username` (found by key, as in
    /// [`Store::find_user`]), also for a user created without one, and returns the user.
    /// Sessions are left alone: end them with [`SessionStore::delete_user_sessions`].
    /// Errors: [`crate::Error::NotFound`] ([`crate::Entity::User`]) for an unknown name and
    /// for a removed account ([`Store::remove_user`]).
    async fn set_password_hash(&self, username: &Username, password_hash: &str) -> Result<User>;

    /// Deletes every session that expired at or before `now`; returns how many. Run now and
    /// then (`chatcore-axum` runs it on a timer) so the table does not grow with every login.
    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64>;
}

/// What a backend reports after [`Backend::migrate`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrationReport {
    /// The schema version found.
    pub previous: u32,
    /// The schema version now.
    pub current: u32,
    /// What an operator should know: e.g. names made before today's rules that now clash
    /// (they are kept apart, never merged; see the backend's docs).
    pub notes: Vec<String>,
}

impl MigrationReport {
    /// Whether any migration ran.
    pub fn applied_any(&self) -> bool {
        self.previous != self.current
    }
}

/// A storage backend as a whole: both storage traits over one database, and one lifecycle
/// shape for every backend, so a server can open any of them and then treat them alike.
#[async_trait]
pub trait Backend: Store + SessionStore {
    /// Applies the schema migrations this version needs (idempotent). Never run implicitly:
    /// the host decides when.
    async fn migrate(&self) -> Result<MigrationReport>;

    /// Finishes pending writes and releases the database. Calls after it fail with
    /// [`crate::Error::Unavailable`].
    async fn close(&self) -> Result<()>;
}
