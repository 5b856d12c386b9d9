//! # chat-server
//!
//! The standalone chatcore server: the REST API and `/ws` notifications of `chatcore-axum`, the
//! account routes, and a web UI at `/`, on embedded SQLite (default, no other service needed),
//! MySQL or PostgreSQL, with notifications carried between several server processes by Redis
//! or by PostgreSQL `LISTEN`/`NOTIFY` (`--notify`, see [`ServerOptions::notify`]).
//!
//! ```text
//! cargo run --release -p chat-server                  # http://127.0.0.1:8000, SQLite file chat.db
//! cargo run --release -p chat-server -- --help        # every option and its default
//! ```
//!
//! # Layout
//! - `main.rs`: parses the command line, sets up logging, dispatches subcommands.
//! - `options.rs`: every flag and environment variable.
//! - `storage.rs`: opening the SQLite, MySQL or PostgreSQL store as an `Arc<dyn chatcore::Backend>` (the
//!   only place that tells them apart), and migrating it.
//! - `web.rs`: the application router: the page, chat API (with the UI's files), bench endpoint, request spans.
//! - `metrics.rs`: the Prometheus recorder, the HTTP metrics layer and `/metrics`.
//! - `hooks/`: webhooks (`--webhook-url`, over the event feed) and the HTTP send policy
//!   (`--policy-url`), with their signatures.
//! - `operator.rs`: the operator commands' work, done by the command on its own database or
//!   by the running server; `control.rs`: the control socket through which a command asks
//!   the server that holds a SQLite file (server and client).
//! - `lib.rs`: [`run`], which serves until a shutdown future resolves, then shuts down in order.
//! - `assets/index.html`: the page at `/`, chatcore-axum's `<chatcore-app>` element full-screen.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod control;
pub mod hooks;
pub mod metrics;
pub mod operator;
pub mod options;
pub mod storage;
pub mod web;

use std::future::Future;
use std::sync::Arc;

use chatcore::{Backend, ChatConfig, ChatService, LocalNotifier, Notifier};
use chatcore_axum::{ApiConfig, ChatApi, SessionAuthenticator};
use chatcore_postgres::{PgNotifier, PgNotifierConfig};
use chatcore_redis::{RedisConfig, RedisNotifier};
use tokio::net::TcpListener;

use options::NotifierChoice;
pub use options::{Cli, Command, ServerOptions};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A flag or environment variable is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The store or the notifier failed.
    #[error(transparent)]
    Chat(#[from] chatcore::Error),
    /// Binding or serving failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An operator command named a user who does not exist.
    #[error("no user named {0:?}: check the name (`chat-server list-users` lists them)")]
    NoSuchUser(String),
    /// The control socket could not be opened, or a command could not run through it.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// The database could not be opened: where (the URL without its password) and what to
    /// try, with the backend's error as the cause.
    #[error("cannot open the database {url} ({hint})")]
    Database {
        /// `--database` without its password.
        url: String,
        /// What the operator may do about it.
        hint: &'static str,
        /// The backend's error.
        #[source]
        source: chatcore::Error,
    },
}

/// The service, authenticator and API configured from `options` over an open `backend`.
pub struct App {
    /// The message center.
    pub chat: ChatService,
    /// Accounts and sessions.
    pub sessions: SessionAuthenticator,
    /// The HTTP layer's limits.
    pub api_config: ApiConfig,
    /// The HTTP client of the hooks (policy and webhooks share its connection pool).
    pub hooks_client: reqwest::Client,
}

