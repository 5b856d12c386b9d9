//! The conformance suite every [`Notifier`] runs (feature `conformance`): it checks the
//! promises listed on the trait.
//!
//! A transport describes how to set it up with a [`NotifierFixture`], and runs the suite
//! with one line in a test file:
//!
//! ```
//! use std::sync::Arc;
//! use chatcore::LocalNotifier;
//! use chatcore::notifier_conformance::{Node, NotifierFixture};
//!
//! struct Local;
//!
//! #[async_trait::async_trait]
//! impl NotifierFixture for Local {
//!     async fn nodes(&self, count: usize, queue_capacity: usize) -> Vec<Node> {
//!         assert_eq!(count, 1, "an in-process notifier is one node");
//!         let notifier = LocalNotifier::new(queue_capacity);
//!         let counted = notifier.clone();
//!         vec![Node::new(notifier).with_subscriber_count(move |user| counted.subscriber_count(user))]
//!     }
//! }
//!
//! chatcore::notifier_conformance_tests!(Local);
//! # fn main() {}
//! ```
//!
//! The macro has four forms, by what the transport can do; each generates only the tests
//! that apply:
//! - `notifier_conformance_tests!(fixture)`: the cases every notifier passes, on one node;
//! - `notifier_conformance_tests!(fixture, multi_node)`: the same cases with subscriptions
//!   and publishers on two nodes of one deployment, plus [`events_cross_nodes`];
//! - `notifier_conformance_tests!(fixture, outage)` and
//!   `notifier_conformance_tests!(fixture, multi_node, outage)`: plus
//!   [`publish_failure_is_signalled`], for a fixture whose
//!   [`NotifierFixture::break_publishing`] can break the transport.
//!
//! `fixture` is an expression evaluated once in each generated test (so each test has a
//! deployment of its own). Each test is a `#[tokio::test(flavor = "multi_thread")]`, so the
//! calling crate needs `tokio` (features `macros`, `rt-multi-thread`) as a dev-dependency,
//! and `async-trait` to implement the fixture.
//!
//! Waiting for a delivery is bounded by [`PATIENCE`], only as a failure bound: no test
//! sleeps to let something happen.
//!
//! The cases read one subscription while another of the same user on the same node is left
//! unread, and assume that both have been offered an event once one of them received it
//! (as [`crate::notify::SubscriberTable`] does).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::event::{EventKind, SessionId};
use crate::notify::{Delivery, Event, Notifier, Position, Recipient, Subscription};
use crate::{Error, Message, MessageId, UserId, Username, now_micros};

/// The longest a case waits for a delivery before it fails.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// One node of a deployment: a notifier, and how to count its subscriptions if it can.
#[derive(Clone)]
pub struct Node {
    /// The node's notifier.
    pub notifier: Arc<dyn Notifier>,
    subscriber_count: Option<Arc<dyn Fn(UserId) -> usize + Send + Sync>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("counts_subscribers", &self.subscriber_count.is_some())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node around `notifier`.
    pub fn new(notifier: impl Notifier) -> Self {
        Self::shared(Arc::new(notifier))
    }

    /// A node around a shared `notifier`.
    pub fn shared(notifier: Arc<dyn Notifier>) -> Self {
        Self {
            notifier,
            subscriber_count: None,
        }
    }

    /// Lets the suite check that dropping a subscription releases it: `count(user)` is how
    /// many subscriptions `user` has on this node now. It must count a drop at once.
    pub fn with_subscriber_count(mut self, count: impl Fn(UserId) -> usize + Send + Sync + 'static) -> Self {
        self.subscriber_count = Some(Arc::new(count));
        self
    }

    /// How many subscriptions `user` has on this node, when the node can tell.
    pub fn subscriber_count(&self, user: UserId) -> Option<usize> {
        self.subscriber_count.as_ref().map(|count| count(user))
    }
}

/// How the suite sets up a transport. Each generated test evaluates the fixture expression
/// once and calls [`NotifierFixture::nodes`] once.
#[async_trait]
pub trait NotifierFixture: Send + Sync {
    /// `count` nodes of one deployment that no other test shares: each delivers to its own
    /// subscriptions the events any of them publishes. Each subscription queues up to
    /// `queue_capacity` deliveries. `count` is 1 unless the macro was given `multi_node`.
    async fn nodes(&self, count: usize, queue_capacity: usize) -> Vec<Node>;

