//! The conformance suite every [`Store`] backend runs (feature `conformance`).
//!
//! Each scenario is a public async function taking a fresh, empty store. A backend runs them
//! all with one line in a test file:
//!
//! ```ignore
//! async fn fresh_store() -> std::sync::Arc<dyn chatcore::Store> {
//!     std::sync::Arc::new(chatcore::MemoryStore::new())
//! }
//! chatcore::store_conformance_tests!(fresh_store);
//! ```
//!
//! The macro expands to one `#[tokio::test]` per scenario, so the calling crate needs
//! `tokio` (features `macros`, `rt-multi-thread`) as a dev-dependency. The factory is called
//! once per scenario and must return an empty store that no other test shares.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{Duration, SubsecRound, Utc};

use async_trait::async_trait;
use chrono::DateTime;

use crate::store::{
    Credentials, Inserted, MessagePage, PageRequest, SessionRecord, Store, TokenHash, UserQuery,
};
use crate::{Entity, Error, Message, MessageId, NewMessage, Position, Result, User, UserId, Username};

/// A store that keeps a guard alive (a temporary directory, a test database that drops itself)
/// for exactly as long as the store: the store is dropped first, then the guard. Hand it to
/// the conformance suite when a fresh store needs something cleaned up after it.
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

impl<S: Store, G: Send + Sync + 'static> GuardedStore<S, G> {
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
    async fn create_user(&self, username: &Username, password_hash: Option<&str>) -> Result<User> {
        self.store.create_user(username, password_hash).await
    }
    async fn find_user(&self, username: &Username) -> Result<Option<User>> {
        self.store.find_user(username).await
    }
    async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>> {
        self.store.list_users(query).await
    }
    async fn credentials(&self, username: &Username) -> Result<Option<Credentials>> {
        self.store.credentials(username).await
    }
    async fn set_password_hash(&self, user: UserId, password_hash: &str) -> Result<()> {
        self.store.set_password_hash(user, password_hash).await
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
    async fn idempotent_message(&self, sender: UserId, key: &str) -> Result<Option<Message>> {
        self.store.idempotent_message(sender, key).await
    }
}

/// Every scenario's name, in the order [`crate::store_conformance_tests!`] runs them.
pub const SCENARIOS: &[&str] = &[
    "users_are_unique_and_findable",
    "user_directory_pages_and_filters",
    "credentials_and_sessions",
    "insert_returns_stored_message",
    "unknown_recipient_is_not_found",
    "latest_page_is_newest_first_and_limited",
    "before_cursor_walks_1000_messages",
    "offset_pages_match_cursor_pages",
    "only_participants_read_a_message",
    "counts_are_exact",
    "idempotency_key_replays_first_message",
    "four_byte_utf8_round_trips",
    "longest_body_round_trips",
    "concurrent_senders_get_unique_ids",
    "catch_up_after_id",
    "note_to_self_is_listed_once",
    "user_pages_span_conversations",
    "busy_conversation_reads_in_commit_order",
    "previous_positions_link_each_users_events",
    "concurrent_writers_never_reveal_a_lower_position",
    "latest_position_is_the_newest_event",
];

/// Runs one `#[tokio::test]` per conformance scenario against stores made by `$factory`,
/// an expression callable as `$factory().await` that returns `Arc<dyn chatcore::Store>`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::store_conformance_tests!(@cases $factory;
            users_are_unique_and_findable,
            user_directory_pages_and_filters,
            credentials_and_sessions,
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
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store: ::std::sync::Arc<dyn $crate::Store> = ($factory)().await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

fn name(s: &str) -> Username {
    Username::parse(s).expect("valid test username")
}

async fn user(store: &Arc<dyn Store>, s: &str) -> User {
    store.create_user(&name(s), None).await.expect("create user")
}

async fn send(store: &Arc<dyn Store>, from: &User, to: &User, body: &str) -> Message {
    send_keyed(store, from, to, body, None).await.message
}

async fn send_keyed(
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

/// What a page at `offset` with `limit` holds of `newest_first`.
fn slice(newest_first: &[Message], offset: u32, limit: u32) -> &[Message] {
    let start = (offset as usize).min(newest_first.len());
    let end = start.saturating_add(limit as usize).min(newest_first.len());
    &newest_first[start..end]
}

fn ids(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.id.0).collect()
}

/// Names are unique; lookups by name find exactly the created user.
pub async fn users_are_unique_and_findable(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    assert_ne!(alice.id, bob.id);
    assert_eq!(alice.username.as_str(), "alice");
    match store.create_user(&name("alice"), None).await {
        Err(Error::Conflict(_)) => {}
        other => panic!("duplicate username must be a conflict, got {other:?}"),
    }
    assert_eq!(
        store.find_user(&name("alice")).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.find_user(&name("bob")).await.unwrap(), Some(bob));
    assert_eq!(store.find_user(&name("carol")).await.unwrap(), None);
    // Names are unique without regard to case; the chosen case is kept for display.
    for same in ["Alice", "ALICE", "ａｌｉｃｅ"] {
        match store.create_user(&name(same), None).await {
            Err(Error::Conflict(_)) => {}
            other => panic!("{same} must be a conflict with alice, got {other:?}"),
        }
        assert_eq!(
            store.find_user(&name(same)).await.unwrap(),
            Some(alice.clone()),
            "{same}"
        );
        let credentials = store
            .credentials(&name(same))
            .await
            .unwrap()
            .expect("found by key");
        assert_eq!(credentials.user, alice);
    }
    let carol = user(&store, "Carol").await;
    assert_eq!(carol.username.as_str(), "Carol");
    assert_eq!(
        store.find_user(&name("carol")).await.unwrap(),
        Some(carol.clone())
    );
    // A message to `carol` names her as she writes her name, and lands in one conversation.
    let to_lower = send_to_name(&store, &alice, "carol", "hi").await;
    let to_upper = send_to_name(&store, &alice, "CAROL", "hi again").await;
    assert_eq!(to_lower.recipient.as_str(), "Carol");
    assert_eq!(to_upper.recipient.as_str(), "Carol");
    let page = store
        .conversation_page(alice.id, &name("cArOl"), &PageRequest::latest(10))
        .await
        .unwrap();
    assert_eq!(page.total, 2);
}

