//! The batch writer's sizes, transaction times and every wait for a pooled connection, read back
//! from a recorder local to the test's thread (the store registers its handles when built).

mod common;

use chatcore::metrics::{STORE_COMMIT_BATCH_SIZE, STORE_COMMIT_SECONDS, STORE_POOL_WAIT_SECONDS};
use chatcore::{NewMessage, Store, Username};
use common::TestDatabase;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test]
async fn batches_and_pool_waits_are_measured() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let database = TestDatabase::create().await;
    let store = database.store().await;
    let alice = store
        .create_user(&Username::parse("alice").unwrap())
        .await
        .unwrap();
    store.create_user(&Username::parse("bob").unwrap()).await.unwrap();
    let sends = (0..30).map(|i| {
        store.insert_message(NewMessage {
            sender: alice.clone(),
            recipient: Username::parse("bob").unwrap(),
            body: format!("m{i}"),
            idempotency_key: None,
        })
    });
    for sent in futures_util::future::join_all(sends).await {
        sent.unwrap();
    }
    // A read takes its connection from the pool too.
    store
        .find_user(&Username::parse("alice").unwrap())
        .await
        .unwrap()
        .unwrap();

    let mut samples = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Histogram(values) = value {
            assert!(
                key.key()
                    .labels()
                    .any(|l| l.key() == "backend" && l.value() == "mysql")
            );
            samples.insert(key.key().name().to_owned(), values);
        }
    }
    let batches: Vec<f64> = samples[STORE_COMMIT_BATCH_SIZE]
        .iter()
        .map(|v| v.into_inner())
        .collect();
    // Users are not written by the batch writer: the thirty messages are, each once.
    assert_eq!(batches.iter().sum::<f64>(), 30.0);
    assert_eq!(samples[STORE_COMMIT_SECONDS].len(), batches.len());
    // Each statement outside the writer takes a pooled connection (the two users, the read);
    // the writer takes one for a batch unless it kept one from the last.
    let waits = samples[STORE_POOL_WAIT_SECONDS].len();
    assert!(
        waits > 3 && waits <= 3 + batches.len(),
        "{waits} waits for 3 statements and {} batches",
        batches.len()
    );
}
