//! [`serve_with`]: the server's edge. Connections are served one task each with hyper's HTTP/1
//! connection builder (with upgrades, for `/ws`), under limits that a public server needs:
//! how long a client may take to send a request head, to send its body, or to stay idle
//! between requests; how large a head may be; how many connections may be open, in all and
//! per client address; and how long a shutdown waits for in-flight requests.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::ShutdownHandle;

/// Limits and timeouts of the connections [`serve_with`] accepts. Start from
/// `ServeConfig::default()` (values a public server can run with) and change what you need;
/// [`ServeConfig::validate`] refuses a setting that would disable a limit by accident.
///
/// ```
/// use std::time::Duration;
/// let config = chatcore_axum::ServeConfig {
///     max_connections: 2_000,
///     ..Default::default()
/// };
/// assert!(config.validate().is_ok());
/// assert_eq!(config.header_read_timeout, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Longest a client may take to send a whole request head, from its first byte; a client
    /// still sending after it is disconnected without an answer (slowloris). Default 10 s.
    pub header_read_timeout: Duration,
    /// Longest a client may leave a request body without sending a byte; past it the request
    /// is answered 408. Default 10 s.
    pub request_body_timeout: Duration,
    /// Longest a connection may stay open with no request in progress (between keep-alive
    /// requests, or before the first one); then it is closed. WebSockets are not idle: they
    /// have their own pings. Default 60 s.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; a larger one is answered 431
    /// (414 when the request line alone is too long). At least 8,192. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Most headers in one request; more are answered 431. Default 64. Up to 100 (hyper's
    /// own limit) they are counted as hyper keeps them, after it folds repeated equal
    /// `Content-Length` lines into one, and trailers of a chunked body are held to hyper's
    /// 100; a value above 100 is given to hyper, which then holds every line and trailer to it.
    pub max_headers: usize,
    /// Most open connections (WebSockets included). A connection past it is accepted and
    /// closed at once, counted and logged, so the ones being served keep working. It is
    /// lowered at start to fit the process's descriptor limit minus
    /// [`ServeConfig::descriptor_reserve`]. Default 10,000.
    pub max_connections: usize,
    /// Most open connections from one client address (an IPv6 /64 counts as one); past it
    /// the new connection is closed at once. Default 256.
    pub max_connections_per_address: usize,
    /// File descriptors kept free for everything but client connections (database
    /// connections, files, logs): [`ServeConfig::max_connections`] is lowered so that
    /// connections alone never reach the descriptor limit. Default 256.
    pub descriptor_reserve: usize,
    /// After a shutdown is triggered, how long in-flight requests (and WebSocket close
    /// handshakes) may take before the connections still open are closed. Default 10 s.
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_connections: 10_000,
            max_connections_per_address: 256,
            descriptor_reserve: 256,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Smallest [`ServeConfig::max_header_bytes`]: hyper's smallest read buffer.
pub const MIN_HEADER_BYTES: usize = 8192;

impl ServeConfig {
    /// Checks every setting: a zero timeout or limit, or a head limit under
    /// [`MIN_HEADER_BYTES`], is an error naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        let durations = [
            ("header_read_timeout", self.header_read_timeout),
            ("request_body_timeout", self.request_body_timeout),
            ("idle_timeout", self.idle_timeout),
        ];
        for (name, value) in durations {
            if value.is_zero() {
                return Err(format!("{name} must be more than zero"));
            }
        }
        let counts = [
            ("max_headers", self.max_headers),
            ("max_connections", self.max_connections),
            ("max_connections_per_address", self.max_connections_per_address),
        ];
        for (name, value) in counts {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(format!("max_header_bytes must be at least {MIN_HEADER_BYTES}"));
        }
        Ok(())
    }

    /// [`ServeConfig::max_connections`] lowered to fit the process's soft descriptor limit
    /// (`RLIMIT_NOFILE`) minus [`ServeConfig::descriptor_reserve`].
    pub fn effective_max_connections(&self) -> usize {
        match descriptor_limits() {
            Some((soft, _)) => {
                let available = usize::try_from(soft).unwrap_or(usize::MAX);
                self.max_connections
                    .min(available.saturating_sub(self.descriptor_reserve).max(1))
            }
            None => self.max_connections,
        }
    }
}

/// The process's soft and hard descriptor limits, where the platform has them.
pub fn descriptor_limits() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        rlimit::getrlimit(rlimit::Resource::NOFILE).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the process's soft descriptor limit to its hard limit (a server's connections are
/// descriptors) and logs both. Returns the soft limit now in force. Call it once at start,
/// before [`serve_with`] reads the limit.
pub fn raise_descriptor_limit() -> io::Result<Option<u64>> {
    #[cfg(unix)]
    {
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
        let raised = rlimit::increase_nofile_limit(hard)?;
        tracing::info!(before = soft, soft = raised, hard, "file descriptor limit");
        Ok(Some(raised))
    }
    #[cfg(not(unix))]
    {
        Ok(None)
    }
}

