//! The in-memory store runs both conformance suites; and the suite's concurrent ordering
//! check catches a store that hands out ids out of commit order.

use std::sync::Arc;

async fn fresh_store() -> Arc<dyn chatcore::Store> {
    Arc::new(chatcore::MemoryStore::new())
}

async fn fresh_session_store() -> Arc<dyn chatcore::SessionStore> {
    Arc::new(chatcore::MemoryStore::new())
}

chatcore::store_conformance_tests!(fresh_store);
chatcore::session_store_conformance_tests!(fresh_session_store);

async fn fresh_backend() -> Arc<dyn chatcore::Backend> {
    Arc::new(chatcore::MemoryStore::new())
}

chatcore::account_conformance_tests!(fresh_backend);

/// A deliberately broken store: message ids come from a plain counter, like a database
/// sequence taken at the start of a transaction, and a message becomes visible only after its
/// insert has yielded a few times (a number that depends on the id), like a commit that
/// lands later. So a larger id can be visible before a smaller one. The previous position it
/// reports is either the newest *visible* message of the user, which may not be the one
/// before, or (`honest_previous`) the newest id handed out, which is right: then only a
/// reader catching up at the wrong moment notices.
mod reordering {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI64, Ordering};

    use async_trait::async_trait;
    use chatcore::store::{
        BlockQuery, Changed, InboxPage, InboxRequest, Inserted, MarkedRead, MessageChange, MessagePage,
        PageRequest, Store, StoredEvent, UserQuery,
    };
    use chatcore::{
        Entity, Error, MemoryStore, Message, MessageId, NewMessage, Position, Result, User, UserId, Username,
        now_micros,
    };

    /// Users and sessions in a [`MemoryStore`]; messages here.
    #[derive(Default)]
    pub struct ReorderingStore {
        users: MemoryStore,
        next_id: AtomicI64,
        published: Mutex<Published>,
        /// Report the previous positions by id (right) instead of by visibility.
        pub honest_previous: bool,
        /// Each user's newest id handed out, for `honest_previous`.
        handed_out: Mutex<HashMap<UserId, i64>>,
    }

    #[derive(Default)]
    struct Published {
        /// Visible messages by id, with their sender and recipient ids.
        messages: BTreeMap<i64, (Message, UserId, UserId)>,
        keys: HashMap<(UserId, String), i64>,
    }

    impl ReorderingStore {
        pub fn new(honest_previous: bool) -> Self {
            Self {
                honest_previous,
                ..Self::default()
            }
        }

        fn published(&self) -> std::sync::MutexGuard<'_, Published> {
            self.published.lock().unwrap()
        }
    }

    impl Published {
        fn latest(&self, user: UserId) -> Position {
            self.messages
                .iter()
                .rev()
                .find(|(_, (_, s, r))| *s == user || *r == user)
                .map_or(Position::START, |(id, _)| Position(*id))
        }
    }

    #[async_trait]
    impl Store for ReorderingStore {
        async fn create_user(&self, username: &Username) -> Result<User> {
            self.users.create_user(username).await
        }
        async fn find_user(&self, username: &Username) -> Result<Option<User>> {
            self.users.find_user(username).await
        }
        async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>> {
            self.users.list_users(query).await
        }

        async fn insert_message(&self, new: NewMessage) -> Result<Inserted> {
            let recipient = self
                .users
                .find_user(&new.recipient)
                .await?
                .ok_or(Error::NotFound(Entity::User))?;
            if let Some(key) = &new.idempotency_key {
                let published = self.published();
                if let Some(id) = published.keys.get(&(new.sender.id, key.clone())) {
                    return Ok(Inserted {
                        message: published.messages[id].0.clone(),
                        recipient_id: recipient.id,
                        replayed: true,
                        sender_previous: Position::START,
                        recipient_previous: Position::START,
                    });
                }
            }
            // The id, and the previous positions as the transaction sees them (committed
            // messages only), taken at once ...
            let (id, sender_previous, recipient_previous) = if self.honest_previous {
                let mut handed_out = self.handed_out.lock().unwrap();
                let id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
                let mut previous = |user: UserId| Position(handed_out.insert(user, id).unwrap_or(0));
                let sender_previous = previous(new.sender.id);
                let recipient_previous = if recipient.id == new.sender.id {
                    sender_previous
                } else {
                    previous(recipient.id)
                };
                (id, sender_previous, recipient_previous)
            } else {
                let id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
                let published = self.published();
                (
                    id,
                    published.latest(new.sender.id),
                    published.latest(recipient.id),
                )
            };
            // ... and the commit a little later, for some ids later than for others.
            for _ in 0..(id * 7 % 5) {
                tokio::task::yield_now().await;
            }
            let message = Message {
                id: MessageId(id),
                sender: new.sender.username.clone(),
                recipient: recipient.username.clone(),
                created_at: now_micros(),
                body: new.body,
                edited: None,
                deleted: false,
            };
            let mut published = self.published();
            published
                .messages
                .insert(id, (message.clone(), new.sender.id, recipient.id));
            if let Some(key) = new.idempotency_key {
                published.keys.insert((new.sender.id, key), id);
            }
            Ok(Inserted {
                message,
                recipient_id: recipient.id,
                replayed: false,
                sender_previous,
                recipient_previous,
            })
        }

        async fn message_for(&self, viewer: UserId, id: MessageId) -> Result<Option<Message>> {
            Ok(self
                .published()
                .messages
                .get(&id.0)
                .filter(|(_, s, r)| *s == viewer || *r == viewer)
                .map(|(m, _, _)| m.clone()))
        }
        async fn conversation_page(&self, _: UserId, _: &Username, _: &PageRequest) -> Result<MessagePage> {
            Err(Error::bug("not kept by this test store"))
        }
        async fn user_messages(&self, _: UserId, _: &PageRequest) -> Result<MessagePage> {
            Err(Error::bug("not kept by this test store"))
        }
        async fn messages_after(&self, user: UserId, after: MessageId, limit: u32) -> Result<Vec<Message>> {
            Ok(self
                .published()
                .messages
                .range(after.0.saturating_add(1)..)
                .filter(|(_, (_, s, r))| *s == user || *r == user)
                .take(limit as usize)
                .map(|(_, (m, _, _))| m.clone())
                .collect())
        }
        async fn latest_position(&self, user: UserId) -> Result<Position> {
            Ok(self.published().latest(user))
        }
        async fn events_after(&self, user: UserId, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
            let messages = self.messages_after(user, MessageId(after.0), limit).await?;
            Ok(messages.into_iter().map(StoredEvent::Message).collect())
        }
        async fn inbox(&self, _: UserId, _: &InboxRequest) -> Result<InboxPage> {
            Err(Error::bug("not kept by this test store"))
        }
        /// Markers are not kept: a mark stores nothing and moves nothing.
        async fn mark_read(&self, _: &User, _: &Username, up_to: MessageId) -> Result<MarkedRead> {
            Ok(MarkedRead {
                unread: 0,
                read_up_to: up_to,
                moved: None,
            })
        }
        async fn change_message(&self, _: UserId, _: MessageId, _: &MessageChange) -> Result<Changed> {
            Err(Error::bug("not kept by this test store"))
        }
        async fn set_block(&self, _: UserId, _: &Username, _: bool) -> Result<User> {
            Err(Error::bug("not kept by this test store"))
        }
        async fn blocked_users(&self, _: UserId, _: &BlockQuery) -> Result<Vec<User>> {
            Err(Error::bug("not kept by this test store"))
        }
        async fn reachable_peer(&self, _: UserId, _: &Username) -> Result<Option<UserId>> {
            Err(Error::bug("not kept by this test store"))
        }
        async fn conversation_peers(&self, _: UserId, _: &[UserId]) -> Result<Vec<UserId>> {
            Err(Error::bug("not kept by this test store"))
        }
        async fn feed_after(&self, after: Position, limit: u32) -> Result<Vec<StoredEvent>> {
            Ok(self
                .published()
                .messages
                .range(after.0.saturating_add(1)..)
                .take(limit as usize)
                .map(|(_, (m, _, _))| StoredEvent::Message(m.clone()))
                .collect())
        }
        async fn load_checkpoint(&self, _: &str) -> Result<Position> {
            Err(Error::bug("not kept by this test store"))
        }
        async fn save_checkpoint(&self, _: &str, _: Position) -> Result<()> {
            Err(Error::bug("not kept by this test store"))
        }
        async fn remove_user(&self, _: UserId) -> Result<()> {
            Err(Error::bug("not kept by this test store"))
        }
        async fn delete_sent_messages(&self, _: UserId, _: MessageId, _: u32) -> Result<Vec<Changed>> {
            Err(Error::bug("not kept by this test store"))
        }
    }
}

