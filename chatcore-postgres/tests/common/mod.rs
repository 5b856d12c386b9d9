//! Helpers shared by the test files: a fresh, migrated store on a database of its own.

#![allow(dead_code)] // each test file uses its own part

use std::sync::Arc;

use chatcore::conformance::GuardedStore;
use chatcore_postgres::testing::TestDatabase;
use chatcore_postgres::{PostgresConfig, PostgresStore};

/// The prefix of every test database of this crate.
pub const PREFIX: &str = "chatcore_pg_test_";

/// Settings for tests: a small pool, as many test binaries share the server.
pub fn test_config() -> PostgresConfig {
    PostgresConfig {
        max_connections: 4,
        ..PostgresConfig::default()
    }
}

/// A migrated store on a database of its own, dropped with the store.
pub async fn fresh() -> GuardedStore<PostgresStore, TestDatabase> {
    let database = TestDatabase::create(PREFIX)
        .await
        .expect("create a test database");
    let store = database.store(test_config()).await.expect("migrated store");
    GuardedStore::new(store, database)
}

pub async fn fresh_store() -> Arc<dyn chatcore::Store> {
    Arc::new(fresh().await)
}

pub async fn fresh_session_store() -> Arc<dyn chatcore::SessionStore> {
    Arc::new(fresh().await)
}

pub async fn fresh_backend() -> Arc<dyn chatcore::Backend> {
    Arc::new(fresh().await)
}
