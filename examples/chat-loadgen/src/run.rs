//! The load run: sockets, senders, the grace period, and matching frames to sends.
//!
//! Nothing is shared on the hot path: each sender keeps its own list of `(id, start)` and its
//! own histogram, each connection keeps its own list of `(id, arrival)`; only a few relaxed
//! counters (for the progress bar and the end of the grace period) are shared. Frames are
//! matched to sends by id after the run, so a frame that arrives before its POST has answered
//! needs no special care.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONTENT_TYPE, HeaderName, ORIGIN};
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::auth::{Session, sessions};
use crate::cli::{Args, AuthMode, HttpClient};
use crate::frame::{Frame, parse_created_id, parse_frame};
use crate::progress::Progress;
use crate::report::{
    IdleReport, Latency, NotificationReport, PhaseReport, Report, SweepReport, SweepStep, utc_timestamp,
};
use crate::transport::{ConnectionPool, Endpoint};
use crate::{Error, Result};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Counters shared by all tasks, for progress and for knowing when every frame is in.
#[derive(Debug, Default)]
struct Live {
    sent: AtomicU64,
    expected_frames: AtomicU64,
    frames: AtomicU64,
    dropped: AtomicU64,
}

/// One successful send, as its sender recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendRecord {
    /// The message id the server answered with.
    pub id: i64,
    /// When the POST started (scheduled start in open loop), nanoseconds after the epoch.
    pub start_ns: u64,
    /// Index of the sending user.
    pub sender: u32,
    /// Index of the recipient.
    pub recipient: u32,
}

/// What one connection saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionLog {
    /// Index of the connection's user.
    pub user: u32,
    /// `(message id, arrival in nanoseconds after the epoch)` for each notification frame.
    pub frames: Vec<(i64, u64)>,
    /// `{"resync": true}` frames.
    pub resyncs: u64,
    /// Frames that were not notifications.
    pub other: u64,
    /// Whether the connection closed or failed before it was told to stop.
    pub dropped: bool,
}

/// Matches frames to sends: every connection of the sender and of the recipient must get each
/// message exactly once. Sorts each connection's frames by id in place (stable, so the first
/// arrival of an id stays first). No I/O, so the accounting is unit-tested on its own.
pub fn tally(
    records: &[SendRecord],
    connections: &mut [ConnectionLog],
    conns_per_user: &[u32],
) -> NotificationReport {
    let by_id: HashMap<i64, &SendRecord> = records.iter().map(|r| (r.id, r)).collect();
    let conns = |user: u32| u64::from(conns_per_user.get(user as usize).copied().unwrap_or(0));
    let expected = records
        .iter()
        .map(|r| {
            if r.sender == r.recipient {
                conns(r.sender)
            } else {
                conns(r.sender) + conns(r.recipient)
            }
        })
        .sum();
    let mut report = NotificationReport {
        expected,
        ..Default::default()
    };
    let mut latency = Latency::new();
    for connection in connections {
        report.resyncs += connection.resyncs;
        report.other_frames += connection.other;
        report.connections_dropped += u64::from(connection.dropped);
        // Stable: the first arrival of an id stays first.
        connection.frames.sort_by_key(|&(id, _)| id);
        let mut previous = None;
        for &(id, arrival_ns) in &connection.frames {
            if previous == Some(id) {
                report.duplicated += 1;
                continue;
            }
            previous = Some(id);
            match by_id.get(&id) {
                Some(send) if send.sender == connection.user || send.recipient == connection.user => {
                    report.received += 1;
                    if send.recipient == connection.user {
                        latency.record(Duration::from_nanos(arrival_ns.saturating_sub(send.start_ns)));
                    }
                }
                _ => report.unexpected += 1,
            }
        }
    }
    report.lost = report.expected.saturating_sub(report.received);
    report.latency = latency.summary();
    report
}

/// Which user sender `k` sends as, and to whom its `i`-th message goes: the other users in
/// turn (itself only when there is a single user).
///
/// ```
/// use chat_loadgen::run::pair;
/// assert_eq!(pair(0, 0, 3), (0, 1));
/// assert_eq!(pair(0, 1, 3), (0, 2));
/// assert_eq!(pair(0, 2, 3), (0, 1));
/// assert_eq!(pair(4, 0, 3), (1, 0));
/// assert_eq!(pair(2, 7, 1), (0, 0));
/// ```
pub fn pair(sender_index: usize, i: u64, users: usize) -> (u32, u32) {
    let users = users.max(1) as u64;
    let me = sender_index as u64 % users;
    let to = if users == 1 {
        me
    } else {
        // Senders sharing a user start at different recipients.
        let turn = (i + sender_index as u64 / users) % (users - 1);
        (me + 1 + turn) % users
    };
    (me as u32, to as u32)
}

