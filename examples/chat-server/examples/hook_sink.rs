//! A webhook receiver and allow-all policy for measurements (BENCHMARKS.md, issue 23):
//!
//! ```text
//! cargo run --release -p chat-server --example hook_sink -- 127.0.0.1:9900 'the webhook secret'
//! ```
//!
//! - `POST /hook`: checks the signature (`X-Chatcore-Signature` over `<timestamp>.<body>`; a
//!   wrong one is answered 401 and counted), answers 204, and for each message records its
//!   lag: the time of receipt minus the message's `timestamp` (its commit). Takes one event
//!   per POST or `{"events":[...]}` (`--webhook-events-per-post`); counts events, and
//!   duplicates by position.
//! - `POST /policy`: answers `{"action":"allow"}`.
//! - `GET /stats`: `{"received","bad_signatures","duplicates","lag_ms":{"p50","p99","max"}}`
//!   since the last `GET /stats`, then starts again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

#[derive(Default)]
struct Stats {
    lags_us: Vec<u64>,
    received: u64,
    bad_signatures: u64,
    positions: HashSet<i64>,
    duplicates: u64,
}

struct Sink {
    secret: Vec<u8>,
    stats: Mutex<Stats>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9900".into());
    let secret = args.next().ok_or("usage: hook_sink ADDRESS SECRET")?;
    let sink = Arc::new(Sink {
        secret: secret.into_bytes(),
        stats: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .route(
            "/policy",
            post(|| async { axum::Json(json!({"action": "allow"})) }),
        )
        .route("/stats", get(stats))
        .with_state(sink);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("hook_sink listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The verification a receiver does: HMAC-SHA256 of `<timestamp>.<body>`, compared in
/// constant time.
fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let (Some(timestamp), Some(signature)) = (header("x-chatcore-timestamp"), header("x-chatcore-signature"))
    else {
        return false;
    };
    let Some(Ok(signature)) = signature.strip_prefix("sha256=").map(hex::decode) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

async fn hook(State(sink): State<Arc<Sink>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = chrono::Utc::now();
    if !verify(&sink.secret, &headers, &body) {
        sink.stats.lock().unwrap().bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    // One event, or `{"events": [...]}` with --webhook-events-per-post above 1.
    let events = match payload.get("events").and_then(Value::as_array) {
        Some(events) => events.clone(),
        None => vec![payload],
    };
    let mut stats = sink.stats.lock().unwrap();
    for event in events {
        stats.received += 1;
        // Positions are unique and survive any batching: the key for duplicates.
        if !stats.positions.insert(event["position"].as_i64().unwrap_or(-1)) {
            stats.duplicates += 1;
        }
        let committed = event["data"]["timestamp"]
            .as_str()
            .and_then(|timestamp| chrono::DateTime::parse_from_rfc3339(timestamp).ok());
        if let Some(committed) = committed {
            let lag = (now - committed.with_timezone(&chrono::Utc))
                .num_microseconds()
                .unwrap_or(0);
            stats.lags_us.push(lag.max(0) as u64);
        }
    }
    StatusCode::NO_CONTENT
}

async fn stats(State(sink): State<Arc<Sink>>) -> axum::Json<Value> {
    let mut stats = std::mem::take(&mut *sink.stats.lock().unwrap());
    stats.lags_us.sort_unstable();
    let at = |q: f64| {
        let lags = &stats.lags_us;
        if lags.is_empty() {
            return 0.0;
        }
        lags[((lags.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
    };
    axum::Json(json!({
        "received": stats.received,
        "bad_signatures": stats.bad_signatures,
        "duplicates": stats.duplicates,
        "lag_ms": {"p50": at(0.5), "p99": at(0.99), "max": at(1.0)},
    }))
}
