//! Issue 16 on the real binary: SIGTERM while a client never finishes its request, and a
//! start while Redis is down.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::ServerProcess;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_period_although_a_request_never_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database", "sqlite::memory:", "--shutdown-grace-secs", "1"],
    )
    .await;
    // A request whose body never comes (the body timeout, 10 s, is longer than the grace).
    let mut half = TcpStream::connect(&server.addr).await.unwrap();
    half.write_all(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    // And one that never finishes its head.
    let mut slow = TcpStream::connect(&server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let status = server.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "took {took:?} with a 1 s grace period"
    );
    for stream in [&mut half, &mut slow] {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection was left open");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The answer to an authenticated `/ws` upgrade: 101, or the status of the refusal.
async fn ws_status(addr: &str, token: &str) -> u16 {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            if status == 503 {
                let body = response.body().as_deref().unwrap_or_default();
                let json: Value = serde_json::from_slice(body).expect("a JSON error");
                assert!(json["error"].is_string(), "{json}");
            }
            status
        }
        Err(error) => panic!("upgrade failed: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down_and_connects_when_it_comes_back() {
    let port = free_port();
    let redis = format!("redis://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start(dir.path(), &["--database", "sqlite::memory:", "--redis", &redis]).await;
    let http = reqwest::Client::new();
    let credentials = json!({"username": "alice", "password": "a long password"});
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
    let token = session["token"].as_str().unwrap().to_owned();
    // Serving without Redis: REST works, /ws is 503 as during an outage at run time.
    assert_eq!(ws_status(&server.addr, &token).await, 503);

    // This test's own Redis, on the port the server was told.
    let redis_dir = tempfile::tempdir().unwrap();
    let _redis = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(redis_dir.path())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server could not be started (is Redis installed?): this test runs a Redis of its own");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = ws_status(&server.addr, &token).await;
        if status == 101 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "the server never connected to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.terminate().await.success());
}
