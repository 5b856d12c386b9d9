//! The load generator against the real chatcore router (`chatcore-axum` over
//! `chatcore::MemoryStore`), served on 127.0.0.1 port 0 with a test-local `/_bench/echo`.

use std::sync::Arc;

use axum::Json;
use axum::routing::post;
use chat_loadgen::{Args, Progress, run_idle, run_load, run_sweep};
use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore};
use chatcore_axum::{ChatApi, SessionAuthenticator, SessionConfig, ShutdownHandle};
use clap::Parser;

/// The real router with the send rate limit off (as load tests run it), cheap password
/// hashing (so creating users does not dominate the test), and the ceiling endpoint.
async fn spawn_server() -> (String, ShutdownHandle) {
    let store = Arc::new(MemoryStore::new());
    let chat = ChatService::new(
        store.clone(),
        Arc::new(LocalNotifier::default()),
        ChatConfig {
            send_burst: 0,
            ..ChatConfig::default()
        },
    );
    let sessions = SessionAuthenticator::new(
        store,
        SessionConfig {
            argon2_memory_kib: 256,
            argon2_iterations: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let api = ChatApi::new(chat, sessions.clone()).with_auth_routes(sessions);
    let shutdown = api.shutdown_handle();
    // The ceiling: parse the same JSON body and answer it, nothing else.
    async fn echo(Json(body): Json<serde_json::Value>) -> Json<serde_json::Value> {
        Json(body)
    }
    let app = axum::Router::new()
        .route("/_bench/echo", post(echo))
        .merge(api.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let handle = shutdown.clone();
    tokio::spawn(async move { chatcore_axum::serve(listener, app, handle).await });
    (url, shutdown)
}

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
async fn bounded_run_against_the_real_router_is_exact() {
    let (url, shutdown) = spawn_server().await;
    // The server runs in this process, so `--server-pid` is ours.
    let pid = std::process::id().to_string();
    let flags = "--users 5 --connections 10 --senders 4 --count 200 --ceiling --server-pid";
    let mut argv: Vec<&str> = flags.split(' ').collect();
    argv.push(&pid);
    let args = cli(&url, &argv);
    let report = run_load(&args, Progress::new(false)).await.expect("run");
    let n = &report.notifications;
    assert_eq!(
        (report.send.sent, report.send.send_errors),
        (200, 0),
        "{report:?}"
    );
    assert_eq!(n.expected, 800, "{report:?}");
    assert_eq!(
        (
            n.received,
            n.lost,
            n.duplicated,
            n.unexpected,
            n.resyncs,
            n.connections_dropped
        ),
        (800, 0, 0, 0, 0, 0),
        "{report:?}"
    );
    assert_eq!(n.latency.count, 400);
    assert_eq!(report.send.send_latency.count, 200);
    let ceiling = report.ceiling.as_ref().expect("ceiling phase");
    assert_eq!((ceiling.sent, ceiling.send_errors), (200, 0), "{ceiling:?}");
    assert!(report.ratio_to_ceiling.is_some_and(|r| r > 0.0 && r.is_finite()));
    assert!(
        report.send.client_cpu_secs.is_some() && report.send.server_cpu_secs.is_some(),
        "{:?}",
        report.send
    );
    assert!(report.to_table().contains("send CPU per send: client"));
    shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_against_the_real_router_is_exact() {
    let (url, shutdown) = spawn_server().await;
    let args = cli(
        &url,
        &[
            "--users",
            "4",
            "--connections",
            "8",
            "--senders",
            "2",
            "--count",
            "150",
            "--rate",
            "1500",
        ],
    );
    let report = run_load(&args, Progress::new(false)).await.expect("run");
    let n = &report.notifications;
    assert_eq!(report.send.sent, 150, "{report:?}");
    assert_eq!(
        (n.expected, n.received, n.lost, n.duplicated),
        (600, 600, 0, 0),
        "{report:?}"
    );
    shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reqwest_client_gives_the_same_counts() {
    let (url, shutdown) = spawn_server().await;
    let flags = "--users 3 --connections 6 --senders 3 --count 90 --http-client reqwest --ceiling";
    let argv: Vec<&str> = flags.split(' ').collect();
    let report = run_load(&cli(&url, &argv), Progress::new(false))
        .await
        .expect("run");
    let n = &report.notifications;
    assert_eq!(report.send.sent, 90, "{report:?}");
    assert_eq!(report.ceiling.as_ref().map(|c| c.sent), Some(90));
    assert_eq!(
        (n.expected, n.received, n.lost, n.duplicated),
        (360, 360, 0, 0),
        "{report:?}"
    );
    shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_stay_open_on_the_real_router() {
    let (url, shutdown) = spawn_server().await;
    let args = cli(
        &url,
        &[
            "--users",
            "3",
            "--idle-connections",
            "30",
            "--hold",
            "0.2",
            "--settle-ms",
            "0",
        ],
    );
    let report = run_idle(&args, Progress::new(false)).await.expect("run");
    assert_eq!(
        (report.opened, report.failed, report.dropped),
        (30, 0, 0),
        "{report:?}"
    );
    shutdown.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_reuses_the_sockets_and_draws_a_png() {
    let (url, shutdown) = spawn_server().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let png = dir.path().join("sweep.png");
    let png_arg = png.to_str().expect("utf-8 path");
    let args = cli(
        &url,
        &[
            "--users",
            "4",
            "--connections",
            "8",
            "--senders",
            "2",
            "--sweep-rates",
            "50,100",
            "--duration",
            "1",
            "--sweep-pause-ms",
            "100",
            "--label",
            "chatcore-axum, in memory",
            "--plot",
            png_arg,
        ],
    );
    let sweep = run_sweep(&args, Progress::new(false)).await.expect("sweep");
    assert_eq!(sweep.steps.len(), 2, "{sweep:?}");
    assert_eq!((sweep.users, sweep.connections), (4, 8));
    for (step, rate) in sweep.steps.iter().zip([50.0, 100.0]) {
        let (s, n) = (&step.send, &step.notifications);
        assert_eq!(s.offered_rate, Some(rate));
        // One second at the rate: the schedule allows `rate` sends (give or take the
        // rounding of the last slot).
        assert!(s.sent.abs_diff(rate as u64) <= 1, "{step:?}");
        assert_eq!(s.send_errors, 0, "{step:?}");
        // 4 users with 2 sockets each: every message reaches 2 + 2 sockets, exactly once,
        // and only this step's messages count (the sockets are the same in both steps).
        assert_eq!(
            (
                n.expected,
                n.received,
                n.lost,
                n.duplicated,
                n.unexpected,
                n.connections_dropped
            ),
            (4 * s.sent, 4 * s.sent, 0, 0, 0, 0),
            "{step:?}"
        );
        assert_eq!(n.latency.count, 2 * s.sent, "{step:?}");
        assert!(
            n.latency.p50_ms > 0.0 && n.latency.p99_ms >= n.latency.p50_ms,
            "{step:?}"
        );
    }
    assert!(sweep.is_clean());
    let table = sweep.to_table();
    assert!(table.contains("chatcore-axum, in memory"), "{table}");
    chat_loadgen::plot::draw(&sweep, &png).expect("plot");
    let bytes = std::fs::read(&png).expect("PNG written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert!(
        bytes.len() > 10_000,
        "a real chart, not a blank image: {} bytes",
        bytes.len()
    );
    shutdown.shutdown();
}
