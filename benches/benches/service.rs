//! `ChatService` end to end over each store: send (store + notify both parties) at concurrency 1
//! and 64, the latest-15 history page of a 10,000-message conversation, and numbered pages
//! 1 and 300 (of 10) side by side on each store, against a `before` cursor at the same depth.
//!
//! Stores: in memory; SQLite on a temporary file with `synchronous=FULL` (durable); MySQL on a
//! database of its own on `CHATCORE_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`), dropped
//! afterwards; PostgreSQL likewise on `CHATCORE_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432`). Set `CHATCORE_BENCH_SKIP_MYSQL=1` or
//! `CHATCORE_BENCH_SKIP_POSTGRES=1` to leave one out when no server is at hand.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::{
    Backend, ChatConfig, ChatService, HistoryQuery, LocalNotifier, MemoryStore, SendRequest, Store, User,
};
use chatcore_mysql::MysqlConfig;
use chatcore_mysql::testing::TestDatabase;
use chatcore_postgres::PostgresConfig;
use chatcore_sqlite::{SqliteConfig, SqliteStore};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const SENDERS: usize = 64;

struct Fixture {
    chat: ChatService,
    senders: Vec<User>,
    reader: User,
}

async fn fixture(store: Arc<dyn Store>) -> Fixture {
    // The send rate limit off: the bench sends far faster than a person.
    let config = ChatConfig {
        send_burst: 0,
        ..ChatConfig::default()
    };
    let chat = ChatService::new(store, Arc::new(LocalNotifier::default()), config);
    let reader = chat.create_user("reader").await.unwrap();
    let mut senders = Vec::with_capacity(SENDERS);
    for i in 0..SENDERS {
        senders.push(chat.create_user(&format!("sender{i}")).await.unwrap());
    }
    // The history benchmark reads a 10,000-message conversation between reader and sender0,
    // filled by 64 concurrent tasks so group-committing stores fill it quickly.
    let fillers: Vec<_> = (0..SENDERS)
        .map(|t| {
            let chat = chat.clone();
            let (reader, sender0) = (reader.clone(), senders[0].clone());
            tokio::spawn(async move {
                for i in (t..10_000).step_by(SENDERS) {
                    let (from, to) = if i % 2 == 0 {
                        (&reader, "sender0")
                    } else {
                        (&sender0, "reader")
                    };
                    chat.send(from, request(to, i)).await.unwrap();
                }
            })
        })
        .collect();
    for filler in fillers {
        filler.await.unwrap();
    }
    Fixture {
        chat,
        senders,
        reader,
    }
}

fn request(to: &str, i: usize) -> SendRequest {
    SendRequest {
        recipient: to.into(),
        body: format!("benchmark message number {i}"),
        idempotency_key: None,
    }
}

