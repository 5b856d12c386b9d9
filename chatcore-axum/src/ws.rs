//! `/ws`: the notification channel. One task per connection runs a writer (catch-up, live
//! frames in position order, ephemeral typing and presence frames, pings, close frames) and a
//! reader (hands typing frames to the service, ignores other client frames, notices pongs,
//! oversized frames and the end of the connection) side by side under one `select!`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use chatcore::{CatchUp, CatchUpPage, CloseReason, Delivery, Event, Feed, Position, RESYNC_FRAME, User};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::{Instant, timeout};
use utoipa::IntoParams;

use crate::auth::{Authenticated, CallerSession, SessionInfo};
use crate::body::ApiQuery;
use crate::cursor::{Accepted, Cursor, MAX_HELD};
use crate::error::ApiError;
use crate::metrics::SocketEnd;
use crate::openapi::{ErrorBody, ServerErrors, Unauthenticated};
use crate::state::ApiState;

/// Close code when the server shuts down ("going away").
const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a user over their connection limit ("policy violation").
const CLOSE_POLICY: u16 = 1008;
/// Close code for a client frame over [`crate::ApiConfig::ws_max_incoming_message`].
const CLOSE_TOO_BIG: u16 = 1009;
/// Close code when events could not be read from storage or the transport ended ("try
/// again later"): the client reconnects with `since`.
const CLOSE_TRY_AGAIN: u16 = 1013;
/// Close code when the login session the connection was opened with ended (logout,
/// expiry): the client must log in again; reconnecting with the old credential gets 401.
pub const CLOSE_SESSION_ENDED: u16 = 4001;
/// Most live frames written to one connection in one go before yielding to other tasks.
const BURST: usize = 64;
/// Buffered frame bytes at which tungstenite writes to the socket before the burst's flush.
const WRITE_BUFFER_FLUSH_AT: usize = 16 * 1024;

/// `GET /ws?since=POSITION` (a message id works: message positions are their ids).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WsParams {
    /// Replay every event of the caller's after this position (the last one the client saw)
    /// before the live frames; without it, live frames start from the caller's newest.
    #[param(example = 17)]
    since: Option<i64>,
}

