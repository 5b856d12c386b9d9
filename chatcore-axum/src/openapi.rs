//! The OpenAPI 3.1 description of the router, generated from the handlers' `#[utoipa::path]`
//! attributes and the bodies' `ToSchema` derives while the router is built (utoipa-axum's
//! `OpenApiRouter`), so a route cannot be served without being described. Served at
//! `/api/v1/openapi.json`, rendered once when the router is built.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use utoipa::openapi::OpenApi as Description;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

/// Where the description is served, relative to where the router is nested.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The security scheme of the session cookie (`SessionAuthenticator`).
pub(crate) const SESSION_COOKIE: &str = "session_cookie";
/// The security scheme of `Authorization: Bearer <token>`.
pub(crate) const BEARER: &str = "bearer";

/// What the API description says before the routes add themselves: title, version, the
/// security schemes, the tags and the error body.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatcore",
        description = "The chatcore HTTP API: users, messages, the inbox and read markers, \
            blocks, accounts and sessions, health probes, and the `/ws` notification channel (its \
            frames are described on `GET /ws`). Paths are relative to where the host nests \
            the router. Every path also answers with the trailing slash toggled \
            (`/api/v1/message/` and `/api/v1/message`). Every error is JSON \
            `{\"error\": \"...\"}`; 429 and 503 carry `Retry-After`, 401 carries \
            `WWW-Authenticate: Bearer`. A POST authenticated by cookie must come from the \
            server's own origin (or a trusted one) when it names one, else 403.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody)),
    tags(
        (name = "users", description = "The user directory"),
        (name = "messages", description = "Sending and reading messages"),
        (name = "inbox", description = "Conversations, unread counts and read markers"),
        (name = "blocks", description = "Blocking users: while either of two users blocks the other, neither can message the other"),
        (name = "auth", description = "Accounts and sessions (`SessionAuthenticator`)"),
        (name = "notifications", description = "The `/ws` WebSocket channel"),
        (name = "operations", description = "Health probes and this description"),
        (name = "ui", description = "The web UI, `<chatcore-app>` (feature `ui`)")
    )
)]
struct BaseDescription;

/// Adds the two ways `SessionAuthenticator` accepts a caller. A host with its own
/// `Authenticator` accepts whatever it accepts; the schemes then describe the default.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, description: &mut Description) {
        let components = description.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SESSION_COOKIE,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "chatcore_session",
                "The HttpOnly session cookie set by `POST /api/v1/auth/login` (named \
                 `__Host-chatcore_session` when the server runs with secure cookies).",
            ))),
        );
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The `token` answered by `POST /api/v1/auth/login`, as \
                         `Authorization: Bearer <token>`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every error answer: `{"error": "<what went wrong, for a human>"}`.
#[derive(ToSchema)]
#[schema(as = Error, example = json!({"error": "authentication required"}))]
#[allow(dead_code)] // only described: `ApiError` renders the body
pub(crate) struct ErrorBody {
    /// What went wrong, for a human (never internals).
    error: String,
}

/// 401 of every route that asks who the caller is.
#[derive(IntoResponses)]
#[response(
    status = 401,
    description = "Not authenticated (with `WWW-Authenticate: Bearer`)",
    example = json!({"error": "authentication required"})
)]
#[allow(dead_code)] // only described: `ApiError` renders it
pub(crate) struct Unauthenticated(ErrorBody);

/// The errors of every route that reads a JSON or form body.
#[derive(IntoResponses)]
#[allow(dead_code)] // only described: `ApiError` renders them
pub(crate) enum BodyErrors {
    /// A request from another site riding on the session cookie (its `Origin` is not this
    /// server's nor a trusted one)
    #[response(status = 403, example = json!({"error": "cross-site request refused"}))]
    CrossSite(ErrorBody),
    /// The request body is larger than the limit (64 KiB by default)
    #[response(status = 413, example = json!({"error": "request body is too large"}))]
    TooLarge(ErrorBody),
    /// The body is neither JSON nor a form
    #[response(
        status = 415,
        example = json!({"error": "send the body as application/json or application/x-www-form-urlencoded"})
    )]
    UnsupportedType(ErrorBody),
}

