//! Issue 16's figure: the real `chat-server` holds idle and slowloris connections while a
//! normal client sends and reads; the normal client's p99 stays low, the server's memory
//! stays bounded, and the slow connections are closed within their timeouts.
//!
//! CI runs a smaller attack (1,000 idle, 200 slowloris). The full one of BENCHMARKS.md:
//!
//! ```text
//! EDGE_IDLE=5000 EDGE_SLOW=1000 cargo test --release -p chat-server --test edge_load -- --nocapture
//! ```

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::ServerProcess;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The server's default header timeout.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Shorter than the default (60 s) to keep the test short, longer than the measurement.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How late past its timeout a connection may be closed (scheduling, a loaded machine).
const SLACK: Duration = Duration::from_secs(3);

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024.0
}

/// Connects, with at most `parallel` handshakes at once (the listen backlog is finite).
async fn connect(addr: &str, gate: &Semaphore) -> TcpStream {
    let _permit = gate.acquire().await.unwrap();
    TcpStream::connect(addr).await.expect("connect")
}

/// Waits until the server closes `stream`; returns how long that took from `since`.
async fn closed_after(mut stream: TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 256];
    // Bounded, so a connection the server never closes fails the test's assertions (it took
    // longer than its timeout) instead of hanging the run.
    let _ = tokio::time::timeout(GIVE_UP, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    since.elapsed()
}

/// How long a connection is watched for its close before the test gives up on it.
const GIVE_UP: Duration = Duration::from_secs(120);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_neither_slow_others_nor_stay() {
    let idle_count = env_count("EDGE_IDLE", 1000);
    let slow_count = env_count("EDGE_SLOW", 200);
    let requests = env_count("EDGE_REQUESTS", 2000);
    // Both ends hold a descriptor per connection.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &[
            "--database",
            "sqlite::memory:",
            "--idle-timeout-secs",
            &IDLE_TIMEOUT.as_secs().to_string(),
            // Every attacker is 127.0.0.1 here: let them all in, to load the server itself.
            "--max-connections-per-address",
            "100000",
            "--send-rate-per-sec",
            "0",
            "--send-burst",
            "0",
            "--logins-per-minute",
            "0",
            "--registrations-per-hour",
            "0",
        ],
    )
    .await;
    let pid = server.child.id().unwrap();
    let rss_before = resident_mib(pid);
    let http = reqwest::Client::new();
    let mut token = String::new();
    for name in ["alice", "bob"] {
        let credentials = json!({"username": name, "password": "a long password"});
        let registered = http
            .post(format!("{}/api/v1/auth/register", server.base))
            .json(&credentials)
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), 201);
        let session: Value = http
            .post(format!("{}/api/v1/auth/login", server.base))
            .json(&credentials)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        token = session["token"].as_str().unwrap().to_owned(); // bob's, the last
    }

    // The attack: idle sockets that never send a byte, and slowloris sockets that send one
    // header line a second and never finish.
    // Fewer handshakes in flight than the listen backlog (128): past it the kernel drops
    // connections the client already counts as open, and those never close.
    let gate = Arc::new(Semaphore::new(64));
    let established = Arc::new(AtomicUsize::new(0));
    let mut idle = Vec::with_capacity(idle_count);
    for _ in 0..idle_count {
        let (addr, gate, established) = (server.addr.clone(), gate.clone(), established.clone());
        idle.push(tokio::spawn(async move {
            let stream = connect(&addr, &gate).await;
            established.fetch_add(1, Ordering::Relaxed);
            closed_after(stream, Instant::now()).await
        }));
    }
    let mut slow = Vec::with_capacity(slow_count);
    for _ in 0..slow_count {
        let (addr, gate, established) = (server.addr.clone(), gate.clone(), established.clone());
        slow.push(tokio::spawn(async move {
            let stream = connect(&addr, &gate).await;
            established.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let (reader, mut writer) = stream.into_split();
            let drip = tokio::spawn(async move {
                let _ = writer
                    .write_all(b"GET /api/v1/user/ HTTP/1.1\r\nHost: x\r\n")
                    .await;
                for i in 0.. {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if writer
                        .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let mut reader = reader;
            let mut buf = [0u8; 256];
            let _ = tokio::time::timeout(GIVE_UP, async {
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            let took = started.elapsed();
            drip.abort();
            took
        }));
    }
    // Wait until every attacking connection is open, then measure.
    let attack_started = Instant::now();
    let deadline = attack_started + Duration::from_secs(60);
    while established.load(Ordering::Relaxed) < idle_count + slow_count {
        assert!(Instant::now() < deadline, "connections not established");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_time = attack_started.elapsed();

    let client = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(requests);
    let mut peak_rss = resident_mib(pid);
    for i in 0..requests {
        let started = Instant::now();
        let status = if i % 2 == 0 {
            client
                .post(format!("{}/api/v1/message/", server.base))
                .bearer_auth(&token)
                .json(&json!({"recipient": "alice", "body": format!("during the attack {i}")}))
                .send()
                .await
                .unwrap()
                .status()
        } else {
            client
                .get(format!("{}/api/v1/message/?target=alice", server.base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status()
        };
        latencies.push(started.elapsed());
        assert!(status.is_success(), "{status}");
        if i % 100 == 0 {
            peak_rss = peak_rss.max(resident_mib(pid));
        }
    }
    let still_open = idle.iter().chain(&slow).filter(|t| !t.is_finished()).count();
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        *latencies.last().unwrap(),
    );

    let mut slow_closed = Vec::with_capacity(slow_count);
    for task in slow {
        slow_closed.push(task.await.unwrap());
    }
    let mut idle_closed = Vec::with_capacity(idle_count);
    for task in idle {
        idle_closed.push(task.await.unwrap());
    }
    peak_rss = peak_rss.max(resident_mib(pid));
    let slow_max = slow_closed.iter().max().copied().unwrap_or_default();
    let idle_max = idle_closed.iter().max().copied().unwrap_or_default();
    println!(
        "edge load: {idle_count} idle + {slow_count} slowloris connections (opened in {connect_time:?}, \
         {still_open} still open when the measurement ended); {requests} requests (send/history alternating): \
         p50 {p50:?}, p99 {p99:?}, max {max:?}; server RSS {rss_before:.1} MiB before, peak {peak_rss:.1} MiB; \
         slowloris closed after at most {slow_max:?} (header timeout {HEADER_TIMEOUT:?}), idle after at most {idle_max:?} (idle timeout {IDLE_TIMEOUT:?})"
    );
    assert!(
        still_open >= idle_count,
        "the measurement ran after the attack had begun to close"
    );
    // The issue's bound is for a release build (BENCHMARKS.md); an unoptimized server on a
    // busy CI machine gets five times that.
    let p99_bound = Duration::from_millis(if cfg!(debug_assertions) { 50 } else { 10 });
    assert!(p99 < p99_bound, "p99 {p99:?}");
    assert!(peak_rss < 200.0, "peak RSS {peak_rss:.1} MiB");
    assert!(
        slow_max <= HEADER_TIMEOUT + SLACK,
        "a slowloris connection stayed {slow_max:?}"
    );
    assert!(
        idle_max <= IDLE_TIMEOUT + SLACK,
        "an idle connection stayed {idle_max:?}"
    );
    assert!(server.terminate().await.success());
}
