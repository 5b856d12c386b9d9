//! # chatcore-axum
//!
//! The chatcore REST API and `/ws` notification channel as an axum [`Router`] that a host
//! application nests in a line, next to its own routes. It implements the HTTP and
//! WebSocket contract of chatcore: users, messages (send, history with pages and cursors,
//! get one), a WebSocket that pushes every new message to each of its user's open
//! connections with catch-up on reconnect, and optional account routes (register, login,
//! logout).
//!
//! Identity belongs to the host: the router asks an [`Authenticator`] who the caller is.
//! With feature `sessions` (default), `SessionAuthenticator` is a complete one (argon2
//! passwords, revocable session tokens as bearer token or cookie, a session cache that every
//! logout on any node reaches, per-address limits on logins and registrations) kept in a
//! [`chatcore::SessionStore`], normally the same backend as the messages. A host with its own
//! authenticator turns the feature off (`default-features = false`) and does without argon2
//! and the rest.
//!
//! With feature `ui` the router also serves the web UI, the `<chatcore-app>` custom element,
//! under `/ui/` (see the `ui` module): a host page adds
//! `<script type="module" src="/chat/ui/chatcore-app.js">` and the element.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore};
//! use chatcore_axum::{ChatApi, SessionAuthenticator, SessionConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(MemoryStore::new());
//! let chat = ChatService::new(store.clone(), Arc::new(LocalNotifier::default()), ChatConfig::default());
//! let auth = SessionAuthenticator::new(store, SessionConfig::default())?;
//! auth.start(&chat).await?; // session cache, expired-session sweeper
//! let api = ChatApi::new(chat, auth.clone()).with_auth_routes(auth);
//! let shutdown = api.shutdown_handle();
//! let app = Router::new()
//!     .route("/", get(|| async { "the host's own page" }))
//!     .nest("/chat", api.router()); // /chat/api/v1/message/, /chat/ws, ...
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! chatcore_axum::serve(listener, app, shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The routes, relative to where the router is nested (each also with a trailing slash):
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/v1/user/?q=&limit=&after=` | the other users, sorted by name |
//! | `GET /api/v1/message/?target=&page=&before=&limit=` | `{"count", "next", "previous", "results"}`, newest first |
//! | `POST /api/v1/message/` (JSON or form, optional `Idempotency-Key`) | 201, the message |
//! | `GET /api/v1/message/{id}/` | the message, for its sender or recipient only |
//! | `PATCH /api/v1/message/{id}/` `{"body"}` | its sender edits it: the message with `"edited"`; 403 for its recipient (or past the edit window), 404 for anyone else and for a deleted one |
//! | `DELETE /api/v1/message/{id}/` | its sender deletes it: 204 (again: 204); it stays as a tombstone `{..., "body": "", "deleted": true}`; 403 for its recipient, 404 for anyone else |
//! | `GET /api/v1/conversation/?limit=&before=` | the inbox: `{"next", "unread_total", "results": [{"peer", "last_message", "unread", "read_up_to", "peer_read_up_to"}]}`, latest activity first |
//! | `POST /api/v1/conversation/{peer}/read` `{"up_to": <id>}` | moves the caller's read marker (forward only): `{"unread", "read_up_to"}` |
//! | `GET /api/v1/auth/session` | `{"username"}` of the caller, 401 for no one |
//! | `PUT /api/v1/block/{username}`, `DELETE /api/v1/block/{username}` | the caller blocks / unblocks a user: 204 (again: 204); 404 unknown user, 400 oneself. While either of two users blocks the other, sends and edits between them answer 403 `{"error": "you cannot message this user"}` and nothing is stored |
//! | `GET /api/v1/block/?after=&limit=` | `[{"username"}]`: whom the caller blocks, sorted by name, paged like the directory |
//! | `GET /api/v1/auth/export` | `{"username", "messages": [...]}`: every message the caller sent or received, newest first, streamed page by page |
//! | `GET /ws?since=POSITION` | WebSocket: every durable event of the caller in position order: `{"type": "message", "position", "message": "<id>", "data": <message>}`, `{"type": "read", "position", "reader", "peer", "up_to"}`, `{"type": "edit", "position", "data": <message>}` and `{"type": "delete", "position", "data": <tombstone>}` |
//! | `POST /api/v1/auth/register`, `/login`, `/logout` | with `ChatApi::with_auth_routes` or `auth_router` (feature `sessions`); register and login limited per client address (429 with `Retry-After`) |
//! | `DELETE /api/v1/auth/account` `{"password"}` | with the auth routes: deletes the caller's account ([`SessionAuthenticator::delete_account`]): 204; 403 for a wrong password; limited like a login |
//! | `GET /healthz` | `{"status": "ok"}`: the process answers (touches no backend) |
//! | `GET /readyz` | `{"status": "ready"}`, or 503 `{"error"}` while draining for a shutdown ([`ShutdownHandle::drain`]), with the notifier disconnected, or with the store not answering a trivial read within [`ApiConfig::readiness_timeout`] |
//! | `GET /api/v1/openapi.json` | the OpenAPI 3.1 description of all of the above ([`ChatApi::openapi`]) |
//! | `GET /ui/chatcore-app.js`, `/ui/chatcore-app.css`, `/ui/favicon.svg` | with feature `ui`: the web UI as a custom element, `<chatcore-app>` (see `ui`) |
//!
//! Every error is JSON `{"error": "..."}` (see [`ApiError`]): 400, 401 with
//! `WWW-Authenticate`, 403 cross-site, 404 (also for unknown paths), 405, 408 (a body that
//! stopped arriving), 409, 413, 415, 429 and 503 with `Retry-After`; even a bug that panics in
//! a handler (or in the host's authenticator) is a logged JSON 500, not a dropped connection.
//! [`serve_with`] also answers in JSON what hyper answers itself before the router (400 for a
//! malformed request, 431 for a head too large). Limits are in [`ApiConfig`],
//! [`ServeConfig`] (connections: timeouts, head size, how many) and [`chatcore::ChatConfig`].
//!
//! # Operations
//!
//! The router describes itself: [`ChatApi::openapi`] is its OpenAPI 3.1 description, built
//! from each handler's `#[utoipa::path]` attribute as the route is registered (utoipa-axum),
//! so a route cannot be served undescribed; the router serves it at [`OPENAPI_PATH`].
//!
//! The health probes are routes of the router, not of a server, because readiness is about
//! what the router needs (its service's store and notifier, its [`ShutdownHandle`]); a host
//! nesting it under `/chat` probes `/chat/readyz`. For an orderly shutdown behind a load
//! balancer, call [`ShutdownHandle::drain`] (or [`ShutdownHandle::shutdown_after_drain`])
//! first: `/readyz` fails while the listener still accepts.
//!
//! [`with_request_ids`] (or [`RequestIdLayer`], to stack with other layers in one
//! `Router::layer` call) gives every request an `x-request-id` (the client's when sane, else a
//! fresh UUID-shaped id) for the host's spans ([`request_id`]) and echoes it on the answer. It
//! is a separate wrapper because a host usually has its own tracing layer to put inside it.
//!
//! # History pages
//!
//! `count` is the size of the whole list (the conversation, or all the caller's messages);
//! `next` and `previous` are absolute paths, prefix included, or `null`. With `?page=N` they
//! are page links, as in the original app. Otherwise `next` is a `before` cursor below the
//! page's oldest message (keyset paging: its cost does not grow with the depth), `null` once
//! a page comes back short or the list ends, and `previous` of a page below a cursor links
//! to the newest page. `limit` (at most [`chatcore::ChatConfig::max_page_size`]) and
//! `target` are kept in the links.
//!
//! # Authentication and cross-site requests
//!
//! Every route but the auth routes asks the [`Authenticator`]; no caller is 401 with
//! `WWW-Authenticate: Bearer`. A POST, or a WebSocket upgrade, that carries no
//! `Authorization` header rides on an ambient credential (a cookie), so when it names an
//! origin (`Origin`, else `Referer`) that origin must be the request's own `Host` or one of
//! [`ApiConfig::trusted_origins`]; otherwise it is 403. Bearer-authenticated requests are
//! exempt: browsers never attach them on their own.
//!
//! # The WebSocket channel
//!
//! `GET /ws` upgrades only after authentication, subscription and one storage read (the first
//! page of the backlog after `?since=POSITION`, or the user's newest position), so each failure
//! is a plain JSON answer (401, 403, 503). Then the server sends text frames, each with a
//! `"type"`:
//! - `{"type":"message","position":17,"message":"17","data":<message>}` for each message the
//!   user sent or received: first the missed ones (oldest first, read from storage a page of
//!   [`chatcore::ChatConfig::catch_up_page`] at a time as the socket drains), then live ones.
//!   Delivery follows positions: once a socket has sent position p it has sent every event of
//!   the user's before p, so `since` = the last position seen is always safe (see
//!   [`chatcore::event`]). A live event that arrives ahead of one it follows waits
//!   [`ApiConfig::ws_gap_wait`] for it, then the socket reads storage;
//! - `{"type":"resync","resync":true}` when more were missed than
//!   [`chatcore::ChatConfig::catch_up_limit`]: the client reloads its history, and live frames
//!   continue after the user's newest position.
//!
//! A lost notification (a gap signal from the transport, an overflowed queue, a predecessor
//! that never came) is read from storage, never skipped. Close codes: 1001 server shutting
//! down ([`ShutdownHandle`]); 1008 the user opened more than
//! [`chatcore::ChatConfig::max_connections_per_user`] sockets and this was the oldest; 1009 a
//! client frame over [`ApiConfig::ws_max_incoming_message`]; 1013 storage could not be read
//! (reconnect with `since`); [`CLOSE_SESSION_ENDED`] (4001) the session the socket was opened
//! with ended, by logout on any node or by expiry ([`Authenticator::authenticate_session`]).
//! The server pings every [`ApiConfig::ws_ping_interval`] and drops connections that stay
//! silent. Frames sent by clients are ignored.
//!
//! # Metrics
//!
//! The router emits through the `metrics` facade (names in [`chatcore::metrics`]): open
//! sockets, why sockets ended (`lagging` ones among them: dropped for not taking a frame
//! within [`ApiConfig::ws_send_timeout`]), and how long a send took from
//! [`chatcore::ChatService::send`] to its frame written to a socket. Its handles are
//! registered when [`ChatApi::router`] is called: install your recorder before. Requests by
//! route template, method and status are counted and timed by [`HttpMetricsLayer`], which
//! the host adds to its outermost router. Without a recorder all of it is a no-op.
//!
//! # Layout
//! - `lib.rs`: [`ChatApi`] (the builder), [`router`], `auth_router`.
//! - `serve.rs`: [`serve`] and [`serve_with`], the server's edge: one task per connection
//!   (hyper's HTTP/1 builder, with upgrades) under [`ServeConfig`]'s timeouts and connection
//!   limits, the shutdown grace period, JSON for hyper's own error answers.
//! - `config.rs`: [`ApiConfig`], the HTTP and WebSocket limits.
//! - `error.rs`: [`ApiError`] and the one mapping from [`chatcore::Error`] to a status.
//! - `auth.rs`: the [`Authenticator`] trait, the same-origin (CSRF) check, the caller extractor.
//! - `session.rs` (feature `sessions`): `SessionAuthenticator`, its background tasks, and the
//!   register/login/logout routes.
//! - `session_cache.rs` (feature `sessions`): `CachedSessions`, the session-lookup cache in
//!   front of any `SessionStore`, and how it hears revocations from every node.
//! - `limits.rs` (feature `sessions`): per-client-address limits on logins and
//!   registrations, and finding the client address.
//! - `body.rs`: JSON-or-form body and query extractors that answer in our JSON errors.
//! - `rest.rs`: the user and message routes, pagination links.
//! - `blocks.rs`: the block routes.
//! - `inbox.rs`: the inbox, read markers, `GET /api/v1/auth/session`.
//! - `ws.rs`: the `/ws` channel: catch-up, live frames, pings, close frames.
//! - `metrics.rs`: [`HttpMetricsLayer`] (requests by route template, method and status) and
//!   the `/ws` handles (open sockets, why they ended, send-to-socket latency).
//! - `openapi.rs`: the description's frame (title, security schemes, tags, shared schemas),
//!   how a route group registers itself described, and `GET /api/v1/openapi.json`.
//! - `health.rs`: `/healthz` and `/readyz`.
//! - `ui.rs` (feature `ui`): the web UI's files under `/ui/`; the files themselves are in
//!   `ui/` (`chatcore-app.js`, the `<chatcore-app>` custom element; its style sheet; an icon).
//! - `request_id.rs`: [`RequestIdLayer`] and [`with_request_ids`]: the `x-request-id` of every
//!   request, its span and its answer.
//! - `cursor.rs`: a socket's delivered position and the live events held for an earlier one.
//! - `state.rs`: the shared state and [`ShutdownHandle`].
//! - `tests/http_api.rs`: the contract end to end (real server on port 0, reqwest and
//!   tokio-tungstenite clients), one suite (`tests/suite/`, macro `api_suite!`) run on the
//!   memory, SQLite and MySQL stores; `tests/cluster.rs`: two servers sharing a store and
//!   Redis; `tests/openapi.rs`: the description against the router's own route table and
//!   answers; `tests/operations.rs`: health probes, the drain, request ids.
//! - `benches/router.rs`: the router in process (criterion); `examples/idle_ws_memory.rs`:
//!   memory per idle WebSocket.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod auth;
mod blocks;
mod body;
mod config;
mod cursor;
mod error;
mod health;
mod inbox;
#[cfg(feature = "sessions")]
mod limits;
pub mod metrics;
mod openapi;
mod request_id;
mod rest;
mod serve;
#[cfg(feature = "sessions")]
mod session;
#[cfg(feature = "sessions")]
mod session_cache;
mod state;
#[cfg(feature = "ui")]
pub mod ui;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use chatcore::ChatService;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use crate::metrics::HttpMetricsLayer;
pub use auth::{Authenticated, Authenticator, SessionInfo, TrustedOrigin};
pub use config::ApiConfig;
pub use error::{ApiError, UNAVAILABLE_RETRY_AFTER_SECS};
pub use openapi::OPENAPI_PATH;
pub use request_id::{
    MAX_REQUEST_ID_BYTES, REQUEST_ID_HEADER, RequestIdFuture, RequestIdLayer, RequestIds, request_id,
    with_request_ids,
};
pub use serve::{
    EdgeCounters, MIN_HEADER_BYTES, ServeConfig, descriptor_limits, raise_descriptor_limit, serve, serve_with,
};
#[cfg(feature = "sessions")]
pub use session::{Session, SessionAuthenticator, SessionConfig, token_hash};
#[cfg(feature = "sessions")]
pub use session_cache::CachedSessions;
pub use state::ShutdownHandle;
pub use ws::CLOSE_SESSION_ENDED;

use state::ApiState;

/// Builds the chat router: the service, who the caller is, limits, optional auth routes and
/// the shutdown handle. For the defaults in one call, see [`router`].
///
/// ```
/// use std::sync::Arc;
/// use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore};
/// use chatcore_axum::{ApiConfig, ChatApi, SessionAuthenticator, SessionConfig};
///
/// let store = Arc::new(MemoryStore::new());
/// let chat = ChatService::new(store.clone(), Arc::new(LocalNotifier::default()), ChatConfig::default());
/// let auth = SessionAuthenticator::new(store, SessionConfig::default()).expect("valid settings");
/// let api = ChatApi::new(chat, auth.clone())
///     .with_config(ApiConfig { ws_ping_interval: std::time::Duration::from_secs(10), ..Default::default() })
///     .with_auth_routes(auth);
/// let app: axum::Router = axum::Router::new().nest("/chat", api.router());
/// ```
#[derive(Clone)]
pub struct ChatApi {
    service: ChatService,
    authenticator: Arc<dyn Authenticator>,
    config: ApiConfig,
    #[cfg(feature = "sessions")]
    sessions: Option<SessionAuthenticator>,
    shutdown: ShutdownHandle,
}

impl std::fmt::Debug for ChatApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("ChatApi");
        debug.field("config", &self.config);
        #[cfg(feature = "sessions")]
        debug.field("auth_routes", &self.sessions.is_some());
        debug.finish_non_exhaustive()
    }
}

