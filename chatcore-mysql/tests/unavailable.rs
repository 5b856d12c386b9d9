//! A database that goes away is `Error::Unavailable`, and the store recovers by itself when it
//! comes back. Runs a private MariaDB (own data directory, own free port), never the shared one.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chatcore::{Backend, Error, NewMessage, PageRequest, Store, Username};
use chatcore_mysql::{MysqlConfig, MysqlStore};
use sqlx::ConnectOptions;
use sqlx::mysql::MySqlConnectOptions;
use tokio::process::{Child, Command};

const MARIADBD: &str = "/usr/sbin/mariadbd";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private MariaDB server, killed when dropped.
struct Server {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Server {
    async fn install(dir: &Path, port: u16) -> Server {
        let status = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg("--user=root")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("run mariadb-install-db");
        assert!(status.success(), "mariadb-install-db failed");
        Server {
            dir: dir.to_owned(),
            port,
            child: None,
        }
    }

    async fn start(&mut self) {
        let dir = &self.dir;
        let child = Command::new(MARIADBD)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .args([
                "--user=root",
                "--skip-grant-tables",
                "--innodb-buffer-pool-size=32M",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start mariadbd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.admin_options().connect().await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "private MariaDB did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the server the hard way, as a crash or a pulled cable would.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill mariadbd");
        }
    }

