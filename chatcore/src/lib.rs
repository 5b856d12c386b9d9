//! # chatcore
//!
//! The core of a person-to-person message center: two people message each other, the store
//! keeps every message, serves the conversation history, and each participant's open
//! connections are notified the moment a message lands.
//!
//! This crate knows no database and no web framework. It holds:
//! - the domain types ([`Username`], [`Message`], [`ConversationKey`], ...);
//! - the [`Store`] trait that storage backends implement (`chatcore-sqlite`, `chatcore-mysql`)
//!   and the [`Notifier`] trait that notification transports implement (`chatcore-redis`);
//! - [`ChatService`], the logic: validate, ask the host's [`SendPolicy`]s, store durably, then
//!   notify both parties;
//! - [`MemoryStore`] and [`LocalNotifier`], complete in-process backends;
//! - with feature `conformance`, the suite every storage backend must pass
//!   ([`store_conformance_tests!`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
//! use std::sync::Arc;
//! use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore, SendRequest};
//! use chatcore::Delivery;
//!
//! let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), ChatConfig::default());
//! let alice = chat.create_user("alice").await?;
//! let bob = chat.create_user("bob").await?;
//! let mut bobs_tab = chat.subscribe(&bob, None).await?;
//!
//! let sent = chat.send(&alice, SendRequest { recipient: "bob".into(), body: "hi".into(), ..Default::default() }).await?;
//! let Some(Delivery::Event { event, previous }) = bobs_tab.recv().await else { panic!() };
//! assert_eq!(event.position(), Some(sent.message.id.into()));
//! assert_eq!(previous, Some(chatcore::Position::START)); // bob's first event
//! assert_eq!(event.message_data().unwrap().body, "hi");
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `model.rs`: ids, usernames, messages, the conversation key, timestamp format.
//! - `error.rs`: [`Error`], the one error enum, by what the caller must do.
//! - `store.rs`: the [`Store`] trait and its page and query types.
//! - `event.rs`: [`Event`] (rendered once), [`Position`], and the ordering promise.
//! - `notify.rs`: the [`Notifier`] trait and its promises, [`Subscription`]s, the sharded
//!   subscriber table and [`LocalNotifier`].
//! - `feed.rs`: [`Feed`], a connection's subscription under the service's rules, and the
//!   per-user catch-up read gate.
//! - `service.rs`: [`ChatService`] and [`ChatConfig`].
//! - `presence.rs`: who is online, deployment-wide, and the task that tells the users who
//!   share a conversation with them ([`ChatConfig::presence`]).
//! - `policy.rs`: [`SendPolicy`], the host's say before a message is stored, and the chain
//!   that runs the policies under their deadline.
//! - `memory.rs`: [`MemoryStore`].
//! - `consumer.rs`: [`FeedConsumer`], a host's loop over the event feed
//!   ([`Store::feed_after`]) with its checkpoint in the store, retried with backoff.
//! - `metrics.rs`: the metric names, the handles the service, stores and notifiers register,
//!   and how a host installs a recorder ([`metrics`]).
//! - `conformance.rs`: the backend conformance suite.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod consumer;
mod error;
pub mod event;
mod feed;
mod gap_debts;
mod memory;
pub mod metrics;
mod model;
pub mod notify;
mod policy;
pub mod presence;
mod rate;
mod service;
pub mod store;
mod text;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "conformance")]
pub mod notifier_conformance;

pub use consumer::{FeedConsumer, FeedConsumerConfig, FeedHandler};
pub use error::{BoxError, Entity, Error, Forbidden, Result};
pub use event::{Event, EventData, EventKind, Position, PresenceChange, RESYNC_FRAME, SessionId};
pub use feed::Feed;
pub use memory::MemoryStore;
pub use model::{
    ConversationKey, Message, MessageId, NewMessage, User, UserId, Username, now_micros, timestamp_micros,
};
pub use notify::{CloseReason, Delivery, LocalNotifier, Notifier, Recipient, Subscription};
pub use policy::{
    Draft, PolicyAction, PolicyCounts, PolicyFallback, Rejection, RejectionKind, SendPolicy, Verdict,
};
pub use presence::PresenceStatus;
pub use service::{
    BlockListQuery, CatchUp, CatchUpPage, ChatConfig, ChatService, DirectoryQuery, HistoryQuery, InboxQuery,
    ReadState, SendRequest, Sent, TypingGate,
};
pub use store::{
    Backend, BlockQuery, ChangeEvent, Changed, ChangedMessage, Conversation, Credentials, InboxPage,
    InboxRequest, Inserted, MarkedRead, MessageChange, MessagePage, MigrationReport, MovedMarker,
    PageRequest, ReadMarker, SessionRecord, SessionStore, Store, StoredEvent, TokenHash, UserQuery,
};
pub use text::message_body;
