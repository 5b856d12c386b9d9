//! [`PgNotifier`]: a [`Notifier`] over PostgreSQL `LISTEN`/`NOTIFY`, so that several server
//! processes (nodes) sharing one database act as one message center without Redis.
//!
//! # How it works
//! It follows `chatcore-redis`'s design, on one channel per deployment
//! ([`PgNotifierConfig::channel`]):
//! - **Payloads.** `publish` sends one `NOTIFY` per event (not per user) carrying a one-line
//!   header (publishing node, kind, position, each recipient with their `previous`) and the
//!   event's rendered frame unchanged (`wire.rs`). PostgreSQL refuses payloads of 8000 bytes
//!   or more: a larger event travels by reference, its frame stored in
//!   `chatcore_notify_payloads` in the same statement as the `NOTIFY` (so the row is visible
//!   when the notification arrives), and each node that has a subscriber for one of its users
//!   reads it back once, whatever its number of sockets. Old rows are deleted by later large
//!   publishes ([`PgNotifierConfig::payload_retention`]). The table comes with the store's
//!   migrations: run [`chatcore::Backend::migrate`] of a [`crate::PostgresStore`] on the
//!   database first.
//! - **Local delivery.** `publish` hands the event to this process's own subscriptions
//!   directly, before the `NOTIFY`, so they get it without the round trip, in call order,
//!   even when the `NOTIFY` fails; the listening task skips the copy that comes back (its
//!   header carries this node's id).
//! - **One listening connection per process.** A background task owns it and `LISTEN`s to the
//!   deployment's channel from the start, so `subscribe` only registers the socket in a local
//!   table: once it returns, every later event reaches it. Every node receives every event
//!   of the deployment and delivers those of its local users; the header alone is read for
//!   the others. PostgreSQL serializes all `NOTIFY`s of a server through one queue, so this
//!   transport suits deployments of a few nodes at thousands of events per second; beyond
//!   that, use Redis.
//! - **Reconnect and `Gap`.** When the listening connection is lost (a server restart, a
//!   network fault, or a health-check query unanswered within
//!   [`PgNotifierConfig::command_timeout`]), the task reconnects with exponential backoff and
//!   jitter, `LISTEN`s again, and then delivers [`chatcore::Delivery::Gap`] to every local
//!   subscription before anything read on the new connection: notifications sent meanwhile
//!   are lost, and the consumer catches up from storage with `since`.
//! - **A failed publish and gap notices.** A `publish` that fails (server down, timeout)
//!   returns [`chatcore::Error::Unavailable`] within [`PgNotifierConfig::command_timeout`];
//!   the other nodes' listening connections may be up, so the notifier remembers the users and
//!   a background task publishes a gap notice for them, retrying with the backoff until the
//!   server takes it ([`PgNotifier::gap_notices_owed`]); a node that receives one delivers a
//!   `Gap` to those users' subscriptions.
//! - **Ephemeral events and presence.** Typing and presence frames travel like any event,
//!   without a position. The nodes' presence accounts (`presence_sync`, see
//!   `chatcore::presence`) name the reserved user [`chatcore::UserId::PRESENCE`] (`-1`); a
//!   full account of many users is larger than a `NOTIFY` takes and goes through
//!   `chatcore_notify_payloads` like any large frame.
//! - **Unreadable payloads** are delivered as a `Gap` to the users the header names (or to
//!   every local subscription when even those cannot be read), and logged.

mod config;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatcore::metrics::NotifierMetrics;
use chatcore::notify::{Delivery, Event, GapDebts, Notifier, Recipient, SubscriberTable, Subscription};
use chatcore::{Error, Position, Result, UserId};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::task::JoinHandle;

pub use config::PgNotifierConfig;
use wire::{Body, NodeId};

/// Most recipients named in one `NOTIFY` header (a publish to more sends several), which keeps
/// the header far below the payload limit.
const MAX_RECIPIENTS: usize = 200;

/// The `application_name` of the publishing connections (operators and tests tell them apart).
pub(crate) const PUBLISH_APPLICATION: &str = "chatcore-notify-publish";
/// The `application_name` of the listening connection.
pub(crate) const LISTEN_APPLICATION: &str = "chatcore-notify-listen";