    /// Breaks publishing on every node of the deployment, until
    /// [`NotifierFixture::restore_publishing`], while subscriptions stay connected: a
    /// `publish` must fail as when the broker cannot be reached. Returns `false` when this
    /// transport cannot fail (the default); only a fixture that returns `true` may be given
    /// to the `outage` forms of the macro.
    async fn break_publishing(&self) -> bool {
        false
    }

    /// Undoes [`NotifierFixture::break_publishing`]: publishing works once this returns.
    async fn restore_publishing(&self) {}
}

/// Runs one `#[tokio::test]` per conformance case against the deployments that `$fixture`
/// (an expression whose value implements [`NotifierFixture`]) sets up. See the module docs
/// ([`crate::notifier_conformance`]) for the forms.
#[macro_export]
macro_rules! notifier_conformance_tests {
    (@cases $fixture:expr, $nodes:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture;
                $crate::notifier_conformance::$case(&fixture, $nodes).await;
            }
        )*
    };
    (@always $fixture:expr, $nodes:expr) => {
        $crate::notifier_conformance_tests!(@cases $fixture, $nodes;
            subscribed_means_subscribed,
            order_per_publisher,
            frames_and_previous_arrive_unchanged,
            overflow_yields_a_gap_and_the_subscription_goes_on,
            dropping_unsubscribes,
            a_user_listed_twice_gets_the_event_once,
            every_subscription_of_the_user_and_no_other_gets_the_event,
        );
    };
    ($fixture:expr) => {
        $crate::notifier_conformance_tests!(@always $fixture, 1);
    };
    ($fixture:expr, outage $(,)?) => {
        $crate::notifier_conformance_tests!(@always $fixture, 1);
        $crate::notifier_conformance_tests!(@cases $fixture, 1; publish_failure_is_signalled);
    };
    ($fixture:expr, multi_node $(,)?) => {
        $crate::notifier_conformance_tests!(@always $fixture, 2);
        $crate::notifier_conformance_tests!(@cases $fixture, 2; events_cross_nodes);
    };
    ($fixture:expr, multi_node, outage $(,)?) => {
        $crate::notifier_conformance_tests!(@always $fixture, 2);
        $crate::notifier_conformance_tests!(@cases $fixture, 2;
            events_cross_nodes,
            publish_failure_is_signalled,
        );
    };
}

/// A message event at `position` (its message id).
fn event(position: i64) -> Event {
    Event::message(&Message {
        id: MessageId(position),
        sender: Username::parse("alice").expect("valid username"),
        recipient: Username::parse("bob").expect("valid username"),
        created_at: now_micros(),
        body: format!("event {position}"),
        edited: None,
        deleted: false,
    })
}

fn to(user: UserId, previous: i64) -> Recipient {
    Recipient {
        user,
        previous: Some(Position(previous)),
    }
}

async fn nodes(fixture: &dyn NotifierFixture, count: usize, queue_capacity: usize) -> Vec<Node> {
    let nodes = fixture.nodes(count, queue_capacity).await;
    assert_eq!(nodes.len(), count, "the fixture made the wrong number of nodes");
    nodes
}

async fn subscribe(node: &Node, user: UserId) -> Subscription {
    node.notifier
        .subscribe(user)
        .await
        .unwrap_or_else(|e| panic!("subscribe {user:?}: {e}"))
}

async fn publish(node: &Node, recipients: &[Recipient], event: &Event) {
    node.notifier
        .publish(recipients, event)
        .await
        .unwrap_or_else(|e| panic!("publish {:?}: {e}", event.position()));
}

/// The next delivery, within [`PATIENCE`].
async fn next(sub: &mut Subscription, what: &str) -> Delivery {
    match tokio::time::timeout(PATIENCE, sub.recv()).await {
        Ok(Some(delivery)) => delivery,
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: nothing delivered within {PATIENCE:?}"),
    }
}

/// The next delivery, which must be an event; returns it with its `previous`.
async fn next_event(sub: &mut Subscription, what: &str) -> (Event, Option<Position>) {
    match next(sub, what).await {
        Delivery::Event { event, previous } => (event, previous),
        other => panic!("{what}: expected an event, got {other:?}"),
    }
}

/// The next delivery must be `want`, with `previous`.
async fn expect(sub: &mut Subscription, want: &Event, previous: Option<Position>, what: &str) {
    let (event, got_previous) = next_event(sub, what).await;
    assert_eq!(event, *want, "{what}: wrong event");
    assert_eq!(got_previous, previous, "{what}: wrong previous");
}

