//! Criterion benchmarks of the MySQL store against the MariaDB/MySQL of `CHATCORE_MYSQL_URL`
//! (default `mysql://root@127.0.0.1:3306`). Each run creates its own databases
//! (`chatcore_mysql_bench_<pid>_<n>`) and drops them at the end.
//!
//! - `send/chatcore/C`: `Store::insert_message` from C concurrent tasks (C = 1, 8, 64), in
//!   messages per second, next to `send/raw_insert/C`: a plain sqlx single-row `INSERT` of the
//!   same row (autocommit, AUTO_INCREMENT id, same indexes) from C tasks with a connection each.
//!   The ratio of the two is the library's overhead (or gain, thanks to group commit).
//! - `conversation_page/{latest,middle}/N`: one 15-message page of a conversation holding a
//!   tenth of a table of N = 10,000 or 1,000,000 messages (bulk-loaded with multi-row INSERTs,
//!   counters filled to match).
//!
//! `cargo bench -p chatcore-mysql --bench mysql`

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::{Backend, MessageId, NewMessage, PageRequest, Store, User, Username};
use chatcore_mysql::{MysqlConfig, MysqlStore};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, MySqlConnection};
use tokio::runtime::Runtime;

const CONCURRENCY: [usize; 3] = [1, 8, 64];
const PAGE_TABLE_SIZES: [usize; 2] = [10_000, 1_000_000];
const BODY: &str = "a typical chat message of moderate length 👋";

