//! `/ws`: the notification channel. One task per connection runs a writer (catch-up, live
//! frames, pings, close frames) and a reader (ignores clients' frames, notices pongs and
//! the end of the connection) side by side under one `select!`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use chatcore::{CatchUp, Delivery, Event, Message, MessageId, Subscription, User};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::{Instant, timeout};

use crate::auth::Caller;
use crate::body::ApiQuery;
use crate::error::ApiError;
use crate::state::ApiState;

/// Close code when the server shuts down ("going away").
const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code when the client fell behind or events were lost ("try again later"): the
/// client reconnects with `since`.
const CLOSE_TRY_AGAIN: u16 = 1013;
/// Ids remembered per connection to drop duplicates after a catch-up.
const RECENT_IDS: usize = 16;
/// Most live frames written to one connection in one go before yielding to other tasks.
const BURST: usize = 64;
/// Buffered frame bytes at which tungstenite writes to the socket before the burst's flush.
const WRITE_BUFFER_FLUSH_AT: usize = 16 * 1024;

/// `GET /ws?since=ID`.
#[derive(Deserialize)]
pub(crate) struct WsParams {
    since: Option<i64>,
}

/// Authenticates, subscribes and reads the catch-up before upgrading, so every failure is a
/// plain HTTP answer (401, 403, 503) and no live event can slip between backlog and live.
pub(crate) async fn upgrade(
    State(state): State<ApiState>,
    Caller(user): Caller,
    ApiQuery(params): ApiQuery<WsParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade?;
    if state.shutdown().is_shutting_down() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let service = state.service();
    // Subscribe first, then read the backlog: whatever lands in between is in both, and the
    // writer drops the live copy.
    let subscription = service.subscribe(&user).await?;
    let backlog = match params.since.map(MessageId) {
        Some(since) => Some((since, service.catch_up(&user, since).await?)),
        None => None,
    };
    let config = state.config();
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
            run(state, user, subscription, backlog, socket).await;
        }))
}

async fn run(
    state: ApiState,
    user: User,
    subscription: Subscription,
    backlog: Option<(MessageId, CatchUp)>,
    socket: WebSocket,
) {
    let (sink, stream) = socket.split();
    let started = Instant::now();
    let last_heard = AtomicU64::new(0);
    let mut writer = Writer {
        state: &state,
        user: &user,
        sink,
        mark: None,
        resume_from: backlog.as_ref().map(|(since, _)| *since),
        recent: VecDeque::new(),
    };
    tokio::select! {
        () = writer.run(subscription, backlog.map(|(_, catch_up)| catch_up), &last_heard, started) => {}
        () = read(stream, &last_heard, started) => {}
    }
    tracing::debug!(user = %user.username, "websocket closed");
}

/// Reads until the client goes away. Clients' frames carry no meaning (yet) and are
/// ignored; any frame, a pong included, proves the client alive.
async fn read(mut stream: SplitStream<WebSocket>, last_heard: &AtomicU64, started: Instant) {
    // After a close frame, reading on lets tungstenite send the reply and then ends.
    while let Some(Ok(_)) = stream.next().await {
        last_heard.store(millis_since(started), Ordering::Relaxed);
    }
}

fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Why a write failed: the connection is dropped without ceremony.
struct Gone;

/// One write to the socket within `limit`: a failed write or a client too slow to take it
/// within the limit means the connection is gone.
async fn within<E>(
    limit: Duration,
    user: &User,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), Gone> {
    match timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Gone),
        Err(_) => {
            tracing::debug!(user = %user.username, "websocket client too slow, dropping it");
            Err(Gone)
        }
    }
}

struct Writer<'a> {
    state: &'a ApiState,
    user: &'a User,
    sink: SplitSink<WebSocket, WsMessage>,
    /// Live events with an id up to this one were already sent from storage.
    mark: Option<MessageId>,
    /// The client's `since`: where to resume after a transport gap when nothing was sent yet.
    /// (Not a mark: a `since` beyond the newest message must not mute the live events.)
    resume_from: Option<MessageId>,
    /// The last ids sent, to drop the live copy of a message a catch-up already sent.
    recent: VecDeque<MessageId>,
}

