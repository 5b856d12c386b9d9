//! What an operator's tooling sees: `/healthz`, `/readyz` (storage, notifications, the
//! drain before a shutdown) and request ids, on a real server (127.0.0.1 port 0, reqwest)
//! over real stores and a real Redis (`CHATCORE_REDIS_URL`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use chatcore::{Backend, ChatConfig, ChatService, LocalNotifier, Notifier};
use chatcore_axum::{ChatApi, REQUEST_ID_HEADER, SessionAuthenticator, SessionConfig, ShutdownHandle};
use chatcore_redis::{RedisConfig, RedisNotifier};
use chatcore_sqlite::{SqliteConfig, SqliteStore};
use serde_json::Value;
use tokio::task::JoinHandle;

struct Server {
    base: String,
    shutdown: ShutdownHandle,
    served: JoinHandle<std::io::Result<()>>,
}

async fn serve(store: Arc<dyn Backend>, notifier: Arc<dyn Notifier>, wrap: fn(Router) -> Router) -> Server {
    let chat = ChatService::new(store.clone(), notifier, ChatConfig::default());
    let auth = SessionAuthenticator::new(store, SessionConfig::default()).unwrap();
    let api = ChatApi::new(chat, auth.clone()).with_auth_routes(auth);
    let shutdown = api.shutdown_handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let served = tokio::spawn(chatcore_axum::serve(
        listener,
        wrap(Router::new().merge(api.router())),
        shutdown.clone(),
    ));
    Server {
        base,
        shutdown,
        served,
    }
}

async fn sqlite() -> Arc<SqliteStore> {
    let store = Arc::new(SqliteStore::open(SqliteConfig::memory()).await.unwrap());
    store.migrate().await.unwrap();
    store
}

/// A client that opens a new connection for every request, so a request proves that the
/// listener still accepts.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn probe(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Ready while storage answers; 503 naming storage once it does not (the store closed: every
/// call fails as with a database that went away), while `/healthz` still answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_store() {
    let store = sqlite().await;
    let server = serve(store.clone(), Arc::new(LocalNotifier::default()), |r| r).await;
    let http = reqwest::Client::new();
    let (status, body) = probe(&http, &format!("{}/readyz", server.base)).await;
    assert_eq!((status, &body["status"]), (200, &Value::from("ready")), "{body}");
    let (status, body) = probe(&http, &format!("{}/healthz", server.base)).await;
    assert_eq!((status, &body["status"]), (200, &Value::from("ok")), "{body}");

    store.close().await.unwrap();
    let response = http.get(format!("{}/readyz", server.base)).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("storage"), "{body}");
    let (status, _) = probe(&http, &format!("{}/healthz/", server.base)).await;
    assert_eq!(status, 200, "liveness does not depend on storage");
    server.shutdown.shutdown();
    server.served.await.unwrap().unwrap();
}

/// Ready with a connected Redis; with a Redis that does not answer the server still starts
/// (cross-node notifications are an outage, not a crash) but `/readyz` is 503 naming
/// notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_notifier() {
    let http = reqwest::Client::new();
    let redis_url =
        std::env::var("CHATCORE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("readyz-{}:", std::process::id());
    let connected = RedisNotifier::connect(RedisConfig {
        url: redis_url,
        channel_prefix: prefix.clone(),
        ..Default::default()
    })
    .await
    .expect("connect to Redis at CHATCORE_REDIS_URL");
    let up = serve(sqlite().await, Arc::new(connected), |r| r).await;
    let (status, body) = probe(&http, &format!("{}/readyz", up.base)).await;
    assert_eq!(status, 200, "{body}");

    // A port nothing listens on: connection refused.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let disconnected = RedisNotifier::connect_in_background(RedisConfig {
        url: format!("redis://127.0.0.1:{closed_port}"),
        channel_prefix: prefix,
        ..Default::default()
    })
    .await
    .expect("a Redis that is down is an outage, not an error at start");
    let down = serve(sqlite().await, Arc::new(disconnected), |r| r).await;
    let (status, body) = probe(&http, &format!("{}/readyz", down.base)).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("notifications"),
        "{body}"
    );
    for server in [up, down] {
        server.shutdown.shutdown();
        server.served.await.unwrap().unwrap();
    }
}

/// A drain announces the shutdown: `/readyz` turns 503 while the listener still accepts new
/// connections and every other route serves; only the shutdown closes the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_listener_still_accepts() {
    let server = serve(sqlite().await, Arc::new(LocalNotifier::default()), |r| r).await;
    let http = fresh_connections();
    assert_eq!(probe(&http, &format!("{}/readyz", server.base)).await.0, 200);

    server.shutdown.drain();
    let (status, body) = probe(&http, &format!("{}/readyz", server.base)).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "the server is shutting down");
    // New connections are still accepted and served.
    assert_eq!(probe(&http, &format!("{}/healthz", server.base)).await.0, 200);
    let registered = http
        .post(format!("{}/api/v1/auth/register", server.base))
        .json(&serde_json::json!({"username": "alice", "password": "a long password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    assert!(!server.served.is_finished());

    server.shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(15), server.served)
        .await
        .expect("the server stops after the shutdown")
        .unwrap()
        .unwrap();
    assert!(
        http.get(format!("{}/healthz", server.base)).send().await.is_err(),
        "the listener is closed"
    );
}

/// Every answer carries `x-request-id`: the client's when it is sane, a fresh UUID when the
/// client sent none or one unfit for the logs; JSON errors too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_echo_request_ids() {
    let server = serve(
        sqlite().await,
        Arc::new(LocalNotifier::default()),
        chatcore_axum::with_request_ids,
    )
    .await;
    let http = reqwest::Client::new();
    let id_of =
        |response: &reqwest::Response| response.headers()[REQUEST_ID_HEADER].to_str().unwrap().to_owned();
    let kept = http
        .get(format!("{}/healthz", server.base))
        .header("x-request-id", "lb-7f3a:42")
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&kept), "lb-7f3a:42");

    let fresh = http
        .get(format!("{}/api/v1/user/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 401, "an error answer carries one too");
    let generated = id_of(&fresh);
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    let long = "x".repeat(chatcore_axum::MAX_REQUEST_ID_BYTES + 1);
    for unfit in ["two words", long.as_str()] {
        let replaced = http
            .get(format!("{}/healthz", server.base))
            .header("x-request-id", unfit)
            .send()
            .await
            .unwrap();
        let id = id_of(&replaced);
        assert_ne!(id, unfit);
        assert_eq!(id.len(), 36, "{id}");
    }
    let another = http.get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_ne!(id_of(&another), generated, "each request gets its own id");
    server.shutdown.shutdown();
    server.served.await.unwrap().unwrap();
}
