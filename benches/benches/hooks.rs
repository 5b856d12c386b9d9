//! Issue 23's library-level A/B, in one run: sends per second through `ChatService` on SQLite
//! (a temporary file, `synchronous=FULL`) at concurrency 64, without hooks, and with an
//! allow-all send policy plus a `FeedConsumer` reading every event as it lands (a no-op
//! handler, polling every 10 ms). The bound: at most 10% fewer sends with the hooks.
//! After the run, the consumer's lag (from a message's timestamp to its handling) is printed
//! as p50/p99.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatcore::{
    BoxError, ChatConfig, ChatService, Draft, FeedConsumer, FeedConsumerConfig, FeedHandler, LocalNotifier,
    SendPolicy, SendRequest, Store, StoredEvent, User, Verdict,
};
use chatcore_sqlite::{SqliteConfig, SqliteStore};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const SENDERS: usize = 64;

struct AllowAll;

#[async_trait::async_trait]
impl SendPolicy for AllowAll {
    async fn check(&self, _draft: &Draft<'_>) -> Result<Verdict, BoxError> {
        Ok(Verdict::Allow)
    }
}

/// Notes how long each message waited for it, in microseconds.
#[derive(Default)]
struct LagRecorder {
    lags_us: Mutex<Vec<i64>>,
}

#[async_trait::async_trait]
impl FeedHandler for LagRecorder {
    async fn handle(&self, events: &[StoredEvent]) -> Result<(), BoxError> {
        let now = chrono::Utc::now();
        let mut lags = self.lags_us.lock().unwrap();
        for event in events {
            if let StoredEvent::Message(message) = event {
                lags.push((now - message.created_at).num_microseconds().unwrap_or(i64::MAX));
            }
        }
        Ok(())
    }
}

async fn senders(chat: &ChatService, prefix: &str) -> Vec<User> {
    let mut users = Vec::with_capacity(SENDERS);
    for i in 0..SENDERS {
        users.push(chat.create_user(&format!("{prefix}{i}")).await.unwrap());
    }
    users
}

fn bench_sends(c: &mut Criterion, runtime: &Runtime, name: &str, chat: &ChatService, from: &[User]) {
    let mut group = c.benchmark_group("hooks_send/sqlite");
    group.throughput(Throughput::Elements(1));
    group.bench_with_input(BenchmarkId::new(name, SENDERS), &SENDERS, |b, &concurrency| {
        b.to_async(runtime).iter_custom(|iters| async move {
            let per_task = (iters as usize).div_ceil(concurrency);
            let start = Instant::now();
            let tasks: Vec<_> = (0..concurrency)
                .map(|t| {
                    let chat = chat.clone();
                    let from = from[t % from.len()].clone();
                    tokio::spawn(async move {
                        for i in 0..per_task {
                            let request = SendRequest {
                                recipient: "reader".into(),
                                body: format!("benchmark message number {i}"),
                                idempotency_key: None,
                            };
                            black_box(chat.send(&from, request).await.unwrap());
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            start
                .elapsed()
                .mul_f64(iters as f64 / (per_task * concurrency) as f64)
        })
    });
    group.finish();
}

fn hooks(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = runtime.block_on(async {
        let store = SqliteStore::open(SqliteConfig::file(dir.path().join("bench.db")))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        Arc::new(store)
    });
    // The send rate limit off: the bench sends far faster than a person.
    let config = ChatConfig {
        send_burst: 0,
        ..ChatConfig::default()
    };
    let plain = ChatService::new(store.clone(), Arc::new(LocalNotifier::default()), config.clone());
    let hooked = ChatService::new(store.clone(), Arc::new(LocalNotifier::default()), config)
        .with_send_policy(Arc::new(AllowAll));
    let (reader, plain_senders, hooked_senders) = runtime.block_on(async {
        (
            plain.create_user("reader").await.unwrap(),
            senders(&plain, "plain").await,
            senders(&hooked, "hooked").await,
        )
    });

    bench_sends(c, &runtime, "plain", &plain, &plain_senders);

    let shared: Arc<dyn Store> = store.clone();
    // Every message goes to the reader, so their newest position is the end of the feed: the
    // consumer starts there, and the lag measured is the hooked run's alone.
    let start = runtime.block_on(plain.latest_position(&reader)).unwrap();
    runtime.block_on(shared.save_checkpoint("bench", start)).unwrap();
    let consumer = FeedConsumer::new(
        shared,
        FeedConsumerConfig {
            poll_interval: Duration::from_millis(10),
            ..FeedConsumerConfig::new("bench")
        },
    )
    .unwrap();
    let recorder = Arc::new(LagRecorder::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let recorder = recorder.clone();
        runtime.spawn(async move {
            consumer
                .run(recorder.as_ref(), async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    bench_sends(
        c,
        &runtime,
        "allow_all_policy_and_feed_consumer",
        &hooked,
        &hooked_senders,
    );
    let _ = stop.send(());
    runtime.block_on(running).unwrap();

    let mut lags = std::mem::take(&mut *recorder.lags_us.lock().unwrap());
    lags.sort_unstable();
    if !lags.is_empty() {
        let at = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize];
        eprintln!(
            "feed consumer lag over {} messages: p50 {} us, p99 {} us",
            lags.len(),
            at(0.50),
            at(0.99)
        );
    }
    runtime.block_on(store.close()).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = hooks
}
criterion_main!(benches);