fn position(event: &Event) -> i64 {
    event.position().expect("a message event has a position").0
}

/// Once `subscribe` has returned, an event published right away reaches the subscription,
/// whichever node publishes it (50 fresh users per node).
pub async fn subscribed_means_subscribed(fixture: &dyn NotifierFixture, node_count: usize) {
    let nodes = nodes(fixture, node_count, 16).await;
    for round in 0..50i64 {
        for (i, node) in nodes.iter().enumerate() {
            let user = UserId(1_000 + round * node_count as i64 + i as i64);
            let mut sub = subscribe(node, user).await;
            // A transport that has just subscribed is connected: a readiness probe must
            // not take it out of service.
            assert!(
                node.notifier.is_ready(),
                "node {i} subscribed but reports not ready (Notifier::is_ready)"
            );
            // The same node and the other one in turn.
            let publisher = &nodes[(i + round as usize) % node_count];
            let sent = event(round + 1);
            publish(publisher, &[to(user, round)], &sent).await;
            let what = format!("round {round}, subscribed on node {i}");
            expect(&mut sub, &sent, Some(Position(round)), &what).await;
        }
    }
}

/// Every node publishes 500 events to one user, one after the other, all nodes at once:
/// each subscription of the user (one per node) receives every event, and each publisher's
/// in the order it published them.
pub async fn order_per_publisher(fixture: &dyn NotifierFixture, node_count: usize) {
    const EACH: i64 = 500;
    let nodes = nodes(fixture, node_count, 2_048).await;
    let user = UserId(7);
    let mut subs = Vec::new();
    for node in &nodes {
        subs.push(subscribe(node, user).await);
    }
    let mut publishers = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let notifier = node.notifier.clone();
        publishers.push(tokio::spawn(async move {
            let base = (k as i64 + 1) * 1_000_000;
            for i in 1..=EACH {
                notifier
                    .publish(&[to(user, base + i - 1)], &event(base + i))
                    .await
                    .unwrap_or_else(|e| panic!("node {k}, publish {i}: {e}"));
            }
        }));
    }
    for publisher in publishers {
        publisher.await.expect("publisher task");
    }
    for (n, sub) in subs.iter_mut().enumerate() {
        let mut last: HashMap<i64, i64> = HashMap::new();
        for received in 0..EACH * node_count as i64 {
            let what = format!("subscription on node {n}, delivery {received}");
            let (event, previous) = next_event(sub, &what).await;
            let position = position(&event);
            let (publisher, i) = (position / 1_000_000, position % 1_000_000);
            let before = last.insert(publisher, i).unwrap_or(0);
            assert_eq!(i, before + 1, "{what}: publisher {publisher} out of order");
            assert_eq!(previous, Some(Position(position - 1)), "{what}");
        }
        assert_eq!(last.len(), node_count, "subscription on node {n}");
    }
}

/// Frames (odd bodies, a long one, raw bytes with newlines, a session event) and each
/// recipient's `previous` arrive as published, on every node.
pub async fn frames_and_previous_arrive_unchanged(fixture: &dyn NotifierFixture, node_count: usize) {
    let nodes = nodes(fixture, node_count, 64).await;
    let (alice, bob) = (UserId(1), UserId(2));
    let mut subs = Vec::new();
    for node in &nodes {
        subs.push((alice, subscribe(node, alice).await));
        subs.push((bob, subscribe(node, bob).await));
    }
    let message = |id: i64, body: String| {
        Event::message(&Message {
            id: MessageId(id),
            sender: Username::parse("alice").expect("valid username"),
            recipient: Username::parse("bob").expect("valid username"),
            created_at: now_micros(),
            body,
            edited: None,
            deleted: false,
        })
    };
    let raw = Event::from_frame(
        EventKind::Message,
        Some(Position(i64::MAX)),
        Bytes::from_static(b"{\n  \"type\": \"message\",\r\n  \"position\": 9223372036854775807 }\n\n"),
    )
    .expect("a valid frame");
    let sent: Vec<(Event, Option<Position>, Option<Position>)> = vec![
        // Two recipients with different `previous`.
        (
            message(41, "plain".into()),
            Some(Position(40)),
            Some(Position::START),
        ),
        (
            message(
                42,
                "quotes \" \\ / tabs\t newlines\n\r nul\0 ✓ 𝄞 🦀 مرحبا <b>&amp;</b>".into(),
            ),
            Some(Position(41)),
            Some(Position(41)),
        ),
        (
            message(43, "x".repeat(20_000)),
            Some(Position(42)),
            Some(Position(41)),
        ),
        (raw, Some(Position(43)), Some(Position(43))),
        (Event::session_ended(SessionId(u64::MAX)), None, None),
    ];
    // One publisher, so that each subscription receives them in this order.
    let publisher = &nodes[node_count - 1];
    for (event, alice_previous, bob_previous) in &sent {
        let recipients = [
            Recipient {
                user: alice,
                previous: *alice_previous,
            },
            Recipient {
                user: bob,
                previous: *bob_previous,
            },
        ];
        publish(publisher, &recipients, event).await;
    }
    for (i, (user, sub)) in subs.iter_mut().enumerate() {
        for (n, (want, alice_previous, bob_previous)) in sent.iter().enumerate() {
            let what = format!("subscription {i} ({user:?}), event {n}");
            let (got, previous) = next_event(sub, &what).await;
            assert_eq!(got.frame(), want.frame(), "{what}: frame changed");
            assert_eq!(got.kind(), want.kind(), "{what}");
            assert_eq!(got.position(), want.position(), "{what}");
            assert_eq!(got.session(), want.session(), "{what}");
            let want_previous = if *user == alice {
                alice_previous
            } else {
                bob_previous
            };
            assert_eq!(previous, *want_previous, "{what}: previous changed");
        }
    }
}

