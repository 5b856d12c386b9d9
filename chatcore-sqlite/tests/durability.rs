//! A send that returned `Ok` survives `kill -9`: a child process (this test binary, re-run in
//! "child mode") sends under load and prints every acknowledged id; the parent kills it with
//! SIGKILL mid-load, reopens the file and finds every acknowledged message.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::MessageId;
use chatcore::Store;
use chatcore::store::PageRequest;
use chatcore_sqlite::{SqliteConfig, SqliteStore, Synchronous};
use common::{name, new_message};

/// Set in the child's environment to the database path; selects child mode.
const CHILD_ENV: &str = "CHATCORE_SQLITE_KILL9_CHILD_DB";
const SENDERS: usize = 16;
const ACKS_BEFORE_KILL: usize = 3_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Child mode only (a no-op in a normal test run): send from 16 tasks until killed, printing
/// `ACK <id> <body>` for every send that returned `Ok`. Gives up after 60 s so an orphaned
/// child cannot run forever.
#[test]
fn child_sender() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    runtime().block_on(async move {
        let config = SqliteConfig {
            synchronous: Synchronous::Full,
            pipelined_sync: std::env::var(PIPELINED_ENV).as_deref() != Ok("0"),
            ..SqliteConfig::file(path)
        };
        let store = Arc::new(SqliteStore::open(config).await.expect("child open"));
        let hub = store.find_user(&name("hub")).await.unwrap().expect("hub exists");
        let deadline = Instant::now() + Duration::from_secs(60);
        let tasks: Vec<_> = (0..SENDERS)
            .map(|t| {
                let store = store.clone();
                let hub = hub.clone();
                tokio::spawn(async move {
                    let me = store
                        .find_user(&name(&format!("sender{t}")))
                        .await
                        .unwrap()
                        .unwrap();
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let body = format!("from {t} number {i}");
                        let sent = store
                            .insert_message(new_message(&me, hub.username.as_str(), &body))
                            .await
                            .expect("child send");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ACK {} {}", sent.message.id, body).expect("stdout");
                        out.flush().expect("flush");
                        i += 1;
                    }
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
}

#[test]
fn acknowledged_sends_survive_kill_9() {
    kill_9_scenario(true);
}

#[test]
fn acknowledged_sends_survive_kill_9_with_sqlite_syncing_in_commit() {
    kill_9_scenario(false);
}

/// Whether the child uses `SqliteConfig::pipelined_sync` (`"1"`) or not (`"0"`).
const PIPELINED_ENV: &str = "CHATCORE_KILL9_PIPELINED";

fn kill_9_scenario(pipelined: bool) {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill9.sqlite3");
    let rt = runtime();
    let hub_id = rt.block_on(async {
        let store = SqliteStore::open(SqliteConfig::file(&path)).await.unwrap();
        store.migrate().await.unwrap();
        let hub = store.create_user(&name("hub")).await.unwrap();
        for t in 0..SENDERS {
            store.create_user(&name(&format!("sender{t}"))).await.unwrap();
        }
        store.close().await.unwrap();
        hub.id
    });

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_sender", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .env(PIPELINED_ENV, if pipelined { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked: Vec<(i64, String)> = Vec::new();
    let parse = |line: &str| -> Option<(i64, String)> {
        let rest = line.strip_prefix("ACK ")?;
        let (id, body) = rest.split_once(' ')?;
        Some((id.parse().ok()?, body.to_owned()))
    };
    for line in lines.by_ref() {
        if let Some(ack) = parse(&line.unwrap()) {
            acked.push(ack);
            if acked.len() == ACKS_BEFORE_KILL {
                break;
            }
        }
    }
    assert_eq!(
        acked.len(),
        ACKS_BEFORE_KILL,
        "the child stopped acknowledging early"
    );
    child.kill().expect("SIGKILL the child"); // Child::kill is SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the child was killed, not finished: {status:?}"
    );
    // Acknowledgements already in the pipe were printed after their commit too.
    for line in lines {
        match line {
            Ok(line) => acked.extend(parse(&line)),
            Err(_) => break, // a line cut by the kill
        }
    }

    rt.block_on(async {
        let store = SqliteStore::open(SqliteConfig::file(&path))
            .await
            .expect("reopen after kill");
        assert!(!store.migrate().await.unwrap().applied_any());
        for (id, body) in &acked {
            let stored = store
                .message_for(hub_id, MessageId(*id))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged message {id} is missing after kill -9"));
            assert_eq!(&stored.body, body);
        }
        // The counters committed with the messages: the total is the number of rows.
        let page = store
            .user_messages(hub_id, &PageRequest::latest(1))
            .await
            .unwrap();
        let all = store
            .messages_after(hub_id, MessageId(0), u32::MAX)
            .await
            .unwrap();
        assert_eq!(page.total, all.len() as u64);
        assert!(all.len() >= acked.len());
        let mut per_sender = 0;
        for t in 0..SENDERS {
            per_sender += store
                .conversation_page(hub_id, &name(&format!("sender{t}")), &PageRequest::latest(1))
                .await
                .unwrap()
                .total;
        }
        assert_eq!(per_sender, page.total);
        // Writing goes on after the crash, with larger ids.
        let hub = store.find_user(&name("hub")).await.unwrap().unwrap();
        assert_eq!(hub.id, hub_id);
        let next = store
            .insert_message(new_message(&hub, "sender0", "after"))
            .await
            .unwrap();
        assert!(next.message.id.0 > acked.iter().map(|a| a.0).max().unwrap());
        store.close().await.unwrap();
    });
}
