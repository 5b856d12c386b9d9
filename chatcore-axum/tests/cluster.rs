//! Two servers sharing one store and one Redis (`CHATCORE_REDIS_URL`), or PostgreSQL alone
//! (its store and `PgNotifier`): the notification channel works across them, as in a
//! deployment of several processes behind a balancer, and a logout on one reaches the session
//! cache of the other.

mod suite;

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use chatcore::{Backend, ChatConfig};
use chatcore_postgres::{PgNotifier, PgNotifierConfig};
use chatcore_redis::{RedisConfig, RedisNotifier};
use suite::app::*;

/// How the nodes of one test carry notifications between them.
enum Transport {
    /// Redis, on channels with this prefix.
    Redis(String),
    /// `PgNotifier` on the database at this URL.
    Postgres(String),
}

async fn node_on(store: Arc<dyn Backend>, transport: &Transport) -> TestApp {
    node_with(store, transport, ChatConfig::default()).await
}

/// A node on `transport` whose service runs with `chat`.
async fn node_with(store: Arc<dyn Backend>, transport: &Transport, chat: ChatConfig) -> TestApp {
    let notifier: Arc<dyn chatcore::Notifier> = match transport {
        Transport::Redis(prefix) => Arc::new(redis_notifier(prefix).await),
        Transport::Postgres(url) => Arc::new(
            PgNotifier::connect(url, PgNotifierConfig::default())
                .await
                .expect("connect the PostgreSQL notifier"),
        ),
    };
    let options = Options {
        notifier: Some(notifier),
        chat,
        ..Default::default()
    };
    TestApp::spawn_with(store, options).await
}

async fn node(store: Arc<dyn Backend>, prefix: &str) -> TestApp {
    node_on(store, &Transport::Redis(prefix.to_owned())).await
}

