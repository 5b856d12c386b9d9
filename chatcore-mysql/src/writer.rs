//! The group-commit writer: every `insert_message` of a store goes through a few writer tasks
//! that gather pending sends into one transaction each.
//!
//! A transaction takes its ids from the `message_id` row of `chatcore_sequences`, which it
//! locks (`UPDATE`) and keeps locked until it commits. Every inserting transaction of every
//! process locks that row before it writes a message, so the next transaction gets its ids
//! only after the previous one committed: ids are handed out in commit order, and a reader
//! that has seen id `n` has already been able to see every id below `n`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{Executor, MySql, MySqlPool, QueryBuilder, Row};
use tokio::sync::{Mutex, mpsc, oneshot};

use chatcore::{ConversationKey, Entity, Error, Inserted, Message, MessageId, NewMessage, Result, UserId};

use crate::error::{self, SharedError, code};
use crate::rows;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A send waiting for a writer.
pub(crate) struct Pending {
    pub(crate) new: NewMessage,
    pub(crate) reply: oneshot::Sender<Result<Inserted>>,
}

/// How many times a batch is retried after losing an idempotency-key race to another process.
const KEY_RACE_RETRIES: usize = 3;

/// Starts `writers` tasks on the current runtime and returns the queue they drain. The tasks
/// end when every sender of the queue is dropped.
pub(crate) fn spawn(
    pool: MySqlPool,
    writers: usize,
    max_batch: usize,
    queue_capacity: usize,
) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(queue_capacity.max(1));
    let rx = Arc::new(Mutex::new(rx));
    let clock = Arc::new(AtomicI64::new(0));
    for _ in 0..writers.max(1) {
        let writer = Writer {
            pool: pool.clone(),
            queue: rx.clone(),
            max_batch: max_batch.clamp(1, 1000),
            clock: clock.clone(),
        };
        tokio::spawn(writer.run());
    }
    tx
}

struct Writer {
    pool: MySqlPool,
    /// Shared by the writers: one gathers a batch while the others commit theirs.
    queue: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max_batch: usize,
    /// The last timestamp handed out, in microseconds: timestamps never go backwards.
    clock: Arc<AtomicI64>,
}

