//! # chatcore-redis
//!
//! A [`chatcore::Notifier`] over Redis pub/sub, so that several server processes (nodes)
//! sharing one store act as one message center: a message sent through any node reaches
//! every open connection of both participants, whichever node holds it.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
//! use std::sync::Arc;
//! use chatcore::{ChatConfig, ChatService, Delivery, Event, MemoryStore, SendRequest};
//! use chatcore_redis::{RedisConfig, RedisNotifier};
//!
//! // Two nodes sharing one store and one Redis (in production: two processes, and a shared
//! // database such as `chatcore-mysql`).
//! let store = Arc::new(MemoryStore::new());
//! let config = RedisConfig { channel_prefix: "chat:".into(), ..Default::default() };
//! let node_a = ChatService::new(store.clone(), Arc::new(RedisNotifier::connect(config.clone()).await?), ChatConfig::default());
//! let node_b = ChatService::new(store, Arc::new(RedisNotifier::connect(config).await?), ChatConfig::default());
//!
//! let alice = node_a.create_user("alice", None).await?;
//! let bob = node_a.create_user("bob", None).await?;
//! let mut bobs_tab = node_b.subscribe(&bob).await?; // Bob is connected to node B
//! node_a.send(&alice, SendRequest { recipient: "bob".into(), body: "hi".into(), ..Default::default() }).await?;
//! match bobs_tab.recv().await {
//!     Some(Delivery::Event(Event::Message(m))) => assert_eq!(m.body, "hi"),
//!     // After a Redis outage: catch up from storage (`ChatService::catch_up`).
//!     Some(Delivery::Gap) => {}
//!     _ => {}
//! }
//! # Ok(()) }
//! ```
//!
//! # How it works
//! - **Channels.** User 42's events travel on `<channel_prefix>user:42`; the payload is the
//!   message's JSON in the wire shape of [`chatcore::Message`]. `publish` sends the
//!   `PUBLISH`es for both participants in one pipelined round trip over a multiplexed
//!   connection shared by all callers.
//! - **One subscriber connection per process.** A background task owns it. The first local
//!   subscription of a user makes it `SUBSCRIBE` to the user's channel, and the drop of the
//!   last one makes it `UNSUBSCRIBE`; requests are batched, and the task keeps fanning out
//!   messages to the local subscriptions (a [`chatcore::notify::SubscriberTable`]) while it
//!   waits for Redis. `subscribe` returns only once Redis confirmed the channel, so a message
//!   published right after a WebSocket connected is not missed. Each subscription has a
//!   bounded queue ([`RedisConfig::queue_capacity`]); one that falls behind is cut off with
//!   [`chatcore::Delivery::Lagged`] without slowing anybody else.
//! - **Reconnect and `Gap`.** When the subscriber connection is lost (Redis restarted, a
//!   network fault, or a health-check `PING` unanswered within
//!   [`RedisConfig::command_timeout`]), the task reconnects with exponential backoff
//!   ([`RedisConfig::reconnect_min_delay`] up to [`RedisConfig::reconnect_max_delay`]),
//!   resubscribes every user with a local subscription, and then delivers
//!   [`chatcore::Delivery::Gap`] to every local subscription before anything read on the new
//!   connection. Messages published during the outage are not replayed by Redis pub/sub; the
//!   `Gap` tells the consumer (the web layer) to catch its client up from storage, so nothing
//!   is silently lost. While the connection is down, `subscribe` fails with
//!   [`chatcore::Error::Unavailable`].
//! - **Failing fast.** `publish` while Redis is unreachable returns
//!   [`chatcore::Error::Unavailable`] within [`RedisConfig::command_timeout`] (usually at
//!   once: a refused connection is not retried), never hangs; the message is stored anyway
//!   and [`chatcore::ChatService::send`] reports the failed notification in its result.
//!   Delivery is at most once per connection while the connection is healthy, with a `Gap`
//!   whenever something may have been lost; a `publish` that timed out may still be
//!   delivered if Redis had received it (a consumer that catches up keys on message ids).
//!
//! # Running several nodes
//! Start each server process with the same store (a shared database) and a
//! [`RedisNotifier`] with the same [`RedisConfig::url`] and [`RedisConfig::channel_prefix`].
//! Put the nodes behind any load balancer; no sticky sessions are needed, since a client's
//! requests and its WebSocket may land on different nodes. Use a different prefix per
//! deployment (or per test) when several share one Redis.
//!
//! Redis cuts off a subscriber connection whose output buffer outgrows
//! `client-output-buffer-limit pubsub` (default 32 MB, or 8 MB for 60 s); a node that falls
//! that far behind reconnects and its connections get a `Gap`, like after a restart.
//!
//! # Layout
//! - `config.rs`: [`RedisConfig`], its defaults and checks, the backoff schedule.
//! - `notifier.rs`: [`RedisNotifier`]: connecting, `publish`, `subscribe`.
//! - `subscriber.rs`: the background task that owns the subscriber connection: batching of
//!   subscribe/unsubscribe requests, fan-out, health checks, reconnect and `Gap`.
//! - `error.rs`: the causes kept inside [`chatcore::Error::Unavailable`].
//! - `tests/redis.rs`: two nodes over the real Redis; a Redis server the test restarts.
//! - `benches/pubsub.rs`: publish-to-receive latency across two nodes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod error;
mod notifier;
mod subscriber;

pub use config::RedisConfig;
pub use notifier::RedisNotifier;
