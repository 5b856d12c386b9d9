//! The notification transport trait, subscriptions, and the in-process transport.
//!
//! A transport carries [`Event`]s to every open connection of a user. Queues are bounded:
//! a subscriber that falls behind is cut off with [`Delivery::Lagged`] instead of slowing
//! the publisher or growing memory; it reconnects and catches up from storage.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::{Message, Result, UserId};

/// Something that happened that a user's connections must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message the user sent or received was stored.
    Message(Arc<Message>),
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// An event for the subscribed user.
    Event(Event),
    /// Events may have been lost (e.g. the transport reconnected to its broker). The
    /// subscription goes on; the consumer should catch up from storage.
    Gap,
    /// The subscriber fell behind and was cut off; nothing more follows. The consumer
    /// should disconnect its client, which reconnects and catches up.
    Lagged,
}

/// Carries events between the service and users' open connections.
///
/// Implementations: [`LocalNotifier`] (one process) and `chatcore-redis` (several).
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Delivers `event` to every current subscription of each user in `users`. Must not wait
    /// on slow subscribers. An unreachable broker is [`crate::Error::Unavailable`].
    async fn publish(&self, users: &[UserId], event: &Event) -> Result<()>;

    /// Subscribes one connection to `user`'s events. Dropping the subscription unsubscribes.
    async fn subscribe(&self, user: UserId) -> Result<Subscription>;
}

/// One connection's stream of [`Delivery`]s. Drop it to unsubscribe.
pub struct Subscription {
    receiver: mpsc::Receiver<Delivery>,
    lagged: Arc<AtomicBool>,
    lag_reported: bool,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("lagged", &self.lagged.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next delivery. `None` when the transport closed the subscription (after
    /// [`Delivery::Lagged`] if it was cut off).
    pub async fn recv(&mut self) -> Option<Delivery> {
        match self.receiver.recv().await {
            Some(delivery) => Some(delivery),
            None => self.end(),
        }
    }

    /// Like [`Subscription::recv`] without waiting: `Ok(None)` when nothing is queued now,
    /// `Err(())` when the subscription has ended.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&mut self) -> std::result::Result<Option<Delivery>, ()> {
        match self.receiver.try_recv() {
            Ok(delivery) => Ok(Some(delivery)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => self.end().map(Some).ok_or(()),
        }
    }

    fn end(&mut self) -> Option<Delivery> {
        if self.lagged.load(Ordering::Acquire) && !self.lag_reported {
            self.lag_reported = true;
            Some(Delivery::Lagged)
        } else {
            None
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(on_drop) = self.on_drop.take() {
            on_drop();
        }
    }
}

/// The publishing end of one subscription, kept by a transport in its routing table.
#[derive(Debug, Clone)]
pub struct SubscriberHandle {
    id: u64,
    sender: mpsc::Sender<Delivery>,
    lagged: Arc<AtomicBool>,
}

impl SubscriberHandle {
    /// A transport-unique id for this subscription.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues `delivery` without waiting. Returns `false` when the subscriber is gone or
    /// has just been cut off because its queue is full; the transport then drops this handle,
    /// which ends the subscription with [`Delivery::Lagged`].
    pub fn offer(&self, delivery: Delivery) -> bool {
        match self.sender.try_send(delivery) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether the subscriber has dropped its [`Subscription`].
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// Makes a bounded subscription queue of `capacity` deliveries: the transport keeps the
/// handle, the consumer gets the subscription. `on_drop` runs when the consumer drops the
/// subscription (a transport removes the handle from its routing table there).
///
/// ```
/// # tokio_test_block_on(async {
/// use chatcore::notify::{subscription_channel, Delivery};
/// let (handle, mut sub) = subscription_channel(7, 1, || ());
/// assert!(handle.offer(Delivery::Gap));
/// assert!(!handle.offer(Delivery::Gap)); // full: cut off
/// drop(handle);
/// assert_eq!(sub.recv().await, Some(Delivery::Gap));
/// assert_eq!(sub.recv().await, Some(Delivery::Lagged));
/// assert_eq!(sub.recv().await, None);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let waker = std::task::Waker::noop();
/// #     let mut cx = std::task::Context::from_waker(&waker);
/// #     let mut f = std::pin::pin!(f);
/// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
/// # }
/// ```
pub fn subscription_channel(
    id: u64,
    capacity: usize,
    on_drop: impl FnOnce() + Send + Sync + 'static,
) -> (SubscriberHandle, Subscription) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let lagged = Arc::new(AtomicBool::new(false));
    (
        SubscriberHandle {
            id,
            sender,
            lagged: lagged.clone(),
        },
        Subscription {
            receiver,
            lagged,
            lag_reported: false,
            on_drop: Some(Box::new(on_drop)),
        },
    )
}

type Shard = HashMap<UserId, Vec<SubscriberHandle>>;

/// Routes deliveries to local subscribers by user, sharded so that publishers to different
/// users rarely touch the same lock, and no lock is held across an await.
///
/// [`LocalNotifier`] is this table alone; a cross-process transport keeps one per process
/// for its local fan-out.
#[derive(Debug)]
pub struct SubscriberTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    next_id: AtomicU64,
    capacity: usize,
}

impl SubscriberTable {
    /// A table whose subscriptions queue up to `capacity` deliveries each.
    pub fn new(capacity: usize) -> Self {
        let shard_count =
            (std::thread::available_parallelism().map_or(4, |n| n.get()) * 16).next_power_of_two();
        Self {
            shards: (0..shard_count).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            next_id: AtomicU64::new(1),
            capacity,
        }
    }

    fn shard(&self, user: UserId) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(user) as usize) & (self.shards.len() - 1)]
    }

