//! What every phase of a run (or every step of a sweep) shares: the HTTP client, the users and
//! their headers, the sockets, and the grace period after the last send.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::HeaderValue;
use http::header::{CONTENT_TYPE, HeaderName, ORIGIN};

use super::Live;
use super::listen::{Ws, open_sockets, origin};
use super::send::SendContext;
use crate::auth::{Session, sessions};
use crate::cli::{Args, HttpClient};
use crate::progress::Progress;
use crate::transport::Endpoint;
use crate::{Error, Result};

/// The HTTP client: HTTP/1.1 keep-alive with an idle pool as large as the concurrency.
pub(super) fn http_client(args: &Args) -> Result<reqwest::Client> {
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

/// Users, their credentials and how the connections spread over them.
pub(super) struct Setup {
    http: reqwest::Client,
    pub(super) sessions: Vec<Session>,
    names: Vec<String>,
    headers: Vec<Vec<(HeaderName, HeaderValue)>>,
    /// How many of the `--connections` sockets each user has (round-robin).
    pub(super) conns_per_user: Vec<u32>,
    pub(super) live: Arc<Live>,
}

impl Setup {
    /// Creates (or logs in) the users.
    pub(super) async fn new(args: &Args, progress: &Progress) -> Result<Self> {
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
    pub(super) fn context(
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
            // Read markers go with messages only, never with the ceiling's echo.
            read_every: if expect_id { args.read_every } else { 0 },
            // With a trailing slash, so joining a relative path keeps a path prefix.
            base_url: reqwest::Url::parse(&format!("{}/", args.base_url()))
                .map_err(|e| Error::Usage(format!("--url {}: {e}", args.url)))?,
            epoch: Instant::now(),
            live: self.live.clone(),
        }))
    }

    /// Opens `--connections` sockets; fails if any does not open. Then gives the server
    /// `--settle-ms` to subscribe them.
    pub(super) async fn open_all(&self, args: &Args, progress: &Progress) -> Result<Vec<(u32, Ws)>> {
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
    pub(super) async fn grace(&self, args: &Args) {
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
