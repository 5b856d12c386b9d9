//! The operator's account subcommands (`set-password`, `delete-user`, `revoke-sessions`, ...):
//! on SQLite with no server running; as a separate process beside a running server, whose
//! open WebSocket of that user closes: through the session recheck on MySQL without redis,
//! through the notifier on PostgreSQL; and in the running server that holds a SQLite file,
//! through its control socket.

mod common;

use std::path::Path;
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

/// Runs `chat-server --database DATABASE ARGS...` in `dir` off the test's runtime (an
/// operator command beside a running server).
async fn command(dir: &Path, database: &str, args: &[&str], stdin: &str) -> std::process::Output {
    let (dir, database, stdin) = (dir.to_owned(), database.to_owned(), stdin.to_owned());
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        operator(&dir, &database, &args, &stdin)
    })
    .await
    .unwrap()
}

/// Signs alice and bob up, and alice sends bob two messages: their tokens, and the messages' ids.
async fn alice_writes_to_bob(http: &reqwest::Client, server: &ServerProcess) -> (String, String, Vec<i64>) {
    let alice = sign_up(http, &server.base, "alice").await;
    let bob = sign_up(http, &server.base, "bob").await;
    let mut sent = Vec::new();
    for body in ["one", "two"] {
        let response = post(
            http,
            format!("{}/api/v1/message/", server.base),
            Some(&alice),
            json!({"recipient": "bob", "body": body}),
        )
        .await;
        assert_eq!(response.status(), 201);
        sent.push(response.json::<Value>().await.unwrap()["id"].as_i64().unwrap());
    }
    (alice, bob, sent)
}

/// `token`'s socket is still open: a message to themselves arrives on it.
async fn still_open(
    http: &reqwest::Client,
    server: &ServerProcess,
    token: &str,
    ws: &mut Socket,
    name: &str,
) {
    let sent = post(
        http,
        format!("{}/api/v1/message/", server.base),
        Some(token),
        json!({"recipient": name, "body": "still here"}),
    )
    .await;
    assert_eq!(sent.status(), 201);
    let frame = next_frame(ws, Duration::from_secs(5)).await;
    assert!(frame.to_text().unwrap().contains("still here"), "{frame:?}");
}

/// The messages `sent` arrive on `ws` as `delete` events with empty bodies (tombstones).
async fn tombstoned(ws: &mut Socket, sent: &[i64]) {
    for id in sent {
        let frame = next_frame(ws, Duration::from_secs(10)).await;
        let event: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(event["type"], "delete", "{event}");
        assert_eq!(
            (&event["data"]["id"], &event["data"]["body"]),
            (&json!(id), &json!(""))
        );
    }
}