async fn send_to_name(store: &Arc<dyn Store>, from: &User, to: &str, body: &str) -> Message {
    store
        .insert_message(NewMessage {
            sender: from.clone(),
            recipient: name(to),
            body: body.to_owned(),
            idempotency_key: None,
        })
        .await
        .expect("insert message")
        .message
}

/// The directory is sorted by name, pages with `after`, filters by prefix, leaves one user out.
pub async fn user_directory_pages_and_filters(store: Arc<dyn Store>) {
    let mut created = Vec::new();
    for i in (0..30).rev() {
        created.push(user(&store, &format!("user{i:02}")).await);
    }
    let me = user(&store, "me").await;
    user(&store, "zed").await;
    let query = |prefix: &str, after: Option<&str>, limit| UserQuery {
        exclude: Some(me.id),
        prefix: prefix.to_owned(),
        after: after.map(name),
        limit,
    };
    let all = store.list_users(&query("", None, 1000)).await.unwrap();
    let names: Vec<_> = all.iter().map(|u| u.username.to_string()).collect();
    let mut expected: Vec<_> = (0..30).map(|i| format!("user{i:02}")).collect();
    expected.push("zed".into());
    assert_eq!(names, expected, "sorted, caller excluded");
    // Prefixes and `after` match without regard to case; names come back as chosen.
    let mixed = user(&store, "User99").await;
    let upper: Vec<_> = store
        .list_users(&query("USER2", None, 100))
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username.to_string())
        .collect();
    assert_eq!(upper, expected[20..30].to_vec());
    let last = store
        .list_users(&query("user", Some("USER29"), 100))
        .await
        .unwrap();
    assert_eq!(last, vec![mixed.clone()]);
    expected.insert(30, "User99".into());

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_users(&query("user", after.as_deref(), 7))
            .await
            .unwrap();
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().username.to_string());
        paged.extend(page.into_iter().map(|u| u.username.to_string()));
    }
    assert_eq!(
        paged,
        expected[..31].to_vec(),
        "keyset paging skips and repeats nothing"
    );

    let ones = store.list_users(&query("user1", None, 100)).await.unwrap();
    assert_eq!(ones.len(), 10);
    assert!(ones.iter().all(|u| u.username.as_str().starts_with("user1")));
    let none = store.list_users(&query("nobody", None, 100)).await.unwrap();
    assert!(none.is_empty());
    // A prefix with LIKE/GLOB metacharacters matches literally.
    user(&store, "a_b").await;
    user(&store, "axb").await;
    let literal = store.list_users(&query("a_", None, 100)).await.unwrap();
    assert_eq!(
        literal.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(),
        ["a_b"]
    );
    let unfiltered = UserQuery {
        exclude: None,
        prefix: String::new(),
        after: None,
        limit: 3,
    };
    assert_eq!(store.list_users(&unfiltered).await.unwrap().len(), 3);
}

/// Password hashes and sessions: stored, found, expired, revoked.
pub async fn credentials_and_sessions(store: Arc<dyn Store>) {
    let alice = store
        .create_user(&name("alice"), Some("$argon2id$v=19$fake"))
        .await
        .unwrap();
    let bob = user(&store, "bob").await;
    let creds = store.credentials(&name("alice")).await.unwrap().unwrap();
    assert_eq!(creds.user, alice);
    assert_eq!(creds.password_hash.as_deref(), Some("$argon2id$v=19$fake"));
    assert_eq!(
        store
            .credentials(&name("bob"))
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        None
    );
    assert!(store.credentials(&name("nobody")).await.unwrap().is_none());
    store.set_password_hash(bob.id, "$argon2id$new").await.unwrap();
    assert_eq!(
        store
            .credentials(&name("bob"))
            .await
            .unwrap()
            .unwrap()
            .password_hash
            .as_deref(),
        Some("$argon2id$new")
    );

    let now = Utc::now().trunc_subsecs(6);
    let live = [1u8; 32];
    let expired = [2u8; 32];
    let expires_at = now + Duration::hours(1);
    store.create_session(&live, alice.id, expires_at).await.unwrap();
    store
        .create_session(&expired, bob.id, now - Duration::seconds(1))
        .await
        .unwrap();
    let record = store
        .session_user(&live, now)
        .await
        .unwrap()
        .expect("live session");
    assert_eq!(record.user, alice);
    // Kept to the second at least (stores may keep microseconds).
    assert!(
        (record.expires_at - expires_at).num_seconds().abs() < 1,
        "{record:?}"
    );
    assert_eq!(store.session_user(&expired, now).await.unwrap(), None);
    assert_eq!(store.session_user(&[3u8; 32], now).await.unwrap(), None);
    store.delete_session(&live).await.unwrap();
    assert_eq!(store.session_user(&live, now).await.unwrap(), None);
    store.delete_session(&live).await.unwrap();
}

/// An insert returns the stored message: id, names, body, a UTC timestamp with microseconds.
pub async fn insert_returns_stored_message(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let before = Utc::now().trunc_subsecs(6);
    let inserted = send_keyed(&store, &alice, &bob, "hello", None).await;
    let after = Utc::now();
    assert!(!inserted.replayed);
    assert_eq!(inserted.recipient_id, bob.id);
    let m = inserted.message;
    assert_eq!(
        (m.sender.as_str(), m.recipient.as_str(), m.body.as_str()),
        ("alice", "bob", "hello")
    );
    assert!(m.created_at >= before - Duration::seconds(2) && m.created_at <= after + Duration::seconds(2));
    assert_eq!(
        m.created_at,
        m.created_at.trunc_subsecs(6),
        "microsecond precision"
    );
    assert_eq!(store.message_for(bob.id, m.id).await.unwrap(), Some(m.clone()));
    assert_eq!(store.message_for(alice.id, m.id).await.unwrap(), Some(m.clone()));
    let second = send(&store, &bob, &alice, "back").await;
    assert!(second.id > m.id, "ids increase");
    assert!(second.created_at >= m.created_at);
}

