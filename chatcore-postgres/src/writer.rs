//! The group-commit writer: every `insert_message` of a store goes through [`Writers`]. A send
//! that finds nothing queued and a writer slot free is stored by its caller at once, a batch
//! of one (no hand-over to another task, no wait for a batch to fill: at low load a send costs
//! one round trip and nothing else); otherwise it is queued to a few writer tasks that gather
//! what is pending into one transaction each. At most [`PostgresConfig::writers`] batches are
//! written at a time, whoever writes them.
//!
//! A batch is one call of the SQL function `chatcore_insert_messages` (one statement, one
//! round trip, one transaction; `chatcore_insert_messages_each`, its statement-per-step twin,
//! for a batch of one). It locks the id sequence row of `chatcore_counts` until it
//! commits, so ids are handed out in commit order across every process sharing the database
//! (see the function's comment in `schema.rs` and the crate docs). It reports each user's
//! newest id before the batch; the writer links the batch's own messages in id order from
//! there (`chatcore::Store`, "Positions").

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

use chatcore::metrics::StoreMetrics;
use chatcore::{
    Entity, Error, Forbidden, Inserted, Message, MessageId, NewMessage, Position, Result, UserId, Username,
};

use crate::PostgresConfig;
use crate::error::SharedError;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A send waiting for a writer.
pub(crate) struct Pending {
    pub(crate) new: NewMessage,
    pub(crate) reply: oneshot::Sender<Result<Inserted>>,
}

/// How many times a writer yields to the runtime for more sends before it closes a batch that
/// is not full. Costs microseconds; lets callers woken by the previous batch join this one.
const BATCH_YIELDS: usize = 2;

/// The statement that calls a batch function (both take and return the same columns): the
/// function's rows, in no particular order.
macro_rules! batch_call {
    ($function:literal) => {
        concat!(
            "SELECT ord, outcome, message_id, recipient_id, recipient_name, sender_name, ",
            "created_at, body, user_id, previous FROM ",
            $function,
            "($1, $2, $3, $4)"
        )
    };
}

/// The batch statement.
const INSERT_BATCH: &str = batch_call!("chatcore_insert_messages");

/// The same for a batch of one send (schema version 10): the same rows and writes through a
/// few small statements, a quarter fewer instructions than the set-wise function's ~65 plan
/// nodes for one send; at two sends the two cost about the same, and past that the set-wise
/// function's start-up is shared by more sends.
const INSERT_ONE: &str = batch_call!("chatcore_insert_messages_each");

/// The store's way to its writers: the queue of the writer tasks, and the slots (one per
/// writer, [`PostgresConfig::writers`]) that whoever writes a batch holds while writing it.
#[derive(Debug, Clone)]
pub(crate) struct Writers {
    queue: mpsc::Sender<Pending>,
    slots: Arc<Semaphore>,
    /// Sends between their call and their answer.
    active: Arc<AtomicUsize>,
    /// For the sends stored by their caller.
    inline: Arc<Writer>,
}

impl Writers {
    /// Starts [`PostgresConfig::writers`] tasks on the current runtime. The tasks end when
    /// every clone of the returned handle is dropped.
    pub(crate) fn spawn(pool: PgPool, config: &PostgresConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let rx = Arc::new(Mutex::new(rx));
        let slots = Arc::new(Semaphore::new(config.writers));
        // Registered here, where the caller's recorder is in force, and shared by the writers.
        let metrics = StoreMetrics::register("postgres");
        let writer = Writer {
            pool,
            max_batch: config.max_batch,
            max_batch_bytes: config.max_batch_bytes,
            metrics,
        };
        for _ in 0..config.writers {
            let task = WriterTask {
                writer: writer.clone(),
                queue: rx.clone(),
                slots: slots.clone(),
            };
            tokio::spawn(task.run());
        }
        Self {
            queue: tx,
            slots,
            active: Arc::default(),
            inline: Arc::new(writer),
        }
    }

