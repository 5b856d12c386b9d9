//! The host's hooks over HTTP: webhooks that receive every durable event (`--webhook-url`,
//! [`webhook`]) and a send policy asked before each send (`--policy-url`, [`policy`]). Both
//! share one HTTP client (one connection pool) and sign their requests the same way
//! ([`Signer`]).

pub mod policy;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::{Digest, Sha256};

use crate::ServerError;

/// The header that carries the signature: `sha256=<hex>`, the HMAC-SHA256 with the secret of
/// `<timestamp>.<body>` ([`Signer::sign`]).
pub const SIGNATURE_HEADER: &str = "x-chatcore-signature";
/// The header that carries the signed Unix time in seconds, so a receiver can refuse replays.
pub const TIMESTAMP_HEADER: &str = "x-chatcore-timestamp";
/// The header that carries a webhook delivery's id: the same on every attempt of one event
/// to one endpoint (`<endpoint id>-<position>`; `<endpoint id>-<first>-<last>` for a POST of
/// several events), so a receiver can drop duplicates.
pub const DELIVERY_HEADER: &str = "x-chatcore-delivery";
/// The header that carries the event's kind (`message`, `read`, `edit`, `delete`), or
/// `batch` for a POST of several events (`--webhook-events-per-post`).
pub const EVENT_HEADER: &str = "x-chatcore-event";
/// The header that carries the attempt number of a webhook delivery, from 1.
pub const ATTEMPT_HEADER: &str = "x-chatcore-attempt";
/// The shortest `--webhook-secret`, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// Webhooks and the HTTP send policy (flattened into [`crate::ServerOptions`]).
#[derive(Debug, Clone, Args)]
pub struct HookOptions {
    /// POST every durable event (messages, read markers) as JSON to this http(s) URL, signed
    /// with --webhook-secret, at least once and in order per conversation. Repeat or
    /// comma-separate for several endpoints: each has its own delivery and checkpoint.
    #[arg(global = true, long = "webhook-url", env = "CHAT_WEBHOOK_URLS", value_delimiter = ',', value_parser = parse_hook_url)]
    pub webhook_url: Vec<Url>,

    /// The secret that signs webhook (and policy) requests, at least 16 bytes; required with
    /// --webhook-url.
    #[arg(global = true, long, env = "CHAT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Milliseconds a webhook request may take before it counts as failed and is retried.
    #[arg(global = true, long, env = "CHAT_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_timeout_ms: u64,

    /// Milliseconds before the first retry of a failed delivery; the wait doubles with each
    /// failure in a row up to --webhook-retry-max-ms, each drawn at random between its half
    /// and itself. Also the backoff after a failed read of the event feed.
    #[arg(global = true, long, env = "CHAT_WEBHOOK_RETRY_INITIAL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_retry_initial_ms: u64,

    /// The longest wait between two attempts of one delivery, in milliseconds.
    #[arg(global = true, long, env = "CHAT_WEBHOOK_RETRY_MAX_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_retry_max_ms: u64,

    /// Conversations whose events one endpoint receives at once (each conversation's in
    /// order, one at a time).
    #[arg(global = true, long, env = "CHAT_WEBHOOK_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub webhook_concurrency: u64,

    /// Events read from the feed at once per endpoint; the checkpoint moves once all of them
    /// were delivered.
    #[arg(global = true, long, env = "CHAT_WEBHOOK_BATCH", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub webhook_batch: u32,

    /// Milliseconds between reads of the event feed once an endpoint has delivered
    /// everything: the longest a new event waits before its delivery starts.
    #[arg(global = true, long, env = "CHAT_WEBHOOK_POLL_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_poll_ms: u64,

    /// Events per POST: 1 (each event alone, its `/ws` frame as the body; conversations
    /// delivered concurrently) or more (`{"events":[...]}` in feed order, one POST at a time:
    /// far fewer requests under load). A POST never holds more than one feed read
    /// (--webhook-batch).
    #[arg(global = true, long, env = "CHAT_WEBHOOK_EVENTS_PER_POST", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub webhook_events_per_post: u32,