/// A [`Notifier`] over PostgreSQL `LISTEN`/`NOTIFY`: every process (node) that shares one
/// database and one [`PgNotifierConfig::channel`] hears every event, so the nodes act as one
/// message center. See the crate docs for the design; cloning is cheap and shares
/// everything; the background tasks stop when the last clone is dropped.
///
/// ```no_run
/// # async fn demo() -> chatcore::Result<()> {
/// use chatcore_postgres::{PgNotifier, PgNotifierConfig};
/// let notifier = PgNotifier::connect("postgres://postgres@127.0.0.1/chat", PgNotifierConfig::default()).await?;
/// assert!(notifier.is_connected());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgNotifier {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    debts: Arc<GapDebts>,
    /// The listening task and the gap-notice task.
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the handle and the tasks share.
struct Shared {
    node: NodeId,
    config: PgNotifierConfig,
    publisher: PgPool,
    /// Opens the listening connection (one at a time).
    listen_pool: PgPool,
    table: Arc<SubscriberTable>,
    connected: AtomicBool,
    /// Reconnects and failed publishes (the table counts overflows and gaps).
    metrics: NotifierMetrics,
}

impl std::fmt::Debug for PgNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgNotifier")
            .field("node", &format_args!("{}", self.inner.shared.node))
            .field("channel", &self.inner.shared.config.channel)
            .field("connected", &self.is_connected())
            .field("gap_notices_owed", &self.gap_notices_owed())
            .finish_non_exhaustive()
    }
}

/// Why the notification transport failed, kept as the source of
/// [`chatcore::Error::Unavailable`].
#[derive(Debug)]
enum TransportError {
    Timeout(Duration),
    Database(sqlx::Error),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Timeout(limit) => write!(f, "PostgreSQL did not answer within {limit:?}"),
            TransportError::Database(_) => f.write_str("PostgreSQL notification failed"),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Timeout(_) => None,
            TransportError::Database(e) => Some(e),
        }
    }
}

/// Runs `work` within `limit`.
async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
) -> std::result::Result<T, TransportError> {
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(TransportError::Database(e)),
        Err(_) => Err(TransportError::Timeout(limit)),
    }
}

impl PgNotifier {
    /// [`PgNotifier::connect_with`] on a `postgres://` URL ([`Error::Invalid`] when it is not
    /// one).
    pub async fn connect(url: &str, config: PgNotifierConfig) -> Result<Self> {
        config.validate()?;
        Self::connect_with(crate::parse_url(url)?, config).await
    }