    /// Stores `new`: at once by the caller when it is the only send in progress and a slot
    /// is free (held until the answer, so a dropped caller frees it), else through the queue.
    /// Only a lone send skips the queue: when others are in progress, the callers a batch just
    /// answered are about to send again, and they should share the next batch, not each
    /// take a transaction of one.
    pub(crate) async fn send(&self, new: NewMessage) -> Result<Inserted> {
        let active = Active::enter(&self.active);
        if active.alone()
            && let Ok(_slot) = self.slots.try_acquire()
        {
            let write: BoxFuture<'_, Vec<Result<Inserted>>> =
                Box::pin(self.inline.write(std::slice::from_ref(&new)));
            return write
                .await
                .pop()
                .unwrap_or_else(|| Err(Error::bug("a send stored alone got no answer")));
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { new, reply })
            .await
            .map_err(|_| Error::bug("the PostgreSQL writer tasks have stopped"))?;
        answer
            .await
            .map_err(|_| Error::bug("a PostgreSQL writer task ended without answering"))?
    }
}

/// One send in progress, counted in [`Writers::active`] until dropped.
struct Active<'a>(&'a AtomicUsize, usize);

impl<'a> Active<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let before = count.fetch_add(1, Ordering::AcqRel);
        Self(count, before)
    }

    /// No other send was in progress when this one started.
    fn alone(&self) -> bool {
        self.1 == 0
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What writing a batch needs, shared by the writer tasks and the sends stored by their caller.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    pub(crate) pool: PgPool,
    pub(crate) max_batch: usize,
    pub(crate) max_batch_bytes: usize,
    /// Batch sizes, transaction times, waits for a pooled connection.
    pub(crate) metrics: StoreMetrics,
}

/// One writer task: takes a batch from the queue, writes it in a slot, answers its callers.
struct WriterTask {
    writer: Writer,
    /// Shared by the writers: one gathers a batch while the others commit theirs.
    queue: Arc<Mutex<mpsc::Receiver<Pending>>>,
    slots: Arc<Semaphore>,
}

impl WriterTask {
    async fn run(self) {
        loop {
            // Boxed as `Send` futures: spelling the type out sidesteps a compiler limitation
            // with higher-ranked lifetimes in `tokio::spawn`ed futures that borrow.
            let next: BoxFuture<'_, Option<(Vec<Pending>, tokio::sync::SemaphorePermit<'_>)>> =
                Box::pin(self.next_batch());
            let Some((batch, slot)) = next.await else { return };
            let (messages, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.new, p.reply)).unzip();
            let write: BoxFuture<'_, Vec<Result<Inserted>>> = Box::pin(self.writer.write(&messages));
            let outcomes = write.await;
            drop(slot);
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up (dropped its future) no longer needs the answer.
                let _ = reply.send(outcome);
            }
        }
    }

    /// Waits for a pending send and a free slot, then takes what else is queued, up to
    /// `max_batch`. `None` once the store is gone.
    async fn next_batch(&self) -> Option<(Vec<Pending>, tokio::sync::SemaphorePermit<'_>)> {
        let mut queue = self.queue.lock().await;
        let first = queue.recv().await?;
        // Sends queued while every slot is busy join this batch.
        let slot = self.slots.acquire().await.ok()?;
        let mut bytes = first.new.body.len();
        let mut batch = vec![first];
        let mut yields = 0;
        while batch.len() < self.writer.max_batch && bytes < self.writer.max_batch_bytes {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.new.body.len();
                    batch.push(next);
                }
                // Callers just answered by the previous batch are about to send again: give
                // them a turn on the runtime so they join this batch instead of the next one.
                Err(_) if yields < BATCH_YIELDS => {
                    yields += 1;
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
        Some((batch, slot))
    }
}

impl Writer {
    /// Stores `batch`; one outcome per message, in order.
    pub(crate) async fn write(&self, batch: &[NewMessage]) -> Vec<Result<Inserted>> {
        match self.try_write(batch).await {
            Ok(outcomes) => outcomes,
            Err(err) => {
                let err = SharedError(Arc::new(err));
                batch
                    .iter()
                    .map(|_| Err(err.to_error("storing messages")))
                    .collect()
            }
        }
    }

