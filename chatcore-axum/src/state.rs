//! The router's shared state and the [`ShutdownHandle`].

use std::sync::Arc;
use std::time::Duration;

use chatcore::ChatService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::ApiConfig;
use crate::metrics::WsMetrics;

/// What every handler shares. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub(crate) struct ApiState(Arc<Inner>);

struct Inner {
    service: ChatService,
    authenticator: Arc<dyn Authenticator>,
    config: ApiConfig,
    shutdown: ShutdownHandle,
    metrics: WsMetrics,
}

impl ApiState {
    pub(crate) fn new(
        service: ChatService,
        authenticator: Arc<dyn Authenticator>,
        config: ApiConfig,
        shutdown: ShutdownHandle,
    ) -> Self {
        Self(Arc::new(Inner {
            service,
            authenticator,
            config,
            shutdown,
            // Registered when the router is built, under the host's recorder.
            metrics: WsMetrics::register(),
        }))
    }

    pub(crate) fn service(&self) -> &ChatService {
        &self.0.service
    }

    pub(crate) fn authenticator(&self) -> &dyn Authenticator {
        &*self.0.authenticator
    }

    pub(crate) fn config(&self) -> &ApiConfig {
        &self.0.config
    }

    pub(crate) fn shutdown(&self) -> &ShutdownHandle {
        &self.0.shutdown
    }

    pub(crate) fn metrics(&self) -> &WsMetrics {
        &self.0.metrics
    }
}

/// Closes every open WebSocket of a router with a close frame (code 1001, "going away")
/// when triggered, and lets the host wait until they are closed. Trigger it before (or with)
/// the graceful shutdown of `axum::serve`; [`crate::serve`] does both.
///
/// ```no_run
/// # async fn demo(chat: chatcore::ChatService, auth: chatcore_axum::SessionAuthenticator) -> std::io::Result<()> {
/// let api = chatcore_axum::ChatApi::new(chat, auth);
/// let shutdown = api.shutdown_handle();
/// let app = axum::Router::new().nest("/chat", api.router());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
/// let signal = shutdown.clone();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     signal.shutdown();
/// });
/// axum::serve(listener, app)
///     .with_graceful_shutdown(shutdown.token().clone().cancelled_owned())
///     .await?;
/// shutdown.closed(std::time::Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ShutdownHandle {
    token: CancellationToken,
    /// Cancelled when the shutdown is announced ([`ShutdownHandle::drain`]): `/readyz`
    /// answers 503 from then on, while everything else still serves.
    draining: CancellationToken,
    sockets: TaskTracker,
}

impl ShutdownHandle {
    /// A handle that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tells every WebSocket to send its close frame and end; new upgrades are refused (503),
    /// and `/readyz` answers 503 (if [`ShutdownHandle::drain`] has not already made it).
    pub fn shutdown(&self) {
        self.draining.cancel();
        self.sockets.close();
        self.token.cancel();
    }

    /// Announces a shutdown without starting it: `/readyz` answers 503 from now on, so a
    /// load balancer or an orchestrator takes this server out of rotation, while every
    /// other route, the open WebSockets and the listener go on serving. Call
    /// [`ShutdownHandle::shutdown`] after the drain period (or use
    /// [`ShutdownHandle::shutdown_after_drain`]).
    ///
    /// ```
    /// let handle = chatcore_axum::ShutdownHandle::new();
    /// handle.drain();
    /// assert!(handle.is_draining() && !handle.is_shutting_down());
    /// handle.shutdown();
    /// assert!(handle.is_shutting_down());
    /// ```
    pub fn drain(&self) {
        self.draining.cancel();
    }

    /// Whether [`ShutdownHandle::drain`] or [`ShutdownHandle::shutdown`] was called: the
    /// router is no longer ready for new traffic.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// [`ShutdownHandle::drain`], then waits `drain` (while the server still accepts and
    /// serves, so that whoever routes traffic here has time to see `/readyz` fail), then
    /// [`ShutdownHandle::shutdown`]. With a zero `drain` the order still holds: `/readyz`
    /// fails before the listener closes.
    pub async fn shutdown_after_drain(&self, drain: Duration) {
        self.drain();
        if !drain.is_zero() {
            tokio::time::sleep(drain).await;
        }
        self.shutdown();
    }

    /// Whether [`ShutdownHandle::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The cancellation token that [`ShutdownHandle::shutdown`] cancels, e.g. for
    /// `axum::serve(..).with_graceful_shutdown(handle.token().cancelled_owned())`.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// How many WebSockets are open now.
    pub fn open_sockets(&self) -> usize {
        self.sockets.len()
    }

    /// Waits until every WebSocket has closed, at most `timeout`. Returns whether all did.
    pub async fn closed(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.sockets.wait()).await.is_ok()
    }

    pub(crate) fn socket_guard(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.sockets.token()
    }
}
