//! The notification transport trait, subscriptions, and the in-process transport.
//!
//! A transport carries [`Event`]s to every open connection of a user. Queues are bounded:
//! an event that finds a subscriber's queue full is dropped and replaced by one
//! [`Delivery::Gap`], instead of slowing the publisher or growing memory; the subscriber
//! catches up from storage.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use crate::event::{Event, EventKind, Position};
pub use crate::gap_debts::GapDebts;
use crate::metrics::NotifierMetrics;
use crate::{Result, UserId};

/// Who an event goes to, and where it sits in that user's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Recipient {
    /// The user whose connections receive the event.
    pub user: UserId,
    /// For a durable event: the position of this user's previous durable event
    /// ([`Position::START`] for their first). `None` for an event without a position.
    pub previous: Option<Position>,
}

impl Recipient {
    /// `user`, for an event without a position.
    pub fn ephemeral(user: UserId) -> Self {
        Self { user, previous: None }
    }
}

/// What a [`Subscription`] (or a [`crate::Feed`]) yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// An event for the subscribed user. `previous` is the position of the user's durable
    /// event before this one (see [`crate::event`]); a consumer that has not delivered it yet
    /// is missing events and reads them from storage. `None` for events without a position.
    Event {
        /// The event, rendered.
        event: Event,
        /// The user's previous durable position, for durable events.
        previous: Option<Position>,
    },
    /// Events may have been lost (the queue overflowed, the transport reconnected to its
    /// broker, a publish failed). The subscription goes on; the consumer catches up from
    /// storage after the last position it delivered. A gap may be reported ahead of events
    /// queued before it: a consumer that goes by positions handles both orders.
    Gap,
    /// Produced by a [`crate::Feed`], never by a notifier: the connection must close for
    /// this reason. Nothing follows.
    Closed(CloseReason),
}

/// Why a [`crate::Feed`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The login session the connection was opened with ended (logout, expiry, account
    /// removal).
    SessionEnded,
    /// The user opened more connections than [`crate::ChatConfig::max_connections_per_user`];
    /// this, their oldest, was closed.
    TooManyConnections,
    /// The transport ended the subscription (it was shut down).
    TransportClosed,
}

/// Carries events between the service and users' open connections.
///
/// Implementations: [`LocalNotifier`] (one process) and `chatcore-redis` (several). Every
/// implementation keeps these promises, which [`crate::notifier_conformance_tests!`] checks:
/// - **Subscribed means subscribed**: once `subscribe` has returned, every event published
///   afterwards to that user reaches the subscription (or a [`Delivery::Gap`] stands in for it).
/// - **Order per publisher**: events one task publishes to a user, one `publish` after the
///   other, arrive in that order. (Events of different publishers may arrive in any order;
///   [`Recipient::previous`] lets a consumer restore position order.)
/// - **No silent loss**: an event that cannot be queued (the subscription's queue is full)
///   or may not have reached every node (a failed publish, a broker reconnect) is replaced by
///   a [`Delivery::Gap`] on every subscription that may have missed it; the subscription
///   goes on.
/// - **Unchanged**: the event's frame and each recipient's `previous` arrive as published.
/// - **Once per user**: a user listed twice in one publish (a note to oneself) receives
///   the event once per subscription.
/// - **Drop unsubscribes**: dropping a [`Subscription`] releases everything held for it.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Delivers `event` to every current subscription of each recipient. Must not wait on
    /// slow subscribers. A broker that cannot be reached is [`crate::Error::Unavailable`];
    /// the affected subscriptions then get the event or a [`Delivery::Gap`] (trait docs).
    async fn publish(&self, recipients: &[Recipient], event: &Event) -> Result<()>;

    /// Subscribes one connection to `user`'s events. Dropping the subscription unsubscribes.
    async fn subscribe(&self, user: UserId) -> Result<Subscription>;

    /// Whether the transport can carry events now: connected and subscribed to its broker,
    /// so that a `subscribe` would succeed and a `publish` reach every node. A readiness
    /// probe (`/readyz` of `chatcore-axum`) asks it; it must answer at once from what the
    /// transport already knows (no round trip). The default, `true`, fits an in-process
    /// transport such as [`LocalNotifier`], which has no broker to lose; a transport with a
    /// connection reports its state (`chatcore-redis` and `chatcore-postgres` do).
    fn is_ready(&self) -> bool {
        true
    }
}