    async fn try_write(&self, batch: &[NewMessage]) -> Result<Vec<Result<Inserted>>, sqlx::Error> {
        // A key used twice in this batch: the later send replays the earlier one, which alone
        // goes to the database.
        let mut first_with_key: HashMap<(i64, [u8; 32]), usize> = HashMap::new();
        let mut replay_of: Vec<Option<usize>> = vec![None; batch.len()];
        let mut sent = Vec::with_capacity(batch.len()); // indexes into `batch`
        let mut senders = Vec::with_capacity(batch.len());
        let mut keys = Vec::with_capacity(batch.len());
        let mut bodies = Vec::with_capacity(batch.len());
        let mut hashes: Vec<Option<Vec<u8>>> = Vec::with_capacity(batch.len());
        for (i, new) in batch.iter().enumerate() {
            let hash = new.idempotency_key.as_deref().map(key_hash);
            if let Some(hash) = hash {
                match first_with_key.entry((new.sender.id.0, hash)) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        replay_of[i] = Some(*first.get());
                        continue;
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(i);
                    }
                }
            }
            sent.push(i);
            senders.push(new.sender.id.0);
            keys.push(new.recipient.key());
            bodies.push(new.body.as_str());
            hashes.push(hash.map(|h| h.to_vec()));
        }

        let waiting = Instant::now();
        let acquired = self.pool.acquire().await;
        self.metrics.waited_for_connection(waiting.elapsed());
        let mut conn = acquired?;
        let started = Instant::now();
        let statement = if senders.len() == 1 {
            INSERT_ONE
        } else {
            INSERT_BATCH
        };
        let rows = sqlx::query(statement)
            .bind(&senders)
            .bind(&keys)
            .bind(&bodies)
            .bind(&hashes)
            .fetch_all(&mut *conn)
            .await?;
        // The function call is the whole transaction.
        self.metrics.committed(sent.len(), started.elapsed());
        drop(conn);

        let protocol = |what: &str| sqlx::Error::Protocol(format!("chatcore_insert_messages: {what}"));
        let mut outcomes: Vec<Option<Result<Inserted>>> = (0..batch.len()).map(|_| None).collect();
        let mut latest: HashMap<i64, i64> = HashMap::new();
        // (id, index into batch, recipient id, recipient name, time) of the stored messages.
        let mut stored: Vec<(i64, usize, i64, String, DateTime<Utc>)> = Vec::new();
        for row in &rows {
            let outcome: String = row.try_get("outcome")?;
            if outcome == "previous" {
                let user: i64 = row.try_get("user_id")?;
                let previous: i64 = row.try_get("previous")?;
                latest.insert(user, previous);
                continue;
            }
            let ord: i32 = row.try_get("ord")?;
            let i = usize::try_from(ord)
                .ok()
                .and_then(|ord| sent.get(ord.wrapping_sub(1)))
                .copied()
                .ok_or_else(|| protocol("a row for no send of the batch"))?;
            match outcome.as_str() {
                "missing" => outcomes[i] = Some(Err(Error::NotFound(Entity::User))),
                "removed" => outcomes[i] = Some(Err(Error::Forbidden(Forbidden::AccountRemoved))),
                // A block stands between the two (schema version 6): nothing stored for it.
                "blocked" => outcomes[i] = Some(Err(Error::Forbidden(Forbidden::Blocked))),
                "replay" => {
                    outcomes[i] = Some(Ok(Inserted {
                        message: Message {
                            id: MessageId(row.try_get("message_id")?),
                            sender: Username::from_stored(row.try_get::<String, _>("sender_name")?),
                            recipient: Username::from_stored(row.try_get::<String, _>("recipient_name")?),
                            created_at: row.try_get("created_at")?,
                            body: row.try_get("body")?,
                            edited: None,
                            deleted: false,
                        },
                        recipient_id: UserId(row.try_get("recipient_id")?),
                        replayed: true,
                        sender_previous: Position::START,
                        recipient_previous: Position::START,
                    }))
                }
                "stored" => stored.push((
                    row.try_get("message_id")?,
                    i,
                    row.try_get("recipient_id")?,
                    row.try_get("recipient_name")?,
                    row.try_get("created_at")?,
                )),
                other => return Err(protocol(&format!("unknown outcome {other:?}"))),
            }
        }

        // `latest` holds each user's newest id before the batch; follow it through the
        // batch's messages in id order.
        stored.sort_unstable_by_key(|s| s.0);
        let mut previous_of = |user: i64, id: i64| match latest.get_mut(&user) {
            Some(last) => Ok(Position(std::mem::replace(last, id))),
            None => Err(protocol(&format!("no previous position for user {user}"))),
        };
        for (id, i, recipient_id, recipient_name, created_at) in stored {
            let new = &batch[i];
            let (sender_previous, recipient_previous) = if recipient_id == new.sender.id.0 {
                let previous = previous_of(recipient_id, id)?;
                (previous, previous)
            } else {
                (previous_of(new.sender.id.0, id)?, previous_of(recipient_id, id)?)
            };
            outcomes[i] = Some(Ok(Inserted {
                message: Message {
                    id: MessageId(id),
                    sender: new.sender.username.clone(),
                    // As the recipient chose to write it, whatever case the sender typed.
                    recipient: Username::from_stored(recipient_name),
                    created_at,
                    body: new.body.clone(),
                    edited: None,
                    deleted: false,
                },
                recipient_id: UserId(recipient_id),
                replayed: false,
                sender_previous,
                recipient_previous,
            }));
        }

        // A replay within the batch answers like its first: the earlier message, or the
        // first's error (an unknown user, a block).
        for i in 0..batch.len() {
            if let Some(first) = replay_of[i] {
                outcomes[i] = Some(match &outcomes[first] {
                    Some(Ok(inserted)) => Ok(Inserted {
                        replayed: true,
                        sender_previous: Position::START,
                        recipient_previous: Position::START,
                        ..inserted.clone()
                    }),
                    Some(Err(Error::Forbidden(why))) => Err(Error::Forbidden(*why)),
                    Some(Err(_)) => Err(Error::NotFound(Entity::User)),
                    None => Err(Error::bug("replayed send without its first")),
                });
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(|| Err(Error::bug("a send of the batch got no answer"))))
            .collect())
    }
}