/// Sending to a user that does not exist, or from an id that is no user, stores nothing.
pub async fn unknown_recipient_is_not_found(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let ghost = User {
        id: UserId(alice.id.0 + 1_000_000),
        username: name("ghost"),
    };
    for (sender, recipient) in [(alice.clone(), name("ghost")), (ghost, alice.username.clone())] {
        let result = store
            .insert_message(NewMessage {
                sender,
                recipient,
                body: "boo".into(),
                idempotency_key: None,
            })
            .await;
        assert!(
            matches!(result, Err(Error::NotFound(Entity::User))),
            "got {result:?}"
        );
        let page = store
            .user_messages(alice.id, &PageRequest::latest(15))
            .await
            .unwrap();
        assert_eq!(page.total, 0);
        assert!(page.messages.is_empty());
    }
    assert!(matches!(
        store
            .conversation_page(alice.id, &name("ghost"), &PageRequest::latest(15))
            .await,
        Err(Error::NotFound(Entity::User))
    ));
}

/// The latest page holds the newest 15, newest first, of this conversation only.
pub async fn latest_page_is_newest_first_and_limited(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let mut sent = Vec::new();
    for i in 0..20 {
        let (from, to) = if i % 2 == 0 {
            (&alice, &bob)
        } else {
            (&bob, &alice)
        };
        sent.push(send(&store, from, to, &format!("m{i}")).await);
        send(&store, &alice, &carol, "elsewhere").await;
    }
    let page = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(15))
        .await
        .unwrap();
    let expected: Vec<_> = sent.iter().rev().take(15).cloned().collect();
    assert_eq!(page.messages, expected);
    assert_eq!(page.total, 20);
    let from_bob = store
        .conversation_page(bob.id, &name("alice"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(from_bob, page, "the same conversation from either side");
    let empty = store
        .conversation_page(bob.id, &name("carol"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(empty.total, 0);
    assert!(empty.messages.is_empty());
}

/// Walking a 1,000-message conversation with `before` skips and repeats nothing.
pub async fn before_cursor_walks_1000_messages(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let mut expected = Vec::new();
    for i in 0..1000 {
        let (from, to) = if i % 3 == 0 {
            (&bob, &alice)
        } else {
            (&alice, &bob)
        };
        expected.push(send(&store, from, to, &format!("{i}")).await.id.0);
        if i % 10 == 0 {
            send(&store, &carol, &alice, "noise").await;
        }
    }
    expected.reverse();
    for limit in [15, 100, 7] {
        let mut seen = Vec::new();
        let mut page = PageRequest::latest(limit);
        loop {
            let got = store
                .conversation_page(alice.id, &name("bob"), &page)
                .await
                .unwrap();
            assert_eq!(got.total, 1000);
            assert!(got.messages.len() <= limit as usize);
            let Some(last) = got.messages.last() else { break };
            page.before = Some(last.id);
            seen.extend(ids(&got.messages));
        }
        assert_eq!(seen, expected, "limit {limit}");
    }
    let past_the_end = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::before(MessageId(1), 15))
        .await
        .unwrap();
    assert!(past_the_end.messages.is_empty());
}

/// `offset` (the original app's `?page=N`) gives the same pages as the cursor.
pub async fn offset_pages_match_cursor_pages(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    for i in 0..40 {
        send(&store, &alice, &bob, &format!("{i}")).await;
    }
    let first = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(15))
        .await
        .unwrap();
    let second = store
        .conversation_page(
            alice.id,
            &name("bob"),
            &PageRequest {
                before: None,
                offset: 15,
                limit: 15,
            },
        )
        .await
        .unwrap();
    let cursor = store
        .conversation_page(
            alice.id,
            &name("bob"),
            &PageRequest::before(first.messages[14].id, 15),
        )
        .await
        .unwrap();
    assert_eq!(second.messages, cursor.messages);
    let third = store
        .conversation_page(
            alice.id,
            &name("bob"),
            &PageRequest {
                before: None,
                offset: 30,
                limit: 15,
            },
        )
        .await
        .unwrap();
    assert_eq!(third.messages.len(), 10);
    let beyond = store
        .user_messages(
            alice.id,
            &PageRequest {
                before: None,
                offset: 45,
                limit: 15,
            },
        )
        .await
        .unwrap();
    assert!(beyond.messages.is_empty());
    assert_eq!(beyond.total, 40);
}

/// Only the sender and the recipient can read a message; a missing id looks the same.
pub async fn only_participants_read_a_message(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let eve = user(&store, "eve").await;
    let m = send(&store, &alice, &bob, "secret").await;
    assert!(store.message_for(alice.id, m.id).await.unwrap().is_some());
    assert!(store.message_for(bob.id, m.id).await.unwrap().is_some());
    assert_eq!(store.message_for(eve.id, m.id).await.unwrap(), None);
    assert_eq!(
        store
            .message_for(alice.id, MessageId(m.id.0 + 1000))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.message_for(alice.id, MessageId(-1)).await.unwrap(), None);
    assert_eq!(
        store.message_for(alice.id, MessageId(i64::MAX)).await.unwrap(),
        None
    );
    let eves = store
        .user_messages(eve.id, &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(eves.total, 0);
    assert!(
        store
            .messages_after(eve.id, MessageId(0), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Conversation and per-user totals are exact.
pub async fn counts_are_exact(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    for _ in 0..7 {
        send(&store, &alice, &bob, "ab").await;
    }
    for _ in 0..5 {
        send(&store, &carol, &alice, "ca").await;
    }
    for _ in 0..3 {
        send(&store, &bob, &carol, "bc").await;
    }
    let total = |viewer: &User, other: &str| {
        let store = store.clone();
        let viewer = viewer.id;
        let other = name(other);
        async move {
            store
                .conversation_page(viewer, &other, &PageRequest::latest(1))
                .await
                .unwrap()
                .total
        }
    };
    assert_eq!(total(&alice, "bob").await, 7);
    assert_eq!(total(&bob, "alice").await, 7);
    assert_eq!(total(&alice, "carol").await, 5);
    assert_eq!(total(&carol, "bob").await, 3);
    let all = |u: &User| {
        let store = store.clone();
        let id = u.id;
        async move { store.user_messages(id, &PageRequest::latest(100)).await.unwrap() }
    };
    let alices = all(&alice).await;
    assert_eq!(alices.total, 12);
    assert_eq!(alices.messages.len(), 12);
    assert!(
        alices.messages.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    assert!(alices.messages.iter().all(|m| m.involves(&alice.username)));
    assert_eq!(all(&bob).await.total, 10);
    assert_eq!(all(&carol).await.total, 8);
}

/// A key reused by the same sender returns the first message and stores nothing; keys are
/// per sender.
pub async fn idempotency_key_replays_first_message(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let first = send_keyed(&store, &alice, &bob, "once", Some("key-1")).await;
    assert!(!first.replayed);
    let retry = send_keyed(&store, &alice, &bob, "once", Some("key-1")).await;
    assert!(retry.replayed);
    assert_eq!(retry.message, first.message);
    assert_eq!(retry.recipient_id, bob.id);
    let other_key = send_keyed(&store, &alice, &bob, "twice", Some("key-2")).await;
    assert_ne!(other_key.message.id, first.message.id);
    let bobs_key = send_keyed(&store, &bob, &alice, "bob's", Some("key-1")).await;
    assert!(!bobs_key.replayed, "keys are scoped to their sender");
    assert_eq!(
        store.idempotent_message(alice.id, "key-1").await.unwrap(),
        Some(first.message.clone())
    );
    assert_eq!(store.idempotent_message(alice.id, "nope").await.unwrap(), None);
    assert_eq!(store.idempotent_message(bob.id, "key-2").await.unwrap(), None);
    let page = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(page.total, 3);
}

/// Emoji and other 4-byte UTF-8 characters come back unchanged.
pub async fn four_byte_utf8_round_trips(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let bodies = [
        "😀 grinning",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙",
        "家族 👨‍👩‍👧‍👦 with ZWJ",
        "𠜎𠜱𠝹𠱓 CJK Extension B",
        "mixed: é ß ♥ 🇫🇷 \u{10FFFF}",
        "quotes ' \" ` \\ % _ and NUL-free",
    ];
    for body in bodies {
        let m = send(&store, &alice, &bob, body).await;
        assert_eq!(m.body, body);
        assert_eq!(store.message_for(bob.id, m.id).await.unwrap().unwrap().body, body);
    }
    let page = store
        .conversation_page(bob.id, &name("alice"), &PageRequest::latest(15))
        .await
        .unwrap();
    let mut read: Vec<_> = page.messages.iter().map(|m| m.body.as_str()).collect();
    read.reverse();
    assert_eq!(read, bodies);
    let emoji_user = user(&store, "ünïcødé").await;
    assert_eq!(store.find_user(&name("ünïcødé")).await.unwrap(), Some(emoji_user));
}

/// A 4,000-character body (of 4-byte characters: 16,000 bytes) is stored whole.
pub async fn longest_body_round_trips(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let long = "🎉".repeat(4000);
    let m = send(&store, &alice, &bob, &long).await;
    assert_eq!(store.message_for(bob.id, m.id).await.unwrap().unwrap().body, long);
    let ascii = "x".repeat(4000);
    let m = send(&store, &alice, &bob, &ascii).await;
    assert_eq!(
        store.message_for(alice.id, m.id).await.unwrap().unwrap().body,
        ascii
    );
}

/// 64 tasks sending at once: no lost id, no duplicate id, exact totals.
pub async fn concurrent_senders_get_unique_ids(store: Arc<dyn Store>) {
    const TASKS: usize = 64;
    const EACH: usize = 20;
    let hub = user(&store, "hub").await;
    let mut senders = Vec::new();
    for t in 0..TASKS {
        senders.push(user(&store, &format!("sender{t}")).await);
    }
    let handles: Vec<_> = senders
        .iter()
        .cloned()
        .map(|sender| {
            let store = store.clone();
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let key = format!("k{i}");
                    let inserted = send_keyed(
                        &store,
                        &sender,
                        &hub,
                        &format!("{} {i}", sender.username),
                        Some(&key),
                    )
                    .await;
                    assert!(!inserted.replayed);
                    ids.push(inserted.message.id);
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        let ids = handle.await.expect("sender task");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "one sender's ids increase");
        all.extend(ids);
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(unique.len(), TASKS * EACH, "no duplicate id");
    let page = store
        .user_messages(hub.id, &PageRequest::latest(1))
        .await
        .unwrap();
    assert_eq!(page.total, (TASKS * EACH) as u64);
    let caught_up = store.messages_after(hub.id, MessageId(0), 10_000).await.unwrap();
    let read: HashSet<_> = caught_up.iter().map(|m| m.id).collect();
    assert_eq!(read, unique, "nothing lost");
    for sender in &senders {
        let conv = store
            .conversation_page(hub.id, &sender.username, &PageRequest::latest(100))
            .await
            .unwrap();
        assert_eq!(conv.total, EACH as u64);
        assert_eq!(conv.messages.len(), EACH);
    }
}

/// `messages_after` returns the user's later messages oldest first, bounded.
pub async fn catch_up_after_id(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let mut alices = Vec::new();
    for i in 0..30 {
        let m = match i % 3 {
            0 => send(&store, &alice, &bob, "ab").await,
            1 => send(&store, &carol, &alice, "ca").await,
            _ => {
                send(&store, &bob, &carol, "bc").await;
                continue;
            }
        };
        alices.push(m);
    }
    let everything = store.messages_after(alice.id, MessageId(0), 1000).await.unwrap();
    assert_eq!(everything, alices);
    let since = alices[5].id;
    let rest = store.messages_after(alice.id, since, 1000).await.unwrap();
    assert_eq!(rest, alices[6..].to_vec());
    let bounded = store.messages_after(alice.id, since, 4).await.unwrap();
    assert_eq!(bounded, alices[6..10].to_vec());
    let last = alices.last().unwrap().id;
    assert!(
        store
            .messages_after(alice.id, last, 1000)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A message to oneself is one message: listed once, counted once.
pub async fn note_to_self_is_listed_once(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let inserted = send_keyed(&store, &alice, &alice, "note", None).await;
    assert_eq!(inserted.recipient_id, alice.id);
    let page = store
        .user_messages(alice.id, &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.messages, vec![inserted.message.clone()]);
    let conv = store
        .conversation_page(alice.id, &name("alice"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(conv.total, 1);
    assert_eq!(conv.messages.len(), 1);
    assert_eq!(
        store
            .messages_after(alice.id, MessageId(0), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A user's messages interleaved over several conversations (some quiet for a long time, one
/// with themself): every page, by offset and by cursor, and every catch-up, match the
/// messages in id order.
pub async fn user_pages_span_conversations(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let others = [
        user(&store, "bob").await,
        user(&store, "carol").await,
        user(&store, "dave").await,
        user(&store, "erin").await,
    ];
    let frank = user(&store, "frank").await;
    let mut alices: Vec<Message> = Vec::new();
    for i in 0..90usize {
        // Uneven traffic: bob often, erin only early on, notes to self now and then, and
        // messages alice is not part of in between.
        let m = match i % 9 {
            0 | 3 | 6 => send(&store, &alice, &others[0], "ab").await,
            1 if i < 30 => send(&store, &others[3], &alice, "ea").await,
            2 => send(&store, &others[1], &alice, "ca").await,
            4 => send(&store, &alice, &alice, "note").await,
            5 | 8 => send(&store, &alice, &others[2], "ad").await,
            _ => {
                send(&store, &frank, &others[0], "fb").await;
                continue;
            }
        };
        alices.push(m);
    }
    let newest_first: Vec<Message> = alices.iter().rev().cloned().collect();
    let total = alices.len() as u64;
    for limit in [1u32, 7, 15, 100] {
        let mut offset = 0u32;
        loop {
            let page = store
                .user_messages(
                    alice.id,
                    &PageRequest {
                        before: None,
                        offset,
                        limit,
                    },
                )
                .await
                .unwrap();
            assert_eq!(page.total, total);
            let expected = slice(&newest_first, offset, limit);
            assert_eq!(page.messages, expected, "offset {offset} limit {limit}");
            if offset as usize + expected.len() >= newest_first.len() {
                break;
            }
            offset += limit;
        }
        let mut before = None;
        let mut walked = Vec::new();
        loop {
            let page = store
                .user_messages(
                    alice.id,
                    &PageRequest {
                        before,
                        offset: 0,
                        limit,
                    },
                )
                .await
                .unwrap();
            if page.messages.is_empty() {
                break;
            }
            before = page.messages.last().map(|m| m.id);
            walked.extend(page.messages);
        }
        assert_eq!(walked, newest_first, "cursor walk with limit {limit}");
    }
    // A cursor that is not one of alice's messages (frank's) still bounds the page.
    let foreign = send(&store, &frank, &others[1], "fc").await;
    let page = store
        .user_messages(alice.id, &PageRequest::before(foreign.id, 5))
        .await
        .unwrap();
    assert_eq!(page.messages, newest_first[..5]);
    for since_index in [0usize, 10, 40, 70] {
        let since = alices[since_index].id;
        for limit in [1u32, 3, 16, 1000] {
            let caught_up = store.messages_after(alice.id, since, limit).await.unwrap();
            let expected: Vec<Message> = alices[since_index + 1..]
                .iter()
                .take(limit as usize)
                .cloned()
                .collect();
            assert_eq!(caught_up, expected, "after #{since_index} limit {limit}");
        }
    }
    let frank_page = store
        .user_messages(frank.id, &PageRequest::latest(100))
        .await
        .unwrap();
    assert!(frank_page.messages.iter().all(|m| m.sender == frank.username));
    assert_eq!(frank_page.total, frank_page.messages.len() as u64);
}

/// Many tasks writing into one conversation at once (so a group commit holds several of its
/// messages) beside a second, quieter one: every page by cursor and by offset, cursors that
/// are not messages of the conversation, and catch-ups from anywhere all see the messages in
/// id order, none missing.
pub async fn busy_conversation_reads_in_commit_order(store: Arc<dyn Store>) {
    const TASKS: usize = 12;
    const EACH: usize = 25;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            // Both directions of alice-bob, and every fourth task alice-carol.
            let (from, to) = match t % 4 {
                0 => (alice.clone(), carol.clone()),
                1 => (bob.clone(), alice.clone()),
                _ => (alice.clone(), bob.clone()),
            };
            tokio::spawn(async move {
                let mut sent = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    sent.push(send(&store, &from, &to, &format!("{t}.{i}")).await);
                }
                sent
            })
        })
        .collect();
    let mut with_bob = Vec::new();
    let mut with_carol = Vec::new();
    for handle in handles {
        for message in handle.await.expect("sender task") {
            if message.recipient == carol.username {
                with_carol.push(message);
            } else {
                with_bob.push(message);
            }
        }
    }
    let newest_first = |messages: &mut Vec<Message>| messages.sort_by_key(|m| std::cmp::Reverse(m.id));
    newest_first(&mut with_bob);
    newest_first(&mut with_carol);
    let page = |before: Option<MessageId>, offset: u32, limit: u32| PageRequest {
        before,
        offset,
        limit,
    };
    for (other, expected) in [(&bob, &with_bob), (&carol, &with_carol)] {
        let all = store
            .conversation_page(alice.id, &other.username, &page(None, 0, 1000))
            .await
            .unwrap();
        assert_eq!(all.total, expected.len() as u64);
        assert_eq!(
            &all.messages, expected,
            "the whole conversation with {}",
            other.username
        );
        let mut before = None;
        let mut walked = Vec::new();
        loop {
            let got = store
                .conversation_page(alice.id, &other.username, &page(before, 0, 15))
                .await
                .unwrap();
            let Some(last) = got.messages.last() else { break };
            before = Some(last.id);
            walked.extend(got.messages);
        }
        assert_eq!(&walked, expected, "cursor walk with {}", other.username);
        for offset in (0..expected.len() as u32 + 3).step_by(7) {
            let got = store
                .conversation_page(alice.id, &other.username, &page(None, offset, 15))
                .await
                .unwrap();
            assert_eq!(got.messages, slice(expected, offset, 15), "offset {offset}");
        }
    }
    // Cursors taken from the other conversation, with and without an offset.
    for cursor in with_carol.iter().map(|m| m.id).step_by(3) {
        for offset in [0u32, 5, 40] {
            let got = store
                .conversation_page(alice.id, &bob.username, &page(Some(cursor), offset, 15))
                .await
                .unwrap();
            let below: Vec<Message> = with_bob.iter().filter(|m| m.id < cursor).cloned().collect();
            assert_eq!(
                got.messages,
                slice(&below, offset, 15),
                "before {cursor:?} offset {offset}"
            );
        }
    }
    let mut oldest_first: Vec<Message> = with_bob.iter().chain(&with_carol).cloned().collect();
    oldest_first.sort_by_key(|m| m.id);
    // Catch-ups after the `seen`th oldest message of alice's.
    for seen in [0usize, 1, 17, 100, 250, oldest_first.len() - 1] {
        let after = seen.checked_sub(1).map_or(MessageId(0), |i| oldest_first[i].id);
        for limit in [1u32, 16, 33, 1000] {
            let got = store.messages_after(alice.id, after, limit).await.unwrap();
            let expected: Vec<Message> = oldest_first[seen..]
                .iter()
                .take(limit as usize)
                .cloned()
                .collect();
            assert_eq!(got, expected, "alice after #{seen} limit {limit}");
        }
    }
}

/// The previous position an insert reports for `user` (a participant of `inserted`).
fn previous_for(inserted: &Inserted, sender: UserId, user: UserId) -> Position {
    if user == sender {
        inserted.sender_previous
    } else {
        inserted.recipient_previous
    }
}

/// Every message `user` sent or received, oldest first, read back in pages of `messages_after`.
async fn everything_of(store: &Arc<dyn Store>, user: UserId) -> Result<Vec<Message>> {
    let mut all: Vec<Message> = Vec::new();
    loop {
        let after = all.last().map_or(MessageId(0), |m| m.id);
        let page = store.messages_after(user, after, 500).await?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

/// Interleaved sends between a few users, notes to oneself and idempotent replays among
/// them, one at a time: every insert reports, for each participant, the position of that
/// user's message just before it as `messages_after` reads it back ([`Position::START`] for
/// their first; one value for both sides of a note to oneself), and `latest_position`
/// follows. A replay stores nothing and moves no one's position.
pub async fn previous_positions_link_each_users_events(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let dave = user(&store, "dave").await; // never takes part
    let everyone = [&alice, &bob, &carol, &dave];
    let mut latest: HashMap<UserId, Position> = everyone.iter().map(|u| (u.id, Position::START)).collect();
    // What each insert reported for each participant.
    let mut reported: HashMap<(UserId, MessageId), Position> = HashMap::new();
    let mut keyed: Vec<(User, User, String, Message)> = Vec::new();
    let pairs = [
        (&alice, &bob),
        (&bob, &alice),
        (&alice, &alice),
        (&carol, &bob),
        (&carol, &carol),
        (&alice, &carol),
        (&bob, &bob),
        (&carol, &alice),
        (&bob, &carol),
    ];
    for i in 0..72usize {
        // A replay of an earlier keyed send every 7th time, once there is one.
        if i % 7 == 6
            && let Some((from, to, key, first)) = keyed.get(i % keyed.len().max(1)).cloned()
        {
            let replay = send_keyed(&store, &from, &to, "again", Some(&key)).await;
            assert!(replay.replayed, "send #{i}: key {key} was used before");
            assert_eq!(
                replay.message, first,
                "send #{i}: the replay returns the first message"
            );
            for user in [from.id, to.id] {
                assert_eq!(
                    store.latest_position(user).await.unwrap(),
                    latest[&user],
                    "send #{i}: a replay moves no position"
                );
            }
            continue;
        }
        let (from, to) = pairs[(i * 5 + i / 9) % pairs.len()];
        let key = (i % 4 == 1).then(|| format!("key-{i}"));
        let inserted = send_keyed(&store, from, to, &format!("#{i}"), key.as_deref()).await;
        assert!(!inserted.replayed);
        let id = inserted.message.id;
        assert_eq!(
            inserted.sender_previous, latest[&from.id],
            "send #{i} ({} to {}): the sender's previous position",
            from.username, to.username
        );
        assert_eq!(
            inserted.recipient_previous, latest[&to.id],
            "send #{i} ({} to {}): the recipient's previous position",
            from.username, to.username
        );
        if from.id == to.id {
            assert_eq!(
                inserted.sender_previous, inserted.recipient_previous,
                "a note to oneself"
            );
        }
        for user in [from.id, to.id] {
            reported.insert((user, id), previous_for(&inserted, from.id, user));
            latest.insert(user, Position::from(id));
            assert_eq!(
                store.latest_position(user).await.unwrap(),
                Position::from(id),
                "send #{i}"
            );
        }
        if let Some(key) = key {
            keyed.push((from.clone(), to.clone(), key, inserted.message));
        }
    }
    for user in everyone {
        let read = everything_of(&store, user.id).await.unwrap();
        let mut previous = Position::START;
        for message in &read {
            assert_eq!(
                reported.get(&(user.id, message.id)),
                Some(&previous),
                "{}: the insert of message {} reported the wrong previous position",
                user.username,
                message.id
            );
            previous = Position::from(message.id);
        }
        let reported_for_user = reported.keys().filter(|(u, _)| *u == user.id).count();
        assert_eq!(
            read.len(),
            reported_for_user,
            "{}: every message read back",
            user.username
        );
        assert_eq!(
            store.latest_position(user.id).await.unwrap(),
            previous,
            "{}",
            user.username
        );
    }
    assert_eq!(latest[&dave.id], Position::START);
    let unknown = UserId(dave.id.0 + 1_000_000);
    assert_eq!(store.latest_position(unknown).await.unwrap(), Position::START);
}

/// One insert as the concurrent check records it.
#[derive(Debug, Clone)]
struct Recorded {
    sender: UserId,
    recipient: UserId,
    inserted: Inserted,
}

/// Writers sending at once to and from one hub user (and among themselves, and notes to self,
/// and idempotent retries) while a reader keeps catching up on the hub with the last id it
/// saw: the reader never meets an id below one it has seen and ends with every message of the
/// hub exactly once, and for every user the previous positions the inserts reported form one
/// chain through their messages in id order. See [`check_concurrent_positions`].
pub async fn concurrent_writers_never_reveal_a_lower_position(store: Arc<dyn Store>) {
    if let Err(failure) = check_concurrent_positions(store).await {
        panic!("{failure}");
    }
}

/// The check behind [`concurrent_writers_never_reveal_a_lower_position`], reporting the first
/// broken promise instead of panicking, so a test can show that it catches a store that hands
/// out positions out of commit order (chatcore's `tests/conformance.rs` does). Expects a
/// fresh store: it creates the users `hub` and `w0` to `w7`. Errors of the store itself are
/// failures too.
///
/// Eight writer tasks each send 32 messages: writer `t` to the hub, from the hub, to writer
/// `t + 1`, and a note from the hub to itself (even `t`) or a keyed send retried at once (odd
/// `t`). A reader task meanwhile calls `messages_after(hub, last_seen, 50)` in a loop, as a
/// client that keeps reconnecting would. A store whose positions do not follow commit order
/// lets the reader pass an id whose message appears later (it never sees it), and reports
/// a previous position that skips a message or names one twice.
pub async fn check_concurrent_positions(store: Arc<dyn Store>) -> std::result::Result<(), String> {
    const WRITERS: usize = 8;
    const EACH: usize = 32;
    let failed = |what: &str, e: Error| format!("{what}: {e}");
    let hub = store
        .create_user(&name("hub"), None)
        .await
        .map_err(|e| failed("creating the hub", e))?;
    let mut writers = Vec::with_capacity(WRITERS);
    for t in 0..WRITERS {
        writers.push(
            store
                .create_user(&name(&format!("w{t}")), None)
                .await
                .map_err(|e| failed("creating a writer", e))?,
        );
    }
    let writing_done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let done = writing_done.clone();
        let hub = hub.id;
        tokio::spawn(async move {
            let mut last = MessageId(0);
            let mut seen = Vec::new();
            loop {
                // Read the flag first: an empty read after every write finished is the end.
                let finished = done.load(Ordering::Acquire);
                let batch = store
                    .messages_after(hub, last, 50)
                    .await
                    .map_err(|e| failed("catching up", e))?;
                for message in &batch {
                    if message.id <= last {
                        return Err(format!(
                            "the reader saw message {} after message {last}",
                            message.id
                        ));
                    }
                    last = message.id;
                    seen.push(message.id);
                }
                if batch.is_empty() {
                    if finished {
                        return Ok(seen);
                    }
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let tasks: Vec<_> = (0..WRITERS)
        .map(|t| {
            let store = store.clone();
            let hub = hub.clone();
            let me = writers[t].clone();
            let next = writers[(t + 1) % WRITERS].clone();
            tokio::spawn(async move {
                let mut recorded = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let (from, to, key) = match i % 4 {
                        0 => (&me, &hub, None),
                        1 => (&hub, &me, None),
                        2 => (&me, &next, None),
                        _ if t % 2 == 0 => (&hub, &hub, None),
                        _ => (&me, &hub, Some(format!("{t}.{i}"))),
                    };
                    let new = NewMessage {
                        sender: from.clone(),
                        recipient: to.username.clone(),
                        body: format!("{t}.{i}"),
                        idempotency_key: key.clone(),
                    };
                    let inserted = store
                        .insert_message(new.clone())
                        .await
                        .map_err(|e| failed("sending", e))?;
                    if inserted.replayed {
                        return Err(format!("writer {t}: send {i} was reported as a replay"));
                    }
                    if key.is_some() {
                        let retry = store
                            .insert_message(new)
                            .await
                            .map_err(|e| failed("retrying a send", e))?;
                        if !retry.replayed || retry.message != inserted.message {
                            return Err(format!(
                                "writer {t}: the retry of send {i} stored a new message ({retry:?})"
                            ));
                        }
                    }
                    recorded.push(Recorded {
                        sender: from.id,
                        recipient: to.id,
                        inserted,
                    });
                }
                Ok::<_, String>(recorded)
            })
        })
        .collect();
    let mut recorded = Vec::with_capacity(WRITERS * EACH);
    let mut first_failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(mine)) => recorded.extend(mine),
            Ok(Err(failure)) => {
                first_failure.get_or_insert(failure);
            }
            Err(e) => {
                first_failure.get_or_insert(format!("a writer task panicked: {e}"));
            }
        }
    }
    writing_done.store(true, Ordering::Release);
    let seen = reader
        .await
        .map_err(|e| format!("the reader task panicked: {e}"))??;
    if let Some(failure) = first_failure {
        return Err(failure);
    }

    let ids: HashSet<MessageId> = recorded.iter().map(|r| r.inserted.message.id).collect();
    if ids.len() != recorded.len() {
        return Err("two sends got the same id".to_owned());
    }
    // Each user's messages in id order, with what their inserts reported for that user.
    let mut by_user: HashMap<UserId, Vec<(MessageId, Position)>> = HashMap::new();
    for r in &recorded {
        let id = r.inserted.message.id;
        by_user
            .entry(r.sender)
            .or_default()
            .push((id, r.inserted.sender_previous));
        if r.recipient != r.sender {
            by_user
                .entry(r.recipient)
                .or_default()
                .push((id, r.inserted.recipient_previous));
        } else if r.inserted.recipient_previous != r.inserted.sender_previous {
            return Err(format!(
                "note to self {id}: sender_previous {} but recipient_previous {}",
                r.inserted.sender_previous, r.inserted.recipient_previous
            ));
        }
    }
    for user in std::iter::once(&hub).chain(&writers) {
        let mut events = by_user.remove(&user.id).unwrap_or_default();
        events.sort_by_key(|(id, _)| *id);
        let expected: Vec<MessageId> = events.iter().map(|(id, _)| *id).collect();
        let stored: Vec<MessageId> = everything_of(&store, user.id)
            .await
            .map_err(|e| failed("reading back", e))?
            .iter()
            .map(|m| m.id)
            .collect();
        if stored != expected {
            return Err(format!(
                "{}: the store holds messages {stored:?}, the sends returned {expected:?}",
                user.username
            ));
        }
        let mut previous = Position::START;
        for (id, reported) in &events {
            if *reported != previous {
                return Err(format!(
                    "{}: message {id} reports previous position {reported}, but the message \
                     before it is {previous}",
                    user.username
                ));
            }
            previous = Position::from(*id);
        }
        let latest = store
            .latest_position(user.id)
            .await
            .map_err(|e| failed("reading a latest position", e))?;
        if latest != previous {
            return Err(format!(
                "{}: latest position {latest}, but the newest message is {previous}",
                user.username
            ));
        }
        if user.id == hub.id && seen != expected {
            let seen_set: HashSet<&MessageId> = seen.iter().collect();
            let missed: Vec<i64> = expected
                .iter()
                .filter(|id| !seen_set.contains(id))
                .map(|id| id.0)
                .collect();
            return Err(format!(
                "the hub's reader, catching up with the last id it saw, saw {} of {} messages \
                 and missed {} (first: {:?}): a message became visible after a larger id",
                seen.len(),
                expected.len(),
                missed.len(),
                &missed[..missed.len().min(5)]
            ));
        }
    }
    Ok(())
}

/// `latest_position` is the id of the user's newest message: [`Position::START`] before any
/// (and for an unknown user), moved by every message the user sends or receives (once by a
/// note to oneself), never by others' messages, a replay or a failed send.
pub async fn latest_position_is_the_newest_event(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let everyone = [&alice, &bob, &carol];
    let latest = |u: &User| {
        let store = store.clone();
        let id = u.id;
        async move { store.latest_position(id).await.unwrap() }
    };
    for u in everyone {
        assert_eq!(
            latest(u).await,
            Position::START,
            "{} has no message yet",
            u.username
        );
    }
    assert_eq!(
        store
            .latest_position(UserId(carol.id.0 + 1_000_000))
            .await
            .unwrap(),
        Position::START,
        "an unknown user"
    );
    let first = send(&store, &alice, &bob, "hi").await;
    assert_eq!(latest(&alice).await, Position::from(first.id));
    assert_eq!(latest(&bob).await, Position::from(first.id));
    assert_eq!(latest(&carol).await, Position::START);
    let note = send(&store, &carol, &carol, "note").await;
    assert_eq!(latest(&carol).await, Position::from(note.id));
    assert_eq!(latest(&alice).await, Position::from(first.id), "others' messages");
    let keyed = send_keyed(&store, &alice, &carol, "once", Some("k"))
        .await
        .message;
    send(&store, &bob, &bob, "bob's note").await;
    let replay = send_keyed(&store, &alice, &carol, "once", Some("k")).await;
    assert!(replay.replayed);
    assert_eq!(latest(&alice).await, Position::from(keyed.id), "a replay");
    assert_eq!(latest(&carol).await, Position::from(keyed.id), "a replay");
    let failed = store
        .insert_message(NewMessage {
            sender: alice.clone(),
            recipient: name("nobody"),
            body: "lost".into(),
            idempotency_key: None,
        })
        .await;
    assert!(matches!(failed, Err(Error::NotFound(Entity::User))), "{failed:?}");
    assert_eq!(latest(&alice).await, Position::from(keyed.id), "a failed send");
    let mut newest: HashMap<UserId, Position> = HashMap::new();
    for i in 0..45usize {
        let from = everyone[i % 3];
        let to = everyone[(i / 3 + i) % 3];
        let m = send(&store, from, to, &format!("{i}")).await;
        newest.insert(from.id, Position::from(m.id));
        newest.insert(to.id, Position::from(m.id));
        for u in everyone {
            if let Some(&p) = newest.get(&u.id) {
                assert_eq!(latest(u).await, p, "{} after send #{i}", u.username);
            }
        }
    }
    for u in everyone {
        let read = everything_of(&store, u.id).await.unwrap();
        let last = read.last().map_or(Position::START, |m| Position::from(m.id));
        assert_eq!(
            latest(u).await,
            last,
            "{}: the newest message read back",
            u.username
        );
    }
}
