//! The group-commit writer: every `insert_message` of a store goes through a few writer tasks
//! that gather pending sends into one transaction each.
//!
//! A batch is one transaction sent as one multi-statement round trip. It takes its ids from
//! the id sequence, the row `(0, 0)` of `chatcore_counts`, which it locks (the first row of its
//! counters upsert) and keeps locked until it commits. Every inserting transaction of every
//! process locks that row before it writes a message, so the next transaction gets its ids
//! only after the previous one committed: ids are handed out in commit order, and a reader
//! that has seen id `n` has already been able to see every id below `n`.
//!
//! The same lock gives each participant's previous position (their newest event before
//! this one, message or read event, see `chatcore::Store`, "Positions"): every position up to
//! the last one handed out before the batch was committed before it, so after its `COMMIT`
//! the batch reads, for each user it involves, their largest position up to there (four
//! short index reads), and links its own messages in id order from that.
//!
//! The batch keeps both participants' inbox rows (`chatcore_inbox`) and the recipient's
//! unread total (`chatcore_counts` row `(user, -1)`) in the same transaction, one upsert row
//! per user and conversation of the batch. `MysqlStore::mark_read` takes the same sequence
//! lock first, so read events get their positions in commit order too, and a marker and the
//! sends of its conversation never interleave inside each other's transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

use sqlx::pool::PoolConnection;
use sqlx::{Executor, MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};
use tokio::sync::{Mutex, mpsc, oneshot};

use chatcore::{
    ConversationKey, Entity, Error, Forbidden, Inserted, Message, MessageId, NewMessage, Position, Result,
    UserId, Username,
};

use chatcore::metrics::StoreMetrics;

use crate::MysqlConfig;
use crate::error::{self, SharedError, code};
use crate::rows;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A send waiting for a writer.
pub(crate) struct Pending {
    pub(crate) new: NewMessage,
    pub(crate) reply: oneshot::Sender<Result<Inserted>>,
}

/// How many times a writer yields to the runtime for more sends before it closes a batch that
/// is not full. Costs microseconds; lets callers woken by the previous batch join this one.
const BATCH_YIELDS: usize = 2;

/// How many times a batch is retried after losing an idempotency-key race to another process.
const KEY_RACE_RETRIES: usize = 3;

