//! One send: what every sender of a phase shares, the budget of sends, the request itself,
//! and what a sender records of each answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::HeaderName;
use http::{HeaderValue, StatusCode};
use serde::Serialize;

use super::Live;
use super::tally::{SendRecord, frames_for};
use crate::Args;
use crate::frame::parse_created_id;
use crate::report::Latency;
use crate::transport::{ConnectionPool, Endpoint};

/// When the sends stop.
#[derive(Debug)]
pub(super) enum Plan {
    Until(Duration),
    Count(AtomicU64),
}

impl Plan {
    pub(super) fn from_args(args: &Args) -> Self {
        match args.count {
            Some(count) => Plan::Count(AtomicU64::new(count)),
            None => Plan::Until(Duration::from_secs_f64(args.duration)),
        }
    }

    /// Takes one send from the budget; `false` when it is spent.
    pub(super) fn claim(&self, elapsed: Duration) -> bool {
        match self {
            Plan::Until(end) => elapsed < *end,
            Plan::Count(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// Which user sender `k` sends as, and to whom its `i`-th message goes: the other users in
/// turn (itself only when there is a single user).
pub(super) fn pair(sender_index: usize, i: u64, users: usize) -> (u32, u32) {
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

#[derive(Serialize)]
struct Body<'a> {
    recipient: &'a str,
    body: &'a str,
}

/// What every sender of one phase shares (read-only).
pub(super) struct SendContext {
    pub(super) http: reqwest::Client,
    /// Parsed once: reqwest would parse a string on every request.
    pub(super) url: reqwest::Url,
    /// The hot path's own HTTP/1.1 connections (plain HTTP); `None` sends through reqwest.
    pub(super) endpoint: Option<Endpoint>,
    pub(super) timeout: Duration,
    /// Per user: every header of a send (content type, origin, credentials).
    pub(super) headers: Vec<Vec<(HeaderName, HeaderValue)>>,
    pub(super) names: Vec<String>,
    /// `true` for the message endpoint (the answer must carry an id).
    pub(super) expect_id: bool,
    pub(super) conns_per_user: Vec<u32>,
    pub(super) body_size: usize,
    /// `--read-every`: 0, or every how many sends the recipient marks read and reads the inbox.
    pub(super) read_every: u64,
    /// The server's base URL (prefix kept), for the read routes.
    pub(super) base_url: reqwest::Url,
    pub(super) epoch: Instant,
    pub(super) live: Arc<Live>,
}

/// One sender's results.
#[derive(Default)]
pub(super) struct SenderLog {
    pub(super) records: Vec<SendRecord>,
    pub(super) latency: Latency,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    /// Open loop: sends that started after their scheduled time because the cap held them back.
    pub(super) late: u64,
    /// Open loop: how far after its scheduled time each send started.
    pub(super) start_lag: Latency,
    pub(super) last_done_ns: u64,
    /// `--read-every`: the recipient's read marker POSTs.
    pub(super) mark_read: Latency,
    /// `--read-every`: the recipient's first inbox page GETs.
    pub(super) inbox: Latency,
    /// `--read-every`: marks or inbox reads that failed.
    pub(super) read_errors: u64,
}

/// The recipient of message `id` (from `sender`) marks it read, then reads their inbox's first
/// page, each timed into `log` (the read-state work a busy client adds to its sends).
pub(super) async fn read_after(ctx: &SendContext, log: &mut SenderLog, sender: u32, recipient: u32, id: i64) {
    let headers = &ctx.headers[recipient as usize];
    let peer = &ctx.names[sender as usize];
    let request =
        |method: http::Method, path: &str| -> std::result::Result<reqwest::RequestBuilder, String> {
            let url = ctx.base_url.join(path).map_err(|e| format!("{path}: {e}"))?;
            let mut request = ctx.http.request(method, url).timeout(ctx.timeout);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            Ok(request)
        };
    let checked =
        |what: String, result: reqwest::Result<reqwest::Response>| -> std::result::Result<(), String> {
            let response = result.map_err(|e| format!("{what}: {e}"))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("{what}: status {}", response.status()))
            }
        };
    let path = format!("api/v1/conversation/{}/read", encode_path_segment(peer));
    let start = Instant::now();
    let marked = match request(http::Method::POST, &path) {
        Ok(req) => checked(
            format!("POST {path}"),
            req.body(format!("{{\"up_to\":{id}}}")).send().await,
        ),
        Err(e) => Err(e),
    };
    match marked {
        Ok(()) => log.mark_read.record(start.elapsed()),
        Err(error) => {
            log.read_errors += 1;
            log.first_error.get_or_insert(error);
        }
    }
    let start = Instant::now();
    let listed = match request(http::Method::GET, "api/v1/conversation/") {
        Ok(req) => checked("GET api/v1/conversation/".to_owned(), req.send().await),
        Err(e) => Err(e),
    };
    match listed {
        Ok(()) => log.inbox.record(start.elapsed()),
        Err(error) => {
            log.read_errors += 1;
            log.first_error.get_or_insert(error);
        }
    }
}

/// Percent-encodes a user name for a path segment (names may hold `@` and `+`): everything
/// but RFC 3986's unreserved characters.
fn encode_path_segment(value: &str) -> String {
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, COMPONENT).to_string()
}

/// One answered (or failed) send.
pub(super) struct Done {
    pub(super) sender: u32,
    pub(super) recipient: u32,
    start: Instant,
    finished: Instant,
    result: Result<Option<i64>, String>,
}

impl Done {
    /// The stored message's id, when the send succeeded and named one.
    pub(super) fn id(&self) -> Option<i64> {
        self.result.as_ref().ok().copied().flatten()
    }
}

impl SenderLog {
    /// Records one send's outcome.
    pub(super) fn absorb(&mut self, ctx: &SendContext, done: Done) {
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
                    let expected = frames_for(&ctx.conns_per_user, done.sender, done.recipient);
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

/// Sends message `i` from user `sender` to user `recipient` over `pool` (or reqwest), timed
/// from `start`.
pub(super) async fn send_one(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_spread_senders_over_recipients() {
        assert_eq!(pair(0, 0, 3), (0, 1));
        assert_eq!(pair(0, 1, 3), (0, 2));
        assert_eq!(pair(0, 2, 3), (0, 1));
        assert_eq!(pair(4, 0, 3), (1, 0));
        assert_eq!(pair(2, 7, 1), (0, 0));
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
}
