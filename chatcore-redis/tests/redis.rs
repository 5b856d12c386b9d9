//! `RedisNotifier` against real Redis servers: the shared one at `CHATCORE_REDIS_URL`
//! (default `redis://127.0.0.1:6379`), each test with its own random channel prefix, and a
//! private `redis-server` that a test starts, kills, restarts, freezes or pauses on a free
//! port. The promises every notifier keeps are checked by `tests/notifier_conformance.rs`;
//! these are the Redis-specific behaviours and whole services over two nodes.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::notify::{Delivery, Event, Notifier, Recipient};
use chatcore::{
    ChatConfig, ChatService, Error, Feed, MemoryStore, Message, MessageId, Position, SendRequest,
    Subscription, User, UserId, Username, now_micros,
};
use chatcore_redis::{RedisConfig, RedisNotifier};
use common::{PATIENCE, PrivateRedis, command, eventually, free_port, redis_url, test_config};

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
        users.push(chat.create_user(&format!("{prefix}{i}")).await.unwrap());
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

/// A service's [`Feed`] or a notifier's [`Subscription`].
trait Inbox {
    async fn next_delivery(&mut self) -> Option<Delivery>;
    /// What is ready now, without waiting.
    fn ready(&mut self) -> Option<Delivery>;
}

impl Inbox for Feed {
    async fn next_delivery(&mut self) -> Option<Delivery> {
        self.recv().await
    }
    fn ready(&mut self) -> Option<Delivery> {
        self.try_recv()
    }
}

impl Inbox for Subscription {
    async fn next_delivery(&mut self) -> Option<Delivery> {
        self.recv().await
    }
    fn ready(&mut self) -> Option<Delivery> {
        self.try_recv().ok().flatten()
    }
}

async fn next(sub: &mut impl Inbox) -> Delivery {
    match tokio::time::timeout(PATIENCE, sub.next_delivery()).await {
        Ok(Some(delivery)) => delivery,
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("nothing delivered within {PATIENCE:?}"),
    }
}

