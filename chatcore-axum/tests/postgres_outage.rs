//! PostgreSQL goes away under a running server and comes back: requests answer 503 with
//! `Retry-After` within the configured timeout (no hang), and once the database is back the
//! same server stores, reads and notifies again without a restart (the store's pool and the
//! `PgNotifier`'s listening connection reconnect by themselves); `/readyz` follows: 503 while
//! the database is down, 200 once it is back. Runs a PostgreSQL of the
//! test's own (`initdb` and `pg_ctl` on a free port in a temporary directory), never the
//! machine's one.

mod suite;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::Backend;
use chatcore_postgres::testing::PrivateServer;
use chatcore_postgres::{PgNotifier, PgNotifierConfig, PostgresConfig, PostgresStore};
use suite::app::*;

/// The store's wait for a connection: what a request may take while the database is down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_postgres_answers_503_in_time_and_the_server_recovers_without_a_restart() {
    suite::app::init_logs();
    let server = PrivateServer::start().await.expect("a private PostgreSQL");
    server.create_database("chat").await.unwrap();
    let url = server.url("chat");
    let config = PostgresConfig {
        acquire_timeout: ACQUIRE_TIMEOUT,
        statement_timeout: Duration::from_secs(2),
        max_connections: 4,
        ..PostgresConfig::default()
    };
    let store = PostgresStore::connect(&url, config).await.unwrap();
    store.migrate().await.unwrap();
    let notifier = PgNotifier::connect(
        &url,
        PgNotifierConfig {
            reconnect_min_delay: Duration::from_millis(50),
            reconnect_max_delay: Duration::from_millis(500),
            ..PgNotifierConfig::default()
        },
    )
    .await
    .unwrap();
    let options = Options {
        notifier: Some(Arc::new(notifier.clone())),
        ..Default::default()
    };
    let app = TestApp::spawn_with(Arc::new(store), options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut bob_ws = app.ws(&bob, None).await;
    let before = app.send(&alice, "bob", "before the outage").await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(frame_id(&mut bob_ws).await, before);
    close(bob_ws).await;
    let probes = reqwest::Client::new();
    let readyz = app.url("/readyz");
    assert_eq!(probes.get(&readyz).send().await.unwrap().status(), 200);

    server.stop().await.expect("stop the private PostgreSQL");
    let client = app.client(&alice);
    let post = || {
        client
            .post(app.url("/api/v1/message/"))
            .json(&serde_json::json!({"recipient": "bob", "body": "while down"}))
            .send()
    };
    for attempt in ["send", "read"] {
        let started = Instant::now();
        let response = if attempt == "send" {
            post().await.unwrap()
        } else {
            client.get(app.url("/api/v1/message/")).send().await.unwrap()
        };
        let took = started.elapsed();
        assert_eq!(response.status(), 503, "{attempt} while PostgreSQL is down");
        let retry_after = response
            .headers()
            .get("retry-after")
            .unwrap_or_else(|| panic!("{attempt}: 503 without Retry-After"));
        assert!(retry_after.to_str().unwrap().parse::<u64>().unwrap() >= 1);
        assert!(
            took < ACQUIRE_TIMEOUT + Duration::from_secs(2),
            "{attempt} answered after {took:?}, beyond the {ACQUIRE_TIMEOUT:?} acquire timeout"
        );
    }
    let started = Instant::now();
    let probe = probes.get(&readyz).send().await.unwrap();
    assert_eq!(probe.status(), 503, "/readyz while PostgreSQL is down");
    assert!(started.elapsed() < ACQUIRE_TIMEOUT + Duration::from_secs(2));
    let body: serde_json::Value = probe.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");

    server
        .start_again()
        .await
        .expect("start the private PostgreSQL again");
    // The first calls may meet connections that died with the server; the pool replaces them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let response = post().await.unwrap();
        if response.status() == 201 {
            break response.json::<serde_json::Value>().await.unwrap()["id"]
                .as_i64()
                .unwrap();
        }
        assert_eq!(response.status(), 503, "only 503 while recovering");
        assert!(
            Instant::now() < deadline,
            "the server did not recover within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(stored > before);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !notifier.is_connected() {
        assert!(
            Instant::now() < deadline,
            "the notifier did not reconnect within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    while probes.get(&readyz).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "/readyz did not recover within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bob comes back with `since` and gets what was stored meanwhile, then live messages.
    let mut bob_ws = app.ws(&bob, Some(before)).await;
    assert_eq!(frame_id(&mut bob_ws).await, stored);
    let live = app.send(&alice, "bob", "after the outage").await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(frame_id(&mut bob_ws).await, live);
    close(bob_ws).await;
}