    /// Ask this http(s) URL before each send: it gets `{"sender","recipient","body"}` and
    /// answers `{"action":"allow"}`, `{"action":"reject","reason":"...","status":403|422}` or
    /// `{"action":"rewrite","body":"..."}`.
    #[arg(global = true, long, env = "CHAT_POLICY_URL", value_parser = parse_hook_url)]
    pub policy_url: Option<Url>,

    /// Milliseconds the policy may take to answer; past it --policy-fallback decides.
    #[arg(global = true, long, env = "CHAT_POLICY_TIMEOUT_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub policy_timeout_ms: u64,

    /// What decides when the policy does not answer in time, fails (unreachable, a status
    /// other than 2xx) or answers something else than the three answers: `allow` (an
    /// outage of the policy never stops the chat) or `reject` (403: nothing unchecked is
    /// stored).
    #[arg(global = true, long, env = "CHAT_POLICY_FALLBACK", value_enum, default_value_t = FallbackChoice::Allow)]
    pub policy_fallback: FallbackChoice,
}

/// `--policy-fallback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FallbackChoice {
    /// Store the message as if the policy allowed it.
    Allow,
    /// Refuse the message with 403.
    Reject,
}

impl From<FallbackChoice> for chatcore::PolicyFallback {
    fn from(choice: FallbackChoice) -> Self {
        match choice {
            FallbackChoice::Allow => chatcore::PolicyFallback::Allow,
            FallbackChoice::Reject => chatcore::PolicyFallback::Reject,
        }
    }
}

/// An `http://` or `https://` URL with a host.
///
/// ```
/// use chat_server::hooks::parse_hook_url;
/// assert!(parse_hook_url("https://hooks.example.com/chat?key=1").is_ok());
/// assert!(parse_hook_url("ftp://example.com/").is_err());
/// assert!(parse_hook_url("example.com/hook").is_err());
/// ```
pub fn parse_hook_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|error| format!("{raw:?} is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{raw:?}: only http:// and https:// URLs are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{raw:?} names no host"));
    }
    Ok(url)
}

impl HookOptions {
    /// The webhook endpoints, checked: a URL without `--webhook-secret`, a secret shorter
    /// than [`MIN_SECRET_BYTES`], a URL given twice, or retry settings whose maximum is
    /// below their start are [`ServerError::Config`].
    pub fn webhook_endpoints(&self) -> Result<Vec<webhook::Endpoint>, ServerError> {
        let signer = self.signer()?;
        if self.webhook_url.is_empty() {
            return Ok(Vec::new());
        }
        let Some(signer) = signer else {
            return Err(ServerError::Config(
                "--webhook-url needs --webhook-secret (CHAT_WEBHOOK_SECRET): receivers must be able to check where events come from".into(),
            ));
        };
        if self.webhook_retry_max_ms < self.webhook_retry_initial_ms {
            return Err(ServerError::Config(
                "--webhook-retry-max-ms must be at least --webhook-retry-initial-ms".into(),
            ));
        }
        let mut endpoints: Vec<webhook::Endpoint> = Vec::new();
        for url in &self.webhook_url {
            let endpoint = webhook::Endpoint::new(url.clone(), signer.clone());
            if endpoints.iter().any(|other| other.id == endpoint.id) {
                return Err(ServerError::Config(format!("--webhook-url {url} is given twice")));
            }
            endpoints.push(endpoint);
        }
        Ok(endpoints)
    }

    /// The signer of `--webhook-secret`, if one is given (checked).
    pub fn signer(&self) -> Result<Option<Signer>, ServerError> {
        match &self.webhook_secret {
            None => Ok(None),
            Some(secret) if secret.len() < MIN_SECRET_BYTES => Err(ServerError::Config(format!(
                "--webhook-secret must be at least {MIN_SECRET_BYTES} bytes"
            ))),
            Some(secret) => Ok(Some(Signer::new(secret.as_bytes()))),
        }
    }

    /// The deadline of each policy call.
    pub fn policy_deadline(&self) -> Duration {
        Duration::from_millis(self.policy_timeout_ms)
    }

    /// The retry settings of the webhook deliveries.
    pub fn webhook_retry(&self) -> webhook::Retry {
        webhook::Retry {
            initial: Duration::from_millis(self.webhook_retry_initial_ms),
            max: Duration::from_millis(self.webhook_retry_max_ms),
        }
    }
}

