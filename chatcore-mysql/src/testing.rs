//! Throwaway databases for tests and benchmarks against a shared MySQL/MariaDB server.
//!
//! Each [`TestDatabase`] has a name of its own (`<prefix><pid>_<random>`), so tests running
//! at once never collide, and is dropped with its guard, even when the test fails. Databases
//! left behind by a run that was killed (its process is gone) are dropped by the next
//! [`TestDatabase::create`] with the same prefix.

use std::hash::BuildHasher;
use std::str::FromStr;

use chatcore::Result;
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions, Connection, MySqlConnection, Row};

use crate::{MysqlConfig, MysqlStore, error};

/// The server the tests use: `CHATCORE_MYSQL_URL`, default `mysql://root@127.0.0.1:3306`.
pub fn server_url() -> String {
    std::env::var("CHATCORE_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

fn server_options() -> Result<MySqlConnectOptions> {
    MySqlConnectOptions::from_str(&server_url())
        .map_err(|e| chatcore::Error::invalid(format!("CHATCORE_MYSQL_URL is not a MySQL URL: {e}")))
}

async fn admin() -> Result<MySqlConnection> {
    server_options()?.connect().await.map_err(|e| {
        if error::is_unavailable(&e) {
            chatcore::Error::storage_unavailable(Unreachable {
                url: without_password(&server_url()),
                cause: e,
            })
        } else {
            error::map("connecting to the test server", e)
        }
    })
}

/// `url` with its password, if any, replaced by `***` (the URL goes into test output).
fn without_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.rsplit_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

/// The test server does not answer. Its `Display` and `Debug` are the same one line, so a
/// test that unwraps the error says what to do instead of printing the driver's error.
struct Unreachable {
    url: String,
    cause: sqlx::Error,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MariaDB is not reachable at {} (CHATCORE_MYSQL_URL): run scripts/test, which starts it",
            self.url
        )
    }
}

impl std::fmt::Debug for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Unreachable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

/// An empty database on the test server that exists until this guard drops.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> chatcore::Result<()> {
/// use chatcore_mysql::{MysqlConfig, testing::TestDatabase};
/// let db = TestDatabase::create("myapp_test_").await?;
/// let store = db.store(MysqlConfig::default()).await?; // migrated
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// Creates an empty `utf8mb4` database named `<prefix><pid>_<random>`, after dropping
    /// databases with `prefix` whose process is gone.
    pub async fn create(prefix: &str) -> Result<TestDatabase> {
        let mut admin = admin().await?;
        sweep_stale(&mut admin, prefix).await?;
        let random = std::hash::RandomState::new().hash_one(std::time::SystemTime::now());
        let name = format!("{prefix}{}_{random:016x}", std::process::id());
        sqlx::query(&format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .execute(&mut admin)
        .await
        .map_err(|e| error::map("creating a test database", e))?;
        let _ = admin.close().await;
        Ok(TestDatabase { name })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connection options for this database.
    pub fn options(&self) -> Result<MySqlConnectOptions> {
        Ok(server_options()?.database(&self.name))
    }

    /// A migrated store on this database.
    pub async fn store(&self, config: MysqlConfig) -> Result<MysqlStore> {
        let store = MysqlStore::connect_with(self.options()?, config)?;
        chatcore::Backend::migrate(&store).await?;
        Ok(store)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop often runs inside async code and cannot await: a short-lived thread with a
        // runtime of its own drops the database, and is waited for.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let mut admin = admin().await.ok()?;
                let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                    .execute(&mut admin)
                    .await
                    .ok();
                let _ = admin.close().await;
                dropped
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            // Not fatal: the next run with the same prefix sweeps it.
            tracing::warn!(database = %self.name, "could not drop a test database");
        }
    }
}

/// Drops databases named `<prefix><pid>_...` whose process is no longer running.
async fn sweep_stale(admin: &mut MySqlConnection, prefix: &str) -> Result<()> {
    let rows =
        sqlx::query("SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ?")
            .bind(format!("{}%", prefix.replace('_', "\\_")))
            .fetch_all(&mut *admin)
            .await
            .map_err(|e| error::map("listing test databases", e))?;
    for row in rows {
        let name: String = row
            .try_get_unchecked("name")
            .map_err(|e| error::map("listing test databases", e))?;
        let pid = name[prefix.len()..]
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
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unreachable_message_hides_the_password() {
        use super::without_password;
        assert_eq!(
            without_password("mysql://root:s3cret@127.0.0.1:3306/db"),
            "mysql://root:***@127.0.0.1:3306/db"
        );
        assert_eq!(
            without_password("mysql://root@127.0.0.1:3306"),
            "mysql://root@127.0.0.1:3306"
        );
        assert_eq!(without_password("not a url"), "not a url");
    }
}
