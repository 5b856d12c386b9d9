//! Helpers shared by the integration tests: a store that owns its temporary directory.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use chatcore::store::{Credentials, Inserted, MessagePage, PageRequest, Store, TokenHash, UserQuery};
use chatcore::{Message, MessageId, NewMessage, Result, User, UserId, Username};
use chatcore_sqlite::{SqliteConfig, SqliteStore};
use chrono::{DateTime, Utc};

/// A file-backed store that deletes its directory after the store has shut down.
pub struct TempStore {
    // Declared first: dropped (threads joined, file closed) before the directory goes.
    pub store: SqliteStore,
    pub dir: tempfile::TempDir,
}

impl TempStore {
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("chat.sqlite3")
    }
}

/// A fresh, migrated store on a file in a new temporary directory.
pub async fn temp_store(tune: impl FnOnce(&mut SqliteConfig)) -> TempStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = SqliteConfig::file(dir.path().join("chat.sqlite3"));
    tune(&mut config);
    let store = SqliteStore::open(config).await.expect("open");
    store.migrate().await.expect("migrate");
    TempStore { store, dir }
}

pub async fn fresh_file_store() -> Arc<dyn Store> {
    Arc::new(temp_store(|_| {}).await)
}

pub async fn fresh_memory_store() -> Arc<dyn Store> {
    let store = SqliteStore::open(SqliteConfig::memory()).await.expect("open");
    store.migrate().await.expect("migrate");
    Arc::new(store)
}

pub fn name(s: &str) -> Username {
    Username::parse(s).expect("valid username")
}

pub fn new_message(from: &User, to: &str, body: &str) -> NewMessage {
    NewMessage {
        sender: from.clone(),
        recipient: name(to),
        body: body.to_owned(),
        idempotency_key: None,
    }
}

#[async_trait]
impl Store for TempStore {
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
    async fn session_user(&self, token_hash: &TokenHash, now: DateTime<Utc>) -> Result<Option<User>> {
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
    async fn idempotent_message(&self, sender: UserId, key: &str) -> Result<Option<Message>> {
        self.store.idempotent_message(sender, key).await
    }
}
