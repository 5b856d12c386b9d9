//! # host-app
//!
//! An example of a site that embeds chatcore: an axum application with its own pages, its
//! own accounts and its own login form, which nests the chat API and the `<chatcore-app>`
//! element under `/chat`. What it shows:
//!
//! - provisioning: when one of the site's users logs in, the site makes sure a chat user of
//!   the same name exists ([`ChatService::find_user`], else [`ChatService::create_user`]),
//!   starts a chat session for them ([`SessionAuthenticator::start_session`], no chat
//!   password) and sets the chat's session cookie next to its own. The element then reads
//!   who is logged in from `/chat/api/v1/auth/session` and shows the chat at once;
//! - no chat accounts of its own: the chat router has no register or login routes, and the
//!   element (attribute `login-url`) sends someone without a session to the site's login;
//! - theming through CSS custom properties (`assets/site.css`), and a strict
//!   Content-Security-Policy on the site's page;
//! - a graceful shutdown: on SIGINT or SIGTERM the server stops, the chat's WebSockets get
//!   close frames, then the store is flushed and closed (`store.close()`).
//!
//! ```text
//! cargo run -p host-app        # http://127.0.0.1:8080, log in as alice / alice-password
//! ```
//!
//! The site's own accounts are a list from the command line (`--user NAME:PASSWORD`), and
//! its sessions live in memory: stand-ins for whatever a real site has.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chatcore::{ChatConfig, ChatService, LocalNotifier};
use chatcore_axum::{ChatApi, SessionAuthenticator, SessionConfig};
use chatcore_sqlite::{SqliteConfig, SqliteStore};
use clap::Parser;
use rand::RngCore;
use serde::Deserialize;

/// Where the chat is nested in the site.
const CHAT_PREFIX: &str = "/chat";
/// The site's own session cookie (not the chat's).
const SITE_COOKIE: &str = "site_session";
const SITE_CSS: &str = include_str!("../assets/site.css");

/// The example site's command line.
#[derive(Debug, Parser)]
#[command(name = "host-app", about = "An example site embedding chatcore under /chat")]
struct Options {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The SQLite file holding the chat's users, messages and sessions (created if missing).
    #[arg(long, default_value = "host-app.sqlite3")]
    database: PathBuf,
    /// One of the site's accounts, as NAME:PASSWORD; repeat for more.
    #[arg(long = "user", default_values = ["alice:alice-password", "bob:bob-password"])]
    users: Vec<String>,
}

/// The site's state: its accounts and sessions, and the chat it provisions users into.
#[derive(Clone)]
struct Site {
    accounts: Arc<HashMap<String, String>>,
    /// Site session token → user name.
    sessions: Arc<Mutex<HashMap<String, String>>>,
    chat: ChatService,
    chat_sessions: SessionAuthenticator,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = Options::parse();
    let mut accounts = HashMap::new();
    for entry in &options.users {
        let (name, password) = entry
            .split_once(':')
            .ok_or_else(|| format!("--user {entry:?}: expected NAME:PASSWORD"))?;
        accounts.insert(name.to_owned(), password.to_owned());
    }

    // The chat: a store (here SQLite), the service, and chat sessions in the same store.
    let store = Arc::new(SqliteStore::open(SqliteConfig::file(&options.database)).await?);
    store.migrate().await?;
    let chat = ChatService::new(
        store.clone(),
        Arc::new(LocalNotifier::default()),
        ChatConfig::default(),
    );
    let chat_sessions = SessionAuthenticator::new(store.clone(), SessionConfig::default())?;
    chat_sessions.start(&chat).await?; // session cache, expired-session sweeper
    // No `with_auth_routes`: the site owns logging in; the chat only reads the cookie.
    let api = ChatApi::new(chat.clone(), chat_sessions.clone());
    let shutdown = api.shutdown_handle();

    let site = Site {
        accounts: Arc::new(accounts),
        sessions: Arc::default(),
        chat,
        chat_sessions,
    };
    let app = Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route(
            "/site.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], SITE_CSS) }),
        )
        .with_state(site)
        .nest(CHAT_PREFIX, api.router());

    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    println!("host-app listening on http://{}", listener.local_addr()?);
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        trigger.shutdown(); // stop accepting, close the chat's sockets with 1001
    });
    chatcore_axum::serve(listener, app, shutdown).await?;
    // Flush and close the store last, once nothing uses it.
    store.close().await?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("listen for SIGTERM");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// The value of cookie `name` in `headers`.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

