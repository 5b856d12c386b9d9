//! Request ids: every request gets an `x-request-id` (the client's when it sent a sane one,
//! else a fresh one in the shape of a UUID), its spans can carry it, and its answer echoes it:
//! [`RequestIdLayer`], one layer doing what tower-http's three request-id layers did, at the
//! cost of one counter increment and one small allocation per fresh id.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use axum::Router;
use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};
use tower_http::request_id::RequestId;

/// The header that carries a request's id, in and out.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a client, in bytes; a longer one is replaced.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Gives every request of `router` an id and echoes it as `x-request-id` on the answer
/// ([`RequestIdLayer`] on every route). An id the client sent is kept when it is sane (one
/// header, 1 to [`MAX_REQUEST_ID_BYTES`] bytes of letters, digits and `-_.:/+=@`), so a
/// proxy's or a client's id follows the request through the logs; anything else (too long,
/// control characters, spaces, several headers) is replaced by a fresh id, so what reaches
/// the logs is always one short, printable token.
///
/// Apply it after the layers that should see the id, such as a `TraceLayer` whose span reads
/// it with [`request_id`]: layers added later wrap the ones added earlier. Each
/// `Router::layer` call wraps every route in one more boxed service, cloned for every
/// request; a host with several layers of its own saves that by putting [`RequestIdLayer`]
/// in the same `tower::ServiceBuilder` as them, in one `Router::layer` call.
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
    router.layer(RequestIdLayer::new())
}

/// The id [`with_request_ids`] gave `request`, for a span or a log line.
pub fn request_id<B>(request: &http::Request<B>) -> Option<&str> {
    request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
}

/// The layer behind [`with_request_ids`]: the request's `x-request-id` (the client's when
/// sane, else a fresh id) in its headers and its extensions (where [`request_id`] finds it),
/// and the same id on the answer unless the inner service set one.
///
/// A fresh id has the shape of a UUID (36 characters, version 8, "custom"): 72 random bits
/// drawn once per process, then a 48-bit request number scrambled by a fixed odd
/// multiplier, so ids are unique within a process (for 2^48 requests) and across processes
/// as random ones are, without a call for randomness per request, and they do not tell a
/// client how many requests the server has seen.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower::ServiceBuilder;
/// use tower_http::trace::TraceLayer;
///
/// let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(
///     // Outermost first: the id is there when the span is made.
///     ServiceBuilder::new()
///         .layer(chatcore_axum::RequestIdLayer::new())
///         .layer(TraceLayer::new_for_http()),
/// );
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl RequestIdLayer {
    /// The layer (it has no settings).
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIds<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIds { inner }
    }
}

/// The service [`RequestIdLayer`] wraps around each route.
#[derive(Debug, Clone)]
pub struct RequestIds<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> Service<Request<RequestBody>> for RequestIds<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let id = match kept_id(&request) {
            Some(id) => id,
            None => {
                let id = fresh_id();
                // Replaces whatever unfit value(s) the client sent.
                request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
                id
            }
        };
        request.extensions_mut().insert(RequestId::new(id.clone()));
        RequestIdFuture {
            inner: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`RequestIds`] service: the inner one's, with the id.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, ResponseBody, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take()
            && !response.headers().contains_key(REQUEST_ID_HEADER)
        {
            response.headers_mut().insert(REQUEST_ID_HEADER, id);
        }
        Poll::Ready(Ok(response))
    }
}

impl<S> std::fmt::Debug for RequestIdFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestIdFuture").finish_non_exhaustive()
    }
}

/// The client's `x-request-id` when it is fit for the logs: exactly one header, sane.
fn kept_id<B>(request: &Request<B>) -> Option<HeaderValue> {
    let mut values = request.headers().get_all(&REQUEST_ID_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(value), None) if is_fit(value) => Some(value.clone()),
        _ => None,
    }
}

fn is_fit(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=MAX_REQUEST_ID_BYTES).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// The process's random part of every fresh id: `xxxxxxxx-xxxx-8xxx-yxxx-` (y: the RFC 9562
/// variant, `8`-`b`), from one random UUID.
static ID_PREFIX: LazyLock<[u8; 24]> = LazyLock::new(|| {
    let random = uuid::Uuid::new_v4().hyphenated().to_string();
    let mut prefix = [0u8; 24];
    prefix.copy_from_slice(&random.as_bytes()[..24]);
    prefix[14] = b'8'; // version 8: a layout of our own
    prefix
});

/// Requests given a fresh id so far in this process.
static ID_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Odd, so multiplying by it permutes the 48-bit request numbers: unique, not sequential.
const ID_SCRAMBLE: u64 = 0x5DEE_CE66_D1CB;

/// A fresh request id: [`ID_PREFIX`] and the next request number, scrambled, in 12 hex digits.
fn fresh_id() -> HeaderValue {
    let number = ID_COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(ID_SCRAMBLE)
        & 0xFFFF_FFFF_FFFF;
    let mut id = [0u8; 36];
    id[..24].copy_from_slice(&*ID_PREFIX);
    for (i, digit) in id[24..].iter_mut().enumerate() {
        let nibble = (number >> (4 * (11 - i))) & 0xF;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    HeaderValue::from_bytes(&id).expect("hex digits and hyphens are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_uuid_shaped_and_distinct() {
        let ids: Vec<String> = (0..1000)
            .map(|_| fresh_id().to_str().unwrap().to_owned())
            .collect();
        for id in &ids {
            let parsed = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 8, "{id}");
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert!(is_fit(&HeaderValue::from_str(id).unwrap()), "{id}");
            assert_eq!(id[..24], ids[0][..24], "one random prefix per process");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

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
