//! Stores for the suite: a wrapper that fails on demand (and counts session lookups), and the
//! MySQL and PostgreSQL factories.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use chatcore::store::{
    BlockQuery, Changed, Credentials, InboxPage, InboxRequest, Inserted, MarkedRead, MessageChange,
    MessagePage, MigrationReport, PageRequest, SessionRecord, StoredEvent, TokenHash, UserQuery,
};
use chatcore::{
    Backend, Error, Message, MessageId, NewMessage, Position, SessionStore, Store, User, UserId, Username,
};
use chatcore_mysql::testing::TestDatabase;
use chrono::{DateTime, Utc};

/// A fresh, migrated MySQL store on a database of its own (`chatcore_axum_test_<pid>_<random>`),
/// dropped with the store.
pub async fn mysql_store() -> Arc<dyn Backend> {
    // One line when MariaDB is down (the error's source says so and names scripts/test),
    // not the driver's error.
    let database = TestDatabase::create("chatcore_axum_test_")
        .await
        .unwrap_or_else(|error| match std::error::Error::source(&error) {
            Some(cause) => panic!("{error}: {cause}"),
            None => panic!("{error}"),
        });
    let config = chatcore_mysql::MysqlConfig {
        max_connections: 4,
        ..Default::default()
    };
    let store = database.store(config).await.expect("migrate the test database");
    Arc::new(TestStore::new(Arc::new(store)).with_guard(database))
}

/// A fresh, migrated PostgreSQL store on a database of its own
/// (`chatcore_axum_test_<pid>_<random>` on `CHATCORE_POSTGRES_URL`), dropped with the store.
pub async fn postgres_store() -> Arc<dyn Backend> {
    postgres_store_and_url().await.0
}

/// [`postgres_store`], and the URL of its database (for a `PgNotifier` on it).
pub async fn postgres_store_and_url() -> (Arc<dyn Backend>, String) {
    let database = chatcore_postgres::testing::TestDatabase::create("chatcore_axum_test_")
        .await
        .unwrap_or_else(|error| match std::error::Error::source(&error) {
            Some(cause) => panic!("{error}: {cause}"),
            None => panic!("{error}"),
        });
    let config = chatcore_postgres::PostgresConfig {
        max_connections: 4,
        ..Default::default()
    };
    let store = database.store(config).await.expect("migrate the test database");
    let url = database.url();
    (
        Arc::new(TestStore::new(Arc::new(store)).with_guard(database)),
        url,
    )
}

/// A real backend, wrapped: it fails on demand with [`Error::Unavailable`], counts the
/// session lookups that reach it, and may own a guard (e.g. a test database dropped with the
/// store). It is a whole [`Backend`], so the suite serves it like any other.
pub struct TestStore {
    inner: Arc<dyn Backend>,
    /// Every call but the session ones fails while set.
    pub down: AtomicBool,
    /// The session calls fail while set.
    pub sessions_down: AtomicBool,
    /// How many [`SessionStore::session_user`] calls reached this store.
    pub session_lookups: AtomicU64,
    _guard: Option<Box<dyn Any + Send + Sync>>,
}