/// When the sends stop.
#[derive(Debug)]
enum Plan {
    Until(Duration),
    Count(AtomicU64),
}

impl Plan {
    fn from_args(args: &Args) -> Self {
        match args.count {
            Some(count) => Plan::Count(AtomicU64::new(count)),
            None => Plan::Until(Duration::from_secs_f64(args.duration)),
        }
    }

    /// Takes one send from the budget; `false` when it is spent.
    fn claim(&self, elapsed: Duration) -> bool {
        match self {
            Plan::Until(end) => elapsed < *end,
            Plan::Count(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    recipient: &'a str,
    body: &'a str,
}

/// What every sender of one phase shares (read-only).
struct SendContext {
    http: reqwest::Client,
    /// Parsed once: reqwest would parse a string on every request.
    url: reqwest::Url,
    /// The hot path's own HTTP/1.1 connections (plain HTTP); `None` sends through reqwest.
    endpoint: Option<Endpoint>,
    timeout: Duration,
    /// Per user: every header of a send (content type, origin, credentials).
    headers: Vec<Vec<(HeaderName, HeaderValue)>>,
    names: Vec<String>,
    /// `true` for the message endpoint (the answer must carry an id).
    expect_id: bool,
    conns_per_user: Vec<u32>,
    body_size: usize,
    epoch: Instant,
    live: Arc<Live>,
}

/// One sender's results.
#[derive(Default)]
struct SenderLog {
    records: Vec<SendRecord>,
    latency: Latency,
    errors: u64,
    first_error: Option<String>,
    late: u64,
    start_lag: Latency,
    last_done_ns: u64,
}

struct Done {
    sender: u32,
    recipient: u32,
    start: Instant,
    finished: Instant,
    result: Result<Option<i64>, String>,
}

impl SenderLog {
    fn absorb(&mut self, ctx: &SendContext, done: Done) {
        let since_epoch = |at: Instant| {
            u64::try_from(at.saturating_duration_since(ctx.epoch).as_nanos()).unwrap_or(u64::MAX)
        };
        self.last_done_ns = self.last_done_ns.max(since_epoch(done.finished));
        match done.result {
            Ok(id) => {
                self.latency
                    .record(done.finished.saturating_duration_since(done.start));
                ctx.live.sent.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = id {
                    let conns = |u: u32| u64::from(ctx.conns_per_user[u as usize]);
                    let expected = if done.sender == done.recipient {
                        conns(done.sender)
                    } else {
                        conns(done.sender) + conns(done.recipient)
                    };
                    ctx.live.expected_frames.fetch_add(expected, Ordering::Relaxed);
                    self.records.push(SendRecord {
                        id,
                        start_ns: since_epoch(done.start),
                        sender: done.sender,
                        recipient: done.recipient,
                    });
                }
            }
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }
}

fn body_text(sender: u32, i: u64, size: usize) -> String {
    let mut text = format!("lg {sender}.{i} ");
    while text.len() < size {
        text.push('x');
    }
    text
}

async fn send_one(
    ctx: &SendContext,
    pool: Option<&ConnectionPool>,
    sender: u32,
    recipient: u32,
    i: u64,
    start: Instant,
) -> Done {
    let text = body_text(sender, i, ctx.body_size);
    let body = serde_json::to_vec(&Body {
        recipient: &ctx.names[recipient as usize],
        body: &text,
    })
    .unwrap_or_default();
    let headers = &ctx.headers[sender as usize];
    let result = async {
        let (status, answer) = match pool {
            Some(pool) => pool.post(headers, body.into(), ctx.timeout).await?,
            None => {
                let mut request = ctx.http.post(ctx.url.clone());
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let response = request
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("POST {}: {e}", ctx.url))?;
                let status = response.status();
                let answer = response
                    .bytes()
                    .await
                    .map_err(|e| format!("POST {}: {e}", ctx.url))?;
                (status, answer.to_vec())
            }
        };
        if !status.is_success() {
            let hint = if status == StatusCode::TOO_MANY_REQUESTS {
                " (run the server with --send-rate-per-sec 0)"
            } else {
                ""
            };
            return Err(format!(
                "POST {}: status {status}{hint}: {}",
                ctx.url,
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ));
        }
        if !ctx.expect_id {
            return Ok(None);
        }
        parse_created_id(&answer).map(Some).ok_or_else(|| {
            format!(
                "POST {}: answer without an id: {}",
                ctx.url,
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            )
        })
    }
    .await;
    Done {
        sender,
        recipient,
        start,
        finished: Instant::now(),
        result,
    }
}

/// Closed loop: the next send starts when the last one answered.
async fn closed_loop(ctx: &SendContext, plan: &Plan, k: usize) -> SenderLog {
    let mut log = SenderLog::default();
    let pool = ctx.endpoint.clone().map(ConnectionPool::new);
    let users = ctx.names.len();
    let mut i = 0;
    while plan.claim(ctx.epoch.elapsed()) {
        let (me, to) = pair(k, i, users);
        let done = send_one(ctx, pool.as_ref(), me, to, i, Instant::now()).await;
        log.absorb(ctx, done);
        i += 1;
    }
    log
}

/// Open loop: sends start on schedule (rate / senders each, phases staggered), up to `cap`
/// in flight; a send held back by the cap counts its latency from its scheduled start.
async fn open_loop(
    ctx: &SendContext,
    plan: &Plan,
    k: usize,
    senders: usize,
    rate: f64,
    cap: usize,
) -> SenderLog {
    let mut log = SenderLog::default();
    let pool = ctx.endpoint.clone().map(ConnectionPool::new);
    let users = ctx.names.len();
    let interval = senders as f64 / rate;
    let first = k as f64 / rate;
    let mut in_flight = FuturesUnordered::new();
    let mut i: u64 = 0;
    let mut held_back = false;
    loop {
        let due_offset = Duration::from_secs_f64(first + i as f64 * interval);
        if let Plan::Until(end) = plan
            && due_offset >= *end
        {
            break;
        }
        if in_flight.len() >= cap {
            held_back = true;
            if let Some(done) = in_flight.next().await {
                log.absorb(ctx, done);
            }
            continue;
        }
        let due = ctx.epoch + due_offset;
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => log.absorb(ctx, done),
            () = tokio::time::sleep_until(due.into()) => {
                if !plan.claim(due_offset) {
                    break;
                }
                let now = Instant::now();
                log.start_lag.record(now.saturating_duration_since(due));
                // Timer jitter is the client's, not the server's: measure from the actual
                // start. A send held back because earlier ones had not answered is the
                // server's doing: measure from the schedule (no coordinated omission).
                let start = if held_back && now > due {
                    log.late += 1;
                    due
                } else {
                    now
                };
                held_back = false;
                let (me, to) = pair(k, i, users);
                in_flight.push(send_one(ctx, pool.as_ref(), me, to, i, start));
                i += 1;
            }
        }
    }
    while let Some(done) = in_flight.next().await {
        log.absorb(ctx, done);
    }
    log
}

/// Runs one phase with all senders; returns its report and the successful sends.
async fn run_phase(
    ctx: Arc<SendContext>,
    args: &Args,
    progress: &Progress,
    label: &str,
) -> (PhaseReport, Vec<SendRecord>) {
    let plan = Arc::new(Plan::from_args(args));
    let senders = args.senders;
    let client_cpu_before = cpu_secs(std::process::id());
    let server_cpu_before = args.server_pid.and_then(cpu_secs);
    let cap = args.max_in_flight.div_ceil(senders).max(1);
    let bar = match args.count {
        Some(count) => progress.bar(label, count),
        None => progress.timer(label, args.duration),
    };
    let stop_bar = CancellationToken::new();
    let ticker = {
        let label = label.to_owned();
        let (bar, stop, live, epoch, counting) = (
            bar.clone(),
            stop_bar.clone(),
            ctx.live.clone(),
            ctx.epoch,
            args.count.is_some(),
        );
        let sent_before = ctx.live.sent.load(Ordering::Relaxed);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while !stop.is_cancelled() {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => break,
                }
                let sent = live.sent.load(Ordering::Relaxed) - sent_before;
                if counting {
                    bar.set_position(sent);
                } else {
                    bar.set_position(epoch.elapsed().as_millis() as u64);
                    bar.set_message(format!("{label}: {sent} sent"));
                }
            }
        })
    };
    let tasks: Vec<_> = (0..senders)
        .map(|k| {
            let (ctx, plan) = (ctx.clone(), plan.clone());
            let rate = args.rate;
            tokio::spawn(async move {
                match rate {
                    Some(rate) => open_loop(&ctx, &plan, k, senders, rate, cap).await,
                    None => closed_loop(&ctx, &plan, k).await,
                }
            })
        })
        .collect();
    let mut report = PhaseReport {
        path: ctx.url.path().to_owned(),
        offered_rate: args.rate,
        ..Default::default()
    };
    let mut latency = Latency::new();
    let mut start_lag = Latency::new();
    let mut records = Vec::new();
    let mut last_done_ns = 0;
    for task in tasks {
        match task.await {
            Ok(log) => {
                latency.merge(&log.latency);
                start_lag.merge(&log.start_lag);
                report.sent += log.latency.count();
                report.send_errors += log.errors;
                report.late_starts += log.late;
                if report.first_error.is_none() {
                    report.first_error = log.first_error;
                }
                last_done_ns = last_done_ns.max(log.last_done_ns);
                records.extend(log.records);
            }
            Err(join_error) => {
                report.send_errors += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("a sender failed: {join_error}"));
            }
        }
    }
    report.client_cpu_secs = client_cpu_before
        .zip(cpu_secs(std::process::id()))
        .map(|(before, after)| after - before);
    report.server_cpu_secs = server_cpu_before
        .zip(args.server_pid.and_then(cpu_secs))
        .map(|(before, after)| after - before);
    stop_bar.cancel();
    let _ = ticker.await;
    bar.finish_and_clear();
    report.elapsed_secs = Duration::from_nanos(last_done_ns).as_secs_f64();
    report.sends_per_sec = if report.elapsed_secs > 0.0 {
        report.sent as f64 / report.elapsed_secs
    } else {
        0.0
    };
    report.send_latency = latency.summary();
    report.start_lag = args.rate.map(|_| start_lag.summary());
    (report, records)
}

