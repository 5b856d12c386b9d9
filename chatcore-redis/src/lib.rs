//! # chatcore-redis
//!
//! A [`chatcore::Notifier`] over Redis pub/sub, so that several server processes (nodes)
//! sharing one store act as one message center: a message sent through any node reaches
//! every open connection of both participants, whichever node holds it.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
//! use std::sync::Arc;
//! use chatcore::{ChatConfig, ChatService, Delivery, MemoryStore, SendRequest};
//! use chatcore_redis::{RedisConfig, RedisNotifier};
//!
//! // Two nodes sharing one store and one Redis (in production: two processes, and a shared
//! // database such as `chatcore-mysql`).
//! let store = Arc::new(MemoryStore::new());
//! let config = RedisConfig { channel_prefix: "chat:".into(), ..Default::default() };
//! let node_a = ChatService::new(store.clone(), Arc::new(RedisNotifier::connect(config.clone()).await?), ChatConfig::default());
//! let node_b = ChatService::new(store, Arc::new(RedisNotifier::connect(config).await?), ChatConfig::default());
//!
//! let alice = node_a.create_user("alice").await?;
//! let bob = node_a.create_user("bob").await?;
//! let mut bobs_tab = node_b.subscribe(&bob, None).await?; // Bob is connected to node B
//! node_a.send(&alice, SendRequest { recipient: "bob".into(), body: "hi".into(), ..Default::default() }).await?;
//! match bobs_tab.recv().await {
//!     // The frame node A rendered, byte for byte: a socket writes `event.frame()`.
//!     Some(Delivery::Event { event, .. }) => assert_eq!(event.message_data().unwrap().body, "hi"),
//!     // After a Redis outage: catch up from storage (`ChatService::catch_up`).
//!     Some(Delivery::Gap) => {}
//!     _ => {}
//! }
//! # Ok(()) }
//! ```
//!
//! # How it works
//! - **Channels and payloads.** User 42's events travel on `<channel_prefix>user:42`. An
//!   event is rendered once, by the node that publishes it ([`chatcore::Event`]); the payload
//!   is a one-line text header followed by the event's frame bytes, unchanged:
//!
//!   ```text
//!   v1 <node> <kind> <position> <previous>\n<frame>
//!   v1 3f2a9c0d11e4b5a7 message 17 12\n{"type":"message","position":17,"message":"17","data":{...}}
//!   ```
//!
//!   `node` is the publishing node's random id (16 hex digits, picked at connect), `kind`
//!   is [`chatcore::EventKind::as_str`] (or `gap`, below), `position` the event's
//!   [`chatcore::Position`] and `previous` this channel's user's
//!   [`chatcore::Recipient::previous`] (`-` when absent). A receiving node reads the header
//!   only and rebuilds the event with [`chatcore::Event::from_frame`] around one copy of the
//!   frame bytes: nothing is encoded or decoded as JSON on the way (the frame of a session
//!   event is read for its session id). `publish` sends the `PUBLISH`es for all recipients
//!   (each distinct user once) in one pipelined round trip over a multiplexed connection
//!   shared by all callers.
//! - **Local delivery.** `publish` hands the event to this process's own subscriptions
//!   directly, before the `PUBLISH`, so they get it without the round trip, in the order of
//!   the `publish` calls, and even when the `PUBLISH` fails. The subscriber task skips the
//!   copy that comes back from Redis (its header carries this node's id).
//! - **One subscriber connection per process.** A background task owns it. The first local
//!   subscription of a user makes it `SUBSCRIBE` to the user's channel, and the drop of the
//!   last one makes it `UNSUBSCRIBE`; requests are batched, and the task keeps fanning out
//!   messages to the local subscriptions (a [`chatcore::notify::SubscriberTable`]) while it
//!   waits for Redis. `subscribe` returns only once Redis confirmed the channel, so an event
//!   published right after a WebSocket connected is not missed. Each subscription has a
//!   bounded queue ([`RedisConfig::queue_capacity`]); events that find it full are dropped
//!   and replaced by one [`chatcore::Delivery::Gap`], without slowing anybody else, and the
//!   subscription goes on.
//! - **Reconnect and `Gap`.** When the subscriber connection is lost (Redis restarted, a
//!   network fault, or a health-check `PING` unanswered within
//!   [`RedisConfig::command_timeout`]), the task reconnects with exponential backoff
//!   ([`RedisConfig::reconnect_min_delay`] up to [`RedisConfig::reconnect_max_delay`]),
//!   resubscribes every user with a local subscription, and then delivers
//!   [`chatcore::Delivery::Gap`] to every local subscription before anything read on the new
//!   connection. Events published during the outage are not replayed by Redis pub/sub; the
//!   `Gap` tells the consumer (the web layer) to catch its client up from storage. While the
//!   connection is down, `subscribe` fails with [`chatcore::Error::Unavailable`].
//! - **A failed publish and gap notices.** `publish` while Redis is unreachable (or refuses
//!   the `PUBLISH`) returns [`chatcore::Error::Unavailable`] within
//!   [`RedisConfig::command_timeout`] (usually at once: a refused connection is not retried),
//!   never hangs; the message is stored anyway and [`chatcore::ChatService::send`] reports
//!   the failed notification in its result. The other nodes' subscriber connections may
//!   well stay up meanwhile (only the publishing connection failed, or Redis refused only
//!   writes), so no reconnect would tell their subscriptions anything. So the notifier
//!   remembers the users of every failed publish, and a background task publishes a *gap
//!   notice* (`v1 <node> gap - -` and no frame) on each of their channels, retrying with the
//!   reconnect backoff until Redis accepts it; a node that receives one delivers
//!   [`chatcore::Delivery::Gap`] to that user's subscriptions
//!   ([`RedisNotifier::gap_notices_owed`] counts the users still waiting for theirs). Its
//!   limit: the debt lives in the publishing process; if that process ends before Redis
//!   accepts the notices, the other nodes learn of the missed event only from the user's
//!   next event, whose `previous` is beyond what they delivered.
//! - **Ephemeral events and presence.** Typing and presence frames travel like any event,
//!   without a position (`-`). The nodes' presence accounts (`presence_sync`, see
//!   `chatcore::presence`) go to the reserved user [`chatcore::UserId::PRESENCE`], i.e.
//!   `<channel_prefix>user:-1`, to which every node with presence on is subscribed; a node
//!   killed without a goodbye simply stops publishing there, and the others time it out.
//! - **Unreadable payloads.** A payload whose header this version cannot read (garbage,
//!   another version, an unknown kind, a frame [`chatcore::Event::from_frame`] refuses) is
//!   delivered as a [`chatcore::Delivery::Gap`] to the channel's user, and logged.
//!
//! # Promises
//! This notifier keeps every promise of [`chatcore::Notifier`], and runs the
//! `chatcore::notifier_conformance_tests!` suite (`tests/notifier_conformance.rs`, two nodes
//! and a publish outage against a `redis-server` of its own):
//! - once `subscribe` returned, every later event for the user reaches the subscription, or
//!   a `Gap` stands in for it;
//! - the events one task publishes reach each subscription in publish order (across nodes
//!   too: one publishing connection per node, and Redis keeps the order of one connection's
//!   commands);
//! - nothing is lost silently: a full queue, a reconnect, a failed publish and an
//!   unreadable payload each end in a `Gap` on the subscriptions concerned;
//! - frames and `previous` arrive byte for byte as published; a user listed twice is
//!   notified once; dropping a subscription releases it (and the channel with the last one).
//!
//! Delivery is at most once per subscription: a `publish` that timed out may still be
//! delivered by Redis later (besides the gap notice), which a consumer that goes by
//! positions handles. Events of different publishers may arrive in any order (a local one
//! may overtake one still on its way from Redis); `previous` lets the consumer restore
//! position order.
//!
//! # Running several nodes
//! Start each server process with the same store (a shared database) and a
//! [`RedisNotifier`] with the same [`RedisConfig::url`] and [`RedisConfig::channel_prefix`].
//! Put the nodes behind any load balancer; no sticky sessions are needed, since a client's
//! requests and its WebSocket may land on different nodes. Use a different prefix per
//! deployment (or per test) when several share one Redis. All nodes must run a version that
//! reads the same payload version (`v1`); a node that cannot read a payload delivers a `Gap`.
//!
//! Redis cuts off a subscriber connection whose output buffer outgrows
//! `client-output-buffer-limit pubsub` (default 32 MB, or 8 MB for 60 s); a node that falls
//! that far behind reconnects and its connections get a `Gap`, like after a restart.
//!
//! # Layout
//! - `config.rs`: [`RedisConfig`], its defaults and checks, the backoff schedule.
//! - `notifier.rs`: [`RedisNotifier`]: connecting, `publish` (local delivery, the pipelined
//!   `PUBLISH`es), `subscribe`.
//! - `wire.rs`: the payload: header and frame, encoding and reading.
//! - `subscriber.rs`: the background task that owns the subscriber connection: batching of
//!   subscribe/unsubscribe requests, fan-out, health checks, reconnect and `Gap`.
//! - `gaps.rs`: the users owed a gap notice after a failed publish, and the task that
//!   publishes the notices.
//! - `error.rs`: the causes kept inside [`chatcore::Error::Unavailable`].
//! - `tests/notifier_conformance.rs`: the notifier conformance suite, two nodes on a private
//!   Redis whose `PUBLISH` the outage case forbids (an ACL) while subscribers stay connected.
//! - `tests/redis.rs`: two nodes over the real Redis; a Redis server the test restarts,
//!   freezes or pauses.
//! - `tests/common/mod.rs`: the test helpers both share (the private `redis-server`).
//! - `benches/pubsub.rs`: publish-to-receive latency, on one node and across two.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod error;
mod gaps;
mod notifier;
mod subscriber;
mod wire;

pub use config::RedisConfig;
pub use notifier::RedisNotifier;
