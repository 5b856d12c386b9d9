//! `/metrics` of the real binary: the series a client's requests, sends and sockets make,
//! with the values they must have; on a separate listener with `--metrics-listen`; none with
//! `--metrics off`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{ServerProcess, open_socket, post, sign_up};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

/// One sample of the Prometheus text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text format (comments skipped; label values may hold `{`, `}`, `,`
/// and escaped quotes).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).expect("a name");
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let (mut key, mut value, mut in_value, mut escaped) =
                (String::new(), String::new(), false, false);
            let end = loop {
                let (i, c) = chars.next().expect("labels end with }");
                match (in_value, c) {
                    (true, _) if escaped => {
                        value.push(c);
                        escaped = false;
                    }
                    (true, '\\') => escaped = true,
                    (true, '"') => {
                        in_value = false;
                        labels.insert(std::mem::take(&mut key), std::mem::take(&mut value));
                    }
                    (true, _) => value.push(c),
                    (false, '"') => in_value = true,
                    (false, '}') => break i,
                    (false, '=' | ',') => {}
                    (false, _) => key.push(c),
                }
            };
            rest = &inner[end + 1..];
        }
        let value = rest.trim().split(' ').next().expect("a value");
        samples.push((name, labels, value.parse().expect("a number")));
    }
    samples
}

/// The sum of the samples named `name` whose labels include `labels`; `None` when no series
/// matches.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

async fn scrape(http: &reqwest::Client, url: &str) -> Vec<Sample> {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    parse(&response.text().await.unwrap())
}

