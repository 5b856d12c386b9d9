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
