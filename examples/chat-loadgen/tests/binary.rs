//! The `chat-loadgen` binary itself: options, exit status, JSON output.

mod support;

use std::process::Command;

fn loadgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chat-loadgen"))
}

#[test]
fn help_documents_defaults_and_bad_options_exit_64() {
    let help = loadgen().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--send-rate-per-sec 0"),
        "the rate limit note is in --help"
    );
    assert!(text.contains("[default: http://127.0.0.1:8000]"));
    assert!(text.contains("[env: CHAT_LOADGEN_URL="));

    let bad = loadgen().args(["--senders", "0"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--senders"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_on_stdout_and_in_a_file() {
    let url = support::spawn_minimal_server(false).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.json");
    let mut command = loadgen();
    command
        .args([
            "--url",
            &url,
            "--users",
            "3",
            "--connections",
            "3",
            "--senders",
            "2",
            "--count",
            "40",
        ])
        .args(["--json", "--quiet", "--client-threads", "1", "--json-out"])
        .arg(&file);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(stdout, saved);
    assert_eq!(stdout["send"]["sent"], 40);
    assert_eq!(stdout["client_threads"], 1);
    assert_eq!(stdout["notifications"]["expected"], 80);
    assert_eq!(stdout["notifications"]["lost"], 0);
    assert_eq!(stdout["notifications"]["duplicated"], 0);
    assert!(stdout["notifications"]["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_notifications_exit_2_and_an_unreachable_server_exits_1() {
    let faults = support::Faults {
        drop_every: Some(3),
        duplicate_every: None,
    };
    let url = support::spawn_faulty_server(false, faults).await;
    let mut command = loadgen();
    command.args([
        "--url",
        &url,
        "--users",
        "2",
        "--connections",
        "2",
        "--count",
        "10",
        "--quiet",
    ]);
    command.args(["--grace-ms", "200"]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains("FAIL"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = loadgen();
    command.args([
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--count",
        "1",
        "--quiet",
    ]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("register"));
}
