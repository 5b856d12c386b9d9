//! What the web layer measures (names in [`chatcore::metrics`]): [`HttpMetricsLayer`], the
//! requests by route template, method and status with their latency; and the `/ws`
//! handles: open sockets, why sockets ended, and how long a send took to reach a socket.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use ::metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use arc_swap::ArcSwap;
use axum::extract::MatchedPath;
use chatcore::metrics::{
    HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_TOTAL, WS_CLOSED_TOTAL, WS_DELIVERY_SECONDS, WS_OPEN_SOCKETS,
};
use http::{Method, Request, Response, StatusCode};
use tower::{Layer, Service};

/// The `route` label of a request that matched no route (a fallback answered it).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// A [`tower::Layer`] that counts HTTP requests and times them
/// ([`chatcore::metrics::HTTP_REQUESTS_TOTAL`],
/// [`chatcore::metrics::HTTP_REQUEST_DURATION_SECONDS`]) by `route`, `method` and `status`.
/// `route` is the matched route template (`/api/v1/message/{id}`, never the path a client
/// sent, so the number of series stays bounded; [`UNMATCHED_ROUTE`] for a request no route
/// matched), `method` one of the standard methods or `other`. The time is to the response
/// head, which for this API's JSON answers is the whole answer.
///
/// Add it with [`axum::Router::layer`] on the outermost router, so that every route is
/// measured under its full template (the nesting prefix included). A route's handles are
/// registered with the global recorder the first time it answers with a given method and
/// status, then reused: measuring a request takes no lock and allocates nothing.
///
/// ```
/// use axum::{Router, routing::get};
/// use chatcore_axum::HttpMetricsLayer;
///
/// let app: Router = Router::new()
///     .route("/hello/{name}", get(|| async { "hi" }))
///     .layer(HttpMetricsLayer::new());
/// ```
#[derive(Clone, Default)]
pub struct HttpMetricsLayer {
    handles: Arc<RouteHandles>,
}

impl HttpMetricsLayer {
    /// A layer with no route registered yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for HttpMetricsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetricsLayer")
            .field("routes", &self.handles.known.load().len())
            .finish()
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics {
            inner,
            handles: self.handles.clone(),
        }
    }
}

/// The service [`HttpMetricsLayer`] wraps around each route.
#[derive(Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    handles: Arc<RouteHandles>,
}

impl<S> std::fmt::Debug for HttpMetrics<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMetrics").finish_non_exhaustive()
    }
}

impl<S, RequestBody, ResponseBody> Service<Request<RequestBody>> for HttpMetrics<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        ResponseFuture {
            started: Instant::now(),
            inner: self.inner.call(request),
            route,
            method,
            handles: self.handles.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of an [`HttpMetrics`] service: the inner one's, measured when it is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        route: Option<MatchedPath>,
        method: &'static str,
        started: Instant,
        handles: Arc<RouteHandles>,
    }
}

impl<F, ResponseBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let route = this.route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
            this.handles
                .record(route, this.method, response.status(), this.started.elapsed());
        }
        Poll::Ready(result)
    }
}

/// The standard methods by name; anything else is `other`, so a client cannot make series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Each route's handles, by method and status. Read without a lock (a snapshot swapped in
/// whole); a combination seen for the first time is registered under `adding` and a new
/// snapshot replaces the old one, so the table only grows while new combinations appear.
#[derive(Default)]
struct RouteHandles {
    known: ArcSwap<HashMap<Box<str>, Vec<StatusHandles>>>,
    adding: Mutex<()>,
}

#[derive(Clone)]
struct StatusHandles {
    method: &'static str,
    status: StatusCode,
    requests: Counter,
    duration: Histogram,
}

impl RouteHandles {
    fn record(&self, route: &str, method: &'static str, status: StatusCode, took: Duration) {
        let known = self.known.load();
        let found = known
            .get(route)
            .and_then(|handles| handles.iter().find(|h| h.status == status && h.method == method));
        match found {
            Some(handles) => handles.measure(took),
            None => {
                drop(known);
                self.register(route, method, status).measure(took);
            }
        }
    }

