//! What `ChatService` and `LocalNotifier` count, read back from a recorder local to the test's
//! thread (each test has its own, so tests running in parallel do not mix their counts).

use std::sync::Arc;

use chatcore::metrics::{
    CATCH_UP_EVENTS_TOTAL, CATCH_UPS_TOTAL, NOTIFY_QUEUE_OVERFLOWS_TOTAL, RESYNCS_TOTAL, SENDS_TOTAL,
};
use chatcore::{
    CatchUpPage, ChatConfig, ChatService, Delivery, LocalNotifier, MemoryStore, Position, SendRequest,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The counter `name` whose labels include `labels`, summed; 0 when it was never touched.
/// Reading resets the counters (the debugging recorder drains on snapshot).
fn counts(snapshotter: &Snapshotter) -> impl Fn(&str, &[(&str, &str)]) -> u64 {
    let snapshot = snapshotter.snapshot().into_vec();
    move |name, labels| {
        snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == name)
            .filter(|(key, ..)| {
                labels
                    .iter()
                    .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }
}

fn to(recipient: &str, body: &str, key: Option<&str>) -> SendRequest {
    SendRequest {
        recipient: recipient.into(),
        body: body.into(),
        idempotency_key: key.map(str::to_owned),
    }
}

#[tokio::test]
async fn sends_are_counted_by_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let chat = ChatService::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalNotifier::default()),
        ChatConfig::default(),
    );
    let alice = chat.create_user("alice").await.unwrap();
    chat.create_user("bob").await.unwrap();
    for body in ["one", "two"] {
        chat.send(&alice, to("bob", body, None)).await.unwrap();
    }
    chat.send(&alice, to("bob", "keyed", Some("k1"))).await.unwrap();
    assert!(
        chat.send(&alice, to("bob", "keyed", Some("k1")))
            .await
            .unwrap()
            .replayed
    );
    assert!(chat.send(&alice, to("bob", "   ", None)).await.is_err());
    assert!(chat.send(&alice, to("nobody", "hi", None)).await.is_err());

    let count = counts(&snapshotter);
    assert_eq!(count(SENDS_TOTAL, &[("outcome", "stored")]), 3);
    assert_eq!(count(SENDS_TOTAL, &[("outcome", "replayed")]), 1);
    assert_eq!(count(SENDS_TOTAL, &[("outcome", "refused")]), 2);
    assert_eq!(count(SENDS_TOTAL, &[("outcome", "failed")]), 0);
}

#[tokio::test]
async fn catch_ups_resyncs_and_overflows_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let chat = ChatService::new(
        Arc::new(MemoryStore::new()),
        // One queued notification per subscription: the second one overflows.
        Arc::new(LocalNotifier::new(1)),
        ChatConfig {
            catch_up_limit: 3,
            ..ChatConfig::default()
        },
    );
    let alice = chat.create_user("alice").await.unwrap();
    let bob = chat.create_user("bob").await.unwrap();
    let mut bobs_feed = chat.subscribe(&bob, None).await.unwrap();
    for body in ["one", "two", "three"] {
        chat.send(&alice, to("bob", body, None)).await.unwrap();
    }
    // The first event was queued, the other two found the queue full: one gap owed.
    assert!(matches!(bobs_feed.recv().await, Some(Delivery::Gap)));
    assert_eq!(
        counts(&snapshotter)(NOTIFY_QUEUE_OVERFLOWS_TOTAL, &[("transport", "local")]),
        1
    );

    // Three missed events fit the limit: one catch-up reads them.
    let mut catch_up = chat.catch_up(&bob, Position::START);
    let CatchUpPage::Events(events) = chat.catch_up_page(&mut catch_up).await.unwrap() else {
        panic!("three events are within the limit");
    };
    assert_eq!(events.len(), 3);
    assert_eq!(
        chat.catch_up_page(&mut catch_up).await.unwrap(),
        CatchUpPage::Events(Vec::new())
    );
    let count = counts(&snapshotter);
    assert_eq!(count(CATCH_UPS_TOTAL, &[]), 1);
    assert_eq!(count(CATCH_UP_EVENTS_TOTAL, &[]), 3);
    assert_eq!(count(RESYNCS_TOTAL, &[]), 0);

    // A fourth one is past it: resync.
    chat.send(&alice, to("bob", "four", None)).await.unwrap();
    let mut catch_up = chat.catch_up(&bob, Position::START);
    assert!(matches!(
        chat.catch_up_page(&mut catch_up).await.unwrap(),
        CatchUpPage::Resync { .. }
    ));
    let count = counts(&snapshotter);
    assert_eq!(count(CATCH_UPS_TOTAL, &[]), 1);
    assert_eq!(count(RESYNCS_TOTAL, &[]), 1);
    assert_eq!(count(CATCH_UP_EVENTS_TOTAL, &[]), 0);
}

#[tokio::test]
async fn a_local_send_carries_when_it_was_accepted() {
    let chat = ChatService::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalNotifier::default()),
        ChatConfig::default(),
    );
    let alice = chat.create_user("alice").await.unwrap();
    let bob = chat.create_user("bob").await.unwrap();
    let mut feed = chat.subscribe(&bob, None).await.unwrap();
    let before = std::time::Instant::now();
    chat.send(&alice, to("bob", "hi", None)).await.unwrap();
    let Some(Delivery::Event { event, .. }) = feed.recv().await else {
        panic!("bob hears of it");
    };
    let accepted = event.accepted_at().expect("a send of this process is timed");
    assert!(accepted >= before && accepted <= std::time::Instant::now());
    // The same event rebuilt from its frame (as another node sees it) is not timed, and is
    // still the same event.
    let rebuilt = chatcore::Event::from_frame(event.kind(), event.position(), event.frame().clone()).unwrap();
    assert_eq!(rebuilt.accepted_at(), None);
    assert_eq!(rebuilt, event);
}