async fn redis_notifier(prefix: &str) -> RedisNotifier {
    let config = RedisConfig {
        url: std::env::var("CHATCORE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
        channel_prefix: prefix.to_owned(),
        ..Default::default()
    };
    RedisNotifier::connect(config)
        .await
        .expect("connect to Redis at CHATCORE_REDIS_URL")
}

/// A channel prefix of the test's own, so parallel runs sharing the Redis never meet.
fn unique_prefix(test: &str) -> String {
    format!(
        "chatcore-axum-{test}:{}:{:016x}:",
        std::process::id(),
        rand::random::<u64>()
    )
}

async fn cluster_fan_out_and_catch_up(store: Arc<dyn Backend>) {
    cluster_fan_out_and_catch_up_over(store, Transport::Redis(unique_prefix("test"))).await;
}

async fn cluster_fan_out_and_catch_up_over(store: Arc<dyn Backend>, transport: Transport) {
    suite::app::init_logs();
    let one = node_on(store.clone(), &transport).await;
    let two = node_on(store, &transport).await;
    let (_, alice) = one.user("alice").await;
    let (_, bob) = one.user("bob").await;
    let (_, carol) = one.user("carol").await;

    let mut alice_on_one = one.ws(&alice, None).await;
    let mut bob_on_one = one.ws(&bob, None).await;
    let mut bob_on_two = two.ws(&bob, None).await;
    let mut carol_on_two = two.ws(&carol, None).await;

    // Sent through node two; every socket of both parties hears it, on either node.
    let sent = two.send(&alice, "bob", "across the cluster").await;
    let id = sent["id"].as_i64().unwrap();
    for ws in [&mut alice_on_one, &mut bob_on_one, &mut bob_on_two] {
        assert_eq!(frame_id(ws).await, id);
    }
    let to_carol = one.send(&bob, "carol", "hi carol").await["id"].as_i64().unwrap();
    assert_eq!(frame_id(&mut carol_on_two).await, to_carol);
    no_frame(&mut alice_on_one, Duration::from_millis(100)).await;

    // Bob drops off node one and reconnects to node two with `since`.
    assert_eq!(frame_id(&mut bob_on_one).await, to_carol);
    assert_eq!(frame_id(&mut bob_on_two).await, to_carol);
    close(bob_on_one).await;
    let missed = one.send(&alice, "bob", "while away").await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(frame_id(&mut bob_on_two).await, missed);
    let mut bob_back = two.ws(&bob, Some(to_carol)).await;
    assert_eq!(frame_id(&mut bob_back).await, missed);
    let live = one.send(&alice, "bob", "live").await["id"].as_i64().unwrap();
    assert_eq!(frame_id(&mut bob_back).await, live);
    no_frame(&mut bob_back, Duration::from_millis(100)).await;
    for ws in [alice_on_one, bob_on_two, carol_on_two, bob_back] {
        close(ws).await;
    }
}

/// Presence and typing across two nodes: alice on one sees bob on the other come online,
/// type, and go offline; a reload within the grace (closing on one node, reopening on the
/// other) sends nothing.
async fn presence_and_typing_across_nodes(store: Arc<dyn Backend>, transport: Transport) {
    suite::app::init_logs();
    let chat = ChatConfig {
        presence: true,
        presence_grace: Duration::from_secs(2),
        presence_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let one = node_with(store.clone(), &transport, chat.clone()).await;
    let two = node_with(store, &transport, chat).await;
    let (_, alice) = one.user("alice").await;
    let (_, bob) = one.user("bob").await;
    one.send(&bob, "alice", "hi").await;
    let mut alice_on_one = one.ws(&alice, None).await;
    let mut bob_on_two = two.ws(&bob, None).await;
    assert_eq!(
        frame(&mut alice_on_one).await,
        serde_json::json!({"type": "presence", "users": [{"user": "bob", "online": true, "last_seen": null}]})
    );
    send_raw(
        &mut bob_on_two,
        tokio_tungstenite::tungstenite::Message::text(r#"{"type":"typing","to":"alice"}"#),
    )
    .await;
    let typing = frame(&mut alice_on_one).await;
    assert_eq!(
        (typing["type"].as_str(), typing["from"].as_str()),
        (Some("typing"), Some("bob"))
    );
    close(bob_on_two).await;
    let bob_on_one = one.ws(&bob, None).await;
    close(bob_on_one).await;
    let offline = frame(&mut alice_on_one).await;
    assert_eq!(offline["users"][0]["online"], false, "{offline}");
    close(alice_on_one).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_across_nodes_over_redis() {
    let transport = Transport::Redis(unique_prefix("presence"));
    presence_and_typing_across_nodes(Arc::new(chatcore::MemoryStore::new()), transport).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_across_nodes_over_postgres() {
    let (store, url) = suite::stores::postgres_store_and_url().await;
    presence_and_typing_across_nodes(store, Transport::Postgres(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_behind_two_nodes() {
    cluster_fan_out_and_catch_up(Arc::new(chatcore::MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_store_behind_two_nodes() {
    cluster_fan_out_and_catch_up(suite::stores::mysql_store().await).await;
}

/// The ordering promise across nodes: eight senders through two servers on one MySQL and one
/// Redis, and a client that reconnects to either at random moments with `since`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_two_nodes_reconnecting_client_gets_every_message_once_in_order() {
    suite::app::init_logs();
    let store = suite::stores::mysql_store().await;
    let prefix = unique_prefix("order");
    let nodes = [node(store.clone(), &prefix).await, node(store, &prefix).await];
    suite::cases::reconnecting_client_gets_every_message_once_in_order_over(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alone_behind_two_nodes() {
    let (store, url) = suite::stores::postgres_store_and_url().await;
    cluster_fan_out_and_catch_up_over(store, Transport::Postgres(url)).await;
}

/// The ordering promise across nodes on PostgreSQL alone: eight senders through two servers
/// sharing one database and its LISTEN/NOTIFY, and a client that reconnects to either at
/// random moments with `since`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_reconnecting_client_gets_every_message_once_in_order() {
    suite::app::init_logs();
    let (store, url) = suite::stores::postgres_store_and_url().await;
    let transport = Transport::Postgres(url);
    let nodes = [
        node_on(store.clone(), &transport).await,
        node_on(store, &transport).await,
    ];
    suite::cases::reconnecting_client_gets_every_message_once_in_order_over(&nodes).await;
}

/// Node B caches a session (one store read, then none); a logout on node A reaches B's cache
/// through Redis, so the token stops working on B at once, not after the cache's time to live
/// (5 minutes by default, far beyond the wait here). Another session stays cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_on_one_node_reaches_the_other_nodes_session_cache() {
    suite::app::init_logs();
    let store = Arc::new(suite::stores::TestStore::new(Arc::new(
        chatcore::MemoryStore::new(),
    )));
    let prefix = unique_prefix("revocation");
    let node_a = node(store.clone(), &prefix).await;
    let node_b = node(store.clone(), &prefix).await;
    let (alice_user, alice) = node_a.user("alice").await;
    let other = node_a.auth.start_session(alice_user).await.unwrap().token;
    let lookups = || store.session_lookups.load(Ordering::SeqCst);
    let status_on_b = async |token: &str| {
        node_b
            .client(token)
            .get(node_b.url("/api/v1/user/"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let before = lookups();
    for _ in 0..3 {
        assert_eq!(status_on_b(&alice).await, 200);
        assert_eq!(status_on_b(&other).await, 200);
    }
    assert_eq!(
        lookups(),
        before + 2,
        "node B reads each session once, then caches it"
    );

    let logout = node_a
        .client(&alice)
        .post(node_a.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while status_on_b(&alice).await != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "node B still accepts a token logged out on node A"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(status_on_b(&other).await, 200);
}
