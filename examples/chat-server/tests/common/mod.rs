//! Starting the real `chat-server` binary for tests.

#![allow(dead_code)] // each test file uses a different part

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::UnboundedReceiver;

/// A running `chat-server` process; killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub addr: String,
    /// `http://127.0.0.1:PORT/metrics` when started with `--metrics-listen`.
    pub metrics_url: Option<String>,
}

impl ServerProcess {
    /// Starts the binary on 127.0.0.1 port 0 with `args`, in `dir`, and waits for its address.
    pub async fn start(dir: &Path, args: &[&str]) -> Self {
        let log = std::env::var("TEST_LOG").map(|_| "info").unwrap_or("warn");
        let stderr = if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        Self::spawn(dir, args, log, stderr).await
    }

    /// Like [`ServerProcess::start`] with the log filter `log`, and the server's log lines
    /// (stderr) sent to the receiver as they come.
    pub async fn start_logging(dir: &Path, args: &[&str], log: &str) -> (Self, UnboundedReceiver<String>) {
        let mut server = Self::spawn(dir, args, log, Stdio::piped()).await;
        let stderr = server.child.stderr.take().expect("stderr is piped");
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        (server, receiver)
    }

    async fn spawn(dir: &Path, args: &[&str], log: &str, stderr: Stdio) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        command
            .current_dir(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("CHAT_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start chat-server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics_url = None;
        let base = loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("chat-server printed its address in time")
                .expect("read chat-server stdout")
                .expect("chat-server exited before listening");
            // With --metrics-listen, its address comes first.
            if let Some(url) = line.strip_prefix("chat-server metrics on ") {
                metrics_url = Some(url.to_owned());
                continue;
            }
            break line
                .strip_prefix("chat-server listening on ")
                .unwrap_or_else(|| panic!("unexpected line {line:?}"))
                .to_owned();
        };
        let addr = base.trim_start_matches("http://").to_owned();
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            base,
            addr,
            metrics_url,
        }
    }

    /// Sends SIGTERM without waiting for the exit.
    pub fn signal_terminate(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        self.signal_terminate();
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("server exits after SIGTERM")
            .expect("wait for server")
    }
}

/// POSTs `body` as JSON to `url`, with `token` as bearer token if any.
pub async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: serde_json::Value,
) -> reqwest::Response {
    let mut request = http.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Registers `name` (password "a long password") and logs in: the bearer token.
pub async fn sign_up(http: &reqwest::Client, base: &str, name: &str) -> String {
    let credentials = serde_json::json!({"username": name, "password": "a long password"});
    let registered = post(
        http,
        format!("{base}/api/v1/auth/register"),
        None,
        credentials.clone(),
    )
    .await;
    assert_eq!(registered.status(), 201);
    let login = post(http, format!("{base}/api/v1/auth/login"), None, credentials).await;
    let session: serde_json::Value = login.json().await.unwrap();
    session["token"].as_str().expect("a token").to_owned()
}

/// A WebSocket on `ws://{addr}{path}` authenticated with `token`.
pub async fn open_socket(
    addr: &str,
    path: &str,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket")
        .0
}

/// Runs `chat-server --database DATABASE ARGS...` in `dir` to its end, with `stdin` piped in
/// (an operator command).
pub fn operator(dir: &Path, database: &str, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .current_dir(dir)
        .args(["--database", database])
        .args(args)
        .env("CHAT_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chat-server");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}