    /// Adds a subscription for `user`. Returns it, and whether it is the user's first
    /// (a cross-process transport subscribes to its broker then). `on_last_dropped` runs
    /// when dropping this subscription leaves the user with none, also when it had been cut
    /// off for lagging; if several were cut off it may run more than once for one user, so a
    /// transport should check [`SubscriberTable::subscriber_count`] before unsubscribing.
    pub fn subscribe(
        self: &Arc<Self>,
        user: UserId,
        on_last_dropped: impl FnOnce() + Send + Sync + 'static,
    ) -> (Subscription, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let table = Arc::downgrade(self);
        let (handle, subscription) = subscription_channel(id, self.capacity, move || {
            if let Some(table) = table.upgrade()
                && table.remove(user, id)
            {
                on_last_dropped();
            }
        });
        let mut shard = lock(self.shard(user));
        let handles = shard.entry(user).or_default();
        handles.push(handle);
        (subscription, handles.len() == 1)
    }

    /// Removes subscription `id` of `user`; `true` when the user has no subscription left,
    /// including when a publisher had already dropped this one for falling behind.
    fn remove(&self, user: UserId, id: u64) -> bool {
        let mut shard = lock(self.shard(user));
        let Some(handles) = shard.get_mut(&user) else {
            return true;
        };
        handles.retain(|h| h.id != id);
        if handles.is_empty() {
            shard.remove(&user);
            true
        } else {
            false
        }
    }

    /// Offers `delivery` to each subscription of `user`; drops those that are gone or full.
    /// Returns how many subscriptions took it.
    pub fn deliver(&self, user: UserId, delivery: &Delivery) -> usize {
        let mut shard = lock(self.shard(user));
        let Some(handles) = shard.get_mut(&user) else {
            return 0;
        };
        handles.retain(|h| h.offer(delivery.clone()));
        let delivered = handles.len();
        if delivered == 0 {
            shard.remove(&user);
        }
        delivered
    }

