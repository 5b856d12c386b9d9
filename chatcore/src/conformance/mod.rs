//! The conformance suites every backend runs (feature `conformance`): one for [`Store`]
//! (users, messages, positions) and one for [`SessionStore`] (accounts and sessions).
//!
//! Each scenario is a public async function taking a fresh, empty store. A backend runs them
//! all with one line per trait in a test file:
//!
//! ```ignore
//! async fn fresh_store() -> std::sync::Arc<dyn chatcore::Store> {
//!     std::sync::Arc::new(chatcore::MemoryStore::new())
//! }
//! async fn fresh_session_store() -> std::sync::Arc<dyn chatcore::SessionStore> {
//!     std::sync::Arc::new(chatcore::MemoryStore::new())
//! }
//! chatcore::store_conformance_tests!(fresh_store);
//! chatcore::session_store_conformance_tests!(fresh_session_store);
//! ```
//!
//! The macros expand to one `#[tokio::test]` per scenario, so the calling crate needs
//! `tokio` (features `macros`, `rt-multi-thread`) as a dev-dependency. The factory is called
//! once per scenario and must return an empty store that no other test shares. The list of
//! scenarios lives in the macros alone.
//!
//! # Layout
//! - `mod.rs`: [`GuardedStore`], the macros, helpers shared by the scenarios.
//! - `users.rs`: names, uniqueness without regard to case, the directory.
//! - `messages.rs`: sending, pages, counts, idempotency, text round trips.
//! - `positions.rs`: catch-up after a position, previous positions, concurrent writers, and
//!   the readiness read (`Store::check_ready`).
//! - `inbox.rs`: the inbox, unread counts, read markers and read events.
//! - `changes.rs`: edits and deletions, tombstones, their events; the paging an export
//!   relies on.
//! - `blocks.rs`: blocks between users (sends and edits refused both ways, under concurrent
//!   sends too), the block list, and the two reads that join conversations and blocks
//!   ([`Store::reachable_peer`], [`Store::conversation_peers`]).
//! - `feed.rs`: the host's event feed ([`Store::feed_after`]) and checkpoints, and the
//!   restart scenario a backend with durable storage runs by itself
//!   ([`feed_resumes_after_a_restart`]).
//! - `sessions.rs`: accounts, credentials, sessions and their expiry, ending all of a
//!   user's sessions, new passwords.
//! - `accounts.rs`: account removal ([`Store::remove_user`],
//!   [`Store::delete_sent_messages`]) with its effects on sessions and credentials, and
//!   alongside blocks (each refusal in its order, under concurrent sends too), run by
//!   [`crate::account_conformance_tests!`] against a whole [`Backend`].

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::store::{
    Backend, BlockQuery, Changed, ChangedMessage, Credentials, InboxPage, InboxRequest, Inserted, MarkedRead,
    MessageChange, MessagePage, PageRequest, SessionRecord, SessionStore, Store, StoredEvent, TokenHash,
    UserQuery,
};
use crate::{Entity, Error, Message, MessageId, NewMessage, Position, Result, User, UserId, Username};

mod accounts;
mod blocks;
mod changes;
mod feed;
mod inbox;
mod messages;
mod positions;
mod sessions;
mod users;

pub use accounts::*;
pub use blocks::*;
pub use changes::*;
pub use feed::*;
pub use inbox::*;
pub use messages::*;
pub use positions::*;
pub use sessions::*;
pub use users::*;

/// A store that keeps a guard alive (a temporary directory, a test database that drops itself)
/// for exactly as long as the store: the store is dropped first, then the guard. Hand it to
/// the conformance suites when a fresh store needs something cleaned up after it.
///
/// ```
/// use std::sync::Arc;
/// use chatcore::conformance::GuardedStore;
/// struct CleanUp; // e.g. a tempfile::TempDir
/// let store: Arc<dyn chatcore::Store> = Arc::new(GuardedStore::new(chatcore::MemoryStore::new(), CleanUp));
/// ```
pub struct GuardedStore<S, G> {
    // Declared first, so it is dropped (threads joined, files closed) before the guard.
    store: S,
    _guard: G,
}

impl<S, G: Send + Sync + 'static> GuardedStore<S, G> {
    /// `store`, keeping `guard` alive until the store is dropped.
    pub fn new(store: S, guard: G) -> Self {
        Self { store, _guard: guard }
    }

    /// The wrapped store.
    pub fn store(&self) -> &S {
        &self.store
    }
}

