//! The `chat-server` binary as an operator and a client see it: subcommands, the UI and bench
//! routes, the API on SQLite, and graceful shutdown with close frames.

mod common;

use std::time::Duration;

use common::ServerProcess;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    Message as Frame, client::IntoClientRequest, protocol::frame::coding::CloseCode,
};

fn operator(dir: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    common::operator(dir, "sqlite://ops.db", args, stdin)
}

#[test]
fn operator_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let migrate = operator(dir.path(), &["migrate"], "");
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let again = operator(dir.path(), &["migrate"], "");
    assert!(again.status.success(), "migrating twice is a no-op");

    for name in ["carol", "alice"] {
        let out = operator(
            dir.path(),
            &["create-user", name, "--password-stdin"],
            "a long password\n",
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("created user {name}")));
    }
    let taken = operator(
        dir.path(),
        &["create-user", "alice", "--password-stdin"],
        "a long password\n",
    );
    assert!(!taken.status.success());
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("taken"),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let short = operator(
        dir.path(),
        &["create-user", "dave", "--password-stdin"],
        "short\n",
    );
    assert!(!short.status.success(), "a short password is refused");

    // Without a terminal (stdin is a pipe here) create-user says how to give the password.
    let no_tty = operator(dir.path(), &["create-user", "erin"], "");
    assert!(!no_tty.status.success());
    assert!(
        String::from_utf8_lossy(&no_tty.stderr).contains("--password-stdin"),
        "{}",
        String::from_utf8_lossy(&no_tty.stderr)
    );

    // A read-only command on a mistyped path reports it and creates nothing there; global
    // options may also follow the subcommand.
    let typo = operator(dir.path(), &["list-users", "--database", "sqlite://opps.db"], "");
    assert!(!typo.status.success());
    let error = String::from_utf8_lossy(&typo.stderr);
    assert!(error.contains("no database at opps.db"), "{error}");
    assert!(!dir.path().join("opps.db").exists(), "no file was created");

    // An unopenable database: the error names it (without its password) and what to do.
    let missing_dir = operator(
        dir.path(),
        &["migrate", "--database", "sqlite://no/such/dir/x.db"],
        "",
    );
    let error = String::from_utf8_lossy(&missing_dir.stderr);
    assert!(!missing_dir.status.success());
    assert!(
        error.contains("cannot open the database sqlite://no/such/dir/x.db (check the path"),
        "{error}"
    );
    let mysql = std::env::var("CHATCORE_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    if let Some(server) = mysql
        .strip_prefix("mysql://")
        .and_then(|rest| rest.split('/').next())
    {
        // The server's own user, plus a password that must not be printed.
        let host = server.rsplit('@').next().unwrap_or(server);
        let user = server
            .split_once('@')
            .map_or("root", |(user, _)| user.split(':').next().unwrap_or("root"));
        let url = format!("mysql://{user}:not-printed@{host}/chatcore_no_such_database");
        let unknown = operator(dir.path(), &["migrate", "--database", &url], "");
        let error = String::from_utf8_lossy(&unknown.stderr);
        assert!(!unknown.status.success());
        assert!(!error.contains("not-printed"), "the password stays out: {error}");
        assert!(error.contains(&format!("mysql://{user}:***@{host}")), "{error}");
        // With the server's own credentials: the database itself is missing (1049).
        let url = format!("mysql://{server}/chatcore_no_such_database");
        let unknown = operator(dir.path(), &["migrate", "--database", &url], "");
        let error = String::from_utf8_lossy(&unknown.stderr);
        assert!(error.contains("create the database first"), "{error}");
    }

    let list = operator(dir.path(), &["list-users"], "");
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(names, ["alice", "carol"]);

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--database",
        "--redis",
        "--send-rate-per-sec",
        "--send-burst",
        "--max-request-bytes",
        "--max-message-chars",
        "--page-size",
        "--catch-up-limit",
        "CHAT_DATABASE_URL",
        "[default: 127.0.0.1:8000]",
    ] {
        assert!(help.contains(flag), "--help documents {flag}");
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--database", "redis://nope", "migrate"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unsupported database URL"));
}

async fn login(http: &reqwest::Client, base: &str, name: &str) -> String {
    let registered = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"username": name, "password": "a long password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let session: Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": name, "password": "a long password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    session["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_ui_api_and_websocket_then_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database", "sqlite://chat.db", "--bench-endpoints"],
    )
    .await;
    let http = reqwest::Client::new();
    let base = &server.base;

    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<script type="module" src="ui/chatcore-app.js">"#),
        "{html}"
    );
    assert!(html.contains("<chatcore-app fullscreen"), "{html}");
    for (asset, media) in [
        ("/ui/chatcore-app.js", "text/javascript; charset=utf-8"),
        ("/ui/chatcore-app.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let answer = http.get(format!("{base}{asset}")).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{asset}");
        assert_eq!(answer.headers()["content-type"], media, "{asset}");
        assert_eq!(answer.headers()["x-content-type-options"], "nosniff", "{asset}");
    }
    let echo = http
        .post(format!("{base}/_bench/echo"))
        .json(&json!({"recipient": "bob", "body": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(echo.status(), 201);
    assert_eq!(
        echo.json::<Value>().await.unwrap(),
        json!({"recipient": "bob", "body": "hi"})
    );

    let alice = login(&http, base, "alice").await;
    let bob = login(&http, base, "bob").await;
    let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {bob}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("bob's socket");

    let sent: Value = http
        .post(format!("{base}/api/v1/message/"))
        .bearer_auth(&alice)
        .json(&json!({"recipient": "bob", "body": " hi bob "}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sent["body"], "hi bob");
    let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let frame: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(frame["message"], sent["id"].to_string());
    assert_eq!(frame["data"], sent);

    // SIGTERM: the socket gets a close frame ("going away"), the process exits 0.
    let status = tokio::spawn(server.terminate());
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("close frame in time")
        {
            Some(Ok(Frame::Close(close))) => break close,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Away));
    let _ = socket.send(Frame::Close(None)).await;
    assert!(status.await.unwrap().success());

    // The data survived the shutdown: a new server on the same file serves the message.
    let again = ServerProcess::start(dir.path(), &["--database", "sqlite://chat.db"]).await;
    let read = http
        .get(format!("{}/api/v1/message/{}/", again.base, sent["id"]))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.json::<Value>().await.unwrap()["body"], "hi bob");
    assert!(again.terminate().await.success());
}
