//! The router in process, without the network: request parsing, authentication (a session
//! lookup), the handler, JSON, on `MemoryStore`. What the HTTP layer adds to the service.
//!
//!     cargo bench -p chatcore-axum --bench router

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use std::sync::Arc;

use axum::body::Body;
use chatcore::{ChatConfig, ChatService, LocalNotifier, MemoryStore, SendRequest};
use chatcore_axum::{ChatApi, SessionAuthenticator, SessionConfig};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use tower::ServiceExt;

struct Setup {
    app: axum::Router,
    token: String,
    message_id: i64,
}

async fn setup() -> Setup {
    let store = Arc::new(MemoryStore::new());
    let chat = ChatService::new(
        store.clone(),
        Arc::new(LocalNotifier::default()),
        // The send rate limit off: the bench sends far faster than a person.
        ChatConfig {
            send_burst: 0,
            ..ChatConfig::default()
        },
    );
    let auth = SessionAuthenticator::new(store, SessionConfig::default()).unwrap();
    // As a server runs: session lookups served from the cache.
    auth.start(&chat).await.unwrap();
    let alice = chat.create_user("alice").await.unwrap();
    chat.create_user("bob").await.unwrap();
    let mut message_id = 0;
    for i in 0..10_000 {
        let request = SendRequest {
            recipient: "bob".into(),
            body: format!("message {i}"),
            ..Default::default()
        };
        message_id = chat.send(&alice, request).await.unwrap().message.id.0;
    }
    let token = auth.start_session(alice).await.unwrap().token;
    let api = ChatApi::new(chat, auth);
    let app = axum::Router::new().nest("/chat", api.router());
    Setup {
        app,
        token,
        message_id,
    }
}

async fn call(app: &axum::Router, request: Request<Body>, status: u16) -> axum::body::Bytes {
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), status);
    axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
}

fn router(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let setup = runtime.block_on(setup());
    let bearer = format!("Bearer {}", setup.token);
    let one = format!("/chat/api/v1/message/{}/", setup.message_id);

    let mut group = c.benchmark_group("router");
    group.bench_function("send (POST JSON, 201)", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = Request::post("/chat/api/v1/message/")
                .header("authorization", &bearer)
                .header("content-type", "application/json")
                .body(Body::from(r#"{"recipient": "bob", "body": "hello there"}"#))
                .unwrap();
            call(&setup.app, request, 201).await
        })
    });
    group.bench_function("history (latest 15 of 10,000+)", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = Request::get("/chat/api/v1/message/?target=bob")
                .header("authorization", &bearer)
                .body(Body::empty())
                .unwrap();
            call(&setup.app, request, 200).await
        })
    });
    group.bench_function("get one message", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = Request::get(&one)
                .header("authorization", &bearer)
                .body(Body::empty())
                .unwrap();
            call(&setup.app, request, 200).await
        })
    });
    group.finish();
}

criterion_group!(benches, router);
criterion_main!(benches);
