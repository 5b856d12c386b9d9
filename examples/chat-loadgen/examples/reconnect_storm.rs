//! Does a storm of `/ws?since=0` reconnections slow other users down? Against a running
//! server (rate limit off), this creates users over HTTP, gives the storm users a backlog,
//! then measures one other user's history page (`GET /api/v1/message/?target=PEER`, one
//! request every `--interval-ms`) for `--duration` seconds with no storm, and again while
//! `--storm` clients each loop: open `/ws?since=0` as a storm user, read `--frames` frames
//! (default: the whole backlog), close, repeat.
//!
//!     target/release/chat-server --send-rate-per-sec 0 --send-burst 0 --logins-per-minute 0 --registrations-per-hour 0 --log warn \
//!         --database sqlite:///tmp/storm/chat.db --listen 127.0.0.1:8400 &
//!     cargo run --release -p chat-loadgen --example reconnect_storm -- \
//!         --url http://127.0.0.1:8400 --storm 8 --storm-users 1 --backlog 1000 --duration 10 \
//!         --server-pid "$(pgrep -f 'chat-server --send-rate')"
//!
//! `--storm-users 8` gives each storm client a user (and a backlog) of its own instead of
//! all eight sharing one. With `--server-pid` each phase also reports the server's CPU time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_loadgen::frame::{Frame, parse_frame};
use chat_loadgen::{cpu_secs, load_average};
use clap::Parser;
use futures_util::{StreamExt, TryStreamExt, stream};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Options of the reconnect storm.
#[derive(Debug, Parser)]
struct Options {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Clients reopening `/ws?since=0` in a loop.
    #[arg(long, default_value_t = 8)]
    storm: usize,
    /// Users the storm clients connect as (client k is user k mod this); each has a backlog.
    #[arg(long, default_value_t = 1)]
    storm_users: usize,
    /// Messages in each storm user's backlog.
    #[arg(long, default_value_t = 1000)]
    backlog: usize,
    /// Message frames a storm client reads before it closes; default: the whole backlog.
    #[arg(long)]
    frames: Option<usize>,
    /// Seconds of each phase (no storm, then storm).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Milliseconds between two history requests of the other user.
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Process id of the server, for its CPU time per phase.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Password of the users created.
    #[arg(long, default_value = "loadgen-password")]
    password: String,
}

/// A logged-in user: name and `Bearer` header value.
#[derive(Clone)]
struct User {
    name: String,
    bearer: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let options = Options::parse();
    let base = options.url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let prefix = chat_loadgen::auth::run_prefix();
    let user = |name: String| register(&http, &base, name, &options.password);
    let writer = user(format!("{prefix}w")).await?;
    let reader = user(format!("{prefix}a")).await?;
    let peer = user(format!("{prefix}b")).await?;
    let mut storm_users = Vec::new();
    for i in 0..options.storm_users.max(1) {
        storm_users.push(user(format!("{prefix}s{i}")).await?);
    }

    // The history the other user reads: a full page between two users.
    for i in 0..30 {
        let (from, to) = if i % 2 == 0 {
            (&reader, &peer)
        } else {
            (&peer, &reader)
        };
        send(&http, &base, from, &to.name).await?;
    }
    let started = Instant::now();
    let sends: Vec<&User> = storm_users
        .iter()
        .flat_map(|u| std::iter::repeat_n(u, options.backlog))
        .collect();
    stream::iter(sends)
        .map(|to| send(&http, &base, &writer, &to.name))
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    println!(
        "setup: {} storm user(s) with a {}-message backlog each ({:.1} s)",
        storm_users.len(),
        options.backlog,
        started.elapsed().as_secs_f64()
    );

