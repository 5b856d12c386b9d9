//! The WebSocket listeners: opening the sockets to `/ws` and reading their frames.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use http::header::ORIGIN;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::Live;
use super::tally::ConnectionLog;
use crate::auth::Session;
use crate::cli::{Args, AuthMode};
use crate::frame::{Frame, parse_frame};
use crate::progress::Progress;

/// An open socket to `/ws`.
pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The `Origin` of the server: scheme://host[:port], without the path prefix.
pub(super) fn origin(args: &Args) -> HeaderValue {
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
pub(super) async fn open_sockets(
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
pub(super) type DrainRequest = oneshot::Sender<ConnectionLog>;

/// Reads a connection until told to stop; records each notification's arrival. With `drain`,
/// hands over (and forgets) the frames seen so far whenever asked.
pub(super) async fn read_frames(
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn origin_drops_the_path() {
        let args = Args::parse_from(["x", "--url", "http://127.0.0.1:8000/chat/"]);
        assert_eq!(origin(&args), "http://127.0.0.1:8000");
    }
}