/// Logs in over HTTP: the status, and the token on success.
async fn login(http: &reqwest::Client, base: &str, username: &str, password: &str) -> (u16, Option<String>) {
    let response = post(
        http,
        format!("{base}/api/v1/auth/login"),
        None,
        json!({"username": username, "password": password}),
    )
    .await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    (status, body["token"].as_str().map(str::to_owned))
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
        // No presence frames (alice online) ahead of the events the test waits for.
        &[
            "--database",
            &url,
            "--ws-session-recheck-secs",
            "1",
            "--presence",
            "off",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    let bob = sign_up(&http, &server.base, "bob").await;
    let mut alice_ws = socket(&server, &alice).await;
    let mut bob_ws = socket(&server, &bob).await;
    assert_eq!(session_status(&http, &server.base, &alice).await, 200);

    let out = succeeded(&command(dir.path(), &url, &["revoke-sessions", "alice"], "").await);
    assert!(out.contains("ended 1 session(s) of alice"), "{out}");
    assert_eq!(
        close_code(&next_frame(&mut alice_ws, Duration::from_secs(10)).await),
        4001
    );
    // The check also dropped the session from the server's cache.
    assert_eq!(session_status(&http, &server.base, &alice).await, 401);
    // Bob's socket is untouched.
    still_open(&http, &server, &bob, &mut bob_ws, "bob").await;
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
        // No presence frames (alice online) ahead of the events the test waits for.
        &[
            "--database",
            &url,
            "--ws-session-recheck-secs",
            "0",
            "--presence",
            "off",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let (alice, bob, sent) = alice_writes_to_bob(&http, &server).await;
    let mut alice_ws = socket(&server, &alice).await;
    let mut bob_ws = socket(&server, &bob).await;

    let out = succeeded(
        &command(
            dir.path(),
            &url,
            &["set-password", "alice", "--password-stdin"],
            "another password\n",
        )
        .await,
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
    let alice_logs_in = |password| login(&http, &server.base, "alice", password);
    assert_eq!(alice_logs_in("a long password").await.0, 401);
    assert_eq!(alice_logs_in("another password").await.0, 200);

    let out = succeeded(&command(dir.path(), &url, &["delete-user", "alice", "--yes"], "").await);
    assert!(out.contains("deleted user alice: 2 message(s) erased"), "{out}");
    tombstoned(&mut bob_ws, &sent).await;
    assert_eq!(alice_logs_in("another password").await.0, 401);
    assert!(server.terminate().await.success());
}

/// [`command`] on `sqlite://chat.db`.
async fn on_chat_db(dir: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    command(dir, "sqlite://chat.db", args, stdin).await
}

fn listed_names(out: &str) -> Vec<&str> {
    out.lines().filter_map(|line| line.split('\t').nth(1)).collect()
}

/// A SQLite file is held by the running server: every command runs in that server, through
/// its control socket beside the database (mode 0600), and prints what it prints on its own
/// database. The server owns the sockets: a revocation closes them with 4001 at once (the
/// session recheck is off), a deletion tombstones at the peer's socket at once. A graceful
/// stop removes the socket file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_sqlite_file_held_by_a_server_the_commands_run_in_it() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &[
            "--database",
            "sqlite://chat.db",
            "--ws-session-recheck-secs",
            "0",
            "--presence",
            "off",
        ],
    )
    .await;
    let control = dir.path().join("chat.db-chatcore.sock");
    let found = std::fs::symlink_metadata(&control).expect("a control socket beside the database");
    assert!(found.file_type().is_socket());
    assert_eq!(
        found.permissions().mode() & 0o777,
        0o600,
        "only the server's user"
    );

    let http = reqwest::Client::new();
    let (alice, bob, sent) = alice_writes_to_bob(&http, &server).await;
    let mut alice_ws = socket(&server, &alice).await;
    let mut bob_ws = socket(&server, &bob).await;

    let out = succeeded(&on_chat_db(dir.path(), &["revoke-sessions", "alice"], "").await);
    assert_eq!(
        out,
        "ended 1 session(s) of alice; open WebSockets close at once\n"
    );
    assert_eq!(
        close_code(&next_frame(&mut alice_ws, Duration::from_secs(10)).await),
        4001
    );
    assert_eq!(session_status(&http, &server.base, &alice).await, 401);
    assert_eq!(session_status(&http, &server.base, &bob).await, 200);
    still_open(&http, &server, &bob, &mut bob_ws, "bob").await;

    let out = succeeded(
        &on_chat_db(
            dir.path(),
            &["set-password", "BOB", "--password-stdin"],
            "another password\n",
        )
        .await,
    );
    assert_eq!(
        out,
        "set the password of bob; ended 1 session(s); open WebSockets close at once\n"
    );
    assert_eq!(
        close_code(&next_frame(&mut bob_ws, Duration::from_secs(10)).await),
        4001
    );
    assert_eq!(session_status(&http, &server.base, &bob).await, 401);
    assert_eq!(login(&http, &server.base, "bob", "a long password").await.0, 401);
    let (status, bob) = login(&http, &server.base, "bob", "another password").await;
    assert_eq!(status, 200);
    let bob = bob.expect("a token");

    let out = succeeded(
        &on_chat_db(
            dir.path(),
            &["create-user", "carol", "--password-stdin"],
            "a long password\n",
        )
        .await,
    );
    assert!(out.starts_with("created user carol (id "), "{out}");
    assert_eq!(
        login(&http, &server.base, "carol", "a long password").await.0,
        200
    );
    let out = succeeded(&on_chat_db(dir.path(), &["list-users"], "").await);
    assert_eq!(listed_names(&out), ["alice", "bob", "carol"]);
    let out = succeeded(&on_chat_db(dir.path(), &["list-users", "--prefix", "c"], "").await);
    assert_eq!(listed_names(&out), ["carol"]);

    // The server's refusals reach the operator with their reason and status.
    let refusals: [(&[&str], &str, &[&str]); 3] = [
        (
            &["revoke-sessions", "nobody"],
            "",
            &["no user named \"nobody\"", "404"],
        ),
        (
            &["set-password", "carol", "--password-stdin"],
            "short\n",
            &["at least 8 characters", "400"],
        ),
        (
            &["create-user", "Carol", "--password-stdin"],
            "a long password\n",
            &["taken", "409"],
        ),
    ];
    for (args, stdin, reasons) in refusals {
        let error = failed(&on_chat_db(dir.path(), args, stdin).await);
        assert!(
            reasons.iter().all(|reason| error.contains(reason)),
            "{args:?}: {error}"
        );
    }

    let mut bob_ws = socket(&server, &bob).await;
    let out = succeeded(&on_chat_db(dir.path(), &["delete-user", "alice", "--yes"], "").await);
    assert_eq!(
        out,
        "deleted user alice: 2 message(s) erased; the name stays reserved; open WebSockets close at once\n"
    );
    tombstoned(&mut bob_ws, &sent).await;
    assert_eq!(
        login(&http, &server.base, "alice", "a long password").await.0,
        401
    );
    let out = succeeded(&on_chat_db(dir.path(), &["list-users"], "").await);
    assert_eq!(listed_names(&out), ["bob", "carol"]);

    assert!(server.terminate().await.success());
    assert!(!control.exists(), "a graceful stop removes the control socket");
    // With the server gone, the commands open the file themselves again.
    let out = succeeded(&on_chat_db(dir.path(), &["revoke-sessions", "bob"], "").await);
    assert!(out.contains("ended 1 session(s) of bob"), "{out}");
    assert!(out.contains("--ws-session-recheck-secs"), "{out}");
}

