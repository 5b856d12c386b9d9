//! Webhooks (`--webhook-url`) and the HTTP send policy (`--policy-url`) of the real
//! `chat-server` binary, against real HTTP receivers this test starts on 127.0.0.1:
//! signatures that verify, retries after 500s, 4xx and a receiver that was down, no loss and no
//! reordering across a `kill -9` and a restart, sends that do not wait for a receiver that holds
//! every request, and each answer of a policy (and its fallback).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::{ServerProcess, post, sign_up};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::watch;

const SECRET: &str = "a webhook secret for the tests";
/// Long enough for a debug build on a busy machine; every wait ends as soon as its event comes.
const WAIT: Duration = Duration::from_secs(60);

/// One request a receiver took.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    json: Value,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

/// What the receiver does with each request, and what it saw.
#[derive(Default)]
struct ReceiverState {
    /// Requests answered 2xx, in the order they were answered.
    accepted: Mutex<Vec<Received>>,
    /// Every attempt: (delivery id, attempt number, status answered).
    attempts: Mutex<Vec<(String, String, u16)>>,
    /// Requests that arrived (held ones included).
    arrived: AtomicUsize,
    /// Statuses to answer, in turn, before accepting (500, 400, ...).
    refuse_with: Mutex<Vec<u16>>,
    /// Requests arriving once this many were accepted wait until `release` turns true.
    hold_after: AtomicUsize,
    release: Option<watch::Sender<bool>>,
    /// Bumped on every change, for waiters.
    changed: Option<watch::Sender<u64>>,
    /// Requests taken by the policy route.
    questions: Mutex<Vec<Received>>,
    policy_calls: AtomicU32,
}

impl ReceiverState {
    fn new() -> Self {
        Self {
            hold_after: AtomicUsize::new(usize::MAX),
            release: Some(watch::channel(false).0),
            changed: Some(watch::channel(0).0),
            ..Default::default()
        }
    }

    fn bump(&self) {
        self.changed
            .as_ref()
            .unwrap()
            .send_modify(|version| *version += 1);
    }
}