impl ChatApi {
    /// A builder over `service`, asking `authenticator` who each caller is, with the
    /// default [`ApiConfig`] and no auth routes.
    pub fn new(service: ChatService, authenticator: impl Authenticator) -> Self {
        Self {
            service,
            authenticator: Arc::new(authenticator),
            config: ApiConfig::default(),
            #[cfg(feature = "sessions")]
            sessions: None,
            shutdown: ShutdownHandle::new(),
        }
    }

    /// Uses `config` for limits and timings.
    pub fn with_config(mut self, config: ApiConfig) -> Self {
        self.config = config;
        self
    }

    /// Also serves `POST /api/v1/auth/register`, `/login` and `/logout` with `sessions`
    /// (normally the same [`SessionAuthenticator`] passed to [`ChatApi::new`]), with its
    /// per-address limits ([`SessionConfig::logins_per_minute`]). This starts nothing: call
    /// [`SessionAuthenticator::start`] for its cache and expired-session sweeper. Only with
    /// feature `sessions` (default).
    #[cfg(feature = "sessions")]
    pub fn with_auth_routes(mut self, sessions: SessionAuthenticator) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Uses `shutdown` instead of a fresh handle (to share one across several routers).
    pub fn with_shutdown_handle(mut self, shutdown: ShutdownHandle) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The handle that closes this router's WebSockets; keep a clone before calling
    /// [`ChatApi::router`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The router, with its state applied, ready to nest or merge into the host's router
    /// whatever the host's state type `S`. Unknown paths under it answer JSON 404, wrong
    /// methods JSON 405. The host may add its own layers around it. It serves its own
    /// description at [`OPENAPI_PATH`] (see [`ChatApi::openapi`]) and the health probes
    /// `/healthz` and `/readyz`.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        self.build().0
    }

    /// The OpenAPI 3.1 description of the router this builder makes: every route it serves
    /// (the auth routes only with [`ChatApi::with_auth_routes`]), with parameters, bodies and
    /// their examples, answers, and the security schemes; the `/ws` frames are described in
    /// text. Paths are relative to where the router is nested. Generated from the handlers
    /// while the routes are registered, so the two cannot drift; the router serves the same
    /// description at [`OPENAPI_PATH`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore};
    /// use chatcore_axum::{ChatApi, SessionAuthenticator, SessionConfig};
    ///
    /// let store = Arc::new(MemoryStore::new());
    /// let chat = ChatService::new(store.clone(), Arc::new(LocalNotifier::default()), ChatConfig::default());
    /// let auth = SessionAuthenticator::new(store, SessionConfig::default()).expect("valid settings");
    /// let description = ChatApi::new(chat, auth.clone()).with_auth_routes(auth).openapi();
    /// assert!(description.paths.paths.contains_key("/api/v1/message/"));
    /// println!("{}", description.to_pretty_json().expect("JSON"));
    /// ```
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        self.clone().build::<()>().1
    }

    /// The router and its description, made together: each handler is registered with the
    /// description its `#[utoipa::path]` attribute generates.
    fn build<S: Clone + Send + Sync + 'static>(self) -> (Router<S>, utoipa::openapi::OpenApi) {
        let body_limit = self.config.max_request_body;
        #[cfg(feature = "sessions")]
        let trusted_origins: Arc<[TrustedOrigin]> = self.config.trusted_origins.clone().into();
        #[cfg(feature = "sessions")]
        let chat = self.service.clone();
        let state = ApiState::new(self.service, self.authenticator, self.config, self.shutdown);
        let routes = openapi::group::<ApiState>();
        let routes = openapi::add(routes, routes!(rest::list_users));
        let routes = openapi::add(routes, routes!(rest::list_messages, rest::send_message));
        let routes = openapi::add(
            routes,
            routes!(rest::get_message, rest::edit_message, rest::delete_message),
        );
        let routes = openapi::add(routes, routes!(rest::export));
        let routes = openapi::add(routes, routes!(blocks::list_blocked));
        let routes = openapi::add(routes, routes!(blocks::block, blocks::unblock));
        let routes = openapi::add(routes, routes!(inbox::list_conversations));
        let routes = openapi::add(routes, routes!(inbox::mark_read));
        let routes = openapi::add(routes, routes!(inbox::current_session));
        let routes = openapi::add(routes, routes!(ws::upgrade));
        let routes = openapi::add(routes, routes!(health::healthz));
        let routes = openapi::add(routes, routes!(health::readyz));
        #[cfg_attr(not(any(feature = "sessions", feature = "ui")), allow(unused_mut))]
        let mut described: OpenApiRouter<S> =
            OpenApiRouter::with_openapi(openapi::base()).merge(routes.with_state(state));
        #[cfg(feature = "ui")]
        {
            described = described.merge(ui::routes());
        }
        #[cfg(feature = "sessions")]
        if let Some(sessions) = self.sessions {
            described = described.merge(session::routes(session::AuthState {
                auth: sessions,
                chat,
                trusted_origins,
            }));
        }
        // The description describes its own route too: that route's part joins before the
        // whole is rendered, once, for every request to come.
        let document = openapi::add(
            openapi::group::<openapi::RenderedDescription>(),
            routes!(openapi::document),
        );
        let mut description = described.get_openapi().clone();
        description.merge(document.get_openapi().clone());
        let rendered = openapi::RenderedDescription::new(&description);
        let (router, description) = described.merge(document.with_state(rendered)).split_for_parts();
        // One `Router::layer` call for both: each call wraps every route in another boxed
        // service, cloned for every request. Outermost first: a panic anywhere inside is a
        // JSON 500.
        let router = router
            .method_not_allowed_fallback(error::method_not_allowed)
            .fallback(error::unknown_path)
            .layer(
                tower::ServiceBuilder::new()
                    .layer(CatchPanicLayer::custom(error::panic_response))
                    .layer(DefaultBodyLimit::max(body_limit)),
            );
        (router, description)
    }
}