/// The HTTP client: HTTP/1.1 keep-alive with an idle pool as large as the concurrency.
pub fn http_client(args: &Args) -> Result<reqwest::Client> {
    let concurrency = match args.rate {
        Some(_) => args.max_in_flight,
        None => args.senders,
    };
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(concurrency.max(args.setup_concurrency) + 8)
        .pool_idle_timeout(Duration::from_secs(90))
        .timeout(args.request_timeout())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::setup("building the HTTP client".into(), e))
}

fn origin(args: &Args) -> HeaderValue {
    // The origin is scheme://host[:port], without the path prefix.
    let base = args.base_url();
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    HeaderValue::from_str(&base[..end]).unwrap_or_else(|_| HeaderValue::from_static("null"))
}

/// Opens one WebSocket for `session`.
async fn connect(args: &Args, session: &Session) -> Result<Ws, String> {
    let url = match args.auth {
        // `since=0` replays anything sent between the upgrade and the server's subscription;
        // the users are fresh, so nothing older exists.
        AuthMode::Token => format!("{}?since=0", args.ws_url()),
        AuthMode::Original => args.ws_url(),
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    for (name, value) in session.headers() {
        request.headers_mut().insert(name, value);
    }
    request.headers_mut().insert(ORIGIN, origin(args));
    // Small buffers: frames are small and an idle-connection run holds thousands of sockets.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let handshake = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(args.request_timeout(), handshake).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("WebSocket {url} as {}: {e}", session.username)),
        Err(_) => Err(format!(
            "WebSocket {url} as {}: handshake timed out",
            session.username
        )),
    }
}