impl Site {
    fn user(&self, headers: &HeaderMap) -> Option<String> {
        let token = cookie(headers, SITE_COOKIE)?;
        self.sessions.lock().expect("sessions lock").get(token).cloned()
    }
}

/// The home page: the login form, or the site with the chat in it.
async fn home(State(site): State<Site>, headers: HeaderMap, query: axum::extract::RawQuery) -> Response {
    let body = match site.user(&headers) {
        None => {
            let error = if query.0.as_deref() == Some("error") {
                r#"<p class="error" role="alert">Wrong name or password.</p>"#
            } else {
                ""
            };
            format!(
                r#"<main class="login">
<h1>Example site</h1>
<form method="post" action="/login">
<label>Name <input name="username" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Log in</button>
{error}
</form>
</main>"#
            )
        }
        Some(name) => format!(
            r#"<header class="site">
<strong>Example site</strong>
<span>Logged in as <span class="who">{}</span></span>
<form method="post" action="/logout"><button type="submit" id="site-logout">Log out</button></form>
</header>
<main class="content">
<p>The site's own content goes here; the chat sits beside it.</p>
<chatcore-app login-url="/"></chatcore-app>
</main>"#,
            escape_html(&name)
        ),
    };
    let page = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Example site</title>
<link rel="icon" href="{CHAT_PREFIX}/ui/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/site.css">
<script type="module" src="{CHAT_PREFIX}/ui/chatcore-app.js"></script>
</head>
<body>
{body}
</body>
</html>"#
    );
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(chatcore_axum::ui::CONTENT_SECURITY_POLICY),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        page,
    )
        .into_response()
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// The site checks its own account, then provisions the chat user and logs them in to the
/// chat: one chat session, its cookie set beside the site's.
async fn login(State(site): State<Site>, Form(form): Form<Credentials>) -> Response {
    if site.accounts.get(&form.username) != Some(&form.password) {
        return Redirect::to("/?error").into_response();
    }
    let chat_session = match provision(&site, &form.username).await {
        Ok(session) => session,
        Err(error) => {
            tracing::error!(%error, "provisioning the chat user");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "The chat is unavailable; try again.",
            )
                .into_response();
        }
    };
    let chat_cookie = match site.chat_sessions.session_cookie(&chat_session.token) {
        Ok(cookie) => cookie,
        Err(error) => {
            tracing::error!(%error, "building the chat cookie");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let token = random_token();
    site.sessions
        .lock()
        .expect("sessions lock")
        .insert(token.clone(), form.username);
    let site_cookie = format!("{SITE_COOKIE}={token}; HttpOnly; SameSite=Lax; Path=/");
    let mut response = Redirect::to("/").into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, chat_cookie);
    headers.append(
        header::SET_COOKIE,
        HeaderValue::try_from(site_cookie).expect("a hex token makes a valid header"),
    );
    response
}

/// The chat user of the site's user `name`: found, or created on first login; then a new
/// chat session for them.
async fn provision(site: &Site, name: &str) -> chatcore::Result<chatcore_axum::Session> {
    let user = match site.chat.find_user(name).await? {
        Some(user) => user,
        None => match site.chat.create_user(name).await {
            Ok(user) => user,
            // Two first logins at once: the other one created it.
            Err(chatcore::Error::Conflict(_)) => site
                .chat
                .find_user(name)
                .await?
                .ok_or_else(|| chatcore::Error::invalid("the chat user vanished"))?,
            Err(error) => return Err(error),
        },
    };
    site.chat_sessions.start_session(user).await
}

/// Ends the site session and the chat session (which closes the chat's sockets opened with
/// it), and clears both cookies.
async fn logout(State(site): State<Site>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, SITE_COOKIE) {
        site.sessions.lock().expect("sessions lock").remove(token);
    }
    if let Some(token) = site.chat_sessions.token_from_headers(&headers)
        && let Err(error) = site.chat_sessions.logout(&site.chat, token).await
    {
        tracing::warn!(%error, "ending the chat session");
    }
    let mut response = Redirect::to("/").into_response();
    let headers = response.headers_mut();
    if let Ok(clear) = site.chat_sessions.clearing_cookie() {
        headers.append(header::SET_COOKIE, clear);
    }
    headers.append(
        header::SET_COOKIE,
        HeaderValue::from_static("site_session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"),
    );
    response
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
