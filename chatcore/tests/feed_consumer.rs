//! [`chatcore::FeedConsumer`] over the in-memory store: every event once handled, in order,
//! retried after failures, resumed from the stored checkpoint, stopped by its shutdown signal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chatcore::store::{
    BlockQuery, Changed, InboxPage, InboxRequest, Inserted, MarkedRead, MessageChange, MessagePage,
    PageRequest, UserQuery,
};
use chatcore::{
    BoxError, Error, FeedConsumer, FeedConsumerConfig, FeedHandler, MemoryStore, Message, MessageId,
    NewMessage, Position, Store, StoredEvent, User, UserId, Username,
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

/// A [`MemoryStore`] whose feed calls fail on demand, as a database that is down would.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    /// The next this many reads (`load_checkpoint`, `feed_after`) fail.
    failing_reads: AtomicUsize,
    /// The next this many `save_checkpoint` calls fail.
    failing_saves: AtomicUsize,
}

fn take_failure(counter: &AtomicUsize) -> chatcore::Result<()> {
    match counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
        Ok(_) => Err(Error::storage_unavailable("injected outage")),
        Err(_) => Ok(()),
    }
}

#[async_trait]
impl Store for Flaky {
    async fn create_user(&self, username: &Username) -> chatcore::Result<User> {
        self.inner.create_user(username).await
    }
    async fn find_user(&self, username: &Username) -> chatcore::Result<Option<User>> {
        self.inner.find_user(username).await
    }
    async fn list_users(&self, query: &UserQuery) -> chatcore::Result<Vec<User>> {
        self.inner.list_users(query).await
    }
    async fn insert_message(&self, message: NewMessage) -> chatcore::Result<Inserted> {
        self.inner.insert_message(message).await
    }
    async fn message_for(&self, viewer: UserId, id: MessageId) -> chatcore::Result<Option<Message>> {
        self.inner.message_for(viewer, id).await
    }
    async fn change_message(
        &self,
        sender: UserId,
        id: MessageId,
        change: &MessageChange,
    ) -> chatcore::Result<Changed> {
        self.inner.change_message(sender, id, change).await
    }
    async fn conversation_page(
        &self,
        viewer: UserId,
        other: &Username,
        page: &PageRequest,
    ) -> chatcore::Result<MessagePage> {
        self.inner.conversation_page(viewer, other, page).await
    }
    async fn user_messages(&self, user: UserId, page: &PageRequest) -> chatcore::Result<MessagePage> {
        self.inner.user_messages(user, page).await
    }
    async fn messages_after(
        &self,
        user: UserId,
        after: MessageId,
        limit: u32,
    ) -> chatcore::Result<Vec<Message>> {
        self.inner.messages_after(user, after, limit).await
    }
    async fn latest_position(&self, user: UserId) -> chatcore::Result<Position> {
        self.inner.latest_position(user).await
    }
    async fn events_after(
        &self,
        user: UserId,
        after: Position,
        limit: u32,
    ) -> chatcore::Result<Vec<StoredEvent>> {
        self.inner.events_after(user, after, limit).await
    }
    async fn inbox(&self, user: UserId, request: &InboxRequest) -> chatcore::Result<InboxPage> {
        self.inner.inbox(user, request).await
    }
    async fn mark_read(
        &self,
        reader: &User,
        peer: &Username,
        up_to: MessageId,
    ) -> chatcore::Result<MarkedRead> {
        self.inner.mark_read(reader, peer, up_to).await
    }
    async fn set_block(&self, blocker: UserId, blocked: &Username, on: bool) -> chatcore::Result<User> {
        self.inner.set_block(blocker, blocked, on).await
    }
    async fn blocked_users(&self, user: UserId, query: &BlockQuery) -> chatcore::Result<Vec<User>> {
        self.inner.blocked_users(user, query).await
    }
    async fn reachable_peer(&self, user: UserId, peer: &Username) -> chatcore::Result<Option<UserId>> {
        self.inner.reachable_peer(user, peer).await
    }
    async fn conversation_peers(&self, user: UserId, among: &[UserId]) -> chatcore::Result<Vec<UserId>> {
        self.inner.conversation_peers(user, among).await
    }
    async fn feed_after(&self, after: Position, limit: u32) -> chatcore::Result<Vec<StoredEvent>> {
        take_failure(&self.failing_reads)?;
        self.inner.feed_after(after, limit).await
    }
    async fn load_checkpoint(&self, name: &str) -> chatcore::Result<Position> {
        take_failure(&self.failing_reads)?;
        self.inner.load_checkpoint(name).await
    }
    async fn save_checkpoint(&self, name: &str, position: Position) -> chatcore::Result<()> {
        take_failure(&self.failing_saves)?;
        self.inner.save_checkpoint(name, position).await
    }
    async fn remove_user(&self, user: UserId) -> chatcore::Result<()> {
        self.inner.remove_user(user).await
    }
    async fn delete_sent_messages(
        &self,
        sender: UserId,
        after: MessageId,
        limit: u32,
    ) -> chatcore::Result<Vec<chatcore::store::Changed>> {
        self.inner.delete_sent_messages(sender, after, limit).await
    }
}

/// Store failures are retried like the handler's: failed reads hand nothing, a failed save
/// hands the same batch again (at least once), and in the end every event was handled, in
/// order, and the checkpoint is past the last.
#[tokio::test]
async fn store_failures_are_retried_and_a_failed_save_hands_the_batch_again() {
    let store = Arc::new(Flaky::default());
    let alice = user(&store.inner, "alice").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(send(&store.inner, &alice, &alice, &format!("{i}")).await);
    }
    // Loading the checkpoint fails twice and the first read of the feed once; the first save
    // fails once.
    store.failing_reads.store(3, Ordering::SeqCst);
    store.failing_saves.store(1, Ordering::SeqCst);
    let handler = Recorder::default();
    let consumer = FeedConsumer::new(store.clone(), config("flaky")).unwrap();
    let last = *ids.last().unwrap();
    let caught_up = {
        let store = store.clone();
        async move {
            while store.inner.load_checkpoint("flaky").await.unwrap().0 < last {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    consumer.run(&handler, caught_up).await;
    // Batches of 7: the first one twice (its save failed), then the rest.
    let mut expected = ids[..7].to_vec();
    expected.extend_from_slice(&ids);
    assert_eq!(*handler.handled.lock().unwrap(), expected);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
    assert_eq!(store.failing_reads.load(Ordering::SeqCst), 0);
    assert_eq!(store.failing_saves.load(Ordering::SeqCst), 0);
}
