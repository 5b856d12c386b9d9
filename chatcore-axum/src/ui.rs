//! The web UI (feature `ui`): the `<chatcore-app>` custom element, its style sheet and an
//! icon, served under [`UI_PREFIX`] relative to where the router is nested.
//!
//! The element is one framework-free ES module: a host page adds
//!
//! ```html
//! <script type="module" src="/chat/ui/chatcore-app.js"></script>
//! <chatcore-app></chatcore-app>
//! ```
//!
//! and the element finds the API from the module's own address (`/chat/ui/` → `/chat/`), or
//! from its `base` attribute. It reads who is logged in from `GET /api/v1/auth/session`, so
//! a host that has set the session cookie (`SessionAuthenticator::session_cookie`)
//! shows the chat without a second login. It loads nothing else and needs no inline script
//! or style: the page may run under [`CONTENT_SECURITY_POLICY`]. Attributes, events and the
//! CSS custom properties for theming are listed at the top of `ui/chatcore-app.js` and in
//! the README.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::routes;

use crate::openapi::{self, ErrorBody};

/// Where the UI's files are served, relative to where the router is nested.
pub const UI_PREFIX: &str = "/ui";

/// The element's module.
pub const UI_SCRIPT: &str = include_str!("../ui/chatcore-app.js");
/// The element's style sheet (loaded by the element into its shadow root).
pub const UI_STYLESHEET: &str = include_str!("../ui/chatcore-app.css");
/// The chat icon, for a page's `<link rel="icon">`.
pub const UI_ICON: &str = include_str!("../ui/favicon.svg");

/// A Content-Security-Policy under which the element works, for the page that shows it: its
/// own origin's scripts, styles and connections (including the WebSocket) only, nothing
/// inline, no frames. Even if a message body were ever put into the page as HTML, no injected
/// script would run. A host whose page needs more extends it; the element needs no more.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The UI's routes, described.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> utoipa_axum::router::OpenApiRouter<S> {
    let routes = openapi::group::<S>();
    let routes = openapi::add(routes, routes!(script));
    let routes = openapi::add(routes, routes!(stylesheet));
    openapi::add(routes, routes!(icon))
}

/// The `<chatcore-app>` element.
///
/// The web UI as a custom element: an ES module with no dependencies. Add it to a page with
/// `<script type="module">` and put `<chatcore-app></chatcore-app>` where the chat goes.
#[utoipa::path(
    get,
    path = "/ui/chatcore-app.js",
    tag = "ui",
    responses(
        (status = 200, description = "The module", content_type = "text/javascript", body = String,
            example = json!("export class ChatcoreApp extends HTMLElement { /* ... */ }")),
        (status = "default", description = "Any other error", body = ErrorBody)
    )
)]
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", UI_SCRIPT)
}

/// The element's style sheet.
///
/// The style sheet the element loads into its shadow root; theme it with the
/// `--chatcore-*` custom properties rather than by replacing it.
#[utoipa::path(
    get,
    path = "/ui/chatcore-app.css",
    tag = "ui",
    responses(
        (status = 200, description = "The style sheet", content_type = "text/css", body = String,
            example = json!(":host { display: block; /* ... */ }")),
        (status = "default", description = "Any other error", body = ErrorBody)
    )
)]
pub(crate) async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", UI_STYLESHEET)
}

/// The chat icon.
///
/// An SVG icon, for a page's `<link rel="icon">`.
#[utoipa::path(
    get,
    path = "/ui/favicon.svg",
    tag = "ui",
    responses(
        (status = 200, description = "The icon", content_type = "image/svg+xml", body = String,
            example = json!("<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 32 32\">...</svg>")),
        (status = "default", description = "Any other error", body = ErrorBody)
    )
)]
pub(crate) async fn icon() -> Response {
    asset("image/svg+xml", UI_ICON)
}

/// A static file: revalidated on every load (`no-cache`), so an upgraded server's UI is
/// used at once, and never sniffed as another type.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("cross-origin-resource-policy"),
                HeaderValue::from_static("same-origin"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
