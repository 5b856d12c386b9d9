//! Measures the server's memory per idle WebSocket: starts the chat router in this process,
//! opens N idle `/ws` connections from bare TCP sockets (so the client side costs next to
//! nothing), and reports the growth of the resident set per connection.
//!
//!     cargo run --release -p chatcore-axum --example idle_ws_memory -- 5000
//!
//! Each connection takes two file descriptors here (both ends live in this process), so
//! `ulimit -n` must exceed 2 N. The figure includes the client sockets' small tokio state;
//! it is an upper bound for the server's share. Linux only (reads `/proc/self/statm`).
//! `WS_READ_BUFFER=N` overrides `ApiConfig::ws_read_buffer`.

use std::sync::Arc;
use std::time::Duration;

use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore};
mod common;

use chatcore_axum::{ChatApi, SessionAuthenticator, SessionConfig};
use common::{open_websocket, resident_bytes};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = std::env::args().nth(1).map_or(Ok(2000), |n| n.parse())?;
    let store = Arc::new(MemoryStore::new());
    let chat = ChatService::new(
        store.clone(),
        Arc::new(LocalNotifier::default()),
        ChatConfig::default(),
    );
    let auth = SessionAuthenticator::new(store, SessionConfig::default())?;
    auth.start(&chat).await?;
    let user = chat.create_user("idle").await?;
    let token = auth.start_session(user).await?.token;
    let read_buffer = std::env::var("WS_READ_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(chatcore_axum::ApiConfig::default().ws_read_buffer);
    let api = ChatApi::new(chat, auth).with_config(chatcore_axum::ApiConfig {
        ws_read_buffer: read_buffer,
        ..Default::default()
    });
    let shutdown = api.shutdown_handle();
    let app = axum::Router::new().nest("/chat", api.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(chatcore_axum::serve(listener, app, shutdown.clone()));

    let request = format!(
        "GET /chat/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    // Warm up allocator arenas and lazily initialised state with a few connections.
    let mut sockets = Vec::with_capacity(count + 16);
    for _ in 0..16 {
        sockets.push(open_websocket(addr, &request).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = resident_bytes();
    for _ in 0..count {
        sockets.push(open_websocket(addr, &request).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = resident_bytes();
    let open_sockets = shutdown.open_sockets();
    println!(
        "{count} idle websockets ({open_sockets} open on the server): resident set grew by {:.1} MiB, \
         {:.1} KiB per connection",
        (after - before) as f64 / (1024.0 * 1024.0),
        (after.saturating_sub(before)) as f64 / 1024.0 / count as f64,
    );
    shutdown.shutdown();
    drop(sockets);
    server.await??;
    Ok(())
}
