//! Benchmarks of the inbox and read state of the SQLite store (issue 18), on a temporary file:
//!
//! - `sqlite_inbox/first_page/{10,20,10000}`: latency of the first inbox page (limit 20) of
//!   users with 10, 20 and 10,000 conversations, in the same database and run. The page is a
//!   range of the user's activity order (in memory since schema 12) and a row per
//!   conversation, so it costs what it holds: 20 and 10,000 (20 rows
//!   each) should cost the same, 10 (10 rows) less.
//! - `sqlite_mark_read/{normal,full}/passes/{1,100}`: latency of `mark_read` moving a marker
//!   over 1 or 100 of the peer's unread messages (the unread count comes from two numbered
//!   message rows, so it should not depend on how many it passes), with `synchronous=NORMAL`
//!   (the CPU and SQLite work) and with the default `synchronous=FULL` (each mark alone waits
//!   for its `fsync`). The messages each iteration passes are sent before the timed part,
//!   and the WAL is checkpointed (passively, from a connection of its own) before it too, so
//!   the marks do not pay for checkpointing the sends.
//!
//! - `sqlite_changes/{normal,full}/{edit,delete}`: throughput of `change_message` (issue 19),
//!   64 edits or deletions at once (so the writer groups them in commits), each of a
//!   different message sent untimed before, with `synchronous=NORMAL` and `FULL`. Each
//!   element is one change with its event.
//!
//! The fixtures are built through the store (so inboxes are written as the writer writes
//! them), with `synchronous=OFF` for the inbox fixture, which only reads.
//!
//! Run with `cargo bench -p chatcore-sqlite --bench inbox`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::store::{InboxRequest, MessageChange, Store};
use chatcore::{MessageId, NewMessage, User, Username};
use chatcore_sqlite::{SqliteConfig, SqliteStore, Synchronous};
use criterion::{BenchmarkId, Criterion, criterion_main};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn name(s: &str) -> Username {
    Username::parse(s).expect("valid username")
}

fn message(from: &User, to: &User) -> NewMessage {
    NewMessage {
        sender: from.clone(),
        recipient: to.username.clone(),
        body: "a benchmark message of a typical length, about sixty bytes".into(),
        idempotency_key: None,
    }
}

/// Runs `jobs` (each an index) over 64 tasks at once, so the writer groups them in commits.
async fn in_parallel<F, Fut, T>(count: usize, job: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    const TASKS: usize = 64;
    let job = Arc::new(job);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let job = job.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut i = t;
                while i < count {
                    out.push((i, job(i).await));
                    i += TASKS;
                }
                out
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, out)| out).collect()
}

fn inbox(c: &mut Criterion) {
    const BUSY_PEERS: usize = 10_000;
    const QUIET_PEERS: usize = 10;
    const PAGE_PEERS: usize = 20;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SqliteConfig {
        synchronous: Synchronous::Off,
        ..SqliteConfig::file(dir.path().join("inbox.sqlite3"))
    };
    let (store, busy, quiet, paged) = rt.block_on(async {
        let store = Arc::new(SqliteStore::open(config).await.expect("open"));
        store.migrate().await.expect("migrate");
        let busy = store.create_user(&name("busy")).await.unwrap();
        let quiet = store.create_user(&name("quiet")).await.unwrap();
        let paged = store.create_user(&name("paged")).await.unwrap();
        let peers = {
            let store = store.clone();
            in_parallel(BUSY_PEERS + QUIET_PEERS + PAGE_PEERS, move |i| {
                let store = store.clone();
                async move { store.create_user(&name(&format!("peer{i}"))).await.unwrap() }
            })
            .await
        };
        let peers = Arc::new(peers);
        let (s, p) = (store.clone(), peers.clone());
        let (b, q, g) = (busy.clone(), quiet.clone(), paged.clone());
        // Each peer writes once, to one of the three.
        in_parallel(BUSY_PEERS + QUIET_PEERS + PAGE_PEERS, move |i| {
            let (store, peers) = (s.clone(), p.clone());
            let to = if i < BUSY_PEERS {
                b.clone()
            } else if i < BUSY_PEERS + QUIET_PEERS {
                q.clone()
            } else {
                g.clone()
            };
            async move { store.insert_message(message(&peers[i], &to)).await.unwrap() }
        })
        .await;
        (store, busy, quiet, paged)
    });
    let first_page = InboxRequest {
        before: None,
        limit: 20,
    };
    let users = [(&quiet, QUIET_PEERS), (&paged, PAGE_PEERS), (&busy, BUSY_PEERS)];
    for (user, conversations) in users {
        let page = rt.block_on(store.inbox(user.id, &first_page)).expect("inbox");
        assert_eq!(page.conversations.len(), conversations.min(20));
        assert_eq!(page.unread_total, conversations as u64);
    }
    let mut group = c.benchmark_group("sqlite_inbox");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (user, conversations) in users {
        group.bench_with_input(
            BenchmarkId::new("first_page", conversations),
            &conversations,
            |b, _| {
                b.to_async(&rt)
                    .iter(|| async { store.inbox(user.id, &first_page).await.expect("inbox") })
            },
        );
    }
    group.finish();
    rt.block_on(store.close()).expect("close");
}

