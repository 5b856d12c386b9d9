//! What the PostgreSQL store and `PgNotifier` measure, read back from a recorder local to the
//! test's thread (each registers its handles when built).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chatcore::metrics::{
    NOTIFIER_GAPS_TOTAL, NOTIFIER_RECONNECTS_TOTAL, STORE_COMMIT_BATCH_SIZE, STORE_COMMIT_SECONDS,
    STORE_POOL_WAIT_SECONDS,
};
use chatcore::{Delivery, NewMessage, Notifier, Store, UserId, Username};
use chatcore_postgres::testing::TestDatabase;
use chatcore_postgres::{PgNotifier, PgNotifierConfig};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use sqlx::ConnectOptions;

/// Counters as `name` → value and histograms as `name` → samples, with the one label each
/// carries (`backend` or `transport`) checked to be `label`.
fn read(snapshotter: &Snapshotter, label: (&str, &str)) -> (HashMap<String, u64>, HashMap<String, Vec<f64>>) {
    let (mut counters, mut histograms) = (HashMap::new(), HashMap::new());
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        assert!(
            key.key().labels().any(|l| (l.key(), l.value()) == label),
            "{name}"
        );
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(samples) => {
                histograms.insert(name, samples.into_iter().map(|s| s.into_inner()).collect());
            }
            DebugValue::Gauge(_) => {}
        }
    }
    (counters, histograms)
}

#[tokio::test]
async fn batches_transactions_and_pool_waits_are_measured() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let store = common::fresh().await;
    let alice = store
        .create_user(&Username::parse("alice").unwrap())
        .await
        .unwrap();
    store.create_user(&Username::parse("bob").unwrap()).await.unwrap();
    let inserts = (0..30).map(|i| {
        store.insert_message(NewMessage {
            sender: alice.clone(),
            recipient: Username::parse("bob").unwrap(),
            body: format!("m{i}"),
            idempotency_key: None,
        })
    });
    for inserted in futures_util::future::join_all(inserts).await {
        inserted.unwrap();
    }
    let (_, histograms) = read(&snapshotter, ("backend", "postgres"));
    let batches = &histograms[STORE_COMMIT_BATCH_SIZE];
    // The batch function stores messages only: each of the thirty in exactly one batch.
    assert_eq!(batches.iter().sum::<f64>(), 30.0);
    assert_eq!(histograms[STORE_COMMIT_SECONDS].len(), batches.len());
    // Every batch takes its connection from the pool.
    assert_eq!(histograms[STORE_POOL_WAIT_SECONDS].len(), batches.len());
}

#[tokio::test]
async fn a_lost_listening_connection_is_a_reconnect_and_a_gap() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let database = TestDatabase::create(common::PREFIX).await.expect("test database");
    let config = PgNotifierConfig {
        max_connections: 2,
        ..PgNotifierConfig::default()
    };
    let notifier = PgNotifier::connect_with(database.options().unwrap(), config)
        .await
        .unwrap();
    let mut subscription = notifier.subscribe(UserId(7)).await.unwrap();

    let mut admin = database
        .options()
        .unwrap()
        .database("postgres")
        .connect()
        .await
        .unwrap();
    let cut = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = 'chatcore-notify-listen'",
    )
    .bind(database.name())
    .execute(&mut admin)
    .await
    .unwrap();
    assert_eq!(cut.rows_affected(), 1, "one listening connection");
    let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.recv()).await;
    assert_eq!(delivery.expect("a gap after the reconnect"), Some(Delivery::Gap));

    let (counters, _) = read(&snapshotter, ("transport", "postgres"));
    assert_eq!(counters[NOTIFIER_RECONNECTS_TOTAL], 1);
    assert_eq!(counters[NOTIFIER_GAPS_TOTAL], 1, "one subscription was told");
}
