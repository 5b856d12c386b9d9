//! Webhooks: every durable event POSTed to each `--webhook-url`, driven by the event feed
//! ([`chatcore::FeedConsumer`]) with one checkpoint per endpoint in the chat store, so
//! delivery is at least once across restarts and never touches the send path.
//!
//! Each endpoint has its own consumer: it reads a batch of events after its checkpoint,
//! splits it by conversation, delivers each conversation's events one after the other (up to
//! `--webhook-concurrency` conversations at once), retries a failed delivery with backoff
//! until the endpoint accepts it, and saves the checkpoint once the whole batch was
//! delivered. So an endpoint that fails holds back only itself, and each conversation's
//! events reach it in feed order (a restart may deliver again what followed the last
//! checkpoint).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use chatcore::{BoxError, FeedConsumer, FeedConsumerConfig, FeedHandler, Store, StoredEvent};
use futures_util::StreamExt;
use metrics::{Counter, Histogram, counter, histogram};
use reqwest::Url;
use tokio::task::JoinHandle;

use super::{
    ATTEMPT_HEADER, DELIVERY_HEADER, EVENT_HEADER, HookOptions, Signer, names, read_limited, url_id,
};
use crate::ServerError;

/// Most bytes of a receiver's answer that are read (the rest is dropped) and logged.
const ANSWER_LIMIT: usize = 16 * 1024;

/// One `--webhook-url`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where events are POSTed.
    pub url: Url,
    /// The URL's short id: in delivery ids, the checkpoint's name, metrics and logs.
    pub id: String,
    signer: Signer,
}

impl Endpoint {
    /// The endpoint at `url`, signing with `signer`.
    pub fn new(url: Url, signer: Signer) -> Self {
        let id = url_id(&url);
        Self { url, id, signer }
    }

    /// The name of this endpoint's checkpoint in the chat store: `webhook:<id>`. Another URL
    /// (even one differing only in its query) is another endpoint that starts from the
    /// first event.
    pub fn checkpoint_name(&self) -> String {
        format!("webhook:{}", self.id)
    }

    /// The URL without its query and credentials, for logs.
    fn display(&self) -> String {
        let mut shown = self.url.clone();
        shown.set_query(None);
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        shown.to_string()
    }
}

/// The backoff of a failing delivery: exponential from `initial`, capped at `max`, with
/// jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The wait after a first failure.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
}

/// The running webhook consumers; [`Webhooks::stop`] ends them.
#[derive(Debug)]
pub struct Webhooks {
    stop: tokio::sync::watch::Sender<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Webhooks {
    /// Starts one consumer per endpoint of `options` over `store`'s event feed, delivering
    /// with `client`. None without `--webhook-url`.
    pub fn start(
        options: &HookOptions,
        store: Arc<dyn Store>,
        client: &reqwest::Client,
    ) -> Result<Self, ServerError> {
        let (stop, stopped) = tokio::sync::watch::channel(());
        let retry = options.webhook_retry();
        let mut tasks = Vec::new();
        for endpoint in options.webhook_endpoints()? {
            let config = FeedConsumerConfig {
                batch: options.webhook_batch,
                poll_interval: Duration::from_millis(options.webhook_poll_ms),
                retry_initial: retry.initial,
                retry_max: retry.max,
                ..FeedConsumerConfig::new(endpoint.checkpoint_name())
            };
            let consumer = FeedConsumer::new(store.clone(), config.clone())?;
            tracing::info!(endpoint = %endpoint.id, url = %endpoint.display(), checkpoint = %config.name, "webhook deliveries start");
            let handler = WebhookHandler::new(
                endpoint,
                client.clone(),
                config,
                Duration::from_millis(options.webhook_timeout_ms),
                usize::try_from(options.webhook_concurrency).unwrap_or(usize::MAX),
                usize::try_from(options.webhook_events_per_post).unwrap_or(usize::MAX),
            );
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(async move {
                // Resolves when `stop` is dropped or signals.
                let shutdown = async move {
                    let _ = stopped.changed().await;
                };
                consumer.run(&handler, shutdown).await;
            }));
        }
        Ok(Self { stop, tasks })
    }

