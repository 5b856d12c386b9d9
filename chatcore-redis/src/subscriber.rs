//! The subscriber task: the one task that owns this process's pub/sub connection.
//!
//! It applies subscribe/unsubscribe requests in batches, fans incoming messages out to the
//! local [`SubscriberTable`] (reading only their header: the frame goes on as is, and what
//! this node published itself is skipped, since `publish` delivered it locally), keeps
//! reading messages while it waits for Redis to confirm a request, checks the connection
//! with `PING`, and reconnects with backoff when it is lost: resubscribe every user with a
//! local subscription, then [`Delivery::Gap`] to all of them, and only then the first
//! message read on the new connection.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chatcore::UserId;
use chatcore::metrics::NotifierMetrics;
use chatcore::notify::{Delivery, SubscriberTable};
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Msg, RedisResult};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use crate::RedisConfig;
use crate::error::TransportError;
use crate::wire::{self, NodeId, Notice};

/// Most requests applied as one batch (one `SUBSCRIBE` and one `UNSUBSCRIBE`), and most
/// channels named in one command when resubscribing after a reconnect.
pub(crate) const MAX_BATCH: usize = 512;

/// A request to the subscriber task.
#[derive(Debug)]
pub(crate) enum Command {
    /// A local subscription to `user` was opened; answer once Redis confirmed the channel.
    Subscribe {
        user: UserId,
        done: oneshot::Sender<Result<(), TransportError>>,
    },
    /// The last local subscription to `user` may have been dropped.
    Unsubscribe(UserId),
}

/// Channel names: `<prefix>user:<id>`.
#[derive(Debug)]
pub(crate) struct Channels {
    user_prefix: String,
}

impl Channels {
    pub(crate) fn new(channel_prefix: &str) -> Self {
        Self {
            user_prefix: format!("{channel_prefix}user:"),
        }
    }

    /// The channel that carries `user`'s events.
    pub(crate) fn name(&self, user: UserId) -> String {
        let mut name = String::with_capacity(self.user_prefix.len() + 20);
        name.push_str(&self.user_prefix);
        let _ = write!(name, "{}", user.0);
        name
    }

    /// The user whose channel `name` is, if it is one of ours.
    pub(crate) fn user(&self, name: &str) -> Option<UserId> {
        name.strip_prefix(&self.user_prefix)?.parse().ok().map(UserId)
    }
}

/// Why the connection is considered lost.
#[derive(Debug)]
enum Broken {
    Redis(Arc<redis::RedisError>),
    Timeout(Duration),
    Closed,
}

impl Broken {
    fn cause(&self) -> TransportError {
        match self {
            Broken::Redis(error) => TransportError::Redis(error.clone()),
            Broken::Timeout(limit) => TransportError::Timeout(*limit),
            Broken::Closed => TransportError::Disconnected,
        }
    }
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Redis(error) => write!(f, "{error}"),
            Broken::Timeout(limit) => write!(f, "no answer within {limit:?}"),
            Broken::Closed => f.write_str("connection closed"),
        }
    }
}

/// What the task reads but never changes.
pub(crate) struct Shared {
    pub(crate) client: redis::Client,
    pub(crate) config: RedisConfig,
    /// This process's id: messages whose header carries it were delivered locally already.
    pub(crate) node: NodeId,
    pub(crate) channels: Arc<Channels>,
    pub(crate) table: Arc<SubscriberTable>,
    pub(crate) connected: Arc<AtomicBool>,
    /// Reconnects (the table counts the gaps).
    pub(crate) metrics: NotifierMetrics,
}

/// What the task changes as it goes.
#[derive(Default)]
struct State {
    /// Users whose channel is subscribed on the current connection.
    active: HashSet<UserId>,
    /// Users whose channel may need subscribing or unsubscribing.
    touched: HashSet<UserId>,
    /// Subscribe requests waiting for the current batch.
    waiters: Vec<oneshot::Sender<Result<(), TransportError>>>,
}

/// Opens a pub/sub connection within the connect timeout.
pub(crate) async fn open(
    client: &redis::Client,
    config: &RedisConfig,
) -> Result<(PubSubSink, PubSubStream), TransportError> {
    match tokio::time::timeout(config.connect_timeout, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => Ok(pubsub.split()),
        Ok(Err(error)) => Err(TransportError::Redis(Arc::new(error))),
        Err(_) => Err(TransportError::Timeout(config.connect_timeout)),
    }
}