/// How many fresh broken stores the check gets to catch one (it catches every one so far).
const TRIES: usize = 10;

async fn catches_the_reordering_store(honest_previous: bool) {
    let mut failures = Vec::new();
    for _ in 0..TRIES {
        let store: Arc<dyn chatcore::Store> = Arc::new(reordering::ReorderingStore::new(honest_previous));
        if let Err(failure) = chatcore::conformance::check_concurrent_positions(store).await {
            failures.push(failure);
        }
    }
    assert!(
        !failures.is_empty(),
        "the check passed a store that publishes ids out of order {TRIES} times out of {TRIES}"
    );
    eprintln!("caught {} of {TRIES}: {}", failures.len(), failures[0]);
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_check_catches_out_of_order_ids_on_one_thread() {
    catches_the_reordering_store(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_check_catches_out_of_order_ids_on_two_threads() {
    catches_the_reordering_store(false).await;
}

/// With right previous positions, the reader that catches up by last id seen is what fails.
#[tokio::test(flavor = "current_thread")]
async fn concurrent_check_catches_a_reader_passing_an_unpublished_id_on_one_thread() {
    catches_the_reordering_store(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_check_catches_a_reader_passing_an_unpublished_id_on_two_threads() {
    catches_the_reordering_store(true).await;
}

async fn feed_check_catches_the_reordering_store() {
    let mut failures = Vec::new();
    for _ in 0..TRIES {
        let store: Arc<dyn chatcore::Store> = Arc::new(reordering::ReorderingStore::new(true));
        if let Err(failure) = chatcore::conformance::check_feed_order(store).await {
            failures.push(failure);
        }
    }
    assert!(
        !failures.is_empty(),
        "the feed check passed a store that reveals positions out of order {TRIES} times out of {TRIES}"
    );
    eprintln!("caught {} of {TRIES}: {}", failures.len(), failures[0]);
}

#[tokio::test(flavor = "current_thread")]
async fn feed_check_catches_out_of_order_positions_on_one_thread() {
    feed_check_catches_the_reordering_store().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_check_catches_out_of_order_positions_on_two_threads() {
    feed_check_catches_the_reordering_store().await;
}

/// The checks pass a correct store on one thread too (the suite runs them on two).
#[tokio::test(flavor = "current_thread")]
async fn concurrent_check_passes_the_memory_store_on_one_thread() {
    for _ in 0..3 {
        chatcore::conformance::check_concurrent_positions(fresh_store().await)
            .await
            .unwrap();
        chatcore::conformance::check_feed_order(fresh_store().await)
            .await
            .unwrap();
    }
}