/// A real HTTP receiver on 127.0.0.1: `POST /hook` (webhooks) and `POST /policy`.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::new(ReceiverState::new()))
    }

    fn serve(listener: tokio::net::TcpListener, state: Arc<ReceiverState>) -> Self {
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .route("/policy", axum::routing::post(policy))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    fn hook_url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn policy_url(&self) -> String {
        format!("http://{}/policy", self.addr)
    }

    fn accepted(&self) -> Vec<Received> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// Waits until `check` holds over the accepted requests.
    async fn wait_for(&self, what: &str, check: impl Fn(&ReceiverState) -> bool) {
        let mut changed = self.state.changed.as_ref().unwrap().subscribe();
        tokio::time::timeout(WAIT, async {
            while !check(&self.state) {
                changed.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the receiver never saw {what}"));
    }

    /// Waits until every message id in `ids` was accepted at least once.
    async fn wait_for_messages(&self, ids: &[i64]) {
        self.wait_for(&format!("the {} messages", ids.len()), |state| {
            let accepted = state.accepted.lock().unwrap();
            ids.iter().all(|id| {
                accepted
                    .iter()
                    .any(|r| r.json["type"] == "message" && r.json["position"] == *id)
            })
        })
        .await;
    }

    fn release(&self) {
        self.state.release.as_ref().unwrap().send_replace(true);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn hook(State(state): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    state.arrived.fetch_add(1, Ordering::SeqCst);
    state.bump();
    if state.accepted.lock().unwrap().len() >= state.hold_after.load(Ordering::SeqCst) {
        let mut release = state.release.as_ref().unwrap().subscribe();
        while !*release.borrow_and_update() {
            release.changed().await.unwrap();
        }
    }
    let delivery = headers["x-chatcore-delivery"].to_str().unwrap().to_owned();
    let attempt = headers["x-chatcore-attempt"].to_str().unwrap().to_owned();
    let refusal = {
        let mut refuse = state.refuse_with.lock().unwrap();
        (!refuse.is_empty()).then(|| refuse.remove(0))
    };
    let status = refusal.unwrap_or(200);
    state.attempts.lock().unwrap().push((delivery, attempt, status));
    if refusal.is_none() {
        let json = serde_json::from_slice(&body).expect("a webhook body is JSON");
        state
            .accepted
            .lock()
            .unwrap()
            .push(Received { headers, body, json });
    }
    state.bump();
    StatusCode::from_u16(status).unwrap()
}

/// The policy: what it answers depends on the body.
async fn policy(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    state.policy_calls.fetch_add(1, Ordering::SeqCst);
    let question: Value = serde_json::from_slice(&body).expect("a policy question is JSON");
    state.questions.lock().unwrap().push(Received {
        headers,
        body,
        json: question.clone(),
    });
    state.bump();
    let text = question["body"].as_str().unwrap().to_owned();
    let answer = |value: Value| axum::Json(value).into_response();
    match text.as_str() {
        "buy cheap pills" => answer(json!({"action": "reject", "reason": "no spam", "status": 403})),
        "you idiot" => answer(json!({"action": "reject", "reason": "be nice", "status": 422})),
        "teapot" => answer(json!({"action": "reject", "reason": "?", "status": 418})),
        "garbage" => (StatusCode::OK, "this is not JSON").into_response(),
        "broken" => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        "slow" => std::future::pending().await,
        shout if shout.starts_with("shout ") => {
            answer(json!({"action": "rewrite", "body": shout.to_uppercase()}))
        }
        _ => answer(json!({"action": "allow"})),
    }
}

/// The flags every server here runs with: no rate or account limits, quick retries.
fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec![
        "--database",
        "sqlite://chat.db",
        "--send-rate-per-sec",
        "0",
        "--send-burst",
        "0",
        "--registrations-per-hour",
        "0",
        "--logins-per-minute",
        "0",
        "--webhook-retry-initial-ms",
        "20",
        "--webhook-retry-max-ms",
        "100",
        "--webhook-poll-ms",
        "10",
    ];
    flags.extend_from_slice(extra);
    flags
}

/// Sends `body` from `token` to `to`: the status and the answer.
async fn send(http: &reqwest::Client, base: &str, token: &str, to: &str, body: &str) -> (u16, Value) {
    let response = post(
        http,
        format!("{base}/api/v1/message/"),
        Some(token),
        json!({"recipient": to, "body": body}),
    )
    .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Sends and expects 201: the message's id (its position).
async fn send_ok(http: &reqwest::Client, base: &str, token: &str, to: &str, body: &str) -> i64 {
    let (status, answer) = send(http, base, token, to, body).await;
    assert_eq!(status, 201, "{answer}");
    answer["id"].as_i64().expect("an id")
}

/// The sum of the `/metrics` samples named `name` whose labels include `labels`.
async fn metric(http: &reqwest::Client, base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
        .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Scrapes until the metric reaches `at_least`.
async fn wait_for_metric(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) {
    tokio::time::timeout(WAIT, async {
        while metric(http, base, name, labels).await < at_least {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} {labels:?} never reached {at_least}"));
}

fn hmac_hex(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Every event arrives as its frame, signed over `<timestamp>.<body>` with the secret (and
/// not with another), with a delivery id made of the endpoint and the position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_with_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let url = receiver.hook_url();
    let server = ServerProcess::start(
        dir.path(),
        &flags(&["--webhook-url", &url, "--webhook-secret", SECRET]),
    )
    .await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    let bob = sign_up(&http, &server.base, "bob").await;
    let first = send_ok(&http, &server.base, &alice, "bob", "hello bob").await;
    let second = send_ok(&http, &server.base, &bob, "alice", "hi alice").await;
    let read = post(
        &http,
        format!("{}/api/v1/conversation/alice/read", server.base),
        Some(&bob),
        json!({"up_to": first}),
    )
    .await;
    assert_eq!(read.status(), 200);
    receiver
        .wait_for("three events", |state| state.accepted.lock().unwrap().len() >= 3)
        .await;

    let accepted = receiver.accepted();
    let kinds: Vec<&str> = accepted
        .iter()
        .map(|r| r.json["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["message", "message", "read"],
        "one conversation, in feed order"
    );
    assert_eq!(accepted[0].json["data"]["body"], "hello bob");
    assert_eq!(accepted[0].json["position"], first);
    assert_eq!(accepted[1].json["position"], second);
    assert_eq!(accepted[2].json["reader"], "bob");
    assert_eq!(accepted[2].json["up_to"], first);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut endpoints = std::collections::HashSet::new();
    for request in &accepted {
        let timestamp = request.header("x-chatcore-timestamp");
        let signature = request.header("x-chatcore-signature");
        assert_eq!(
            signature,
            hmac_hex(SECRET, timestamp, &request.body),
            "verifies with the secret"
        );
        assert_ne!(
            signature,
            hmac_hex("another secret of the same size!", timestamp, &request.body),
            "fails with another secret"
        );
        let mut tampered = request.body.to_vec();
        tampered[0] = b' ';
        assert_ne!(
            signature,
            hmac_hex(SECRET, timestamp, &tampered),
            "fails for another body"
        );
        assert!(
            now.abs_diff(timestamp.parse().unwrap()) < 300,
            "a current timestamp"
        );
        assert_eq!(request.header("content-type"), "application/json");
        assert_eq!(request.header("x-chatcore-event"), request.json["type"]);
        assert_eq!(request.header("x-chatcore-attempt"), "1");
        let (endpoint, position) = request.header("x-chatcore-delivery").rsplit_once('-').unwrap();
        assert_eq!(position, request.json["position"].to_string());
        endpoints.insert(endpoint.to_owned());
    }
    assert_eq!(endpoints.len(), 1, "one endpoint id");
    // The server counts a delivery once it has read the answer, after the receiver kept it.
    let delivered = [("outcome", "delivered")];
    wait_for_metric(
        &http,
        &server.base,
        "chatcore_webhook_deliveries_total",
        &delivered,
        3.0,
    )
    .await;
    assert_eq!(
        metric(
            &http,
            &server.base,
            "chatcore_webhook_deliveries_total",
            &delivered
        )
        .await,
        3.0
    );
}

/// With `--webhook-events-per-post 5`, events arrive as `{"events":[...]}` POSTs of at most
/// five frames (and never more than one feed read, `--webhook-batch 7`), signed, in feed
/// order across conversations, with `<endpoint>-<first>-<last>` delivery ids; a failed batch
/// is retried whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_can_carry_several_events_per_post() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    receiver.state.refuse_with.lock().unwrap().push(500);
    let url = receiver.hook_url();
    // The events are written first, without webhooks, so the feed reads' sizes are known: a
    // new endpoint starts from the first event.
    let mut server = ServerProcess::start(dir.path(), &flags(&[])).await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    let bob = sign_up(&http, &server.base, "bob").await;
    let carol = sign_up(&http, &server.base, "carol").await;
    let mut ids = Vec::new();
    for round in 0..6 {
        ids.push(send_ok(&http, &server.base, &alice, "bob", &format!("a{round}")).await);
        ids.push(send_ok(&http, &server.base, &carol, "alice", &format!("c{round}")).await);
    }
    let read = post(
        &http,
        format!("{}/api/v1/conversation/alice/read", server.base),
        Some(&bob),
        json!({"up_to": ids[10]}),
    )
    .await;
    assert_eq!(read.status(), 200);
    server.child.kill().await.unwrap();
    let _server = ServerProcess::start(
        dir.path(),
        &flags(&[
            "--webhook-url",
            &url,
            "--webhook-secret",
            SECRET,
            "--webhook-events-per-post",
            "5",
            "--webhook-batch",
            "7",
        ]),
    )
    .await;
    let events_of = |request: &Received| request.json["events"].as_array().unwrap().clone();
    receiver
        .wait_for("thirteen events", |state| {
            let accepted = state.accepted.lock().unwrap();
            accepted
                .iter()
                .map(|r| r.json["events"].as_array().unwrap().len())
                .sum::<usize>()
                >= 13
        })
        .await;

    let accepted = receiver.accepted();
    let mut positions = Vec::new();
    for request in &accepted {
        let timestamp = request.header("x-chatcore-timestamp");
        assert_eq!(
            request.header("x-chatcore-signature"),
            hmac_hex(SECRET, timestamp, &request.body)
        );
        assert_eq!(request.header("x-chatcore-event"), "batch");
        let events = events_of(request);
        assert!(
            (1..=5).contains(&events.len()),
            "{} events in one POST",
            events.len()
        );
        let first = events[0]["position"].as_i64().unwrap();
        let last = events[events.len() - 1]["position"].as_i64().unwrap();
        let delivery = request.header("x-chatcore-delivery");
        assert!(delivery.ends_with(&format!("-{first}-{last}")), "{delivery}");
        positions.extend(events.iter().map(|event| event["position"].as_i64().unwrap()));
    }
    let mut expected = ids.clone();
    expected.push(positions[positions.len() - 1]);
    assert_eq!(positions, expected, "every event once, in feed order");
    let last = &events_of(&accepted[accepted.len() - 1]);
    assert_eq!(last[last.len() - 1]["type"], "read");
    assert_eq!(events_of(&accepted[0])[0]["data"]["body"], "a0");
    // The first POST was answered 500 and came again whole: same delivery id, attempt 2.
    let attempts = receiver.state.attempts.lock().unwrap().clone();
    assert_eq!(attempts[0].2, 500);
    assert_eq!(
        (attempts[1].0.as_str(), attempts[1].1.as_str(), attempts[1].2),
        (attempts[0].0.as_str(), "2", 200)
    );
    // Seven events per feed read, five per POST: 5 + 2 + 5 + 1 events.
    let sizes: Vec<usize> = accepted.iter().map(|r| events_of(r).len()).collect();
    assert_eq!(sizes, [5, 2, 5, 1]);
}

/// A delivery answered 500, 500, then 400 is retried (same delivery id, attempts 1 to 4)
/// until the receiver takes it, and counted; the next event waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_retry_after_500s_and_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    *receiver.state.refuse_with.lock().unwrap() = vec![500, 500, 400];
    let url = receiver.hook_url();
    let server = ServerProcess::start(
        dir.path(),
        &flags(&["--webhook-url", &url, "--webhook-secret", SECRET]),
    )
    .await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    sign_up(&http, &server.base, "bob").await;
    let first = send_ok(&http, &server.base, &alice, "bob", "one").await;
    let second = send_ok(&http, &server.base, &alice, "bob", "two").await;
    receiver.wait_for_messages(&[first, second]).await;

    let attempts = receiver.state.attempts.lock().unwrap().clone();
    let (delivery, _, _) = &attempts[0];
    assert!(delivery.ends_with(&format!("-{first}")), "{delivery}");
    let summary: Vec<(&str, &str, u16)> = attempts
        .iter()
        .map(|(d, a, s)| (if d == delivery { "first" } else { "second" }, a.as_str(), *s))
        .collect();
    assert_eq!(
        summary,
        [
            ("first", "1", 500),
            ("first", "2", 500),
            ("first", "3", 400),
            ("first", "4", 200),
            ("second", "1", 200)
        ]
    );
    wait_for_metric(
        &http,
        &server.base,
        "chatcore_webhook_deliveries_total",
        &[("outcome", "delivered")],
        2.0,
    )
    .await;
    let count = |outcome: &'static str| {
        let (http, base) = (&http, &server.base);
        async move {
            metric(
                http,
                base,
                "chatcore_webhook_deliveries_total",
                &[("outcome", outcome)],
            )
            .await
        }
    };
    assert_eq!(count("failed").await, 2.0);
    assert_eq!(count("refused").await, 1.0);
    assert_eq!(count("delivered").await, 2.0);
    assert_eq!(
        metric(&http, &server.base, "chatcore_webhook_retries_total", &[]).await,
        3.0
    );
}

/// A receiver that is down at first: deliveries fail as unreachable and are retried, and
/// once it listens again every event arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_retry_until_a_receiver_that_was_down_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    // Take a free port, and close it: nothing listens there until the receiver starts.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/hook");
    let server = ServerProcess::start(
        dir.path(),
        &flags(&["--webhook-url", &url, "--webhook-secret", SECRET]),
    )
    .await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    sign_up(&http, &server.base, "bob").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(send_ok(&http, &server.base, &alice, "bob", &format!("message {n}")).await);
    }
    let unreachable = [("outcome", "unreachable")];
    wait_for_metric(
        &http,
        &server.base,
        "chatcore_webhook_deliveries_total",
        &unreachable,
        3.0,
    )
    .await;

    let receiver = Receiver::serve(
        tokio::net::TcpListener::bind(addr).await.unwrap(),
        Arc::new(ReceiverState::new()),
    );
    receiver.wait_for_messages(&ids).await;
    let positions: Vec<i64> = receiver
        .accepted()
        .iter()
        .map(|r| r.json["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, ids, "each once, in order");
    assert!(metric(&http, &server.base, "chatcore_webhook_retries_total", &[]).await >= 3.0);
}

/// kill -9 of the server while deliveries are under way, then a restart on the same
/// database: every event arrives (some twice), and in each conversation the events arrive
/// in feed order (a duplicate only repeats one seen before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_lose_and_reorder_nothing_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    // Take 20 events, then hold every request: the server dies with deliveries in flight.
    receiver.state.hold_after.store(20, Ordering::SeqCst);
    let url = receiver.hook_url();
    let hook_flags = flags(&[
        "--webhook-url",
        &url,
        "--webhook-secret",
        SECRET,
        "--webhook-batch",
        "7",
        "--webhook-concurrency",
        "3",
    ]);
    let mut server = ServerProcess::start(dir.path(), &hook_flags).await;
    let http = reqwest::Client::new();
    let names = ["alice", "bob", "carol", "dave"];
    let mut tokens = HashMap::new();
    for name in names {
        tokens.insert(name, sign_up(&http, &server.base, name).await);
    }
    let pairs = [
        ("alice", "bob"),
        ("carol", "dave"),
        ("bob", "carol"),
        ("dave", "alice"),
    ];
    let mut ids = Vec::new();
    for round in 0..12 {
        for (n, (from, to)) in pairs.iter().enumerate() {
            let (from, to) = if (round + n) % 3 == 0 {
                (to, from)
            } else {
                (from, to)
            };
            ids.push(send_ok(&http, &server.base, &tokens[from], to, &format!("{round}")).await);
        }
    }
    // A read marker in the middle of the stream.
    let read = post(
        &http,
        format!("{}/api/v1/conversation/alice/read", server.base),
        Some(&tokens["bob"]),
        json!({"up_to": ids[20]}),
    )
    .await;
    assert_eq!(read.status(), 200);
    receiver
        .wait_for("held deliveries", |state| {
            let accepted = state.accepted.lock().unwrap().len();
            accepted >= 20 && state.arrived.load(Ordering::SeqCst) > accepted
        })
        .await;
    server.child.kill().await.unwrap(); // SIGKILL
    assert!(receiver.accepted().len() >= 20);

    let server = ServerProcess::start(dir.path(), &hook_flags).await;
    receiver.release();
    for round in 12..15 {
        for (from, to) in pairs {
            ids.push(send_ok(&http, &server.base, &tokens[from], to, &format!("{round}")).await);
        }
    }
    receiver.wait_for_messages(&ids).await;
    receiver
        .wait_for("the read marker", |state| {
            state
                .accepted
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.json["type"] == "read")
        })
        .await;

    // Per conversation, the first time each event arrived is in feed order.
    let mut seen: HashMap<(String, String), Vec<i64>> = HashMap::new();
    let mut first_seen = std::collections::HashSet::new();
    for request in receiver.accepted() {
        let json = &request.json;
        let (a, b) = match json["type"].as_str().unwrap() {
            "message" => (&json["data"]["user"], &json["data"]["recipient"]),
            _ => (&json["reader"], &json["peer"]),
        };
        let (a, b) = (a.as_str().unwrap().to_owned(), b.as_str().unwrap().to_owned());
        let key = if a <= b { (a, b) } else { (b, a) };
        let position = json["position"].as_i64().unwrap();
        if first_seen.insert(position) {
            let sequence = seen.entry(key.clone()).or_default();
            assert!(
                sequence.last().is_none_or(|last| *last < position),
                "{key:?}: {position} arrived after {sequence:?}"
            );
            sequence.push(position);
        }
    }
    assert_eq!(
        first_seen.len(),
        ids.len() + 1,
        "every message and the read marker"
    );
}

/// A receiver that holds every request does not hold sends: they all complete while it
/// holds the first delivery; once it lets go, every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_does_not_slow_sends() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    receiver.state.hold_after.store(0, Ordering::SeqCst);
    let url = receiver.hook_url();
    // The held request never times out, so it is the only one.
    let server = ServerProcess::start(
        dir.path(),
        &flags(&[
            "--webhook-url",
            &url,
            "--webhook-secret",
            SECRET,
            "--webhook-timeout-ms",
            "3600000",
        ]),
    )
    .await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    sign_up(&http, &server.base, "bob").await;
    let first = send_ok(&http, &server.base, &alice, "bob", "first").await;
    receiver
        .wait_for("the first delivery", |state| {
            state.arrived.load(Ordering::SeqCst) >= 1
        })
        .await;
    let mut ids = vec![first];
    for n in 0..50 {
        ids.push(send_ok(&http, &server.base, &alice, "bob", &format!("message {n}")).await);
    }
    assert!(
        receiver.accepted().is_empty(),
        "the receiver still holds the first delivery"
    );
    assert_eq!(
        receiver.state.arrived.load(Ordering::SeqCst),
        1,
        "one conversation: one at a time"
    );
    receiver.release();
    receiver.wait_for_messages(&ids).await;
}

/// `--policy-url`: allow, reject (403 and 422 with the policy's reason), rewrite, and the
/// reject fallback for a policy that is late, answers garbage, fails or answers a status it
/// may not; each call counted by outcome. The policy is asked with the sender, the
/// recipient and the body, signed like the webhooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_answers_and_the_reject_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let url = receiver.policy_url();
    let server = ServerProcess::start(
        dir.path(),
        &flags(&[
            "--policy-url",
            &url,
            "--policy-timeout-ms",
            "300",
            "--policy-fallback",
            "reject",
            "--webhook-secret",
            SECRET,
        ]),
    )
    .await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    let bob = sign_up(&http, &server.base, "bob").await;
    let base = &server.base;

    let allowed = send_ok(&http, base, &alice, "bob", "hello").await;
    let question = receiver.state.questions.lock().unwrap()[0].clone();
    assert_eq!(
        question.json,
        json!({"sender": "alice", "recipient": "bob", "body": "hello"})
    );
    let timestamp = question.header("x-chatcore-timestamp");
    assert_eq!(
        question.header("x-chatcore-signature"),
        hmac_hex(SECRET, timestamp, &question.body)
    );

    assert_eq!(
        send(&http, base, &alice, "bob", "buy cheap pills").await,
        (403, json!({"error": "no spam"}))
    );
    assert_eq!(
        send(&http, base, &alice, "bob", "you idiot").await,
        (422, json!({"error": "be nice"}))
    );
    let (status, rewritten) = send(&http, base, &alice, "bob", "shout hello").await;
    assert_eq!((status, rewritten["body"].as_str()), (201, Some("SHOUT HELLO")));
    let fallback = json!({"error": "the message could not be checked, try again later"});
    for body in ["slow", "garbage", "broken", "teapot"] {
        assert_eq!(
            send(&http, base, &alice, "bob", body).await,
            (403, fallback.clone()),
            "{body}"
        );
    }

    // Only the allowed and the rewritten messages were stored.
    let history: Value = http
        .get(format!("{base}/api/v1/message/?target=alice"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut bodies: Vec<&str> = history["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    bodies.sort_unstable();
    assert_eq!(bodies, ["SHOUT HELLO", "hello"], "{history}");
    assert!(allowed > 0);

    let calls = |outcome: &'static str| {
        let http = &http;
        async move { metric(http, base, "chatcore_policy_calls_total", &[("outcome", outcome)]).await }
    };
    assert_eq!(calls("allow").await, 1.0);
    assert_eq!(calls("reject").await, 2.0);
    assert_eq!(calls("rewrite").await, 1.0);
    assert_eq!(calls("timed_out").await, 1.0);
    assert_eq!(calls("bad_answer").await, 2.0, "garbage and a 418");
    assert_eq!(calls("failed").await, 1.0);
}

/// With `--policy-fallback allow` (the default), a policy that is late or answers garbage
/// lets the message through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_allow_fallback_stores_unchecked_messages() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let url = receiver.policy_url();
    let server = ServerProcess::start(
        dir.path(),
        &flags(&["--policy-url", &url, "--policy-timeout-ms", "200"]),
    )
    .await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    sign_up(&http, &server.base, "bob").await;
    for body in ["slow", "garbage", "broken"] {
        let (status, message) = send(&http, &server.base, &alice, "bob", body).await;
        assert_eq!((status, message["body"].as_str()), (201, Some(body)));
    }
    assert_eq!(
        send(&http, &server.base, &alice, "bob", "buy cheap pills")
            .await
            .0,
        403,
        "an answer still counts"
    );
    let question = receiver.state.questions.lock().unwrap()[0].clone();
    assert!(
        question.headers.get("x-chatcore-signature").is_none(),
        "no secret, no signature"
    );
    assert_eq!(receiver.state.policy_calls.load(Ordering::SeqCst), 4);
}

/// Bad hook settings stop the start with a message naming them.
#[test]
fn bad_hook_settings_are_errors() {
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--database", "sqlite::memory:", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("CHAT_LOG", "warn")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(
        run(&["--webhook-url", "http://127.0.0.1:9/hook"]).contains("--webhook-url needs --webhook-secret")
    );
    assert!(
        run(&[
            "--webhook-url",
            "ftp://127.0.0.1/hook",
            "--webhook-secret",
            SECRET
        ])
        .contains("only http://")
    );
    assert!(run(&["--webhook-url", "not a url", "--webhook-secret", SECRET]).contains("is not a URL"));
    assert!(run(&["--policy-url", "localhost:9000"]).contains("--policy-url"));
    assert!(run(&["--webhook-url", "http://h/x", "--webhook-secret", "short"]).contains("at least 16 bytes"));
    assert!(
        run(&[
            "--webhook-url",
            "http://h/x,http://h/x",
            "--webhook-secret",
            SECRET
        ])
        .contains("given twice")
    );
    assert!(
        run(&[
            "--webhook-url",
            "http://h/x",
            "--webhook-secret",
            SECRET,
            "--webhook-retry-initial-ms",
            "1000",
            "--webhook-retry-max-ms",
            "10"
        ])
        .contains("--webhook-retry-max-ms must be at least")
    );
}