/// The errors any route may answer besides its own.
#[derive(IntoResponses)]
#[allow(dead_code)] // only described: `ApiError` renders them
pub(crate) enum ServerErrors {
    /// Unavailable: storage or notifications down or too slow to answer, or the server
    /// shutting down; retry after `Retry-After`
    #[response(
        status = 503,
        headers(("Retry-After" = u64, description = "Seconds to wait before retrying")),
        example = json!({"error": "storage is unavailable, retry later"})
    )]
    Unavailable(ErrorBody),
    /// Any other error, always JSON `{"error": "..."}`
    #[response(status = "default", example = json!({"error": "internal error"}))]
    Other(ErrorBody),
}

/// A message as every route and frame renders it.
#[derive(ToSchema)]
#[schema(as = Message, example = json!({
    "id": 17, "user": "alice", "recipient": "bob",
    "timestamp": "2026-11-28T10:00:00.123456Z", "body": "hi", "edited": null
}))]
#[allow(dead_code)] // only described: `chatcore::Message` is what is serialized
pub(crate) struct MessageDoc {
    /// The message id; ids increase with time, and a message's position is its id.
    id: i64,
    /// The sender's name, as they chose to write it.
    user: String,
    /// The recipient's name, as they chose to write it.
    recipient: String,
    /// When the server stored it, ISO 8601 UTC with microseconds.
    #[schema(format = DateTime)]
    timestamp: String,
    /// The text, trimmed, with `\n` line breaks; empty once deleted.
    body: String,
    /// When its sender last edited it; `null` if never (and once deleted).
    #[schema(format = DateTime, required = true)]
    edited: Option<String>,
    /// Present and `true` once its sender deleted it: the text is gone for good.
    deleted: Option<bool>,
}

/// A new empty [`Description`] that route groups add themselves to.
pub(crate) fn base() -> Description {
    BaseDescription::openapi()
}

/// An empty router to collect one group of routes and their description.
pub(crate) fn group<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::default()
}

/// Adds `routes` (handlers of one path, collected with `utoipa_axum::routes!`) to `router`,
/// described, and the same handlers at the path with its trailing slash toggled, which the
/// API has always answered (`/api/v1/message/` and `/api/v1/message`). The alias is left out
/// of the description: its text says every path has one.
pub(crate) fn add<S: Clone + Send + Sync + 'static>(
    router: OpenApiRouter<S>,
    routes: UtoipaMethodRouter<S>,
) -> OpenApiRouter<S> {
    let aliases: Vec<String> = routes.1.paths.keys().map(|path| toggle_slash(path)).collect();
    let mut router = router;
    for alias in aliases {
        router = router.route(&alias, routes.2.clone());
    }
    router.routes(routes)
}

/// `path` with its trailing slash added or removed.
pub(crate) fn toggle_slash(path: &str) -> String {
    match path.strip_suffix('/') {
        Some(trimmed) => trimmed.to_owned(),
        None => format!("{path}/"),
    }
}

/// The rendered description, the state of [`document`].
#[derive(Clone)]
pub(crate) struct RenderedDescription(pub(crate) Bytes);

impl RenderedDescription {
    /// Renders `description` once, for every request to come.
    pub(crate) fn new(description: &Description) -> Self {
        let json = serde_json::to_vec(description)
            .expect("an OpenAPI description is strings, numbers and maps: it always serializes");
        Self(Bytes::from(json))
    }
}

/// This API description.
///
/// This description: every route of the router, its parameters, bodies (with examples),
/// answers and security. Generated from the code, so it cannot drift from what is served.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 description of this API", content_type = "application/json",
            body = Object, example = json!({"openapi": "3.1.0", "info": {"title": "chatcore", "version": "0.1.0"}, "paths": {}})),
        (status = "default", description = "Any other error", body = ErrorBody)
    )
)]
pub(crate) async fn document(State(rendered): State<RenderedDescription>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        rendered.0,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toggles_the_trailing_slash() {
        assert_eq!(toggle_slash("/api/v1/message/"), "/api/v1/message");
        assert_eq!(toggle_slash("/ws"), "/ws/");
    }
}