type Close = (u16, &'static str);

/// Authenticates, subscribes and reads storage once before upgrading (the first page of the
/// backlog after `since`, or where a connection without `since` starts), so those failures
/// are plain HTTP answers (401, 403, 503). The rest of a backlog is read after the upgrade,
/// page by page as the socket drains.
/// The notification WebSocket.
///
/// The notification channel: a WebSocket upgrade (`Connection: Upgrade`,
/// `Upgrade: websocket`), only for an authenticated caller, answered only after the
/// subscription and one storage read succeeded (so each failure is a JSON answer). Then every
/// frame the server sends is a JSON text frame with a `type`, in position order:
///
/// - `{"type": "message", "position": 17, "message": "17", "data": <Message>}` for every
///   message the caller sent or received (a message's position is its id);
/// - `{"type": "read", "position": 18, "reader": "bob", "peer": "alice", "up_to": 17}` when a
///   read marker of one of the caller's conversations moved;
/// - `{"type": "edit", "position": 19, "data": <Message>}` when the sender of one of the
///   caller's messages edited it, and `{"type": "delete", "position": 20, "data": <Message>}`
///   (the tombstone: `"body": ""`, `"deleted": true`) when they deleted it; replayed with the
///   message as it is now, so no deleted text is ever sent again;
/// - `{"type": "resync", "resync": true}` when more events were missed than the catch-up
///   bound (1,000): reload history; live frames go on from the newest position;
/// - `{"type": "typing", "from": "alice", "expires_in_ms": 6000}` while someone the caller
///   shares a conversation with types to them (`0`: they stopped; a message from them ends it
///   too); ephemeral, never replayed;
/// - `{"type": "presence", "users": [{"user": "bob", "online": false, "last_seen": "..."}]}`
///   when users the caller shares a conversation with come online or go offline (on any
///   server), at most one frame per second listing every change, when the server keeps
///   presence; ephemeral, never replayed.
///
/// Once a socket has delivered position p it has delivered every earlier event of the user's
/// (after `since`), so reconnecting with `since` = the last position seen is always safe. A
/// client ignores frame types it does not know. Frames it sends are ignored except
/// `{"type": "typing", "to": "bob"}` (with `"stop": true` when the box is cleared), relayed to
/// `bob` only when the two share a conversation, at most a burst of 5 then 1 per second per
/// socket (extra ones are dropped, never an error).
///
/// Close codes: 1001 the server is shutting down; 1008 the user opened more sockets than
/// allowed and this was the oldest (do not reconnect automatically); 1009 a client frame over
/// 64 KiB; 1013 storage could not be read or the notifications ended (reconnect with
/// `since`); 4001 the session the socket was opened with ended (log in again).
#[utoipa::path(
    get,
    path = "/ws",
    tag = "notifications",
    params(WsParams),
    security(("session_cookie" = []), ("bearer" = [])),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol; frames as described above"),
        (status = 400, description = "Not a valid WebSocket upgrade, or a malformed `since`", body = ErrorBody,
            example = json!({"error": "Connection header did not include 'upgrade'"})),
        (status = 403, description = "A cookie-authenticated upgrade from another site", body = ErrorBody,
            example = json!({"error": "cross-site request refused"})),
        Unauthenticated, ServerErrors
    )
)]
pub(crate) async fn upgrade(
    State(state): State<ApiState>,
    CallerSession(caller): CallerSession,
    headers: http::HeaderMap,
    ApiQuery(params): ApiQuery<WsParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade?;
    if state.shutdown().is_shutting_down() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let service = state.service();
    let user = caller.user;
    let session = caller.session;
    // Subscribe first, then read where to start: whatever lands in between is both live and
    // in storage, and the cursor drops the second copy.
    let feed = service.subscribe(&user, session.map(|s| s.id)).await?;
    let start = match params.since {
        Some(since) => {
            let mut catch_up = service.catch_up(&user, Position(since));
            let first = service.catch_up_page(&mut catch_up).await?;
            Start::Since(Box::new((catch_up, first)))
        }
        None => Start::Live(service.latest_position(&user).await?),
    };
    let config = state.config();
    // What the connection shows the authenticator when it checks its session again: the
    // credential headers only, kept for connections that will ask.
    let credentials = (session.is_some() && !config.ws_session_recheck.is_zero()).then(|| {
        [http::header::AUTHORIZATION, http::header::COOKIE]
            .into_iter()
            .flat_map(|name| {
                headers
                    .get_all(&name)
                    .iter()
                    .map(move |value| (name.clone(), value.clone()))
                    .collect::<Vec<_>>()
            })
            .collect::<http::HeaderMap>()
    });
    let guard = state.shutdown().socket_guard();
    Ok(upgrade
        .read_buffer_size(config.ws_read_buffer)
        // Frames are fed in bursts and flushed once per burst (see `Writer::deliver`); this is
        // only the size at which a burst is written out before its flush.
        .write_buffer_size(WRITE_BUFFER_FLUSH_AT)
        .max_message_size(config.ws_max_incoming_message)
        .max_frame_size(config.ws_max_incoming_message)
        .on_upgrade(move |socket| async move {
            let _guard = guard;
            let _open = state.metrics().open_socket();
            let opened = Opened { session, credentials };
            run(state, user, opened, feed, start, socket).await;
        }))
}

/// The session a connection was opened with, and the credentials to check it again with
/// (when [`crate::ApiConfig::ws_session_recheck`] is on).
struct Opened {
    session: Option<SessionInfo>,
    credentials: Option<http::HeaderMap>,
}

/// Where a connection starts.
enum Start {
    /// After `since`: the backlog's catch-up and its first page, read before the upgrade.
    Since(Box<(CatchUp, CatchUpPage)>),
    /// Live, after the user's newest position when it subscribed.
    Live(Position),
}

async fn run(state: ApiState, user: User, opened: Opened, feed: Feed, start: Start, socket: WebSocket) {
    let (sink, stream) = socket.split();
    let started = Instant::now();
    let last_heard = AtomicU64::new(0);
    let (from, backlog) = match start {
        Start::Since(backlog) => (backlog.0.after_start(), Some(*backlog)),
        Start::Live(latest) => (latest, None),
    };
    let mut writer = Writer {
        state: &state,
        user: &user,
        sink,
        cursor: Cursor::new(from),
        unwritten_sends: Vec::new(),
    };
    let ending = tokio::select! {
        ending = writer.run(feed, backlog, opened, &last_heard, started) => ending,
        end = read(&state, &user, stream, &last_heard, started) => match end {
            ReadEnd::TooBig => Ok((CLOSE_TOO_BIG, "message too big")),
            ReadEnd::Gone => Err(Gone::Broken),
        },
    };
    state.metrics().ended(socket_end(&ending));
    if let Ok((code, reason)) = ending {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = writer.send(WsMessage::Close(Some(frame))).await;
    }
    tracing::debug!(user = %user.username, "websocket closed");
}

