//! A test server (`TestApp`) and clients for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatcore::{Backend, ChatConfig, ChatService, LocalNotifier, Notifier, SendPolicy, User};
use chatcore_axum::{ApiConfig, ChatApi, SessionAuthenticator, SessionConfig, ShutdownHandle};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where the chat router is nested in the host app.
pub const PREFIX: &str = "/chat";

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `TEST_LOG=1` shows the server's logs.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "debug".into()),
            )
            .with_test_writer()
            .try_init();
    }
}

/// What a test may tune.
pub struct Options {
    pub api: ApiConfig,
    pub chat: ChatConfig,
    pub notifier_queue: usize,
    /// A transport of the test's own instead of a `LocalNotifier`.
    pub notifier: Option<Arc<dyn Notifier>>,
    /// The authenticator's settings (default: [`fast_sessions`]).
    pub sessions: SessionConfig,
    /// Send policies, in order (default: none).
    pub policies: Vec<Arc<dyn SendPolicy>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            api: ApiConfig::default(),
            chat: ChatConfig::default(),
            notifier_queue: LocalNotifier::DEFAULT_QUEUE,
            notifier: None,
            sessions: fast_sessions(),
            policies: Vec::new(),
        }
    }
}

/// Argon2 at its cheapest: the tests check behaviour, not hashing cost.
pub fn fast_sessions() -> SessionConfig {
    SessionConfig {
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        ..Default::default()
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub chat: ChatService,
    pub auth: SessionAuthenticator,
    pub shutdown: ShutdownHandle,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    pub async fn spawn(store: Arc<dyn Backend>) -> Self {
        Self::spawn_with(store, Options::default()).await
    }

    /// A host app with a route of its own and the chat router nested under [`PREFIX`]; the
    /// service and the authenticator share `store`, and the authenticator's background work
    /// is started.
    pub async fn spawn_with(store: Arc<dyn Backend>, options: Options) -> Self {
        let notifier = options
            .notifier
            .unwrap_or_else(|| Arc::new(LocalNotifier::new(options.notifier_queue)));
        let chat = options.policies.into_iter().fold(
            ChatService::new(store.clone(), notifier, options.chat),
            ChatService::with_send_policy,
        );
        let auth = SessionAuthenticator::new(store, options.sessions).unwrap();
        auth.start(&chat).await.unwrap();
        let api = ChatApi::new(chat.clone(), auth.clone())
            .with_config(options.api)
            .with_auth_routes(auth.clone());
        let shutdown = api.shutdown_handle();
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "host home" }))
            .nest(PREFIX, api.router());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(chatcore_axum::serve(listener, app, shutdown.clone()));
        Self {
            addr,
            chat,
            auth,
            shutdown,
            server,
        }
    }

    /// `http://127.0.0.1:PORT/chat{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{PREFIX}{path}", self.addr)
    }

    /// `http://127.0.0.1:PORT{absolute_path}` (for `next`/`previous` links).
    pub fn absolute(&self, absolute_path: &str) -> String {
        format!("http://{}{absolute_path}", self.addr)
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A user created directly in the service, with a session token.
    pub async fn user(&self, name: &str) -> (User, String) {
        let user = self.chat.create_user(name).await.unwrap();
        let session = self.auth.start_session(user.clone()).await.unwrap();
        (user, session.token)
    }

    /// An HTTP client sending `Authorization: Bearer token`.
    pub fn client(&self, token: &str) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    }

    /// An HTTP client without credentials (it keeps cookies).
    pub fn anonymous(&self) -> reqwest::Client {
        reqwest::Client::builder().cookie_store(true).build().unwrap()
    }

    /// Sends a message over HTTP; returns it.
    pub async fn send(&self, token: &str, to: &str, body: &str) -> Value {
        let response = self
            .client(token)
            .post(self.url("/api/v1/message/"))
            .json(&serde_json::json!({"recipient": to, "body": body}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    pub fn ws_request(&self, token: Option<&str>, query: &str) -> tungstenite::handshake::client::Request {
        let mut request = format!("ws://{}{PREFIX}/ws{query}", self.addr)
            .into_client_request()
            .unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    /// Opens `/ws` (with `?since=` when given) as the owner of `token`.
    pub async fn ws(&self, token: &str, since: Option<i64>) -> Ws {
        let query = since.map(|id| format!("?since={id}")).unwrap_or_default();
        let (ws, response) = tokio_tungstenite::connect_async(self.ws_request(Some(token), &query))
            .await
            .unwrap();
        assert_eq!(response.status(), 101);
        ws
    }

    /// The HTTP status of a refused WebSocket handshake.
    pub async fn ws_refused(&self, request: tungstenite::handshake::client::Request) -> (u16, Value) {
        match tokio_tungstenite::connect_async(request).await {
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response.body().clone().unwrap_or_default();
                (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
            }
            Err(other) => panic!("unexpected handshake error {other}"),
            Ok(_) => panic!("the upgrade was accepted"),
        }
    }
}

const FRAME_WAIT: Duration = Duration::from_secs(5);

/// What came over a socket, pings and pongs left out.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Close(Option<CloseFrame>),
    /// The connection ended without a close frame.
    End,
}

pub async fn incoming(ws: &mut Ws) -> Incoming {
    loop {
        let next = tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .expect("no frame within 5 s");
        match next {
            Some(Ok(WsMessage::Text(text))) => {
                return Incoming::Json(serde_json::from_str(text.as_str()).expect("frame is JSON"));
            }
            Some(Ok(WsMessage::Close(frame))) => return Incoming::Close(frame),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            Some(Err(_)) | None => return Incoming::End,
        }
    }
}

/// The next JSON frame; panics on anything else.
pub async fn frame(ws: &mut Ws) -> Value {
    match incoming(ws).await {
        Incoming::Json(value) => value,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// The id (a string on the wire) of the next message frame, checked against its data, its
/// type and its position.
pub async fn frame_id(ws: &mut Ws) -> i64 {
    let value = frame(ws).await;
    let id: i64 = value["message"]
        .as_str()
        .unwrap_or_else(|| panic!("message id is a string in {value}"))
        .parse()
        .unwrap();
    assert_eq!(value["data"]["id"], id, "frame {value}");
    assert_eq!(value["type"], "message", "frame {value}");
    assert_eq!(value["position"], id, "frame {value}");
    id
}

/// Asserts the next frame is the resync frame.
pub async fn resync(ws: &mut Ws) {
    let value = frame(ws).await;
    assert_eq!(value, serde_json::json!({"type": "resync", "resync": true}));
}

/// The close code the server sent next (frames before it are skipped).
pub async fn close_code(ws: &mut Ws) -> (u16, String) {
    loop {
        match incoming(ws).await {
            Incoming::Json(_) => continue,
            Incoming::Close(Some(frame)) => return (u16::from(frame.code), frame.reason.to_string()),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Asserts no JSON frame arrives within `wait`.
pub async fn no_frame(ws: &mut Ws, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
}

pub async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while ws.next().await.is_some() {}
    })
    .await;
}

pub async fn send_raw(ws: &mut Ws, message: WsMessage) {
    ws.send(message).await.unwrap();
}