impl TestStore {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            down: AtomicBool::new(false),
            sessions_down: AtomicBool::new(false),
            session_lookups: AtomicU64::new(0),
            _guard: None,
        }
    }

    /// Keeps `guard` alive as long as the store.
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self._guard = Some(Box::new(guard));
        self
    }

    fn check(&self, flag: &AtomicBool) -> chatcore::Result<()> {
        if flag.load(Ordering::SeqCst) {
            Err(Error::storage_unavailable("injected outage"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for TestStore {
    async fn create_user(&self, username: &Username) -> chatcore::Result<User> {
        self.check(&self.down)?;
        self.inner.create_user(username).await
    }
    async fn find_user(&self, username: &Username) -> chatcore::Result<Option<User>> {
        self.check(&self.down)?;
        self.inner.find_user(username).await
    }
    async fn list_users(&self, query: &UserQuery) -> chatcore::Result<Vec<User>> {
        self.check(&self.down)?;
        self.inner.list_users(query).await
    }
    async fn insert_message(&self, message: NewMessage) -> chatcore::Result<Inserted> {
        self.check(&self.down)?;
        self.inner.insert_message(message).await
    }
    async fn message_for(&self, viewer: UserId, id: MessageId) -> chatcore::Result<Option<Message>> {
        self.check(&self.down)?;
        self.inner.message_for(viewer, id).await
    }
    async fn conversation_page(
        &self,
        viewer: UserId,
        other: &Username,
        page: &PageRequest,
    ) -> chatcore::Result<MessagePage> {
        self.check(&self.down)?;
        self.inner.conversation_page(viewer, other, page).await
    }
    async fn user_messages(&self, user: UserId, page: &PageRequest) -> chatcore::Result<MessagePage> {
        self.check(&self.down)?;
        self.inner.user_messages(user, page).await
    }
    async fn messages_after(
        &self,
        user: UserId,
        after: MessageId,
        limit: u32,
    ) -> chatcore::Result<Vec<Message>> {
        self.check(&self.down)?;
        self.inner.messages_after(user, after, limit).await
    }
    async fn latest_position(&self, user: UserId) -> chatcore::Result<Position> {
        self.check(&self.down)?;
        self.inner.latest_position(user).await
    }
    async fn events_after(
        &self,
        user: UserId,
        after: Position,
        limit: u32,
    ) -> chatcore::Result<Vec<StoredEvent>> {
        self.check(&self.down)?;
        self.inner.events_after(user, after, limit).await
    }
    async fn inbox(&self, user: UserId, request: &InboxRequest) -> chatcore::Result<InboxPage> {
        self.check(&self.down)?;
        self.inner.inbox(user, request).await
    }
    async fn mark_read(
        &self,
        reader: &User,
        peer: &Username,
        up_to: MessageId,
    ) -> chatcore::Result<MarkedRead> {
        self.check(&self.down)?;
        self.inner.mark_read(reader, peer, up_to).await
    }
    async fn change_message(
        &self,
        sender: UserId,
        id: MessageId,
        change: &MessageChange,
    ) -> chatcore::Result<Changed> {
        self.check(&self.down)?;
        self.inner.change_message(sender, id, change).await
    }
    async fn set_block(&self, blocker: UserId, blocked: &Username, on: bool) -> chatcore::Result<User> {
        self.check(&self.down)?;
        self.inner.set_block(blocker, blocked, on).await
    }
    async fn blocked_users(&self, user: UserId, query: &BlockQuery) -> chatcore::Result<Vec<User>> {
        self.check(&self.down)?;
        self.inner.blocked_users(user, query).await
    }
    async fn reachable_peer(&self, user: UserId, peer: &Username) -> chatcore::Result<Option<UserId>> {
        self.check(&self.down)?;
        self.inner.reachable_peer(user, peer).await
    }
    async fn conversation_peers(&self, user: UserId, among: &[UserId]) -> chatcore::Result<Vec<UserId>> {
        self.check(&self.down)?;
        self.inner.conversation_peers(user, among).await
    }
    async fn feed_after(&self, after: Position, limit: u32) -> chatcore::Result<Vec<StoredEvent>> {
        self.check(&self.down)?;
        self.inner.feed_after(after, limit).await
    }
    async fn load_checkpoint(&self, name: &str) -> chatcore::Result<Position> {
        self.check(&self.down)?;
        self.inner.load_checkpoint(name).await
    }
    async fn save_checkpoint(&self, name: &str, position: Position) -> chatcore::Result<()> {
        self.check(&self.down)?;
        self.inner.save_checkpoint(name, position).await
    }
    async fn remove_user(&self, user: UserId) -> chatcore::Result<()> {
        self.check(&self.down)?;
        self.inner.remove_user(user).await
    }
    async fn delete_sent_messages(
        &self,
        sender: UserId,
        after: MessageId,
        limit: u32,
    ) -> chatcore::Result<Vec<Changed>> {
        self.check(&self.down)?;
        self.inner.delete_sent_messages(sender, after, limit).await
    }
}

#[async_trait]
impl SessionStore for TestStore {
    async fn create_account(&self, username: &Username, password_hash: &str) -> chatcore::Result<User> {
        self.check(&self.down)?;
        self.inner.create_account(username, password_hash).await
    }
    async fn credentials(&self, username: &Username) -> chatcore::Result<Option<Credentials>> {
        self.check(&self.down)?;
        self.inner.credentials(username).await
    }
    async fn create_session(
        &self,
        token_hash: &TokenHash,
        user: UserId,
        expires_at: DateTime<Utc>,
    ) -> chatcore::Result<()> {
        self.check(&self.sessions_down)?;
        self.inner.create_session(token_hash, user, expires_at).await
    }
    async fn session_user(
        &self,
        token_hash: &TokenHash,
        now: DateTime<Utc>,
    ) -> chatcore::Result<Option<SessionRecord>> {
        self.check(&self.sessions_down)?;
        self.session_lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.session_user(token_hash, now).await
    }
    async fn delete_session(&self, token_hash: &TokenHash) -> chatcore::Result<()> {
        self.check(&self.sessions_down)?;
        self.inner.delete_session(token_hash).await
    }
    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> chatcore::Result<u64> {
        self.check(&self.sessions_down)?;
        self.inner.delete_expired_sessions(now).await
    }
    async fn delete_user_sessions(&self, user: UserId) -> chatcore::Result<u64> {
        self.check(&self.sessions_down)?;
        self.inner.delete_user_sessions(user).await
    }
    async fn set_password_hash(&self, username: &Username, password_hash: &str) -> chatcore::Result<User> {
        self.check(&self.sessions_down)?;
        self.inner.set_password_hash(username, password_hash).await
    }
}

#[async_trait]
impl Backend for TestStore {
    async fn migrate(&self) -> chatcore::Result<MigrationReport> {
        self.inner.migrate().await
    }
    async fn close(&self) -> chatcore::Result<()> {
        self.inner.close().await
    }
}
