//! Presence between nodes: several services sharing one store and one notifier act as the
//! nodes of one deployment (each keeps its own presence task, as separate processes do).

use std::sync::Arc;
use std::time::Duration;

use chatcore::{
    ChatConfig, ChatService, Delivery, EventData, EventKind, Feed, LocalNotifier, MemoryStore, Notifier,
    PresenceChange, SendRequest, Store, User,
};

const WAIT: Duration = Duration::from_secs(5);

fn config() -> ChatConfig {
    ChatConfig {
        presence: true,
        presence_grace: Duration::from_millis(100),
        presence_interval: Duration::from_millis(20),
        presence_timeout: Duration::from_millis(400),
        ..Default::default()
    }
}

fn node(store: &Arc<MemoryStore>, notifier: &Arc<LocalNotifier>) -> ChatService {
    let store: Arc<dyn Store> = store.clone();
    let notifier: Arc<dyn Notifier> = notifier.clone();
    ChatService::new(store, notifier, config())
}

async fn deployment() -> (Arc<MemoryStore>, Arc<LocalNotifier>, ChatService, User, User) {
    let store = Arc::new(MemoryStore::new());
    let notifier = Arc::new(LocalNotifier::default());
    let a = node(&store, &notifier);
    let alice = a.create_user("alice").await.unwrap();
    let bob = a.create_user("bob").await.unwrap();
    let request = SendRequest {
        recipient: "alice".into(),
        body: "hi".into(),
        ..Default::default()
    };
    a.send(&bob, request).await.unwrap();
    (store, notifier, a, alice, bob)
}

/// The next presence frame of `feed` (other deliveries skipped).
async fn presence(feed: &mut Feed) -> Vec<PresenceChange> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let delivery = tokio::time::timeout_at(deadline, feed.recv())
            .await
            .expect("a presence frame in time")
            .expect("the feed is open");
        if let Delivery::Event { event, previous } = delivery
            && event.kind() == EventKind::Presence
        {
            assert_eq!(previous, None);
            assert_eq!(event.position(), None);
            match event.decode().unwrap() {
                EventData::Presence(changes) => return changes,
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_speaking_has_its_users_shown_offline() {
    let (store, notifier, a, alice, bob) = deployment().await;
    let b = node(&store, &notifier);
    let mut alices_tab = a.subscribe(&alice, None).await.unwrap();
    let bobs_tab = b.subscribe(&bob, None).await.unwrap();
    let online = presence(&mut alices_tab).await;
    assert_eq!((online[0].user.as_str(), online[0].online), ("bob", true));
    assert!(a.presence_of(&bob.username).unwrap().online);
    // Node B dies without a goodbye: its task stops, bob's connection is never closed.
    drop(b);
    let offline = presence(&mut alices_tab).await;
    assert_eq!((offline[0].user.as_str(), offline[0].online), ("bob", false));
    let status = a.presence_of(&bob.username).unwrap();
    assert!(!status.online && status.last_seen.is_some());
    drop(bobs_tab);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_starts_late_learns_who_is_online_elsewhere() {
    let (store, notifier, a, _alice, bob) = deployment().await;
    let _bobs_tab = a.subscribe(&bob, None).await.unwrap();
    let late = node(&store, &notifier);
    late.start_presence();
    // It asks the others at start and they answer within an interval, far sooner than
    // their next heartbeat (a third of the timeout).
    let deadline = tokio::time::Instant::now() + WAIT;
    while !late.presence_of(&bob.username).unwrap().online {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late node never learned"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_to_another_node_within_the_grace_sends_nothing() {
    let (store, notifier, a, alice, bob) = deployment().await;
    let b = node(&store, &notifier);
    let mut alices_tab = a.subscribe(&alice, None).await.unwrap();
    let bob_on_a = a.subscribe(&bob, None).await.unwrap();
    assert!(presence(&mut alices_tab).await[0].online);
    // Bob's page reloads onto the other node.
    drop(bob_on_a);
    let bob_on_b = b.subscribe(&bob, None).await.unwrap();
    // Closing for good: the next frame alice gets is the offline, not a flap.
    drop(bob_on_b);
    let offline = presence(&mut alices_tab).await;
    assert_eq!(offline.len(), 1);
    assert!(!offline[0].online && offline[0].last_seen.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_off_unless_configured() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let chat = ChatService::new(store, Arc::new(LocalNotifier::default()), ChatConfig::default());
    let bob = chat.create_user("bob").await.unwrap();
    let _tab = chat.subscribe(&bob, None).await.unwrap();
    assert!(!chat.presence_enabled());
    assert_eq!(chat.presence_of(&bob.username), None);
    let bad = ChatConfig {
        presence_timeout: Duration::from_secs(1),
        presence_interval: Duration::from_secs(1),
        ..Default::default()
    };
    assert!(bad.validate().is_err());
    let bad = ChatConfig {
        typing_rate_per_sec: 0,
        ..Default::default()
    };
    assert!(bad.validate().is_err());
}
