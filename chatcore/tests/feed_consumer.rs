//! [`chatcore::FeedConsumer`] over the in-memory store: every event once handled, in order,
//! retried after failures, resumed from the stored checkpoint, stopped by its shutdown signal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chatcore::{
    BoxError, FeedConsumer, FeedConsumerConfig, FeedHandler, MemoryStore, NewMessage, Position, Store,
    StoredEvent, User, Username,
};
use tokio::sync::Notify;

/// Records what it handled; fails the calls whose number (from 1) is in `fail_calls`.
#[derive(Default)]
struct Recorder {
    handled: Mutex<Vec<i64>>,
    calls: AtomicUsize,
    fail_calls: Vec<usize>,
}

#[async_trait]
impl FeedHandler for Recorder {
    async fn handle(&self, events: &[StoredEvent]) -> Result<(), BoxError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_calls.contains(&call) {
            return Err(format!("call {call} fails").into());
        }
        self.handled
            .lock()
            .unwrap()
            .extend(events.iter().map(|e| e.position().0));
        Ok(())
    }
}

async fn user(store: &MemoryStore, name: &str) -> User {
    store.create_user(&Username::parse(name).unwrap()).await.unwrap()
}

async fn send(store: &MemoryStore, from: &User, to: &User, body: &str) -> i64 {
    store
        .insert_message(NewMessage {
            sender: from.clone(),
            recipient: to.username.clone(),
            body: body.into(),
            idempotency_key: None,
        })
        .await
        .unwrap()
        .message
        .id
        .0
}

/// Completes once the checkpoint `name` reaches `position`.
async fn checkpoint_reaches(store: Arc<MemoryStore>, name: &str, position: i64) {
    while store.load_checkpoint(name).await.unwrap().0 < position {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn config(name: &str) -> FeedConsumerConfig {
    FeedConsumerConfig {
        batch: 7,
        poll_interval: Duration::from_millis(10),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(80),
        ..FeedConsumerConfig::new(name)
    }
}

#[tokio::test]
async fn every_event_is_handled_in_order_and_a_restart_resumes_after_the_checkpoint() {
    let store = Arc::new(MemoryStore::new());
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let mut last = 0;
    for i in 0..40 {
        last = send(&store, &alice, &bob, &format!("{i}")).await;
        if i % 10 == 9 {
            let marked = store
                .mark_read(&bob, &alice.username, chatcore::MessageId(last))
                .await
                .unwrap();
            last = marked.moved.unwrap().marker.position.0;
        }
    }
    let everything: Vec<i64> = store
        .feed_after(Position::START, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position().0)
        .collect();
    assert_eq!(everything.len(), 44);

    // The second and third batches fail once each: handed again, nothing skipped.
    let first = Recorder {
        fail_calls: vec![2, 4],
        ..Recorder::default()
    };
    let consumer = FeedConsumer::new(store.clone(), config("push")).unwrap();
    consumer
        .run(&first, checkpoint_reaches(store.clone(), "push", last))
        .await;
    assert_eq!(*first.handled.lock().unwrap(), everything);
    // 44 events in batches of 7 is 7 batches, and 2 failed calls.
    assert_eq!(first.calls.load(Ordering::SeqCst), 9);

    // A new consumer of the same name (a restart) gets only what came after.
    let newer = [
        send(&store, &bob, &alice, "after 1").await,
        send(&store, &alice, &alice, "after 2").await,
    ];
    let second = Recorder::default();
    let restarted = FeedConsumer::new(store.clone(), config("push")).unwrap();
    restarted
        .run(&second, checkpoint_reaches(store.clone(), "push", newer[1]))
        .await;
    assert_eq!(*second.handled.lock().unwrap(), newer);

    // Another name has a checkpoint of its own: it starts from the beginning.
    let third = Recorder::default();
    let other = FeedConsumer::new(store.clone(), config("search")).unwrap();
    other
        .run(&third, checkpoint_reaches(store.clone(), "search", newer[1]))
        .await;
    assert_eq!(third.handled.lock().unwrap().len(), 46);
}

#[tokio::test]
async fn failures_in_a_row_are_retried_after_growing_waits() {
    let store = Arc::new(MemoryStore::new());
    let alice = user(&store, "alice").await;
    let id = send(&store, &alice, &alice, "note").await;
    let handler = Recorder {
        fail_calls: vec![1, 2, 3],
        ..Recorder::default()
    };
    let consumer = FeedConsumer::new(store.clone(), config("retries")).unwrap();
    let started = Instant::now();
    consumer
        .run(&handler, checkpoint_reaches(store.clone(), "retries", id))
        .await;
    // Waits of at least 10, 20 and 40 ms (half of 20, 40, 80: the jitter's floor).
    assert!(
        started.elapsed() >= Duration::from_millis(70),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 4);
    assert_eq!(*handler.handled.lock().unwrap(), [id]);
}

/// Never finishes a batch; tells when it started one.
struct Stuck {
    started: Notify,
}

#[async_trait]
impl FeedHandler for Stuck {
    async fn handle(&self, _events: &[StoredEvent]) -> Result<(), BoxError> {
        self.started.notify_one();
        std::future::pending().await
    }
}

#[tokio::test]
async fn shutdown_stops_a_consumer_in_the_middle_of_a_batch() {
    let store = Arc::new(MemoryStore::new());
    let alice = user(&store, "alice").await;
    send(&store, &alice, &alice, "note").await;
    let handler = Stuck {
        started: Notify::new(),
    };
    let consumer = FeedConsumer::new(store.clone(), config("stuck")).unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        consumer.run(&handler, handler.started.notified()),
    )
    .await
    .expect("the consumer stops on its shutdown signal");
    assert_eq!(
        store.load_checkpoint("stuck").await.unwrap(),
        Position::START,
        "an unfinished batch is not checkpointed: it is handed again after a restart"
    );
}

#[test]
fn a_bad_config_is_refused_where_the_consumer_is_built() {
    let store = Arc::new(MemoryStore::new());
    let bad = FeedConsumerConfig {
        batch: 0,
        ..FeedConsumerConfig::new("x")
    };
    assert!(FeedConsumer::new(store, bad).is_err());
}