/// How reading ended.
enum ReadEnd {
    /// The client sent a frame over the size limit.
    TooBig,
    /// The client went away, closed, or broke the protocol.
    Gone,
}

/// A frame a client sends: only `{"type":"typing","to":"bob"}` (with `"stop":true` when
/// the typist cleared the box) has a meaning.
#[derive(Deserialize)]
struct ClientFrame<'a> {
    r#type: &'a str,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    stop: bool,
}

/// Reads until the client goes away. Typing frames go to the service
/// ([`chatcore::ChatService::typing`], which rate-limits them per connection and drops what
/// it must); any other frame is ignored. Any frame, a pong included, proves the client
/// alive.
async fn read(
    state: &ApiState,
    user: &User,
    mut stream: SplitStream<WebSocket>,
    last_heard: &AtomicU64,
    started: Instant,
) -> ReadEnd {
    let service = state.service();
    let mut gate = service.typing_gate();
    // After a close frame, reading on lets tungstenite send the reply and then ends.
    loop {
        match stream.next().await {
            Some(Ok(frame)) => {
                last_heard.store(millis_since(started), Ordering::Relaxed);
                if let WsMessage::Text(text) = &frame
                    && let Ok(ClientFrame {
                        r#type: "typing",
                        to: Some(to),
                        stop,
                    }) = serde_json::from_str::<ClientFrame<'_>>(text.as_str())
                    && let Err(error) = service.typing(user, &mut gate, &to, stop).await
                {
                    tracing::debug!(%error, user = %user.username, "typing frame not relayed");
                }
            }
            Some(Err(error)) => {
                let too_big = error
                    .into_inner()
                    .downcast::<tungstenite::Error>()
                    .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)));
                return if too_big { ReadEnd::TooBig } else { ReadEnd::Gone };
            }
            None => return ReadEnd::Gone,
        }
    }
}

fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Why the connection is dropped without ceremony (no close frame).
#[derive(Debug, Clone, Copy)]
enum Gone {
    /// A write failed or the client closed: it went away.
    Broken,
    /// The client did not take a frame within the send timeout.
    Lagging,
    /// The client stayed silent after a ping.
    Unresponsive,
}

/// One write to the socket within `limit`: a failed write or a client too slow to take it
/// within the limit means the connection is gone.
async fn within<E>(
    limit: Duration,
    user: &User,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), Gone> {
    match timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Gone::Broken),
        Err(_) => {
            tracing::debug!(user = %user.username, "websocket client too slow, dropping it");
            Err(Gone::Lagging)
        }
    }
}

/// How a connection ended, for the metrics: by its close code, or why it was dropped.
fn socket_end(ending: &Result<Close, Gone>) -> SocketEnd {
    match ending {
        Ok((CLOSE_GOING_AWAY, _)) => SocketEnd::Shutdown,
        Ok((CLOSE_POLICY, _)) => SocketEnd::Evicted,
        Ok((CLOSE_TOO_BIG, _)) => SocketEnd::FrameTooBig,
        Ok((CLOSE_SESSION_ENDED, _)) => SocketEnd::SessionEnded,
        Ok(_) => SocketEnd::Unavailable,
        Err(Gone::Broken) => SocketEnd::ClientGone,
        Err(Gone::Lagging) => SocketEnd::Lagging,
        Err(Gone::Unresponsive) => SocketEnd::Unresponsive,
    }
}

/// The frame's bytes as a text message: the shared buffer, checked to be UTF-8 (it is, by
/// construction of [`Event`]), never re-encoded.
fn text(event: &Event) -> WsMessage {
    match Utf8Bytes::try_from(event.frame().clone()) {
        Ok(text) => WsMessage::Text(text),
        // Unreachable (an `Event` checks its frame); a copy, never an empty frame.
        Err(_) => WsMessage::Text(String::from_utf8_lossy(event.frame()).into_owned().into()),
    }
}

fn close_for(reason: CloseReason) -> Close {
    match reason {
        CloseReason::SessionEnded => (CLOSE_SESSION_ENDED, "session ended"),
        CloseReason::TooManyConnections => (CLOSE_POLICY, "too many connections for this user"),
        _ => (CLOSE_TRY_AGAIN, "notifications ended, reconnect with since"),
    }
}

struct Writer<'a> {
    state: &'a ApiState,
    user: &'a User,
    sink: SplitSink<WebSocket, WsMessage>,
    cursor: Cursor,
    /// When the sends of the frames fed since the last flush were accepted (this process's
    /// sends only): timed once the flush has written them.
    unwritten_sends: Vec<std::time::Instant>,
}

