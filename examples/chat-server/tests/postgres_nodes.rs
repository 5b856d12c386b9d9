//! Two `chat-server` processes on PostgreSQL alone (`--database postgres://...`, no Redis):
//! the default notifier is then PostgreSQL LISTEN/NOTIFY, and the two act as one message
//! center. 200 messages from 4 senders, posted alternately to either server: every socket
//! (the recipient's and each sender's, on both servers) gets each of its messages exactly once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chatcore_postgres::testing::TestDatabase;
use common::ServerProcess;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SENDERS: usize = 4;
const EACH: usize = 50;

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

async fn socket(node: &ServerProcess, token: &str) -> Socket {
    let mut request = format!("ws://{}/ws", node.addr).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .expect("a socket")
        .0
}

/// Reads message frames until `want` ids arrived (failing after a quiet 10 s), then checks
/// that nothing more comes within a short grace period (a duplicate would).
async fn collect(socket: &mut Socket, want: usize, what: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    let read = async |socket: &mut Socket, patience: Duration| -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(patience, socket.next()).await.ok()??.ok()?;
            if let Ok(text) = frame.to_text()
                && !text.is_empty()
            {
                return Some(serde_json::from_str(text).unwrap());
            }
        }
    };
    while ids.len() < want {
        let frame = read(socket, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{what}: stuck at {} of {want} messages", ids.len()));
        if frame["type"] == "message" {
            ids.push(frame["data"]["id"].as_i64().unwrap());
        }
    }
    // Presence frames (users of these conversations coming online) may come too; nothing else.
    while let Some(extra) = read(socket, Duration::from_millis(300)).await {
        assert_eq!(
            extra["type"], "presence",
            "{what}: a frame beyond the {want} messages: {extra}"
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_postgres_alone_deliver_every_message_once_to_every_socket() {
    let db = TestDatabase::create("chat_pg_nodes_")
        .await
        .expect("a test database");
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    let args = [
        "--database",
        url.as_str(),
        "--send-rate-per-sec",
        "0",
        "--send-burst",
        "0",
        "--logins-per-minute",
        "0",
        "--registrations-per-hour",
        "0",
    ];
    let nodes = [
        ServerProcess::start(dir.path(), &args).await,
        ServerProcess::start(dir.path(), &args).await,
    ];
    let http = reqwest::Client::new();
    let names: Vec<String> = (0..SENDERS)
        .map(|k| format!("sender{k}"))
        .chain(["bob".to_owned()])
        .collect();
    let mut tokens = HashMap::new();
    for name in &names {
        let credentials = json!({"username": name, "password": "a long password"});
        let registered = post_json(
            &http,
            format!("{}/api/v1/auth/register", nodes[0].base),
            None,
            credentials,
        )
        .await;
        assert_eq!(registered.status(), 201);
        tokens.insert(name.clone(), login(&http, &nodes[1].base, name).await);
    }
    // Every user has a socket on each server.
    let mut sockets = Vec::new();
    for name in &names {
        for (n, node) in nodes.iter().enumerate() {
            sockets.push((name.clone(), n, socket(node, &tokens[name]).await));
        }
    }

    let senders: Vec<_> = (0..SENDERS)
        .map(|k| {
            let token = tokens[&format!("sender{k}")].clone();
            let bases = [nodes[0].base.clone(), nodes[1].base.clone()];
            let http = http.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let body = json!({"recipient": "bob", "body": format!("{k}.{i}")});
                    let url = format!("{}/api/v1/message/", bases[(k + i) % 2]);
                    let response = post_json(&http, url, Some(&token), body).await;
                    assert_eq!(response.status(), 201);
                    ids.push(response.json::<Value>().await.unwrap()["id"].as_i64().unwrap());
                }
                ids
            })
        })
        .collect();
    let mut sent: HashMap<String, Vec<i64>> = HashMap::new();
    for (k, sender) in senders.into_iter().enumerate() {
        let ids = sender.await.unwrap();
        sent.entry("bob".into()).or_default().extend(&ids);
        sent.insert(format!("sender{k}"), ids);
    }
    assert_eq!(sent["bob"].len(), SENDERS * EACH);

    for (name, node, socket) in &mut sockets {
        let mut want = sent[name.as_str()].clone();
        let what = format!("{name}'s socket on server {node}");
        let mut got = collect(socket, want.len(), &what).await;
        let mut unique = got.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), got.len(), "{what}: a message arrived twice");
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{what}: exactly the messages sent to or by {name}");
    }
    for (_, _, mut socket) in sockets {
        let _ = socket.close(None).await;
    }
    for node in nodes {
        assert!(node.terminate().await.success());
    }
}
