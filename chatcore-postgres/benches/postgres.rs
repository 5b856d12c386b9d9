//! Criterion benchmarks of the PostgreSQL store against the server of `CHATCORE_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432`), on a database of the run's own (dropped at
//! the end).
//!
//! - `send/chatcore/C`: `Store::insert_message` from C concurrent tasks (C = 1, 8, 64), in
//!   messages per second, next to `send/raw_insert/C`: a plain sqlx single-row `INSERT` of the
//!   same row (autocommit, id from a plain sequence, same indexes) from C tasks with a
//!   connection each. The ratio of the two is the library's overhead (or gain, thanks to
//!   group commit).
//! - `send/function_call/C`: the store's set-wise batch function `chatcore_insert_messages` called
//!   directly with one message per call, from C tasks sharing the raw pool: the SQL's own
//!   cost (ids, counters, inbox, previous positions), without the store's writer. At 8 and
//!   64 it shows what group commit saves. (A lone send through the store runs
//!   `chatcore_insert_messages_each` since schema version 10, about a quarter cheaper for
//!   one send: set against `send/chatcore/1` this is no longer the same SQL.)
//!
//! `cargo bench -p chatcore-postgres --bench postgres` (`-- --measurement-time 3` for a
//! shorter run, `-- 'send/(chatcore|raw_insert)'` for the ratio alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::{Backend, NewMessage, Store, User, Username};
use chatcore_postgres::testing::TestDatabase;
use chatcore_postgres::{PostgresConfig, PostgresStore};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::runtime::Runtime;

const CONCURRENCY: [usize; 3] = [1, 8, 64];
const BODY: &str = "a typical chat message of moderate length 👋";

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

/// `iters` sends shared by `tasks` tasks: task `t`'s part.
fn share(iters: u64, tasks: usize, t: usize) -> u64 {
    let tasks = tasks as u64;
    iters / tasks + u64::from((t as u64) < iters % tasks)
}

/// Runs `iters` calls of `send(t)` spread over `tasks` concurrent tasks; the time they took.
async fn concurrently<F, Fut>(iters: u64, tasks: usize, send: F) -> Duration
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let send = send.clone();
            let count = share(iters, tasks, t);
            tokio::spawn(async move {
                for _ in 0..count {
                    send(t).await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    started.elapsed()
}

/// Times `send(t)` from `tasks` concurrent tasks, as `send/<name>/<tasks>`.
fn bench_sends<F, Fut>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    name: &str,
    tasks: usize,
    send: F,
) where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    group.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
        b.to_async(runtime)
            .iter_custom(|iters| concurrently(iters, tasks, send.clone()));
    });
}

/// Task `t`'s send through the store: user `t` to user `t + 1`.
async fn chatcore_send(store: &PostgresStore, users: &[User], t: usize) {
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
async fn raw_send(pool: &PgPool, users: &[User], t: usize) {
    let sender = users[t].id.0;
    let recipient = users[(t + 1) % users.len()].id.0;
    sqlx::query(
        "INSERT INTO bench_raw_messages (sender_id, recipient_id, conversation_low, \
         conversation_high, created_at, body, idempotency_key_hash) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
    )
    .bind(sender)
    .bind(recipient)
    .bind(sender.min(recipient))
    .bind(sender.max(recipient))
    .bind(chatcore::now_micros())
    .bind(BODY)
    .execute(pool)
    .await
    .expect("raw insert");
}

/// Task `t`'s send as one direct call of the batch function (a batch of one, no writer task):
/// what the store's SQL costs without its queue.
async fn function_send(pool: &PgPool, users: &[User], t: usize) {
    let sender = users[t].id.0;
    let recipient = users[(t + 1) % users.len()].username.key();
    sqlx::query("SELECT * FROM chatcore_insert_messages($1, $2, $3, $4)")
        .bind(vec![sender])
        .bind(vec![recipient])
        .bind(vec![BODY])
        .bind(vec![None::<Vec<u8>>])
        .fetch_all(pool)
        .await
        .expect("function call");
}

fn sends(c: &mut Criterion) {
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let database = runtime
        .block_on(TestDatabase::create("chatcore_pg_bench_"))
        .expect("a bench database");
    let store = Arc::new(
        runtime
            .block_on(database.store(PostgresConfig::default()))
            .expect("a migrated store"),
    );
    let users: Arc<Vec<User>> = Arc::new(runtime.block_on(async {
        let mut users = Vec::new();
        for i in 0..=64 {
            users.push(store.create_user(&name(&format!("user{i}"))).await.unwrap());
        }
        users
    }));
    // The baseline's table: the same columns and indexes, with an id from a plain sequence as
    // a plain implementation would have.
    runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(database.options().unwrap())
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE bench_raw_messages (LIKE chatcore_messages INCLUDING ALL); \
             CREATE SEQUENCE bench_raw_ids OWNED BY bench_raw_messages.id; \
             ALTER TABLE bench_raw_messages ALTER COLUMN id SET DEFAULT nextval('bench_raw_ids')",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    });

    let mut group = c.benchmark_group("send");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    for concurrency in CONCURRENCY {
        let (store, users_of) = (store.clone(), users.clone());
        bench_sends(&mut group, &runtime, "chatcore", concurrency, move |t| {
            let (store, users) = (store.clone(), users_of.clone());
            async move { chatcore_send(&store, &users, t).await }
        });
        // sqlx's defaults, one connection per task, all opened up front.
        let pool = runtime
            .block_on(
                PgPoolOptions::new()
                    .max_connections(concurrency as u32)
                    .min_connections(concurrency as u32)
                    .connect_with(database.options().unwrap()),
            )
            .unwrap();
        let (raw_pool, users_of) = (pool.clone(), users.clone());
        bench_sends(&mut group, &runtime, "raw_insert", concurrency, move |t| {
            let (pool, users) = (raw_pool.clone(), users_of.clone());
            async move { raw_send(&pool, &users, t).await }
        });
        let (call_pool, users_of) = (pool.clone(), users.clone());
        bench_sends(&mut group, &runtime, "function_call", concurrency, move |t| {
            let (pool, users) = (call_pool.clone(), users_of.clone());
            async move { function_send(&pool, &users, t).await }
        });
        runtime.block_on(pool.close());
    }
    group.finish();
    runtime.block_on(store.close()).expect("close");
    drop(store);
    drop(database);
}

mod group {
    // `criterion_group!` defines an undocumented public function.
    #![allow(missing_docs)]
    use super::*;
    criterion_group!(benches, sends);
}
criterion_main!(group::benches);
