//! `RedisNotifier` against real Redis servers: the shared one at `CHATCORE_REDIS_URL`
//! (default `redis://127.0.0.1:6379`), each test with its own random channel prefix, and a
//! private `redis-server` that a test starts, kills and restarts on a free port.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::notify::{Delivery, Event, Notifier};
use chatcore::{
    ChatConfig, ChatService, Error, MemoryStore, Message, MessageId, SendRequest, Subscription, User, UserId,
    Username, now_micros,
};
use chatcore_redis::{RedisConfig, RedisNotifier};

/// How long a test waits for something that should happen in milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

fn redis_url() -> String {
    std::env::var("CHATCORE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `TEST_LOG=1` shows the notifier's logs (reconnects, failures).
fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "debug".into()),
            )
            .with_test_writer()
            .try_init();
    }
}

fn test_config(url: String) -> RedisConfig {
    init_logs();
    RedisConfig {
        url,
        channel_prefix: format!("chatcore-test:{:016x}:", rand::random::<u64>()),
        command_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        reconnect_min_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        ..Default::default()
    }
}

/// A node: a chat service with its own Redis notifier over the shared store.
async fn node(store: &Arc<MemoryStore>, config: &RedisConfig) -> (ChatService, RedisNotifier) {
    let notifier = RedisNotifier::connect(config.clone())
        .await
        .expect("connect to redis");
    let chat = ChatService::new(store.clone(), Arc::new(notifier.clone()), ChatConfig::default());
    (chat, notifier)
}

async fn users(chat: &ChatService, prefix: &str, count: usize) -> Vec<User> {
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        users.push(chat.create_user(&format!("{prefix}{i}"), None).await.unwrap());
    }
    users
}

async fn send(chat: &ChatService, from: &User, to: &User, body: &str) -> Arc<Message> {
    let sent = chat
        .send(
            from,
            SendRequest {
                recipient: to.username.as_str().into(),
                body: body.into(),
                ..Default::default()
            },
        )
        .await
        .expect("send");
    assert!(
        sent.notify_error.is_none(),
        "not notified: {:?}",
        sent.notify_error
    );
    sent.message
}

async fn next(sub: &mut Subscription) -> Delivery {
    match tokio::time::timeout(PATIENCE, sub.recv()).await {
        Ok(Some(delivery)) => delivery,
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("nothing delivered within {PATIENCE:?}"),
    }
}