impl Writer<'_> {
    async fn run(
        &mut self,
        mut subscription: Subscription,
        backlog: Option<CatchUp>,
        last_heard: &AtomicU64,
        started: Instant,
    ) {
        let config = self.state.config();
        let shutdown = self.state.shutdown().token().clone();
        if let Some(backlog) = backlog
            && self.send_catch_up(backlog).await.is_err()
        {
            return;
        }
        let interval = config.ws_ping_interval.max(Duration::from_millis(10));
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let allowed_silence = interval + config.ws_ping_timeout;
        loop {
            let close = tokio::select! {
                biased;
                () = shutdown.cancelled() => Some((CLOSE_GOING_AWAY, "server shutting down")),
                delivery = subscription.recv() => match self.deliver(delivery, &mut subscription).await {
                    Ok(close) => close,
                    Err(Gone) => return,
                },
                _ = ping.tick() => {
                    let silent = millis_since(started).saturating_sub(last_heard.load(Ordering::Relaxed));
                    if Duration::from_millis(silent) > allowed_silence {
                        tracing::debug!(user = %self.user.username, "websocket dead, dropping it");
                        return;
                    }
                    if self.send(WsMessage::Ping(Default::default())).await.is_err() {
                        return;
                    }
                    None
                }
            };
            if let Some((code, reason)) = close {
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                };
                let _ = self.send(WsMessage::Close(Some(frame))).await;
                return;
            }
        }
    }

    /// Sends one frame and flushes it, within the configured time.
    async fn send(&mut self, message: WsMessage) -> Result<(), Gone> {
        let limit = self.state.config().ws_send_timeout;
        within(limit, self.user, self.sink.send(message)).await
    }

    /// Handles `first` and whatever else is queued (up to [`BURST`]), after one yield when
    /// gathering: live frames are fed without flushing, and one flush writes them all, so a
    /// burst of notifications costs the socket one write instead of one each. Returns the
    /// close frame to send, if the connection must end.
    async fn deliver(
        &mut self,
        first: Option<Delivery>,
        subscription: &mut Subscription,
    ) -> Result<Option<(u16, &'static str)>, Gone> {
        let mut next = first;
        let mut unflushed = false;
        let mut handled = 0;
        let mut gather = self.state.config().ws_gather_frames;
        let close = loop {
            handled += 1;
            let close = match next {
                Some(Delivery::Event(Event::Message(message))) => {
                    unflushed |= self.feed_live(&message).await?;
                    None
                }
                Some(Delivery::Event(_)) => None,
                Some(Delivery::Gap) => {
                    self.flush_if(&mut unflushed).await?;
                    match self.after_gap().await {
                        Ok(()) => None,
                        Err(GapError::Gone) => return Err(Gone),
                        Err(GapError::Storage) => {
                            Some((CLOSE_TRY_AGAIN, "events lost, reconnect with since"))
                        }
                    }
                }
                Some(Delivery::Lagged) => Some((CLOSE_TRY_AGAIN, "too slow, reconnect with since")),
                None => Some((CLOSE_GOING_AWAY, "notifications ended")),
            };
            if close.is_some() || handled == BURST {
                break close;
            }
            let mut queued = subscription.try_recv();
            if matches!(queued, Ok(None)) && gather {
                // The publisher of this event woke us first, ahead of the other sends of
                // its commit; a deferred yield lets them publish too (see
                // `ApiConfig::ws_gather_frames`).
                gather = false;
                tokio::task::yield_now().await;
                queued = subscription.try_recv();
            }
            next = match queued {
                Ok(Some(delivery)) => Some(delivery),
                // Nothing queued, or ended: the next `recv` reports how (lagged or closed).
                Ok(None) | Err(()) => break None,
            };
        };
        self.flush_if(&mut unflushed).await?;
        Ok(close)
    }

    async fn flush_if(&mut self, unflushed: &mut bool) -> Result<(), Gone> {
        if !std::mem::take(unflushed) {
            return Ok(());
        }
        let limit = self.state.config().ws_send_timeout;
        within(limit, self.user, self.sink.flush()).await
    }

    /// Queues one live frame without flushing; `false` when it was a duplicate and skipped.
    async fn feed_live(&mut self, message: &Message) -> Result<bool, Gone> {
        if self.mark.is_some_and(|mark| message.id <= mark) || self.recent.contains(&message.id) {
            return Ok(false);
        }
        let frame = self.state.frames().frame(message);
        let limit = self.state.config().ws_send_timeout;
        within(limit, self.user, self.sink.feed(WsMessage::Text(frame))).await?;
        self.remember(message.id);
        Ok(true)
    }

    async fn send_catch_up(&mut self, catch_up: CatchUp) -> Result<(), Gone> {
        match catch_up {
            CatchUp::Resync => {
                self.mark = None;
                self.send(WsMessage::Text(Utf8Bytes::from_static(r#"{"resync":true}"#)))
                    .await
            }
            CatchUp::Messages(messages) => {
                let send_timeout = self.state.config().ws_send_timeout;
                for message in &messages {
                    if self.recent.contains(&message.id) {
                        continue;
                    }
                    let frame = WsMessage::Text(render_frame(message).into());
                    // Feed without flushing each: one flush for the whole backlog.
                    within(send_timeout, self.user, self.sink.feed(frame)).await?;
                    self.remember(message.id);
                }
                within(send_timeout, self.user, self.sink.flush()).await?;
                if let Some(last) = messages.last() {
                    self.mark = Some(self.mark.map_or(last.id, |mark| mark.max(last.id)));
                }
                Ok(())
            }
        }
    }

    /// The transport may have lost events: send what storage has after what this connection
    /// sent last (or tell the client to resync when it is unknown where to start).
    async fn after_gap(&mut self) -> Result<(), GapError> {
        let start = self
            .recent
            .iter()
            .min()
            .copied()
            .or(self.mark)
            .or(self.resume_from);
        let catch_up = match start {
            Some(start) => match self.state.service().catch_up(self.user, start).await {
                Ok(catch_up) => catch_up,
                Err(error) => {
                    tracing::warn!(%error, user = %self.user.username, "catch-up after a gap failed");
                    return Err(GapError::Storage);
                }
            },
            None => CatchUp::Resync,
        };
        self.send_catch_up(catch_up).await.map_err(|Gone| GapError::Gone)
    }

    fn remember(&mut self, id: MessageId) {
        if self.recent.len() == RECENT_IDS {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
    }
}

enum GapError {
    Gone,
    Storage,
}

/// `{"message": "<id>", "data": <the message>}`.
fn render_frame(message: &Message) -> String {
    #[derive(serde::Serialize)]
    struct Frame<'a> {
        message: String,
        data: &'a Message,
    }
    let frame = Frame {
        message: message.id.to_string(),
        data: message,
    };
    // Serializing a `Message` cannot fail: every field is a string or an integer.
    serde_json::to_string(&frame).unwrap_or_default()
}

/// Recently rendered frames by message id, so an event going to many connections is
/// serialized once. Striped by id: connections receiving different messages rarely meet on
/// a lock, and each lock is held only to clone a reference-counted buffer.
pub(crate) struct FrameCache {
    slots: Box<[Mutex<Option<CachedFrame>>]>,
}

type CachedFrame = (MessageId, Utf8Bytes);

impl Default for FrameCache {
    fn default() -> Self {
        Self {
            slots: (0..64).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl FrameCache {
    pub(crate) fn frame(&self, message: &Message) -> Utf8Bytes {
        let slot = &self.slots[message.id.0.rem_euclid(self.slots.len() as i64) as usize];
        if let Some((id, frame)) = &*lock(slot)
            && *id == message.id
        {
            return frame.clone();
        }
        let frame = Utf8Bytes::from(render_frame(message));
        *lock(slot) = Some((message.id, frame.clone()));
        frame
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A slot is replaced whole, so a poisoned one still holds a valid value.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_shape_and_cache() {
        let message = Message {
            id: MessageId(17),
            sender: chatcore::Username::parse("alice").unwrap(),
            recipient: chatcore::Username::parse("bob").unwrap(),
            created_at: chatcore::now_micros(),
            body: "hi".into(),
        };
        let cache = FrameCache::default();
        let first = cache.frame(&message);
        let value: serde_json::Value = serde_json::from_str(first.as_str()).unwrap();
        assert_eq!(value["message"], "17");
        assert_eq!(value["data"]["body"], "hi");
        assert_eq!(value["data"]["user"], "alice");
        let second = cache.frame(&message);
        // The same buffer, not a second rendering.
        assert_eq!(first.as_str().as_ptr(), second.as_str().as_ptr());
    }
}