/// `curl --unix-socket SOCKET ARGS... http://localhost/PATH`: the status and the body.
async fn curl(socket: &Path, args: &[&str], path: &str) -> (u16, Value) {
    let mut command = std::process::Command::new("curl");
    command
        .arg("--silent")
        .arg("--unix-socket")
        .arg(socket)
        .args(["--write-out", "\n%{http_code}"])
        .args(args)
        .arg(format!("http://localhost{path}"));
    let out = tokio::task::spawn_blocking(move || command.output().expect("run curl"))
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').expect("curl wrote the status");
    (
        status.parse().unwrap(),
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")),
    )
}

/// A server killed without its shutdown leaves its socket file behind; the next server on the
/// database replaces it. The control socket speaks plain HTTP/1.1 + JSON (curl here), with
/// the API's statuses and `{"error"}` bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_control_socket_is_replaced_and_speaks_http() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--database", "sqlite://chat.db"];
    let mut crashed = ServerProcess::start(dir.path(), &args).await;
    crashed.child.kill().await.unwrap();
    let control = dir.path().join("chat.db-chatcore.sock");
    assert!(control.exists(), "a killed server leaves its socket");
    let server = ServerProcess::start(dir.path(), &args).await;

    let json = ["--header", "content-type: application/json", "--data"];
    let (status, created) = curl(
        &control,
        &[
            &json[..],
            &[r#"{"username": "dave", "password": "a long password"}"#],
        ]
        .concat(),
        "/users",
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["username"], "dave");
    let (status, listed) = curl(&control, &[], "/users?prefix=d").await;
    assert_eq!((status, &listed["users"][0]), (200, &created));
    let (status, refused) = curl(
        &control,
        &[&["--request", "PUT"][..], &json, &[r#"{"password": "short"}"#]].concat(),
        "/users/dave/password",
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("at least 8 characters"),
        "{refused}"
    );
    let (status, refused) = curl(&control, &["--request", "DELETE"], "/users/nobody").await;
    assert_eq!(status, 404);
    assert!(
        refused["error"].as_str().unwrap().contains("no user named"),
        "{refused}"
    );
    let (status, refused) = curl(&control, &["--request", "POST"], "/users/dave/revoke").await;
    assert_eq!((status, refused["error"].as_str()), (404, Some("no such path")));
    let (status, refused) = curl(&control, &[&json[..], &[""]].concat(), "/users").await;
    assert_eq!(status, 400, "no body: {refused}");
    assert!(server.terminate().await.success());
    assert!(!control.exists());
}

/// Runs the server on `sqlite://chat.db` in `dir` with `args`, expecting it to refuse to
/// start: what it wrote to stderr.
async fn start_fails(dir: &Path, args: &[&str]) -> String {
    let mut args = [&["--listen", "127.0.0.1:0"][..], args].concat();
    args.push("serve");
    failed(&on_chat_db(dir, &args, "").await)
}

/// Without a control socket answering, or with one of a server on another database, a
/// command against the held file says what is wrong and changes nothing; a control socket
/// that cannot be opened stops the start, and one that another server answers on, or a file
/// that is not a socket, is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_control_socket_the_command_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--database", "sqlite://chat.db", "--control-socket", "off"],
    )
    .await;
    let http = reqwest::Client::new();
    let alice = sign_up(&http, &server.base, "alice").await;
    assert!(!dir.path().join("chat.db-chatcore.sock").exists());
    let error = failed(&on_chat_db(dir.path(), &["revoke-sessions", "alice"], "").await);
    assert!(
        error.contains("no control socket answers at chat.db-chatcore.sock")
            && error.contains("--control-socket off or at another path")
            && error.contains("Nothing was changed")
            && error.contains("holds the lock file"),
        "{error}"
    );
    let error = failed(
        &on_chat_db(
            dir.path(),
            &["--control-socket", "off", "delete-user", "alice", "--yes"],
            "",
        )
        .await,
    );
    assert!(
        error.contains("--control-socket is off for this command"),
        "{error}"
    );
    assert_eq!(session_status(&http, &server.base, &alice).await, 200);
    let shared = dir.path().join("shared.sock");
    let shared = shared.to_str().unwrap();
    let other = ServerProcess::start(
        dir.path(),
        &["--database", "sqlite://other.db", "--control-socket", shared],
    )
    .await;
    // A control socket of a server on another database refuses the command.
    let error = failed(
        &on_chat_db(
            dir.path(),
            &["--control-socket", shared, "revoke-sessions", "alice"],
            "",
        )
        .await,
    );
    assert!(
        error.contains("serves the SQLite file other.db, not the command's database")
            && error.contains("409"),
        "{error}"
    );
    assert_eq!(session_status(&http, &server.base, &alice).await, 200);
    assert!(server.terminate().await.success());

    let text = start_fails(dir.path(), &["--control-socket", "nowhere/c.sock"]).await;
    assert!(
        text.contains("cannot open the control socket nowhere/c.sock (its directory does not exist"),
        "{text}"
    );
    let text = start_fails(dir.path(), &["--control-socket", shared]).await;
    assert!(
        text.contains("another server answers on the control socket"),
        "{text}"
    );
    std::fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
    let text = start_fails(dir.path(), &["--control-socket", "notes.txt"]).await;
    assert!(text.contains("notes.txt exists and is not a socket"), "{text}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "keep me"
    );
    assert!(other.terminate().await.success());
}