/// The chat router with the default [`ApiConfig`] and no auth routes: nest it with
/// `.nest("/chat", chatcore_axum::router(service, authenticator))`. Use [`ChatApi`] for
/// limits, the auth routes or a [`ShutdownHandle`].
pub fn router<S: Clone + Send + Sync + 'static>(
    service: ChatService,
    authenticator: impl Authenticator,
) -> Router<S> {
    ChatApi::new(service, authenticator).router()
}

/// Only the auth routes (`POST /api/v1/auth/register`, `/login`, `/logout`), for hosts
/// that mount them apart from the chat routes. It has no fallback of its own, so it merges
/// into a router that has one. `chat` is the service whose connections a logout closes.
/// Starts nothing: call [`SessionAuthenticator::start`]. Only with feature `sessions`.
#[cfg(feature = "sessions")]
pub fn auth_router<S: Clone + Send + Sync + 'static>(
    sessions: SessionAuthenticator,
    chat: ChatService,
    config: &ApiConfig,
) -> Router<S> {
    let (router, _) = session::routes(session::AuthState {
        auth: sessions,
        chat,
        trusted_origins: config.trusted_origins.clone().into(),
    })
    .split_for_parts();
    router
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_request_body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use axum::body::Body;
    use tower::ServiceExt;

    struct Buggy;

    #[async_trait]
    impl Authenticator for Buggy {
        async fn authenticate(&self, _: &http::request::Parts) -> chatcore::Result<Option<chatcore::User>> {
            panic!("a bug in the host's authenticator");
        }
    }

    #[tokio::test]
    async fn a_panic_is_a_json_500() {
        let chat = ChatService::new(
            Arc::new(chatcore::MemoryStore::new()),
            Arc::new(chatcore::LocalNotifier::default()),
            chatcore::ChatConfig::default(),
        );
        let app: Router = router(chat, Buggy);
        let request = http::Request::get("/api/v1/user/").body(Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 500);
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], br#"{"error":"internal error"}"#);
    }
}