/// Runs until every command sender is gone or the task is aborted. `connection` is the one
/// opened by `connect` (its subscriptions start empty, so it needs no `Gap`), or `None` when
/// Redis could not be reached at start: then it connects first, with the reconnect backoff.
pub(crate) async fn run(
    shared: Shared,
    mut commands: mpsc::UnboundedReceiver<Command>,
    connection: Option<(PubSubSink, PubSubStream)>,
) {
    let mut state = State::default();
    let mut connection = connection;
    loop {
        let (sink, stream) = match connection.take() {
            Some(connection) => connection,
            None => match reconnect(&shared, &mut commands, &mut state).await {
                Some(connection) => connection,
                None => return,
            },
        };
        shared.connected.store(true, Ordering::Release);
        let outcome = serve(&shared, &mut commands, &mut state, sink, stream).await;
        shared.connected.store(false, Ordering::Release);
        match outcome {
            Ok(()) => return,
            Err(broken) => {
                tracing::warn!(error = %broken, "redis subscriber connection lost; reconnecting");
                for done in state.waiters.drain(..) {
                    let _ = done.send(Err(broken.cause()));
                }
                state.active.clear();
            }
        }
    }
}

/// Reads messages and applies requests on one connection until it breaks (`Err`) or every
/// command sender is gone (`Ok`).
async fn serve(
    shared: &Shared,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    state: &mut State,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
) -> Result<(), Broken> {
    let period = shared.config.health_check_interval;
    let mut health = tokio::time::interval_at(Instant::now() + period, period);
    health.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(message) => route(shared, state, &message),
                None => return Err(Broken::Closed),
            },
            command = commands.recv() => {
                let Some(command) = command else { return Ok(()) };
                batch.push(command);
                while batch.len() < MAX_BATCH {
                    match commands.try_recv() {
                        Ok(command) => batch.push(command),
                        Err(_) => break,
                    }
                }
                apply(shared, state, &mut batch, &mut sink, &mut stream).await?;
            }
            // Users whose channel carried a message nobody here wanted (a safety net: the
            // drop of a user's last subscription asks for the unsubscribe itself).
            () = std::future::ready(()), if !state.touched.is_empty() => {
                apply(shared, state, &mut batch, &mut sink, &mut stream).await?;
            }
            _ = health.tick() => {
                let limit = shared.config.command_timeout;
                drive(sink.ping::<redis::Value>(), limit, &mut stream, shared, state).await?;
            }
        }
    }
}

/// Applies a batch of requests: one `SUBSCRIBE` for the users that now have a local
/// subscription and no channel, one `UNSUBSCRIBE` for those that have a channel and no
/// local subscription. Deciding from the table, not from the order of requests, makes a
/// subscribe racing with the drop of the user's last subscription come out right.
async fn apply(
    shared: &Shared,
    state: &mut State,
    batch: &mut Vec<Command>,
    sink: &mut PubSubSink,
    stream: &mut PubSubStream,
) -> Result<(), Broken> {
    for command in batch.drain(..) {
        match command {
            Command::Subscribe { user, done } => {
                state.touched.insert(user);
                state.waiters.push(done);
            }
            Command::Unsubscribe(user) => {
                state.touched.insert(user);
            }
        }
    }
    let mut subscribe = Vec::new();
    let mut unsubscribe = Vec::new();
    for user in state.touched.drain() {
        let wanted = shared.table.subscriber_count(user) > 0;
        let subscribed = state.active.contains(&user);
        if wanted && !subscribed {
            subscribe.push(user);
        } else if !wanted && subscribed {
            unsubscribe.push(user);
        }
    }
    let limit = shared.config.command_timeout;
    if !subscribe.is_empty() {
        let names: Vec<String> = subscribe.iter().map(|u| shared.channels.name(*u)).collect();
        drive(sink.subscribe(names), limit, stream, shared, state).await?;
        state.active.extend(subscribe);
    }
    for done in state.waiters.drain(..) {
        let _ = done.send(Ok(()));
    }
    if !unsubscribe.is_empty() {
        let names: Vec<String> = unsubscribe.iter().map(|u| shared.channels.name(*u)).collect();
        drive(sink.unsubscribe(names), limit, stream, shared, state).await?;
        for user in unsubscribe {
            state.active.remove(&user);
        }
    }
    Ok(())
}

/// Awaits a request on the connection, within `limit`, while fanning out the messages that
/// arrive meanwhile (so a burst of subscriptions does not delay notifications).
async fn drive<T>(
    request: impl Future<Output = RedisResult<T>>,
    limit: Duration,
    stream: &mut PubSubStream,
    shared: &Shared,
    state: &mut State,
) -> Result<T, Broken> {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(request, deadline);
    let mut stream_open = true;
    loop {
        tokio::select! {
            result = &mut request => return result.map_err(|e| Broken::Redis(Arc::new(e))),
            message = stream.next(), if stream_open => match message {
                Some(message) => route(shared, state, &message),
                // The request fails on its own now; let it say why.
                None => stream_open = false,
            },
            () = &mut deadline => return Err(Broken::Timeout(limit)),
        }
    }
}

