//! Criterion benchmarks of the inbox and read markers of the MySQL store, against the
//! MariaDB/MySQL of `CHATCORE_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`), on a
//! database of their own (`chatcore_mysql_bench_<pid>_inbox`, dropped at the end).
//!
//! - `inbox/first_page/N`: the first page (20 conversations) of the inbox of a user with N = 10
//!   or 10,000 conversations, in the same database and run: the page must cost the same
//!   whatever N.
//! - `inbox/deep_page/10000`: a page of the same user from a cursor half way down.
//! - `mark_read/forward_1`: a marker moved one message forward (one peer message passed
//!   over), with its read event; `mark_read/unchanged`: a mark at or below the marker (no
//!   event).
//!
//! Every message is stored through `Store::insert_message`, so inboxes are what sends make.
//!
//! `cargo bench -p chatcore-mysql --bench inbox`

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::{Backend, InboxRequest, MessageId, NewMessage, Store, User, UserId, Username};
use chatcore_mysql::{MysqlConfig, MysqlStore};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::runtime::Runtime;

const BIG: usize = 10_000;
const SMALL: usize = 10;
const PAGE: u32 = 20;

fn server_options() -> MySqlConnectOptions {
    let url =
        std::env::var("CHATCORE_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
    MySqlConnectOptions::from_str(&url).expect("CHATCORE_MYSQL_URL is a valid MySQL URL")
}

/// The bench database, dropped when this guard drops.
struct BenchDatabase {
    name: String,
    runtime: Arc<Runtime>,
}

impl BenchDatabase {
    fn create(runtime: &Arc<Runtime>) -> Self {
        let name = format!("chatcore_mysql_bench_{}_inbox", std::process::id());
        runtime.block_on(async {
            let mut admin = server_options().connect().await.expect("connect to MySQL");
            for sql in [
                format!("DROP DATABASE IF EXISTS `{name}`"),
                format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"),
            ] {
                sqlx::query(&sql)
                    .execute(&mut admin)
                    .await
                    .expect("create bench database");
            }
            let _ = admin.close().await;
        });
        Self {
            name,
            runtime: runtime.clone(),
        }
    }

    fn options(&self) -> MySqlConnectOptions {
        server_options().database(&self.name)
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        self.runtime.block_on(async move {
            if let Ok(mut admin) = server_options().connect().await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
            }
        });
    }
}

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

async fn send(store: &MysqlStore, from: &User, to: &Username) -> MessageId {
    store
        .insert_message(NewMessage {
            sender: from.clone(),
            recipient: to.clone(),
            body: "a typical chat message of moderate length 👋".to_owned(),
            idempotency_key: None,
        })
        .await
        .expect("send")
        .message
        .id
}

/// `BIG` peers each write once to `big`, and the first `SMALL` of them to `small` too, from
/// 64 tasks (group commit keeps the load short).
async fn load(store: &Arc<MysqlStore>, big: &User, small: &User) {
    let mut peers = Vec::with_capacity(BIG);
    let mut creating = Vec::new();
    for chunk in 0..16 {
        let store = store.clone();
        creating.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in (chunk..BIG).step_by(16) {
                made.push(store.create_user(&name(&format!("peer{i:05}"))).await.unwrap());
            }
            made
        }));
    }
    for task in creating {
        peers.extend(task.await.unwrap());
    }
    peers.sort_by_key(|p| p.id);
    let peers = Arc::new(peers);
    let mut sending = Vec::new();
    for t in 0..64 {
        let (store, peers) = (store.clone(), peers.clone());
        let (big, small) = (big.username.clone(), small.username.clone());
        sending.push(tokio::spawn(async move {
            for i in (t..BIG).step_by(64) {
                send(&store, &peers[i], &big).await;
                if i < SMALL {
                    send(&store, &peers[i], &small).await;
                }
            }
        }));
    }
    for task in sending {
        task.await.unwrap();
    }
}

