//! Test databases for the integration tests: `chatcore_mysql::testing::TestDatabase` with
//! this crate's prefix, a small pool, and panics instead of errors.
#![allow(dead_code)] // each test file uses a different part

use std::sync::Arc;
use std::time::Duration;

use chatcore::conformance::GuardedStore;
use chatcore::{SessionStore, Store};
use chatcore_mysql::{MysqlConfig, MysqlStore, testing};
use sqlx::mysql::MySqlConnectOptions;

/// Every test database's name starts with this, then `<pid>_<random>`.
pub const PREFIX: &str = "chatcore_mysql_test_";

/// A small pool: many tests run at once against one shared server.
pub fn test_config() -> MysqlConfig {
    MysqlConfig {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(20),
        ..MysqlConfig::default()
    }
}

/// A database that exists until this guard drops.
pub struct TestDatabase(testing::TestDatabase);

impl TestDatabase {
    /// Creates an empty database with a unique name.
    pub async fn create() -> TestDatabase {
        TestDatabase(
            testing::TestDatabase::create(PREFIX)
                .await
                .expect("create a test database"),
        )
    }

    /// This database's name.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Connection options for this database.
    pub fn options(&self) -> MySqlConnectOptions {
        self.0.options().expect("CHATCORE_MYSQL_URL is a valid MySQL URL")
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> MysqlStore {
        self.store_with(test_config()).await
    }

    /// A migrated store on this database with `config`.
    pub async fn store_with(&self, config: MysqlConfig) -> MysqlStore {
        self.0.store(config).await.expect("migrated store")
    }
}

/// The conformance factory: a fresh store on a fresh database, dropped with the store.
pub async fn fresh_store() -> Arc<dyn Store> {
    let database = TestDatabase::create().await;
    let store = database.store().await;
    Arc::new(GuardedStore::new(store, database))
}

/// The session conformance factory: the same, as a [`SessionStore`].
pub async fn fresh_session_store() -> Arc<dyn SessionStore> {
    let database = TestDatabase::create().await;
    let store = database.store().await;
    Arc::new(GuardedStore::new(store, database))
}

pub async fn fresh_backend() -> Arc<dyn chatcore::Backend> {
    let database = TestDatabase::create().await;
    let store = database.store().await;
    Arc::new(GuardedStore::new(store, database))
}
