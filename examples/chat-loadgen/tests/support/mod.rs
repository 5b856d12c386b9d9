//! A minimal server for the load generator's tests: the routes the load generator uses
//! (register, login, send, `/ws` with `since`, and the `/_bench/echo` ceiling), over a real
//! `chatcore::ChatService` with `MemoryStore` and `LocalNotifier`. Bound to 127.0.0.1 port 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chatcore::{
    CatchUpPage, ChatConfig, ChatService, Delivery, LocalNotifier, MemoryStore, Position, SendRequest, User,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Clone)]
struct App {
    chat: ChatService,
    passwords: Arc<Mutex<HashMap<String, String>>>,
    tokens: Arc<Mutex<HashMap<String, User>>>,
    next_token: Arc<AtomicU64>,
    original_frames: bool,
    faults: Faults,
    frames_sent: Arc<AtomicU64>,
}

/// Deliberate faults, to prove the load generator notices them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Skip every n-th live frame (over all connections).
    pub drop_every: Option<u64>,
    /// Send every n-th live frame twice.
    pub duplicate_every: Option<u64>,
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct Send {
    recipient: String,
    body: String,
}

#[derive(Deserialize)]
struct Since {
    since: Option<i64>,
}

fn error(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "error": text }))).into_response()
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl App {
    /// The caller by Bearer token, or (like Django) by `sessionid` cookie; a cookie-authenticated
    /// POST must also carry `X-CSRFToken` equal to the `csrftoken` cookie.
    fn caller(&self, headers: &HeaderMap, post: bool) -> Option<User> {
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let token = match bearer {
            Some(token) => token,
            None => {
                let session = cookie(headers, "sessionid")?;
                if post {
                    let csrf = cookie(headers, "csrftoken")?;
                    if headers.get("x-csrftoken")?.to_str().ok()? != csrf {
                        return None;
                    }
                }
                session
            }
        };
        self.tokens.lock().unwrap().get(token).cloned()
    }
}

