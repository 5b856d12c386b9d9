//! [`ApiConfig`]: the limits and timings of the HTTP and WebSocket layer.

use std::time::Duration;

use crate::TrustedOrigin;

/// Limits and timings of the router. A plain struct: start from `ApiConfig::default()` and
/// change what you need. Message-level limits and rules (body length, page sizes, catch-up
/// bound, the send rate limit) live in [`chatcore::ChatConfig`], because the service enforces
/// them for every front end.
///
/// ```
/// use std::time::Duration;
/// let config = chatcore_axum::ApiConfig {
///     ws_ping_interval: Duration::from_secs(10),
///     ..Default::default()
/// };
/// assert_eq!(config.max_request_body, 64 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Largest request body in bytes; a larger one is answered 413. Default 64 KiB.
    pub max_request_body: usize,
    /// How often an open WebSocket is pinged. Default 30 s.
    pub ws_ping_interval: Duration,
    /// A WebSocket from which nothing (not even a pong) arrived for more than
    /// `ws_ping_interval + ws_ping_timeout` is dead, and dropped at the next ping. Default 10 s.
    pub ws_ping_timeout: Duration,
    /// Longest time the client may take to accept one frame; a client that reads slower is
    /// dropped. A client that reads slowly but within this time falls behind instead: the
    /// notifier's per-connection queue (see [`chatcore::LocalNotifier::new`]) fills up, the
    /// events that did not fit are dropped and the connection reads them from storage, a page
    /// at a time, once it gets to them. So the server's memory per slow client stays bounded
    /// by that queue and one catch-up page. Default 10 s.
    pub ws_send_timeout: Duration,
    /// How long a live event that arrived before one it follows (two senders' notifications
    /// crossed) waits for it before the connection reads the missing events from storage.
    /// Usually the missing one arrives within microseconds; this bounds the wait when its
    /// notification was lost. Default 50 ms.
    pub ws_gap_wait: Duration,
    /// Initial read buffer of each WebSocket, in bytes. Small, because every idle connection
    /// keeps it and clients send next to nothing (pongs); it grows for a larger frame.
    /// Default 256.
    pub ws_read_buffer: usize,
    /// Largest message a WebSocket client may send, in bytes (clients' frames are ignored,
    /// but a larger one closes the socket with code 1009). Default 64 KiB.
    pub ws_max_incoming_message: usize,
    /// Whether a WebSocket that has a notification to write first lets the other tasks that
    /// are ready to run go once (a deferred yield), so that the notifications of the other
    /// sends answered by the same group commit join it in one socket write. Measured with the
    /// load generator (BENCHMARKS.md): socket writes per message fall from 3.5 to 2.6 at 32
    /// concurrent senders and from 1.6 to 0.7 at 256, worth 3-5% more sends/s; but when the
    /// server is saturated a gathering frame waits behind the requests already queued, and
    /// notification p99 rose from 3.5-3.9 ms to 16-17 ms at 32 senders flat out (at 1,000
    /// sends/s it is the same either way). Default `false`: each notification is written as
    /// soon as it is queued (with whatever else is queued by then).
    pub ws_gather_frames: bool,
    /// Origins (like `https://app.example.com`) accepted besides the request's own `Host` for
    /// cookie-authenticated POSTs and WebSocket upgrades, compared by scheme, host and port.
    /// Built with [`TrustedOrigin::parse`], so a bad entry fails where the setting is read.
    /// Default: none.
    pub trusted_origins: Vec<TrustedOrigin>,
    /// Longest `/readyz` waits for the store's trivial read
    /// ([`chatcore::Store::check_ready`]) before it answers 503: shorter than an
    /// orchestrator's probe timeout, so a hung database fails the probe with a reason
    /// instead of timing it out. Default 2 s.
    pub readiness_timeout: Duration,
    /// How often each open WebSocket opened with a login session asks the authenticator
    /// whether that session is still live ([`crate::Authenticator::session_is_live`], a
    /// storage read, no cache), and closes with 4001 when it is not. A logout, an account
    /// deletion or a revocation closes the connections at once on every process the notifier
    /// reaches (Redis, PostgreSQL, or this one); this bounds how long a connection outlives
    /// its session when the notifier does not reach its process (an operator command run
    /// against a SQLite file by another process, several processes on the local notifier).
    /// Costs one storage read per connection per interval. Zero turns it off. Default 60 s.
    pub ws_session_recheck: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_request_body: 64 * 1024,
            ws_ping_interval: Duration::from_secs(30),
            ws_ping_timeout: Duration::from_secs(10),
            ws_send_timeout: Duration::from_secs(10),
            ws_gap_wait: Duration::from_millis(50),
            ws_read_buffer: 256,
            ws_max_incoming_message: 64 * 1024,
            ws_gather_frames: false,
            trusted_origins: Vec::new(),
            readiness_timeout: Duration::from_secs(2),
            ws_session_recheck: Duration::from_secs(60),
        }
    }
}