impl App {
    /// Builds the service and the authenticator over `backend`, connecting the notification
    /// transport that [`ServerOptions::notifier_choice`] picks. Starts nothing: [`run`] starts
    /// the authenticator's background work.
    pub async fn new(options: &ServerOptions, backend: &Arc<dyn Backend>) -> Result<Self, ServerError> {
        let notifier: Arc<dyn Notifier> = match options.notifier_choice()? {
            // A Redis that is down at start is an outage like one at run time: the server
            // serves, `/ws` answers 503 until Redis answers, then it connects.
            NotifierChoice::Redis(url) => Arc::new(
                RedisNotifier::connect_in_background(RedisConfig {
                    url,
                    channel_prefix: options.redis_prefix.clone(),
                    queue_capacity: options.ws_queue as usize,
                    ..RedisConfig::default()
                })
                .await?,
            ),
            NotifierChoice::Postgres(url) => Arc::new(
                PgNotifier::connect(
                    &url,
                    PgNotifierConfig {
                        channel: options.notify_channel.clone(),
                        queue_capacity: options.ws_queue as usize,
                        ..PgNotifierConfig::default()
                    },
                )
                .await?,
            ),
            NotifierChoice::Local => Arc::new(LocalNotifier::new(options.ws_queue as usize)),
        };
        let chat_config = ChatConfig {
            max_body_chars: options.max_message_chars,
            default_page_size: options.page_size,
            max_page_size: options.max_page_size,
            max_page_offset: options.max_page_offset,
            catch_up_limit: options.catch_up_limit,
            catch_up_page: options.catch_up_page,
            catch_up_page_bytes: usize::try_from(options.catch_up_page_bytes).unwrap_or(usize::MAX),
            catch_up_reads_per_user: options.catch_up_reads_per_user as usize,
            max_connections_per_user: options.max_sockets_per_user as usize,
            send_burst: options.send_burst,
            send_rate_per_sec: options.send_rate_per_sec,
            default_user_page: options.user_page_size,
            max_user_page: options.user_page_size,
            default_inbox_page: options.inbox_page,
            max_inbox_page: options.max_inbox_page,
            presence: options.presence == crate::options::Switch::On,
            presence_grace: std::time::Duration::from_millis(options.presence_grace_ms),
            presence_interval: std::time::Duration::from_millis(options.presence_interval_ms),
            presence_timeout: std::time::Duration::from_millis(options.presence_timeout_ms),
            typing_burst: options.typing_burst,
            typing_rate_per_sec: options.typing_rate_per_sec,
            typing_expiry: std::time::Duration::from_millis(options.typing_expiry_ms),
            policy_deadline: options.hooks.policy_deadline(),
            policy_fallback: options.hooks.policy_fallback.into(),
            edit_window: options.edit_window.map(std::time::Duration::from_secs),
            ..ChatConfig::default()
        };
        // A zero from a flag stops the start here, never taken for 1 by the service.
        chat_config.validate()?;
        // Checked before anything runs: a webhook without a secret stops the start.
        options.hooks.webhook_endpoints()?;
        let hooks_client = hooks::http_client()?;
        let mut chat = ChatService::new(backend.clone(), notifier, chat_config);
        if let Some(url) = &options.hooks.policy_url {
            chat = chat.with_send_policy(Arc::new(hooks::policy::HttpPolicy::new(
                hooks_client.clone(),
                url.clone(),
                options.hooks.signer()?,
            )));
        }
        if options.bench_allow_all_policy {
            chat = chat.with_send_policy(Arc::new(hooks::policy::AllowAll));
        }
        let sessions = SessionAuthenticator::new(backend.clone(), options.session_config())?;
        let api_config = ApiConfig {
            max_request_body: options.max_request_bytes,
            ws_ping_interval: std::time::Duration::from_secs(options.ws_ping_secs.max(1)),
            ws_ping_timeout: std::time::Duration::from_secs(options.ws_ping_timeout_secs.max(1)),
            ws_send_timeout: std::time::Duration::from_millis(options.ws_send_timeout_ms),
            trusted_origins: options.trusted_origin.clone(),
            ws_gather_frames: options.ws_gather_frames,
            ws_gap_wait: std::time::Duration::from_millis(options.ws_gap_wait_ms),
            readiness_timeout: std::time::Duration::from_millis(options.readiness_timeout_ms),
            ws_session_recheck: std::time::Duration::from_secs(options.ws_session_recheck_secs),
            ..ApiConfig::default()
        };
        Ok(Self {
            chat,
            sessions,
            api_config,
            hooks_client,
        })
    }
}

