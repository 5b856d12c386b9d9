//! Typing and presence over `/ws`, end to end (real server, real clients), on the memory
//! store and SQLite: the contract of docs/api.md, "Typing and presence".

mod suite;

use std::sync::Arc;
use std::time::Duration;

use chatcore::{Backend, ChatConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};
use suite::app::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn typing(to: &str) -> WsMessage {
    WsMessage::text(json!({"type": "typing", "to": to}).to_string())
}

/// Sends a ping and waits for its pong: the server has read (and, for typing frames,
/// relayed) every frame sent before it, since it handles a socket's frames in order.
async fn fence(ws: &mut Ws) {
    send_raw(ws, WsMessage::Ping(b"fence".to_vec().into())).await;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no pong within 5 s");
        match next {
            Some(Ok(WsMessage::Pong(payload))) if payload.as_ref() == b"fence" => return,
            Some(Ok(WsMessage::Text(text))) => panic!("unexpected frame while fencing: {text}"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended while fencing: {other:?}"),
        }
    }
}

async fn get(app: &TestApp, token: &str, path: &str) -> Value {
    let response = app.client(token).get(app.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The next frame must be the message `body`.
async fn message_frame(ws: &mut Ws, body: &str) {
    let value = frame(ws).await;
    assert_eq!(value["type"], "message", "{value}");
    assert_eq!(value["data"]["body"], body, "{value}");
}

fn with_presence(grace: Duration, interval: Duration) -> Options {
    Options {
        chat: ChatConfig {
            presence: true,
            presence_grace: grace,
            presence_interval: interval,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// An app with enough typing allowance for every frame of a case (the limit has a case of
/// its own), and the tokens of alice, bob and carol.
async fn typing_app(store: Arc<dyn Backend>) -> (TestApp, [String; 3]) {
    let options = Options {
        chat: ChatConfig {
            typing_burst: 20,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let (_, carol) = app.user("carol").await;
    (app, [alice, bob, carol])
}

async fn typing_is_relayed_only_within_a_conversation(store: Arc<dyn Backend>) {
    let (app, [alice, bob, carol]) = typing_app(store).await;
    let mut alice_ws = app.ws(&alice, None).await;
    let mut bob_ws = app.ws(&bob, None).await;
    let mut carol_ws = app.ws(&carol, None).await;

    // No conversation yet: dropped, and so are typing to an unknown user, to oneself,
    // malformed and unknown frames; the socket stays open.
    send_raw(&mut alice_ws, typing("bob")).await;
    send_raw(&mut alice_ws, typing("nobody")).await;
    send_raw(&mut alice_ws, typing("alice")).await;
    send_raw(&mut alice_ws, typing("not a name!")).await;
    send_raw(&mut alice_ws, WsMessage::text(r#"{"type":"typing"}"#)).await;
    send_raw(&mut alice_ws, WsMessage::text(r#"{"type":"dance","to":"bob"}"#)).await;
    fence(&mut alice_ws).await;
    app.send(&alice, "bob", "hello").await;
    message_frame(&mut bob_ws, "hello").await;
    message_frame(&mut alice_ws, "hello").await;

    // Now they share a conversation: bob's sockets get it, alice's and carol's do not.
    send_raw(&mut alice_ws, typing("BOB")).await;
    assert_eq!(
        frame(&mut bob_ws).await,
        json!({"type": "typing", "from": "alice", "expires_in_ms": 6000})
    );
    send_raw(
        &mut alice_ws,
        WsMessage::text(json!({"type": "typing", "to": "bob", "stop": true}).to_string()),
    )
    .await;
    assert_eq!(
        frame(&mut bob_ws).await,
        json!({"type": "typing", "from": "alice", "expires_in_ms": 0})
    );
    // Typing to carol (no conversation) is dropped: her next frame is a message.
    send_raw(&mut alice_ws, typing("carol")).await;
    fence(&mut alice_ws).await;
    app.send(&bob, "carol", "hi carol").await;
    message_frame(&mut carol_ws, "hi carol").await;
    // Ephemeral: a reconnect with since replays the messages only.
    let mut again = app.ws(&bob, Some(0)).await;
    message_frame(&mut again, "hello").await;
    message_frame(&mut again, "hi carol").await;
    no_frame(&mut again, Duration::from_millis(200)).await;
    no_frame(&mut alice_ws, Duration::from_millis(10)).await;
    for ws in [alice_ws, bob_ws, carol_ws, again] {
        close(ws).await;
    }
}

async fn typing_is_dropped_while_a_block_stands(store: Arc<dyn Backend>) {
    let (app, [alice, bob, carol]) = typing_app(store).await;
    let mut alice_ws = app.ws(&alice, None).await;
    let mut bob_ws = app.ws(&bob, None).await;
    app.send(&alice, "bob", "hello").await;
    message_frame(&mut alice_ws, "hello").await;
    message_frame(&mut bob_ws, "hello").await;
    let response = app
        .client(&bob)
        .put(app.url("/api/v1/block/alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    // Both ways dropped: the next frame each gets is carol's message.
    send_raw(&mut alice_ws, typing("bob")).await;
    send_raw(&mut bob_ws, typing("alice")).await;
    fence(&mut alice_ws).await;
    fence(&mut bob_ws).await;
    app.send(&carol, "bob", "from carol").await;
    app.send(&carol, "alice", "from carol").await;
    message_frame(&mut bob_ws, "from carol").await;
    message_frame(&mut alice_ws, "from carol").await;

    let response = app
        .client(&bob)
        .delete(app.url("/api/v1/block/alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    send_raw(&mut alice_ws, typing("bob")).await;
    assert_eq!(
        frame(&mut bob_ws).await,
        json!({"type": "typing", "from": "alice", "expires_in_ms": 6000})
    );
    close(alice_ws).await;
    close(bob_ws).await;
}

async fn typing_frames_are_rate_limited_per_socket(store: Arc<dyn Backend>) {
    let options = Options {
        chat: ChatConfig {
            typing_burst: 2,
            typing_rate_per_sec: 1,
            typing_expiry: Duration::from_millis(2500),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    app.send(&bob, "alice", "hi").await;
    let mut alice_ws = app.ws(&alice, None).await;
    let mut bob_ws = app.ws(&bob, None).await;
    for _ in 0..6 {
        send_raw(&mut alice_ws, typing("bob")).await;
    }
    fence(&mut alice_ws).await;
    app.send(&alice, "bob", "done typing").await;
    for _ in 0..2 {
        assert_eq!(
            frame(&mut bob_ws).await,
            json!({"type": "typing", "from": "alice", "expires_in_ms": 2500})
        );
    }
    // The extra frames were dropped, and the typist's socket is still open.
    message_frame(&mut bob_ws, "done typing").await;
    message_frame(&mut alice_ws, "done typing").await;
    // A fresh socket has a fresh allowance.
    let mut other_tab = app.ws(&alice, None).await;
    send_raw(&mut other_tab, typing("bob")).await;
    assert_eq!(frame(&mut bob_ws).await["type"], "typing");
    for ws in [alice_ws, bob_ws, other_tab] {
        close(ws).await;
    }
}

async fn typing_off_drops_every_typing_frame(store: Arc<dyn Backend>) {
    let options = Options {
        chat: ChatConfig {
            typing_burst: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    app.send(&bob, "alice", "hi").await;
    let mut alice_ws = app.ws(&alice, None).await;
    let mut bob_ws = app.ws(&bob, None).await;
    send_raw(&mut alice_ws, typing("bob")).await;
    fence(&mut alice_ws).await;
    app.send(&alice, "bob", "no typing here").await;
    message_frame(&mut bob_ws, "no typing here").await;
    close(alice_ws).await;
    close(bob_ws).await;
}

async fn presence_reaches_conversation_peers_without_flapping(store: Arc<dyn Backend>) {
    // A grace long enough for a reconnect on a busy machine; changes sent every 100 ms.
    let app = TestApp::spawn_with(
        store,
        with_presence(Duration::from_secs(2), Duration::from_millis(100)),
    )
    .await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let (_, carol) = app.user("carol").await;
    app.send(&bob, "alice", "hi").await;
    let mut alice_ws = app.ws(&alice, None).await;
    let mut carol_ws = app.ws(&carol, None).await;

    // The inbox and the directory say bob is offline and never seen; carol, a stranger,
    // gets no presence fields in the directory.
    let inbox = get(&app, &alice, "/api/v1/conversation/").await;
    assert_eq!(inbox["results"][0]["peer"], "bob");
    assert_eq!(inbox["results"][0]["online"], false);
    assert_eq!(inbox["results"][0]["last_seen"], Value::Null);

    let bob_ws = app.ws(&bob, None).await;
    assert_eq!(
        frame(&mut alice_ws).await,
        json!({"type": "presence", "users": [{"user": "bob", "online": true, "last_seen": null}]})
    );
    // The inbox and the directory agree.
    let inbox = get(&app, &alice, "/api/v1/conversation/").await;
    assert_eq!(inbox["results"][0]["online"], true);
    let directory = get(&app, &alice, "/api/v1/user/").await;
    assert_eq!(
        directory,
        json!([{"username": "bob", "online": true, "last_seen": null}, {"username": "carol"}])
    );
    let directory = get(&app, &carol, "/api/v1/user/").await;
    assert_eq!(directory, json!([{"username": "alice"}, {"username": "bob"}]));

    // A reload (close, reopen within the grace) sends nothing: the next presence frame
    // alice gets is bob going offline for good.
    close(bob_ws).await;
    let bob_ws = app.ws(&bob, None).await;
    close(bob_ws).await;
    let offline = frame(&mut alice_ws).await;
    assert_eq!(offline["type"], "presence", "{offline}");
    assert_eq!(offline["users"][0]["user"], "bob", "{offline}");
    assert_eq!(offline["users"][0]["online"], false, "{offline}");
    let last_seen = offline["users"][0]["last_seen"]
        .as_str()
        .expect("last_seen set")
        .to_owned();
    let inbox = get(&app, &alice, "/api/v1/conversation/").await;
    assert_eq!(inbox["results"][0]["online"], false);
    assert_eq!(inbox["results"][0]["last_seen"], last_seen.as_str());

    // Carol shares no conversation with bob: none of it reached her; and a reconnect with
    // since replays no presence.
    app.send(&alice, "carol", "marker").await;
    message_frame(&mut carol_ws, "marker").await;
    message_frame(&mut alice_ws, "marker").await;
    let mut again = app.ws(&alice, Some(0)).await;
    message_frame(&mut again, "hi").await;
    message_frame(&mut again, "marker").await;
    for ws in [alice_ws, carol_ws, again] {
        close(ws).await;
    }
}

async fn many_changes_in_one_interval_make_one_frame_per_watcher(store: Arc<dyn Backend>) {
    const PEERS: usize = 8;
    let interval = Duration::from_secs(2);
    let app = TestApp::spawn_with(store, with_presence(Duration::from_secs(5), interval)).await;
    let (_, alice) = app.user("alice").await;
    let mut tokens = Vec::new();
    for i in 0..PEERS {
        let name = format!("peer{i}");
        let (_, token) = app.user(&name).await;
        app.send(&token, "alice", "hi").await;
        tokens.push(token);
    }
    let mut alice_ws = app.ws(&alice, None).await;
    let started = tokio::time::Instant::now();
    let mut sockets = Vec::new();
    for token in &tokens {
        sockets.push(app.ws(token, None).await);
    }
    let connected_in = started.elapsed();
    let mut seen = std::collections::BTreeSet::new();
    let mut frames = 0;
    while seen.len() < PEERS {
        let value = frame(&mut alice_ws).await;
        assert_eq!(value["type"], "presence", "{value}");
        frames += 1;
        for change in value["users"].as_array().expect("a list of changes") {
            assert_eq!(change["online"], true, "{value}");
            assert!(
                seen.insert(change["user"].as_str().unwrap().to_owned()),
                "twice: {value}"
            );
        }
    }
    // All connected within one interval: at most the two intervals they straddle.
    if connected_in < interval {
        assert!(
            frames <= 2,
            "{frames} frames for {PEERS} changes within one interval"
        );
    }
    for ws in sockets {
        close(ws).await;
    }
    close(alice_ws).await;
}

async fn presence_off_adds_no_fields_and_no_frames(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    app.send(&bob, "alice", "hi").await;
    let mut alice_ws = app.ws(&alice, None).await;
    let bob_ws = app.ws(&bob, None).await;
    let inbox = get(&app, &alice, "/api/v1/conversation/").await;
    assert!(inbox["results"][0].get("online").is_none(), "{inbox}");
    assert_eq!(
        get(&app, &alice, "/api/v1/user/").await,
        json!([{"username": "bob"}])
    );
    close(bob_ws).await;
    app.send(&bob, "alice", "marker").await;
    message_frame(&mut alice_ws, "marker").await;
    close(alice_ws).await;
}

macro_rules! presence_suite {
    ($factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                init_logs();
                super::$case($factory().await).await;
            }
        )*
    };
    ($factory:path) => {
        presence_suite!($factory;
            typing_is_relayed_only_within_a_conversation,
            typing_frames_are_rate_limited_per_socket,
            typing_is_dropped_while_a_block_stands,
            typing_off_drops_every_typing_frame,
            presence_reaches_conversation_peers_without_flapping,
            many_changes_in_one_interval_make_one_frame_per_watcher,
            presence_off_adds_no_fields_and_no_frames,
        );
    };
}

mod memory {
    use super::*;
    async fn fresh_store() -> Arc<dyn Backend> {
        Arc::new(chatcore::MemoryStore::new())
    }
    presence_suite!(fresh_store);
}

mod sqlite {
    use super::*;
    async fn fresh_store() -> Arc<dyn Backend> {
        let store = chatcore_sqlite::SqliteStore::open(chatcore_sqlite::SqliteConfig::memory())
            .await
            .expect("open SQLite");
        store.migrate().await.expect("migrate SQLite");
        Arc::new(store)
    }
    presence_suite!(fresh_store);
}
