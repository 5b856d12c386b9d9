//! The operator's account subcommands (`set-password`, `delete-user`, `revoke-sessions`): on
//! SQLite with no server running, and as a separate process beside a running server, whose
//! open WebSocket of that user closes: through the session recheck on MySQL without redis,
//! through the notifier on PostgreSQL.

mod common;

use std::time::Duration;

use common::{ServerProcess, operator, post, sign_up};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn account_subcommands_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = "sqlite://ops.db";
    let run = |args: &[&str], stdin: &str| operator(dir.path(), db, args, stdin);
    // Nothing to change in a database that does not exist: none is created.
    let error = failed(&run(&["revoke-sessions", "alice"], ""));
    assert!(error.contains("no database at ops.db"), "{error}");
    assert!(!dir.path().join("ops.db").exists());
    for name in ["alice", "bob"] {
        succeeded(&run(
            &["create-user", name, "--password-stdin"],
            "a long password\n",
        ));
    }

    let out = succeeded(&run(
        &["set-password", "ALICE", "--password-stdin"],
        "a new password\n",
    ));
    assert!(
        out.contains("set the password of alice; ended 0 session(s)"),
        "{out}"
    );
    assert!(
        out.contains("--ws-session-recheck-secs"),
        "says when sockets close: {out}"
    );
    let error = failed(&run(&["set-password", "alice", "--password-stdin"], "short\n"));
    assert!(error.contains("at least 8 characters"), "{error}");
    let error = failed(&run(&["set-password", "alice"], ""));
    assert!(error.contains("--password-stdin"), "{error}");
    let error = failed(&run(
        &["set-password", "nobody", "--password-stdin"],
        "a new password\n",
    ));
    assert!(
        error.contains("no user named \"nobody\"") && error.contains("list-users"),
        "{error}"
    );

    let out = succeeded(&run(&["revoke-sessions", "alice"], ""));
    assert!(out.contains("ended 0 session(s) of alice"), "{out}");
    let error = failed(&run(&["revoke-sessions", "nobody"], ""));
    assert!(error.contains("no user named"), "{error}");

    // No terminal to confirm: --yes is needed, and nothing is deleted without it.
    let error = failed(&run(&["delete-user", "alice"], "alice\n"));
    assert!(error.contains("--yes"), "{error}");
    let out = succeeded(&run(&["delete-user", "alice", "--yes"], ""));
    assert!(out.contains("deleted user alice: 0 message(s) erased"), "{out}");
    let listed = succeeded(&run(&["list-users"], ""));
    let names: Vec<&str> = listed.lines().filter_map(|l| l.split('\t').nth(1)).collect();
    assert_eq!(names, ["bob"], "a deleted user is not listed");
    let error = failed(&run(
        &["create-user", "Alice", "--password-stdin"],
        "a long password\n",
    ));
    assert!(error.contains("taken"), "the name stays reserved: {error}");
    let error = failed(&run(
        &["set-password", "alice", "--password-stdin"],
        "a new password\n",
    ));
    assert!(
        error.contains("not found"),
        "a deleted account gets no password: {error}"
    );
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket(server: &ServerProcess, token: &str) -> Socket {
    common::open_socket(&server.addr, "/ws", token).await
}