/// The SHA-256 of an idempotency key: keys of any length fit one fixed-size index column.
pub(crate) fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chatcore::{NewMessage, Store, Username};

    use crate::PostgresConfig;
    use crate::testing::TestDatabase;

    fn name(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    /// The batch writers have connections of their own: a send is stored while every
    /// connection of the readers' pool is taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sends_do_not_wait_for_a_reader_connection() {
        let database = TestDatabase::create("chatcore_pg_test_").await.unwrap();
        let config = PostgresConfig {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(60),
            ..PostgresConfig::default()
        };
        let store = database.store(config).await.unwrap();
        let alice = store.create_user(&name("alice")).await.unwrap();
        store.create_user(&name("bob")).await.unwrap();

        let held = store.pool().acquire().await.unwrap();
        // The readers' pool is empty now: a read waits (for `acquire_timeout`).
        let read = tokio::time::timeout(Duration::from_millis(300), store.find_user(&name("bob"))).await;
        assert!(read.is_err(), "a reader connection was still free");
        let send = store.insert_message(NewMessage {
            sender: alice,
            recipient: name("bob"),
            body: "while the readers are busy".to_owned(),
            idempotency_key: None,
        });
        let inserted = tokio::time::timeout(Duration::from_secs(20), send)
            .await
            .expect("the send waited for a reader connection")
            .unwrap();
        assert_eq!(inserted.message.body, "while the readers are busy");
        drop(held);
        let bob = store.find_user(&name("bob")).await.unwrap().unwrap();
        assert_eq!(inserted.recipient_id, bob.id);
    }
}