/// One connection's stream of [`Delivery`]s. Drop it to unsubscribe.
pub struct Subscription {
    receiver: mpsc::Receiver<Delivery>,
    overflowed: Arc<AtomicBool>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("overflowed", &self.overflowed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next delivery. `None` when the transport closed the subscription.
    pub async fn recv(&mut self) -> Option<Delivery> {
        if self.overflowed.swap(false, Ordering::AcqRel) {
            return Some(Delivery::Gap);
        }
        self.receiver.recv().await
    }

    /// Like [`Subscription::recv`] without waiting: `Ok(None)` when nothing is queued now,
    /// `Err(())` when the subscription has ended.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&mut self) -> std::result::Result<Option<Delivery>, ()> {
        if self.overflowed.swap(false, Ordering::AcqRel) {
            return Ok(Some(Delivery::Gap));
        }
        match self.receiver.try_recv() {
            Ok(delivery) => Ok(Some(delivery)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(()),
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
    overflowed: Arc<AtomicBool>,
    /// Counts the gaps this handle's overflows owe (its table's, else a no-op).
    overflows: ::metrics::Counter,
}

impl SubscriberHandle {
    /// A transport-unique id for this subscription.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues `delivery` without waiting. When the queue is full the delivery is dropped and
    /// the subscription reports one [`Delivery::Gap`] next. Returns `false` only when the
    /// subscriber is gone (the transport then drops this handle).
    pub fn offer(&self, delivery: Delivery) -> bool {
        match self.sender.try_send(delivery) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.overflowed.swap(true, Ordering::AcqRel) {
                    self.overflows.increment(1);
                }
                true
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
/// assert!(handle.offer(Delivery::Gap)); // full: dropped, a gap is owed
/// drop(handle);
/// assert_eq!(sub.recv().await, Some(Delivery::Gap)); // the owed gap
/// assert_eq!(sub.recv().await, Some(Delivery::Gap)); // the queued one
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
    let overflowed = Arc::new(AtomicBool::new(false));
    (
        SubscriberHandle {
            id,
            sender,
            overflowed: overflowed.clone(),
            overflows: ::metrics::Counter::noop(),
        },
        Subscription {
            receiver,
            overflowed,
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
    metrics: NotifierMetrics,
}

impl SubscriberTable {
    /// A table whose subscriptions queue up to `capacity` deliveries each, counting nothing.
    pub fn new(capacity: usize) -> Self {
        Self::with_metrics(capacity, NotifierMetrics::noop())
    }

    /// A table whose subscriptions queue up to `capacity` deliveries each, counting queue
    /// overflows and the gaps it delivers into `metrics` (its transport's).
    pub fn with_metrics(capacity: usize, metrics: NotifierMetrics) -> Self {
        let shard_count =
            (std::thread::available_parallelism().map_or(4, |n| n.get()) * 16).next_power_of_two();
        Self {
            shards: (0..shard_count).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            next_id: AtomicU64::new(1),
            capacity,
            metrics,
        }
    }

    fn shard(&self, user: UserId) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(user) as usize) & (self.shards.len() - 1)]
    }

    /// Adds a subscription for `user`. Returns it, and whether it is the user's first
    /// (a cross-process transport subscribes to its broker then). `on_last_dropped` runs
    /// when dropping this subscription leaves the user with none; a transport should still
    /// check [`SubscriberTable::subscriber_count`] before unsubscribing, since a new
    /// subscription may have raced with the drop.
    pub fn subscribe(
        self: &Arc<Self>,
        user: UserId,
        on_last_dropped: impl FnOnce() + Send + Sync + 'static,
    ) -> (Subscription, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let table = Arc::downgrade(self);
        let (mut handle, subscription) = subscription_channel(id, self.capacity, move || {
            if let Some(table) = table.upgrade()
                && table.remove(user, id)
            {
                on_last_dropped();
            }
        });
        handle.overflows = self.metrics.overflows.clone();
        let mut shard = lock(self.shard(user));
        let handles = shard.entry(user).or_default();
        handles.push(handle);
        (subscription, handles.len() == 1)
    }

    /// Removes subscription `id` of `user`; `true` when the user has no subscription left.
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

    /// Offers `delivery` to each subscription of `user` (a full queue owes a gap instead);
    /// drops those that are gone. Returns how many subscriptions remain.
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
        if matches!(delivery, Delivery::Gap) {
            self.metrics.gaps(delivered);
        }
        delivered
    }

    /// Offers `delivery` to every subscription of every user (e.g. [`Delivery::Gap`] after a
    /// broker reconnect).
    pub fn deliver_all(&self, delivery: &Delivery) {
        let mut delivered = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.retain(|_, handles| {
                handles.retain(|h| h.offer(delivery.clone()));
                delivered += handles.len();
                !handles.is_empty()
            });
        }
        if matches!(delivery, Delivery::Gap) {
            self.metrics.gaps(delivered);
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

    /// A notifier whose subscriptions queue up to `queue_capacity` events each. Registers
    /// its metric handles (transport `local`) with the recorder installed now.
    pub fn new(queue_capacity: usize) -> Self {
        Self {
            table: Arc::new(SubscriberTable::with_metrics(
                queue_capacity,
                NotifierMetrics::register("local"),
            )),
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
    async fn publish(&self, recipients: &[Recipient], event: &Event) -> Result<()> {
        for (i, recipient) in recipients.iter().enumerate() {
            // A user named twice (a note to oneself) is notified once.
            if recipients[..i].iter().any(|r| r.user == recipient.user) {
                continue;
            }
            let delivery = Delivery::Event {
                event: event.clone(),
                previous: recipient.previous,
            };
            self.table.deliver(recipient.user, &delivery);
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
    use crate::{Message, MessageId, Username, now_micros};

    fn event(id: i64) -> Event {
        Event::message(&Message {
            id: MessageId(id),
            sender: Username::parse("a").unwrap(),
            recipient: Username::parse("b").unwrap(),
            created_at: now_micros(),
            body: "x".into(),
            edited: None,
            deleted: false,
        })
    }

    fn to(user: i64) -> [Recipient; 1] {
        [Recipient {
            user: UserId(user),
            previous: Some(Position::START),
        }]
    }

    fn position(delivery: Option<Delivery>) -> Option<Position> {
        match delivery {
            Some(Delivery::Event { event, .. }) => event.position(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_subscription_of_a_user_gets_each_event_once() {
        let n = LocalNotifier::new(8);
        let mut a1 = n.subscribe(UserId(1)).await.unwrap();
        let mut a2 = n.subscribe(UserId(1)).await.unwrap();
        let mut other = n.subscribe(UserId(2)).await.unwrap();
        n.publish(&to(1), &event(5)).await.unwrap();
        for sub in [&mut a1, &mut a2] {
            assert_eq!(position(sub.recv().await), Some(Position(5)));
        }
        assert_eq!(a1.try_recv(), Ok(None));
        assert_eq!(a2.try_recv(), Ok(None));
        assert_eq!(other.try_recv(), Ok(None));
    }

    #[tokio::test]
    async fn a_full_queue_owes_one_gap_and_the_subscription_goes_on() {
        let n = LocalNotifier::new(2);
        let mut slow = n.subscribe(UserId(1)).await.unwrap();
        let mut fast = n.subscribe(UserId(1)).await.unwrap();
        for i in 1..=5 {
            n.publish(&to(1), &event(i)).await.unwrap();
            assert_eq!(position(fast.recv().await), Some(Position(i)));
        }
        assert_eq!(slow.recv().await, Some(Delivery::Gap));
        assert_eq!(position(slow.recv().await), Some(Position(1)));
        assert_eq!(position(slow.recv().await), Some(Position(2)));
        assert_eq!(slow.try_recv(), Ok(None));
        n.publish(&to(1), &event(6)).await.unwrap();
        assert_eq!(position(slow.recv().await), Some(Position(6)));
        assert_eq!(n.subscriber_count(UserId(1)), 2);
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
}