async fn next_message(sub: &mut Subscription) -> Arc<Message> {
    match next(sub).await {
        Delivery::Event(Event::Message(message)) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Waits until `check` holds, polling; fails after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn numsub(url: &str, channel: &str) -> i64 {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut connection)
        .await
        .unwrap();
    counts[0].1
}

fn sentinel(id: i64) -> Event {
    let name = Username::parse("sentinel").unwrap();
    Event::Message(Arc::new(Message {
        id: MessageId(id),
        sender: name.clone(),
        recipient: name,
        created_at: now_micros(),
        body: "end".into(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_node_b_receives_what_node_a_sent() {
    let config = test_config(redis_url());
    let store = Arc::new(MemoryStore::new());
    let (a, _na) = node(&store, &config).await;
    let (b, _nb) = node(&store, &config).await;
    let people = users(&a, "ab", 2).await;
    let (alice, bob) = (&people[0], &people[1]);

    let mut alice_on_a = a.subscribe(alice).await.unwrap();
    let mut bob_on_b = b.subscribe(bob).await.unwrap();
    let first = send(&a, alice, bob, "hello bob").await;
    let second = send(&b, bob, alice, "hi alice").await;

    for sub in [&mut alice_on_a, &mut bob_on_b] {
        let got = next_message(sub).await;
        assert_eq!(*got, *first);
        let got = next_message(sub).await;
        assert_eq!(*got, *second);
        assert_eq!(sub.try_recv(), Ok(None));
    }
    assert_eq!(first.body, "hello bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_users_and_connections_across_nodes_lose_and_duplicate_nothing() {
    const USERS: usize = 50;
    const MESSAGES: usize = 300;
    let config = test_config(redis_url());
    let store = Arc::new(MemoryStore::new());
    let (a, na) = node(&store, &config).await;
    let (b, nb) = node(&store, &config).await;
    let nodes = [a, b];
    let people = users(&nodes[0], "many", USERS).await;

    // Each user has one connection on each node, opened concurrently.
    let mut opening = Vec::new();
    for user in &people {
        for chat in &nodes {
            opening.push(chat.subscribe(user));
        }
    }
    let mut subs: Vec<(UserId, Subscription)> = futures_util::future::join_all(opening)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, sub)| (people[i / 2].id, sub.expect("subscribe")))
        .collect();

    // Messages from random senders to random recipients, through random nodes, from four
    // concurrent senders.
    let plan: Vec<(usize, usize, usize)> = (0..MESSAGES)
        .map(|_| {
            let from = rand::random_range(0..USERS);
            let to = (from + rand::random_range(1..USERS)) % USERS;
            (from, to, rand::random_range(0..2))
        })
        .collect();
    let nodes = Arc::new(nodes);
    let people = Arc::new(people);
    let mut senders = Vec::new();
    for chunk in plan.chunks(MESSAGES / 4) {
        let chunk = chunk.to_vec();
        let (nodes, people) = (nodes.clone(), people.clone());
        senders.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for (from, to, via) in chunk {
                let message = send(&nodes[via], &people[from], &people[to], "x").await;
                sent.push((people[from].id, people[to].id, message.id));
            }
            sent
        }));
    }
    let mut expected: HashMap<UserId, BTreeSet<MessageId>> = HashMap::new();
    for sender in senders {
        for (from, to, id) in sender.await.unwrap() {
            expected.entry(from).or_default().insert(id);
            expected.entry(to).or_default().insert(id);
        }
    }

    // Every send has completed, so a sentinel published now arrives after all of them.
    for user in people.iter() {
        let notifier: &dyn Notifier = if user.id.0 % 2 == 0 { &na } else { &nb };
        notifier.publish(&[user.id], &sentinel(-1)).await.unwrap();
    }
    for (user, sub) in &mut subs {
        let mut got = Vec::new();
        loop {
            let message = next_message(sub).await;
            if message.id == MessageId(-1) {
                break;
            }
            got.push(message.id);
        }
        let unique: BTreeSet<MessageId> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "user {user:?} got duplicates");
        assert_eq!(
            unique,
            expected.get(user).cloned().unwrap_or_default(),
            "user {user:?} got the wrong messages"
        );
    }
    let total: usize = expected.values().map(BTreeSet::len).sum();
    assert_eq!(total, MESSAGES * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_is_unsubscribed_when_the_last_local_subscription_drops() {
    let url = redis_url();
    let config = test_config(url.clone());
    let store = Arc::new(MemoryStore::new());
    let (a, na) = node(&store, &config).await;
    let (b, _nb) = node(&store, &config).await;
    let people = users(&a, "drop", 3).await;
    let user = &people[0];
    let channel = na.channel(user.id);
    assert_eq!(channel, format!("{}user:{}", config.channel_prefix, user.id.0));
    assert_eq!(numsub(&url, &channel).await, 0);

    // Two local subscriptions share the node's one Redis subscription.
    let first = a.subscribe(user).await.unwrap();
    let second = a.subscribe(user).await.unwrap();
    assert_eq!(numsub(&url, &channel).await, 1);
    let on_b = b.subscribe(user).await.unwrap();
    assert_eq!(numsub(&url, &channel).await, 2);

    drop(first);
    // A subscribe goes through the same queue as the drop's unsubscribe, so once it has
    // returned the drop has been handled.
    let _other = a.subscribe(&people[1]).await.unwrap();
    assert_eq!(numsub(&url, &channel).await, 2);
    assert_eq!(na.subscriber_count(user.id), 1);

    drop(second);
    eventually("node A unsubscribed", || async {
        numsub(&url, &channel).await == 1
    })
    .await;
    drop(on_b);
    eventually("node B unsubscribed", || async {
        numsub(&url, &channel).await == 0
    })
    .await;

    // Subscribing again works, and delivers.
    let mut again = a.subscribe(user).await.unwrap();
    assert_eq!(numsub(&url, &channel).await, 1);
    let sent = send(&b, &people[2], user, "back").await;
    assert_eq!(next_message(&mut again).await.id, sent.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_is_cut_off_and_its_channel_released() {
    let url = redis_url();
    let config = RedisConfig {
        queue_capacity: 2,
        ..test_config(url.clone())
    };
    let store = Arc::new(MemoryStore::new());
    let (a, na) = node(&store, &config).await;
    let people = users(&a, "lag", 2).await;
    let (alice, bob) = (&people[0], &people[1]);
    let mut slow = a.subscribe(bob).await.unwrap();
    for i in 0..5 {
        send(&a, alice, bob, &format!("m{i}")).await;
    }
    assert!(matches!(next(&mut slow).await, Delivery::Event(_)));
    assert!(matches!(next(&mut slow).await, Delivery::Event(_)));
    assert_eq!(next(&mut slow).await, Delivery::Lagged);
    assert_eq!(slow.recv().await, None);
    // The cut-off subscription left no local subscriber; the next message on the channel
    // makes the node let go of it.
    send(&a, alice, bob, "one more").await;
    let channel = na.channel(bob.id);
    eventually("lagged user's channel released", || async {
        numsub(&url, &channel).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_no_server_fails_fast_and_bad_config_is_rejected() {
    let port = free_port();
    let config = test_config(format!("redis://127.0.0.1:{port}"));
    let start = Instant::now();
    let error = RedisNotifier::connect(config).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Unavailable {
                what: "notifications",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );

    let error = RedisNotifier::connect(RedisConfig {
        url: "not a url".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(error, Error::Invalid(_)), "{error:?}");
    let error = RedisNotifier::connect(RedisConfig {
        queue_capacity: 0,
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(error, Error::Invalid(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_notifier_ends_its_subscriptions() {
    let config = test_config(redis_url());
    let notifier = RedisNotifier::connect(config).await.unwrap();
    let mut sub = notifier.subscribe(UserId(1)).await.unwrap();
    drop(notifier);
    assert_eq!(tokio::time::timeout(PATIENCE, sub.recv()).await, Ok(None));
}

/// A `redis-server` of this test's own, on a free port, killed with the test.
struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    async fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.restart().await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let port = self.port.to_string();
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server (is it installed?)");
        self.child = Some(child);
        let url = self.url();
        eventually("private redis-server answers", || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                match client.get_multiplexed_async_connection().await {
                    Ok(mut connection) => redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to this test's own server process.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().and_then(|c| c.id()).expect("server running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_resumes_subscriptions_after_a_gap_and_fails_fast_meanwhile() {
    let mut server = PrivateRedis::start().await;
    let config = test_config(server.url());
    let store = Arc::new(MemoryStore::new());
    let (a, na) = node(&store, &config).await;
    let (b, nb) = node(&store, &config).await;
    let people = users(&a, "restart", 4).await;

    // Users 0..3 have two connections each on node A; user 3 one on node B.
    let mut subs = Vec::new();
    for user in &people[..3] {
        subs.push((user.id, a.subscribe(user).await.unwrap()));
        subs.push((user.id, a.subscribe(user).await.unwrap()));
    }
    subs.push((people[3].id, b.subscribe(&people[3]).await.unwrap()));
    let before = send(&b, &people[3], &people[0], "before").await;
    for (user, sub) in subs.iter_mut() {
        if *user == people[0].id || *user == people[3].id {
            assert_eq!(next_message(sub).await.id, before.id);
        }
    }

    server.kill().await;
    eventually("both nodes notice", || async {
        !na.is_connected() && !nb.is_connected()
    })
    .await;

    // While Redis is down: publishing and subscribing fail at once, and the message is
    // stored anyway.
    let start = Instant::now();
    let sent = b
        .send(
            &people[3],
            SendRequest {
                recipient: people[1].username.as_str().into(),
                body: "during".into(),
                ..Default::default()
            },
        )
        .await
        .expect("stored while notifications are down");
    let error = sent.notify_error.expect("notification failed");
    assert!(
        matches!(
            error,
            Error::Unavailable {
                what: "notifications",
                ..
            }
        ),
        "{error:?}"
    );
    let error = a.subscribe(&people[2]).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "failing took {:?}",
        start.elapsed()
    );

    server.restart().await;
    // Every subscription hears of the gap first.
    for (user, sub) in subs.iter_mut() {
        assert_eq!(next(sub).await, Delivery::Gap, "user {user:?}");
    }
    eventually("both nodes reconnected", || async {
        na.is_connected() && nb.is_connected()
    })
    .await;

    // Subscriptions resume, on both nodes, for every user.
    let after = send(&b, &people[3], &people[1], "after").await;
    let also = send(&a, &people[2], &people[0], "also").await;
    for (user, sub) in subs.iter_mut() {
        let mut want = Vec::new();
        if *user == people[1].id || *user == people[3].id {
            want.push(after.id);
        }
        if *user == people[2].id || *user == people[0].id {
            want.push(also.id);
        }
        for id in want {
            assert_eq!(next_message(sub).await.id, id, "user {user:?}");
        }
        assert_eq!(sub.try_recv(), Ok(None), "user {user:?}");
    }
    // A new connection subscribes again.
    let mut late = a.subscribe(&people[1]).await.unwrap();
    let last = send(&b, &people[0], &people[1], "late").await;
    assert_eq!(next_message(&mut late).await.id, last.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_right_after_subscribe_returns_is_received() {
    let config = test_config(redis_url());
    let (na, nb) = (
        RedisNotifier::connect(config.clone()).await.unwrap(),
        RedisNotifier::connect(config).await.unwrap(),
    );
    // Fresh users each time, so every subscribe needs a new SUBSCRIBE on node B.
    for round in 0..100 {
        let user = UserId(1_000 + round);
        let mut sub = nb.subscribe(user).await.unwrap();
        na.publish(&[user], &sentinel(round)).await.unwrap();
        assert_eq!(next_message(&mut sub).await.id, MessageId(round));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_named_twice_is_notified_once() {
    let config = test_config(redis_url());
    let notifier = RedisNotifier::connect(config).await.unwrap();
    let mut sub = notifier.subscribe(UserId(5)).await.unwrap();
    notifier
        .publish(&[UserId(5), UserId(5)], &sentinel(1))
        .await
        .unwrap();
    notifier.publish(&[UserId(5)], &sentinel(2)).await.unwrap();
    assert_eq!(next_message(&mut sub).await.id, MessageId(1));
    assert_eq!(next_message(&mut sub).await.id, MessageId(2));
    notifier.publish(&[], &sentinel(3)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_detected_by_the_health_check_and_publish_times_out() {
    let server = PrivateRedis::start().await;
    let config = RedisConfig {
        health_check_interval: Duration::from_millis(100),
        command_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        ..test_config(server.url())
    };
    let notifier = RedisNotifier::connect(config).await.unwrap();
    let mut sub = notifier.subscribe(UserId(7)).await.unwrap();

    // SIGSTOP: the TCP connections stay open, but nothing answers.
    server.signal("STOP");
    let start = Instant::now();
    let error = notifier.publish(&[UserId(7)], &sentinel(1)).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Unavailable {
                what: "notifications",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "publish took {:?}",
        start.elapsed()
    );
    eventually("the health check notices", || async { !notifier.is_connected() }).await;

    server.signal("CONT");
    let first = next(&mut sub).await;
    // The publish that timed out was written before the freeze, so Redis may still deliver
    // it once it runs again; the gap is what matters.
    let gap = match first {
        Delivery::Event(Event::Message(m)) if m.id == MessageId(1) => next(&mut sub).await,
        other => other,
    };
    assert_eq!(gap, Delivery::Gap);
    eventually("reconnected", || async { notifier.is_connected() }).await;
    notifier.publish(&[UserId(7)], &sentinel(2)).await.unwrap();
    loop {
        let id = next_message(&mut sub).await.id;
        if id == MessageId(2) {
            break;
        }
        assert_eq!(id, MessageId(1), "only the frozen publish may come late");
    }
}