/// Publishing more than a subscription's queue holds while it is not read: it yields a
/// [`Delivery::Gap`] (once) and fewer events, and then goes on receiving later events. A
/// second subscription of the user on each node, read as events come, misses nothing.
pub async fn overflow_yields_a_gap_and_the_subscription_goes_on(
    fixture: &dyn NotifierFixture,
    node_count: usize,
) {
    const CAPACITY: usize = 4;
    const BURST: i64 = 5 * CAPACITY as i64;
    let nodes = nodes(fixture, node_count, CAPACITY).await;
    let user = UserId(3);
    let mut slow = Vec::new();
    let mut fast = Vec::new();
    for node in &nodes {
        slow.push(subscribe(node, user).await);
        fast.push(subscribe(node, user).await);
    }
    for i in 1..=BURST {
        let sent = event(i);
        publish(&nodes[0], &[to(user, i - 1)], &sent).await;
        for (n, sub) in fast.iter_mut().enumerate() {
            expect(
                sub,
                &sent,
                Some(Position(i - 1)),
                &format!("fast reader on node {n}"),
            )
            .await;
        }
    }
    for (n, sub) in slow.iter_mut().enumerate() {
        let what = format!("unread subscription on node {n}");
        // Everything was offered to it (its neighbour received the last event): what it
        // kept is queued, and the gap is owed.
        let mut gaps = 0;
        let mut events = Vec::new();
        let mut delivery = Some(next(sub, &what).await);
        while let Some(got) = delivery {
            match got {
                Delivery::Gap => gaps += 1,
                Delivery::Event { event, previous } => {
                    assert_eq!(previous, Some(Position(position(&event) - 1)), "{what}");
                    events.push(position(&event));
                }
                other => panic!("{what}: unexpected {other:?}"),
            }
            delivery = sub.try_recv().unwrap_or_else(|()| panic!("{what}: ended"));
        }
        assert_eq!(gaps, 1, "{what}: one gap for the overflow (got {events:?})");
        assert!(
            (events.len() as i64) < BURST,
            "{what}: kept all {BURST} events with a queue of {CAPACITY}"
        );
        assert!(
            events.windows(2).all(|w| w[0] < w[1]),
            "{what}: out of order: {events:?}"
        );
    }
    // Both go on.
    let later = event(BURST + 1);
    publish(&nodes[0], &[to(user, BURST)], &later).await;
    for (n, sub) in slow.iter_mut().chain(fast.iter_mut()).enumerate() {
        expect(
            sub,
            &later,
            Some(Position(BURST)),
            &format!("subscription {n} after the overflow"),
        )
        .await;
    }
}