    fn admin_options(&self) -> MySqlConnectOptions {
        MySqlConnectOptions::from_str(&format!("mysql://root@127.0.0.1:{}", self.port)).unwrap()
    }
}

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

fn assert_unavailable<T: std::fmt::Debug>(result: chatcore::Result<T>, what: &str) {
    match result {
        Err(Error::Unavailable { what: "storage", .. }) => {}
        other => panic!("{what}: expected storage unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_while_down_and_recovers_by_itself() {
    // A hang is a failure too.
    tokio::time::timeout(Duration::from_secs(90), down_and_back())
        .await
        .expect("the down-and-back scenario finishes within 90 s");
}

async fn down_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::install(dir.path(), free_port()).await;
    server.start().await;
    let mut admin = server.admin_options().connect().await.unwrap();
    sqlx::query("CREATE DATABASE chat")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);

    let config = MysqlConfig {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(2),
        ..MysqlConfig::default()
    };
    let url = format!("mysql://root@127.0.0.1:{}/chat", server.port);
    let store = MysqlStore::connect(&url, config).await.unwrap();
    store.migrate().await.unwrap();
    let alice = store.create_user(&name("alice")).await.unwrap();
    let bob = store.create_user(&name("bob")).await.unwrap();
    let send = |body: &str| NewMessage {
        sender: alice.clone(),
        recipient: name("bob"),
        body: body.to_owned(),
        idempotency_key: None,
    };
    store.insert_message(send("before")).await.unwrap();

    server.kill().await;
    let started = Instant::now();
    assert_unavailable(store.find_user(&name("alice")).await, "read while down");
    assert_unavailable(store.insert_message(send("while down")).await, "send while down");
    assert_unavailable(
        store
            .conversation_page(bob.id, &name("alice"), &PageRequest::latest(15))
            .await,
        "history while down",
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failures come within the acquire timeout, took {:?}",
        started.elapsed()
    );

    server.start().await;
    // The same store, untouched, works again once its pool reconnects.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.find_user(&name("alice")).await {
            Ok(found) => {
                assert_eq!(found, Some(alice.clone()));
                break;
            }
            Err(err) => {
                assert!(
                    err.is_retryable(),
                    "only unavailability while recovering, got {err:?}"
                );
                assert!(Instant::now() < deadline, "store did not recover: {err:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let after = store.insert_message(send("after")).await.unwrap();
    let page = store
        .conversation_page(bob.id, &name("alice"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(page.total, 2, "the send that failed while down stored nothing");
    assert_eq!(page.messages[0], after.message);
    assert_eq!(page.messages[1].body, "before");

    store.close().await.unwrap();
    server.kill().await;
}

impl Server {
    /// Sends `signal` (`STOP`, `CONT`) to this test's own server: a stopped server keeps its
    /// connections open and answers nothing, as behind a network partition.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().and_then(Child::id).expect("server running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

/// Issue 16: a hung server (SIGSTOP) costs every call at most the statement timeout, sends
/// included, and the store answers again by itself after SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_costs_each_call_the_statement_timeout_and_recovers() {
    tokio::time::timeout(Duration::from_secs(120), hung_and_back())
        .await
        .expect("the hung-and-back scenario finishes within 120 s");
}

async fn hung_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::install(dir.path(), free_port()).await;
    server.start().await;
    let mut admin = server.admin_options().connect().await.unwrap();
    sqlx::query("CREATE DATABASE chat")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let limit = Duration::from_secs(1);
    let config = MysqlConfig {
        max_connections: 4,
        acquire_timeout: limit,
        statement_timeout: limit,
        ..MysqlConfig::default()
    };
    let url = format!("mysql://root@127.0.0.1:{}/chat", server.port);
    let store = std::sync::Arc::new(MysqlStore::connect(&url, config).await.unwrap());
    store.migrate().await.unwrap();
    let alice = store.create_user(&name("alice")).await.unwrap();
    let bob = store.create_user(&name("bob")).await.unwrap();
    let send = |body: &str| NewMessage {
        sender: alice.clone(),
        recipient: name("bob"),
        body: body.to_owned(),
        idempotency_key: None,
    };
    store.insert_message(send("before")).await.unwrap();

    server.signal("STOP");
    let started = Instant::now();
    // A send, a history read and a session read at once: each ends at the deadline.
    let (alice_name, latest) = (name("alice"), PageRequest::latest(15));
    let (sent, page, session) = tokio::join!(
        store.insert_message(send("while hung")),
        store.conversation_page(bob.id, &alice_name, &latest),
        chatcore::SessionStore::session_user(&*store, &[9; 32], chrono::Utc::now()),
    );
    assert_unavailable(sent, "send while hung");
    assert_unavailable(page, "history while hung");
    assert_unavailable(session, "session while hung");
    // Later calls too (the first ones' connections are gone, new ones cannot be made).
    assert_unavailable(store.find_user(&name("alice")).await, "read while hung");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(6),
        "four calls, each bounded by the 1 s statement timeout, took {elapsed:?}"
    );

    server.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.insert_message(send("after")).await {
            Ok(_) => break,
            Err(err) => {
                assert!(
                    err.is_retryable(),
                    "only unavailability while recovering, got {err:?}"
                );
                assert!(Instant::now() < deadline, "store did not recover: {err:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let page = store
        .conversation_page(bob.id, &name("alice"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(page.messages[0].body, "after");
    assert_eq!(page.messages.last().unwrap().body, "before");
    store.close().await.unwrap();
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_is_unavailable() {
    let port = free_port();
    let config = MysqlConfig {
        acquire_timeout: Duration::from_secs(1),
        ..MysqlConfig::default()
    };
    let result = MysqlStore::connect(&format!("mysql://root@127.0.0.1:{port}/chat"), config).await;
    assert_unavailable(result.map(|_| ()), "connect");
    for bad in [
        "postgres://127.0.0.1/chat",
        "mysql://root@127.0.0.1:notaport/chat",
    ] {
        match MysqlStore::connect(bad, MysqlConfig::default()).await {
            Err(Error::Invalid(message)) => assert!(message.contains("MySQL URL"), "{message}"),
            other => panic!("{bad} is invalid input, got {:?}", other.map(|_| ())),
        }
    }
}

/// A configuration that makes no sense is refused where the store is built, before any
/// connection is tried (nothing listens on the port: only the check can answer `Invalid`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_makes_no_sense_is_invalid_at_connect() {
    let url = format!("mysql://root@127.0.0.1:{}/chat", free_port());
    let options = MySqlConnectOptions::from_str(&url).unwrap();
    let bad = [
        (
            "max_connections",
            MysqlConfig {
                max_connections: 0,
                ..MysqlConfig::default()
            },
        ),
        (
            "writers",
            MysqlConfig {
                writers: 0,
                ..MysqlConfig::default()
            },
        ),
        (
            "max_batch",
            MysqlConfig {
                max_batch: 0,
                ..MysqlConfig::default()
            },
        ),
        (
            "acquire_timeout",
            MysqlConfig {
                acquire_timeout: Duration::ZERO,
                ..MysqlConfig::default()
            },
        ),
        (
            "idle_timeout",
            MysqlConfig {
                idle_timeout: Some(Duration::ZERO),
                ..MysqlConfig::default()
            },
        ),
    ];
    for (field, config) in bad {
        match MysqlStore::connect(&url, config.clone()).await {
            Err(Error::Invalid(message)) => assert!(message.contains(field), "{field}: {message}"),
            other => panic!(
                "{field}: expected Invalid from connect, got {:?}",
                other.map(|_| ())
            ),
        }
        match MysqlStore::connect_with(options.clone(), config) {
            Err(Error::Invalid(message)) => assert!(message.contains(field), "{field}: {message}"),
            other => panic!(
                "{field}: expected Invalid from connect_with, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}