    fn register(&self, route: &str, method: &'static str, status: StatusCode) -> StatusHandles {
        let _adding = self
            .adding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.known.load_full();
        if let Some(found) = current
            .get(route)
            .and_then(|handles| handles.iter().find(|h| h.status == status && h.method == method))
        {
            return found.clone(); // registered by another request meanwhile
        }
        let status_label = status.as_u16().to_string();
        let handles = StatusHandles {
            method,
            status,
            requests: counter!(
                HTTP_REQUESTS_TOTAL,
                "route" => route.to_owned(),
                "method" => method,
                "status" => status_label.clone()
            ),
            duration: histogram!(
                HTTP_REQUEST_DURATION_SECONDS,
                "route" => route.to_owned(),
                "method" => method,
                "status" => status_label
            ),
        };
        let mut next = (*current).clone();
        next.entry(route.into()).or_default().push(handles.clone());
        self.known.store(Arc::new(next));
        handles
    }
}

impl StatusHandles {
    fn measure(&self, took: Duration) {
        self.requests.increment(1);
        self.duration.record(took);
    }
}

/// Why a WebSocket ended, for [`chatcore::metrics::WS_CLOSED_TOTAL`]'s `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketEnd {
    ClientGone,
    Lagging,
    Unresponsive,
    Shutdown,
    Evicted,
    SessionEnded,
    FrameTooBig,
    Unavailable,
}

impl SocketEnd {
    const ALL: [SocketEnd; 8] = [
        SocketEnd::ClientGone,
        SocketEnd::Lagging,
        SocketEnd::Unresponsive,
        SocketEnd::Shutdown,
        SocketEnd::Evicted,
        SocketEnd::SessionEnded,
        SocketEnd::FrameTooBig,
        SocketEnd::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            SocketEnd::ClientGone => "client_gone",
            SocketEnd::Lagging => "lagging",
            SocketEnd::Unresponsive => "unresponsive",
            SocketEnd::Shutdown => "shutdown",
            SocketEnd::Evicted => "evicted",
            SocketEnd::SessionEnded => "session_ended",
            SocketEnd::FrameTooBig => "frame_too_big",
            SocketEnd::Unavailable => "unavailable",
        }
    }
}

/// The `/ws` handles, registered once per router ([`crate::ChatApi::router`]).
pub(crate) struct WsMetrics {
    open: Gauge,
    /// By [`SocketEnd`], in the order of [`SocketEnd::ALL`].
    ended: [Counter; SocketEnd::ALL.len()],
    delivery: Histogram,
}

impl WsMetrics {
    pub(crate) fn register() -> Self {
        Self {
            open: gauge!(WS_OPEN_SOCKETS),
            ended: SocketEnd::ALL.map(|end| counter!(WS_CLOSED_TOTAL, "reason" => end.label())),
            delivery: histogram!(WS_DELIVERY_SECONDS),
        }
    }

    /// Counts a socket as open until the returned guard drops.
    pub(crate) fn open_socket(&self) -> OpenSocket {
        self.open.increment(1.0);
        OpenSocket(self.open.clone())
    }

    pub(crate) fn ended(&self, end: SocketEnd) {
        let index = SocketEnd::ALL.iter().position(|e| *e == end).unwrap_or_default();
        self.ended[index].increment(1);
    }

    /// Frames of sends accepted at `accepted` were written to a socket at `written`.
    pub(crate) fn delivered(&self, accepted: impl Iterator<Item = Instant>, written: Instant) {
        for at in accepted {
            self.delivery.record(written.saturating_duration_since(at));
        }
    }
}

/// One open socket in [`chatcore::metrics::WS_OPEN_SOCKETS`].
pub(crate) struct OpenSocket(Gauge);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_are_counted_by_route_template_method_and_status() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _recording = ::metrics::set_default_local_recorder(&recorder);
        let app: Router = Router::new()
            .route("/item/{id}", get(|| async { "item" }))
            .layer(HttpMetricsLayer::new());
        let paths = ["/item/1", "/item/2", "/item/3", "/nowhere"];
        for path in paths {
            let request = Request::get(path).body(Body::empty()).unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
        let request = Request::builder()
            .method("BREW")
            .uri("/item/4")
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(request).await.unwrap();

        let mut counts = HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            match value {
                DebugValue::Counter(n) if key.key().name() == HTTP_REQUESTS_TOTAL => {
                    counts.insert(labels.join(","), n);
                }
                DebugValue::Histogram(samples) if key.key().name() == HTTP_REQUEST_DURATION_SECONDS => {
                    assert!(samples.iter().all(|s| s.into_inner() >= 0.0));
                }
                _ => {}
            }
        }
        let expected = HashMap::from([
            ("route=/item/{id},method=GET,status=200".to_owned(), 3),
            ("route=unmatched,method=GET,status=404".to_owned(), 1),
            ("route=/item/{id},method=other,status=405".to_owned(), 1),
        ]);
        assert_eq!(counts, expected);
    }
}