/// Scrapes until `check` holds (the server updates a gauge when a socket task ends, after the
/// client saw the close), at most 10 s.
async fn scrape_until(http: &reqwest::Client, url: &str, check: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape(http, url).await;
        if check(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "metrics never got there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_frame(
    socket: &mut (impl StreamExt<Item = Result<Frame, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a frame");
        if let Frame::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_sends_sockets_catch_ups_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database", "sqlite://chat.db", "--catch-up-limit", "2"],
    )
    .await;
    let http = reqwest::Client::new();
    let base = &server.base;
    let metrics_url = format!("{base}/metrics");
    let alice = sign_up(&http, base, "alice").await;
    let bob = sign_up(&http, base, "bob").await;
    let mut live = open_socket(&server.addr, "/ws", &bob).await;
    // The socket's task counts itself once the upgrade is through, maybe after the client
    // has its 101.
    let before = scrape_until(&http, &metrics_url, |s| {
        value(s, "chatcore_ws_open_sockets", &[]) == Some(1.0)
    })
    .await;
    let writes_before = value(
        &before,
        "chatcore_store_commit_batch_size_sum",
        &[("backend", "sqlite")],
    )
    .unwrap();

    let mut ids = Vec::new();
    let send_url = format!("{base}/api/v1/message/");
    for body in ["one", "two", "three"] {
        let sent = post(
            &http,
            send_url.clone(),
            Some(&alice),
            json!({"recipient": "bob", "body": body}),
        )
        .await;
        let sent: Value = sent.json().await.unwrap();
        assert_eq!(next_frame(&mut live).await["message"], sent["id"].to_string());
        ids.push(sent["id"].as_i64().unwrap());
    }
    let unknown = post(
        &http,
        send_url,
        Some(&alice),
        json!({"recipient": "nobody", "body": "hi"}),
    )
    .await;
    assert_eq!(unknown.status(), 404);
    for id in &ids[..2] {
        let got = http
            .get(format!("{base}/api/v1/message/{id}/"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
    }
    assert_eq!(
        http.get(format!("{base}/no/such/page"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // Missed the last two (within the limit of 2): a catch-up replays them. Missed all three:
    // a resync.
    let mut caught_up = open_socket(&server.addr, &format!("/ws?since={}", ids[0]), &bob).await;
    assert_eq!(next_frame(&mut caught_up).await["position"], ids[1]);
    assert_eq!(next_frame(&mut caught_up).await["position"], ids[2]);
    let mut resynced = open_socket(&server.addr, "/ws?since=0", &bob).await;
    assert_eq!(next_frame(&mut resynced).await["type"], "resync");
    resynced.close(None).await.unwrap();

    let after = scrape_until(&http, &metrics_url, |s| {
        value(s, "chatcore_ws_closed_total", &[("reason", "client_gone")]) == Some(1.0)
            && value(s, "chatcore_ws_open_sockets", &[]) == Some(2.0)
    })
    .await;
    let count = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels);
    assert_eq!(count("chatcore_sends_total", &[("outcome", "stored")]), Some(3.0));
    assert_eq!(
        count("chatcore_sends_total", &[("outcome", "refused")]),
        Some(1.0)
    );
    let send_route = [("route", "/api/v1/message/"), ("method", "POST")];
    assert_eq!(
        count(
            "chatcore_http_requests_total",
            &[send_route[0], send_route[1], ("status", "201")]
        ),
        Some(3.0)
    );
    assert_eq!(
        count(
            "chatcore_http_requests_total",
            &[send_route[0], send_route[1], ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        count(
            "chatcore_http_request_duration_seconds_count",
            &[send_route[0], send_route[1], ("status", "201")]
        ),
        Some(3.0)
    );
    // The route template, never the path: both reads are one series.
    let get_route = [
        ("route", "/api/v1/message/{id}/"),
        ("method", "GET"),
        ("status", "200"),
    ];
    assert_eq!(count("chatcore_http_requests_total", &get_route), Some(2.0));
    assert_eq!(
        count(
            "chatcore_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert!(
        after
            .iter()
            .all(|(_, labels, _)| labels.get("route").is_none_or(|r| !r.contains("no/such")))
    );
    // Each send's frame was written to bob's live socket; the catch-up's frames came from
    // storage and are not timed.
    assert_eq!(count("chatcore_ws_delivery_seconds_count", &[]), Some(3.0));
    let seconds = count("chatcore_ws_delivery_seconds_sum", &[]).unwrap();
    assert!(
        seconds > 0.0 && seconds < 15.0,
        "three deliveries took {seconds} s"
    );
    assert_eq!(count("chatcore_catch_ups_total", &[]), Some(2.0));
    assert_eq!(count("chatcore_catch_up_events_total", &[]), Some(2.0));
    assert_eq!(count("chatcore_resyncs_total", &[]), Some(1.0));
    assert_eq!(
        count("chatcore_ws_closed_total", &[]),
        Some(1.0),
        "only the resynced socket ended"
    );
    // The SQLite writer took four jobs, in one or more batches: the three messages, and the
    // send to nobody (the writer looks the recipient up in its transaction).
    let writes = count("chatcore_store_commit_batch_size_sum", &[("backend", "sqlite")]).unwrap();
    assert_eq!(writes - writes_before, 4.0);
    assert!(count("chatcore_store_commit_seconds_count", &[("backend", "sqlite")]).unwrap() >= 1.0);
    assert!(count("chatcore_store_fsync_seconds_count", &[("backend", "sqlite")]).unwrap() >= 1.0);
    drop((live, caught_up));
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_metrics_apart_and_metrics_off_serves_none() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &[
            "--database",
            "sqlite://chat.db",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let metrics_url = server
        .metrics_url
        .clone()
        .expect("the metrics address is printed");
    assert_ne!(metrics_url, format!("{}/metrics", server.base));
    let on_main = http.get(format!("{}/metrics", server.base)).send().await.unwrap();
    assert_eq!(on_main.status(), 404);
    assert_eq!(
        on_main.json::<Value>().await.unwrap(),
        json!({"error": "no such path"})
    );
    let samples = scrape(&http, &metrics_url).await;
    // The main listener's 404 for /metrics is counted there, unmatched.
    assert_eq!(
        value(
            &samples,
            "chatcore_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&samples, "chatcore_ws_open_sockets", &[]), Some(0.0));
    server.terminate().await;

    let off = ServerProcess::start(dir.path(), &["--database", "sqlite://off.db", "--metrics", "off"]).await;
    assert_eq!(off.metrics_url, None);
    assert_eq!(
        http.get(format!("{}/metrics", off.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    off.terminate().await;

    let contradiction = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .current_dir(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "off",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!contradiction.status.success());
    assert!(
        String::from_utf8_lossy(&contradiction.stderr).contains("--metrics off contradicts --metrics-listen")
    );
}

/// A client that stops reading fills its receive window; the server gives up on it after
/// `--ws-send-timeout-ms`, drops it (counted as `lagging`) and goes on serving the user's
/// other socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_as_lagging() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &[
            "--database",
            "sqlite://chat.db",
            "--ws-send-timeout-ms",
            "300",
            "--max-message-chars",
            "60000",
            "--max-request-bytes",
            "262144",
            "--send-rate-per-sec",
            "0",
            "--send-burst",
            "0",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let base = &server.base;
    let metrics_url = format!("{base}/metrics");
    let alice = sign_up(&http, base, "alice").await;
    let bob = sign_up(&http, base, "bob").await;

    // The stalled client: a small receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr.parse().unwrap()).await.unwrap();
    let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {bob}").parse().unwrap());
    let (mut stalled, _) = tokio_tungstenite::client_async(request, stream).await.unwrap();
    let mut healthy = open_socket(&server.addr, "/ws", &bob).await;
    scrape_until(&http, &metrics_url, |s| {
        value(s, "chatcore_ws_open_sockets", &[]) == Some(2.0)
    })
    .await;

    let body = "x".repeat(50_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    let last = loop {
        let answer = post(
            &http,
            format!("{base}/api/v1/message/"),
            Some(&alice),
            json!({"recipient": "bob", "body": format!("{sent} {body}")}),
        )
        .await;
        assert_eq!(answer.status(), 201);
        let id = answer.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
        sent += 1;
        // The healthy socket keeps up with every message, the stalled one does not.
        assert_eq!(next_frame(&mut healthy).await["position"], id);
        if sent % 5 == 0 {
            let samples = scrape(&http, &metrics_url).await;
            if value(&samples, "chatcore_ws_closed_total", &[("reason", "lagging")]) == Some(1.0) {
                break id;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{sent} messages of 50 KB and the stalled socket is still open"
        );
    };
    let after = scrape_until(&http, &metrics_url, |s| {
        value(s, "chatcore_ws_open_sockets", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(
        value(&after, "chatcore_ws_closed_total", &[]),
        Some(1.0),
        "only the stalled one"
    );

    // The stalled client finds its stream cut short: what the kernel held, then the end,
    // without the last message.
    let mut positions = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(frame)) = stalled.next().await {
            if let Frame::Text(text) = frame {
                let frame: Value = serde_json::from_str(&text).unwrap();
                positions.extend(frame["position"].as_i64());
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server ended the stalled socket");
    assert!(!positions.contains(&last), "{positions:?} holds {last}");

    // The healthy one still gets what comes next.
    let answer = post(
        &http,
        format!("{base}/api/v1/message/"),
        Some(&alice),
        json!({"recipient": "bob", "body": "still here?"}),
    )
    .await;
    let id = answer.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    assert_eq!(next_frame(&mut healthy).await["position"], id);
}
