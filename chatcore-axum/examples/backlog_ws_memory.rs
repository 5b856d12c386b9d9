//! Measures what `/ws?since=` sockets with a long backlog cost the server: starts the chat
//! router in this process over a store holding a backlog of M messages for one user, opens
//! N `/ws?since=0` connections of that user from bare TCP sockets that never read (the worst
//! case: nothing drains), and reports the growth of the resident set.
//!
//!     cargo run --release -p chatcore-axum --example backlog_ws_memory -- 100 1000
//!     cargo run --release -p chatcore-axum --example backlog_ws_memory -- 100 1000 sqlite
//!
//! The third argument picks the store: `memory` (default) or `sqlite` (a temporary file).
//! The user's connection limit is raised to N so that every socket stays open; with the
//! default limit (20) the oldest ones are closed. Each socket holds at most one catch-up
//! page (`ChatConfig::catch_up_page`, 100 events or 128 KiB of bodies by default) while the client does not read, so the
//! growth stays flat in M. Linux only (reads `/proc/self/statm`).

use std::sync::Arc;
use std::time::Duration;

use chatcore::{Backend, ChatConfig, ChatService, LocalNotifier, MemoryStore, SendRequest};
mod common;

use chatcore_axum::{ChatApi, SessionAuthenticator, SessionConfig};
use common::{open_websocket, resident_bytes};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let sockets: usize = args.next().map_or(Ok(100), |n| n.parse())?;
    let backlog: usize = args.next().map_or(Ok(1000), |n| n.parse())?;
    let backend = args.next().unwrap_or_else(|| "memory".to_owned());
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Backend> = match backend.as_str() {
        "memory" => Arc::new(MemoryStore::new()),
        "sqlite" => {
            let store = chatcore_sqlite::SqliteStore::open(chatcore_sqlite::SqliteConfig::file(
                dir.path().join("chat.db"),
            ))
            .await?;
            store.migrate().await?;
            Arc::new(store)
        }
        other => return Err(format!("unknown store {other:?} (memory or sqlite)").into()),
    };
    let chat = ChatService::new(
        store.clone(),
        Arc::new(LocalNotifier::default()),
        ChatConfig {
            max_connections_per_user: sockets,
            send_burst: 0,
            ..ChatConfig::default()
        },
    );
    let auth = SessionAuthenticator::new(store, SessionConfig::default())?;
    auth.start(&chat).await?;
    let reader = chat.create_user("reader").await?;
    let writer = chat.create_user("writer").await?;
    let body = "a message of a realistic length, some eighty characters long, give or take".to_owned();
    for _ in 0..backlog {
        let request = SendRequest {
            recipient: "reader".into(),
            body: body.clone(),
            idempotency_key: None,
        };
        chat.send(&writer, request).await?;
    }
    let token = auth.start_session(reader).await?.token;
    let api = ChatApi::new(chat, auth);
    let shutdown = api.shutdown_handle();
    let app = axum::Router::new().nest("/chat", api.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(chatcore_axum::serve(listener, app, shutdown.clone()));
    let request = format!(
        "GET /chat/ws?since=0 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = resident_bytes();
    let mut open = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        open.push(open_websocket(addr, &request).await?);
    }
    // Let every socket read and write as much of its backlog as the unread TCP buffers take.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = resident_bytes();
    println!(
        "{sockets} sockets with since=0 over a {backlog}-message backlog ({backend}, {} open on the server): \
         resident set {:.1} MiB before, {:.1} MiB after, grew by {:.1} MiB ({:.1} KiB per socket)",
        shutdown.open_sockets(),
        before as f64 / (1024.0 * 1024.0),
        after as f64 / (1024.0 * 1024.0),
        after.saturating_sub(before) as f64 / (1024.0 * 1024.0),
        after.saturating_sub(before) as f64 / 1024.0 / sockets as f64,
    );
    shutdown.shutdown();
    drop(open);
    server.await??;
    Ok(())
}