    /// Checks `config`, opens the listening connection and `LISTEN`s to the channel, picks a
    /// random node id, and starts the background tasks. Must be called within a Tokio
    /// runtime.
    ///
    /// Errors: [`Error::Invalid`] for a bad setting, [`Error::Unavailable`] when the server
    /// cannot be reached within [`PgNotifierConfig::connect_timeout`].
    pub async fn connect_with(options: PgConnectOptions, config: PgNotifierConfig) -> Result<Self> {
        config.validate()?;
        // A publish is one statement: no ping of a connection used within the last second
        // (sqlx's default pings on every checkout, a round trip more per event).
        let publisher = crate::ping_if_idle(PgPoolOptions::new())
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            // `NOTIFY` gives its transaction an id, so with the server's default each
            // notification would wait for a WAL flush of its own (one `fsync` per event, on top
            // of the message's commit). A notification needs no durability (what it announces
            // is committed already, and a lost one is caught up from storage); delivery to
            // listeners happens at commit, not at the flush.
            .connect_lazy_with(
                options
                    .clone()
                    .application_name(PUBLISH_APPLICATION)
                    .options([("synchronous_commit", "off")]),
            );
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.connect_timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options.application_name(LISTEN_APPLICATION));
        let metrics = NotifierMetrics::register("postgres");
        let shared = Arc::new(Shared {
            node: NodeId::random(),
            table: Arc::new(SubscriberTable::with_metrics(
                config.queue_capacity,
                metrics.clone(),
            )),
            config,
            publisher,
            listen_pool,
            connected: AtomicBool::new(false),
            metrics,
        });
        let listener = listen(&shared).await.map_err(Error::notifications_unavailable)?;
        shared.connected.store(true, Ordering::Release);
        let debts = Arc::new(GapDebts::default());
        let listen_task = tokio::spawn(run_listener(shared.clone(), listener));
        let gap_task = tokio::spawn(run_gap_notices(shared.clone(), debts.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                debts,
                tasks: [listen_task, gap_task],
            }),
        })
    }

    /// Whether the listening connection is up now (while it is down, the task reconnects).
    pub fn is_connected(&self) -> bool {
        self.inner.shared.connected.load(Ordering::Acquire)
    }

    /// How many subscriptions (open connections) `user` has in this process.
    pub fn subscriber_count(&self, user: UserId) -> usize {
        self.inner.shared.table.subscriber_count(user)
    }

    /// How many users are owed a gap notice now: their events could not be published, and
    /// the server has not yet taken the notice that tells the other nodes. 0 when all is well.
    pub fn gap_notices_owed(&self) -> usize {
        self.inner.debts.len()
    }

    /// Sends `event` to `recipients` (deduplicated) through the server.
    async fn notify(
        &self,
        event: &Event,
        recipients: &[(UserId, Option<Position>)],
    ) -> Result<(), sqlx::Error> {
        let shared = &self.inner.shared;
        let frame = event.frame_str();
        for chunk in recipients.chunks(MAX_RECIPIENTS) {
            let header = wire::header(shared.node, event.kind().as_str(), event.position(), chunk);
            if header.len() + 3 + frame.len() <= shared.config.max_inline_payload {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(&shared.config.channel)
                    .bind(wire::inline(&header, frame))
                    .execute(&shared.publisher)
                    .await?;
            } else {
                // One statement: the row commits with the notification, so it is there when
                // a node reads it; rows past their retention go at the same time.
                sqlx::query(
                    "WITH old AS (DELETE FROM chatcore_notify_payloads \
                       WHERE created_at < now() - make_interval(secs => $4)), \
                     p AS (INSERT INTO chatcore_notify_payloads (frame) VALUES ($3) RETURNING id) \
                     SELECT pg_notify($1, $2 || p.id::text || E'\\n') FROM p",
                )
                .bind(&shared.config.channel)
                .bind(wire::reference_prefix(&header))
                .bind(frame.as_bytes())
                .bind(shared.config.payload_retention.as_secs_f64())
                .execute(&shared.publisher)
                .await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Notifier for PgNotifier {
    fn is_ready(&self) -> bool {
        // The listening connection is up (LISTEN issued): what carries other nodes' events here.
        self.is_connected()
    }

    async fn publish(&self, recipients: &[Recipient], event: &Event) -> Result<()> {
        let shared = &self.inner.shared;
        let mut users: Vec<(UserId, Option<Position>)> = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            // A user named twice (e.g. a message to oneself) is notified once.
            if users.iter().any(|(user, _)| *user == recipient.user) {
                continue;
            }
            users.push((recipient.user, recipient.previous));
            // This process's own subscriptions first, in call order and without the round
            // trip; the listening task skips the copy that comes back.
            shared.table.deliver(
                recipient.user,
                &Delivery::Event {
                    event: event.clone(),
                    previous: recipient.previous,
                },
            );
        }
        if users.is_empty() {
            return Ok(());
        }
        match within(shared.config.command_timeout, self.notify(event, &users)).await {
            Ok(()) => Ok(()),
            Err(error) => {
                shared.metrics.publish_failed();
                // Other nodes' subscriptions may have missed it while their listening
                // connections stay up: they get a gap notice once the server takes one.
                self.inner.debts.owe(users.iter().map(|(user, _)| *user));
                Err(Error::notifications_unavailable(error))
            }
        }
    }

    async fn subscribe(&self, user: UserId) -> Result<Subscription> {
        // The channel is listened to from `connect` on: registering locally is enough for
        // every later event to arrive (or, after a lost connection, a `Gap`).
        let (subscription, _first) = self.inner.shared.table.subscribe(user, || ());
        Ok(subscription)
    }
}

/// Opens the listening connection and `LISTEN`s to the channel, within the connect timeout.
async fn listen(shared: &Shared) -> std::result::Result<PgListener, TransportError> {
    within(shared.config.connect_timeout, async {
        let mut listener = PgListener::connect_with(&shared.listen_pool).await?;
        // Reconnecting is this crate's job (backoff, then a `Gap`), never silent.
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        listener.listen(&shared.config.channel).await?;
        Ok(listener)
    })
    .await
}

/// The listening task: fans notifications out; on a lost connection reconnects with backoff
/// and jitter, then delivers a `Gap` to every local subscription. Runs until aborted.
async fn run_listener(shared: Arc<Shared>, mut listener: PgListener) {
    loop {
        let broken = serve(&shared, &mut listener).await;
        shared.connected.store(false, Ordering::Release);
        tracing::warn!(error = %broken, "PostgreSQL listening connection lost; reconnecting");
        drop(listener);
        let mut failures = 0u32;
        listener = loop {
            match listen(&shared).await {
                Ok(listener) => break listener,
                Err(error) => {
                    let wait = shared.config.backoff(failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, retry_in = ?wait, "PostgreSQL listening reconnect failed");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        shared.connected.store(true, Ordering::Release);
        tracing::info!("PostgreSQL listening connection reopened");
        shared.metrics.reconnected();
        // Before anything read on the new connection, so that a consumer's catch-up covers
        // everything it may have missed.
        shared.table.deliver_all(&Delivery::Gap);
    }
}

/// Reads notifications until the connection breaks; returns why.
async fn serve(shared: &Shared, listener: &mut PgListener) -> TransportError {
    loop {
        match tokio::time::timeout(shared.config.health_check_interval, listener.try_recv()).await {
            Ok(Ok(Some(notification))) => {
                if let Err(broken) = route(shared, listener, notification.payload()).await {
                    return broken;
                }
            }
            Ok(Ok(None)) => {
                return TransportError::Database(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the listening connection closed",
                )));
            }
            Ok(Err(error)) => return TransportError::Database(error),
            // Quiet for a while: check that the connection is still alive.
            Err(_) => {
                let check = sqlx::query("SELECT 1").execute(&mut *listener);
                if let Err(broken) = within(shared.config.command_timeout, check).await {
                    return broken;
                }
            }
        }
    }
}

/// Delivers one notification to the local subscriptions of the users it names. `Err` when the
/// connection broke while reading a large frame back.
async fn route(
    shared: &Shared,
    listener: &mut PgListener,
    payload: &str,
) -> std::result::Result<(), TransportError> {
    let received = match wire::decode(payload) {
        Ok(received) => received,
        Err(reason) => {
            // Not even the users can be read: everybody here catches up.
            tracing::warn!(
                reason,
                "unreadable notification; a gap for every local subscription"
            );
            shared.table.deliver_all(&Delivery::Gap);
            return Ok(());
        }
    };
    if received.node == shared.node {
        return Ok(()); // delivered locally by `publish`
    }
    let local: Vec<(UserId, Option<Position>)> = received
        .recipients
        .iter()
        .copied()
        .filter(|(user, _)| shared.table.subscriber_count(*user) > 0)
        .collect();
    if local.is_empty() {
        return Ok(());
    }
    let gap_for_local = || {
        for (user, _) in &local {
            shared.table.deliver(*user, &Delivery::Gap);
        }
    };
    let (kind, position, frame) = match received.body {
        Ok(Body::Gap) => {
            tracing::debug!(node = %received.node, "gap notice: a publish had failed");
            gap_for_local();
            return Ok(());
        }
        Ok(Body::Inline {
            kind,
            position,
            frame,
        }) => (kind, position, Bytes::copy_from_slice(frame.as_bytes())),
        Ok(Body::Reference { kind, position, id }) => {
            let read =
                sqlx::query_scalar::<_, Vec<u8>>("SELECT frame FROM chatcore_notify_payloads WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *listener);
            match within(shared.config.command_timeout, read).await {
                Ok(Some(frame)) => (kind, position, Bytes::from(frame)),
                Ok(None) => {
                    tracing::warn!(id, "a large notification's frame is gone; sending a gap instead");
                    gap_for_local();
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(%error, id, "could not read a large notification; sending a gap instead");
                    gap_for_local();
                    return match error {
                        TransportError::Database(ref e) if !crate::error::is_unavailable(e) => Ok(()),
                        _ => Err(error),
                    };
                }
            }
        }
        Err(reason) => {
            tracing::warn!(reason, "undecodable notification; sending a gap instead");
            gap_for_local();
            return Ok(());
        }
    };
    match Event::from_frame(kind, position, frame) {
        Ok(event) => {
            for (user, previous) in local {
                shared.table.deliver(
                    user,
                    &Delivery::Event {
                        event: event.clone(),
                        previous,
                    },
                );
            }
        }
        Err(error) => {
            tracing::warn!(%error, "undecodable notification frame; sending a gap instead");
            gap_for_local();
        }
    }
    Ok(())
}

/// Publishes the owed gap notices, retrying with the backoff while the server refuses them.
/// Runs until aborted.
async fn run_gap_notices(shared: Arc<Shared>, debts: Arc<GapDebts>) {
    debts
        .pay(
            MAX_RECIPIENTS,
            |failures| shared.config.backoff(failures),
            |users| {
                let notice = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(&shared.config.channel)
                    .bind(wire::gap(shared.node, &users))
                    .execute(&shared.publisher);
                let limit = shared.config.command_timeout;
                async move { within(limit, notice).await.map(|_| ()) }
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDatabase;

    /// Publishing connections do not wait for a WAL flush per notification.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishers_commit_without_waiting_for_the_flush() {
        let database = TestDatabase::create("chatcore_pg_test_").await.unwrap();
        let notifier = PgNotifier::connect_with(database.options().unwrap(), PgNotifierConfig::default())
            .await
            .unwrap();
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&notifier.inner.shared.publisher)
            .await
            .unwrap();
        assert_eq!(setting, "off");
        let mut plain = sqlx::ConnectOptions::connect(&database.options().unwrap())
            .await
            .unwrap();
        let default: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut plain)
            .await
            .unwrap();
        assert_eq!(default, "on", "the server's default, which the publishers change");
    }
}