fn bench_store(c: &mut Criterion, runtime: &Runtime, backend: &str, store: Arc<dyn Store>) {
    let fx = runtime.block_on(fixture(store));
    let mut group = c.benchmark_group(format!("service_send/{backend}"));
    group.throughput(Throughput::Elements(1));
    for concurrency in [1usize, 64] {
        group.bench_with_input(
            BenchmarkId::from_parameter(concurrency),
            &concurrency,
            |b, &concurrency| {
                b.to_async(runtime).iter_custom(|iters| {
                    let fx = &fx;
                    async move {
                        let per_task = (iters as usize).div_ceil(concurrency);
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..concurrency)
                            .map(|t| {
                                let chat = fx.chat.clone();
                                let from = fx.senders[t % SENDERS].clone();
                                tokio::spawn(async move {
                                    for i in 0..per_task {
                                        black_box(chat.send(&from, request("reader", i)).await.unwrap());
                                    }
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.unwrap();
                        }
                        let elapsed = start.elapsed();
                        // Report per requested iteration even when rounding up added a few sends.
                        elapsed.mul_f64(iters as f64 / (per_task * concurrency) as f64)
                    }
                })
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group(format!("service_history/{backend}"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("latest_15_of_10000", |b| {
        b.to_async(runtime).iter(|| async {
            let page = fx
                .chat
                .conversation(&fx.reader, "sender0", HistoryQuery::default())
                .await
                .unwrap();
            assert_eq!(page.messages.len(), 15);
            black_box(page)
        })
    });
    group.finish();

    // Issue 16: a numbered page costs more the deeper it is (the store skips the messages
    // above it), so the service refuses pages past `ChatConfig::max_page_offset` (default
    // 3,000 messages). Page 1 against page 300 of 10 (offset 2,990, the deepest allowed at that
    // size), on the conversation and on the list of all the caller's messages, and the same
    // depth reached with a `before` cursor.
    let mut group = c.benchmark_group(format!("service_deep_pages/{backend}"));
    group.throughput(Throughput::Elements(1));
    let page = |n: u32| HistoryQuery {
        page: Some(n),
        limit: Some(10),
        ..Default::default()
    };
    for n in [1u32, 300] {
        group.bench_function(format!("conversation_page_{n}"), |b| {
            b.to_async(runtime).iter(|| async {
                let page = fx
                    .chat
                    .conversation(&fx.reader, "sender0", page(n))
                    .await
                    .unwrap();
                assert_eq!(page.messages.len(), 10);
                black_box(page)
            })
        });
        group.bench_function(format!("all_messages_page_{n}"), |b| {
            b.to_async(runtime).iter(|| async {
                let page = fx.chat.all_messages(&fx.reader, page(n)).await.unwrap();
                assert_eq!(page.messages.len(), 10);
                black_box(page)
            })
        });
    }
    let cursor = runtime.block_on(async {
        let above = fx
            .chat
            .conversation(&fx.reader, "sender0", page(300))
            .await
            .unwrap();
        chatcore::MessageId(above.messages[0].id.0 + 1)
    });
    group.bench_function("conversation_before_cursor_at_page_300", |b| {
        b.to_async(runtime).iter(|| async {
            let query = HistoryQuery {
                before: Some(cursor),
                limit: Some(10),
                ..Default::default()
            };
            let page = fx.chat.conversation(&fx.reader, "sender0", query).await.unwrap();
            assert_eq!(page.messages.len(), 10);
            black_box(page)
        })
    });
    group.finish();
}

fn service(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    bench_store(c, &runtime, "memory", Arc::new(MemoryStore::new()));

    let dir = tempfile::tempdir().unwrap();
    let sqlite = runtime.block_on(async {
        let store = SqliteStore::open(SqliteConfig::file(dir.path().join("bench.db")))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        Arc::new(store)
    });
    bench_store(c, &runtime, "sqlite", sqlite.clone());
    runtime.block_on(sqlite.close()).unwrap();

    if std::env::var_os("CHATCORE_BENCH_SKIP_MYSQL").is_none() {
        let database = runtime
            .block_on(TestDatabase::create("chatcore_bench_service_"))
            // One line when MariaDB is down (the error's source says so and names scripts/test).
            .unwrap_or_else(|error| match std::error::Error::source(&error) {
                Some(cause) => panic!("{error}: {cause}"),
                None => panic!("{error}"),
            });
        let mysql = Arc::new(runtime.block_on(database.store(MysqlConfig::default())).unwrap());
        bench_store(c, &runtime, "mysql", mysql.clone());
        runtime.block_on(mysql.close()).unwrap();
        drop(database);
    }

    if std::env::var_os("CHATCORE_BENCH_SKIP_POSTGRES").is_none() {
        let database = runtime
            .block_on(chatcore_postgres::testing::TestDatabase::create(
                "chatcore_bench_service_",
            ))
            .unwrap_or_else(|error| match std::error::Error::source(&error) {
                Some(cause) => panic!("{error}: {cause}"),
                None => panic!("{error}"),
            });
        let postgres = Arc::new(
            runtime
                .block_on(database.store(PostgresConfig::default()))
                .unwrap(),
        );
        bench_store(c, &runtime, "postgres", postgres.clone());
        runtime.block_on(postgres.close()).unwrap();
        drop(database);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = service
}
criterion_main!(benches);
