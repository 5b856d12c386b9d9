//! The server's edge (`serve_with`), with raw TCP clients as an attacker would use them:
//! slow heads, idle sockets, half-sent bodies, oversized heads, too many connections, and a
//! shutdown while a client never finishes its request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore};
use chatcore_axum::{
    ChatApi, EdgeCounters, ServeConfig, SessionAuthenticator, SessionConfig, ShutdownHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

struct Server {
    addr: std::net::SocketAddr,
    shutdown: ShutdownHandle,
    counters: EdgeCounters,
    served: JoinHandle<std::io::Result<()>>,
}

async fn start(config: ServeConfig) -> Server {
    let store = Arc::new(MemoryStore::new());
    let chat = ChatService::new(
        store.clone(),
        Arc::new(LocalNotifier::default()),
        ChatConfig::default(),
    );
    let auth = SessionAuthenticator::new(store, SessionConfig::default()).unwrap();
    let api = ChatApi::new(chat, auth.clone()).with_auth_routes(auth);
    let shutdown = api.shutdown_handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = EdgeCounters::default();
    let served = tokio::spawn(chatcore_axum::serve_with(
        listener,
        axum::Router::new().merge(api.router()),
        shutdown.clone(),
        config,
        counters.clone(),
    ));
    Server {
        addr,
        shutdown,
        counters,
        served,
    }
}

/// Reads until the server closes the connection (EOF or reset), at most `within`; returns
/// what arrived. Panics if the connection is still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let result = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "the server kept the connection open for {within:?}"
    );
    received
}

fn split_answer(answer: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    (head.to_ascii_lowercase(), body.to_owned())
}

fn short_timeouts() -> ServeConfig {
    ServeConfig {
        header_read_timeout: Duration::from_millis(800),
        request_body_timeout: Duration::from_millis(800),
        idle_timeout: Duration::from_millis(1500),
        ..ServeConfig::default()
    }
}

#[tokio::test]
async fn a_slowloris_head_is_cut_at_the_header_timeout() {
    let server = start(short_timeouts()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /api/v1/user/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // One header line every 100 ms: never idle, never done.
    let (mut reader, mut writer) = stream.into_split();
    let dribble = tokio::spawn(async move {
        for i in 0.. {
            if writer
                .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(700),
        "closed too early: {elapsed:?}"
    );
    dribble.abort();
    assert_eq!(server.counters.timed_out(), 1);
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_the_idle_timeout() {
    let server = start(short_timeouts()).await;
    // Never sends a byte.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    // Keep-alive after one answer: idle again, closed again.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /api/v1/user/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut kept, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 401 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(server.counters.timed_out(), 2);
}

#[tokio::test]
async fn a_half_sent_body_is_answered_408_json() {
    let server = start(short_timeouts()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"username\":",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let (head, body) = split_answer(&answer);
    assert!(head.starts_with("http/1.1 408 "), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body, r#"{"error":"the request body came too slowly"}"#);
}

#[tokio::test]
async fn errors_hyper_answers_itself_are_json() {
    let server = start(ServeConfig::default()).await;
    let cases: [(Vec<u8>, &str); 3] = [
        // A request line longer than the head limit (hyper's 414 needs one over 64 KiB, which
        // no head within the limit can hold).
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000)).into_bytes(),
            "431",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(20_000)
            )
            .into_bytes(),
            "431",
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(), "400"),
    ];
    for (request, status) in cases {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // The server may answer and close before it has read everything.
        let _ = stream.write_all(&request).await;
        let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        let (head, body) = split_answer(&answer);
        assert!(head.starts_with(&format!("http/1.1 {status} ")), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
        assert!(json["error"].is_string(), "{body}");
    }
    // Too many headers: past the limit (64, counted by the server) and past hyper's own (100).
    for count in [64, 100] {
        let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..count {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream.write_all(many.as_bytes()).await;
        let (head, body) = split_answer(&read_until_closed(&mut stream, Duration::from_secs(5)).await);
        assert!(head.starts_with("http/1.1 431 "), "{count}: {head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(body.contains("too many headers"), "{body}");
    }
    // 64 headers in all are within it, on a connection that stays open.
    let mut within = String::from("GET /api/v1/user/ HTTP/1.1\r\nHost: x\r\n");
    for i in 0..63 {
        within.push_str(&format!("X-{i}: y\r\n"));
    }
    within.push_str("\r\n");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(within.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(!head.starts_with("http/1.1 431 "), "{head}");
    assert_eq!(
        status_of(&mut stream).await.split(' ').nth(1),
        head.lines().next().unwrap().split(' ').nth(1)
    );
}

/// Sends one request on `stream` and reads the head of its answer (keep-alive).
async fn status_of(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /api/v1/user/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn connections_past_the_limits_are_shed_and_the_others_served() {
    let server = start(ServeConfig {
        max_connections: 3,
        ..ServeConfig::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        assert!(status_of(&mut stream).await.starts_with("HTTP/1.1 401"));
        open.push(stream);
    }
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let answer = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    assert!(answer.is_empty());
    assert_eq!(server.counters.refused_over_total(), 1);
    // The ones being served still are.
    for stream in &mut open {
        assert!(status_of(stream).await.starts_with("HTTP/1.1 401"));
    }
    // A closed one frees its place.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.counters.open() > 2 {
        assert!(
            Instant::now() < deadline,
            "the closed connection was never released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = TcpStream::connect(server.addr).await.unwrap();
    assert!(status_of(&mut again).await.starts_with("HTTP/1.1 401"));

    let per_address = start(ServeConfig {
        max_connections_per_address: 2,
        ..ServeConfig::default()
    })
    .await;
    let mut first = TcpStream::connect(per_address.addr).await.unwrap();
    let _second = TcpStream::connect(per_address.addr).await.unwrap();
    assert!(status_of(&mut first).await.starts_with("HTTP/1.1 401"));
    let mut third = TcpStream::connect(per_address.addr).await.unwrap();
    assert!(
        read_until_closed(&mut third, Duration::from_secs(5))
            .await
            .is_empty()
    );
    assert_eq!(per_address.counters.refused_over_address(), 1);
}

#[tokio::test]
async fn shutdown_ends_within_the_grace_even_with_a_request_never_finished() {
    let server = start(ServeConfig {
        shutdown_grace: Duration::from_secs(1),
        ..ServeConfig::default()
    })
    .await;
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    // In flight: the login handler waits for the rest of the body (the body timeout is 10 s).
    half.write_all(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.counters.open() < 2 {
        assert!(
            Instant::now() < deadline,
            "connections not accepted: {}",
            server.counters.open()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    server.shutdown.shutdown();
    tokio::time::timeout(Duration::from_secs(4), server.served)
        .await
        .expect("serve returned within the grace period")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    read_until_closed(&mut idle, Duration::from_secs(1)).await;
    read_until_closed(&mut half, Duration::from_secs(1)).await;
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "still accepting after shutdown"
    );
}
