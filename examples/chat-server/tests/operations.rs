//! The standalone server as operators' tools see it: the OpenAPI description (served, written
//! by `chat-server openapi`, and the copy in docs/ kept current), JSON logs whose request
//! spans carry the request id, and `/readyz` failing on SIGTERM while the listener still
//! accepts (`--shutdown-drain-secs`).

mod common;

use std::time::Duration;

use common::ServerProcess;
use serde_json::Value;

const DOCS_OPENAPI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

/// docs/openapi.json is what the code describes now: regenerate it with
/// `cargo run -p chat-server -- openapi --output docs/openapi.json` after changing a route.
#[test]
fn docs_openapi_json_is_current() {
    let current = chat_server::openapi_description().unwrap();
    let in_docs = std::fs::read_to_string(DOCS_OPENAPI).unwrap_or_default();
    assert!(
        in_docs == current,
        "docs/openapi.json is stale: run `cargo run -p chat-server -- openapi --output docs/openapi.json`"
    );
}

/// `chat-server openapi` prints the description and `--output` writes it, byte for byte.
#[test]
fn the_openapi_command_writes_the_description() {
    let dir = tempfile::tempdir().unwrap();
    let current = chat_server::openapi_description().unwrap();
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("openapi")
        .env("CHAT_LOG", "warn")
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert_eq!(String::from_utf8(printed.stdout).unwrap(), current);
    let written = dir.path().join("openapi.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("openapi")
        .arg("--output")
        .arg(&written)
        .env("CHAT_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&written).unwrap(), current);
}

/// A `--log` filter that does not parse stops the start with a message naming it, instead of
/// logging with another filter than the one asked for.
#[test]
fn a_bad_log_filter_is_an_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--log", "chatcore=loud", "openapi"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad --log filter \"chatcore=loud\""), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing runs after a bad setting");
}

/// The running server serves the same description at /api/v1/openapi.json, and with
/// `--log-format json` each request's log lines are JSON carrying its request id (the
/// client's, echoed in `x-request-id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_its_description_and_logs_json_with_request_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut logs) = ServerProcess::start_logging(
        dir.path(),
        &["--database", "sqlite://chat.db", "--log-format", "json"],
        "info",
    )
    .await;
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/api/v1/openapi.json", server.base))
        .header("x-request-id", "probe-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "probe-7f3a");
    let served: Value = response.json().await.unwrap();
    let current: Value = serde_json::from_str(&chat_server::openapi_description().unwrap()).unwrap();
    assert_eq!(served, current);

    // The request's log line: JSON, within the request span that names the id.
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let line = logs.recv().await.expect("the server's log ended");
            if line.contains("probe-7f3a") {
                break line;
            }
        }
    })
    .await
    .expect("a log line of the request in time");
    let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(entry["span"]["name"], "request", "{entry}");
    assert_eq!(entry["span"]["request_id"], "probe-7f3a", "{entry}");
    assert_eq!(entry["span"]["path"], "/api/v1/openapi.json", "{entry}");
    // At `info`: one line per request, with method, route, status, duration and the id.
    assert_eq!(entry["target"], "chat_server::request", "{entry}");
    assert_eq!(entry["level"], "INFO", "{entry}");
    assert_eq!(entry["span"]["method"], "GET", "{entry}");
    assert_eq!(entry["span"]["route"], "/api/v1/openapi.json", "{entry}");
    assert_eq!(entry["fields"]["status"], 200, "{entry}");
    assert!(entry["fields"]["duration_ms"].as_f64().is_some(), "{entry}");
}

/// On SIGTERM with a drain period, `/readyz` answers 503 at once while the server still
/// accepts new connections and serves them; the process then shuts down when the drain ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_on_sigterm_while_the_listener_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database", "sqlite://chat.db", "--shutdown-drain-secs", "60"],
    )
    .await;
    // A new connection for every request: each one proves the listener accepts.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let readyz = format!("{}/readyz", server.base);
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 200);

    server.signal_terminate();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let response = http.get(&readyz).send().await.expect("still accepting");
            if response.status() == 503 {
                break response.json::<Value>().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("/readyz fails soon after SIGTERM");
    assert_eq!(answer["error"], "the server is shutting down");
    let health = http.get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(health.status(), 200, "the draining server still serves");
}