/// Fans one message out to the local subscriptions of the user whose channel it came on:
/// an event as published, a gap notice or an unreadable payload as [`Delivery::Gap`].
/// What this node published itself is skipped.
fn route(shared: &Shared, state: &mut State, message: &Msg) {
    let channel = message.get_channel_name();
    let Some(user) = shared.channels.user(channel) else {
        tracing::warn!(channel, "message on an unexpected redis channel ignored");
        return;
    };
    let delivery = match wire::decode(message.get_payload_bytes()) {
        Ok(received) if received.node == shared.node => return,
        Ok(received) => match received.notice {
            Ok(Notice::Event { event, previous }) => Delivery::Event { event, previous },
            Ok(Notice::Gap) => {
                tracing::debug!(channel, node = %received.node, "gap notice: a publish had failed");
                Delivery::Gap
            }
            Err(reason) => undecodable(channel, &reason),
        },
        Err(reason) => undecodable(channel, &reason),
    };
    if shared.table.deliver(user, &delivery) == 0 && state.active.contains(&user) {
        state.touched.insert(user);
    }
}

fn undecodable(channel: &str, reason: &str) -> Delivery {
    // Not silently lost: the user's connections catch up from storage.
    tracing::warn!(channel, reason, "undecodable notification; sending a gap instead");
    Delivery::Gap
}

/// Reopens the connection with backoff, resubscribes every user with a local subscription
/// and delivers [`Delivery::Gap`] to every subscription. Refuses subscribe requests until
/// then. `None` when every command sender is gone.
async fn reconnect(
    shared: &Shared,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    state: &mut State,
) -> Option<(PubSubSink, PubSubStream)> {
    let mut failures = 0u32;
    let mut delay = None;
    loop {
        if let Some(delay) = delay {
            let pause = tokio::time::sleep(delay);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    command = commands.recv() => refuse(command?, state),
                }
            }
        }
        let attempt = open_and_resubscribe(shared);
        tokio::pin!(attempt);
        let outcome = loop {
            tokio::select! {
                outcome = &mut attempt => break outcome,
                command = commands.recv() => refuse(command?, state),
            }
        };
        match outcome {
            Ok((sink, stream, users)) => {
                tracing::info!(users = users.len(), "redis subscriber reconnected");
                shared.metrics.reconnected();
                state.active = users;
                // Before anything read on the new connection is fanned out, so that a
                // consumer's catch-up from storage covers everything it may have missed.
                shared.table.deliver_all(&Delivery::Gap);
                return Some((sink, stream));
            }
            Err(error) => {
                let wait = shared.config.backoff(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(%error, retry_in = ?wait, "redis subscriber reconnect failed");
                delay = Some(wait);
            }
        }
    }
}

/// Answers a request that arrives while the connection is down.
fn refuse(command: Command, state: &mut State) {
    match command {
        Command::Subscribe { done, .. } => {
            let _ = done.send(Err(TransportError::Disconnected));
        }
        // Applied once connected again (the user may still be in the resubscribe list).
        Command::Unsubscribe(user) => {
            state.touched.insert(user);
        }
    }
}

/// Opens a connection and subscribes the channel of every user with a local subscription.
/// Messages that arrive meanwhile stay queued in the stream.
async fn open_and_resubscribe(
    shared: &Shared,
) -> Result<(PubSubSink, PubSubStream, HashSet<UserId>), TransportError> {
    let (mut sink, stream) = open(&shared.client, &shared.config).await?;
    let users = shared.table.users();
    let limit = shared.config.command_timeout;
    for chunk in users.chunks(MAX_BATCH) {
        let names: Vec<String> = chunk.iter().map(|u| shared.channels.name(*u)).collect();
        match tokio::time::timeout(limit, sink.subscribe(names)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(TransportError::Redis(Arc::new(error))),
            Err(_) => return Err(TransportError::Timeout(limit)),
        }
    }
    Ok((sink, stream, users.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip_and_reject_others() {
        let channels = Channels::new("t1:");
        assert_eq!(channels.name(UserId(42)), "t1:user:42");
        assert_eq!(channels.user("t1:user:42"), Some(UserId(42)));
        assert_eq!(channels.user("t1:user:-7"), Some(UserId(-7)));
        assert_eq!(channels.user("t2:user:42"), None);
        assert_eq!(channels.user("t1:user:"), None);
        assert_eq!(channels.user("t1:user:4x"), None);
    }
}