/// The next frame that is not a ping or a pong, within `wait`.
async fn next_frame(socket: &mut Socket, wait: Duration) -> Frame {
    loop {
        let frame = tokio::time::timeout(wait, socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a frame");
        if !matches!(frame, Frame::Ping(_) | Frame::Pong(_)) {
            return frame;
        }
    }
}

fn close_code(frame: &Frame) -> u16 {
    match frame {
        Frame::Close(Some(close)) => u16::from(close.code),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

async fn session_status(http: &reqwest::Client, base: &str, token: &str) -> u16 {
    http.get(format!("{base}/api/v1/auth/session"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// MySQL without redis: the command's revocation does not reach the server, whose socket
/// learns it at its next session check (every second here) and closes with 4001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_sessions_from_another_process_closes_the_socket_at_the_recheck() {
    let db = chatcore_mysql::testing::TestDatabase::create("chat_revoke_")
        .await
        .expect("a test database");
    let url = format!(
        "{}/{}",
        chatcore_mysql::testing::server_url().trim_end_matches('/'),
        db.name()
    );
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database", &url, "--ws-session-recheck-secs", "1"],
    )
    .await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    let bob = sign_up(&http, &server.base, "bob").await;
    let mut alice_ws = socket(&server, &alice).await;
    let mut bob_ws = socket(&server, &bob).await;
    assert_eq!(session_status(&http, &server.base, &alice).await, 200);

    let (dir_path, url_arg) = (dir.path().to_owned(), url.clone());
    let out =
        tokio::task::spawn_blocking(move || operator(&dir_path, &url_arg, &["revoke-sessions", "alice"], ""))
            .await
            .unwrap();
    let out = succeeded(&out);
    assert!(out.contains("ended 1 session(s) of alice"), "{out}");
    assert_eq!(
        close_code(&next_frame(&mut alice_ws, Duration::from_secs(10)).await),
        4001
    );
    // The check also dropped the session from the server's cache.
    assert_eq!(session_status(&http, &server.base, &alice).await, 401);
    // Bob's socket is untouched.
    let sent = post(
        &http,
        format!("{}/api/v1/message/", server.base),
        Some(&bob),
        json!({"recipient": "bob", "body": "still here"}),
    )
    .await;
    assert_eq!(sent.status(), 201);
    let frame = next_frame(&mut bob_ws, Duration::from_secs(5)).await;
    assert!(frame.to_text().unwrap().contains("still here"), "{frame:?}");
    assert!(server.terminate().await.success());
}

/// PostgreSQL: the commands reach the running server through its notifier at once (the
/// recheck is off): a new password closes the socket, a deletion tombstones the messages at
/// the peer's socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_password_and_delete_user_reach_a_running_server_through_postgres() {
    let db = chatcore_postgres::testing::TestDatabase::create("chat_accounts_")
        .await
        .expect("a test database");
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database", &url, "--ws-session-recheck-secs", "0"],
    )
    .await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    let bob = sign_up(&http, &server.base, "bob").await;
    let mut sent = Vec::new();
    for body in ["one", "two"] {
        let response = post(
            &http,
            format!("{}/api/v1/message/", server.base),
            Some(&alice),
            json!({"recipient": "bob", "body": body}),
        )
        .await;
        assert_eq!(response.status(), 201);
        sent.push(response.json::<Value>().await.unwrap()["id"].as_i64().unwrap());
    }
    let mut alice_ws = socket(&server, &alice).await;
    let mut bob_ws = socket(&server, &bob).await;

    let operate = |args: &'static [&'static str], stdin: &'static str| {
        let (dir, url) = (dir.path().to_owned(), url.clone());
        tokio::task::spawn_blocking(move || operator(&dir, &url, args, stdin))
    };
    let out = succeeded(
        &operate(
            &["set-password", "alice", "--password-stdin"],
            "another password\n",
        )
        .await
        .unwrap(),
    );
    assert!(
        out.contains("ended 1 session(s)") && out.contains("close at once"),
        "{out}"
    );
    assert_eq!(
        close_code(&next_frame(&mut alice_ws, Duration::from_secs(10)).await),
        4001
    );
    // The server's session cache heard the same notification (on its own subscription, so
    // maybe a moment after the socket did).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while session_status(&http, &server.base, &alice).await != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cached session outlived its revocation"
        );
        tokio::task::yield_now().await;
    }
    let login = |password: &'static str| {
        post(
            &http,
            format!("{}/api/v1/auth/login", server.base),
            None,
            json!({"username": "alice", "password": password}),
        )
    };
    assert_eq!(login("a long password").await.status(), 401);
    assert_eq!(login("another password").await.status(), 200);

    let out = succeeded(&operate(&["delete-user", "alice", "--yes"], "").await.unwrap());
    assert!(out.contains("deleted user alice: 2 message(s) erased"), "{out}");
    for id in sent {
        let frame = next_frame(&mut bob_ws, Duration::from_secs(10)).await;
        let event: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(event["type"], "delete", "{event}");
        assert_eq!(
            (&event["data"]["id"], &event["data"]["body"]),
            (&json!(id), &json!(""))
        );
    }
    assert_eq!(login("another password").await.status(), 401);
    assert!(server.terminate().await.success());
}

/// A SQLite file is held by the running server: the command says to stop it, and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_sqlite_file_held_by_a_server_the_command_says_to_stop_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--database", "sqlite://chat.db"]).await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    let dir_path = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        operator(&dir_path, "sqlite://chat.db", &["revoke-sessions", "alice"], "")
    })
    .await
    .unwrap();
    let error = failed(&out);
    assert!(error.contains("Stop it first"), "{error}");
    assert_eq!(session_status(&http, &server.base, &alice).await, 200);
    assert!(server.terminate().await.success());
}