    /// Stops every consumer and waits for them: a batch being delivered is dropped, and
    /// delivered again (after the last checkpoint) at the next start.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a webhook consumer panicked");
            }
        }
    }
}

/// How one attempt ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Refused,
    Failed,
    Unreachable,
    TimedOut,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Delivered,
        Outcome::Refused,
        Outcome::Failed,
        Outcome::Unreachable,
        Outcome::TimedOut,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::Unreachable => "unreachable",
            Outcome::TimedOut => "timed_out",
        }
    }
}

/// The metric handles of one endpoint, registered once.
struct EndpointMetrics {
    outcomes: [Counter; 5],
    retries: Counter,
    lag: Histogram,
}

impl EndpointMetrics {
    fn new(endpoint: &str) -> Self {
        let endpoint = endpoint.to_owned();
        Self {
            outcomes: Outcome::ALL.map(|outcome| {
                counter!(names::WEBHOOK_DELIVERIES_TOTAL, "endpoint" => endpoint.clone(), "outcome" => outcome.label())
            }),
            retries: counter!(names::WEBHOOK_RETRIES_TOTAL, "endpoint" => endpoint.clone()),
            lag: histogram!(names::WEBHOOK_LAG_SECONDS, "endpoint" => endpoint),
        }
    }

    fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].increment(1);
    }
}

/// Delivers the feed's batches to one endpoint ([`FeedHandler`]).
struct WebhookHandler {
    endpoint: Endpoint,
    client: reqwest::Client,
    /// Only for its backoff ([`FeedConsumerConfig::backoff`]).
    retry: FeedConsumerConfig,
    timeout: Duration,
    concurrency: usize,
    /// `--webhook-events-per-post`: 1 sends each event alone, by conversation.
    events_per_post: usize,
    metrics: EndpointMetrics,
}

impl WebhookHandler {
    fn new(
        endpoint: Endpoint,
        client: reqwest::Client,
        retry: FeedConsumerConfig,
        timeout: Duration,
        concurrency: usize,
        events_per_post: usize,
    ) -> Self {
        let metrics = EndpointMetrics::new(&endpoint.id);
        Self {
            endpoint,
            client,
            retry,
            timeout,
            concurrency,
            events_per_post: events_per_post.max(1),
            metrics,
        }
    }

    /// Delivers `post`, retrying with backoff until the endpoint accepts it (2xx). Every
    /// other answer is retried, 4xx included: an event is never dropped by the server; a
    /// receiver that wants to drop one answers 2xx.
    async fn deliver(&self, post: &Post) {
        let mut failures = 0u32;
        loop {
            let attempt = failures + 1;
            let outcome = self.attempt(&post.body, post.kind, &post.delivery, attempt).await;
            self.metrics.count(outcome.0);
            if outcome.0 == Outcome::Delivered {
                let now = chrono::Utc::now();
                for committed in &post.committed {
                    let lag = now - *committed;
                    self.metrics
                        .lag
                        .record(lag.to_std().unwrap_or_default().as_secs_f64());
                }
                return;
            }
            failures = failures.saturating_add(1);
            let wait = self.retry.backoff(failures);
            let fields = (
                self.endpoint.id.as_str(),
                post.delivery.as_str(),
                outcome.1.as_str(),
                wait.as_millis() as u64,
            );
            if outcome.0 == Outcome::Refused {
                // A receiver that refuses an event keeps refusing it: loud, since the
                // endpoint's deliveries wait for it.
                tracing::error!(
                    endpoint = fields.0,
                    delivery = fields.1,
                    attempt,
                    answer = fields.2,
                    retry_in_ms = fields.3,
                    "webhook endpoint refused an event (4xx); retrying until it answers 2xx, later events of this endpoint wait"
                );
            } else {
                tracing::warn!(
                    endpoint = fields.0,
                    delivery = fields.1,
                    attempt,
                    error = fields.2,
                    retry_in_ms = fields.3,
                    "webhook delivery failed, retrying"
                );
            }
            tokio::time::sleep(wait).await;
            self.metrics.retries.increment(1);
        }
    }

