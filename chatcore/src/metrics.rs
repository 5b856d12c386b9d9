//! What chatcore and its backends measure, through the [`metrics`](::metrics) facade.
//!
//! Libraries only emit: nothing here installs a recorder. A host that wants the numbers
//! installs one (the standalone server installs `metrics-exporter-prometheus` and serves
//! `/metrics`; any [`metrics::Recorder`](::metrics::Recorder) works) **before** it builds the service, the
//! stores, the notifiers and the router: each of them registers its handles once, when it is
//! built, so that recording is an atomic operation with no lookup, no allocation and no lock.
//! Without a recorder every handle is a no-op.
//!
//! ```
//! use std::sync::Arc;
//! use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore, SendRequest};
//! use metrics_util::debugging::{DebugValue, DebuggingRecorder};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
//! // Any recorder; here one that keeps the values in memory, for this thread only.
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! let _installed = metrics::set_default_local_recorder(&recorder);
//! chatcore::metrics::describe();
//!
//! let chat = ChatService::new(Arc::new(MemoryStore::new()), Arc::new(LocalNotifier::default()), ChatConfig::default());
//! let alice = chat.create_user("alice").await?;
//! chat.create_user("bob").await?;
//! chat.send(&alice, SendRequest { recipient: "bob".into(), body: "hi".into(), ..Default::default() }).await?;
//!
//! let stored = snapshotter.snapshot().into_vec().into_iter().find(|(key, ..)| {
//!     key.key().name() == chatcore::metrics::SENDS_TOTAL
//!         && key.key().labels().any(|label| label.value() == "stored")
//! });
//! assert!(matches!(stored, Some((_, _, _, DebugValue::Counter(1)))));
//! # Ok(()) }
//! ```
//!
//! Every name starts with `chatcore_`; units are in the names (`_seconds`, `_total`). The
//! README's metrics table lists them with their labels and meaning; the constants below are
//! the names, for hosts that set histogram buckets or build dashboards.

use std::time::Duration;

use ::metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, histogram,
};

/// Sends by outcome (`outcome`: `stored`, `replayed` for a repeated idempotency key, `refused`
/// for a client error such as a bad body or a rate limit, `failed` for a storage failure).
pub const SENDS_TOTAL: &str = "chatcore_sends_total";
/// Catch-ups from storage started: a socket that reconnected with `since`, or one that lost
/// notifications (a full queue, a transport gap, a late predecessor).
pub const CATCH_UPS_TOTAL: &str = "chatcore_catch_ups_total";
/// Events read from storage by catch-ups.
pub const CATCH_UP_EVENTS_TOTAL: &str = "chatcore_catch_up_events_total";
/// Catch-ups that missed more than the catch-up limit: the client was told to resync.
pub const RESYNCS_TOTAL: &str = "chatcore_resyncs_total";

/// Notifications that found a subscription's queue full (`transport`): the socket reads them
/// from storage instead. Counted once per gap, not per lost event.
pub const NOTIFY_QUEUE_OVERFLOWS_TOTAL: &str = "chatcore_notify_queue_overflows_total";
/// Gap signals a transport delivered to local subscriptions (`transport`): after a broker
/// reconnect, a failed publish on another node, or an unreadable payload.
pub const NOTIFIER_GAPS_TOTAL: &str = "chatcore_notifier_gaps_total";
/// Reconnects of a transport's listening connection (`transport`).
pub const NOTIFIER_RECONNECTS_TOTAL: &str = "chatcore_notifier_reconnects_total";
/// Publishes a transport could not hand to its broker (`transport`).
pub const NOTIFIER_PUBLISH_FAILURES_TOTAL: &str = "chatcore_notifier_publish_failures_total";

/// Writes per committed transaction of a store's batch writer (`backend`).
pub const STORE_COMMIT_BATCH_SIZE: &str = "chatcore_store_commit_batch_size";
/// Time of a batch transaction, from its start to its commit (`backend`).
pub const STORE_COMMIT_SECONDS: &str = "chatcore_store_commit_seconds";
/// Time of one `fdatasync` of the SQLite WAL by the sync thread (`backend`).
pub const STORE_FSYNC_SECONDS: &str = "chatcore_store_fsync_seconds";
/// Time a batch writer waited for a pooled connection (`backend`).
pub const STORE_POOL_WAIT_SECONDS: &str = "chatcore_store_pool_wait_seconds";