/// Starts `writers` tasks on the current runtime and returns the queue they drain. The tasks
/// end when every sender of the queue is dropped.
pub(crate) fn spawn(pool: MySqlPool, config: &MysqlConfig) -> mpsc::Sender<Pending> {
    let (tx, rx) = mpsc::channel(config.queue_capacity);
    let rx = Arc::new(Mutex::new(rx));
    let known = Arc::new(std::sync::Mutex::new(KnownUsers::default()));
    let spare = Arc::new(std::sync::Mutex::new(None));
    // Registered here, where the caller's recorder is in force, and shared by the writers.
    let metrics = StoreMetrics::register("mysql");
    // Keeping the pool's only connection idle would make readers wait for it.
    let hold_idle = if config.max_connections >= 2 {
        config.ping_if_idle_for
    } else {
        Duration::ZERO
    };
    for _ in 0..config.writers {
        let writer = Writer {
            pool: pool.clone(),
            queue: rx.clone(),
            max_batch: config.max_batch,
            max_batch_bytes: config.max_batch_bytes,
            cache_capacity: config.user_cache_capacity,
            known: known.clone(),
            spare: spare.clone(),
            hold_idle,
            metrics: metrics.clone(),
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
    max_batch_bytes: usize,
    cache_capacity: usize,
    /// One connection kept by the writers between batches while sends keep coming (shared, so
    /// at most one connection sits idle with them, whatever the number of writers).
    spare: Arc<std::sync::Mutex<Option<PoolConnection<MySql>>>>,
    /// How long the spare connection is kept idle ([`MysqlConfig::ping_if_idle_for`]).
    hold_idle: Duration,
    /// Users already seen, shared by the writers (locked briefly, once per batch).
    known: Arc<std::sync::Mutex<KnownUsers>>,
    /// Batch sizes, transaction times, waits for a pooled connection.
    metrics: StoreMetrics,
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
        // The writer that holds the queue is the one that looks after the spare connection
        // while it waits; the others only wait for the queue.
        let mut queue = self.queue.lock().await;
        let first = match queue.try_recv() {
            Ok(first) => first,
            Err(_) => self.wait_holding(queue.recv()).await?,
        };
        let mut bytes = first.new.body.len();
        let mut batch = vec![first];
        let mut yields = 0;
        while batch.len() < self.max_batch && bytes < self.max_batch_bytes {
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
        Some(batch)
    }

    /// Waits for `wait` (a send) while keeping the spare connection for the next batch only
    /// as long as the wait is short: every `hold_idle`, and as soon as the pool starts closing,
    /// the spare goes back to the pool, so `close()` never waits on idle writers, readers get
    /// it, and a connection idle long enough to have gone stale is pinged by the pool before
    /// its next use. Sends that keep coming save a pool checkout and check-in (the pool pings
    /// every connection handed back) per batch.
    async fn wait_holding<F: std::future::Future>(&self, wait: F) -> F::Output {
        if self.hold_idle.is_zero() {
            return wait.await; // no spare is ever kept
        }
        let mut wait = std::pin::pin!(wait);
        loop {
            tokio::select! {
                biased;
                done = &mut wait => return done,
                () = tokio::time::sleep(self.hold_idle) => drop(self.take_spare()),
                () = self.pool.close_event() => {
                    drop(self.take_spare());
                    return wait.await;
                }
            }
        }
    }

    /// The spare connection, if a previous batch left one.
    fn take_spare(&self) -> Option<PoolConnection<MySql>> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Keeps `conn` as the spare connection, or hands it back to the pool if there is one
    /// already, or if the pool is closing.
    fn keep_spare(&self, conn: PoolConnection<MySql>) {
        if self.hold_idle.is_zero() {
            return;
        }
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.is_none() && !self.pool.is_closed() {
            *spare = Some(conn);
        }
    }

    /// Stores `batch`; one outcome per message, in order.
    async fn write(&self, batch: &[NewMessage]) -> Vec<Result<Inserted>> {
        let fail_all = |err: sqlx::Error| {
            let err = SharedError(Arc::new(err));
            batch
                .iter()
                .map(|_| Err(err.to_error("storing messages")))
                .collect()
        };
        // Every query of the batch runs on one connection: the one kept from the previous
        // batch when sends keep coming.
        let mut conn = match self.take_spare() {
            Some(conn) => conn,
            None => {
                let waiting = Instant::now();
                let acquired = self.pool.acquire().await;
                self.metrics.waited_for_connection(waiting.elapsed());
                match acquired {
                    Ok(conn) => conn,
                    Err(err) => return fail_all(err),
                }
            }
        };
        let keys: Vec<String> = batch.iter().map(|m| m.recipient.key()).collect();
        let mut users = match self.resolve_users(&mut conn, batch, &keys, true).await {
            Ok(users) => users,
            // Handing the connection back has the pool check it (and drop it if it is dead).
            Err(err) => return fail_all(err),
        };
        let mut attempt = 0;
        // Sends refused for a block found by an earlier attempt of this batch.
        let mut refused = vec![false; batch.len()];
        loop {
            attempt += 1;
            match self.try_write(&mut conn, batch, &keys, &users, &refused).await {
                Ok(outcomes) => {
                    self.keep_spare(conn);
                    return outcomes;
                }
                Err(err) => {
                    // The transaction may still be open on this connection: end it, or drop
                    // the connection rather than hand it back to the pool mid-transaction.
                    if let Err(rollback) = conn.execute(sqlx::raw_sql("ROLLBACK")).await {
                        // The callers get the error that failed the batch; this one is logged.
                        tracing::warn!(error = %rollback, "rolling back a failed batch failed; dropping its connection");
                        drop(conn.detach());
                        return fail_all(err);
                    }
                    // A sender known from the cache was removed meanwhile (by any process):
                    // the transaction refused the whole batch (see `commit_fresh`). Read the
                    // users again; the removed sender's sends are refused, the others retried.
                    // Checked before the blocks, so a removed sender's send is refused as
                    // removed whatever its pair (the order every backend answers in).
                    if error::server_code(&err) == Some(code::BAD_NULL) {
                        match self.reread_removed(&mut conn, batch, &keys, &users).await {
                            Ok(Some(fresh)) => {
                                users = fresh;
                                continue;
                            }
                            Ok(None) => {}
                            Err(read) => {
                                tracing::warn!(error = %read, "reading a failed batch's users again failed");
                                return fail_all(err);
                            }
                        }
                    }
                    // A block stood between the users of one of its sends: the transaction
                    // refused to take ids (see `commit_fresh`) and rolled back. Those sends
                    // are refused and the others tried again; each such round refuses at
                    // least one send, so it ends.
                    match self
                        .refuse_blocked(&mut conn, batch, &keys, &users, &mut refused)
                        .await
                    {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(read) => {
                            tracing::warn!(error = %read, "reading the blocks of a failed batch failed");
                            return fail_all(err);
                        }
                    }
                    // Another process stored one of our idempotency keys between our check
                    // and our insert; the whole transaction rolled back. Checking again finds
                    // its message.
                    let key_race = error::server_code(&err) == Some(code::DUP_ENTRY);
                    if key_race && attempt < KEY_RACE_RETRIES {
                        continue;
                    }
                    return fail_all(err);
                }
            }
        }
    }

    /// After a failed batch: whether its transaction found a block (`@chatcore_blocked`), and
    /// if so, marks in `refused` the sends not refused yet whose users a block stands between
    /// now (one read of the blocks by primary key) and answers whether it marked any. A block
    /// ended in between marks none: the batch is then tried again as it was.
    async fn refuse_blocked(
        &self,
        conn: &mut MySqlConnection,
        batch: &[NewMessage],
        keys: &[String],
        users: &ResolvedUsers,
        refused: &mut [bool],
    ) -> Result<bool, sqlx::Error> {
        let row = conn.fetch_one(sqlx::raw_sql("SELECT @chatcore_blocked")).await?;
        let found: Option<i64> = row.try_get_unchecked(0)?;
        if found != Some(1) {
            return Ok(false);
        }
        let pairs = unrefused_pairs(batch, keys, users, refused);
        if pairs.is_empty() {
            // A value left by an earlier batch on this connection: this one failed before.
            return Ok(false);
        }
        let mut sql = String::from("SELECT blocker_id, blocked_id FROM ");
        push_blocks_between(&mut sql, pairs.iter().map(|&(_, a, b)| (a, b)));
        let rows = conn.fetch_all(sqlx::raw_sql(&sql)).await?;
        let blocks = block_rows(&rows)?;
        let mut marked = false;
        for (i, a, b) in pairs {
            if blocks.contains(&(a, b)) || blocks.contains(&(b, a)) {
                refused[i] = true;
                marked = true;
            }
        }
        Ok(marked)
    }

    /// After a batch failed on NULL ids: whether its transaction found a removed sender
    /// (`@chatcore_removed`), and if so, the batch's users read again from the database when
    /// they show a sender removed that `users` did not know of (the cache knew them before
    /// the removal). The batch is then tried again with them: the removed senders' sends are
    /// refused, the others go on. Each such round learns of one more removed sender of the
    /// batch, so it ends.
    async fn reread_removed(
        &self,
        conn: &mut MySqlConnection,
        batch: &[NewMessage],
        keys: &[String],
        users: &ResolvedUsers,
    ) -> Result<Option<ResolvedUsers>, sqlx::Error> {
        let row = conn.fetch_one(sqlx::raw_sql("SELECT @chatcore_removed")).await?;
        let found: Option<i64> = row.try_get_unchecked(0)?;
        if found.unwrap_or(0) == 0 {
            return Ok(None);
        }
        // A value left by an earlier batch on this connection finds no new removal here.
        let fresh = self.resolve_users(conn, batch, keys, false).await?;
        let learned = fresh.removed.iter().any(|id| !users.removed.contains(id));
        Ok(learned.then_some(fresh))
    }

    /// Recipients by key (id and stored name) and the set of existing sender ids (removed
    /// ones apart), in one query, or from the cache when `cached` and it knows them all.
    /// `keys` holds each message's recipient key ([`chatcore::Username::key`]).
    async fn resolve_users(
        &self,
        conn: &mut MySqlConnection,
        batch: &[NewMessage],
        keys: &[String],
        cached: bool,
    ) -> Result<ResolvedUsers, sqlx::Error> {
        if cached && let Some(resolved) = self.known_users(batch, keys) {
            return Ok(resolved);
        }
        let unique_keys: Vec<&[u8]> = keys
            .iter()
            .map(|key| key.as_bytes())
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
        let mut query = QueryBuilder::<MySql>::new(
            "SELECT id, username, username_key, removed_at IS NOT NULL AS removed FROM chatcore_users \
             WHERE username_key IN (",
        );
        let mut list = query.separated(", ");
        for key in padded(&unique_keys) {
            list.push_bind(*key);
        }
        query.push(
            ") UNION SELECT id, username, username_key, removed_at IS NOT NULL AS removed \
             FROM chatcore_users WHERE id IN (",
        );
        let mut list = query.separated(", ");
        for id in padded(&senders) {
            list.push_bind(*id);
        }
        query.push(")");
        let rows = query.build().fetch_all(&mut *conn).await?;
        let mut resolved = ResolvedUsers::default();
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let name = rows::text(&row, "username").map_err(sqlx::Error::Decode)?;
            let key: Vec<u8> = row.try_get_unchecked("username_key")?;
            let removed: i64 = row.try_get_unchecked("removed")?;
            if removed == 0 {
                resolved.ids.insert(id);
            } else {
                resolved.removed.insert(id);
            }
            resolved.by_key.insert(key, (id, Username::from_stored(name)));
        }
        self.remember(&resolved);
        Ok(resolved)
    }

    /// Every sender and recipient of `batch` from the cache, or `None` if one is missing.
    fn known_users(&self, batch: &[NewMessage], keys: &[String]) -> Option<ResolvedUsers> {
        if self.cache_capacity == 0 {
            return None;
        }
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut resolved = ResolvedUsers::default();
        for (new, key) in batch.iter().zip(keys) {
            let recipient = known.by_key.get(key.as_bytes())?;
            if !known.ids.contains(&new.sender.id.0) {
                return None;
            }
            resolved.by_key.insert(key.as_bytes().to_vec(), recipient.clone());
            resolved.ids.insert(new.sender.id.0);
        }
        Some(resolved)
    }

    /// Adds users found in the database to the cache (emptied when full).
    fn remember(&self, found: &ResolvedUsers) {
        if self.cache_capacity == 0 {
            return;
        }
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.ids.len() + found.ids.len() > self.cache_capacity {
            *known = KnownUsers::default();
        }
        known.ids.extend(found.ids.iter().copied());
        for id in &found.removed {
            known.ids.remove(id);
        }
        known
            .by_key
            .extend(found.by_key.iter().map(|(key, user)| (key.clone(), user.clone())));
    }

    async fn try_write(
        &self,
        conn: &mut MySqlConnection,
        batch: &[NewMessage],
        keys: &[String],
        users: &ResolvedUsers,
        refused: &[bool],
    ) -> Result<Vec<Result<Inserted>>, sqlx::Error> {
        let mut outcomes: Vec<Option<Result<Inserted>>> = Vec::with_capacity(batch.len());
        let mut recipients = Vec::with_capacity(batch.len());
        let mut recipient_names = Vec::with_capacity(batch.len());
        let mut key_hashes: Vec<Option<[u8; 32]>> = Vec::with_capacity(batch.len());
        for ((new, key), refused) in batch.iter().zip(keys).zip(refused) {
            let recipient = users.by_key.get(key.as_bytes());
            let known = users.ids.contains(&new.sender.id.0) && recipient.is_some();
            outcomes.push(if users.removed.contains(&new.sender.id.0) {
                Some(Err(Error::Forbidden(Forbidden::AccountRemoved)))
            } else if !known {
                Some(Err(Error::NotFound(Entity::User)))
            } else if *refused {
                Some(Err(Error::Forbidden(Forbidden::Blocked)))
            } else {
                None
            });
            recipients.push(recipient.map_or(0, |(id, _)| *id));
            // The recipient as they wrote their name, whatever case the sender typed.
            recipient_names.push(recipient.map(|(_, name)| name));
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
            let found = query.build().fetch_all(&mut *conn).await?;
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
                        sender_previous: Position::START,
                        recipient_previous: Position::START,
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
            let started = Instant::now();
            let Committed {
                first_id,
                created_at,
                mut latest,
            } = self
                .commit_fresh(conn, batch, &fresh, &recipients, &key_hashes)
                .await?;
            self.metrics.committed(fresh.len(), started.elapsed());
            // `latest` holds each user's newest id before the batch; follow it through the
            // batch's messages in id order.
            let mut previous_of = |user: i64, id: i64| match latest.get_mut(&user) {
                Some(last) => Ok(Position(std::mem::replace(last, id))),
                None => Err(sqlx::Error::Protocol(format!(
                    "the insert transaction did not report user {user}'s previous position"
                ))),
            };
            for (n, &i) in fresh.iter().enumerate() {
                let new = &batch[i];
                let id = first_id + n as i64;
                let (sender_previous, recipient_previous) = if recipients[i] == new.sender.id.0 {
                    let previous = previous_of(recipients[i], id)?;
                    (previous, previous)
                } else {
                    (previous_of(new.sender.id.0, id)?, previous_of(recipients[i], id)?)
                };
                stored.insert(
                    i,
                    Inserted {
                        message: Message {
                            id: MessageId(id),
                            sender: new.sender.username.clone(),
                            recipient: recipient_names[i].cloned().ok_or_else(|| {
                                sqlx::Error::Protocol("a stored message without its recipient".into())
                            })?,
                            created_at,
                            body: new.body.clone(),
                            edited: None,
                            deleted: false,
                        },
                        recipient_id: UserId(recipients[i]),
                        replayed: false,
                        sender_previous,
                        recipient_previous,
                    },
                );
            }
        }

        // Replays of a send of this batch first: the fresh sends' answers are moved out below
        // (a replay always comes after its first).
        for i in 0..batch.len() {
            if let Some(first) = replay_of[i] {
                outcomes[i] = Some(
                    stored
                        .get(&first)
                        .map(|inserted| Inserted {
                            replayed: true,
                            sender_previous: Position::START,
                            recipient_previous: Position::START,
                            ..inserted.clone()
                        })
                        .ok_or_else(|| Error::bug("replayed send without its first")),
                );
            }
        }
        Ok((0..batch.len())
            .map(|i| match outcomes[i].take() {
                Some(outcome) => outcome,
                None => stored
                    .remove(&i)
                    .ok_or_else(|| Error::bug("fresh send without a stored message")),
            })
            .collect())
    }

    /// Stores the messages `fresh` (indexes into `batch`) in one transaction, sent as one
    /// multi-statement text round trip, and returns the first id and the timestamp given to
    /// them, and each participant's newest id before them:
    ///
    /// `BEGIN`; one upsert of `chatcore_counts` that locks the sequence row `(0, 0)` first,
    /// reserves `fresh.len()` ids and adds to the counters (unread totals among them); count
    /// the removed senders among the batch's (`@chatcore_removed`); look up the blocks between
    /// the batch's pairs (`@chatcore_blocked`); note the first id (NULL when a sender was
    /// removed or a block stands) and the server clock; insert the messages; upsert the
    /// participants' inbox rows (one per user and conversation of the batch); `COMMIT`; report
    /// the ids, the time and, for each user of the batch, their newest position up to the last
    /// one handed out before the batch (see [`previous_positions_select`]). Nine statements: each costs the
    /// server time even within one round trip, which is what a send at low concurrency waits
    /// for.
    ///
    /// The lock is held only while the server runs these statements, not across a network
    /// round trip. Every value written into the SQL is an integer or a hex literal, so nothing
    /// a user sent can change the statement. The session runs in strict mode (see
    /// `MysqlStore::connect_with`), so a missing sequence row (NULL ids) fails the insert.
    async fn commit_fresh(
        &self,
        conn: &mut MySqlConnection,
        batch: &[NewMessage],
        fresh: &[usize],
        recipients: &[i64],
        key_hashes: &[Option<[u8; 32]>],
    ) -> Result<Committed, sqlx::Error> {
        let count = fresh.len() as i64;
        let body_bytes: usize = fresh.iter().map(|&i| batch[i].body.len()).sum();
        let mut sql = String::with_capacity(2 * body_bytes + 200 * fresh.len() + 1024);
        let mut counts: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        // (user, peer) -> (offset of the conversation's newest message in the batch, messages
        // from the peer): one inbox upsert row per participant and conversation, however many
        // messages the batch holds for it.
        let mut inbox: BTreeMap<(i64, i64), (usize, i64)> = BTreeMap::new();
        let mut users = BTreeSet::new();
        for (n, &i) in fresh.iter().enumerate() {
            let sender = batch[i].sender.id;
            let recipient = UserId(recipients[i]);
            users.insert(sender.0);
            users.insert(recipient.0);
            let key = ConversationKey::new(sender, recipient);
            *counts.entry((key.low().0, key.high().0)).or_default() += 1;
            *counts.entry((sender.0, 0)).or_default() += 1;
            inbox.entry((sender.0, recipient.0)).or_default().0 = n + 1;
            if recipient != sender {
                *counts.entry((recipient.0, 0)).or_default() += 1;
                // The recipient's unread total (notes to self are never unread).
                *counts.entry((recipient.0, -1)).or_default() += 1;
                let entry = inbox.entry((recipient.0, sender.0)).or_default();
                entry.0 = n + 1;
                entry.1 += 1;
            }
        }
        // One upsert reserves the ids and adds to the counters. Its first row is the sequence
        // row (0, 0): the lowest key, locked first and held until COMMIT, which is the
        // commit-order guarantee (module docs); the other counter rows follow in key order, as
        // every writer takes them. The update of the sequence row hands its new value to
        // LAST_INSERT_ID() (per connection), which saves reading it back. The inserted values
        // are evaluated before the row is looked up, and the sequence row's value resets
        // LAST_INSERT_ID() to 0 first: if the row is missing, the upsert inserts it instead of
        // updating it, LAST_INSERT_ID() stays 0, the ids are NULL and the message insert fails
        // (strict mode), rolling back the new row, rather than reuse a stale LAST_INSERT_ID().
        // The clock is read after the lock, so timestamps follow commit order too.
        let _ = write!(
            sql,
            "BEGIN; INSERT INTO chatcore_counts (low_id, high_id, total) VALUES \
             (0,0,LAST_INSERT_ID(0)+{count})"
        );
        for ((low, high), total) in &counts {
            let _ = write!(sql, ",({low},{high},{total})");
        }
        // Under the sequence lock, the senders are read with a shared lock: a removal
        // (`Store::remove_user`, an exclusive lock on the user row) either waits for this
        // transaction to commit, or came first and is seen here (`@chatcore_removed`). Then
        // the batch's first consistent read (the sequence lock is taken by `set_block` too)
        // sees every block committed before (`@chatcore_blocked`; its own statement: MariaDB
        // evaluates every value of one `SET` before assigning any). Either leaves the ids
        // NULL, so the message insert fails (strict mode) and the whole transaction rolls
        // back; `write` then refuses the removed senders' sends (reading the users again) or
        // the blocked ones, and tries the others again. Both variables tell that failure from
        // a missing sequence row.
        let senders: BTreeSet<i64> = fresh.iter().map(|&i| batch[i].sender.id.0).collect();
        let _ = write!(
            sql,
            " ON DUPLICATE KEY UPDATE total = IF(low_id = 0, \
             LAST_INSERT_ID(total + VALUES(total)), total + VALUES(total)); \
             SELECT COUNT(*) INTO @chatcore_removed FROM chatcore_users WHERE id IN ("
        );
        for (n, sender) in senders.iter().enumerate() {
            if n > 0 {
                sql.push(',');
            }
            let _ = write!(sql, "{sender}");
        }
        let _ = write!(
            sql,
            ") AND removed_at IS NOT NULL LOCK IN SHARE MODE; \
             SET @chatcore_blocked = "
        );
        let pairs: BTreeSet<(i64, i64)> = fresh
            .iter()
            .map(|&i| (batch[i].sender.id.0, recipients[i]))
            .filter(|(sender, recipient)| sender != recipient)
            .collect();
        if pairs.is_empty() {
            sql.push('0');
        } else {
            sql.push_str("EXISTS (SELECT 1 FROM ");
            push_blocks_between(&mut sql, pairs.iter().copied());
            sql.push(')');
        }
        let _ = write!(
            sql,
            "; SET @chatcore_last = IF(LAST_INSERT_ID() > 0 AND @chatcore_removed = 0 AND @chatcore_blocked = 0, LAST_INSERT_ID() - {count}, NULL), \
             @chatcore_at = UTC_TIMESTAMP(6); "
        );
        sql.push_str(
            "INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low, \
             conversation_high, created_at, body, idempotency_key_hash) VALUES ",
        );
        for (n, &i) in fresh.iter().enumerate() {
            let new = &batch[i];
            let sender = new.sender.id;
            let recipient = UserId(recipients[i]);
            let key = ConversationKey::new(sender, recipient);
            if n > 0 {
                sql.push(',');
            }
            let _ = write!(
                sql,
                "(@chatcore_last+{},{},{},{},{},@chatcore_at,_utf8mb4 X'",
                n + 1,
                sender.0,
                recipient.0,
                key.low().0,
                key.high().0
            );
            push_hex(&mut sql, new.body.as_bytes());
            sql.push_str("',");
            match &key_hashes[i] {
                Some(hash) => {
                    sql.push_str("X'");
                    push_hex(&mut sql, hash);
                    sql.push_str("')");
                }
                None => sql.push_str("NULL)"),
            }
        }
        // The inbox rows in key order (every writer takes them so). The newest message of a
        // conversation in this batch is above every id stored before, so it replaces `last_id`.
        sql.push_str("; INSERT INTO chatcore_inbox (user_id, peer_id, last_id, unread, read_up_to) VALUES ");
        for (n, ((user, peer), (offset, unread))) in inbox.iter().enumerate() {
            if n > 0 {
                sql.push(',');
            }
            let _ = write!(sql, "({user},{peer},@chatcore_last+{offset},{unread},NULL)");
        }
        sql.push_str(" ON DUPLICATE KEY UPDATE last_id = VALUES(last_id), unread = unread + VALUES(unread)");
        sql.push_str("; COMMIT; ");
        sql.push_str(&previous_positions_select(&users));
        // Only the last statement returns rows: one per user.
        let rows = conn.fetch_all(sqlx::raw_sql(&sql)).await?;
        let row = rows
            .first()
            .ok_or_else(|| sqlx::Error::Protocol("no answer from the insert transaction".into()))?;
        let last: Option<i64> = row.try_get_unchecked("last_id")?;
        let created_at: Option<chrono::NaiveDateTime> = row.try_get_unchecked("created_at")?;
        let (Some(last), Some(created_at)) = (last, created_at) else {
            return Err(sqlx::Error::Protocol(
                "the chatcore message id sequence is missing: run Backend::migrate()".into(),
            ));
        };
        let mut latest = HashMap::with_capacity(rows.len());
        for row in &rows {
            let user: i64 = row.try_get_unchecked("user_id")?;
            let previous: Option<i64> = row.try_get_unchecked("previous")?;
            latest.insert(user, previous.unwrap_or(0));
        }
        Ok(Committed {
            first_id: last + 1,
            created_at: created_at.and_utc(),
            latest,
        })
    }
}

/// What [`Writer::commit_fresh`] stored.
struct Committed {
    /// The id of the batch's first message (the others follow, in order).
    first_id: i64,
    /// The timestamp of every message of the batch.
    created_at: DateTime<Utc>,
    /// Each user of the batch's newest id before it (0: none).
    latest: HashMap<i64, i64>,
}

/// The statement that ends the insert transaction's round trip, after its `COMMIT`: one row
/// per user of `users` (at least one) with the user's newest id up to `@chatcore_last` (the
/// last id handed out before the batch; 0 for none), and the batch's `last_id` and
/// `created_at`.
///
/// Every id up to `@chatcore_last` was committed before the batch took the sequence lock, so
/// this read (a new snapshot, after the `COMMIT`: the lock is already released) sees all of
/// them, and the batch's own ids and any later batch's are above the bound. For each user,
/// four backward reads of their entries in `chatcore_messages_sender (sender_id, id)`,
/// `chatcore_messages_recipient (recipient_id, id)`, `chatcore_read_events_reader (reader_id,
/// position)` and `chatcore_read_events_peer (peer_id, position)` (read events share the
/// sequence, so they are positions too), from their newest, that stop at the first one within
/// the bound: they pass over only the user's events committed since the batch took its ids
/// (its own among them), never their history (`plans.rs` checks the plan). `mark_read` ends
/// its round trip with the same reads ([`push_previous_position`]).
///
/// One query block for the users (a primary-key range of `chatcore_users`) with correlated
/// subqueries, whatever the number of users. Measured on MariaDB 10.11 before read events
/// existed (two subqueries per user; statement alone, 65 users / 2 users, client round trip
/// included): this 0.27 ms / 0.09 ms; a `UNION ALL` of
/// one `SELECT` per user with `MAX` subqueries (each one index dive) 1.4 ms / 0.1 ms, the
/// server's parsing and planning of 195 query blocks taking most of it; `MAX ... GROUP BY`
/// over the two indexes (a loose index scan) 0.6 ms / 0.1 ms; the old final `SELECT` of the
/// id and time alone 0.04 ms. The user ids are integers written into the SQL.
pub(crate) fn previous_positions_select(users: &BTreeSet<i64>) -> String {
    let mut sql = String::with_capacity(1100 + 21 * users.len());
    sql.push_str("SELECT u.id AS user_id, ");
    push_previous_position(&mut sql, "u.id");
    sql.push_str(
        " AS previous, @chatcore_last AS last_id, CAST(@chatcore_at AS DATETIME(6)) AS created_at \
         FROM chatcore_users u WHERE u.id IN (",
    );
    for (n, user) in users.iter().enumerate() {
        if n > 0 {
            sql.push(',');
        }
        let _ = write!(sql, "{user}");
    }
    sql.push(')');
    sql
}

/// Appends the expression of `user`'s newest position up to `@chatcore_last` (0 for none):
/// the greatest of four backward reads of the user's index entries (messages as sender and as
/// recipient, read events as reader and as peer), each stopping at its first entry within the
/// bound. `user` is SQL: a column, an integer or a session variable.
pub(crate) fn push_previous_position(sql: &mut String, user: &str) {
    let _ = write!(
        sql,
        "GREATEST(\
         IFNULL((SELECT ms.id FROM chatcore_messages ms FORCE INDEX (chatcore_messages_sender) \
           WHERE ms.sender_id = {user} AND ms.id <= @chatcore_last ORDER BY ms.id DESC LIMIT 1), 0), \
         IFNULL((SELECT mr.id FROM chatcore_messages mr FORCE INDEX (chatcore_messages_recipient) \
           WHERE mr.recipient_id = {user} AND mr.id <= @chatcore_last ORDER BY mr.id DESC LIMIT 1), 0), \
         IFNULL((SELECT er.position FROM chatcore_read_events er FORCE INDEX (chatcore_read_events_reader) \
           WHERE er.reader_id = {user} AND er.position <= @chatcore_last ORDER BY er.position DESC LIMIT 1), 0), \
         IFNULL((SELECT ep.position FROM chatcore_read_events ep FORCE INDEX (chatcore_read_events_peer) \
           WHERE ep.peer_id = {user} AND ep.position <= @chatcore_last ORDER BY ep.position DESC LIMIT 1), 0))"
    );
}

/// The sends of `batch` not refused yet between two users (not notes to self), as (index,
/// sender, recipient).
fn unrefused_pairs(
    batch: &[NewMessage],
    keys: &[String],
    users: &ResolvedUsers,
    refused: &[bool],
) -> Vec<(usize, i64, i64)> {
    let mut pairs = Vec::new();
    for (i, (new, key)) in batch.iter().zip(keys).enumerate() {
        if refused[i] {
            continue;
        }
        if let Some((recipient, _)) = users.by_key.get(key.as_bytes())
            && *recipient != new.sender.id.0
        {
            pairs.push((i, new.sender.id.0, *recipient));
        }
    }
    pairs
}

/// The (blocker, blocked) pairs of rows of `chatcore_blocks`.
fn block_rows(rows: &[sqlx::mysql::MySqlRow]) -> Result<HashSet<(i64, i64)>, sqlx::Error> {
    let mut blocks = HashSet::with_capacity(rows.len());
    for row in rows {
        blocks.insert((row.try_get_unchecked(0)?, row.try_get_unchecked(1)?));
    }
    Ok(blocks)
}

/// Appends `chatcore_blocks` and the condition that finds the blocks between each pair of
/// `pairs`, both ways: primary-key lookups (two per pair). The index is forced: the optimizer
/// would otherwise read every block of each user in the key index. The ids are integers.
pub(crate) fn push_blocks_between(sql: &mut String, pairs: impl Iterator<Item = (i64, i64)>) {
    sql.push_str("chatcore_blocks FORCE INDEX (PRIMARY) WHERE ");
    for (n, (a, b)) in pairs.enumerate() {
        if n > 0 {
            sql.push_str(" OR ");
        }
        let _ = write!(
            sql,
            "(blocker_id = {a} AND blocked_id = {b}) OR (blocker_id = {b} AND blocked_id = {a})"
        );
    }
}

/// Appends `bytes` as upper-case hex digits.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
}