    /// One POST: how it ended, and what to log when it failed.
    async fn attempt(&self, body: &Bytes, kind: &str, delivery: &str, attempt: u32) -> (Outcome, String) {
        let mut request = self
            .client
            .post(self.endpoint.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(DELIVERY_HEADER, delivery)
            .header(EVENT_HEADER, kind)
            .header(ATTEMPT_HEADER, attempt.to_string());
        for (name, value) in self.endpoint.signer.headers(body) {
            request = request.header(name, value);
        }
        let response = match request.body(body.clone()).send().await {
            Ok(response) => response,
            Err(error) => return (transport_outcome(&error), error_chain(&error)),
        };
        let status = response.status();
        // Read the answer so the connection goes back to the pool.
        let answer = match read_limited(response, ANSWER_LIMIT).await {
            Ok(answer) => answer,
            Err(error) if status.is_success() => {
                // The receiver took the event; only its answer broke off.
                tracing::debug!(error = %error_chain(&error), "reading a webhook answer failed");
                Vec::new()
            }
            Err(error) => return (transport_outcome(&error), error_chain(&error)),
        };
        if status.is_success() {
            return (Outcome::Delivered, String::new());
        }
        let described = format!(
            "{status}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(512)])
        );
        let refused = status.is_client_error()
            && status != reqwest::StatusCode::REQUEST_TIMEOUT
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS;
        (
            if refused {
                Outcome::Refused
            } else {
                Outcome::Failed
            },
            described,
        )
    }
}

#[async_trait]
impl FeedHandler for WebhookHandler {
    /// Delivers every event of the batch (never fails: a failed delivery is retried here, so
    /// the checkpoint moves only past delivered events and other conversations go on).
    async fn handle(&self, events: &[StoredEvent]) -> Result<(), BoxError> {
        if self.events_per_post > 1 {
            // Several events per POST: the batch's events in feed order, one POST after the
            // other, so the order holds across conversations too.
            for chunk in events.chunks(self.events_per_post) {
                self.deliver(&Post::batch(&self.endpoint.id, chunk)).await;
            }
            return Ok(());
        }
        let deliveries: Vec<futures_util::future::BoxFuture<'_, ()>> = by_conversation(events)
            .into_iter()
            .map(|conversation| {
                Box::pin(async move {
                    for event in conversation {
                        self.deliver(&Post::single(&self.endpoint.id, event)).await;
                    }
                }) as futures_util::future::BoxFuture<'_, ()>
            })
            .collect();
        futures_util::stream::iter(deliveries)
            .buffer_unordered(self.concurrency)
            .collect::<()>()
            .await;
        Ok(())
    }
}

/// What one POST carries: its body, its [`EVENT_HEADER`] and [`DELIVERY_HEADER`], and the
/// commit times of the messages in it (for the lag histogram).
struct Post {
    body: Bytes,
    kind: &'static str,
    delivery: String,
    committed: Vec<chrono::DateTime<chrono::Utc>>,
}

impl Post {
    /// One event: its `/ws` frame as the body, delivery id `<endpoint>-<position>`.
    fn single(endpoint: &str, event: &StoredEvent) -> Self {
        let rendered = event.render();
        Self {
            body: rendered.frame().clone(),
            kind: rendered.kind().as_str(),
            delivery: format!("{endpoint}-{}", event.position().0),
            committed: committed(event).into_iter().collect(),
        }
    }

    /// Several events (feed order) as `{"events":[<frame>,...]}`: the frames' bytes as
    /// rendered once, joined (nothing serialized again). Delivery id
    /// `<endpoint>-<first position>-<last position>`, kind `batch`.
    fn batch(endpoint: &str, events: &[StoredEvent]) -> Self {
        let rendered: Vec<_> = events.iter().map(StoredEvent::render).collect();
        let length = rendered
            .iter()
            .map(|event| event.frame().len() + 1)
            .sum::<usize>();
        let mut body = Vec::with_capacity(length + 12);
        body.extend_from_slice(b"{\"events\":[");
        for (n, event) in rendered.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(event.frame());
        }
        body.extend_from_slice(b"]}");
        let first = events.first().map_or(0, |event| event.position().0);
        let last = events.last().map_or(0, |event| event.position().0);
        Self {
            body: body.into(),
            kind: BATCH_KIND,
            delivery: format!("{endpoint}-{first}-{last}"),
            committed: events.iter().filter_map(committed).collect(),
        }
    }
}