/// What [`serve_with`] refused and closed, for logs and tests. Shared: clone freely.
#[derive(Debug, Clone, Default)]
pub struct EdgeCounters {
    inner: Arc<CounterValues>,
}

#[derive(Debug, Default)]
struct CounterValues {
    refused_total: AtomicU64,
    refused_per_address: AtomicU64,
    timed_out: AtomicU64,
    open: AtomicUsize,
}

impl EdgeCounters {
    /// Connections closed at once because [`ServeConfig::max_connections`] were open.
    pub fn refused_over_total(&self) -> u64 {
        self.inner.refused_total.load(Ordering::Relaxed)
    }

    /// Connections closed at once because their address had
    /// [`ServeConfig::max_connections_per_address`] open.
    pub fn refused_over_address(&self) -> u64 {
        self.inner.refused_per_address.load(Ordering::Relaxed)
    }

    /// Connections closed for a header read timeout or an idle timeout.
    pub fn timed_out(&self) -> u64 {
        self.inner.timed_out.load(Ordering::Relaxed)
    }

    /// Connections open now (WebSockets included).
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }
}

/// Serves `app` on `listener` with the default [`ServeConfig`] until `shutdown` is
/// triggered: see [`serve_with`].
pub async fn serve(listener: TcpListener, app: Router, shutdown: ShutdownHandle) -> io::Result<()> {
    serve_with(
        listener,
        app,
        shutdown,
        ServeConfig::default(),
        EdgeCounters::default(),
    )
    .await
}

/// Serves `app` on `listener` under the limits of `config` until `shutdown` is triggered;
/// `counters` tells what was refused. Then it stops accepting, sends close frames to the
/// WebSockets of the routers sharing that handle (1001), lets in-flight requests finish
/// for at most [`ServeConfig::shutdown_grace`], closes every connection still open, and
/// returns. Requests carry axum's `ConnectInfo<SocketAddr>` (the peer address the login
/// and registration limits count).
///
/// Errors that hyper answers itself, before a request reaches the router (a malformed
/// request 400, a request line too long 414, a head too large 431), are answered in the
/// API's JSON shape `{"error": "..."}` too, then the connection is closed.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: ShutdownHandle,
    config: ServeConfig,
    counters: EdgeCounters,
) -> io::Result<()> {
    config
        .validate()
        .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))?;
    let max_connections = config.effective_max_connections();
    if max_connections < config.max_connections {
        tracing::warn!(
            configured = config.max_connections,
            effective = max_connections,
            "max connections lowered to fit the file descriptor limit"
        );
    }
    let edge = Arc::new(Edge {
        permits: Arc::new(Semaphore::new(max_connections)),
        per_address: Mutex::new(HashMap::new()),
        config: config.clone(),
        counters,
        refusals: RefusalLog::new(),
    });
    // Turns every handler the router holds without a state (the host's own routes, the
    // fallbacks) into a finished route now, with its layers applied, as axum's own
    // `into_make_service` does: a `Router<()>` called as it is does that again for every
    // request it routes to such a handler (a boxed route and a box per layer each time).
    let app = app.with_state::<()>(());
    let tracker = TaskTracker::new();
    let token = shutdown.token().clone();
    let mut accept_errors = 0u32;
    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_errors = 0;
                    accepted
                }
                Err(error) => {
                    // Out of descriptors (or another transient error): back off instead of
                    // spinning; the connections being served go on.
                    accept_errors = accept_errors.saturating_add(1);
                    if accept_errors == 1 {
                        tracing::warn!(%error, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(accept_errors.min(100)))).await;
                    continue;
                }
            },
        };
        let Some(guard) = edge.admit(peer.ip()) else {
            drop(stream); // closed at once: the client sees a reset or an EOF, not a hang
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let token = token.clone();
        let edge = edge.clone();
        tracker.spawn(async move { serve_connection(stream, peer, guard, app, token, edge).await });
    }
    drop(listener);
    tracker.close();
    // Each connection task ends within the grace period by itself; this bound only guards
    // against a bug.
    if tokio::time::timeout(config.shutdown_grace + Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "connections still open after the shutdown grace period"
        );
    }
    if !shutdown.closed(config.shutdown_grace).await {
        tracing::warn!(
            open = shutdown.open_sockets(),
            "websockets still open after the shutdown grace period"
        );
    }
    Ok(())
}

