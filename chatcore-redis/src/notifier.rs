//! [`RedisNotifier`]: the [`Notifier`] handle that publishes and subscribes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chatcore::metrics::NotifierMetrics;
use chatcore::notify::{Delivery, Event, GapDebts, Notifier, Recipient, SubscriberTable, Subscription};
use chatcore::{Error, Result, UserId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::RedisConfig;
use crate::error::TransportError;
use crate::gaps;
use crate::subscriber::{self, Channels, Command, Shared};
use crate::wire::{NodeId, Payload};

/// A [`Notifier`] over Redis pub/sub: every process (node) that shares one store and one
/// Redis (and one [`RedisConfig::channel_prefix`]) hears every event, so the nodes act
/// as one message center.
///
/// `publish` delivers to this process's own subscriptions at once, then sends one
/// `PUBLISH` per user to the user's channel, pipelined in one round trip, carrying the
/// event's rendered frame as is (the payload is described in the crate docs).
/// `subscribe` registers the connection in a local table and, for the user's first
/// local connection, subscribes the process's single pub/sub connection to the user's
/// channel; it returns once Redis confirmed, so nothing published after it returns is
/// missed. Cloning is cheap and shares everything; the background tasks stop when the last
/// clone is dropped, and the open [`Subscription`]s then end.
///
/// ```no_run
/// # async fn demo() -> chatcore::Result<()> {
/// use std::sync::Arc;
/// use chatcore::{ChatConfig, ChatService, MemoryStore};
/// use chatcore_redis::{RedisConfig, RedisNotifier};
///
/// let notifier = RedisNotifier::connect(RedisConfig::default()).await?;
/// let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(notifier), ChatConfig::default());
/// # let _ = chat; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisNotifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// This process's id in payload headers.
    node: NodeId,
    publisher: ConnectionManager,
    channels: Arc<Channels>,
    table: Arc<SubscriberTable>,
    commands: mpsc::UnboundedSender<Command>,
    connected: Arc<AtomicBool>,
    /// Users owed a gap notice after a failed publish.
    debts: Arc<GapDebts>,
    command_timeout: Duration,
    metrics: NotifierMetrics,
    /// The subscriber task and the gap-notice task.
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Subscriptions hold command senders too, so the tasks would not notice on their own.
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for RedisNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisNotifier")
            .field("node", &format_args!("{}", self.inner.node))
            .field("channels", &self.inner.channels)
            .field("connected", &self.is_connected())
            .field("gap_notices_owed", &self.gap_notices_owed())
            .finish_non_exhaustive()
    }
}