impl Writer {
    async fn run(self) {
        loop {
            // Boxed as `Send` futures: spelling the type out sidesteps a compiler limitation
            // with higher-ranked lifetimes in `tokio::spawn`ed futures that borrow.
            let next: BoxFuture<'_, Option<Vec<Pending>>> = Box::pin(self.next_batch());
            let Some(batch) = next.await else { return };
            let (messages, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.new, p.reply)).unzip();
            let write: BoxFuture<'_, Vec<Result<Inserted>>> = Box::pin(self.write(&messages));
            let outcomes = write.await;
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up (dropped its future) no longer needs the answer.
                let _ = reply.send(outcome);
            }
        }
    }

    /// Waits for a pending send, then takes what else is queued, up to `max_batch`. `None` once
    /// the store is gone.
    async fn next_batch(&self) -> Option<Vec<Pending>> {
        let mut queue = self.queue.lock().await;
        let first = queue.recv().await?;
        let mut batch = vec![first];
        while batch.len() < self.max_batch {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        Some(batch)
    }

    /// Stores `batch`; one outcome per message, in order.
    async fn write(&self, batch: &[NewMessage]) -> Vec<Result<Inserted>> {
        let fail_all = |err: SharedError| {
            batch
                .iter()
                .map(|_| Err(err.to_error("storing messages")))
                .collect()
        };
        let users = match self.resolve_users(batch).await {
            Ok(users) => users,
            Err(err) => return fail_all(SharedError(Arc::new(err))),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_write(batch, &users).await {
                Ok(outcomes) => return outcomes,
                // Another process stored one of our idempotency keys between our check and our
                // insert; the whole transaction rolled back. Checking again finds its message.
                Err(err)
                    if error::server_code(&err) == Some(code::DUP_ENTRY) && attempt < KEY_RACE_RETRIES => {}
                Err(err) => return fail_all(SharedError(Arc::new(err))),
            }
        }
    }

    /// Recipient ids by name and the set of existing sender ids, in one query.
    async fn resolve_users(&self, batch: &[NewMessage]) -> Result<ResolvedUsers, sqlx::Error> {
        let names: Vec<&str> = batch
            .iter()
            .map(|m| m.recipient.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let senders: Vec<i64> = batch
            .iter()
            .map(|m| m.sender.id.0)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // Lists are padded to a power of two (repeating the last entry) so a few statement
        // shapes serve every batch and stay in the prepared-statement cache.
        let mut query =
            QueryBuilder::<MySql>::new("SELECT id, username FROM chatcore_users WHERE username IN (");
        let mut list = query.separated(", ");
        for name in padded(&names) {
            list.push_bind(*name);
        }
        query.push(") UNION SELECT id, username FROM chatcore_users WHERE id IN (");
        let mut list = query.separated(", ");
        for id in padded(&senders) {
            list.push_bind(*id);
        }
        query.push(")");
        let rows = query.build().fetch_all(&self.pool).await?;
        let mut resolved = ResolvedUsers::default();
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let name = rows::text(&row, "username").map_err(sqlx::Error::Decode)?;
            resolved.ids.insert(id);
            resolved.by_name.insert(name, id);
        }
        Ok(resolved)
    }

    async fn try_write(
        &self,
        batch: &[NewMessage],
        users: &ResolvedUsers,
    ) -> Result<Vec<Result<Inserted>>, sqlx::Error> {
        let mut outcomes: Vec<Option<Result<Inserted>>> = Vec::with_capacity(batch.len());
        let mut recipients = Vec::with_capacity(batch.len());
        let mut key_hashes: Vec<Option<[u8; 32]>> = Vec::with_capacity(batch.len());
        for new in batch {
            let recipient = users.by_name.get(new.recipient.as_str()).copied();
            let known = users.ids.contains(&new.sender.id.0) && recipient.is_some();
            outcomes.push((!known).then_some(Err(Error::NotFound(Entity::User))));
            recipients.push(recipient.unwrap_or(0));
            key_hashes.push(new.idempotency_key.as_deref().map(key_hash));
        }

        // Keys stored earlier: those sends are replays.
        let keyed: Vec<usize> = (0..batch.len())
            .filter(|&i| outcomes[i].is_none() && key_hashes[i].is_some())
            .collect();
        if !keyed.is_empty() {
            let mut query = QueryBuilder::<MySql>::new(rows::MESSAGE_WITH_KEY_SELECT);
            query.push(" WHERE ");
            for (n, &i) in keyed.iter().enumerate() {
                if n > 0 {
                    query.push(" OR ");
                }
                query.push("(m.sender_id = ");
                query.push_bind(batch[i].sender.id.0);
                query.push(" AND m.idempotency_key_hash = ");
                query.push_bind(key_hashes[i].as_ref().map(|h| h.as_slice()));
                query.push(")");
            }
            let found = query.build().fetch_all(&self.pool).await?;
            let mut stored: HashMap<(i64, Vec<u8>), (Message, i64)> = HashMap::new();
            for row in &found {
                let message = rows::message(row).map_err(sqlx::Error::Decode)?;
                let sender_id: i64 = row.try_get("sender_id")?;
                let recipient_id: i64 = row.try_get("recipient_id")?;
                let hash: Vec<u8> = row.try_get("idempotency_key_hash")?;
                stored.insert((sender_id, hash), (message, recipient_id));
            }
            for &i in &keyed {
                let key = (
                    batch[i].sender.id.0,
                    key_hashes[i].map(|h| h.to_vec()).unwrap_or_default(),
                );
                if let Some((message, recipient_id)) = stored.get(&key) {
                    outcomes[i] = Some(Ok(Inserted {
                        message: message.clone(),
                        recipient_id: UserId(*recipient_id),
                        replayed: true,
                    }));
                }
            }
        }

        // A key used twice in this batch: the later send replays the earlier one.
        let mut first_with_key: HashMap<(i64, [u8; 32]), usize> = HashMap::new();
        let mut replay_of: Vec<Option<usize>> = vec![None; batch.len()];
        let mut fresh = Vec::new();
        for i in 0..batch.len() {
            if outcomes[i].is_some() {
                continue;
            }
            if let Some(hash) = key_hashes[i] {
                match first_with_key.entry((batch[i].sender.id.0, hash)) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        replay_of[i] = Some(*first.get());
                        continue;
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(i);
                    }
                }
            }
            fresh.push(i);
        }

        let mut stored: HashMap<usize, Inserted> = HashMap::new();
        if !fresh.is_empty() {
            let count = fresh.len() as i64;
            let mut tx = self.pool.begin().await?;
            // Locks the sequence row until commit: the commit-order guarantee (module docs).
            let reserved = sqlx::query(
                "UPDATE chatcore_sequences SET last_value = LAST_INSERT_ID(last_value + ?) WHERE name = 'message_id'",
            )
            .bind(count)
            .execute(&mut *tx)
            .await?;
            if reserved.rows_affected() != 1 {
                return Err(sqlx::Error::Protocol(
                    "the chatcore message id sequence is missing: run MysqlStore::migrate()".into(),
                ));
            }
            let last = reserved.last_insert_id() as i64;
            let first_id = last - count + 1;
            // Taken while holding the lock, so timestamps follow commit order too.
            let created_at = self.now();

            let mut insert = QueryBuilder::<MySql>::new(
                "INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low, \
                 conversation_high, created_at, body, idempotency_key_hash) ",
            );
            insert.push_values(fresh.iter().enumerate(), |mut row, (n, &i)| {
                let new = &batch[i];
                let key = ConversationKey::new(new.sender.id, UserId(recipients[i]));
                row.push_bind(first_id + n as i64)
                    .push_bind(new.sender.id.0)
                    .push_bind(recipients[i])
                    .push_bind(key.low().0)
                    .push_bind(key.high().0)
                    .push_bind(created_at.naive_utc())
                    .push_bind(new.body.as_str())
                    .push_bind(key_hashes[i].as_ref().map(|h| h.as_slice()));
            });
            insert.build().execute(&mut *tx).await?;

            let mut counts: BTreeMap<(i64, i64), i64> = BTreeMap::new();
            for &i in &fresh {
                let sender = batch[i].sender.id;
                let recipient = UserId(recipients[i]);
                let key = ConversationKey::new(sender, recipient);
                *counts.entry((key.low().0, key.high().0)).or_default() += 1;
                *counts.entry((sender.0, 0)).or_default() += 1;
                if recipient != sender {
                    *counts.entry((recipient.0, 0)).or_default() += 1;
                }
            }
            // Only integers: written as text, so the many row-count shapes need no prepared
            // statements. Rows in key order, as every writer takes them.
            let mut upsert = String::from("INSERT INTO chatcore_counts (low_id, high_id, total) VALUES ");
            for (n, ((low, high), total)) in counts.iter().enumerate() {
                if n > 0 {
                    upsert.push(',');
                }
                upsert.push_str(&format!("({low},{high},{total})"));
            }
            upsert.push_str(" ON DUPLICATE KEY UPDATE total = total + VALUES(total)");
            tx.execute(sqlx::raw_sql(&upsert)).await?;
            tx.commit().await?;

            for (n, &i) in fresh.iter().enumerate() {
                let new = &batch[i];
                stored.insert(
                    i,
                    Inserted {
                        message: Message {
                            id: MessageId(first_id + n as i64),
                            sender: new.sender.username.clone(),
                            recipient: new.recipient.clone(),
                            created_at,
                            body: new.body.clone(),
                        },
                        recipient_id: UserId(recipients[i]),
                        replayed: false,
                    },
                );
            }
        }

        Ok((0..batch.len())
            .map(|i| {
                if let Some(outcome) = outcomes[i].take() {
                    return outcome;
                }
                if let Some(first) = replay_of[i] {
                    return stored
                        .get(&first)
                        .map(|inserted| Inserted {
                            replayed: true,
                            ..inserted.clone()
                        })
                        .ok_or_else(|| Error::bug("replayed send without its first"));
                }
                stored
                    .remove(&i)
                    .ok_or_else(|| Error::bug("fresh send without a stored message"))
            })
            .collect())
    }

    /// Now, to the microsecond, never before a timestamp already handed out by this store.
    fn now(&self) -> DateTime<Utc> {
        let now = chatcore::now_micros().timestamp_micros();
        let previous = self.clock.fetch_max(now, Ordering::AcqRel);
        DateTime::from_timestamp_micros(now.max(previous)).unwrap_or_else(chatcore::now_micros)
    }
}

#[derive(Default)]
struct ResolvedUsers {
    by_name: HashMap<String, i64>,
    ids: HashSet<i64>,
}

/// The SHA-256 of an idempotency key: keys of any length fit one fixed-size index column.
pub(crate) fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// `items` repeated at the end up to the next power of two (at least one item is expected).
fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let target = items.len().next_power_of_two();
    let last = items.last();
    items
        .iter()
        .chain(std::iter::repeat_n(last, target - items.len()).flatten())
}