    let history_url = format!("{base}/api/v1/message/?target={}", peer.name);
    let phase = Duration::from_secs_f64(options.duration);
    for storm in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let frames = options.frames.unwrap_or(options.backlog);
        let clients: Vec<_> = (0..if storm { options.storm } else { 0 })
            .map(|k| {
                let url = format!("{}/ws?since=0", ws_base(&base));
                let user = storm_users[k % storm_users.len()].clone();
                tokio::spawn(storm_client(url, user, frames, stop.clone(), counts.clone()))
            })
            .collect();
        let cpu_before = options.server_pid.and_then(cpu_secs);
        let (history, errors) = history_loop(&http, &history_url, &reader, phase, options.interval_ms).await;
        let cpu = options
            .server_pid
            .and_then(cpu_secs)
            .zip(cpu_before)
            .map(|(after, before)| after - before);
        stop.store(true, Ordering::Relaxed);
        let mut catch_up = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        for client in clients {
            catch_up.add(client.await?)?;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "{}: history {} requests ({} failed), p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             server CPU {}; load {}",
            if storm { "storm" } else { "quiet" },
            history.len(),
            errors,
            ms(history.value_at_quantile(0.5)),
            ms(history.value_at_quantile(0.9)),
            ms(history.value_at_quantile(0.99)),
            ms(history.max()),
            cpu.map_or("?".into(), |s| format!("{s:.2} s")),
            load_average().map_or("?".into(), |l| format!("{l:.2}")),
        );
        if storm {
            let secs = phase.as_secs_f64();
            println!(
                "  storm: {} clients over {} user(s), {} sockets opened and read ({:.1}/s), {} message frames \
                 ({:.0}/s), {} resyncs, {} failures; time from connect to the last frame read: p50 {:.1} ms, \
                 p99 {:.1} ms, max {:.1} ms",
                options.storm,
                storm_users.len(),
                counts.cycles.load(Ordering::Relaxed),
                counts.cycles.load(Ordering::Relaxed) as f64 / secs,
                counts.frames.load(Ordering::Relaxed),
                counts.frames.load(Ordering::Relaxed) as f64 / secs,
                counts.resyncs.load(Ordering::Relaxed),
                counts.failures.load(Ordering::Relaxed),
                ms(catch_up.value_at_quantile(0.5)),
                ms(catch_up.value_at_quantile(0.99)),
                ms(catch_up.max()),
            );
        }
    }
    Ok(())
}

/// What the storm clients did.
#[derive(Default)]
struct Counts {
    cycles: AtomicU64,
    frames: AtomicU64,
    resyncs: AtomicU64,
    failures: AtomicU64,
}

/// `ws://host:port` for `http://host:port`.
fn ws_base(base: &str) -> String {
    base.strip_prefix("http://")
        .map_or_else(|| base.to_owned(), |rest| format!("ws://{rest}"))
}

/// Registers and logs in `name`.
async fn register(http: &reqwest::Client, base: &str, name: String, password: &str) -> Result<User, Error> {
    let body = serde_json::json!({ "username": name, "password": password });
    let registered = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&body)
        .send()
        .await?;
    if registered.status().as_u16() != 201 {
        return Err(format!("register {name}: {}", registered.status()).into());
    }
    let login: serde_json::Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["token"].as_str().ok_or("login answer without a token")?;
    Ok(User {
        name,
        bearer: format!("Bearer {token}"),
    })
}

/// One message of about 80 characters from `from` to `to`.
async fn send(http: &reqwest::Client, base: &str, from: &User, to: &str) -> Result<(), Error> {
    let body = serde_json::json!({
        "recipient": to,
        "body": "a message of a realistic length, some eighty characters long, give or take",
    });
    http.post(format!("{base}/api/v1/message/"))
        .header("authorization", &from.bearer)
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Requests `url` as `user` every `interval_ms` for `phase`; the latency of each answer (in
/// microseconds, from the request's start to the end of its body) and the failures.
async fn history_loop(
    http: &reqwest::Client,
    url: &str,
    user: &User,
    phase: Duration,
    interval_ms: u64,
) -> (Histogram<u64>, u64) {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("1 µs to 10 min");
    let mut failures = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + phase;
    while Instant::now() < end {
        tick.tick().await;
        let start = Instant::now();
        let answer = http.get(url).header("authorization", &user.bearer).send().await;
        let ok = match answer {
            Ok(answer) if answer.status().is_success() => answer.bytes().await.is_ok(),
            _ => false,
        };
        if ok {
            latency.saturating_record(start.elapsed().as_micros() as u64);
        } else {
            failures += 1;
        }
    }
    (latency, failures)
}

/// Opens `url` as `user`, reads `frames` message frames (or up to a resync or the end of
/// the socket), closes, and starts again until `stop`. Returns the time of each cycle, in
/// microseconds.
async fn storm_client(
    url: String,
    user: User,
    frames: usize,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Histogram<u64> {
    let mut cycles = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("1 µs to 10 min");
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let cycle = tokio::time::timeout(Duration::from_secs(30), async {
            let mut request = url.as_str().into_client_request()?;
            request
                .headers_mut()
                .insert("authorization", user.bearer.parse()?);
            let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
            let mut read = 0;
            while read < frames {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => match parse_frame(&text) {
                        Frame::Message(_) => read += 1,
                        Frame::Resync => {
                            counts.resyncs.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Frame::Other => {}
                    },
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(Error::from(e)),
                    None => break,
                }
            }
            counts.frames.fetch_add(read as u64, Ordering::Relaxed);
            let _ = ws.close(None).await;
            Ok::<_, Error>(())
        })
        .await;
        match cycle {
            Ok(Ok(())) => {
                counts.cycles.fetch_add(1, Ordering::Relaxed);
                cycles.saturating_record(start.elapsed().as_micros() as u64);
            }
            _ => {
                counts.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    cycles
}
