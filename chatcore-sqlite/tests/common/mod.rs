//! Helpers shared by the integration tests: a store that owns its temporary directory.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use chatcore::conformance::GuardedStore;
use chatcore::store::{SessionStore, Store};
use chatcore::{NewMessage, User, Username};
use chatcore_sqlite::{SqliteConfig, SqliteStore};

/// A file-backed store that deletes its directory after the store has shut down.
pub struct TempStore {
    // Declared first: dropped (threads joined, file closed) before the directory goes.
    pub store: SqliteStore,
    pub dir: tempfile::TempDir,
}

impl TempStore {
    /// The store as the conformance suites take it (both traits), still deleting its
    /// directory afterwards.
    pub fn into_guarded(self) -> Arc<GuardedStore<SqliteStore, tempfile::TempDir>> {
        Arc::new(GuardedStore::new(self.store, self.dir))
    }

    /// The store as the [`Store`] suite takes it.
    pub fn into_shared(self) -> Arc<dyn Store> {
        self.into_guarded()
    }

    /// The store as the [`SessionStore`] suite takes it.
    pub fn into_shared_sessions(self) -> Arc<dyn SessionStore> {
        self.into_guarded()
    }

    /// The store as the account suite takes it (a whole backend).
    pub fn into_shared_backend(self) -> Arc<dyn chatcore::Backend> {
        self.into_guarded()
    }

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
    temp_store(|_| {}).await.into_shared()
}

pub async fn fresh_file_session_store() -> Arc<dyn SessionStore> {
    temp_store(|_| {}).await.into_shared_sessions()
}

pub async fn fresh_file_backend() -> Arc<dyn chatcore::Backend> {
    temp_store(|_| {}).await.into_shared_backend()
}

pub async fn fresh_memory_backend() -> Arc<dyn chatcore::Backend> {
    memory_store().await
}

/// A fresh, migrated in-memory store.
pub async fn memory_store() -> Arc<SqliteStore> {
    let store = SqliteStore::open(SqliteConfig::memory()).await.expect("open");
    store.migrate().await.expect("migrate");
    Arc::new(store)
}

pub async fn fresh_memory_store() -> Arc<dyn Store> {
    memory_store().await
}

pub async fn fresh_memory_session_store() -> Arc<dyn SessionStore> {
    memory_store().await
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