fn server_options() -> MySqlConnectOptions {
    let url =
        std::env::var("CHATCORE_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
    MySqlConnectOptions::from_str(&url).expect("CHATCORE_MYSQL_URL is a valid MySQL URL")
}

/// A bench database, dropped when this guard drops.
struct BenchDatabase {
    name: String,
    runtime: Arc<Runtime>,
}

impl BenchDatabase {
    fn create(runtime: &Arc<Runtime>, tag: &str) -> Self {
        let name = format!("chatcore_mysql_bench_{}_{tag}", std::process::id());
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

    fn store(&self, config: MysqlConfig) -> MysqlStore {
        self.runtime.block_on(async {
            let store = MysqlStore::connect_with(self.options(), config).expect("a valid config");
            store.migrate().await.expect("migrate");
            store
        })
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

/// The store's settings: defaults, with `CHATCORE_BENCH_WRITERS` overriding the number of
/// writer tasks (to compare settings without editing the bench).
fn bench_config() -> MysqlConfig {
    let defaults = MysqlConfig::default();
    MysqlConfig {
        writers: std::env::var("CHATCORE_BENCH_WRITERS")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or(defaults.writers),
        ..defaults
    }
}

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

fn sends(c: &mut Criterion) {
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let database = BenchDatabase::create(&runtime, "send");
    let store = Arc::new(database.store(bench_config()));
    let users: Arc<Vec<User>> = Arc::new(runtime.block_on(async {
        let mut users = Vec::new();
        for i in 0..=64 {
            users.push(store.create_user(&name(&format!("user{i}"))).await.unwrap());
        }
        users
    }));
    // The raw baseline's table: the same columns and indexes, with an AUTO_INCREMENT id as a
    // plain implementation would have.
    runtime.block_on(async {
        let mut conn = database.options().connect().await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE bench_raw_messages LIKE chatcore_messages; \
             ALTER TABLE bench_raw_messages MODIFY id BIGINT NOT NULL AUTO_INCREMENT",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let _ = conn.close().await;
    });

    let mut group = c.benchmark_group("send");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    for concurrency in CONCURRENCY {
        group.bench_with_input(
            BenchmarkId::new("chatcore", concurrency),
            &concurrency,
            |b, &tasks| {
                b.to_async(&*runtime).iter_custom(|iters| {
                    let store = store.clone();
                    let users = users.clone();
                    async move {
                        let started = Instant::now();
                        let handles: Vec<_> = (0..tasks)
                            .map(|t| {
                                let store = store.clone();
                                let users = users.clone();
                                let count = share(iters, tasks, t);
                                tokio::spawn(async move {
                                    for _ in 0..count {
                                        chatcore_send(&store, &users, t).await;
                                    }
                                })
                            })
                            .collect();
                        for handle in handles {
                            handle.await.unwrap();
                        }
                        started.elapsed()
                    }
                });
            },
        );

        let pool = runtime.block_on(raw_pool(&database, concurrency));
        group.bench_with_input(
            BenchmarkId::new("raw_insert", concurrency),
            &concurrency,
            |b, &tasks| {
                b.to_async(&*runtime).iter_custom(|iters| {
                    let pool = pool.clone();
                    let users = users.clone();
                    async move {
                        let started = Instant::now();
                        let handles: Vec<_> = (0..tasks)
                            .map(|t| {
                                let pool = pool.clone();
                                let users = users.clone();
                                let count = share(iters, tasks, t);
                                tokio::spawn(async move {
                                    for _ in 0..count {
                                        raw_send(&pool, &users, t).await;
                                    }
                                })
                            })
                            .collect();
                        for handle in handles {
                            handle.await.unwrap();
                        }
                        started.elapsed()
                    }
                });
            },
        );
        runtime.block_on(pool.close());
    }
    group.finish();
    if let Some(rounds) = std::env::var("CHATCORE_BENCH_PAIRED")
        .ok()
        .and_then(|r| r.parse::<usize>().ok())
    {
        paired_sends(&runtime, &database, &store, &users, rounds.max(1));
    }
    runtime.block_on(store.close()).expect("close");
    drop(store);
    drop(database);
}

/// Task `t`'s send through the store: user `t` to user `t + 1`.
async fn chatcore_send(store: &MysqlStore, users: &[User], t: usize) {
    store
        .insert_message(NewMessage {
            sender: users[t].clone(),
            recipient: users[(t + 1) % users.len()].username.clone(),
            body: BODY.to_owned(),
            idempotency_key: None,
        })
        .await
        .expect("send");
}

/// Task `t`'s baseline: the same row as [`chatcore_send`], one plain autocommit INSERT.
async fn raw_send(pool: &MySqlPool, users: &[User], t: usize) {
    let sender = users[t].id.0;
    let recipient = users[(t + 1) % users.len()].id.0;
    sqlx::query(
        "INSERT INTO bench_raw_messages (sender_id, recipient_id, conversation_low, \
         conversation_high, created_at, body, idempotency_key_hash) VALUES (?, ?, ?, ?, ?, ?, NULL)",
    )
    .bind(sender)
    .bind(recipient)
    .bind(sender.min(recipient))
    .bind(sender.max(recipient))
    .bind(chatcore::now_micros().naive_utc())
    .bind(BODY)
    .execute(pool)
    .await
    .expect("raw insert");
}

/// The baseline's pool: sqlx's defaults, one connection per task, all opened up front.
async fn raw_pool(database: &BenchDatabase, concurrency: usize) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(concurrency as u32)
        .min_connections(concurrency as u32)
        .connect_with(database.options())
        .await
        .unwrap()
}

/// Operations per second of `op` run by `tasks` tasks, each looping for `length`.
async fn rate<F, Fut>(tasks: usize, length: Duration, op: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let deadline = started + length;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    op(t).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for handle in handles {
        done += handle.await.unwrap();
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// `CHATCORE_BENCH_PAIRED=<rounds>`: chatcore and the raw insert in alternating 250 ms slices
/// (which goes first alternates too), so both see the same moment of a busy machine; prints
/// the median of the per-round ratios. On a shared machine the criterion figures above, taken
/// seconds apart, can differ by 2x from noise alone.
fn paired_sends(
    runtime: &Runtime,
    database: &BenchDatabase,
    store: &Arc<MysqlStore>,
    users: &Arc<Vec<User>>,
    rounds: usize,
) {
    const SLICE: Duration = Duration::from_millis(250);
    println!("paired sends, {rounds} rounds of {SLICE:?} each (median [min, max] of the rounds):");
    for concurrency in CONCURRENCY {
        let pool = runtime.block_on(raw_pool(database, concurrency));
        let chatcore = {
            let (store, users) = (store.clone(), users.clone());
            move |t| {
                let (store, users) = (store.clone(), users.clone());
                async move { chatcore_send(&store, &users, t).await }
            }
        };
        let raw = {
            let (pool, users) = (pool.clone(), users.clone());
            move |t| {
                let (pool, users) = (pool.clone(), users.clone());
                async move { raw_send(&pool, &users, t).await }
            }
        };
        let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        runtime.block_on(async {
            // Warm-up, not counted.
            rate(concurrency, SLICE, chatcore.clone()).await;
            rate(concurrency, SLICE, raw.clone()).await;
            for round in 0..rounds {
                let (a, b) = if round % 2 == 0 {
                    let a = rate(concurrency, SLICE, chatcore.clone()).await;
                    (a, rate(concurrency, SLICE, raw.clone()).await)
                } else {
                    let b = rate(concurrency, SLICE, raw.clone()).await;
                    (rate(concurrency, SLICE, chatcore.clone()).await, b)
                };
                ours.push(a);
                theirs.push(b);
                ratios.push(a / b);
            }
        });
        runtime.block_on(pool.close());
        let [ours, theirs, ratios] = [ours, theirs, ratios].map(|mut v| {
            v.sort_by(f64::total_cmp);
            v
        });
        let median = |v: &[f64]| v[v.len() / 2];
        println!(
            "  concurrency {concurrency:>2}: chatcore {:>6.0}/s, raw {:>6.0}/s, ratio {:.2}x [{:.2}, {:.2}]",
            median(&ours),
            median(&theirs),
            median(&ratios),
            ratios[0],
            ratios[ratios.len() - 1],
        );
    }
}

/// Task `t`'s share of `iters` operations split over `tasks`.
fn share(iters: u64, tasks: usize, t: usize) -> u64 {
    let tasks = tasks as u64;
    iters / tasks + u64::from((t as u64) < iters % tasks)
}

/// Loads `rows` messages: a tenth between user 1 and user 2 (the measured conversation), the
/// rest spread over 1,000 users; then the counters and the id sequence to match.
async fn bulk_load(conn: &mut MySqlConnection, rows: usize) {
    const USERS: usize = 1_000;
    const CHUNK: usize = 10_000;
    let users: Vec<String> = (1..=USERS)
        .map(|i| format!("('user{i}', NULL, UTC_TIMESTAMP(6))"))
        .collect();
    sqlx::raw_sql(&format!(
        "INSERT INTO chatcore_users (username, password_hash, created_at) VALUES {}",
        users.join(",")
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    // Secondary indexes are built once after the load (sorted), far faster than row by row.
    sqlx::raw_sql(
        "ALTER TABLE chatcore_messages DROP INDEX chatcore_messages_conversation, \
         DROP INDEX chatcore_messages_sender, DROP INDEX chatcore_messages_recipient, \
         DROP INDEX chatcore_messages_idempotency",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let mut next = 1usize;
    while next <= rows {
        let end = (next + CHUNK - 1).min(rows);
        let mut sql = String::with_capacity(CHUNK * 120);
        sql.push_str(
            "INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low, \
             conversation_high, created_at, body, idempotency_key_hash) VALUES ",
        );
        for id in next..=end {
            let (sender, recipient) = if id % 10 == 0 {
                if id % 20 == 0 { (1, 2) } else { (2, 1) }
            } else {
                let s = id * 7919 % USERS + 1;
                let r = id * 104_729 % USERS + 1;
                (s, r)
            };
            if id > next {
                sql.push(',');
            }
            sql.push_str(&format!(
                "({id},{sender},{recipient},{},{},UTC_TIMESTAMP(6),'bulk message {id}',NULL)",
                sender.min(recipient),
                sender.max(recipient)
            ));
        }
        sqlx::raw_sql(&sql).execute(&mut *conn).await.unwrap();
        next = end + 1;
    }
    sqlx::raw_sql(
        "ALTER TABLE chatcore_messages \
         ADD KEY chatcore_messages_conversation (conversation_low, conversation_high, id), \
         ADD KEY chatcore_messages_sender (sender_id, id), \
         ADD KEY chatcore_messages_recipient (recipient_id, id), \
         ADD UNIQUE KEY chatcore_messages_idempotency (sender_id, idempotency_key_hash)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql(&format!(
        "INSERT INTO chatcore_counts (low_id, high_id, total) \
           SELECT conversation_low, conversation_high, COUNT(*) FROM chatcore_messages \
           GROUP BY conversation_low, conversation_high; \
         INSERT INTO chatcore_counts (low_id, high_id, total) \
           SELECT user_id, 0, SUM(n) FROM ( \
             SELECT sender_id AS user_id, COUNT(*) AS n FROM chatcore_messages GROUP BY sender_id \
             UNION ALL \
             SELECT recipient_id, COUNT(*) FROM chatcore_messages WHERE recipient_id <> sender_id \
             GROUP BY recipient_id) per_user GROUP BY user_id; \
         UPDATE chatcore_counts SET total = {rows} WHERE low_id = 0 AND high_id = 0; \
         ANALYZE TABLE chatcore_messages, chatcore_counts, chatcore_users"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
}

fn conversation_pages(c: &mut Criterion) {
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let mut group = c.benchmark_group("conversation_page");
    group.sample_size(50);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for rows in PAGE_TABLE_SIZES {
        let database = BenchDatabase::create(&runtime, &format!("pages{rows}"));
        let store = Arc::new(database.store(MysqlConfig::default()));
        let loaded = Instant::now();
        runtime.block_on(async {
            let mut conn = database.options().connect().await.unwrap();
            bulk_load(&mut conn, rows).await;
            let _ = conn.close().await;
        });
        eprintln!("loaded {rows} messages in {:.1?}", loaded.elapsed());
        let viewer = runtime
            .block_on(store.find_user(&name("user1")))
            .unwrap()
            .unwrap();
        let other = name("user2");
        let total = runtime
            .block_on(store.conversation_page(viewer.id, &other, &PageRequest::latest(15)))
            .unwrap()
            .total;
        assert_eq!(total, (rows / 10) as u64, "counters match the load");
        for (label, page) in [
            ("latest", PageRequest::latest(15)),
            ("middle", PageRequest::before(MessageId(rows as i64 / 2), 15)),
        ] {
            group.bench_with_input(BenchmarkId::new(label, rows), &page, |b, page| {
                b.to_async(&*runtime).iter(|| {
                    let store = store.clone();
                    let other = other.clone();
                    async move {
                        let got = store.conversation_page(viewer.id, &other, page).await.unwrap();
                        assert_eq!(got.messages.len(), 15);
                        got
                    }
                });
            });
        }
        runtime.block_on(store.close()).expect("close");
        drop(store);
        drop(database);
    }
    group.finish();
}

mod group {
    // `criterion_group!` defines an undocumented public function.
    #![allow(missing_docs)]
    use super::*;
    criterion_group!(benches, sends, conversation_pages);
}
criterion_main!(group::benches);
