//! The hot path's HTTP client: HTTP/1.1 keep-alive connections driven by hyper directly.
//!
//! Measured on the 2-core machine against the server's `/_bench/echo`, reqwest cost the client
//! about 18 µs of CPU per request, more than the server spent answering it, so the client
//! would have set the ceiling. Each sender here owns its few connections (one in closed loop,
//! as many as it has sends in flight in open loop), so there is no shared pool, no URL parsing
//! and no redirect or cookie machinery per request. `https://` URLs fall back to reqwest.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONTENT_LENGTH, HOST, HeaderName};
use http::{HeaderValue, Method, Request, StatusCode};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// A request body sent in one piece.
#[derive(Debug)]
pub struct OneShot(Option<Bytes>);

impl Body for OneShot {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// Where and how to POST: parsed once per phase.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port` to connect to.
    pub authority: String,
    /// The `Host` header.
    pub host: HeaderValue,
    /// Path (and query) of the endpoint.
    pub path: http::Uri,
}

impl Endpoint {
    /// The endpoint of a plain-HTTP URL; `None` for anything else (https goes through reqwest).
    pub fn from_url(url: &str) -> Option<Self> {
        let uri: http::Uri = url.parse().ok()?;
        if uri.scheme_str() != Some("http") {
            return None;
        }
        let authority = uri.authority()?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).parse().ok()?;
        Some(Self {
            authority: format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80)),
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            path,
        })
    }
}

/// A sender's own keep-alive connections.
#[derive(Debug)]
pub struct ConnectionPool {
    endpoint: Endpoint,
    idle: Mutex<Vec<SendRequest<OneShot>>>,
}

impl ConnectionPool {
    /// An empty pool for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn take_idle(&self) -> Option<SendRequest<OneShot>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn put_back(&self, conn: SendRequest<OneShot>) {
        if !conn.is_closed() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        }
    }

    async fn connect(&self) -> Result<SendRequest<OneShot>, String> {
        let stream = tokio::net::TcpStream::connect(&self.endpoint.authority)
            .await
            .map_err(|e| format!("connect {}: {e}", self.endpoint.authority))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {}: {e}", self.endpoint.authority))?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes the connection.
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// POSTs `body` with `headers`; returns the status and the whole answer.
    pub async fn post(
        &self,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        let exchange = async {
            let mut conn = match self.take_idle() {
                Some(conn) => conn,
                None => self.connect().await?,
            };
            conn.ready()
                .await
                .map_err(|e| format!("connection to {}: {e}", self.endpoint.authority))?;
            let mut request = Request::builder()
                .method(Method::POST)
                .uri(self.endpoint.path.clone())
                .header(HOST, self.endpoint.host.clone())
                .header(CONTENT_LENGTH, body.len());
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let request = request
                .body(OneShot(Some(body)))
                .map_err(|e| format!("request: {e}"))?;
            let response = conn
                .send_request(request)
                .await
                .map_err(|e| format!("POST {}: {e}", self.endpoint.path))?;
            let status = response.status();
            let mut incoming = response.into_body();
            let mut answer = Vec::new();
            while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut incoming).poll_frame(cx)).await {
                let frame =
                    frame.map_err(|e| format!("reading the answer of POST {}: {e}", self.endpoint.path))?;
                if let Ok(data) = frame.into_data() {
                    answer.extend_from_slice(&data);
                }
            }
            self.put_back(conn);
            Ok((status, answer))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "POST {}: no answer within {timeout:?}",
                self.endpoint.path
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::from_url("http://127.0.0.1:8000/chat/api/v1/message/?x=1").unwrap();
        assert_eq!(e.authority, "127.0.0.1:8000");
        assert_eq!(e.host, "127.0.0.1:8000");
        assert_eq!(e.path, "/chat/api/v1/message/?x=1");
        let e = Endpoint::from_url("http://localhost/_bench/echo").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.host.to_str().unwrap()),
            ("localhost:80", "localhost")
        );
        let e = Endpoint::from_url("http://[::1]:9/ws").unwrap();
        assert_eq!(e.authority, "[::1]:9");
        assert!(Endpoint::from_url("https://127.0.0.1/x").is_none());
    }

    #[test]
    fn one_shot_body_reports_its_size() {
        let body = OneShot(Some(Bytes::from_static(b"abc")));
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
    }
}