    /// Offers `delivery` to every subscription of every user (e.g. [`Delivery::Gap`] after a
    /// broker reconnect).
    pub fn deliver_all(&self, delivery: &Delivery) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.retain(|_, handles| {
                handles.retain(|h| h.offer(delivery.clone()));
                !handles.is_empty()
            });
        }
    }

    /// The users with at least one subscription.
    pub fn users(&self) -> Vec<UserId> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).keys().copied().collect::<Vec<_>>())
            .collect()
    }

    /// How many subscriptions `user` has.
    pub fn subscriber_count(&self, user: UserId) -> usize {
        lock(self.shard(user)).get(&user).map_or(0, Vec::len)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The critical sections cannot leave the map inconsistent, so a poisoned lock is safe to use.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The in-process [`Notifier`]: all connections live in this process.
///
/// ```
/// use chatcore::{LocalNotifier, Notifier, UserId};
/// let notifier = LocalNotifier::new(256);
/// assert_eq!(notifier.subscriber_count(UserId(1)), 0);
/// ```
#[derive(Debug, Clone)]
pub struct LocalNotifier {
    table: Arc<SubscriberTable>,
}

impl LocalNotifier {
    /// Default per-subscription queue length.
    pub const DEFAULT_QUEUE: usize = 256;

    /// A notifier whose subscriptions queue up to `queue_capacity` events each.
    pub fn new(queue_capacity: usize) -> Self {
        Self {
            table: Arc::new(SubscriberTable::new(queue_capacity)),
        }
    }

    /// How many subscriptions `user` has now.
    pub fn subscriber_count(&self, user: UserId) -> usize {
        self.table.subscriber_count(user)
    }
}

impl Default for LocalNotifier {
    fn default() -> Self {
        Self::new(Self::DEFAULT_QUEUE)
    }
}

#[async_trait]
impl Notifier for LocalNotifier {
    async fn publish(&self, users: &[UserId], event: &Event) -> Result<()> {
        let delivery = Delivery::Event(event.clone());
        for user in users {
            self.table.deliver(*user, &delivery);
        }
        Ok(())
    }

    async fn subscribe(&self, user: UserId) -> Result<Subscription> {
        Ok(self.table.subscribe(user, || ()).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MessageId, Username, now_micros};

    fn event(id: i64) -> Event {
        Event::Message(Arc::new(Message {
            id: MessageId(id),
            sender: Username::parse("a").unwrap(),
            recipient: Username::parse("b").unwrap(),
            created_at: now_micros(),
            body: "x".into(),
        }))
    }

    #[tokio::test]
    async fn every_subscription_of_a_user_gets_each_event_once() {
        let n = LocalNotifier::new(8);
        let mut a1 = n.subscribe(UserId(1)).await.unwrap();
        let mut a2 = n.subscribe(UserId(1)).await.unwrap();
        let mut other = n.subscribe(UserId(2)).await.unwrap();
        n.publish(&[UserId(1)], &event(5)).await.unwrap();
        for sub in [&mut a1, &mut a2] {
            match sub.recv().await {
                Some(Delivery::Event(Event::Message(m))) => assert_eq!(m.id, MessageId(5)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(a1.try_recv(), Ok(None));
        assert_eq!(a2.try_recv(), Ok(None));
        assert_eq!(other.try_recv(), Ok(None));
    }

    #[tokio::test]
    async fn slow_subscriber_is_cut_off_without_blocking_others() {
        let n = LocalNotifier::new(2);
        let mut slow = n.subscribe(UserId(1)).await.unwrap();
        let mut fast = n.subscribe(UserId(1)).await.unwrap();
        for i in 0..5 {
            n.publish(&[UserId(1)], &event(i)).await.unwrap();
            while let Ok(Some(_)) = fast.try_recv() {}
        }
        let mut got = 0;
        loop {
            match slow.recv().await {
                Some(Delivery::Event(_)) => got += 1,
                Some(Delivery::Lagged) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, 2);
        assert_eq!(slow.recv().await, None);
        assert_eq!(n.subscriber_count(UserId(1)), 1);
    }

    #[tokio::test]
    async fn dropping_unsubscribes() {
        let n = LocalNotifier::new(2);
        let s = n.subscribe(UserId(3)).await.unwrap();
        let s2 = n.subscribe(UserId(3)).await.unwrap();
        assert_eq!(n.subscriber_count(UserId(3)), 2);
        drop(s);
        assert_eq!(n.subscriber_count(UserId(3)), 1);
        drop(s2);
        assert_eq!(n.subscriber_count(UserId(3)), 0);
        assert!(n.table.users().is_empty());
    }

    #[tokio::test]
    async fn last_drop_hook_runs_once() {
        let table = Arc::new(SubscriberTable::new(4));
        let fired = Arc::new(AtomicU64::new(0));
        let f1 = fired.clone();
        let (s1, first) = table.subscribe(UserId(1), move || {
            f1.fetch_add(1, Ordering::SeqCst);
        });
        assert!(first);
        let f2 = fired.clone();
        let (s2, first) = table.subscribe(UserId(1), move || {
            f2.fetch_add(1, Ordering::SeqCst);
        });
        assert!(!first);
        drop(s1);
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        drop(s2);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn last_drop_hook_runs_for_a_subscription_cut_off_for_lagging() {
        let table = Arc::new(SubscriberTable::new(1));
        let fired = Arc::new(AtomicU64::new(0));
        let f = fired.clone();
        let (mut slow, _) = table.subscribe(UserId(4), move || {
            f.fetch_add(1, Ordering::SeqCst);
        });
        table.deliver(UserId(4), &Delivery::Gap);
        table.deliver(UserId(4), &Delivery::Gap); // full: cut off
        assert_eq!(table.subscriber_count(UserId(4)), 0);
        assert_eq!(slow.recv().await, Some(Delivery::Gap));
        assert_eq!(slow.recv().await, Some(Delivery::Lagged));
        drop(slow);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }
}