#[async_trait]
impl<S: Store, G: Send + Sync + 'static> Store for GuardedStore<S, G> {
    async fn create_user(&self, username: &Username) -> Result<User> {
        self.store.create_user(username).await
    }
    async fn find_user(&self, username: &Username) -> Result<Option<User>> {
        self.store.find_user(username).await
    }
    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>> {
        self.store.list_users(query).await
    }
    async fn insert_message(&self, message: NewMessage) -> Result<Inserted> {
        self.store.insert_message(message).await
    }
    async fn message_for(&self, viewer: UserId, id: MessageId) -> Result<Option<Message>> {
        self.store.message_for(viewer, id).await
    }
    async fn conversation_page(
        &self,
        viewer: UserId,
        other: &Username,
        page: &PageRequest,
    ) -> Result<MessagePage> {
        self.store.conversation_page(viewer, other, page).await
    }
    async fn user_messages(&self, user: UserId, page: &PageRequest) -> Result<MessagePage> {
        self.store.user_messages(user, page).await
    }
    async fn messages_after(&self, user: UserId, after: MessageId, limit: u32) -> Result<Vec<Message>> {
        self.store.messages_after(user, after, limit).await
    }
    async fn latest_position(&self, user: UserId) -> Result<Position> {
        self.store.latest_position(user).await
    }
    async fn events_after(&self, user: UserId, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
        self.store.events_after(user, after, limit).await
    }
    async fn inbox(&self, user: UserId, request: &InboxRequest) -> Result<InboxPage> {
        self.store.inbox(user, request).await
    }
    async fn mark_read(&self, reader: &User, peer: &Username, up_to: MessageId) -> Result<MarkedRead> {
        self.store.mark_read(reader, peer, up_to).await
    }
    async fn change_message(&self, sender: UserId, id: MessageId, change: &MessageChange) -> Result<Changed> {
        self.store.change_message(sender, id, change).await
    }
    async fn set_block(&self, blocker: UserId, blocked: &Username, on: bool) -> Result<User> {
        self.store.set_block(blocker, blocked, on).await
    }
    async fn blocked_users(&self, user: UserId, query: &BlockQuery) -> Result<Vec<User>> {
        self.store.blocked_users(user, query).await
    }
    async fn reachable_peer(&self, user: UserId, peer: &Username) -> Result<Option<UserId>> {
        self.store.reachable_peer(user, peer).await
    }
    async fn conversation_peers(&self, user: UserId, among: &[UserId]) -> Result<Vec<UserId>> {
        self.store.conversation_peers(user, among).await
    }
    async fn feed_after(&self, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
        self.store.feed_after(after, limit).await
    }
    async fn load_checkpoint(&self, name: &str) -> Result<Position> {
        self.store.load_checkpoint(name).await
    }
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        self.store.save_checkpoint(name, position).await
    }
    async fn check_ready(&self) -> Result<()> {
        self.store.check_ready().await
    }
    async fn remove_user(&self, user: UserId) -> Result<()> {
        self.store.remove_user(user).await
    }
    async fn delete_sent_messages(
        &self,
        sender: UserId,
        after: MessageId,
        limit: u32,
    ) -> Result<Vec<Changed>> {
        self.store.delete_sent_messages(sender, after, limit).await
    }
}

#[async_trait]
impl<S: SessionStore, G: Send + Sync + 'static> SessionStore for GuardedStore<S, G> {
    async fn create_account(&self, username: &Username, password_hash: &str) -> Result<User> {
        self.store.create_account(username, password_hash).await
    }
    async fn credentials(&self, username: &Username) -> Result<Option<Credentials>> {
        self.store.credentials(username).await
    }
    async fn create_session(
        &self,
        token_hash: &TokenHash,
        user: UserId,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        self.store.create_session(token_hash, user, expires_at).await
    }
    async fn session_user(
        &self,
        token_hash: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRecord>> {
        self.store.session_user(token_hash, now).await
    }
    async fn delete_session(&self, token_hash: &TokenHash) -> Result<()> {
        self.store.delete_session(token_hash).await
    }
    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        self.store.delete_expired_sessions(now).await
    }
    async fn delete_user_sessions(&self, user: UserId) -> Result<u64> {
        self.store.delete_user_sessions(user).await
    }
    async fn set_password_hash(&self, username: &Username, password_hash: &str) -> Result<User> {
        self.store.set_password_hash(username, password_hash).await
    }
}

#[async_trait]
impl<S: Backend, G: Send + Sync + 'static> Backend for GuardedStore<S, G> {
    async fn migrate(&self) -> Result<crate::MigrationReport> {
        self.store.migrate().await
    }
    async fn close(&self) -> Result<()> {
        self.store.close().await
    }
}