/// While publishing is broken ([`NotifierFixture::break_publishing`]) and subscriptions stay
/// connected, `publish` fails with [`Error::Unavailable`], and every subscription of the
/// user, on every node, gets the event or a [`Delivery::Gap`] (once publishing works
/// again at the latest); then events flow again.
pub async fn publish_failure_is_signalled(fixture: &dyn NotifierFixture, node_count: usize) {
    let nodes = nodes(fixture, node_count, 64).await;
    let user = UserId(11);
    let mut subs = Vec::new();
    for node in &nodes {
        subs.push(subscribe(node, user).await);
    }
    let first = event(1);
    publish(&nodes[0], &[to(user, 0)], &first).await;
    for (n, sub) in subs.iter_mut().enumerate() {
        expect(
            sub,
            &first,
            Some(Position(0)),
            &format!("node {n} before the outage"),
        )
        .await;
    }

    assert!(
        fixture.break_publishing().await,
        "the fixture given to the `outage` form cannot break publishing"
    );
    let lost = event(2);
    let result = nodes[0].notifier.publish(&[to(user, 1)], &lost).await;
    fixture.restore_publishing().await;
    match result {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("publish while publishing is broken: expected Unavailable, got {other:?}"),
    }

    for (n, sub) in subs.iter_mut().enumerate() {
        let what = format!("node {n} after the failed publish");
        match next(sub, &what).await {
            Delivery::Gap => {}
            Delivery::Event { event, .. } if event == lost => {}
            other => panic!("{what}: expected the event or a gap, got {other:?}"),
        }
    }

    let after = event(3);
    publish(&nodes[0], &[to(user, 2)], &after).await;
    for (n, sub) in subs.iter_mut().enumerate() {
        let what = format!("node {n} once publishing works again");
        loop {
            match next(sub, &what).await {
                // A late copy of the failed event, or a second gap, may come first.
                Delivery::Gap => {}
                Delivery::Event { event, .. } if event == lost => {}
                Delivery::Event { event, previous } => {
                    assert_eq!((event, previous), (after.clone(), Some(Position(2))), "{what}");
                    break;
                }
                other => panic!("{what}: unexpected {other:?}"),
            }
        }
    }
}

/// Dropping subscriptions (one with an event still queued) releases them: the node's count
/// goes down at once (when the node can tell), the other subscriptions go on, publishing to
/// a user without subscriptions (or to nobody) succeeds, and subscribing again works.
pub async fn dropping_unsubscribes(fixture: &dyn NotifierFixture, node_count: usize) {
    let nodes = nodes(fixture, node_count, 8).await;
    let user = UserId(5);
    let count = |node: &Node, want: usize, what: &str| {
        if let Some(got) = node.subscriber_count(user) {
            assert_eq!(got, want, "{what}: subscriber count");
        }
    };
    let mut first = Vec::new();
    let mut second = Vec::new();
    for node in &nodes {
        first.push(subscribe(node, user).await);
        second.push(subscribe(node, user).await);
        count(node, 2, "after two subscriptions");
    }
    let queued = event(1);
    publish(&nodes[0], &[to(user, 0)], &queued).await;
    for (n, sub) in second.iter_mut().enumerate() {
        expect(
            sub,
            &queued,
            Some(Position(0)),
            &format!("node {n}, second subscription"),
        )
        .await;
    }
    // The first ones still hold that event, unread.
    drop(first);
    for node in &nodes {
        count(node, 1, "after dropping one");
    }
    let next_one = event(2);
    publish(&nodes[0], &[to(user, 1)], &next_one).await;
    for (n, sub) in second.iter_mut().enumerate() {
        expect(
            sub,
            &next_one,
            Some(Position(1)),
            &format!("node {n}, remaining subscription"),
        )
        .await;
    }
    drop(second);
    for node in &nodes {
        count(node, 0, "after dropping both");
    }
    for node in &nodes {
        publish(node, &[to(user, 2)], &event(3)).await;
        publish(node, &[to(UserId(404), 0)], &event(1)).await;
        publish(node, &[], &event(1)).await;
    }

    let mut again = Vec::new();
    for node in &nodes {
        again.push(subscribe(node, user).await);
        count(node, 1, "after subscribing again");
    }
    let last = event(4);
    publish(&nodes[node_count - 1], &[to(user, 3)], &last).await;
    for (n, sub) in again.iter_mut().enumerate() {
        let what = format!("node {n}, subscribed again");
        loop {
            let (got, previous) = next_event(sub, &what).await;
            if got == last {
                assert_eq!(previous, Some(Position(3)), "{what}");
                break;
            }
            // Published while nobody was subscribed: it may or may not come.
            assert_eq!(position(&got), 3, "{what}: unexpected {got:?}");
        }
    }
}

