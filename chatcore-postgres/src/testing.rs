//! Throwaway databases and servers for tests and benchmarks.
//!
//! - [`TestDatabase`]: a database of its own on the shared server at `CHATCORE_POSTGRES_URL`
//!   (default `postgres://postgres@127.0.0.1:5432`), named `<prefix><pid>_<random>`, dropped
//!   with its guard; databases left behind by a killed run (its process is gone) are dropped
//!   by the next [`TestDatabase::create`] with the same prefix.
//! - [`PrivateServer`]: a PostgreSQL of a test's own (`initdb` and `pg_ctl` on a free port in
//!   a temporary directory) that the test may stop and start; never the machine's server.

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::process::Command;

use chatcore::{Error, Result};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row};

use crate::{PostgresConfig, PostgresStore, error};

/// The server the tests use: `CHATCORE_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432`.
pub fn server_url() -> String {
    std::env::var("CHATCORE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

fn server_options() -> Result<PgConnectOptions> {
    crate::parse_url(&server_url())
}

async fn admin() -> Result<PgConnection> {
    // The maintenance database: the URL may name none.
    let options = server_options()?.database("postgres");
    options.connect().await.map_err(|e| {
        if error::is_unavailable(&e) {
            Error::storage_unavailable(Unreachable {
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

/// The test server does not answer: says what to do instead of printing the driver's error.
struct Unreachable {
    url: String,
    cause: sqlx::Error,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PostgreSQL is not reachable at {} (CHATCORE_POSTGRES_URL): run scripts/test, which starts it",
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
/// use chatcore_postgres::{PostgresConfig, testing::TestDatabase};
/// let db = TestDatabase::create("myapp_test_").await?;
/// let store = db.store(PostgresConfig::default()).await?; // migrated
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// Creates an empty UTF-8 database named `<prefix><pid>_<random>`, after dropping
    /// databases with `prefix` whose process is gone. `prefix` must be lowercase ASCII
    /// letters, digits and underscores.
    pub async fn create(prefix: &str) -> Result<TestDatabase> {
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::invalid(format!("bad test database prefix {prefix:?}")));
        }
        let mut admin = admin().await?;
        sweep_stale(&mut admin, prefix).await?;
        let random = std::hash::RandomState::new().hash_one(std::time::SystemTime::now());
        let name = format!("{prefix}{}_{random:016x}", std::process::id());
        sqlx::query(&format!(
            "CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"
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
    pub fn options(&self) -> Result<PgConnectOptions> {
        Ok(server_options()?.database(&self.name))
    }

    /// A URL for this database (the server's URL with the database's name).
    pub fn url(&self) -> String {
        let base = server_url();
        let (base, query) = match base.split_once('?') {
            Some((base, query)) => (base.to_owned(), format!("?{query}")),
            None => (base, String::new()),
        };
        // Drop a database named in the server URL, keep everything else.
        let authority_end = base.find("://").map_or(0, |i| i + 3);
        let base = match base[authority_end..].find('/') {
            Some(slash) => base[..authority_end + slash].to_owned(),
            None => base,
        };
        format!("{base}/{}{query}", self.name)
    }

    /// A migrated store on this database.
    pub async fn store(&self, config: PostgresConfig) -> Result<PostgresStore> {
        let store = PostgresStore::connect_with(self.options()?, config)?;
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
                // FORCE: pools of the test may still hold connections.
                let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
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
async fn sweep_stale(admin: &mut PgConnection, prefix: &str) -> Result<()> {
    let rows = sqlx::query("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
        .bind(prefix)
        .fetch_all(&mut *admin)
        .await
        .map_err(|e| error::map("listing test databases", e))?;
    for row in rows {
        let name: String = row
            .try_get("datname")
            .map_err(|e| error::map("listing test databases", e))?;
        let pid = name[prefix.len()..]
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
        }
    }
    Ok(())
}

/// Where the PostgreSQL server programs are: `CHATCORE_PG_BIN` or
/// `/usr/lib/postgresql/15/bin`.
fn bin(program: &str) -> PathBuf {
    let dir = std::env::var("CHATCORE_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned());
    Path::new(&dir).join(program)
}

/// A PostgreSQL server of a test's own: a fresh cluster (`initdb`, trust authentication,
/// user `postgres`) in a temporary directory, listening on 127.0.0.1 at a free port. Stopped
/// and deleted when dropped. `initdb` refuses to run as root, so as root the cluster belongs
/// to the `postgres` system user and the programs run through `runuser`.
///
/// Only for tests: it stops nothing but itself.
#[derive(Debug)]
pub struct PrivateServer {
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// A failed server command, with its output.
#[derive(Debug)]
struct CommandFailed(String);

impl std::fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CommandFailed {}

impl PrivateServer {
    /// Creates and starts the server (a few seconds). Errors name the command that failed
    /// and what it printed.
    pub async fn start() -> Result<PrivateServer> {
        let random = std::hash::RandomState::new().hash_one(std::time::SystemTime::now());
        let dir = std::env::temp_dir().join(format!("chatcore-pg-{}-{random:016x}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal("creating the server directory", e))?;
        let as_postgres = is_root();
        let port = free_port()?;
        let server = PrivateServer {
            dir,
            port,
            as_postgres,
        };
        if as_postgres {
            server
                .run(
                    "chown",
                    &["-R", "postgres:postgres", &server.dir.to_string_lossy()],
                    false,
                )
                .await?;
        }
        let data = server.data_dir();
        server
            .run(
                &bin("initdb").to_string_lossy(),
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                true,
            )
            .await?;
        server.start_again().await?;
        Ok(server)
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    /// The command that runs `program` (as the `postgres` user when `as_owner` and running
    /// as root).
    fn command(&self, program: &str, args: &[&str], as_owner: bool) -> Command {
        let mut command = if as_owner && self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", program]);
            command
        } else {
            Command::new(program)
        };
        command.args(args).current_dir(&self.dir);
        command
    }

    /// Runs `program` to completion without blocking the runtime.
    async fn run(&self, program: &str, args: &[&str], as_owner: bool) -> Result<()> {
        let output = tokio::process::Command::from(self.command(program, args, as_owner))
            .output()
            .await
            .map_err(|e| Error::internal(format!("running {program}"), e))?;
        if output.status.success() {
            return Ok(());
        }
        Err(Error::internal(
            format!("{program} {args:?} failed"),
            CommandFailed(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )),
        ))
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn start_again(&self) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.to_string_lossy()
        );
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        let data = self.data_dir();
        let ctl = bin("pg_ctl").to_string_lossy().into_owned();
        let args = [
            "-D",
            data.as_str(),
            "-o",
            options.as_str(),
            "-l",
            log.as_str(),
            "-w",
            "-t",
            "60",
            "start",
        ];
        self.run(&ctl, &args, true).await
    }

    /// Stops the server (fast shutdown: connections are closed) and waits until it is down.
    pub async fn stop(&self) -> Result<()> {
        self.stop_in("fast").await
    }

    /// Stops the server as a crash would (immediate shutdown: every process quits at once,
    /// WAL still in the server's buffers is lost, and the next start recovers from the WAL
    /// on disk) and waits until it is down.
    pub async fn crash(&self) -> Result<()> {
        self.stop_in("immediate").await
    }

    /// `pg_ctl stop` in a shutdown `mode`, waiting until the server is down.
    async fn stop_in(&self, mode: &str) -> Result<()> {
        let data = self.data_dir();
        let ctl = bin("pg_ctl").to_string_lossy().into_owned();
        self.run(&ctl, &["-D", &data, "-m", mode, "-w", "stop"], true)
            .await
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` on this server, as user `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates `database` on this server.
    pub async fn create_database(&self, database: &str) -> Result<()> {
        let mut conn = PgConnection::connect(&self.url("postgres"))
            .await
            .map_err(|e| error::map("connecting to the private server", e))?;
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&mut conn)
            .await
            .map_err(|e| error::map("creating a database", e))?;
        let _ = conn.close().await;
        Ok(())
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let data = self.data_dir();
        let ctl = bin("pg_ctl").to_string_lossy().into_owned();
        // Not running any more is fine: the directory goes either way.
        let _ = self
            .command(&ctl, &["-D", &data, "-m", "immediate", "-w", "stop"], true)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    // The effective uid, from the kernel's view of this process.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A port nobody listens on now (the OS picks it).
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::internal("finding a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::internal("finding a free port", e))?
        .port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unreachable_message_hides_the_password() {
        use super::without_password;
        assert_eq!(
            without_password("postgres://root:s3cret@127.0.0.1:5432/db"),
            "postgres://root:***@127.0.0.1:5432/db"
        );
        assert_eq!(
            without_password("postgres://root@127.0.0.1"),
            "postgres://root@127.0.0.1"
        );
    }
}