impl RedisNotifier {
    /// Checks `config`, connects the publishing and the subscriber connections, picks a
    /// random node id, and starts the background tasks (the one that owns the subscriber
    /// connection, and the one that publishes gap notices after failed publishes). Must be
    /// called within a Tokio runtime.
    ///
    /// Errors: [`Error::Invalid`] for a bad setting or URL, [`Error::Unavailable`] when Redis
    /// cannot be reached within [`RedisConfig::connect_timeout`].
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::invalid(format!("redis notifier: bad url: {e}")))?;
        let publisher = connect_publisher(&client, &config).await?;
        let subscriber_connection = subscriber::open(&client, &config).await?;
        Ok(Self::spawn(
            client,
            config,
            publisher,
            Some(subscriber_connection),
        ))
    }

    /// Like [`RedisNotifier::connect`], but a Redis that cannot be reached now is not an
    /// error: the notifier starts down, exactly as after an outage at run time (`subscribe`
    /// fails with [`Error::Unavailable`], `publish` delivers locally and fails, so a server
    /// answers `/ws` with 503), logs a warning, and connects in the background with the
    /// reconnect backoff; [`RedisNotifier::is_connected`] turns true once it has. For a
    /// server that must keep serving without Redis.
    ///
    /// Errors: [`Error::Invalid`] for a bad setting or URL only.
    pub async fn connect_in_background(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::invalid(format!("redis notifier: bad url: {e}")))?;
        let subscriber_connection = match subscriber::open(&client, &config).await {
            Ok(connection) => Some(connection),
            Err(error) => {
                tracing::warn!(%error, "redis is unavailable: cross-node notifications are unavailable until it answers; retrying in the background");
                None
            }
        };
        let publisher = match subscriber_connection {
            Some(_) => connect_publisher(&client, &config).await.ok(),
            None => None,
        };
        // Either way the publishing connection is (re)made by the manager on the next publish.
        let publisher = match publisher {
            Some(publisher) => publisher,
            None => ConnectionManager::new_lazy_with_config(client.clone(), publisher_config(&config))
                .map_err(|e| Error::invalid(format!("redis notifier: {e}")))?,
        };
        Ok(Self::spawn(client, config, publisher, subscriber_connection))
    }

    fn spawn(
        client: redis::Client,
        config: RedisConfig,
        publisher: ConnectionManager,
        subscriber_connection: Option<(redis::aio::PubSubSink, redis::aio::PubSubStream)>,
    ) -> Self {
        let node = NodeId::random();
        let channels = Arc::new(Channels::new(&config.channel_prefix));
        let metrics = NotifierMetrics::register("redis");
        let table = Arc::new(SubscriberTable::with_metrics(
            config.queue_capacity,
            metrics.clone(),
        ));
        let connected = Arc::new(AtomicBool::new(subscriber_connection.is_some()));
        let debts = Arc::new(GapDebts::default());
        let (commands, receiver) = mpsc::unbounded_channel();
        let command_timeout = config.command_timeout;
        let gap_task = tokio::spawn(gaps::run(
            debts.clone(),
            publisher.clone(),
            channels.clone(),
            node,
            config.clone(),
        ));
        let shared = Shared {
            client,
            config,
            node,
            channels: channels.clone(),
            table: table.clone(),
            connected: connected.clone(),
            metrics: metrics.clone(),
        };
        let subscriber_task = tokio::spawn(subscriber::run(shared, receiver, subscriber_connection));
        Self {
            inner: Arc::new(Inner {
                node,
                publisher,
                channels,
                table,
                commands,
                connected,
                debts,
                command_timeout,
                metrics,
                tasks: [subscriber_task, gap_task],
            }),
        }
    }

    /// Whether the subscriber connection is up now. While it is down, `subscribe` fails
    /// with [`Error::Unavailable`] and the background task is reconnecting.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// How many subscriptions (open connections) `user` has in this process.
    pub fn subscriber_count(&self, user: UserId) -> usize {
        self.inner.table.subscriber_count(user)
    }

    /// How many users are owed a gap notice now: their events could not be published, and
    /// Redis has not yet accepted the notice that tells the other nodes (it is retried with
    /// the reconnect backoff). 0 when all is well.
    pub fn gap_notices_owed(&self) -> usize {
        self.inner.debts.len()
    }

    /// The Redis channel that carries `user`'s events: `<channel_prefix>user:<id>`.
    ///
    /// ```no_run
    /// # async fn demo() -> chatcore::Result<()> {
    /// let config = chatcore_redis::RedisConfig { channel_prefix: "prod:".into(), ..Default::default() };
    /// let notifier = chatcore_redis::RedisNotifier::connect(config).await?;
    /// assert_eq!(notifier.channel(chatcore::UserId(7)), "prod:user:7");
    /// # Ok(()) }
    /// ```
    pub fn channel(&self, user: UserId) -> String {
        self.inner.channels.name(user)
    }
}

/// No retries inside the manager: while Redis is down each publish makes one connection
/// attempt and fails at once instead of waiting out a backoff; the next one tries again.
fn publisher_config(config: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.command_timeout))
        .set_number_of_retries(0)
        .set_min_delay(config.reconnect_min_delay)
        .set_max_delay(config.reconnect_max_delay)
}

