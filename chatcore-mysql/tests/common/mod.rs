//! Test databases: each test gets its own, dropped when its guard drops. Databases left
//! behind by a crashed run (whose process is gone) are dropped by the next run.
#![allow(dead_code)] // each test file uses a different part

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chatcore::Store;
use chatcore::conformance::GuardedStore;
use chatcore_mysql::{MysqlConfig, MysqlStore};
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

/// Every test database's name starts with this, then `<pid>_<random>`.
pub const PREFIX: &str = "chatcore_mysql_test_";

/// The server URL without a database, from `CHATCORE_MYSQL_URL`.
pub fn server_url() -> String {
    std::env::var("CHATCORE_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// Options for `database` on the test server.
pub fn options(database: &str) -> MySqlConnectOptions {
    MySqlConnectOptions::from_str(&server_url())
        .expect("CHATCORE_MYSQL_URL is a valid MySQL URL")
        .database(database)
}

/// A small pool: many tests run at once against one shared server.
pub fn test_config() -> MysqlConfig {
    MysqlConfig {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(20),
        ..MysqlConfig::default()
    }
}

/// A database that exists until this guard drops.
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    /// Creates an empty database with a unique name.
    pub async fn create() -> TestDatabase {
        let mut admin = admin().await;
        sweep_stale(&mut admin).await;
        let name = format!("{PREFIX}{}_{:016x}", std::process::id(), rand::random::<u64>());
        sqlx::query(&format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .execute(&mut admin)
        .await
        .expect("create test database");
        let _ = admin.close().await;
        TestDatabase { name }
    }

    /// Connection options for this database.
    pub fn options(&self) -> MySqlConnectOptions {
        options(&self.name)
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> MysqlStore {
        self.store_with(test_config()).await
    }

    /// A migrated store on this database with `config`.
    pub async fn store_with(&self, config: MysqlConfig) -> MysqlStore {
        let store = MysqlStore::connect_with(self.options(), config);
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs in async code and has no runtime of its own to use: a short-lived thread
        // with its own runtime drops the database and is waited for.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut admin = admin().await;
                sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                    .execute(&mut admin)
                    .await
                    .expect("drop test database");
                let _ = admin.close().await;
            });
        })
        .join();
        if dropped.is_err() && !std::thread::panicking() {
            panic!("could not drop test database {}", self.name);
        }
    }
}

async fn admin() -> sqlx::MySqlConnection {
    MySqlConnectOptions::from_str(&server_url())
        .expect("CHATCORE_MYSQL_URL is a valid MySQL URL")
        .connect()
        .await
        .expect("connect to the test MySQL server (CHATCORE_MYSQL_URL)")
}

/// Drops test databases whose process is no longer running (a crashed or killed run).
async fn sweep_stale(admin: &mut sqlx::MySqlConnection) {
    let rows =
        sqlx::query("SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ?")
            .bind(format!("{}%", PREFIX.replace('_', "\\_")))
            .fetch_all(&mut *admin)
            .await
            .expect("list test databases");
    for row in rows {
        let name: String = row.get("name");
        let pid = name[PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                .execute(&mut *admin)
                .await;
        }
    }
}

/// The conformance factory: a fresh store on a fresh database, dropped with the store.
pub async fn fresh_store() -> Arc<dyn Store> {
    let database = TestDatabase::create().await;
    let store = database.store().await;
    Arc::new(GuardedStore::new(store, database))
}