fn mark_read(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("sqlite_mark_read");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for (label, synchronous) in [("normal", Synchronous::Normal), ("full", Synchronous::Full)] {
        let path = dir.path().join(format!("marks-{label}.sqlite3"));
        let config = SqliteConfig {
            synchronous,
            ..SqliteConfig::file(&path)
        };
        let (store, reader, peer) = rt.block_on(async {
            let store = Arc::new(SqliteStore::open(config).await.expect("open"));
            store.migrate().await.expect("migrate");
            let reader = store.create_user(&name("reader")).await.unwrap();
            let peer = store.create_user(&name("peer")).await.unwrap();
            (store, reader, peer)
        });
        let checkpointer = rusqlite::Connection::open(&path).expect("checkpoint connection");
        for passes in [1usize, 100] {
            group.bench_with_input(
                BenchmarkId::new(format!("{label}/passes"), passes),
                &passes,
                |b, &passes| {
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            // The peer's messages this run's marks pass over, sent untimed.
                            let count = iters as usize * passes;
                            let (s, from, to) = (store.clone(), peer.clone(), reader.clone());
                            let sent = in_parallel(count, move |_| {
                                let (store, from, to) = (s.clone(), from.clone(), to.clone());
                                async move { store.insert_message(message(&from, &to)).await.unwrap() }
                            })
                            .await;
                            let mut ids: Vec<MessageId> = sent.iter().map(|i| i.message.id).collect();
                            ids.sort_unstable();
                            checkpointer
                                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                                .expect("checkpoint");
                            let start = Instant::now();
                            for step in ids.chunks(passes) {
                                let up_to = *step.last().expect("a full chunk");
                                let marked = store
                                    .mark_read(&reader, &peer.username, up_to)
                                    .await
                                    .expect("mark read");
                                debug_assert!(marked.moved.is_some());
                            }
                            start.elapsed()
                        })
                    })
                },
            );
        }
        rt.block_on(store.close()).expect("close");
    }
    group.finish();
}

fn changes(c: &mut Criterion) {
    const BATCH: usize = 256;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("sqlite_changes");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3))
        .throughput(criterion::Throughput::Elements(BATCH as u64));
    for (label, synchronous) in [("normal", Synchronous::Normal), ("full", Synchronous::Full)] {
        let path = dir.path().join(format!("changes-{label}.sqlite3"));
        let config = SqliteConfig {
            synchronous,
            ..SqliteConfig::file(&path)
        };
        let (store, alice, bob) = rt.block_on(async {
            let store = Arc::new(SqliteStore::open(config).await.expect("open"));
            store.migrate().await.expect("migrate");
            let alice = store.create_user(&name("alice")).await.unwrap();
            let bob = store.create_user(&name("bob")).await.unwrap();
            (store, alice, bob)
        });
        for kind in ["edit", "delete"] {
            group.bench_function(format!("{label}/{kind}"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut elapsed = Duration::ZERO;
                        for _ in 0..iters {
                            // The messages this iteration changes, sent untimed.
                            let (s, from, to) = (store.clone(), alice.clone(), bob.clone());
                            let sent = in_parallel(BATCH, move |_| {
                                let (store, from, to) = (s.clone(), from.clone(), to.clone());
                                async move { store.insert_message(message(&from, &to)).await.unwrap() }
                            })
                            .await;
                            let ids: Arc<Vec<MessageId>> =
                                Arc::new(sent.iter().map(|i| i.message.id).collect());
                            let change = if kind == "edit" {
                                MessageChange::Edit {
                                    body: "an edited benchmark message, about as long as the first".into(),
                                    not_before: None,
                                }
                            } else {
                                MessageChange::Delete
                            };
                            let (s, sender) = (store.clone(), alice.id);
                            let start = Instant::now();
                            in_parallel(BATCH, move |i| {
                                let (store, ids, change) = (s.clone(), ids.clone(), change.clone());
                                async move {
                                    let changed =
                                        store.change_message(sender, ids[i], &change).await.unwrap();
                                    debug_assert!(changed.event.is_some());
                                }
                            })
                            .await;
                            elapsed += start.elapsed();
                        }
                        elapsed
                    })
                })
            });
        }
        rt.block_on(store.close()).expect("close");
    }
    group.finish();
}

mod harness {
    criterion::criterion_group!(benches, super::inbox, super::mark_read, super::changes);
}
criterion_main!(harness::benches);
