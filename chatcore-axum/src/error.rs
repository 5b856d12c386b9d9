//! [`ApiError`]: every error answer of the API, and the one mapping from [`chatcore::Error`]
//! to a status code.

use std::borrow::Cow;
use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// `Retry-After` (seconds) sent with a 503 when a backend is unavailable.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

/// An error answer: a status and the JSON body `{"error": "..."}`, with `Retry-After` on 429
/// and 503 and `WWW-Authenticate: Bearer` on 401.
///
/// Handlers return `Result<_, ApiError>`; a [`chatcore::Error`] converts with `?`. The message
/// is for a human and never carries internals: 5xx details go to the log (`tracing`), not to
/// the client.
///
/// ```
/// use axum::response::IntoResponse;
/// let response = chatcore_axum::ApiError::from(chatcore::Error::invalid("body is empty")).into_response();
/// assert_eq!(response.status(), 400);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: Cow<'static, str>,
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl ApiError {
    /// An error with `status` and a message for a human.
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401 Unauthorized (answered with `WWW-Authenticate: Bearer`).
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication required")
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 429 Too Many Requests with `Retry-After` (whole seconds, at least 1).
    pub fn too_many_requests(retry_after: Duration) -> Self {
        Self {
            retry_after: Some(ceil_secs(retry_after)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too many requests, slow down")
        }
    }

    /// 503 Service Unavailable with `Retry-After`.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            retry_after: Some(UNAVAILABLE_RETRY_AFTER_SECS),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Maps one of axum's extractor rejections (JSON, form, query, path, WebSocket upgrade,
    /// body) to an API error with the same meaning, in our JSON shape. 422 becomes 400: the
    /// contract has one status for bad input.
    pub fn from_rejection(status: StatusCode, text: String) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(status, "request body is too large"),
            StatusCode::UNPROCESSABLE_ENTITY => Self::bad_request(text),
            status if status.is_server_error() => {
                tracing::error!(%status, rejection = %text, "request rejected by the server");
                Self::new(status, "internal error")
            }
            status => Self::new(status, text),
        }
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    secs.max(1)
}

/// The one place that decides what each [`chatcore::Error`] means over HTTP. 5xx errors are
/// logged here with their source chain; the client sees only a short generic message.
impl From<chatcore::Error> for ApiError {
    fn from(error: chatcore::Error) -> Self {
        use chatcore::Error as E;
        match error {
            E::Invalid(message) => Self::bad_request(message),
            E::NotFound(entity) => Self::not_found(format!("{entity} not found")),
            E::Conflict(message) => Self::new(StatusCode::CONFLICT, message),
            E::Unprocessable(message) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, message),
            E::Rejected(rejection) => match rejection.kind {
                chatcore::RejectionKind::Forbidden => Self::forbidden(rejection.reason),
                chatcore::RejectionKind::Unprocessable => {
                    Self::new(StatusCode::UNPROCESSABLE_ENTITY, rejection.reason)
                }
            },
            E::Forbidden(why) => Self::forbidden(why.to_string()),
            E::RateLimited { retry_after } => Self::too_many_requests(retry_after),
            E::Unavailable { what, ref source } => {
                tracing::warn!(what, error = %ErrorChain(source.as_ref()), "backend unavailable");
                Self {
                    retry_after: Some(UNAVAILABLE_RETRY_AFTER_SECS),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{what} is unavailable, retry later"),
                    )
                }
            }
            E::StorageFull(ref source) => {
                tracing::error!(error = %ErrorChain(source.as_ref()), "storage is full");
                Self {
                    retry_after: Some(UNAVAILABLE_RETRY_AFTER_SECS),
                    ..Self::new(StatusCode::INSUFFICIENT_STORAGE, "storage is full")
                }
            }
            other => {
                tracing::error!(error = %ErrorChain(&other), "internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

/// Displays an error and each of its sources, for the log.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { error: &self.message })).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

macro_rules! from_rejections {
    ($($rejection:ty),* $(,)?) => {$(
        impl From<$rejection> for ApiError {
            fn from(rejection: $rejection) -> Self {
                if body_timed_out(&rejection) {
                    return Self::new(StatusCode::REQUEST_TIMEOUT, "the request body came too slowly");
                }
                Self::from_rejection(rejection.status(), rejection.body_text())
            }
        }
    )*};
}

from_rejections!(
    axum::extract::rejection::JsonRejection,
    axum::extract::rejection::FormRejection,
    axum::extract::rejection::QueryRejection,
    axum::extract::rejection::BytesRejection,
    axum::extract::ws::rejection::WebSocketUpgradeRejection,
);

/// Whether reading the body failed because the client stopped sending it
/// ([`crate::ServeConfig::request_body_timeout`]).
fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if cause.is::<crate::serve::BodyTimedOut>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// JSON 404 for paths the router does not know.
pub(crate) async fn unknown_path() -> ApiError {
    ApiError::not_found("no such path")
}

/// JSON 405 for a method a known path does not take (axum adds the `Allow` header).
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// A JSON 500 for a handler that panicked (a bug); the panic message goes to the log.
pub(crate) fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "a request handler panicked");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_per_core_error() {
        use chatcore::{Entity, Error};
        let cases = [
            (Error::invalid("x"), 400),
            (Error::NotFound(Entity::User), 404),
            (Error::conflict("taken"), 409),
            (Error::Rejected(chatcore::Rejection::forbidden("paywall")), 403),
            (Error::Rejected(chatcore::Rejection::unprocessable("spam")), 422),
            (
                Error::RateLimited {
                    retry_after: Duration::from_millis(1500),
                },
                429,
            ),
            (Error::storage_unavailable("db down"), 503),
            (Error::bug("broken invariant"), 500),
        ];
        for (error, status) in cases {
            let api = ApiError::from(error);
            assert_eq!(api.status().as_u16(), status, "{api}");
        }
        let refused = ApiError::from(Error::Rejected(chatcore::Rejection::forbidden(
            "links are for subscribers",
        )));
        assert_eq!(refused.message(), "links are for subscribers");
        let hidden = ApiError::from(Error::internal("password=hunter2 in query", "boom"));
        assert_eq!(hidden.message(), "internal error");
        let limited = ApiError::from(Error::RateLimited {
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(limited.retry_after, Some(2));
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }
}