/// Shared by the accept loop and the connection tasks.
struct Edge {
    permits: Arc<Semaphore>,
    /// Open connections per client address: touched once per connection, never per request.
    per_address: Mutex<HashMap<IpAddr, usize>>,
    config: ServeConfig,
    counters: EdgeCounters,
    refusals: RefusalLog,
}

impl Edge {
    /// A guard holding the connection's place in both limits, or `None` (counted, logged) when
    /// either is full.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Option<ConnectionGuard> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.counters.inner.refused_total.fetch_add(1, Ordering::Relaxed);
            self.refusals.refused(address, "max connections reached");
            return None;
        };
        let key = address_key(address);
        {
            let mut open = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            let count = open.entry(key).or_insert(0);
            if *count >= self.config.max_connections_per_address {
                drop(open);
                self.counters
                    .inner
                    .refused_per_address
                    .fetch_add(1, Ordering::Relaxed);
                self.refusals
                    .refused(address, "max connections per address reached");
                return None;
            }
            *count += 1;
        }
        self.counters.inner.open.fetch_add(1, Ordering::Relaxed);
        Some(ConnectionGuard {
            _permit: permit,
            key,
            edge: self.clone(),
        })
    }
}

/// IPv4 addresses as they are; IPv6 by their /64 (one client usually holds a whole /64).
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let segments = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                    0,
                    0,
                    0,
                    0,
                ))
            }
        },
    }
}

