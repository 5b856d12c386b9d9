//! Request ids: every request gets an `x-request-id` (the client's when it sent a sane one,
//! else a fresh UUID), its spans can carry it, and its answer echoes it, through
//! tower-http's request-id layers.

use axum::Router;
use axum::extract::Request;
use http::{HeaderName, HeaderValue};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};

/// The header that carries a request's id, in and out.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client, in bytes; a longer one is replaced.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Gives every request of `router` an id and echoes it as `x-request-id` on the answer.
/// An id the client sent is kept when it is sane (one header, 1 to
/// [`MAX_REQUEST_ID_BYTES`] bytes of letters, digits and `-_.:/+=@`), so a proxy's or a
/// client's id follows the request through the logs; anything else (too long, control
/// characters, spaces, several headers) is replaced by a fresh UUID, so what reaches the
/// logs is always one short, printable token.
///
/// Apply it after the layers that should see the id, such as a `TraceLayer` whose span reads
/// it with [`request_id`]: layers added later wrap the ones added earlier.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_http::trace::TraceLayer;
///
/// let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(
///     TraceLayer::new_for_http().make_span_with(|request: &axum::extract::Request| {
///         let id = chatcore_axum::request_id(request).unwrap_or("-");
///         tracing::info_span!("request", request_id = %id, path = %request.uri().path())
///     }),
/// );
/// let app = chatcore_axum::with_request_ids(app);
/// ```
pub fn with_request_ids<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unfit_request_id))
}

/// The id [`with_request_ids`] gave `request`, for a span or a log line.
pub fn request_id<B>(request: &http::Request<B>) -> Option<&str> {
    request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
}

/// Removes a client's `x-request-id` that is not fit for the logs, so a fresh one is made.
async fn drop_unfit_request_id(mut request: Request) -> Request {
    let fit = {
        let mut values = request.headers().get_all(&REQUEST_ID_HEADER).iter();
        match (values.next(), values.next()) {
            (None, _) => true,
            (Some(value), None) => is_fit(value),
            (Some(_), Some(_)) => false,
        }
    };
    if !fit {
        request.headers_mut().remove(&REQUEST_ID_HEADER);
    }
    request
}

fn is_fit(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=MAX_REQUEST_ID_BYTES).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_ids() {
        for fit in [
            "abc",
            "0b4e1c3a-6a4f-4d8e-9f0e-2b8c2f7d9a11",
            "trace:1/2+3=@x",
            "a".repeat(128).as_str(),
        ] {
            assert!(is_fit(&HeaderValue::from_str(fit).unwrap()), "{fit:?}");
        }
        for unfit in ["", "a b", "a\tb", "a\"b", "é", "a".repeat(129).as_str()] {
            let value = HeaderValue::from_bytes(unfit.as_bytes()).unwrap();
            assert!(!is_fit(&value), "{unfit:?}");
        }
    }
}
