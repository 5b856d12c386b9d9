//! End-to-end runs of the load generator's library against a real server on 127.0.0.1 port 0.

mod support;

use chat_loadgen::{Args, Error, Progress, run_idle, run_load};
use clap::Parser;

fn cli(url: &str, extra: &[&str]) -> Args {
    let mut argv = vec![
        "chat-loadgen",
        "--url",
        url,
        "--quiet",
        "--grace-ms",
        "5000",
        "--linger-ms",
        "100",
    ];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).expect("valid arguments")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_run_loses_and_duplicates_nothing() {
    let url = support::spawn_minimal_server(false).await;
    let args = cli(
        &url,
        &[
            "--users",
            "5",
            "--connections",
            "10",
            "--senders",
            "4",
            "--count",
            "200",
        ],
    );
    let report = run_load(&args, Progress::new(false)).await.expect("run");
    let n = &report.notifications;
    assert_eq!(report.send.sent, 200, "{report:?}");
    assert_eq!(report.send.send_errors, 0, "{report:?}");
    // Every user has 2 connections and never writes to itself: 4 frames per message.
    assert_eq!(n.expected, 800, "{report:?}");
    assert_eq!(
        (n.received, n.lost, n.duplicated, n.unexpected),
        (800, 0, 0, 0),
        "{report:?}"
    );
    assert_eq!(n.connections_dropped, 0);
    // Latency is taken at the recipient's 2 connections.
    assert_eq!(n.latency.count, 400);
    assert!(
        n.latency.p50_ms > 0.0
            && n.latency.p50_ms <= n.latency.p99_ms
            && n.latency.p99_ms <= n.latency.max_ms
    );
    let s = &report.send.send_latency;
    assert_eq!(s.count, 200);
    assert!(s.p50_ms > 0.0 && s.p50_ms <= s.p90_ms && s.p90_ms <= s.p99_ms && s.p99_ms <= s.max_ms);
    assert!(report.send.sends_per_sec > 0.0);
    assert!(report.is_clean());
    assert!(
        report
            .to_table()
            .contains("OK: no notification lost or duplicated")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_every_marks_read_and_reads_the_inbox_under_load() {
    let url = support::spawn_minimal_server(false).await;
    let args = cli(
        &url,
        &[
            "--users",
            "4",
            "--connections",
            "4",
            "--senders",
            "1",
            "--count",
            "60",
            "--read-every",
            "3",
        ],
    );
    let report = run_load(&args, Progress::new(false)).await.expect("run");
    assert_eq!(report.send.sent, 60, "{report:?}");
    let reads = report
        .send
        .reads
        .as_ref()
        .expect("reads are reported with --read-every");
    assert_eq!(
        (reads.marks, reads.inbox_reads, reads.errors),
        (20, 20, 0),
        "{reads:?}"
    );
    assert_eq!(reads.mark_read_latency.count, 20);
    assert!(reads.inbox_latency.p50_ms > 0.0);
    assert!(report.is_clean(), "{report:?}");
    assert!(report.to_table().contains("read markers: 20"));
    let plain = run_load(
        &cli(&url, &["--users", "2", "--count", "4"]),
        Progress::new(false),
    )
    .await
    .expect("run");
    assert!(plain.send.reads.is_none(), "no read report without --read-every");
    let bad = Args::try_parse_from(["chat-loadgen", "--rate", "10", "--read-every", "2"]).unwrap();
    assert!(bad.validate().is_err(), "--read-every is closed loop only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_with_ceiling_reports_a_ratio() {
    let url = support::spawn_minimal_server(false).await;
    let args = cli(
        &url,
        &[
            "--users",
            "3",
            "--connections",
            "3",
            "--senders",
            "2",
            "--count",
            "100",
            "--rate",
            "1000",
            "--ceiling",
        ],
    );
    let report = run_load(&args, Progress::new(false)).await.expect("run");
    let ceiling = report.ceiling.as_ref().expect("ceiling phase");
    assert_eq!(ceiling.sent, 100, "{ceiling:?}");
    assert!(ceiling.path.ends_with("/_bench/echo"));
    assert_eq!(report.send.sent, 100);
    assert_eq!(report.send.offered_rate, Some(1000.0));
    // 100 sends offered at 1000/s take about 0.1 s.
    assert!(report.send.elapsed_secs >= 0.09, "{:?}", report.send);
    let ratio = report.ratio_to_ceiling.expect("ratio");
    assert!(ratio > 0.0 && ratio.is_finite());
    let n = &report.notifications;
    assert_eq!(
        (n.expected, n.received, n.lost, n.duplicated),
        (200, 200, 0, 0),
        "{report:?}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["ceiling"]["sent"], 100);
    assert_eq!(report.send.start_lag.map(|lag| lag.count), Some(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_beyond_the_in_flight_cap_holds_sends_back() {
    let url = support::spawn_minimal_server(false).await;
    // 50 sends offered at once through one connection: all but the first wait their turn.
    let args = cli(
        &url,
        &[
            "--users",
            "2",
            "--connections",
            "2",
            "--senders",
            "1",
            "--max-in-flight",
            "1",
        ],
    );
    let args = Args {
        count: Some(50),
        rate: Some(1_000_000.0),
        ..args
    };
    let report = run_load(&args, Progress::new(false)).await.expect("run");
    assert_eq!(report.send.sent, 50, "{report:?}");
    assert!(report.send.late_starts >= 40, "{:?}", report.send);
    // Held-back sends count from their schedule, so the latency grows along the queue.
    assert!(report.send.send_latency.max_ms > report.send.send_latency.p50_ms);
    let n = &report.notifications;
    assert_eq!(
        (n.expected, n.received, n.lost, n.duplicated),
        (100, 100, 0, 0),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_user_writes_to_itself_once_per_connection() {
    let url = support::spawn_minimal_server(false).await;
    let args = cli(
        &url,
        &[
            "--users",
            "1",
            "--connections",
            "3",
            "--senders",
            "2",
            "--count",
            "30",
        ],
    );
    let report = run_load(&args, Progress::new(false)).await.expect("run");
    let n = &report.notifications;
    assert_eq!(
        (n.expected, n.received, n.lost, n.duplicated),
        (90, 90, 0, 0),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_mode_with_session_cookies_and_id_only_frames() {
    let url = support::spawn_minimal_server(true).await;
    // Users exist beforehand; their session cookies go into the cookie file.
    let http = reqwest::Client::new();
    let prefix = chat_loadgen::auth::run_prefix();
    let mut lines = String::from("# username=SESSIONID\n");
    for i in 0..3 {
        let body = serde_json::json!({ "username": format!("{prefix}{i}"), "password": "password-1" });
        let r = http
            .post(format!("{url}/api/v1/auth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = http
            .post(format!("{url}/api/v1/auth/login"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let token = r.json::<serde_json::Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        lines.push_str(&format!("{prefix}{i}={token}\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cookies.txt");
    std::fs::write(&file, lines).unwrap();
    let file = file.to_str().unwrap();
    let args = cli(
        &url,
        &[
            "--auth",
            "original",
            "--cookie-file",
            file,
            "--connections",
            "6",
            "--senders",
            "3",
            "--count",
            "60",
        ],
    );
    let report = run_load(&args, Progress::new(false)).await.expect("run");
    assert_eq!(report.users, 3);
    assert_eq!(report.auth, "original");
    let n = &report.notifications;
    assert_eq!(report.send.sent, 60, "{report:?}");
    assert_eq!(
        (n.expected, n.received, n.lost, n.duplicated),
        (240, 240, 0, 0),
        "{report:?}"
    );

    // A wrong CSRF header is refused by the server: every send fails, none is lost.
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, format!("{prefix}0=not-a-session\n")).unwrap();
    let args = cli(
        &url,
        &[
            "--auth",
            "original",
            "--cookie-file",
            bad.to_str().unwrap(),
            "--connections",
            "0",
            "--count",
            "3",
        ],
    );
    let report = run_load(&args, Progress::new(false)).await.expect("run");
    assert_eq!((report.send.sent, report.send.send_errors), (0, 3));
    assert!(
        report.send.first_error.as_deref().unwrap_or("").contains("401"),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_mode_logs_in_through_the_form() {
    let url = support::spawn_minimal_server(true).await;
    let http = reqwest::Client::new();
    let prefix = chat_loadgen::auth::run_prefix();
    for (i, password) in ["password-a", "loadgen-password"].iter().enumerate() {
        let body = serde_json::json!({ "username": format!("{prefix}{i}"), "password": password });
        let r = http
            .post(format!("{url}/api/v1/auth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.txt");
    // The second line has no password: `--password` (default) is used.
    std::fs::write(&file, format!("{prefix}0:password-a\n{prefix}1\n")).unwrap();
    let file = file.to_str().unwrap().to_owned();
    let args = cli(
        &url,
        &[
            "--auth",
            "original",
            "--login-users",
            &file,
            "--connections",
            "4",
            "--senders",
            "2",
            "--count",
            "20",
        ],
    );
    let report = run_load(&args, Progress::new(false)).await.expect("run");
    let n = &report.notifications;
    assert_eq!(report.send.sent, 20, "{report:?}");
    assert_eq!(
        (n.expected, n.received, n.lost, n.duplicated),
        (80, 80, 0, 0),
        "{report:?}"
    );

    std::fs::write(&file, format!("{prefix}0:wrong-password\n")).unwrap();
    let args = cli(
        &url,
        &["--auth", "original", "--login-users", &file, "--count", "1"],
    );
    match run_load(&args, Progress::new(false)).await {
        Err(Error::Setup { what, .. }) => assert!(what.contains("without a sessionid cookie"), "{what}"),
        other => panic!("expected a login error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_mode_holds_every_connection() {
    let url = support::spawn_minimal_server(false).await;
    let pid = std::process::id().to_string();
    let args = cli(
        &url,
        &[
            "--users",
            "4",
            "--idle-connections",
            "40",
            "--hold",
            "0.3",
            "--settle-ms",
            "0",
            "--server-pid",
            &pid,
        ],
    );
    let report = run_idle(&args, Progress::new(false)).await.expect("run");
    assert_eq!(
        (report.requested, report.opened, report.failed, report.dropped),
        (40, 40, 0, 0),
        "{report:?}"
    );
    assert!(report.held_secs >= 0.3);
    assert!(report.server_rss_before_kib.is_some() && report.server_rss_open_kib.is_some());
    assert!(report.server_kib_per_connection.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_duplicated_frames_are_noticed() {
    let faults = support::Faults {
        drop_every: Some(10),
        duplicate_every: Some(7),
    };
    let url = support::spawn_faulty_server(false, faults).await;
    let args = cli(
        &url,
        &[
            "--users",
            "2",
            "--connections",
            "2",
            "--senders",
            "1",
            "--count",
            "50",
            "--grace-ms",
            "300",
            // Lost and doubled frames can add up to the expected count early: listen long
            // enough for every doubled frame to arrive.
            "--linger-ms",
            "1000",
        ],
    );
    let report = run_load(&args, Progress::new(false)).await.expect("run");
    let n = &report.notifications;
    // 100 frames: every 10th dropped (10), of the rest every 7th that is not a 10th doubled.
    let dropped = (1..=100).filter(|i| i % 10 == 0).count() as u64;
    let doubled = (1..=100).filter(|i| i % 10 != 0 && i % 7 == 0).count() as u64;
    assert_eq!(n.expected, 100);
    assert_eq!((n.lost, n.duplicated), (dropped, doubled), "{report:?}");
    assert_eq!(n.received, 100 - dropped);
    assert!(!report.is_clean());
    assert!(report.to_table().contains("FAIL"));
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    // Bind and drop to get a port that refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let args = cli(&url, &["--users", "1", "--count", "1", "--request-timeout", "5"]);
    match run_load(&args, Progress::new(false)).await {
        Err(Error::Setup { what, .. }) => assert!(what.contains("register"), "{what}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
}