/// Runs one `#[tokio::test]` per [`Store`] scenario against stores made by `$factory`, an
/// expression callable as `$factory().await` that returns `Arc<dyn chatcore::Store>`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::conformance_cases!($factory, $crate::Store;
            users_are_unique_and_findable,
            user_directory_pages_and_filters,
            insert_returns_stored_message,
            unknown_recipient_is_not_found,
            latest_page_is_newest_first_and_limited,
            before_cursor_walks_1000_messages,
            offset_pages_match_cursor_pages,
            only_participants_read_a_message,
            counts_are_exact,
            idempotency_key_replays_first_message,
            four_byte_utf8_round_trips,
            longest_body_round_trips,
            concurrent_senders_get_unique_ids,
            catch_up_after_id,
            note_to_self_is_listed_once,
            user_pages_span_conversations,
            busy_conversation_reads_in_commit_order,
            previous_positions_link_each_users_events,
            concurrent_writers_never_reveal_a_lower_position,
            latest_position_is_the_newest_event,
            inbox_lists_conversations_by_latest_activity,
            unread_counts_both_directions,
            read_markers_only_move_forward,
            note_to_self_is_never_unread,
            read_events_take_their_place_in_both_streams,
            concurrent_sends_while_the_other_marks_read,
            inbox_pages_never_repeat_under_concurrent_sends,
            concurrent_marks_and_sends_reveal_positions_in_order,
            feed_lists_every_event_once_in_position_order,
            feed_never_skips_under_concurrent_writers,
            checkpoints_are_saved_by_name,
            check_ready_reads_without_a_trace,
            only_the_sender_changes_a_message,
            tombstones_keep_ids_and_order,
            changes_are_events_in_both_streams,
            concurrent_changes_and_sends_reveal_positions_in_order,
            export_pages_through_a_large_history,
            blocks_refuse_sends_both_ways_and_store_nothing,
            blocks_are_idempotent_and_listed_by_name,
            block_errors,
            blocked_edits_are_refused_and_deletes_allowed,
            no_send_lands_after_a_block_is_confirmed,
            reachable_peer_needs_a_conversation_and_no_block,
            conversation_peers_are_the_listed_users_with_a_conversation,
        );
    };
}

/// Runs one `#[tokio::test]` per [`SessionStore`] scenario against stores made by
/// `$factory`, an expression callable as `$factory().await` that returns
/// `Arc<dyn chatcore::SessionStore>`.
#[macro_export]
macro_rules! session_store_conformance_tests {
    ($factory:expr) => {
        $crate::conformance_cases!($factory, $crate::SessionStore;
            accounts_and_credentials,
            sessions_live_until_they_expire_or_end,
            expired_sessions_are_deleted,
            user_sessions_end_together_and_passwords_change,
        );
    };
}

/// Runs the account removal scenarios (`accounts.rs`) against a backend that is both a
/// [`Store`] and a [`SessionStore`] over one database: `$factory` returns a fresh
/// `Arc<dyn chatcore::Backend>` (e.g. a [`GuardedStore`] around a migrated store).
///
/// ```ignore
/// async fn fresh_backend() -> std::sync::Arc<dyn chatcore::Backend> {
///     std::sync::Arc::new(chatcore::MemoryStore::new())
/// }
/// chatcore::account_conformance_tests!(fresh_backend);
/// ```
#[macro_export]
macro_rules! account_conformance_tests {
    ($factory:expr) => {
        $crate::conformance_cases!($factory, $crate::Backend;
            removed_accounts_keep_their_name_and_lose_everything_else,
            deleting_sent_messages_pages_oldest_first_and_skips_tombstones,
            removal_under_concurrent_sends_leaves_no_body,
            removal_and_blocks_refuse_each_their_sends,
            removal_and_blocks_under_concurrent_sends,
        );
    };
}

/// The expansion the suites share: one test per case. Not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! conformance_cases {
    ($factory:expr, $trait:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store: ::std::sync::Arc<dyn $trait> = ($factory)().await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

pub(crate) fn name(s: &str) -> Username {
    Username::parse(s).expect("valid test username")
}

pub(crate) async fn user(store: &Arc<dyn Store>, s: &str) -> User {
    store.create_user(&name(s)).await.expect("create user")
}

pub(crate) async fn send(store: &Arc<dyn Store>, from: &User, to: &User, body: &str) -> Message {
    send_keyed(store, from, to, body, None).await.message
}

pub(crate) async fn send_keyed(
    store: &Arc<dyn Store>,
    from: &User,
    to: &User,
    body: &str,
    key: Option<&str>,
) -> Inserted {
    store
        .insert_message(NewMessage {
            sender: from.clone(),
            recipient: to.username.clone(),
            body: body.to_owned(),
            idempotency_key: key.map(str::to_owned),
        })
        .await
        .expect("insert message")
}

/// Inserts a message from `from` to the user named `to` (as written) without a key.
pub(crate) async fn try_send_to(
    store: &Arc<dyn Store>,
    from: &User,
    to: &str,
    body: &str,
) -> Result<Inserted> {
    store
        .insert_message(NewMessage {
            sender: from.clone(),
            recipient: name(to),
            body: body.to_owned(),
            idempotency_key: None,
        })
        .await
}

/// What a page at `offset` with `limit` holds of `newest_first`.
pub(crate) fn slice(newest_first: &[Message], offset: u32, limit: u32) -> &[Message] {
    let start = (offset as usize).min(newest_first.len());
    let end = start.saturating_add(limit as usize).min(newest_first.len());
    &newest_first[start..end]
}

pub(crate) fn ids(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.id.0).collect()
}