/// A connection's place in the limits, released when the connection's socket is dropped
/// (it lives in the socket wrapper, so an upgraded WebSocket keeps it).
struct ConnectionGuard {
    _permit: OwnedSemaphorePermit,
    key: IpAddr,
    edge: Arc<Edge>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.edge.counters.inner.open.fetch_sub(1, Ordering::Relaxed);
        let mut open = self.edge.per_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Logs refused connections at most once per interval, with how many since the last line.
struct RefusalLog {
    since_last: AtomicU64,
    next_log_ms: AtomicU64,
    start: Instant,
}

const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl RefusalLog {
    fn new() -> Self {
        Self {
            since_last: AtomicU64::new(0),
            next_log_ms: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    fn refused(&self, address: IpAddr, why: &'static str) {
        self.since_last.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_log_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(REFUSAL_LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if now >= next
            && self
                .next_log_ms
                .compare_exchange(next, now + interval, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let refused = self.since_last.swap(0, Ordering::Relaxed);
            tracing::warn!(
                refused,
                last_address = %address,
                reason = why,
                "refusing connections (logged at most every 10 s)"
            );
        }
    }
}

/// Where a connection is between requests, shared by its socket wrapper, its service and its
/// task. Milliseconds count from the connection's start. Written with relaxed atomics on every
/// request and read only when the connection's task wakes to check its timeouts, so a request
/// costs no wake-up and no timer of its own.
struct Activity {
    start: Instant,
    /// Requests whose answer is not complete yet.
    busy: AtomicUsize,
    /// When the connection last became idle (start, or the end of its last answer), or when
    /// the first byte of a new request head arrived.
    since_ms: AtomicU64,
    /// Whether bytes of a new request head arrived since the connection became idle.
    reading_head: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            busy: AtomicUsize::new(0),
            since_ms: AtomicU64::new(0),
            reading_head: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn bytes_read(&self) {
        if self.busy.load(Ordering::Relaxed) == 0 && !self.reading_head.load(Ordering::Relaxed) {
            self.since_ms.store(self.now_ms(), Ordering::Relaxed);
            self.reading_head.store(true, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.reading_head.store(false, Ordering::Relaxed);
    }

    fn request_finished(&self) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.reading_head.store(false, Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// When the connection must close if nothing changes, or `None` while a request is in
    /// progress.
    fn deadline(&self, config: &ServeConfig) -> Option<Instant> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = self.start + Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        Some(if self.reading_head.load(Ordering::Relaxed) {
            since + config.header_read_timeout
        } else {
            since + config.idle_timeout
        })
    }

    /// What the connection's task does when it wakes at `now`: close the connection
    /// (`None`), or sleep until the returned instant and look again. That instant is never
    /// later than a deadline that can arise meanwhile, so nothing has to wake the task early:
    /// a request in progress is looked at again `min(header_read_timeout, idle_timeout)`
    /// from now (an idle or head deadline that starts after now ends later than that); an idle
    /// connection at its idle deadline or `header_read_timeout` from now, whichever is sooner
    /// (a head that starts after now is late no sooner than that); a head being read at its
    /// deadline.
    fn next_check(&self, config: &ServeConfig, now: Instant) -> Option<Instant> {
        match self.deadline(config) {
            None => Some(now + config.header_read_timeout.min(config.idle_timeout)),
            Some(deadline) if deadline <= now => None,
            Some(deadline) => Some(deadline.min(now + config.header_read_timeout)),
        }
    }
}

/// Marks a request finished when its answer future completes or is dropped.
struct RequestInFlight(Arc<Activity>);

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    guard: ConnectionGuard,
    app: Router,
    token: tokio_util::sync::CancellationToken,
    edge: Arc<Edge>,
) {
    let config = &edge.config;
    let activity = Arc::new(Activity::new());
    let io = EdgeStream {
        stream,
        activity: activity.clone(),
        rewrite: None,
        _guard: guard,
    };
    let body_timeout = config.request_body_timeout;
    let max_headers = config.max_headers;
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let in_flight = RequestInFlight(service_activity.clone());
        service_activity.request_started();
        // Up to hyper's own limit, counted here (see `max_headers` below).
        let too_many_headers = request.headers().len() > max_headers;
        let mut request = request.map(|body| Body::new(BodyTimeout::new(body_timeout, body)));
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = app.clone();
        async move {
            let response = if too_many_headers {
                Ok(too_many_headers_answer())
            } else {
                router.call(request).await
            };
            drop(in_flight);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // hyper's own head timer would run whenever it waits for a head, idle time included,
        // and cost every request a timer of its own; `Activity` and the loop below enforce
        // both timeouts instead, with one timer per connection.
        .header_read_timeout(None)
        .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BYTES));
    // hyper parses into a fixed array of its default size (100) unless given a limit, and
    // then builds and copies two arrays of that many entries per request (about 1,400
    // instructions, BENCHMARKS.md "The HTTP edge"): a limit up to 100 is counted in the
    // service instead, the same 431.
    if config.max_headers > HYPER_MAX_HEADERS {
        builder.max_headers(config.max_headers);
    }
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    // One timer and one cancellation wait for the connection's whole life, both polled only
    // when the task wakes anyway: the timer is moved (`reset`), never made again, and a
    // request wakes nothing but hyper's own work.
    let check =
        tokio::time::sleep_until(Instant::now() + config.header_read_timeout.min(config.idle_timeout));
    tokio::pin!(check);
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            // The connection first: it is what woke the task nearly every time.
            biased;
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                return;
            }
            () = &mut cancelled, if !shutting_down => {
                // Finish the request in progress, then close; an idle connection closes now.
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
                check.as_mut().reset(Instant::now() + config.shutdown_grace);
            }
            () = &mut check => {
                if shutting_down {
                    tracing::debug!(%peer, "closing a connection still open after the shutdown grace period");
                    return;
                }
                match activity.next_check(config, Instant::now()) {
                    Some(next) => check.as_mut().reset(next),
                    None => {
                        edge.counters.inner.timed_out.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "closing a connection: header read or idle timeout");
                        return;
                    }
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyTimedOut`] when the client leaves it for
    /// [`ServeConfig::request_body_timeout`] without sending a byte. The timer starts only when
    /// a read has to wait: a body that is already there (most are, in the head's own packet)
    /// costs no timer at all.
    struct BodyTimeout<B> {
        timeout: Duration,
        #[pin]
        wait: Option<tokio::time::Sleep>,
        #[pin]
        body: B,
    }
}

impl<B> BodyTimeout<B> {
    fn new(timeout: Duration, body: B) -> Self {
        Self {
            timeout,
            wait: None,
            body,
        }
    }
}

impl<B> hyper::body::Body for BodyTimeout<B>
where
    B: hyper::body::Body,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            // Something came: the next wait starts afresh.
            this.wait.set(None);
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if this.wait.is_none() {
            this.wait.set(Some(tokio::time::sleep(*this.timeout)));
        }
        if let Some(wait) = this.wait.as_pin_mut() {
            ready!(wait.poll(cx));
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body stopped arriving for longer than [`ServeConfig::request_body_timeout`]
/// (the router answers 408).
#[derive(Debug)]
pub(crate) struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body came too slowly")
    }
}

impl std::error::Error for BodyTimedOut {}

/// The client's socket as hyper sees it: it tells [`Activity`] when bytes arrive, holds the
/// connection's place in the limits, and rewrites hyper's own bodiless error answers into the
/// API's JSON errors.
struct EdgeStream {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// The JSON answer being written in place of hyper's, how much of it is written, and the
    /// length of hyper's buffer to report once it is all written.
    rewrite: Option<(Vec<u8>, usize, usize)>,
    _guard: ConnectionGuard,
}

impl AsyncRead for EdgeStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for EdgeStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none()
            && let Some(json) = json_for_hyper_error(buf)
        {
            this.rewrite = Some((json, 0, buf.len()));
        }
        if let Some((json, written, reported)) = this.rewrite.as_mut() {
            while *written < json.len() {
                let n = ready!(Pin::new(&mut this.stream).poll_write(cx, &json[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            let reported = *reported;
            this.rewrite = None;
            return Poll::Ready(Ok(reported));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's own error answers are a head alone, in one buffer.
        if self.rewrite.is_some() || (bufs.len() == 1 && json_for_hyper_error(&bufs[0]).is_some()) {
            return self.poll_write(cx, &bufs[0]);
        }
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The 431's message, whether hyper or [`too_many_headers_answer`] refuses the head.
const HEAD_TOO_LARGE: &str =
    "the request head (request line and headers) is too large, or has too many headers";

/// The most headers hyper parses when no limit is set.
const HYPER_MAX_HEADERS: usize = 100;

/// The answer to a request with more than [`ServeConfig::max_headers`] headers (up to hyper's
/// own limit, past which hyper refuses it: see [`json_for_hyper_error`]): the same 431, and
/// the connection closes as it does for hyper's.
fn too_many_headers_answer() -> http::Response<Body> {
    let body = format!(r#"{{"error":"{HEAD_TOO_LARGE}"}}"#);
    let mut response = http::Response::new(Body::from(body));
    *response.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}

/// The JSON answer replacing `head` when it is one of the bodiless error answers hyper writes
/// itself for a request it could not parse (the router never answers an error without a
/// body, so these can only come from hyper).
fn json_for_hyper_error(head: &[u8]) -> Option<Vec<u8>> {
    const ANSWERS: [(&[u8], u16, &str, &str); 3] = [
        (b"HTTP/1.1 400 ", 400, "Bad Request", "malformed request"),
        (
            b"HTTP/1.1 414 ",
            414,
            "URI Too Long",
            "the request line is too long",
        ),
        (
            b"HTTP/1.1 431 ",
            431,
            "Request Header Fields Too Large",
            HEAD_TOO_LARGE,
        ),
    ];
    if head.len() < 13 || !head.starts_with(b"HTTP/1.1 4") || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let (_, status, reason, message) = ANSWERS.iter().find(|(prefix, ..)| head.starts_with(prefix))?;
    let lower = head.to_ascii_lowercase();
    if !lower.windows(19).any(|w| w == b"content-length: 0\r\n") {
        return None;
    }
    let body = format!(r#"{{"error":"{message}"}}"#);
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_error_heads_become_json() {
        let json = json_for_hyper_error(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
        )
        .expect("rewritten");
        let text = String::from_utf8(json).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.contains("content-type: application/json\r\n"), "{text}");
        assert!(text.ends_with(r#"has too many headers"}"#), "{text}");
        // A router answer (it has a body) is left alone.
        assert!(json_for_hyper_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 20\r\n\r\n").is_none());
        assert!(json_for_hyper_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }

    #[test]
    fn validation_names_the_setting() {
        let zero = ServeConfig {
            idle_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert!(zero.validate().unwrap_err().contains("idle_timeout"));
        let small = ServeConfig {
            max_header_bytes: 1000,
            ..Default::default()
        };
        assert!(small.validate().unwrap_err().contains("max_header_bytes"));
        assert!(ServeConfig::default().validate().is_ok());
    }

    #[test]
    fn timeouts_are_checked_before_any_deadline_can_pass() {
        let config = ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let activity = Activity::new();
        let start = activity.start;
        let at = |secs: u64| start + Duration::from_secs(secs);
        // Idle since the start: looked at again before a head starting now could be late.
        assert_eq!(activity.next_check(&config, at(0)), Some(at(10)));
        // Idle for 55 s: the idle deadline (60 s) comes first.
        assert_eq!(activity.next_check(&config, at(55)), Some(at(60)));
        assert_eq!(activity.next_check(&config, at(60)), None, "idle timeout");
        // A head started at 30 s: checked at its deadline, closed past it.
        activity.since_ms.store(30_000, Ordering::Relaxed);
        activity.reading_head.store(true, Ordering::Relaxed);
        assert_eq!(activity.next_check(&config, at(35)), Some(at(40)));
        assert_eq!(activity.next_check(&config, at(40)), None, "header timeout");
        // A request in progress: never closed, looked at again min(header, idle) later.
        activity.request_started();
        assert_eq!(activity.next_check(&config, at(100)), Some(at(110)));
    }

    #[test]
    fn ipv6_counts_by_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
