//! Prometheus metrics: the recorder this server installs for the libraries' handles
//! (`chatcore::metrics`), the HTTP layer, and `/metrics`, on the main listener or on one of
//! its own (`--metrics`, `--metrics-listen`).

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use chatcore::metrics::{BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_SECONDS, STORE_COMMIT_BATCH_SIZE};
use chatcore_axum::HttpMetricsLayer;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::ServerError;
use crate::options::{MetricsMode, ServerOptions};

/// How often histograms are drained into their buckets between scrapes, so that memory
/// stays flat whatever the scrape interval.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Where the metrics go, as the options say ([`setup`]).
pub enum Metrics {
    /// No recorder: every handle is a no-op and nothing is served (`--metrics off`).
    Off,
    /// `/metrics` on the main listener (the default).
    OnMain(PrometheusHandle),
    /// `/metrics` on this listener only (`--metrics-listen`).
    Separate(PrometheusHandle, TcpListener),
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Metrics::Off => f.write_str("Off"),
            Metrics::OnMain(_) => f.write_str("OnMain"),
            Metrics::Separate(_, listener) => write!(f, "Separate({:?})", listener.local_addr()),
        }
    }
}

/// Installs the Prometheus recorder as the process's global recorder (before anything
/// registers handles: call it before [`crate::run`] builds the store and the service) and
/// binds `--metrics-listen`. `--metrics off` installs nothing; with `--metrics-listen` it is
/// a contradiction ([`ServerError::Config`]), as is a second install in one process.
pub async fn setup(options: &ServerOptions) -> Result<Metrics, ServerError> {
    if options.metrics == MetricsMode::Off {
        return match options.metrics_listen {
            Some(_) => Err(ServerError::Config(
                "--metrics off contradicts --metrics-listen: drop one".into(),
            )),
            None => Ok(Metrics::Off),
        };
    }
    let handle = install()?;
    Ok(match options.metrics_listen {
        Some(address) => Metrics::Separate(handle, TcpListener::bind(address).await?),
        None => Metrics::OnMain(handle),
    })
}

fn install() -> Result<PrometheusHandle, ServerError> {
    let buckets =
        |error: metrics_exporter_prometheus::BuildError| ServerError::Config(format!("metrics: {error}"));
    let recorder = PrometheusBuilder::new()
        // Histograms with buckets, not summaries: they add up across nodes.
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
        .map_err(buckets)?
        .set_buckets_for_metric(Matcher::Full(STORE_COMMIT_BATCH_SIZE.into()), BATCH_SIZE_BUCKETS)
        .map_err(buckets)?
        .build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder)
        .map_err(|_| ServerError::Config("a metrics recorder is already installed in this process".into()))?;
    chatcore::metrics::describe();
    crate::hooks::describe_metrics();
    Ok(handle)
}

impl Metrics {
    /// The layer that measures the application's requests, `None` with `--metrics off`: for
    /// [`crate::web::router`], which puts it with its other per-request layers.
    pub fn http_layer(&self) -> Option<HttpMetricsLayer> {
        match self {
            Metrics::Off => None,
            Metrics::OnMain(_) | Metrics::Separate(..) => Some(HttpMetricsLayer::new()),
        }
    }
}

/// Adds `/metrics` to `app` (measured by the layer of [`Metrics::http_layer`], which
/// [`crate::web::router`] applied), or returns the router to serve on the separate listener.
/// Starts the recorder's upkeep.
pub fn wire(app: Router, metrics: Metrics) -> (Router, Option<(TcpListener, Router)>) {
    let handle = match &metrics {
        Metrics::Off => return (app, None),
        Metrics::OnMain(handle) | Metrics::Separate(handle, _) => handle.clone(),
    };
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    match metrics {
        Metrics::Separate(_, listener) => (app, Some((listener, routes(handle)))),
        _ => (app.merge(routes(handle)), None),
    }
}

/// `GET /metrics`: the Prometheus text format.
fn routes(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}
