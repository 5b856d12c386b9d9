//! The application router: the web UI, the chat API, the optional bench endpoint, one
//! tracing span per request, and request ids (`x-request-id`, in the span and the answer).

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chatcore_axum::ChatApi;
use serde::{Deserialize, Serialize};
use tower_http::trace::TraceLayer;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The UI may load only its own scripts and styles and talk only to its own origin: even if
/// a message body were ever put into the page as HTML, no injected script would run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The whole application: UI at `/`, assets under `/static/`, the chat API and `/ws`, and
/// `POST /_bench/echo` when `bench_endpoints` is set. Every request gets an id (the
/// client's `x-request-id` when sane, else a fresh one) that its span carries and its
/// answer echoes.
pub fn router(api: ChatApi, bench_endpoints: bool) -> Router {
    let mut ui = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/static/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/static/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        );
    if bench_endpoints {
        ui = ui.route("/_bench/echo", post(echo));
    }
    // The chat router answers unknown paths itself (JSON 404), so it goes last.
    let app = ui
        .merge(api.router())
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let request_id = chatcore_axum::request_id(request).unwrap_or("-");
            tracing::info_span!(
                "request",
                method = %request.method(),
                path = %request.uri().path(),
                request_id = %request_id
            )
        }));
    // Outside the trace layer, so the span sees the id.
    chatcore_axum::with_request_ids(app)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
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
        body,
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