/// Histogram buckets for latencies, in seconds: 25 µs to 10 s, dense below a millisecond,
/// where a send, a commit and a notification usually land.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Histogram buckets for [`STORE_COMMIT_BATCH_SIZE`]: powers of two up to 4,096.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Describes every metric of this crate and of the backends (unit and help text) to the
/// recorder installed now. Optional: a recorder shows the metrics without it, only without
/// help text. Call it once after installing the recorder.
pub fn describe() {
    for &(name, kind, unit, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => describe_counter!(name, unit, help),
            Kind::Gauge => describe_gauge!(name, unit, help),
            Kind::Histogram => describe_histogram!(name, unit, help),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric with its kind, unit and help text; the web layer's too (`chatcore-axum`
/// emits them), so that one call describes them all.
const DESCRIPTIONS: &[(&str, Kind, Unit, &str)] = &[
    (
        SENDS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Sends by outcome: stored, replayed, refused, failed.",
    ),
    (
        CATCH_UPS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Catch-ups from storage started.",
    ),
    (
        CATCH_UP_EVENTS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Events read from storage by catch-ups.",
    ),
    (
        RESYNCS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Catch-ups past the limit: the client was told to resync.",
    ),
    (
        NOTIFY_QUEUE_OVERFLOWS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Notifications that found a subscription's queue full (read from storage instead).",
    ),
    (
        NOTIFIER_GAPS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Gap signals a transport delivered to local subscriptions.",
    ),
    (
        NOTIFIER_RECONNECTS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Reconnects of a transport's listening connection.",
    ),
    (
        NOTIFIER_PUBLISH_FAILURES_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Publishes a transport could not hand to its broker.",
    ),
    (
        STORE_COMMIT_BATCH_SIZE,
        Kind::Histogram,
        Unit::Count,
        "Writes per committed batch transaction.",
    ),
    (
        STORE_COMMIT_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time of a batch transaction, start to commit.",
    ),
    (
        STORE_FSYNC_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time of one fdatasync of the SQLite WAL.",
    ),
    (
        STORE_POOL_WAIT_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time a batch writer waited for a pooled connection.",
    ),
    (WS_OPEN_SOCKETS, Kind::Gauge, Unit::Count, "WebSockets open now."),
    (
        WS_CLOSED_TOTAL,
        Kind::Counter,
        Unit::Count,
        "WebSockets ended, by reason.",
    ),
    (
        WS_DELIVERY_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "From the send's arrival at the service to its frame written to a socket of this process.",
    ),
    (
        HTTP_REQUESTS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "HTTP requests by route template, method and status.",
    ),
    (
        HTTP_REQUEST_DURATION_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time to answer an HTTP request, by route template, method and status.",
    ),
];

/// WebSockets open now (a gauge; emitted by `chatcore-axum`).
pub const WS_OPEN_SOCKETS: &str = "chatcore_ws_open_sockets";
/// WebSockets ended, by `reason` (emitted by `chatcore-axum`): `client_gone`, `lagging` (did
/// not take a frame within the send timeout: dropped), `unresponsive` (no pong), `shutdown`,
/// `evicted` (the user opened too many), `session_ended`, `frame_too_big`, `unavailable`
/// (storage could not be read, or the notifications ended).
pub const WS_CLOSED_TOTAL: &str = "chatcore_ws_closed_total";
/// From the moment the service accepted a send to the moment a `/ws` task of this process
/// wrote its frame to a socket (emitted by `chatcore-axum`; events that came from another
/// node or from storage are not timed).
pub const WS_DELIVERY_SECONDS: &str = "chatcore_ws_delivery_seconds";
/// HTTP requests by `route` (the matched route template, `unmatched` for none), `method`
/// and `status` (emitted by `chatcore_axum::HttpMetricsLayer`).
pub const HTTP_REQUESTS_TOTAL: &str = "chatcore_http_requests_total";
/// Time to answer an HTTP request (to the response head), same labels as
/// [`HTTP_REQUESTS_TOTAL`].
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "chatcore_http_request_duration_seconds";

/// The service's handles, registered once per [`crate::ChatService`].
#[derive(Debug, Clone)]
pub(crate) struct ServiceMetrics {
    /// By [`SendOutcome`].
    sends: [Counter; 4],
    pub(crate) catch_ups: Counter,
    pub(crate) catch_up_events: Counter,
    pub(crate) resyncs: Counter,
}

/// How a send ended, for [`SENDS_TOTAL`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum SendOutcome {
    Stored = 0,
    Replayed = 1,
    Refused = 2,
    Failed = 3,
}

impl SendOutcome {
    /// A client error is refused; a storage or internal one failed.
    pub(crate) fn of_error(error: &crate::Error) -> Self {
        use crate::Error;
        match error {
            Error::Invalid(_)
            | Error::NotFound(_)
            | Error::Conflict(_)
            | Error::Unprocessable(_)
            | Error::RateLimited { .. } => SendOutcome::Refused,
            _ => SendOutcome::Failed,
        }
    }
}

impl ServiceMetrics {
    pub(crate) fn register() -> Self {
        Self {
            sends: [
                counter!(SENDS_TOTAL, "outcome" => "stored"),
                counter!(SENDS_TOTAL, "outcome" => "replayed"),
                counter!(SENDS_TOTAL, "outcome" => "refused"),
                counter!(SENDS_TOTAL, "outcome" => "failed"),
            ],
            catch_ups: counter!(CATCH_UPS_TOTAL),
            catch_up_events: counter!(CATCH_UP_EVENTS_TOTAL),
            resyncs: counter!(RESYNCS_TOTAL),
        }
    }

    pub(crate) fn send(&self, outcome: SendOutcome) {
        self.sends[outcome as usize].increment(1);
    }
}

/// A notification transport's handles, labelled `transport`: for [`LocalNotifier`]
/// (`local`), `chatcore-redis` (`redis`), `chatcore-postgres`'s `PgNotifier` (`postgres`) and
/// any third-party transport that wants the same series. Register it once, when the
/// transport is built, and give a clone to its [`crate::notify::SubscriberTable`]
/// ([`crate::notify::SubscriberTable::with_metrics`]), which counts queue overflows and gaps.
///
/// [`LocalNotifier`]: crate::LocalNotifier
///
/// ```
/// let metrics = chatcore::metrics::NotifierMetrics::register("my-broker");
/// metrics.reconnected(); // a no-op without a recorder
/// ```
#[derive(Debug, Clone)]
pub struct NotifierMetrics {
    /// Cloned into each subscription's handle, which counts its own overflows.
    pub(crate) overflows: Counter,
    gaps: Counter,
    reconnects: Counter,
    publish_failures: Counter,
}

impl NotifierMetrics {
    /// Registers the handles of transport `transport` with the recorder installed now.
    pub fn register(transport: &'static str) -> Self {
        Self {
            overflows: counter!(NOTIFY_QUEUE_OVERFLOWS_TOTAL, "transport" => transport),
            gaps: counter!(NOTIFIER_GAPS_TOTAL, "transport" => transport),
            reconnects: counter!(NOTIFIER_RECONNECTS_TOTAL, "transport" => transport),
            publish_failures: counter!(NOTIFIER_PUBLISH_FAILURES_TOTAL, "transport" => transport),
        }
    }

    /// Handles that record nothing.
    pub fn noop() -> Self {
        Self {
            overflows: Counter::noop(),
            gaps: Counter::noop(),
            reconnects: Counter::noop(),
            publish_failures: Counter::noop(),
        }
    }

    /// The listening connection was reopened.
    pub fn reconnected(&self) {
        self.reconnects.increment(1);
    }

    /// A publish could not be handed to the broker.
    pub fn publish_failed(&self) {
        self.publish_failures.increment(1);
    }

    /// `subscriptions` local subscriptions were handed a gap.
    pub(crate) fn gaps(&self, subscriptions: usize) {
        self.gaps.increment(subscriptions as u64);
    }
}

/// A store's batch-writer handles, labelled `backend` (`sqlite`, `mysql`, `postgres`, or a
/// third-party backend's name). Register it when the store is built and move clones into
/// its writer tasks or threads.
///
/// ```
/// let metrics = chatcore::metrics::StoreMetrics::register("my-db");
/// metrics.committed(12, std::time::Duration::from_micros(400)); // a no-op without a recorder
/// ```
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    batch_size: Histogram,
    commit: Histogram,
    fsync: Histogram,
    pool_wait: Histogram,
}

impl StoreMetrics {
    /// Registers the handles of backend `backend` with the recorder installed now.
    pub fn register(backend: &'static str) -> Self {
        Self {
            batch_size: histogram!(STORE_COMMIT_BATCH_SIZE, "backend" => backend),
            commit: histogram!(STORE_COMMIT_SECONDS, "backend" => backend),
            fsync: histogram!(STORE_FSYNC_SECONDS, "backend" => backend),
            pool_wait: histogram!(STORE_POOL_WAIT_SECONDS, "backend" => backend),
        }
    }

    /// A batch of `writes` committed in one transaction that took `took`.
    pub fn committed(&self, writes: usize, took: Duration) {
        self.batch_size.record(writes as f64);
        self.commit.record(took);
    }

    /// One sync of the log to the disk took `took`.
    pub fn synced(&self, took: Duration) {
        self.fsync.record(took);
    }

    /// A writer waited `took` for a pooled connection.
    pub fn waited_for_connection(&self, took: Duration) {
        self.pool_wait.record(took);
    }
}