/// The [`EVENT_HEADER`] of a POST that carries several events.
pub const BATCH_KIND: &str = "batch";

/// When a message event's message was committed (its timestamp); None for other events.
fn committed(event: &StoredEvent) -> Option<chrono::DateTime<chrono::Utc>> {
    match event {
        StoredEvent::Message(message) => Some(message.created_at),
        _ => None,
    }
}

/// `events` split by conversation (the unordered pair of its users), each in feed order,
/// the conversations in the order of their first event.
fn by_conversation(events: &[StoredEvent]) -> Vec<Vec<&StoredEvent>> {
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut conversations: Vec<Vec<&StoredEvent>> = Vec::new();
    for event in events {
        let (a, b) = match event {
            StoredEvent::Message(message) => (message.sender.as_str(), message.recipient.as_str()),
            StoredEvent::Read(marker) => (marker.reader.as_str(), marker.peer.as_str()),
            StoredEvent::Edit(change) | StoredEvent::Delete(change) => {
                (change.message.sender.as_str(), change.message.recipient.as_str())
            }
            // A kind this version does not know: all of them in one sequence.
            _ => ("", ""),
        };
        let key = if a <= b { (a, b) } else { (b, a) };
        let slot = *index.entry(key).or_insert_with(|| {
            conversations.push(Vec::new());
            conversations.len() - 1
        });
        conversations[slot].push(event);
    }
    conversations
}

fn transport_outcome(error: &reqwest::Error) -> Outcome {
    if error.is_timeout() {
        Outcome::TimedOut
    } else {
        Outcome::Unreachable
    }
}

/// The error with its causes, for the log (reqwest's own text omits them).
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatcore::store::ReadMarker;
    use chatcore::{Message, MessageId, Position, Username};

    fn message(id: i64, from: &str, to: &str) -> StoredEvent {
        StoredEvent::Message(Message {
            id: MessageId(id),
            sender: Username::parse(from).unwrap(),
            recipient: Username::parse(to).unwrap(),
            created_at: chrono::Utc::now(),
            body: "hi".into(),
            edited: None,
            deleted: false,
        })
    }

    #[test]
    fn a_batch_splits_by_conversation_in_feed_order() {
        let events = [
            message(1, "alice", "bob"),
            message(2, "carol", "dave"),
            message(3, "bob", "alice"),
            StoredEvent::Read(ReadMarker {
                position: Position(4),
                reader: Username::parse("alice").unwrap(),
                peer: Username::parse("bob").unwrap(),
                up_to: MessageId(3),
            }),
            message(5, "dave", "carol"),
        ];
        let split: Vec<Vec<i64>> = by_conversation(&events)
            .iter()
            .map(|conversation| conversation.iter().map(|event| event.position().0).collect())
            .collect();
        assert_eq!(split, [vec![1, 3, 4], vec![2, 5]]);
    }

    #[test]
    fn the_endpoint_id_hides_the_query_and_names_the_checkpoint() {
        let signer = Signer::new(b"0123456789abcdef");
        let endpoint = Endpoint::new(
            Url::parse("https://user:pw@hooks.example.com/in?token=secret").unwrap(),
            signer.clone(),
        );
        assert_eq!(endpoint.display(), "https://hooks.example.com/in");
        assert_eq!(endpoint.checkpoint_name(), format!("webhook:{}", endpoint.id));
        assert_eq!(endpoint.id.len(), 16);
        let other = Endpoint::new(
            Url::parse("https://hooks.example.com/in?token=other").unwrap(),
            signer,
        );
        assert_ne!(endpoint.id, other.id);
    }
}