async fn register(State(app): State<App>, Json(c): Json<Credentials>) -> Response {
    match app.chat.create_user(&c.username).await {
        Ok(user) => {
            app.passwords.lock().unwrap().insert(c.username, c.password);
            (StatusCode::CREATED, Json(json!({ "username": user.username }))).into_response()
        }
        Err(chatcore::Error::Conflict(_)) => error(StatusCode::CONFLICT, "taken"),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn login(State(app): State<App>, Json(c): Json<Credentials>) -> Response {
    let known = app.passwords.lock().unwrap().get(&c.username) == Some(&c.password);
    let user = app.chat.find_user(&c.username).await.ok().flatten();
    match (known, user) {
        (true, Some(user)) => {
            let token = format!(
                "t{}x{}",
                app.next_token.fetch_add(1, Ordering::Relaxed),
                std::process::id()
            );
            app.tokens.lock().unwrap().insert(token.clone(), user);
            Json(json!({ "token": token, "username": c.username })).into_response()
        }
        _ => error(StatusCode::UNAUTHORIZED, "wrong username or password"),
    }
}

const FORM_CSRF: &str = "formtoken0123456789";

/// A Django-like login form: GET sets the CSRF cookie and embeds the form token; POST checks
/// both and answers 302 with the session cookie.
async fn login_page() -> Response {
    let html = format!(
        r#"<html><form method="post"><input type="hidden" name="csrfmiddlewaretoken" value="{FORM_CSRF}"><input name="username"></form></html>"#
    );
    (
        [
            ("set-cookie", "csrftoken=cookiesecret42; Path=/; SameSite=Lax"),
            ("content-type", "text/html"),
        ],
        html,
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    csrfmiddlewaretoken: String,
}

async fn login_form(
    State(app): State<App>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<LoginForm>,
) -> Response {
    if cookie(&headers, "csrftoken") != Some("cookiesecret42") || f.csrfmiddlewaretoken != FORM_CSRF {
        return error(StatusCode::FORBIDDEN, "CSRF verification failed");
    }
    let known = app.passwords.lock().unwrap().get(&f.username) == Some(&f.password);
    let user = app.chat.find_user(&f.username).await.ok().flatten();
    match (known, user) {
        (true, Some(user)) => {
            let token = format!("s{}", app.next_token.fetch_add(1, Ordering::Relaxed));
            app.tokens.lock().unwrap().insert(token.clone(), user);
            (
                StatusCode::FOUND,
                [
                    ("location", "/".to_owned()),
                    ("set-cookie", format!("sessionid={token}; HttpOnly; Path=/")),
                ],
            )
                .into_response()
        }
        // Django shows the form again, without a session cookie.
        _ => login_page().await,
    }
}

async fn send(State(app): State<App>, headers: HeaderMap, Json(s): Json<Send>) -> Response {
    let Some(user) = app.caller(&headers, true) else {
        return error(StatusCode::UNAUTHORIZED, "log in");
    };
    let request = SendRequest {
        recipient: s.recipient,
        body: s.body,
        idempotency_key: None,
    };
    match app.chat.send(&user, request).await {
        Ok(sent) => (StatusCode::CREATED, Json(&*sent.message)).into_response(),
        Err(chatcore::Error::NotFound(_)) => error(StatusCode::NOT_FOUND, "no such recipient"),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

#[derive(Deserialize)]
struct ReadUpTo {
    up_to: i64,
}

/// `POST /api/v1/conversation/{peer}/read`, as chatcore-axum answers it.
async fn mark_read(
    State(app): State<App>,
    headers: HeaderMap,
    axum::extract::Path(peer): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(user) = app.caller(&headers, true) else {
        return error(StatusCode::UNAUTHORIZED, "log in");
    };
    // The load generator sends JSON without asking for a content type check.
    let Ok(read) = serde_json::from_slice::<ReadUpTo>(&body) else {
        return error(StatusCode::BAD_REQUEST, "up_to");
    };
    match app
        .chat
        .mark_read(&user, &peer, chatcore::MessageId(read.up_to))
        .await
    {
        Ok(state) => Json(json!({ "unread": state.unread, "read_up_to": state.read_up_to })).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

/// `GET /api/v1/conversation/`: the first page of the inbox.
async fn inbox(State(app): State<App>, headers: HeaderMap) -> Response {
    let Some(user) = app.caller(&headers, false) else {
        return error(StatusCode::UNAUTHORIZED, "log in");
    };
    match app.chat.inbox(&user, chatcore::InboxQuery::default()).await {
        Ok(page) => Json(json!({ "unread_total": page.unread_total, "results": page.conversations.len() }))
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn echo(Json(s): Json<Send>) -> Response {
    Json(json!({ "recipient": s.recipient, "body": s.body })).into_response()
}

async fn ws(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<Since>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(user) = app.caller(&headers, false) else {
        return error(StatusCode::UNAUTHORIZED, "log in");
    };
    let original = app.original_frames;
    upgrade.on_upgrade(move |socket| notify(app, user, q.since, original, socket))
}

fn frame(m: &chatcore::Message, original: bool) -> WsMessage {
    let frame = if original {
        json!({ "message": m.id.0.to_string() })
    } else {
        json!({ "message": m.id.0.to_string(), "data": m })
    };
    WsMessage::Text(frame.to_string().into())
}

async fn notify(app: App, user: User, since: Option<i64>, original: bool, mut socket: WebSocket) {
    let Ok(mut feed) = app.chat.subscribe(&user, None).await else {
        return;
    };
    // Subscribed first, then the catch-up: live events it already covered are skipped.
    let mut last = Position(i64::MIN);
    if let Some(since) = since {
        let mut catch_up = app.chat.catch_up(&user, Position(since));
        loop {
            match app.chat.catch_up_page(&mut catch_up).await {
                Ok(CatchUpPage::Events(missed)) if missed.is_empty() => break,
                Ok(CatchUpPage::Events(missed)) => {
                    for event in missed {
                        let Some(m) = event.message_data() else { continue };
                        last = m.id.into();
                        if socket.send(frame(&m, original)).await.is_err() {
                            return;
                        }
                    }
                }
                _ => return,
            }
        }
    }
    loop {
        tokio::select! {
            delivery = feed.recv() => match delivery {
                Some(Delivery::Event { event, .. }) if event.position().is_some_and(|p| p > last) => {
                    let Some(m) = event.message_data() else { continue };
                    let n = app.frames_sent.fetch_add(1, Ordering::Relaxed) + 1;
                    let copies = match (app.faults.drop_every, app.faults.duplicate_every) {
                        (Some(every), _) if n.is_multiple_of(every) => 0,
                        (_, Some(every)) if n.is_multiple_of(every) => 2,
                        _ => 1,
                    };
                    for _ in 0..copies {
                        if socket.send(frame(&m, original)).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Delivery::Event { .. }) | Some(Delivery::Gap) => {}
                Some(Delivery::Closed(_)) | None => return,
            },
            incoming = socket.recv() => if !matches!(incoming, Some(Ok(_))) {
                return;
            },
        }
    }
}

/// Starts the server on 127.0.0.1 port 0; returns its base URL. It runs until the test's
/// runtime shuts down. With `original_frames`, frames carry only `{"message": "<id>"}`, as
/// the original app's do.
pub async fn spawn_minimal_server(original_frames: bool) -> String {
    spawn_faulty_server(original_frames, Faults::default()).await
}

/// [`spawn_minimal_server`] with deliberate faults.
pub async fn spawn_faulty_server(original_frames: bool, faults: Faults) -> String {
    let app = App {
        chat: ChatService::new(
            Arc::new(MemoryStore::new()),
            Arc::new(LocalNotifier::default()),
            ChatConfig {
                send_burst: 0,
                ..ChatConfig::default()
            },
        ),
        passwords: Arc::default(),
        tokens: Arc::default(),
        next_token: Arc::new(AtomicU64::new(1)),
        original_frames,
        faults,
        frames_sent: Arc::default(),
    };
    let router = Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/message/", post(send))
        .route("/api/v1/conversation/{peer}/read", post(mark_read))
        .route("/api/v1/conversation/", get(inbox))
        .route("/_bench/echo", post(echo))
        .route("/accounts/login/", get(login_page).post(login_form))
        .route("/ws", get(ws))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr: SocketAddr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    format!("http://{addr}")
}
