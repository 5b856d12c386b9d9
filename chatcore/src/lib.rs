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
//! - [`ChatService`], the logic: validate, store durably, then notify both parties;
//! - [`MemoryStore`] and [`LocalNotifier`], complete in-process backends;
//! - with feature `conformance`, the suite every storage backend must pass
//!   ([`store_conformance_tests!`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
//! use std::sync::Arc;
//! use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore, SendRequest};
//! use chatcore::notify::{Delivery, Event};
//!
//! let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), ChatConfig::default());
//! let alice = chat.create_user("alice", None).await?;
//! let bob = chat.create_user("bob", None).await?;
//! let mut bobs_tab = chat.subscribe(&bob).await?;
//!
//! let sent = chat.send(&alice, SendRequest { recipient: "bob".into(), body: "hi".into(), ..Default::default() }).await?;
//! let Some(Delivery::Event(Event::Message(m))) = bobs_tab.recv().await else { panic!() };
//! assert_eq!(m.id, sent.message.id);
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `model.rs`: ids, usernames, messages, the conversation key, timestamp format.
//! - `error.rs`: [`Error`], the one error enum, by what the caller must do.
//! - `store.rs`: the [`Store`] trait and its page and query types.
//! - `notify.rs`: the [`Notifier`] trait, [`Subscription`]s, the sharded subscriber table and
//!   [`LocalNotifier`].
//! - `service.rs`: [`ChatService`] and [`ChatConfig`].
//! - `memory.rs`: [`MemoryStore`].
//! - `conformance.rs`: the backend conformance suite.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod memory;
mod model;
pub mod notify;
mod service;
pub mod store;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{BoxError, Entity, Error, Result};
pub use memory::MemoryStore;
pub use model::{
    ConversationKey, Message, MessageId, NewMessage, User, UserId, Username, now_micros, timestamp_micros,
};
pub use notify::{Delivery, Event, LocalNotifier, Notifier, Subscription};
pub use service::{CatchUp, ChatConfig, ChatService, DirectoryQuery, HistoryQuery, SendRequest, Sent};
pub use store::{Credentials, Inserted, MessagePage, PageRequest, Store, TokenHash, UserQuery};
