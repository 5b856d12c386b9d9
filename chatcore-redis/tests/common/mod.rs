//! Helpers shared by the integration tests: settings, polling, and a `redis-server` of a
//! test's own that it can kill, restart, freeze and reconfigure.

// Each test file uses a different part of this.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use chatcore_redis::RedisConfig;

/// How long a test waits for something that should happen in milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The shared Redis: `CHATCORE_REDIS_URL`, default `redis://127.0.0.1:6379`, once it answers
/// `PING`. When it does not, the test fails with one line that says so and what to run,
/// rather than with the first driver error of the test.
pub async fn redis_url() -> String {
    let url = std::env::var("CHATCORE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ping = async {
        let client = redis::Client::open(url.as_str()).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .ok()
    };
    match tokio::time::timeout(Duration::from_secs(5), ping).await {
        Ok(Some(_)) => url,
        _ => {
            panic!("Redis is not reachable at {url} (CHATCORE_REDIS_URL): run scripts/test, which starts it")
        }
    }
}

/// `TEST_LOG=1` shows the notifier's logs (reconnects, failures).
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "debug".into()),
            )
            .with_test_writer()
            .try_init();
    }
}

/// Quick timeouts and retries, and a channel prefix of this test's own.
pub fn test_config(url: String) -> RedisConfig {
    init_logs();
    RedisConfig {
        url,
        channel_prefix: format!("chatcore-test:{:016x}:", rand::random::<u64>()),
        command_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        reconnect_min_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        ..Default::default()
    }
}

/// Waits until `check` holds, polling; fails after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs one command on the Redis at `url` and returns its answer.
pub async fn command<T: redis::FromRedisValue>(url: &str, args: &[&str]) -> T {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut connection)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A `redis-server` of this test's own, on a free port, with its files in a temporary
/// directory, killed with the test.
pub struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn restart(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().expect("UTF-8 temp dir").to_owned();
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", &dir, "--daemonize", "no", "--loglevel", "warning"])
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|_| {
                panic!(
                    "redis-server could not be started (is Redis installed?): this test runs a Redis of its own; \
                     scripts/test checks for it and starts the shared one"
                )
            });
        self.child = Some(child);
        let url = self.url();
        eventually("private redis-server answers", || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                match client.get_multiplexed_async_connection().await {
                    Ok(mut connection) => redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to this test's own server process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().and_then(|c| c.id()).expect("server running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }

    /// Forbids (`false`) or allows again (`true`) `PUBLISH` for every connection, through
    /// the default user's ACL: a publish then fails at once (`NOPERM`) and is not delivered
    /// later, while subscriber connections stay up and keep receiving.
    pub async fn allow_publish(&self, allowed: bool) {
        let rule = if allowed { "+publish" } else { "-publish" };
        let answer: String = command(&self.url(), &["ACL", "SETUSER", "default", rule]).await;
        assert_eq!(answer, "OK");
    }
}