impl Writer<'_> {
    /// Runs until the connection must end: the close frame to send, or why it is dropped
    /// without one.
    async fn run(
        &mut self,
        mut feed: Feed,
        backlog: Option<(CatchUp, CatchUpPage)>,
        opened: Opened,
        last_heard: &AtomicU64,
        started: Instant,
    ) -> Result<Close, Gone> {
        let Opened { session, credentials } = opened;
        let config = self.state.config();
        let shutdown = self.state.shutdown().token().clone();
        if let Some((catch_up, first)) = backlog
            && let Some(close) = self.catch_up(catch_up, Some(first)).await?
        {
            return Ok(close);
        }
        let expiry = session.map(|s| {
            let left = (s.expires_at - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            Instant::now() + left
        });
        let session_ends = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(session_ends);
        let interval = config.ws_ping_interval.max(Duration::from_millis(10));
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let allowed_silence = interval + config.ws_ping_timeout;
        let every = config.ws_session_recheck;
        let mut recheck = credentials.as_ref().filter(|_| !every.is_zero()).map(|_| {
            let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            let gap_deadline = self.cursor.waiting().map(|(_, since)| since + config.ws_gap_wait);
            let result = tokio::select! {
                biased;
                () = shutdown.cancelled() => Ok(Some((CLOSE_GOING_AWAY, "server shutting down"))),
                () = &mut session_ends => Ok(Some(close_for(CloseReason::SessionEnded))),
                delivery = feed.recv() => self.deliver(delivery, &mut feed).await,
                () = next_tick(&mut recheck) => self.session_ended(session, credentials.as_ref()).await,
                () = sleep_until(gap_deadline) => {
                    // A held event's predecessor did not arrive in time (its publish was lost
                    // or is slow): storage has it, since it committed before the held one.
                    self.fill_from_storage().await
                }
                _ = ping.tick() => {
                    let silent = millis_since(started).saturating_sub(last_heard.load(Ordering::Relaxed));
                    if Duration::from_millis(silent) > allowed_silence {
                        tracing::debug!(user = %self.user.username, "websocket dead, dropping it");
                        return Err(Gone::Unresponsive);
                    }
                    self.send(WsMessage::Ping(Default::default())).await.map(|()| None)
                }
            };
            if let Some(close) = result? {
                return Ok(close);
            }
        }
    }

    /// Asks the authenticator whether the connection's session is still live: the close
    /// frame when it is not. A failed check keeps the connection until the next one.
    async fn session_ended(
        &self,
        session: Option<SessionInfo>,
        credentials: Option<&http::HeaderMap>,
    ) -> Result<Option<Close>, Gone> {
        let (Some(session), Some(credentials)) = (session, credentials) else {
            return Ok(None);
        };
        let caller = Authenticated {
            user: self.user.clone(),
            session: Some(session),
        };
        match self
            .state
            .authenticator()
            .session_is_live(&caller, credentials)
            .await
        {
            Ok(true) => Ok(None),
            Ok(false) => {
                tracing::debug!(user = %self.user.username, "session gone: closing its websocket");
                Ok(Some(close_for(CloseReason::SessionEnded)))
            }
            Err(error) => {
                tracing::debug!(%error, user = %self.user.username, "session check failed; trying again later");
                Ok(None)
            }
        }
    }

    /// Sends one frame and flushes it (with the frames fed before it), within the
    /// configured time.
    async fn send(&mut self, message: WsMessage) -> Result<(), Gone> {
        let limit = self.state.config().ws_send_timeout;
        within(limit, self.user, self.sink.send(message)).await?;
        self.written();
        Ok(())
    }

    async fn feed_frame(&mut self, event: &Event) -> Result<(), Gone> {
        let limit = self.state.config().ws_send_timeout;
        within(limit, self.user, self.sink.feed(text(event))).await?;
        if let Some(accepted) = event.accepted_at() {
            self.unwritten_sends.push(accepted);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        let limit = self.state.config().ws_send_timeout;
        within(limit, self.user, self.sink.flush()).await?;
        self.written();
        Ok(())
    }

    /// The frames fed so far are written: time the sends among them.
    fn written(&mut self) {
        if !self.unwritten_sends.is_empty() {
            let now = std::time::Instant::now();
            self.state
                .metrics()
                .delivered(self.unwritten_sends.drain(..), now);
        }
    }

    /// Handles `first` and whatever else is queued (up to [`BURST`]), after one yield when
    /// gathering: frames are fed without flushing, and one flush writes them all, so a burst
    /// of notifications costs the socket one write instead of one each. Returns the close
    /// frame to send, if the connection must end.
    async fn deliver(&mut self, first: Option<Delivery>, feed: &mut Feed) -> Result<Option<Close>, Gone> {
        let mut next = first;
        let mut unflushed = false;
        let mut handled = 0;
        let mut gather = self.state.config().ws_gather_frames;
        let close = loop {
            handled += 1;
            let close = match next {
                Some(Delivery::Event { event, previous }) => {
                    unflushed |= self.live(event, previous).await?;
                    None
                }
                Some(Delivery::Gap) => {
                    self.flush_if(&mut unflushed).await?;
                    self.fill_from_storage().await?
                }
                Some(Delivery::Closed(reason)) => Some(close_for(reason)),
                None => Some(close_for(CloseReason::TransportClosed)),
            };
            if close.is_some() || handled == BURST {
                break close;
            }
            let mut queued = feed.try_recv();
            if queued.is_none() && gather {
                // The publisher of this event woke us first, ahead of the other sends of
                // its commit; a deferred yield lets them publish too (see
                // `ApiConfig::ws_gather_frames`).
                gather = false;
                tokio::task::yield_now().await;
                queued = feed.try_recv();
            }
            match queued {
                Some(delivery) => next = Some(delivery),
                None => break None,
            }
        };
        self.flush_if(&mut unflushed).await?;
        if self.cursor.waiting().is_some_and(|(held, _)| held > MAX_HELD) {
            return self.fill_from_storage().await.map(|fill| close.or(fill));
        }
        Ok(close)
    }

    async fn flush_if(&mut self, unflushed: &mut bool) -> Result<(), Gone> {
        if std::mem::take(unflushed) {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// Queues a live event (and the held ones it unblocks) without flushing; `false` when
    /// nothing was written.
    async fn live(&mut self, event: Event, previous: Option<Position>) -> Result<bool, Gone> {
        let (Some(position), Some(previous)) = (event.position(), previous) else {
            // An event without a position has no order to keep.
            self.feed_frame(&event).await?;
            return Ok(true);
        };
        match self.cursor.accept(event, position, previous, Instant::now()) {
            Accepted::Now(event) => {
                self.feed_frame(&event).await?;
                while let Some(ready) = self.cursor.next_ready() {
                    self.feed_frame(&ready).await?;
                }
                Ok(true)
            }
            Accepted::Duplicate | Accepted::Held => Ok(false),
        }
    }

    /// Writes what storage has after the cursor, page by page as the socket drains, then the
    /// held live events that can now go. Past [`chatcore::ChatConfig::catch_up_limit`] the
    /// client gets the resync frame instead. A storage failure ends the connection with 1013
    /// (the client reconnects with `since`), so nothing is skipped silently.
    async fn fill_from_storage(&mut self) -> Result<Option<Close>, Gone> {
        let catch_up = self.state.service().catch_up(self.user, self.cursor.last());
        self.catch_up(catch_up, None).await
    }

    /// Writes the pages of `catch_up` (starting with `first` when it was read already).
    async fn catch_up(
        &mut self,
        mut catch_up: CatchUp,
        first: Option<CatchUpPage>,
    ) -> Result<Option<Close>, Gone> {
        let service = self.state.service();
        let mut first = first;
        loop {
            let page = match first.take() {
                Some(page) => page,
                None => match service.catch_up_page(&mut catch_up).await {
                    Ok(page) => page,
                    Err(error) => {
                        tracing::warn!(%error, user = %self.user.username, "catch-up from storage failed");
                        return Ok(Some((
                            CLOSE_TRY_AGAIN,
                            "events could not be read, reconnect with since",
                        )));
                    }
                },
            };
            match page {
                CatchUpPage::Events(events) if events.is_empty() => {
                    self.cursor.caught_up_to(catch_up.after());
                    break;
                }
                CatchUpPage::Events(events) => {
                    for event in &events {
                        if event.position().is_some_and(|p| self.cursor.stored(p)) {
                            self.feed_frame(event).await?;
                        }
                    }
                    self.flush().await?;
                }
                CatchUpPage::Resync { resume_after } => {
                    self.cursor.caught_up_to(resume_after);
                    self.send(WsMessage::Text(Utf8Bytes::from_static(RESYNC_FRAME)))
                        .await?;
                    break;
                }
            }
        }
        let mut wrote = false;
        while let Some(ready) = self.cursor.next_ready() {
            self.feed_frame(&ready).await?;
            wrote = true;
        }
        if wrote {
            self.flush().await?;
        }
        Ok(None)
    }
}

/// The next tick of `ticks`, never without them.
async fn next_tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
