//! The writer's batch sizes, commit times and WAL syncs, read back from a recorder local to
//! the test's thread (the store registers its handles there when it opens).

mod common;

use std::collections::HashMap;

use chatcore::Store;
use chatcore::metrics::{STORE_COMMIT_BATCH_SIZE, STORE_COMMIT_SECONDS, STORE_FSYNC_SECONDS};
use chatcore_sqlite::SqliteStore;
use common::{name, new_message, temp_store};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Every histogram's samples by name (labelled `backend="sqlite"`, the only label).
fn histograms(snapshotter: &Snapshotter) -> HashMap<String, Vec<f64>> {
    let mut found = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Histogram(samples) = value {
            assert!(
                key.key()
                    .labels()
                    .any(|l| l.key() == "backend" && l.value() == "sqlite")
            );
            found.insert(
                key.key().name().to_owned(),
                samples.into_iter().map(|s| s.into_inner()).collect(),
            );
        }
    }
    found
}

/// Stores two users and `sends` messages at once, so that the writer batches them.
async fn write(store: &SqliteStore, sends: usize) {
    let alice = store.create_user(&name("alice")).await.unwrap();
    store.create_user(&name("bob")).await.unwrap();
    let inserts = (0..sends).map(|i| store.insert_message(new_message(&alice, "bob", &format!("m{i}"))));
    for inserted in futures_util::future::join_all(inserts).await {
        inserted.unwrap();
    }
}

#[tokio::test]
async fn batches_commits_and_syncs_are_measured() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let temp = temp_store(|_| {}).await; // synchronous = full, synced on the sync thread
    // The migration synced too: start counting after it (a snapshot drains what it reads).
    histograms(&snapshotter);
    write(&temp.store, 40).await;

    let samples = histograms(&snapshotter);
    let batches = &samples[STORE_COMMIT_BATCH_SIZE];
    // Every write is in exactly one committed batch: two users and forty messages.
    assert_eq!(batches.iter().sum::<f64>(), 42.0);
    assert!(
        batches.len() < 42,
        "forty sends at once share transactions: {batches:?}"
    );
    assert_eq!(samples[STORE_COMMIT_SECONDS].len(), batches.len());
    assert!(samples[STORE_COMMIT_SECONDS].iter().all(|&s| s > 0.0 && s < 60.0));
    // One sync covers one or more batches, and every batch was answered after one.
    let syncs = &samples[STORE_FSYNC_SECONDS];
    assert!(
        !syncs.is_empty() && syncs.len() <= batches.len(),
        "{syncs:?} for {batches:?}"
    );
    temp.store.close().await.unwrap();
}

#[tokio::test]
async fn an_in_memory_store_commits_without_syncing() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let store = common::memory_store().await;
    write(&store, 5).await;
    let samples = histograms(&snapshotter);
    assert_eq!(samples[STORE_COMMIT_BATCH_SIZE].iter().sum::<f64>(), 7.0);
    assert!(samples.get(STORE_FSYNC_SECONDS).is_none_or(Vec::is_empty));
}
