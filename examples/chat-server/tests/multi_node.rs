//! Two `chat-server` processes sharing one MariaDB database and one Redis act as one message
//! center: a WebSocket client on server B receives the message POSTed to server A, and reads
//! it by id from B.

mod common;

use std::time::Duration;

use chatcore_mysql::testing::{TestDatabase, server_url};
use common::ServerProcess;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn redis_url() -> String {
    std::env::var("CHATCORE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) % 1_000_000_007
}

async fn post_json(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut request = http.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn login(http: &reqwest::Client, base: &str, name: &str) -> String {
    let credentials = json!({"username": name, "password": "a long password"});
    let session: Value = post_json(http, format!("{base}/api/v1/auth/login"), None, credentials)
        .await
        .json()
        .await
        .unwrap();
    session["token"].as_str().expect("a token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_posted_to_one_node_reaches_a_socket_on_the_other() {
    let db = TestDatabase::create("chat_multinode_")
        .await
        .expect("a test database");
    let db_url = format!("{}/{}", server_url().trim_end_matches('/'), db.name());
    let prefix = format!("chat-multinode-{}-{}:", std::process::id(), rand_suffix());
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--database",
        &db_url,
        "--redis",
        &redis_url(),
        "--redis-prefix",
        &prefix,
    ];
    let node_a = ServerProcess::start(dir.path(), &args).await;
    let node_b = ServerProcess::start(dir.path(), &args).await;
    let http = reqwest::Client::new();

    for name in ["alice", "bob"] {
        let credentials = json!({"username": name, "password": "a long password"});
        let registered = post_json(
            &http,
            format!("{}/api/v1/auth/register", node_a.base),
            None,
            credentials,
        )
        .await;
        assert_eq!(registered.status(), 201);
    }
    // Accounts live in the shared database: bob logs in on B, alice on A.
    let alice = login(&http, &node_a.base, "alice").await;
    let bob = login(&http, &node_b.base, "bob").await;

    let mut request = format!("ws://{}/ws", node_b.addr).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {bob}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("bob's socket on B");

    let mut sent_ids = Vec::new();
    for i in 0..20 {
        let body = json!({"recipient": "bob", "body": format!("across nodes {i}")});
        let response = post_json(
            &http,
            format!("{}/api/v1/message/", node_a.base),
            Some(&alice),
            body,
        )
        .await;
        assert_eq!(response.status(), 201);
        let sent: Value = response.json().await.unwrap();
        sent_ids.push(sent["id"].as_i64().unwrap());
    }
    let mut received = Vec::new();
    while received.len() < sent_ids.len() {
        let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("frame from B in time")
            .unwrap()
            .unwrap();
        if let Ok(text) = frame.to_text() {
            let frame: Value = serde_json::from_str(text).unwrap();
            received.push(frame["data"]["id"].as_i64().unwrap());
            assert_eq!(frame["message"], frame["data"]["id"].to_string());
        }
    }
    assert_eq!(received, sent_ids, "every message once, in order");

    let read = http
        .get(format!("{}/api/v1/message/{}/", node_b.base, sent_ids[0]))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.json::<Value>().await.unwrap()["body"], "across nodes 0");

    assert!(node_a.terminate().await.success());
    assert!(node_b.terminate().await.success());
}

/// The next text frame of `socket` whose `type` is `kind`, within `wait` (other frames are
/// skipped).
async fn next_of_type(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    kind: &str,
    wait: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame within {wait:?}"))
            .expect("the socket is open")
            .expect("a frame");
        if let Ok(text) = frame.to_text()
            && let Ok(value) = serde_json::from_str::<Value>(text)
            && value["type"] == kind
        {
            return value;
        }
    }
}

/// Presence and typing across nodes: alice on node A sees bob, on node B, come online and
/// type, and go offline once B is killed with -9 (no goodbye): A takes B's users for
/// offline after the configured timeout without word from B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_cross_nodes_and_a_killed_node_goes_offline() {
    let db = TestDatabase::create("chat_presence_")
        .await
        .expect("a test database");
    let db_url = format!("{}/{}", server_url().trim_end_matches('/'), db.name());
    let prefix = format!("chat-presence-{}-{}:", std::process::id(), rand_suffix());
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--database",
        &db_url,
        "--redis",
        &redis_url(),
        "--redis-prefix",
        &prefix,
        "--presence",
        "on",
        "--presence-interval-ms",
        "100",
        "--presence-grace-ms",
        "200",
        "--presence-timeout-ms",
        "1500",
    ];
    let node_a = ServerProcess::start(dir.path(), &args).await;
    let mut node_b = ServerProcess::start(dir.path(), &args).await;
    let http = reqwest::Client::new();
    let alice = common::sign_up(&http, &node_a.base, "alice").await;
    let bob = common::sign_up(&http, &node_a.base, "bob").await;
    let sent = post_json(
        &http,
        format!("{}/api/v1/message/", node_a.base),
        Some(&bob),
        json!({"recipient": "alice", "body": "hi"}),
    )
    .await;
    assert_eq!(sent.status(), 201);

    let mut alice_ws = common::open_socket(&node_a.addr, "/ws", &alice).await;
    let mut bob_ws = common::open_socket(&node_b.addr, "/ws", &bob).await;
    let wait = Duration::from_secs(15);
    let online = next_of_type(&mut alice_ws, "presence", wait).await;
    assert_eq!(
        online,
        json!({"type": "presence", "users": [{"user": "bob", "online": true, "last_seen": null}]})
    );
    // Node A's inbox knows bob is online on B.
    let inbox: Value = http
        .get(format!("{}/api/v1/conversation/", node_a.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inbox["results"][0]["online"], true, "{inbox}");

    use futures_util::SinkExt;
    bob_ws
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "typing", "to": "alice"}).to_string(),
        ))
        .await
        .unwrap();
    let typing = next_of_type(&mut alice_ws, "typing", wait).await;
    assert_eq!(
        typing,
        json!({"type": "typing", "from": "bob", "expires_in_ms": 6000})
    );

    // Kill B without a goodbye: its socket to bob stays half-open, nobody closes it.
    let killed_at = tokio::time::Instant::now();
    node_b.child.start_kill().expect("SIGKILL node B");
    node_b.child.wait().await.expect("node B ended");
    let offline = next_of_type(&mut alice_ws, "presence", wait).await;
    assert_eq!(offline["users"][0]["user"], "bob", "{offline}");
    assert_eq!(offline["users"][0]["online"], false, "{offline}");
    assert!(offline["users"][0]["last_seen"].is_string(), "{offline}");
    report_offline_after(killed_at.elapsed());
    drop(bob_ws);
    assert!(node_a.terminate().await.success());
}

/// How long the survivors took, for whoever runs the test with `--nocapture`.
fn report_offline_after(took: Duration) {
    println!("node B's users shown offline {took:?} after the kill (timeout 1.5 s)");
}