/// The next delivery, a message event: the message and the event's `previous`.
async fn next_event(sub: &mut impl Inbox) -> (Message, Option<Position>) {
    match next(sub).await {
        Delivery::Event { event, previous } => (event.message_data().expect("a message event"), previous),
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn next_message(sub: &mut impl Inbox) -> Message {
    next_event(sub).await.0
}

/// The next message, skipping gaps (after an outage, gap notices may come late).
async fn next_message_after_gaps(sub: &mut impl Inbox) -> Message {
    loop {
        match next(sub).await {
            Delivery::Gap => {}
            Delivery::Event { event, .. } => return event.message_data().expect("a message event"),
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Nothing but gaps is ready.
fn only_gaps_ready(sub: &mut impl Inbox, what: &str) {
    while let Some(delivery) = sub.ready() {
        assert_eq!(delivery, Delivery::Gap, "{what}");
    }
}

async fn numsub(url: &str, channel: &str) -> i64 {
    let counts: Vec<(String, i64)> = command(url, &["PUBSUB", "NUMSUB", channel]).await;
    counts[0].1
}

fn sentinel(id: i64) -> Event {
    let name = Username::parse("sentinel").unwrap();
    Event::message(&Message {
        id: MessageId(id),
        sender: name.clone(),
        recipient: name,
        created_at: now_micros(),
        body: "end".into(),
        edited: None,
        deleted: false,
    })
}

fn to(users: &[UserId]) -> Vec<Recipient> {
    users
        .iter()
        .map(|&user| Recipient {
            user,
            previous: Some(Position::START),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_node_b_receives_what_node_a_sent() {
    let config = test_config(redis_url().await);
    let store = Arc::new(MemoryStore::new());
    let (a, _na) = node(&store, &config).await;
    let (b, _nb) = node(&store, &config).await;
    let people = users(&a, "ab", 2).await;
    let (alice, bob) = (&people[0], &people[1]);

    let mut alice_on_a = a.subscribe(alice, None).await.unwrap();
    let mut bob_on_b = b.subscribe(bob, None).await.unwrap();
    let first = send(&a, alice, bob, "hello bob").await;
    let second = send(&b, bob, alice, "hi alice").await;

    for sub in [&mut alice_on_a, &mut bob_on_b] {
        // One was published on this node and delivered at once, the other comes through
        // Redis: two publishers, so either may come first; `previous` tells the order.
        let mut got = [next_event(sub).await, next_event(sub).await];
        got.sort_by_key(|(message, _)| message.id);
        assert_eq!(got[0], ((*first).clone(), Some(Position::START)));
        assert_eq!(got[1], ((*second).clone(), Some(Position::from(first.id))));
        assert_eq!(sub.try_recv(), None);
    }
    assert_eq!(first.body, "hello bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_users_and_connections_across_nodes_lose_and_duplicate_nothing() {
    const USERS: usize = 50;
    const MESSAGES: usize = 300;
    let config = test_config(redis_url().await);
    let store = Arc::new(MemoryStore::new());
    let (a, _na) = node(&store, &config).await;
    let (b, _nb) = node(&store, &config).await;
    // Publishes the sentinels: through Redis to both nodes, after everything sent before.
    let sentinels = RedisNotifier::connect(config.clone()).await.unwrap();
    let nodes = [a, b];
    let people = users(&nodes[0], "many", USERS).await;

    // Each user has one connection on each node, opened concurrently.
    let mut opening = Vec::new();
    for user in &people {
        for chat in &nodes {
            opening.push(chat.subscribe(user, None));
        }
    }
    let mut subs: Vec<(UserId, Feed)> = futures_util::future::join_all(opening)
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

    // Every send has completed (Redis has taken every PUBLISH, and each node delivered its
    // own at once), so a sentinel published through Redis now arrives after all of them.
    for user in people.iter() {
        sentinels.publish(&to(&[user.id]), &sentinel(-1)).await.unwrap();
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
    let url = redis_url().await;
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
    let first = a.subscribe(user, None).await.unwrap();
    let second = a.subscribe(user, None).await.unwrap();
    assert_eq!(numsub(&url, &channel).await, 1);
    let on_b = b.subscribe(user, None).await.unwrap();
    assert_eq!(numsub(&url, &channel).await, 2);

    drop(first);
    // A subscribe goes through the same queue as the drop's unsubscribe, so once it has
    // returned the drop has been handled.
    let _other = a.subscribe(&people[1], None).await.unwrap();
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
    let mut again = a.subscribe(user, None).await.unwrap();
    assert_eq!(numsub(&url, &channel).await, 1);
    let sent = send(&b, &people[2], user, "back").await;
    assert_eq!(next_message(&mut again).await.id, sent.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_gets_a_gap_and_keeps_its_channel() {
    let url = redis_url().await;
    let config = RedisConfig {
        queue_capacity: 2,
        ..test_config(url.clone())
    };
    let store = Arc::new(MemoryStore::new());
    let (a, na) = node(&store, &config).await;
    let people = users(&a, "lag", 2).await;
    let (alice, bob) = (&people[0], &people[1]);
    let mut slow = a.subscribe(bob, None).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..5 {
        // Sent on the subscription's own node: queued (or not) before `send` returns.
        sent.push(send(&a, alice, bob, &format!("m{i}")).await.id);
    }
    assert_eq!(next(&mut slow).await, Delivery::Gap);
    assert_eq!(next_message(&mut slow).await.id, sent[0]);
    assert_eq!(next_message(&mut slow).await.id, sent[1]);
    assert_eq!(slow.try_recv(), None);
    // The subscription goes on, and so does the node's subscription to the channel.
    let channel = na.channel(bob.id);
    assert_eq!(numsub(&url, &channel).await, 1);
    let more = send(&a, alice, bob, "one more").await;
    assert_eq!(next_message(&mut slow).await.id, more.id);
    drop(slow);
    eventually("channel released", || async { numsub(&url, &channel).await == 0 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_payload_is_a_gap_for_the_channels_user() {
    let url = redis_url().await;
    let config = test_config(url.clone());
    let notifier = RedisNotifier::connect(config).await.unwrap();
    let user = UserId(31);
    let mut sub = notifier.subscribe(user).await.unwrap();
    let channel = notifier.channel(user);
    // The previous version's JSON, a header of a version to come, an unknown kind.
    for junk in [
        r#"{"id":1,"user":"a","recipient":"b","timestamp":"x","body":"hi"}"#,
        "v2 00000000000000ab message 1 0\n{}",
        "v1 00000000000000ab reaction 1 0\n{}",
    ] {
        let receivers: i64 = command(&url, &["PUBLISH", &channel, junk]).await;
        assert_eq!(receivers, 1);
        assert_eq!(next(&mut sub).await, Delivery::Gap, "{junk:?}");
    }
    // A gap notice of another node.
    let _: i64 = command(&url, &["PUBLISH", &channel, "v1 00000000000000ab gap - -\n"]).await;
    assert_eq!(next(&mut sub).await, Delivery::Gap);
    // A well-formed event from another node: its frame as is.
    let event = sentinel(5);
    let payload = format!("v1 00000000000000ab message 5 4\n{}", event.frame_str());
    let _: i64 = command(&url, &["PUBLISH", &channel, &payload]).await;
    match next(&mut sub).await {
        Delivery::Event { event: got, previous } => {
            assert_eq!(got, event);
            assert_eq!(previous, Some(Position(4)));
        }
        other => panic!("expected the event, got {other:?}"),
    }
    notifier.publish(&to(&[user]), &sentinel(6)).await.unwrap();
    assert_eq!(next_message(&mut sub).await.id, MessageId(6));
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
    let config = test_config(redis_url().await);
    let notifier = RedisNotifier::connect(config).await.unwrap();
    let mut sub = notifier.subscribe(UserId(1)).await.unwrap();
    drop(notifier);
    assert_eq!(tokio::time::timeout(PATIENCE, sub.recv()).await, Ok(None));
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
        subs.push((user.id, a.subscribe(user, None).await.unwrap()));
        subs.push((user.id, a.subscribe(user, None).await.unwrap()));
    }
    subs.push((people[3].id, b.subscribe(&people[3], None).await.unwrap()));
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
    let error = a.subscribe(&people[2], None).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "failing took {:?}",
        start.elapsed()
    );
    // Both users of the failed publish are owed a gap notice.
    assert_eq!(nb.gap_notices_owed(), 2);

    server.restart().await;
    // Every subscription hears of the gap first; user 3's connection on node B had the
    // message at once, from its own node.
    for (user, sub) in subs.iter_mut() {
        if *user == people[3].id {
            assert_eq!(next_message(sub).await.id, sent.message.id);
        }
        assert_eq!(next(sub).await, Delivery::Gap, "user {user:?}");
    }
    eventually("both nodes reconnected", || async {
        na.is_connected() && nb.is_connected()
    })
    .await;
    eventually("gap notices published", || async { nb.gap_notices_owed() == 0 }).await;

    // Subscriptions resume, on both nodes, for every user (a gap notice for users 1 and 3
    // may come first).
    let after = send(&b, &people[3], &people[1], "after").await;
    let also = send(&a, &people[2], &people[0], "also").await;
    for (user, sub) in subs.iter_mut() {
        let want = if *user == people[1].id || *user == people[3].id {
            after.id
        } else {
            also.id
        };
        assert_eq!(next_message_after_gaps(sub).await.id, want, "user {user:?}");
        only_gaps_ready(sub, &format!("user {user:?}"));
    }
    // A new connection subscribes again.
    let mut late = a.subscribe(&people[1], None).await.unwrap();
    let last = send(&b, &people[0], &people[1], "late").await;
    assert_eq!(next_message(&mut late).await.id, last.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_right_after_subscribe_returns_is_received() {
    let config = test_config(redis_url().await);
    let (na, nb) = (
        RedisNotifier::connect(config.clone()).await.unwrap(),
        RedisNotifier::connect(config).await.unwrap(),
    );
    // Fresh users each time, so every subscribe needs a new SUBSCRIBE on node B.
    for round in 0..100 {
        let user = UserId(1_000 + round);
        let mut sub = nb.subscribe(user).await.unwrap();
        na.publish(&to(&[user]), &sentinel(round)).await.unwrap();
        assert_eq!(next_message(&mut sub).await.id, MessageId(round));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_named_twice_is_notified_once() {
    let config = test_config(redis_url().await);
    let (na, nb) = (
        RedisNotifier::connect(config.clone()).await.unwrap(),
        RedisNotifier::connect(config).await.unwrap(),
    );
    let mut here = na.subscribe(UserId(5)).await.unwrap();
    let mut there = nb.subscribe(UserId(5)).await.unwrap();
    na.publish(&to(&[UserId(5), UserId(5)]), &sentinel(1))
        .await
        .unwrap();
    na.publish(&to(&[UserId(5)]), &sentinel(2)).await.unwrap();
    for sub in [&mut here, &mut there] {
        assert_eq!(next_message(sub).await.id, MessageId(1));
        assert_eq!(next_message(sub).await.id, MessageId(2));
    }
    na.publish(&[], &sentinel(3)).await.unwrap();
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
    let error = notifier
        .publish(&to(&[UserId(7)]), &sentinel(1))
        .await
        .unwrap_err();
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
    // This node's own subscription had it at once.
    assert_eq!(next_message(&mut sub).await.id, MessageId(1));
    assert_eq!(notifier.gap_notices_owed(), 1);
    eventually("the health check notices", || async { !notifier.is_connected() }).await;

    server.signal("CONT");
    // Redis may still deliver the frozen publish, and the gap notice: this node skips both,
    // its own.
    assert_eq!(next(&mut sub).await, Delivery::Gap);
    eventually("reconnected", || async { notifier.is_connected() }).await;
    notifier.publish(&to(&[UserId(7)]), &sentinel(2)).await.unwrap();
    assert_eq!(next_message(&mut sub).await.id, MessageId(2));
    eventually("gap notice published", || async {
        notifier.gap_notices_owed() == 0
    })
    .await;
    assert_eq!(sub.try_recv(), Ok(None));
}

/// `CLIENT PAUSE ... WRITE` holds every `PUBLISH` while the subscriber connections stay up
/// and keep answering their health checks: the publish times out, Redis runs it once the
/// pause ends, and the other node's subscription must still hear of a gap (the event alone
/// would not say that it came late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_times_out_while_subscribers_stay_up_is_a_gap_on_other_nodes() {
    let server = PrivateRedis::start().await;
    let config = RedisConfig {
        command_timeout: Duration::from_millis(300),
        health_check_interval: Duration::from_millis(100),
        ..test_config(server.url())
    };
    let na = RedisNotifier::connect(config.clone()).await.unwrap();
    let nb = RedisNotifier::connect(config).await.unwrap();
    let user = UserId(9);
    let mut there = nb.subscribe(user).await.unwrap();
    let mut here = na.subscribe(user).await.unwrap();

    let _: String = command(&server.url(), &["CLIENT", "PAUSE", "1500", "WRITE"]).await;
    let error = na.publish(&to(&[user]), &sentinel(1)).await.unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert_eq!(next_message(&mut here).await.id, MessageId(1));
    assert_eq!(na.gap_notices_owed(), 1);

    let mut late = 0;
    loop {
        match next(&mut there).await {
            Delivery::Gap => break,
            Delivery::Event { event, .. } if event.position() == Some(Position(1)) => late += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(late <= 1);
    assert!(nb.is_connected(), "the subscriber connection stayed up");
    eventually("gap notice published", || async { na.gap_notices_owed() == 0 }).await;
    na.publish(&to(&[user]), &sentinel(2)).await.unwrap();
    loop {
        // Gap notices whose PUBLISH timed out during the pause ran after it too.
        let id = next_message_after_gaps(&mut there).await.id;
        if id == MessageId(2) {
            break;
        }
        assert_eq!(id, MessageId(1), "only the paused publish may come late");
    }
    assert_eq!(next_message(&mut here).await.id, MessageId(2));
}

/// Issue 16: a server must start while Redis is down and connect once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_started_while_redis_is_down_connects_when_it_comes_back() {
    let mut server = PrivateRedis::start().await;
    let config = test_config(server.url());
    server.kill().await;
    // `connect` refuses; `connect_in_background` starts down.
    assert!(matches!(
        RedisNotifier::connect(config.clone()).await,
        Err(Error::Unavailable { .. })
    ));
    let notifier = RedisNotifier::connect_in_background(config.clone())
        .await
        .unwrap();
    assert!(!notifier.is_connected());
    assert!(matches!(
        notifier.subscribe(UserId(5)).await,
        Err(Error::Unavailable { .. })
    ));
    assert!(notifier.publish(&to(&[UserId(5)]), &sentinel(1)).await.is_err());

    server.restart().await;
    eventually("the notifier connects", || async { notifier.is_connected() }).await;
    let mut sub = notifier.subscribe(UserId(5)).await.unwrap();
    // Another node's publish arrives over Redis; the first publish after the outage may
    // still be failing while the publishing connection is made again.
    let other = RedisNotifier::connect(config).await.unwrap();
    other.publish(&to(&[UserId(5)]), &sentinel(2)).await.unwrap();
    assert_eq!(next_message_after_gaps(&mut sub).await.id, MessageId(2));
    eventually("this node publishes again", || async {
        notifier.publish(&to(&[UserId(5)]), &sentinel(3)).await.is_ok()
    })
    .await;
}

/// What the notifier counts (`transport="redis"`), read from a recorder local to this test's
/// thread: the notifier registers its handles when it connects, and its tasks run here too.
#[tokio::test]
async fn reconnects_gaps_and_failed_publishes_are_counted() {
    use chatcore::metrics::{
        NOTIFIER_GAPS_TOTAL, NOTIFIER_PUBLISH_FAILURES_TOTAL, NOTIFIER_RECONNECTS_TOTAL,
    };
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let mut server = PrivateRedis::start().await;
    let notifier = RedisNotifier::connect(test_config(server.url())).await.unwrap();
    let mut subscription = notifier.subscribe(UserId(1)).await.unwrap();

    server.kill().await;
    eventually("the notifier notices", || async { !notifier.is_connected() }).await;
    assert!(notifier.publish(&to(&[UserId(1)]), &sentinel(1)).await.is_err());
    server.restart().await;
    // The failed publish was still delivered here; then the reconnect's gap.
    assert!(matches!(next(&mut subscription).await, Delivery::Event { .. }));
    assert_eq!(next(&mut subscription).await, Delivery::Gap);

    let counters: HashMap<String, u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => {
                assert!(
                    key.key()
                        .labels()
                        .any(|l| l.key() == "transport" && l.value() == "redis")
                );
                Some((key.key().name().to_owned(), n))
            }
            _ => None,
        })
        .collect();
    assert_eq!(counters[NOTIFIER_PUBLISH_FAILURES_TOTAL], 1);
    assert_eq!(counters[NOTIFIER_RECONNECTS_TOTAL], 1);
    assert_eq!(counters[NOTIFIER_GAPS_TOTAL], 1, "one subscription was told");
}
