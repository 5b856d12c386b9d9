//! The health probes: `GET /healthz` (the process answers) and `GET /readyz` (this router can
//! serve: not draining for a shutdown, the notification transport connected, the store
//! answering a trivial read within [`crate::ApiConfig::readiness_timeout`]).
//!
//! They belong to the router, not to the standalone server, because readiness is about what
//! the router needs (its `ChatService`'s store and notifier, its `ShutdownHandle`): a host
//! that nests the router under `/chat` probes `/chat/readyz` and learns whether the chat can
//! serve, whatever else the host serves.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::state::ApiState;

/// The answer of a probe that passed.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub(crate) struct HealthBody {
    /// `ok` for `/healthz`, `ready` for `/readyz`.
    status: &'static str,
}

/// Liveness probe.
///
/// Liveness: the process answers HTTP. Touches no backend, so a database outage never gets
/// the process restarted; use `/readyz` to route traffic.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process answers", body = HealthBody, example = json!({"status": "ok"})),
        (status = "default", description = "Any other error", body = ErrorBody)
    )
)]
pub(crate) async fn healthz() -> Response {
    Json(HealthBody { status: "ok" }).into_response()
}

/// Readiness probe.
///
/// Readiness: 200 when this server can serve: it is not shutting down, the notification
/// transport is connected (Redis, PostgreSQL LISTEN) and the store answered a trivial read
/// within the readiness timeout (2 s by default). Otherwise 503 with `Retry-After` and what
/// is missing. From the moment a shutdown starts (SIGTERM on the standalone server) it
/// answers 503 while the server still accepts connections, so a load balancer stops sending
/// new traffic before the listener closes.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = HealthBody, example = json!({"status": "ready"})),
        (status = 503, description = "Not ready: shutting down, notifications disconnected, or storage slow or down",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before probing again")),
            example = json!({"error": "storage did not answer within 2000 ms"})),
        (status = "default", description = "Any other error", body = ErrorBody)
    )
)]
pub(crate) async fn readyz(State(state): State<ApiState>) -> Result<Response, ApiError> {
    if state.shutdown().is_draining() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let timeout = state.config().readiness_timeout;
    match tokio::time::timeout(timeout, state.service().check_ready()).await {
        Ok(Ok(())) => Ok(Json(HealthBody { status: "ready" }).into_response()),
        Ok(Err(error)) => {
            // Mapped (and logged) as for any request; whatever the failure, a probe that
            // failed is "not ready", never a 500 an orchestrator would read as a crash.
            let error = ApiError::from(error);
            if error.status() == http::StatusCode::SERVICE_UNAVAILABLE {
                Err(error)
            } else {
                Err(ApiError::unavailable("storage failed a trivial read"))
            }
        }
        Err(_) => Err(ApiError::unavailable(format!(
            "storage did not answer within {} ms",
            timeout.as_millis()
        ))),
    }
}