/// Users that exist: keys never change owner and ids are never reused.
#[derive(Default)]
struct KnownUsers {
    /// Id and stored name by [`chatcore::Username::key`].
    by_key: HashMap<Vec<u8>, (i64, Username)>,
    ids: HashSet<i64>,
}

/// The users of one batch.
#[derive(Default)]
struct ResolvedUsers {
    /// Id and stored name by [`chatcore::Username::key`].
    by_key: HashMap<Vec<u8>, (i64, Username)>,
    /// Users who may send: found and not removed.
    ids: HashSet<i64>,
    /// Removed accounts among them (`Store::remove_user`): their sends are refused.
    removed: HashSet<i64>,
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

#[cfg(test)]
mod tests {
    use chatcore::{Backend, Store, User};

    use super::*;
    use crate::testing::TestDatabase;

    fn send(from: &User, to: &User, key: Option<&str>) -> NewMessage {
        NewMessage {
            sender: from.clone(),
            recipient: to.username.clone(),
            body: format!("{} to {}", from.username, to.username),
            idempotency_key: key.map(str::to_owned),
        }
    }

    /// One batch (one transaction) with several messages of the same users, a note to oneself,
    /// a key used twice in the batch and a key stored by an earlier batch: each fresh message
    /// names each participant's message before it, in the batch or earlier; replays name none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn previous_positions_within_one_batch() {
        let db = TestDatabase::create("chatcore_mysql_test_")
            .await
            .expect("create a test database");
        let store = db.store(MysqlConfig::default()).await.expect("migrated store");
        let mut users = Vec::new();
        for name in ["a", "b", "c", "d"] {
            users.push(store.create_user(&Username::parse(name).unwrap()).await.unwrap());
        }
        let (a, b, c, d) = (&users[0], &users[1], &users[2], &users[3]);
        let earlier = store.insert_message(send(a, b, Some("k0"))).await.unwrap();
        let e = earlier.message.id.0;
        store.insert_message(send(d, d, None)).await.unwrap();

