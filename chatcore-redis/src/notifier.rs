//! [`RedisNotifier`]: the [`Notifier`] handle that publishes and subscribes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chatcore::notify::{Event, Notifier, SubscriberTable, Subscription};
use chatcore::{Error, Result, UserId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::RedisConfig;
use crate::error::TransportError;
use crate::subscriber::{self, Channels, Command, Shared};

/// A [`Notifier`] over Redis pub/sub: every process (node) that shares one store and one
/// Redis (and one [`RedisConfig::channel_prefix`]) hears every message, so the nodes act
/// as one message center.
///
/// `publish` sends one `PUBLISH` per user to the user's channel, pipelined in one round
/// trip. `subscribe` registers the connection in a local table and, for the user's first
/// local connection, subscribes the process's single pub/sub connection to the user's
/// channel; it returns once Redis confirmed, so nothing published after it returns is
/// missed. Cloning is cheap and shares everything; the background task stops when the last
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
    publisher: ConnectionManager,
    channels: Arc<Channels>,
    table: Arc<SubscriberTable>,
    commands: mpsc::UnboundedSender<Command>,
    connected: Arc<AtomicBool>,
    command_timeout: std::time::Duration,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Subscriptions hold command senders too, so the task would not notice on its own.
        self.task.abort();
    }
}

impl std::fmt::Debug for RedisNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisNotifier")
            .field("channels", &self.inner.channels)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RedisNotifier {
    /// Checks `config`, connects the publishing and the subscriber connections, and starts
    /// the background task that owns the subscriber connection. Must be called within a
    /// Tokio runtime.
    ///
    /// Errors: [`Error::Invalid`] for a bad setting or URL, [`Error::Unavailable`] when Redis
    /// cannot be reached within [`RedisConfig::connect_timeout`].
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::invalid(format!("redis notifier: bad url: {e}")))?;
        let publisher = connect_publisher(&client, &config).await?;
        let subscriber_connection = subscriber::open(&client, &config).await?;

        let channels = Arc::new(Channels::new(&config.channel_prefix));
        let table = Arc::new(SubscriberTable::new(config.queue_capacity));
        let connected = Arc::new(AtomicBool::new(true));
        let (commands, receiver) = mpsc::unbounded_channel();
        let command_timeout = config.command_timeout;
        let shared = Shared {
            client,
            config,
            channels: channels.clone(),
            table: table.clone(),
            connected: connected.clone(),
        };
        let task = tokio::spawn(subscriber::run(shared, receiver, subscriber_connection));
        Ok(Self {
            inner: Arc::new(Inner {
                publisher,
                channels,
                table,
                commands,
                connected,
                command_timeout,
                task,
            }),
        })
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

async fn connect_publisher(client: &redis::Client, config: &RedisConfig) -> Result<ConnectionManager> {
    // No retries inside the manager: while Redis is down each publish makes one connection
    // attempt and fails at once instead of waiting out a backoff; the next one tries again.
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.command_timeout))
        .set_number_of_retries(0)
        .set_min_delay(config.reconnect_min_delay)
        .set_max_delay(config.reconnect_max_delay);
    let connect = ConnectionManager::new_with_config(client.clone(), manager_config);
    match tokio::time::timeout(config.connect_timeout, connect).await {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(error)) => Err(Error::notifications_unavailable(error)),
        Err(_) => Err(TransportError::Timeout(config.connect_timeout).into()),
    }
}

#[async_trait]
impl Notifier for RedisNotifier {
    async fn publish(&self, users: &[UserId], event: &Event) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let payload = match event {
            Event::Message(message) => serde_json::to_vec(&**message)
                .map_err(|e| Error::internal("could not encode a notification", e))?,
            other => return Err(Error::bug(format!("unsupported event {other:?}"))),
        };
        let mut pipeline = redis::pipe();
        for (i, user) in users.iter().enumerate() {
            // A user named twice (e.g. a message to oneself) is notified once.
            if users[..i].contains(user) {
                continue;
            }
            pipeline
                .cmd("PUBLISH")
                .arg(self.inner.channels.name(*user))
                .arg(&payload)
                .ignore();
        }
        let mut connection = self.inner.publisher.clone();
        let limit = self.inner.command_timeout;
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