fn inbox(c: &mut Criterion) {
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let database = BenchDatabase::create(&runtime);
    let store = Arc::new(runtime.block_on(async {
        let store =
            MysqlStore::connect_with(database.options(), MysqlConfig::default()).expect("a valid config");
        store.migrate().await.expect("migrate");
        store
    }));
    let (big, small, reader, writer) = runtime.block_on(async {
        let big = store.create_user(&name("big")).await.unwrap();
        let small = store.create_user(&name("small")).await.unwrap();
        let reader = store.create_user(&name("reader")).await.unwrap();
        let writer = store.create_user(&name("writer")).await.unwrap();
        let loaded = Instant::now();
        load(&store, &big, &small).await;
        eprintln!("loaded {} conversations in {:.1?}", BIG + SMALL, loaded.elapsed());
        let mut conn = database.options().connect().await.unwrap();
        sqlx::raw_sql("ANALYZE TABLE chatcore_inbox, chatcore_messages, chatcore_users, chatcore_counts")
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        (big, small, reader, writer)
    });

    let first_page = InboxRequest {
        before: None,
        limit: PAGE,
    };
    let mut group = c.benchmark_group("inbox");
    group.sample_size(50);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for (user, conversations) in [(&small, SMALL), (&big, BIG)] {
        let page = runtime.block_on(store.inbox(user.id, &first_page)).unwrap();
        assert_eq!(page.conversations.len(), conversations.min(PAGE as usize));
        assert_eq!(page.unread_total, conversations as u64, "every message is unread");
        bench_page(
            &mut group,
            &runtime,
            &store,
            "first_page",
            conversations,
            user.id,
            first_page,
        );
    }
    let whole = runtime
        .block_on(store.inbox(
            big.id,
            &InboxRequest {
                before: None,
                limit: BIG as u32 / 2,
            },
        ))
        .unwrap();
    let middle = InboxRequest {
        before: whole.conversations.last().map(|c| c.last_message.id),
        limit: PAGE,
    };
    bench_page(&mut group, &runtime, &store, "deep_page", BIG, big.id, middle);
    group.finish();

    let mut group = c.benchmark_group("mark_read");
    group.sample_size(30);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    // Each timed mark moves the marker one message forward: the messages are sent first,
    // untimed.
    group.bench_function("forward_1", |b| {
        b.to_async(&*runtime).iter_custom(|iters| {
            let store = store.clone();
            let (reader, writer) = (reader.clone(), writer.clone());
            async move {
                let mut ids = Vec::with_capacity(iters as usize);
                for _ in 0..iters {
                    ids.push(send(&store, &writer, &reader.username).await);
                }
                let started = Instant::now();
                for id in ids {
                    let marked = store.mark_read(&reader, &writer.username, id).await.unwrap();
                    assert!(marked.moved.is_some(), "each mark moves the marker");
                }
                started.elapsed()
            }
        });
    });
    let first = runtime
        .block_on(store.inbox(reader.id, &first_page))
        .unwrap()
        .conversations[0]
        .last_message
        .id;
    group.bench_function("unchanged", |b| {
        b.to_async(&*runtime).iter(|| {
            let store = store.clone();
            let (reader, writer) = (reader.clone(), writer.clone());
            async move {
                let marked = store.mark_read(&reader, &writer.username, first).await.unwrap();
                assert!(marked.moved.is_none());
            }
        });
    });
    group.finish();

    runtime.block_on(store.close()).expect("close");
    drop(store);
    drop(database);
}

fn bench_page(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &Arc<Runtime>,
    store: &Arc<MysqlStore>,
    label: &str,
    conversations: usize,
    user: UserId,
    request: InboxRequest,
) {
    group.bench_with_input(BenchmarkId::new(label, conversations), &request, |b, request| {
        b.to_async(&**runtime).iter(|| {
            let store = store.clone();
            async move {
                let page = store.inbox(user, request).await.unwrap();
                assert_eq!(page.conversations.len(), PAGE.min(conversations as u32) as usize);
                page
            }
        });
    });
}

mod group {
    // `criterion_group!` defines an undocumented public function.
    #![allow(missing_docs)]
    use super::*;
    criterion_group!(benches, inbox);
}
criterion_main!(group::benches);