/// Opens and migrates the store, serves on `listener` (under the connection limits and
/// timeouts of [`ServerOptions::serve_config`]) until `shutdown` resolves, then stops
/// accepting, sends close frames to every WebSocket, gives in-flight requests the shutdown
/// grace period, stops the webhook deliveries, closes what is left, and flushes and closes
/// the store. `metrics` (from
/// [`metrics::setup`], before this) says where `/metrics` is served, if anywhere. `announce`
/// runs once the store is open and the control socket (if any) is up, just before serving:
/// from then on the API and the operator commands work.
pub async fn run(
    options: ServerOptions,
    listener: TcpListener,
    metrics: metrics::Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
    announce: impl FnOnce() -> std::io::Result<()>,
) -> Result<(), ServerError> {
    let serve_config = options.serve_config();
    serve_config.validate().map_err(ServerError::Config)?;
    options.hooks.webhook_endpoints()?;
    let control_socket = options.control_socket()?;
    let backend = storage::open(&options).await?;
    storage::migrate(&*backend).await?;
    let app = App::new(&options, &backend).await?;
    // The session cache's revocations and the expired-session sweeper.
    app.sessions.start(&app.chat).await?;
    // Opened while holding the database, so a socket file found there is a stopped server's.
    let control = match &control_socket {
        Some(path) => {
            let database = match storage::DatabaseUrl::parse(&options.database)? {
                storage::DatabaseUrl::SqliteFile(file) => Some(file),
                _ => None,
            };
            let ops = operator::AccountOps::new(&app, &backend);
            Some(control::ControlServer::start(path, ops, database.as_deref()).await?)
        }
        None => None,
    };
    // Presence hears the other servers from the start, not from the first WebSocket.
    app.chat.start_presence();
    // Off the send path: each endpoint follows the event feed on its own task.
    let webhooks = hooks::webhook::Webhooks::start(&options.hooks, backend.clone(), &app.hooks_client)?;
    let api = ChatApi::new(app.chat.clone(), app.sessions.clone())
        .with_config(app.api_config.clone())
        .with_auth_routes(app.sessions.clone());
    let handle = api.shutdown_handle();
    let router = web::router(api, options.bench_endpoints, metrics.http_layer());
    let (router, metrics_server) = metrics::wire(router, metrics);
    let metrics_server = metrics_server.map(|(listener, router)| {
        tokio::spawn(chatcore_axum::serve_with(
            listener,
            router,
            handle.clone(),
            serve_config.clone(),
            chatcore_axum::EdgeCounters::default(),
        ))
    });
    let trigger = handle.clone();
    let drain = std::time::Duration::from_secs(options.shutdown_drain_secs);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!(
            drain_secs = drain.as_secs(),
            "shutting down: /readyz answers 503, then WebSockets close and requests finish"
        );
        trigger.shutdown_after_drain(drain).await;
    });
    announce()?;
    tracing::info!(address = %listener.local_addr()?, database = %redacted(&options.database), notify = ?options.notifier_choice()?.kind(), "serving");
    let served = chatcore_axum::serve_with(
        listener,
        router,
        handle,
        serve_config,
        chatcore_axum::EdgeCounters::default(),
    )
    .await;
    let metrics_served = match metrics_server {
        Some(server) => server
            .await
            .unwrap_or_else(|error| Err(std::io::Error::other(error))),
        None => Ok(()),
    };
    // The commands in progress finish before the store closes under them.
    let control_served = match control {
        Some(control) => {
            control
                .stop(std::time::Duration::from_secs(options.shutdown_grace_secs))
                .await
        }
        None => Ok(()),
    };
    webhooks.stop().await;
    let closed = backend.close().await;
    served?;
    metrics_served?;
    control_served?;
    closed?;
    tracing::info!("stopped");
    Ok(())
}

/// The OpenAPI description of the API the server serves (`chat-server openapi`, and
/// `/api/v1/openapi.json`): the chat router with its auth routes. Built over an in-memory
/// store, since the description does not depend on the database.
pub fn openapi_description() -> Result<String, ServerError> {
    let store = Arc::new(chatcore::MemoryStore::new());
    let chat = ChatService::new(
        store.clone(),
        Arc::new(LocalNotifier::default()),
        ChatConfig::default(),
    );
    let sessions = SessionAuthenticator::new(store, chatcore_axum::SessionConfig::default())?;
    let description = ChatApi::new(chat, sessions.clone())
        .with_auth_routes(sessions)
        .openapi();
    let mut json = description
        .to_pretty_json()
        .map_err(|error| ServerError::Config(format!("rendering the OpenAPI description: {error}")))?;
    json.push('\n');
    Ok(json)
}

/// The URL without its password, for logs and error messages.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled, so a signal that arrives while the server is still
/// starting shuts it down gracefully instead of killing it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::error!(%error, "cannot listen for {name}");
                None
            }
        };
        let interrupt = listen(SignalKind::interrupt(), "SIGINT");
        let terminate = listen(SignalKind::terminate(), "SIGTERM");
        async move {
            let wait = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            super::redacted("mysql://root:secret@db:3306/chat"),
            "mysql://root:***@db:3306/chat"
        );
        assert_eq!(super::redacted("sqlite://chat.db"), "sqlite://chat.db");
    }
}

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The metrics guide's example (bring your own recorder), compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/metrics.md")]
pub struct MetricsDocDoctests;
