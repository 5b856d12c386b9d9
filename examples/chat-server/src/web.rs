//! The application router: the web UI, the chat API, the optional bench endpoint, one
//! tracing span and one `info` line per request, request ids (`x-request-id`, in the span
//! and the answer) and the HTTP metrics.

use std::time::Duration;

use axum::Router;
use axum::extract::MatchedPath;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chatcore_axum::{ChatApi, HttpMetricsLayer, RequestIdLayer};
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;
use tracing::Span;

/// The page: `<chatcore-app>` (served by the chat router under `/ui/`) full-screen.
const INDEX_HTML: &str = include_str!("../assets/index.html");

/// The whole application: the UI's page at `/`, the chat API, `/ws` and the UI's files, and
/// `POST /_bench/echo` when `bench_endpoints` is set. Every request gets an id (the
/// client's `x-request-id` when sane, else a fresh one) that its span carries and its
/// answer echoes, and is measured by `metrics` (`None`: `--metrics off`).
pub fn router(api: ChatApi, bench_endpoints: bool, metrics: Option<HttpMetricsLayer>) -> Router {
    let mut ui = Router::new().route("/", get(|| async { page() }));
    if bench_endpoints {
        ui = ui.route("/_bench/echo", post(echo));
    }
    // One `Router::layer` call for the three: each call wraps every route in another boxed
    // service that is cloned for every request. Outermost first: the metrics see every
    // answer, the id is there before the span is made.
    let layers = ServiceBuilder::new()
        .option_layer(metrics)
        .layer(RequestIdLayer::new())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<axum::body::Body>| {
                    let request_id = chatcore_axum::request_id(request).unwrap_or("-");
                    // The route template (`/api/v1/message/{id}/`), known here because
                    // `Router::layer` wraps each route after routing; "-" for no route.
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("-", MatchedPath::as_str);
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        route = %route,
                        path = %request.uri().path(),
                        request_id = %request_id
                    )
                })
                .on_request(())
                // One line per request at `info`, in the request's span (method, route, id);
                // `--log info,chat_server::request=warn` silences it alone.
                .on_response(|response: &Response, latency: Duration, _span: &Span| {
                    tracing::info!(
                        target: "chat_server::request",
                        status = response.status().as_u16(),
                        duration_ms = latency.as_secs_f64() * 1000.0,
                        "answered"
                    );
                }),
        );
    // The chat router answers unknown paths itself (JSON 404), so it goes last.
    ui.merge(api.router()).layer(layers)
}

/// The page, under the element's Content-Security-Policy: only its own origin's scripts,
/// styles and connections, nothing inline.
fn page() -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(chatcore_axum::ui::CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("same-origin"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// The shape of a send, for the framework-ceiling endpoint.
#[derive(Debug, Serialize, Deserialize)]
struct EchoBody {
    recipient: String,
    body: String,
}

/// Parses the JSON and answers it: the cost of the framework alone, for the load generator's
/// ceiling mode.
async fn echo(body: axum::Json<EchoBody>) -> impl IntoResponse {
    (StatusCode::CREATED, body)
}