/// Signs request bodies with the shared secret: HMAC-SHA256 over `<timestamp>.<body>`, where
/// `timestamp` is the Unix time in seconds sent in [`TIMESTAMP_HEADER`].
#[derive(Clone)]
pub struct Signer {
    key: Arc<Hmac<Sha256>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: Arc::new(Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length")),
        }
    }

    /// The [`SIGNATURE_HEADER`] value for `body` sent at `timestamp`: `sha256=<hex>`.
    ///
    /// ```
    /// let signer = chat_server::hooks::Signer::new(b"a secret of 16 bytes or more");
    /// let signature = signer.sign(1_700_000_000, br#"{"type":"read"}"#);
    /// assert!(signature.starts_with("sha256=") && signature.len() == 7 + 64);
    /// assert_ne!(signature, signer.sign(1_700_000_001, br#"{"type":"read"}"#));
    /// ```
    pub fn sign(&self, timestamp: u64, body: &[u8]) -> String {
        let mut mac = (*self.key).clone();
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// The headers that sign `body` now: ([`TIMESTAMP_HEADER`], [`SIGNATURE_HEADER`]).
    fn headers(&self, body: &[u8]) -> [(&'static str, String); 2] {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        [
            (TIMESTAMP_HEADER, now.to_string()),
            (SIGNATURE_HEADER, self.sign(now, body)),
        ]
    }
}

/// A short stable id of a URL (the first 8 bytes of its SHA-256, in hex): names an
/// endpoint in checkpoints, delivery ids, metrics and logs without its query string (which
/// may hold a token).
fn url_id(url: &Url) -> String {
    hex::encode(&Sha256::digest(url.as_str().as_bytes())[..8])
}

/// The one HTTP client of the hooks (its connection pool serves the policy and every
/// webhook endpoint): no redirects followed (a signed request goes where it was configured
/// to, or fails), no cookies.
pub fn http_client() -> Result<reqwest::Client, ServerError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("chatcore-hooks/", env!("CARGO_PKG_VERSION")))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|error| ServerError::Config(format!("building the HTTP client of the hooks: {error}")))
}

/// Reads at most `limit` bytes of a response body (the rest is dropped with the
/// connection), so a receiver cannot make the server buffer without bound.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() > room {
            break;
        }
    }
    Ok(body)
}

/// The metric names of the hooks (described by [`describe_metrics`]; docs/metrics.md).
pub mod names {
    /// Counter, labels `endpoint`, `outcome`: webhook attempts and how they ended.
    pub const WEBHOOK_DELIVERIES_TOTAL: &str = "chatcore_webhook_deliveries_total";
    /// Counter, label `endpoint`: attempts that were retries of a failed one.
    pub const WEBHOOK_RETRIES_TOTAL: &str = "chatcore_webhook_retries_total";
    /// Histogram, label `endpoint`: from a message's commit to its delivery.
    pub const WEBHOOK_LAG_SECONDS: &str = "chatcore_webhook_lag_seconds";
    /// Counter, label `outcome`: policy calls and how they ended.
    pub const POLICY_CALLS_TOTAL: &str = "chatcore_policy_calls_total";
    /// Histogram: time of a policy call that was answered.
    pub const POLICY_CALL_SECONDS: &str = "chatcore_policy_call_seconds";
}

/// Gives the recorder the unit and help text of the hooks' metrics.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        names::WEBHOOK_DELIVERIES_TOTAL,
        Unit::Count,
        "Webhook delivery attempts by endpoint and outcome: delivered, refused (4xx), failed (other status), unreachable, timed_out."
    );
    describe_counter!(
        names::WEBHOOK_RETRIES_TOTAL,
        Unit::Count,
        "Webhook delivery attempts that retried a failed one."
    );
    describe_histogram!(
        names::WEBHOOK_LAG_SECONDS,
        Unit::Seconds,
        "From a message's commit (its timestamp) to its successful webhook delivery."
    );
    describe_counter!(
        names::POLICY_CALLS_TOTAL,
        Unit::Count,
        "HTTP send policy calls by outcome: allow, reject, rewrite, failed, bad_answer, timed_out."
    );
    describe_histogram!(
        names::POLICY_CALL_SECONDS,
        Unit::Seconds,
        "Time of an answered HTTP send policy call."
    );
}