        let writer = Writer {
            pool: store.pool().clone(),
            queue: Arc::new(Mutex::new(mpsc::channel(1).1)),
            max_batch: 100,
            max_batch_bytes: 1 << 20,
            cache_capacity: 0,
            known: Arc::default(),
            spare: Arc::default(),
            hold_idle: Duration::ZERO,
            metrics: StoreMetrics::register("mysql"),
        };
        let batch = [
            send(a, b, None),
            send(b, a, Some("k1")),
            send(a, a, None),
            send(b, a, Some("k1")), // the key again, in the same batch
            send(c, b, None),
            send(a, b, Some("k0")), // a key stored by an earlier batch
            send(a, c, None),
            send(c, c, None),
            send(b, c, None),
        ];
        let outcomes: Vec<Inserted> = writer
            .write(&batch)
            .await
            .into_iter()
            .map(|outcome| outcome.unwrap())
            .collect();
        let id = |n: usize| outcomes[n].message.id.0;
        assert_eq!(id(0), e + 2, "the batch follows d's note");
        assert!(outcomes[3].replayed && outcomes[5].replayed);
        assert_eq!(outcomes[3].message, outcomes[1].message);
        assert_eq!(outcomes[5].message, earlier.message);
        let reported: Vec<(i64, i64)> = outcomes
            .iter()
            .map(|o| (o.sender_previous.0, o.recipient_previous.0))
            .collect();
        assert_eq!(
            reported,
            vec![
                (e, e),         // a to b: both last in the earlier batch
                (id(0), id(0)), // b to a
                (id(1), id(1)), // a to a: one previous for both sides
                (0, 0),         // a replay names none
                (0, id(1)),     // c to b: c's first
                (0, 0),         // a replay names none
                (id(2), id(4)), // a to c
                (id(6), id(6)), // c to c
                (id(4), id(7)), // b to c
            ]
        );
        for (user, latest) in [(a, id(6)), (b, id(8)), (c, id(8)), (d, e + 1)] {
            assert_eq!(store.latest_position(user.id).await.unwrap(), Position(latest));
        }
        assert_eq!(
            store.latest_position(UserId(1_000)).await.unwrap(),
            Position::START
        );
        store.close().await.unwrap();
    }
}