/// A user listed twice in one publish (a note to oneself) gets the event once on each
/// subscription, and another user listed with them once too.
pub async fn a_user_listed_twice_gets_the_event_once(fixture: &dyn NotifierFixture, node_count: usize) {
    let nodes = nodes(fixture, node_count, 16).await;
    let (me, other) = (UserId(8), UserId(9));
    let mut subs = Vec::new();
    for node in &nodes {
        subs.push((me, subscribe(node, me).await));
        subs.push((other, subscribe(node, other).await));
    }
    let note = event(1);
    publish(&nodes[0], &[to(me, 0), to(me, 0)], &note).await;
    let shared = event(2);
    publish(&nodes[0], &[to(me, 1), to(other, 0), to(me, 1)], &shared).await;
    let marker = event(3);
    publish(&nodes[0], &[to(me, 2), to(other, 2)], &marker).await;
    for (n, (user, sub)) in subs.iter_mut().enumerate() {
        let what = format!("subscription {n} of {user:?}");
        if *user == me {
            expect(sub, &note, Some(Position(0)), &what).await;
            expect(sub, &shared, Some(Position(1)), &what).await;
        } else {
            expect(sub, &shared, Some(Position(0)), &what).await;
        }
        expect(sub, &marker, Some(Position(2)), &what).await;
    }
}

/// Two subscriptions of a user on each node each get every event of the user, once; a
/// subscription of another user gets none of them.
pub async fn every_subscription_of_the_user_and_no_other_gets_the_event(
    fixture: &dyn NotifierFixture,
    node_count: usize,
) {
    let nodes = nodes(fixture, node_count, 16).await;
    let (user, other) = (UserId(21), UserId(22));
    let mut subs = Vec::new();
    let mut others = Vec::new();
    for node in &nodes {
        subs.push(subscribe(node, user).await);
        subs.push(subscribe(node, user).await);
        others.push(subscribe(node, other).await);
    }
    let (one, two) = (event(1), event(2));
    publish(&nodes[0], &[to(user, 0)], &one).await;
    publish(&nodes[0], &[to(user, 1)], &two).await;
    let theirs = event(100);
    publish(&nodes[0], &[to(other, 0)], &theirs).await;
    for (n, sub) in subs.iter_mut().enumerate() {
        let what = format!("subscription {n} of the user");
        expect(sub, &one, Some(Position(0)), &what).await;
        expect(sub, &two, Some(Position(1)), &what).await;
    }
    // Events to the user published before `theirs` would have come before it.
    for (n, sub) in others.iter_mut().enumerate() {
        expect(
            sub,
            &theirs,
            Some(Position(0)),
            &format!("node {n}, the other user"),
        )
        .await;
    }
    let three = event(3);
    publish(&nodes[0], &[to(user, 2)], &three).await;
    for (n, sub) in subs.iter_mut().enumerate() {
        let what = format!("subscription {n} of the user, once more");
        expect(sub, &three, Some(Position(2)), &what).await;
    }
}

/// Each node's events reach subscriptions held only by the other nodes, in both directions,
/// with every node publishing at once.
pub async fn events_cross_nodes(fixture: &dyn NotifierFixture, node_count: usize) {
    assert!(node_count >= 2, "events_cross_nodes needs two nodes");
    let nodes = nodes(fixture, node_count, 64).await;
    // User 100 + n is subscribed on node n only.
    let mut subs = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        subs.push(subscribe(node, UserId(100 + n as i64)).await);
    }
    let mut publishers = Vec::new();
    for (from, node) in nodes.iter().enumerate() {
        let notifier = node.notifier.clone();
        publishers.push(tokio::spawn(async move {
            for target in (0..node_count).filter(|t| *t != from) {
                let position = (from * 100 + target) as i64 + 1;
                notifier
                    .publish(&[to(UserId(100 + target as i64), 0)], &event(position))
                    .await
                    .unwrap_or_else(|e| panic!("node {from} to node {target}: {e}"));
            }
        }));
    }
    for publisher in publishers {
        publisher.await.expect("publisher task");
    }
    for (target, sub) in subs.iter_mut().enumerate() {
        let want: BTreeSet<i64> = (0..node_count)
            .filter(|from| *from != target)
            .map(|from| (from * 100 + target) as i64 + 1)
            .collect();
        let mut got = BTreeSet::new();
        for _ in 0..want.len() {
            let what = format!("subscription on node {target}");
            let (event, previous) = next_event(sub, &what).await;
            assert_eq!(previous, Some(Position::START), "{what}");
            got.insert(position(&event));
        }
        assert_eq!(got, want, "node {target} got the wrong events");
    }
}