/// Opens `count` sockets spread round-robin over `sessions`; returns `(user, socket)` for
/// those that opened and the errors of those that did not.
async fn open_sockets(
    args: &Args,
    sessions: &[Session],
    count: usize,
    progress: &Progress,
) -> (Vec<(u32, Ws)>, Vec<String>) {
    let bar = progress.bar("opening sockets", count as u64);
    let results: Vec<_> = futures_util::stream::iter(0..count)
        .map(|j| {
            let user = j % sessions.len();
            let bar = bar.clone();
            async move {
                let socket = connect(args, &sessions[user]).await;
                bar.inc(1);
                socket.map(|ws| (user as u32, ws))
            }
        })
        .buffer_unordered(args.connect_concurrency)
        .collect()
        .await;
    bar.finish_and_clear();
    let mut open = Vec::with_capacity(count);
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(socket) => open.push(socket),
            Err(error) => errors.push(error),
        }
    }
    (open, errors)
}

/// Asks a long-lived reader for what it saw so far (sweep mode: once per step).
type DrainRequest = oneshot::Sender<ConnectionLog>;

/// Reads a connection until told to stop; records each notification's arrival. With `drain`,
/// hands over (and forgets) the frames seen so far whenever asked.
async fn read_frames(
    mut ws: Ws,
    user: u32,
    epoch: Instant,
    stop: CancellationToken,
    live: Arc<Live>,
    mut drain: Option<mpsc::UnboundedReceiver<DrainRequest>>,
) -> ConnectionLog {
    let mut log = ConnectionLog {
        user,
        ..Default::default()
    };
    loop {
        let asked = async {
            match drain.as_mut() {
                Some(requests) => requests.recv().await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(reply) = asked => {
                let fresh = ConnectionLog { user, ..Default::default() };
                let _ = reply.send(std::mem::replace(&mut log, fresh));
                continue;
            }
            next = ws.next() => next,
        };
        match next {
            Some(Ok(WsMessage::Text(text))) => {
                let arrival = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                match parse_frame(&text) {
                    Frame::Message(id) => {
                        log.frames.push((id, arrival));
                        live.frames.fetch_add(1, Ordering::Relaxed);
                    }
                    Frame::Resync => log.resyncs += 1,
                    Frame::Other => log.other += 1,
                }
            }
            Some(Ok(WsMessage::Close(_)) | Err(_)) | None => {
                log.dropped = true;
                live.dropped.fetch_add(1, Ordering::Relaxed);
                return log;
            }
            // Pings are answered by tungstenite itself.
            Some(Ok(_)) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
    let _ = tokio::time::timeout(Duration::from_millis(100), ws.flush()).await;
    log
}

/// Users, their credentials and how the connections spread over them: what every phase of a
/// run (or every step of a sweep) shares.
struct Setup {
    http: reqwest::Client,
    sessions: Vec<Session>,
    names: Vec<String>,
    headers: Vec<Vec<(HeaderName, HeaderValue)>>,
    conns_per_user: Vec<u32>,
    live: Arc<Live>,
}

impl Setup {
    /// Creates (or logs in) the users.
    async fn new(args: &Args, progress: &Progress) -> Result<Self> {
        let http = http_client(args)?;
        let sessions = sessions(args, &http, progress).await?;
        let users = sessions.len();
        let names = sessions.iter().map(|s| s.username.clone()).collect();
        let headers = sessions
            .iter()
            .map(|session| {
                let mut headers = vec![
                    (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                    (ORIGIN, origin(args)),
                ];
                headers.extend(session.headers());
                headers
            })
            .collect();
        let mut conns_per_user = vec![0_u32; users];
        for j in 0..args.connections {
            conns_per_user[j % users] += 1;
        }
        Ok(Self {
            http,
            sessions,
            names,
            headers,
            conns_per_user,
            live: Arc::new(Live::default()),
        })
    }

    /// The senders' shared context for one phase, with its epoch set to now.
    fn context(
        &self,
        args: &Args,
        path: &str,
        expect_id: bool,
        conns_per_user: Vec<u32>,
    ) -> Result<Arc<SendContext>> {
        let url = format!("{}{path}", args.base_url());
        Ok(Arc::new(SendContext {
            http: self.http.clone(),
            endpoint: match args.http_client {
                HttpClient::Hyper => Endpoint::from_url(&url),
                HttpClient::Reqwest => None,
            },
            url: reqwest::Url::parse(&url).map_err(|e| Error::Usage(format!("--url {}: {e}", args.url)))?,
            timeout: args.request_timeout(),
            headers: self.headers.clone(),
            names: self.names.clone(),
            expect_id,
            conns_per_user,
            body_size: args.body_size,
            epoch: Instant::now(),
            live: self.live.clone(),
        }))
    }

    /// Opens `--connections` sockets; fails if any does not open.
    async fn open_all(&self, args: &Args, progress: &Progress) -> Result<Vec<(u32, Ws)>> {
        let (sockets, errors) = open_sockets(args, &self.sessions, args.connections, progress).await;
        if let Some(first) = errors.first() {
            return Err(Error::Setup {
                what: format!(
                    "{} of {} WebSockets failed to open; first: {first}",
                    errors.len(),
                    args.connections
                ),
                source: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        Ok(sockets)
    }

    /// After the last send: waits up to `--grace-ms` for the missing frames, then lingers
    /// `--linger-ms` for late duplicates.
    async fn grace(&self, args: &Args) {
        let live = &self.live;
        let grace_end = Instant::now() + Duration::from_millis(args.grace_ms);
        loop {
            let all_in = live.frames.load(Ordering::Relaxed) >= live.expected_frames.load(Ordering::Relaxed);
            if all_in {
                tokio::time::sleep(Duration::from_millis(args.linger_ms)).await;
                break;
            }
            if Instant::now() >= grace_end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Runs the whole load test against the server named in `args`: users, optional ceiling
/// phase, sockets, message phase, grace period, accounting.
///
/// The caller's runtime is used; `main` builds one with `--client-threads` workers.
pub async fn run_load(args: &Args, progress: Progress) -> Result<Report> {
    args.validate()?;
    let setup = Setup::new(args, &progress).await?;
    let users = setup.sessions.len();

    let mut ceiling = None;
    if args.ceiling {
        let ctx = setup.context(args, &args.ceiling_path, false, vec![0; users])?;
        let (report, _) = run_phase(ctx, args, &progress, "ceiling").await;
        progress.note(&format!(
            "ceiling: {:.1} sends/s ({} errors)",
            report.sends_per_sec, report.send_errors
        ));
        ceiling = Some(report);
    }

    let sockets = setup.open_all(args, &progress).await?;
    let ctx = setup.context(args, "/api/v1/message/", true, setup.conns_per_user.clone())?;
    let stop = CancellationToken::new();
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(user, ws)| {
            tokio::spawn(read_frames(
                ws,
                user,
                ctx.epoch,
                stop.clone(),
                setup.live.clone(),
                None,
            ))
        })
        .collect();
    let (send, records) = run_phase(ctx, args, &progress, "sending").await;
    setup.grace(args).await;
    stop.cancel();
    let mut logs = Vec::with_capacity(readers.len());
    for reader in readers {
        if let Ok(log) = reader.await {
            logs.push(log);
        }
    }
    let notifications = tally(&records, &mut logs, &setup.conns_per_user);
    let ratio_to_ceiling = ceiling
        .as_ref()
        .filter(|c| c.sends_per_sec > 0.0)
        .map(|c| send.sends_per_sec / c.sends_per_sec);
    Ok(Report {
        url: args.base_url().to_owned(),
        auth: format!("{:?}", args.auth).to_lowercase(),
        users,
        connections: args.connections,
        senders: args.senders,
        client_threads: None,
        send,
        notifications,
        ceiling,
        ratio_to_ceiling,
    })
}

/// Sweep mode (`--sweep-rates`): the open-loop measurement once per offered rate, each for
/// `--duration` seconds, over the same users and the same sockets. Each step's frames are
/// matched to that step's sends only (every expected frame is in, or the grace period is
/// over, before the next step starts).
///
/// The caller's runtime is used; `main` builds one with `--client-threads` workers.
pub async fn run_sweep(args: &Args, progress: Progress) -> Result<SweepReport> {
    args.validate()?;
    if args.sweep_rates.is_empty() {
        return Err(Error::Usage("run_sweep needs --sweep-rates".into()));
    }
    // The HTTP client's pool is sized for the open loop.
    let mut base = args.clone();
    base.rate = args.sweep_rates.first().copied();
    let setup = Setup::new(&base, &progress).await?;
    let sockets = setup.open_all(&base, &progress).await?;
    let epoch = Instant::now();
    let stop = CancellationToken::new();
    let mut drains = Vec::with_capacity(sockets.len());
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(user, ws)| {
            let (ask, requests) = mpsc::unbounded_channel();
            drains.push((user, ask));
            tokio::spawn(read_frames(
                ws,
                user,
                epoch,
                stop.clone(),
                setup.live.clone(),
                Some(requests),
            ))
        })
        .collect();
    let mut steps = Vec::with_capacity(args.sweep_rates.len());
    for (n, &rate) in args.sweep_rates.iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(args.sweep_pause_ms)).await;
        }
        let mut step_args = base.clone();
        step_args.rate = Some(rate);
        let ctx = setup.context(&step_args, "/api/v1/message/", true, setup.conns_per_user.clone())?;
        // Sends are timed from the step's epoch, frames from the sweep's.
        let shift = u64::try_from(ctx.epoch.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        let label = format!("{rate:.0} msgs/s");
        let (send, mut records) = run_phase(ctx, &step_args, &progress, &label).await;
        setup.grace(&step_args).await;
        for record in &mut records {
            record.start_ns = record.start_ns.saturating_add(shift);
        }
        let mut logs = Vec::with_capacity(drains.len());
        for (user, ask) in &drains {
            let (reply, answer) = oneshot::channel();
            let log = match ask.send(reply) {
                Ok(()) => answer.await.ok(),
                Err(_) => None,
            };
            // A reader that is gone has dropped its connection (counted in an earlier step).
            logs.push(log.unwrap_or(ConnectionLog {
                user: *user,
                ..Default::default()
            }));
        }
        let notifications = tally(&records, &mut logs, &setup.conns_per_user);
        let step = SweepStep {
            send,
            notifications,
            load_average: load_average(),
        };
        progress.note(&step.summary_line());
        steps.push(step);
    }
    stop.cancel();
    for reader in readers {
        let _ = reader.await;
    }
    Ok(SweepReport {
        url: args.base_url().to_owned(),
        label: args.label.clone(),
        date: utc_timestamp(std::time::SystemTime::now()),
        users: setup.sessions.len(),
        connections: args.connections,
        senders: args.senders,
        step_secs: args.duration,
        client_threads: None,
        steps,
    })
}

/// CPU time (user + system, all threads) of process `pid` so far, in seconds, from
/// `/proc/PID/stat` (Linux; clock ticks of 1/100 s, the fixed `USER_HZ` of that interface).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it follow its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The machine's 1-minute load average, from `/proc/loadavg` (Linux).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The resident memory of process `pid` in KiB, from `/proc/PID/status` (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Idle mode: opens `--idle-connections` sockets over the users, holds them for `--hold`
/// seconds, and reports how many opened and stayed open. With `--server-pid` it also reads the
/// server's RSS before and with the sockets open.
pub async fn run_idle(args: &Args, progress: Progress) -> Result<IdleReport> {
    args.validate()?;
    let requested = args.idle_connections.unwrap_or(0);
    let http = http_client(args)?;
    let sessions = sessions(args, &http, &progress).await?;
    let settle = Duration::from_millis(args.settle_ms.max(1_000));
    let mut report = IdleReport {
        url: args.base_url().to_owned(),
        users: sessions.len(),
        requested,
        ..Default::default()
    };
    if let Some(pid) = args.server_pid {
        tokio::time::sleep(settle).await;
        report.server_rss_before_kib = rss_kib(pid);
    }
    progress.note(&format!(
        "{} users ready, no connection open (server RSS now: the baseline); opening {requested} connections",
        sessions.len()
    ));
    let started = Instant::now();
    let (sockets, errors) = open_sockets(args, &sessions, requested, &progress).await;
    report.open_secs = started.elapsed().as_secs_f64();
    report.opened = sockets.len();
    report.failed = errors.len();
    report.first_error = errors.into_iter().next();
    let live = Arc::new(Live::default());
    let stop = CancellationToken::new();
    let epoch = Instant::now();
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(user, ws)| tokio::spawn(read_frames(ws, user, epoch, stop.clone(), live.clone(), None)))
        .collect();
    progress.note(&format!(
        "all {} connections open ({} failed); holding them {:.0} s: read the server's RSS now",
        report.opened, report.failed, args.hold
    ));
    let hold = Duration::from_secs_f64(args.hold);
    let holding = async {
        if let Some(pid) = args.server_pid {
            tokio::time::sleep(settle.min(hold)).await;
            report.server_rss_open_kib = rss_kib(pid);
            tokio::time::sleep(hold.saturating_sub(settle)).await;
        } else {
            tokio::time::sleep(hold).await;
        }
    };
    // Ctrl-C ends a long hold early and still closes the sockets and reports.
    tokio::select! {
        () = holding => {}
        _ = tokio::signal::ctrl_c() => progress.note("interrupted: closing the connections"),
    }
    report.held_secs = epoch.elapsed().as_secs_f64();
    report.dropped = live.dropped.load(Ordering::Relaxed) as usize;
    stop.cancel();
    for reader in readers {
        let _ = reader.await;
    }
    if let (Some(before), Some(open)) = (report.server_rss_before_kib, report.server_rss_open_kib)
        && report.opened > 0
    {
        report.server_kib_per_connection = Some((open as f64 - before as f64) / report.opened as f64);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(id: i64, start_ns: u64, sender: u32, recipient: u32) -> SendRecord {
        SendRecord {
            id,
            start_ns,
            sender,
            recipient,
        }
    }

    fn conn(user: u32, frames: &[(i64, u64)]) -> ConnectionLog {
        ConnectionLog {
            user,
            frames: frames.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn exact_delivery_is_clean() {
        // Users 0 and 1 have two connections each, user 2 one.
        let per_user = [2, 2, 1];
        let sends = [send(1, 0, 0, 1), send(2, 1_000_000, 2, 2)];
        let mut conns = [
            conn(0, &[(1, 500_000)]),
            conn(0, &[(1, 600_000)]),
            conn(1, &[(1, 2_000_000)]),
            conn(1, &[(1, 3_000_000)]),
            conn(2, &[(2, 4_000_000)]),
        ];
        let r = tally(&sends, &mut conns, &per_user);
        assert_eq!(
            (r.expected, r.received, r.lost, r.duplicated, r.unexpected),
            (5, 5, 0, 0, 0)
        );
        // Latency only at the recipient's connections: 2 ms, 3 ms, and the self-send's 3 ms.
        assert_eq!(r.latency.count, 3);
        assert!((r.latency.max_ms - 3.0).abs() < 0.01, "{:?}", r.latency);
        assert!((r.latency.p50_ms - 3.0).abs() < 0.01, "{:?}", r.latency);
    }

    #[test]
    fn lost_duplicated_and_unexpected_are_counted() {
        let per_user = [1, 2];
        let sends = [send(10, 0, 0, 1), send(11, 0, 1, 0)];
        let mut dropped = conn(1, &[(10, 5), (10, 6), (99, 7)]);
        dropped.dropped = true;
        dropped.resyncs = 1;
        let mut conns = [
            conn(0, &[(10, 1), (11, 2), (11, 3)]),
            dropped,
            conn(1, &[(11, 4), (10, 2)]),
        ];
        let r = tally(&sends, &mut conns, &per_user);
        assert_eq!(r.expected, 6);
        // Missing: message 11 on the dropped connection.
        assert_eq!((r.received, r.lost), (5, 1));
        assert_eq!(r.duplicated, 2);
        assert_eq!(r.unexpected, 1);
        assert_eq!((r.resyncs, r.connections_dropped), (1, 1));
    }

    #[test]
    fn a_frame_for_someone_elses_message_is_unexpected() {
        let r = tally(&[send(1, 0, 0, 1)], &mut [conn(2, &[(1, 9)])], &[0, 0, 1]);
        assert_eq!((r.expected, r.received, r.unexpected), (0, 0, 1));
    }

    #[test]
    fn pairs_spread_senders_over_recipients() {
        for users in 2..6 {
            for k in 0..12 {
                for i in 0..20 {
                    let (me, to) = pair(k, i, users);
                    assert_ne!(me, to);
                    assert!((to as usize) < users);
                }
            }
        }
        // Two senders of the same user start with different recipients.
        assert_ne!(pair(0, 0, 3).1, pair(3, 0, 3).1);
    }

    #[test]
    fn plans_and_bodies() {
        let count = Plan::Count(AtomicU64::new(2));
        assert!(count.claim(Duration::ZERO) && count.claim(Duration::ZERO));
        assert!(!count.claim(Duration::ZERO));
        let until = Plan::Until(Duration::from_secs(1));
        assert!(until.claim(Duration::from_millis(999)));
        assert!(!until.claim(Duration::from_secs(1)));
        assert_eq!(body_text(3, 7, 0), "lg 3.7 ");
        assert_eq!(body_text(3, 7, 12), "lg 3.7 xxxxx");
    }

    #[test]
    fn origin_drops_the_path() {
        use clap::Parser;
        let args = Args::parse_from(["x", "--url", "http://127.0.0.1:8000/chat/"]);
        assert_eq!(origin(&args), "http://127.0.0.1:8000");
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
        let spin = Instant::now();
        let mut x = 0_u64;
        while spin.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_secs(std::process::id()).is_some_and(|secs| secs > 0.0));
        assert_eq!(cpu_secs(u32::MAX), None);
        assert!(load_average().is_some_and(|l| l >= 0.0));
    }
}