async fn connect_publisher(client: &redis::Client, config: &RedisConfig) -> Result<ConnectionManager> {
    let connect = ConnectionManager::new_with_config(client.clone(), publisher_config(config));
    match tokio::time::timeout(config.connect_timeout, connect).await {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(error)) => Err(Error::notifications_unavailable(error)),
        Err(_) => Err(TransportError::Timeout(config.connect_timeout).into()),
    }
}

/// Runs `pipeline` on the publishing connection within `limit`.
pub(crate) async fn run_pipeline(
    publisher: &ConnectionManager,
    pipeline: &redis::Pipeline,
    limit: Duration,
) -> Result<()> {
    let mut connection = publisher.clone();
    let send = async {
        match pipeline.query_async::<()>(&mut connection).await {
            // A connection that Redis dropped (e.g. a restart) is only noticed by the
            // next command; the manager has started reopening it, so try once more.
            Err(error) if error.is_connection_dropped() || error.is_unrecoverable_error() => {
                pipeline.query_async::<()>(&mut connection).await
            }
            other => other,
        }
    };
    match tokio::time::timeout(limit, send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Error::notifications_unavailable(error)),
        Err(_) => Err(TransportError::Timeout(limit).into()),
    }
}

#[async_trait]
impl Notifier for RedisNotifier {
    fn is_ready(&self) -> bool {
        // The subscriber connection is up (and resubscribed after a reconnect): both what `subscribe`
        // needs and what carries other nodes' events here.
        self.is_connected()
    }

    async fn publish(&self, recipients: &[Recipient], event: &Event) -> Result<()> {
        let inner = &self.inner;
        let mut pipeline = redis::pipe();
        let mut users = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            // A user named twice (e.g. a message to oneself) is notified once.
            if users.contains(&recipient.user) {
                continue;
            }
            users.push(recipient.user);
            // This process's own subscriptions first, in call order and without the round
            // trip; the subscriber task ignores the copy that comes back from Redis.
            inner.table.deliver(
                recipient.user,
                &Delivery::Event {
                    event: event.clone(),
                    previous: recipient.previous,
                },
            );
            pipeline
                .cmd("PUBLISH")
                .arg(inner.channels.name(recipient.user))
                .arg(Payload::event(inner.node, event, recipient.previous))
                .ignore();
        }
        if users.is_empty() {
            return Ok(());
        }
        let result = run_pipeline(&inner.publisher, &pipeline, inner.command_timeout).await;
        if result.is_err() {
            inner.metrics.publish_failed();
            // Other nodes' subscriptions may have missed it while their connections stay
            // up: they get a gap notice once Redis takes one (see `gaps.rs`).
            inner.debts.owe(users);
        }
        result
    }

    async fn subscribe(&self, user: UserId) -> Result<Subscription> {
        let inner = &self.inner;
        let commands = inner.commands.clone();
        // Every subscription, not only the user's first, waits for the task's answer: a
        // second connection opened while the first one's SUBSCRIBE is in flight must not
        // return before Redis confirmed it either. The answer is immediate when the channel
        // is already subscribed.
        let (subscription, _first) = inner.table.subscribe(user, move || {
            let _ = commands.send(Command::Unsubscribe(user));
        });
        let (done, confirmed) = oneshot::channel();
        inner
            .commands
            .send(Command::Subscribe { user, done })
            .map_err(|_| TransportError::Closed)?;
        let limit = inner.command_timeout.saturating_mul(2);
        match tokio::time::timeout(limit, confirmed).await {
            Ok(Ok(Ok(()))) => Ok(subscription),
            Ok(Ok(Err(cause))) => Err(cause.into()),
            Ok(Err(_)) => Err(TransportError::Closed.into()),
            Err(_) => Err(TransportError::Timeout(limit).into()),
        }
    }
}
