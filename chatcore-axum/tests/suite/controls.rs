//! The contract of the controls people have over what they said and who reaches them (issue
//! 19): editing and deleting messages, their events, blocks, export and account deletion.

use std::sync::Arc;
use std::time::Duration;

use chatcore::{Backend, ChatConfig};
use serde_json::{Value, json};

use super::app::*;
use super::cases::{error_of, get_json};

/// PATCH `/api/v1/message/{id}/` with `{"body": body}` as the owner of `token`.
async fn patch(app: &TestApp, token: &str, id: &str, body: &str) -> reqwest::Response {
    app.client(token)
        .patch(app.url(&format!("/api/v1/message/{id}/")))
        .json(&json!({ "body": body }))
        .send()
        .await
        .unwrap()
}

/// DELETE `/api/v1/message/{id}/` as the owner of `token`.
async fn delete(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.client(token)
        .delete(app.url(&format!("/api/v1/message/{id}")))
        .send()
        .await
        .unwrap()
}

pub async fn edit_and_delete_answer_by_role(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let (_, carol) = app.user("carol").await;
    let sent = app.send(&alice, "bob", "helo").await;
    let id = sent["id"].as_i64().unwrap().to_string();
    assert_eq!(
        sent["edited"],
        Value::Null,
        "every message says whether it was edited"
    );
    assert!(sent.get("deleted").is_none(), "only tombstones say deleted");

    // The recipient: 403; anyone else, a missing and a malformed id: 404.
    let refused = error_of(patch(&app, &bob, &id, "hacked").await, 403).await;
    assert_eq!(refused, "only the sender of a message can change it");
    error_of(delete(&app, &bob, &id).await, 403).await;
    for (token, id) in [(&carol, id.as_str()), (&alice, "999999"), (&alice, "nope")] {
        assert_eq!(
            error_of(patch(&app, token, id, "x").await, 404).await,
            "message not found"
        );
        assert_eq!(
            error_of(delete(&app, token, id).await, 404).await,
            "message not found"
        );
    }
    // Bad bodies, like a send's.
    error_of(patch(&app, &alice, &id, "  \n ").await, 400).await;
    error_of(patch(&app, &alice, &id, &"x".repeat(4_001)).await, 400).await;
    let response = app
        .anonymous()
        .patch(app.url(&format!("/api/v1/message/{id}/")))
        .json(&json!({"body": "x"}))
        .send()
        .await
        .unwrap();
    error_of(response, 401).await;
    let response = app
        .client(&alice)
        .patch(app.url(&format!("/api/v1/message/{id}/")))
        .json(&json!({"text": "x"}))
        .send()
        .await
        .unwrap();
    error_of(response, 400).await;

    let response = patch(&app, &alice, &id, "  hello ").await;
    assert_eq!(response.status(), 200);
    let edited: Value = response.json().await.unwrap();
    assert_eq!(edited["body"], "hello");
    assert_eq!(
        (&edited["id"], &edited["timestamp"]),
        (&sent["id"], &sent["timestamp"])
    );
    assert!(edited["edited"].is_string(), "{edited}");
    for token in [&alice, &bob] {
        let (status, message) = get_json(&app, token, &format!("/api/v1/message/{id}/")).await;
        assert_eq!((status, &message), (200, &edited));
    }

    let response = delete(&app, &alice, &id).await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        delete(&app, &alice, &id).await.status(),
        204,
        "deleting again is fine"
    );
    let tombstone = json!({
        "id": sent["id"], "user": "alice", "recipient": "bob", "timestamp": sent["timestamp"],
        "body": "", "edited": null, "deleted": true
    });
    for token in [&alice, &bob] {
        let (status, message) = get_json(&app, token, &format!("/api/v1/message/{id}/")).await;
        assert_eq!((status, &message), (200, &tombstone));
        let (_, page) = get_json(&app, token, "/api/v1/message/?target=alice").await;
        let (_, page) = if page["count"] == 0 {
            get_json(&app, token, "/api/v1/message/?target=bob").await
        } else {
            (200, page)
        };
        assert_eq!(page["count"], 1);
        assert_eq!(page["results"], json!([tombstone]));
    }
    error_of(patch(&app, &alice, &id, "back").await, 404).await;
    error_of(patch(&app, &bob, &id, "back").await, 403).await;
}

pub async fn edits_and_deletes_reach_both_sockets_and_are_replayed(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut alice_ws = app.ws(&alice, None).await;
    let mut bob_ws = app.ws(&bob, None).await;
    let sent = app.send(&alice, "bob", "one").await;
    let id = sent["id"].as_i64().unwrap();
    for ws in [&mut alice_ws, &mut bob_ws] {
        assert_eq!(frame_id(ws).await, id);
    }
    assert_eq!(patch(&app, &alice, &id.to_string(), "one!").await.status(), 200);
    let mut edit_positions = Vec::new();
    for ws in [&mut alice_ws, &mut bob_ws] {
        let edit = frame(ws).await;
        assert_eq!(edit["type"], "edit", "{edit}");
        assert_eq!(
            (&edit["data"]["id"], &edit["data"]["body"]),
            (&json!(id), &json!("one!"))
        );
        assert!(edit["data"]["edited"].is_string());
        edit_positions.push(edit["position"].as_i64().unwrap());
    }
    assert_eq!(edit_positions[0], edit_positions[1], "one event, one position");
    assert!(edit_positions[0] > id);
    assert_eq!(delete(&app, &alice, &id.to_string()).await.status(), 204);
    let mut delete_position = 0;
    for ws in [&mut alice_ws, &mut bob_ws] {
        let gone = frame(ws).await;
        assert_eq!(gone["type"], "delete", "{gone}");
        assert_eq!(
            (&gone["data"]["body"], &gone["data"]["deleted"]),
            (&json!(""), &json!(true))
        );
        delete_position = gone["position"].as_i64().unwrap();
        assert!(delete_position > edit_positions[0]);
    }
    // Deleting again: no event.
    assert_eq!(delete(&app, &alice, &id.to_string()).await.status(), 204);
    no_frame(&mut bob_ws, Duration::from_millis(100)).await;
    close(alice_ws).await;
    close(bob_ws).await;

    // The inbox follows, unread counts do not move.
    let (_, inbox) = get_json(&app, &bob, "/api/v1/conversation/").await;
    assert_eq!(inbox["unread_total"], 1, "{inbox}");
    assert_eq!(inbox["results"][0]["unread"], 1);
    assert_eq!(inbox["results"][0]["last_message"]["deleted"], true);
    assert_eq!(inbox["results"][0]["last_message"]["body"], "");

    // `?since=` replays both, with the message as it is now: no deleted text comes back.
    let mut ws = app.ws(&bob, Some(id)).await;
    let edit = frame(&mut ws).await;
    assert_eq!(
        (&edit["type"], &edit["position"]),
        (&json!("edit"), &json!(edit_positions[0]))
    );
    assert_eq!(
        (&edit["data"]["body"], &edit["data"]["deleted"]),
        (&json!(""), &json!(true))
    );
    let gone = frame(&mut ws).await;
    assert_eq!(
        (&gone["type"], &gone["position"]),
        (&json!("delete"), &json!(delete_position))
    );
    no_frame(&mut ws, Duration::from_millis(100)).await;
    close(ws).await;
    let mut ws = app.ws(&bob, Some(edit_positions[0])).await;
    assert_eq!(frame(&mut ws).await["position"], delete_position);
    close(ws).await;
}

/// An app with `window` as its edit window, and the id of a message alice sent bob in it.
async fn with_edit_window(store: Arc<dyn Backend>, window: Duration) -> (TestApp, String, String) {
    let options = Options {
        chat: ChatConfig {
            edit_window: Some(window),
            ..ChatConfig::default()
        },
        ..Options::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    app.user("bob").await;
    let id = app.send(&alice, "bob", "typo").await["id"]
        .as_i64()
        .unwrap()
        .to_string();
    (app, alice, id)
}

pub async fn the_edit_window_answers_403_past_it(store: Arc<dyn Backend>) {
    let (app, alice, id) = with_edit_window(store, Duration::from_millis(1)).await;
    // Past a 1 ms window whatever the machine's speed.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let refused = error_of(patch(&app, &alice, &id, "fixed").await, 403).await;
    assert_eq!(refused, "this message can no longer be edited");
    assert_eq!(
        delete(&app, &alice, &id).await.status(),
        204,
        "deleting has no window"
    );
}

pub async fn an_edit_window_allows_edits_within_it(store: Arc<dyn Backend>) {
    let (app, alice, id) = with_edit_window(store, Duration::from_secs(3600)).await;
    assert_eq!(patch(&app, &alice, &id, "fixed").await.status(), 200);
}

pub async fn export_streams_the_whole_history_page_by_page(store: Arc<dyn Backend>) {
    let options = Options {
        chat: ChatConfig {
            export_page: 100,
            ..ChatConfig::default()
        },
        ..Options::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (alice_user, alice) = app.user("alice").await;
    let (bob_user, _) = app.user("bob").await;
    let (_, carol) = app.user("carol").await;
    // More than ten pages, written straight to the store (past the send rate limit).
    let mut ids = Vec::new();
    for i in 0..1_050 {
        let (from, to) = if i % 2 == 0 {
            (&alice_user, &bob_user)
        } else {
            (&bob_user, &alice_user)
        };
        let inserted = app
            .chat
            .store()
            .insert_message(chatcore::NewMessage {
                sender: from.clone(),
                recipient: to.username.clone(),
                body: format!("#{i} \"quoted\""),
                idempotency_key: None,
            })
            .await
            .unwrap();
        ids.push(inserted.message.id.0);
    }
    app.chat
        .delete_message(&alice_user, chatcore::MessageId(ids[0]))
        .await
        .unwrap();
    let response = app
        .client(&alice)
        .get(app.url("/api/v1/auth/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(
        response.headers().get("content-length").is_none(),
        "streamed, not buffered: {:?}",
        response.headers()
    );
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["username"], "alice");
    let messages = document["messages"].as_array().unwrap();
    let exported: Vec<i64> = messages.iter().map(|m| m["id"].as_i64().unwrap()).collect();
    ids.reverse();
    assert_eq!(exported, ids, "every message, newest first, once");
    assert_eq!(messages[0]["body"], "#1049 \"quoted\"");
    assert_eq!(messages.last().unwrap()["deleted"], true);

    // Someone with no history gets an empty list; no one gets 401.
    let (status, empty) = get_json(&app, &carol, "/api/v1/auth/export").await;
    assert_eq!(
        (status, empty),
        (200, json!({"username": "carol", "messages": []}))
    );
    let response = app
        .anonymous()
        .get(app.url("/api/v1/auth/export"))
        .send()
        .await
        .unwrap();
    error_of(response, 401).await;
}

/// DELETE `/api/v1/auth/account` with `body` as the owner of `token`.
async fn delete_account(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.client(token)
        .delete(app.url("/api/v1/auth/account"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Account deletion: refused without the right password; then the session ends (401), the
/// socket closes with 4001, the peer gets a `delete` event per message and sees tombstones,
/// the name can be neither registered nor logged in with, and the directory leaves it out.
pub async fn account_deletion_ends_sessions_tombstones_and_reserves_the_name(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let http = app.anonymous();
    let registered = http
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"username": "alice", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let login = |name: &'static str| {
        http.post(app.url("/api/v1/auth/login"))
            .json(&json!({"username": name, "password": "correct horse"}))
            .send()
    };
    let session: Value = login("alice").await.unwrap().json().await.unwrap();
    let alice = session["token"].as_str().unwrap().to_owned();
    let (_, bob) = app.user("bob").await;
    let mut sent = Vec::new();
    for body in ["one", "two", "three"] {
        sent.push(app.send(&alice, "bob", body).await["id"].as_i64().unwrap());
    }
    let reply = app.send(&bob, "alice", "reply").await;
    let mut alice_ws = app.ws(&alice, None).await;
    let mut bob_ws = app.ws(&bob, None).await;

    assert_eq!(
        error_of(
            delete_account(&app, &alice, json!({"password": "wrong horse"})).await,
            403
        )
        .await,
        "wrong password"
    );
    error_of(delete_account(&app, &alice, json!({})).await, 400).await;
    let anonymous = app
        .anonymous()
        .delete(app.url("/api/v1/auth/account"))
        .json(&json!({"password": "correct horse"}))
        .send()
        .await
        .unwrap();
    error_of(anonymous, 401).await;
    let (status, _) = get_json(&app, &alice, "/api/v1/auth/session").await;
    assert_eq!(status, 200, "a refused deletion deletes nothing");

    let deleted = delete_account(&app, &alice, json!({"password": "correct horse"})).await;
    assert_eq!(deleted.status(), 204);
    let cookie = deleted.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
    assert_eq!(
        close_code(&mut alice_ws).await,
        (4001, "session ended".to_owned())
    );
    for id in &sent {
        let event = frame(&mut bob_ws).await;
        assert_eq!(event["type"], "delete", "{event}");
        assert_eq!(
            (
                &event["data"]["id"],
                &event["data"]["body"],
                &event["data"]["deleted"]
            ),
            (&json!(id), &json!(""), &json!(true))
        );
    }

    let (status, _) = get_json(&app, &alice, "/api/v1/auth/session").await;
    assert_eq!(status, 401, "the session ended");
    let send = app
        .client(&alice)
        .post(app.url("/api/v1/message/"))
        .json(&json!({"recipient": "bob", "body": "still here"}))
        .send()
        .await
        .unwrap();
    error_of(send, 401).await;
    error_of(login("alice").await.unwrap(), 401).await;
    let again = http
        .post(app.url("/api/v1/auth/register"))
        .json(&json!({"username": "ALICE", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    error_of(again, 409).await;

    let (_, history) = get_json(&app, &bob, "/api/v1/message/?target=alice").await;
    assert_eq!(history["count"], 4);
    for message in history["results"].as_array().unwrap() {
        if message["user"] == "alice" {
            assert_eq!(
                (&message["body"], &message["deleted"]),
                (&json!(""), &json!(true))
            );
        } else {
            assert_eq!(message, &reply, "what she received stays");
        }
    }
    let (_, users) = get_json(&app, &bob, "/api/v1/user/").await;
    assert!(
        !users.to_string().contains("alice"),
        "a deleted account is not listed: {users}"
    );
}

/// A session ended where no notification reaches this server (here: straight in the store,
/// as another process would) closes its socket at the next recheck; other sockets stay.
pub async fn a_session_ended_elsewhere_closes_its_socket_at_the_recheck(store: Arc<dyn Backend>) {
    let options = Options {
        api: chatcore_axum::ApiConfig {
            ws_session_recheck: Duration::from_millis(50),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store.clone(), options).await;
    let (alice, alice_token) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut alice_ws = app.ws(&alice_token, None).await;
    let mut bob_ws = app.ws(&bob, None).await;
    assert_eq!(store.delete_user_sessions(alice.id).await.unwrap(), 1);
    assert_eq!(
        close_code(&mut alice_ws).await,
        (4001, "session ended".to_owned())
    );
    let sent = app.send(&bob, "bob", "still open").await;
    assert_eq!(frame_id(&mut bob_ws).await, sent["id"].as_i64().unwrap());
}

/// PUT (`on`) or DELETE `/api/v1/block/{name}` as the owner of `token`.
async fn set_block(app: &TestApp, token: &str, name: &str, on: bool) -> reqwest::Response {
    let url = app.url(&format!("/api/v1/block/{name}"));
    let client = app.client(token);
    let request = if on { client.put(url) } else { client.delete(url) };
    request.send().await.unwrap()
}

/// POSTs a message and returns the raw answer.
async fn try_send(app: &TestApp, token: &str, to: &str, body: &str) -> reqwest::Response {
    app.client(token)
        .post(app.url("/api/v1/message/"))
        .json(&json!({"recipient": to, "body": body}))
        .send()
        .await
        .unwrap()
}

pub async fn blocks_refuse_sends_and_edits_both_ways(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let (_, carol) = app.user("carol").await;
    let mut alice_ws = app.ws(&alice, None).await;
    let mut bob_ws = app.ws(&bob, None).await;
    let sent = app.send(&alice, "bob", "hi bob").await;
    let id = sent["id"].as_i64().unwrap().to_string();
    for ws in [&mut alice_ws, &mut bob_ws] {
        assert_eq!(frame(ws).await["data"]["body"], "hi bob");
    }

    // bob blocks alice (in any case, twice): 204, no frame to anyone.
    for name in ["ALICE", "alice"] {
        let response = set_block(&app, &bob, name, true).await;
        assert_eq!(response.status(), 204);
        assert!(response.bytes().await.unwrap().is_empty());
    }
    // Neither may now write to the other, nor edit a message to the other.
    const REFUSED: &str = "you cannot message this user";
    assert_eq!(
        error_of(try_send(&app, &alice, "bob", "hello?").await, 403).await,
        REFUSED
    );
    assert_eq!(
        error_of(try_send(&app, &bob, "Alice", "go away").await, 403).await,
        REFUSED
    );
    assert_eq!(
        error_of(patch(&app, &alice, &id, "hi bob!").await, 403).await,
        REFUSED
    );
    // Nothing was stored or notified: the next frames are what carol sends them.
    app.send(&carol, "bob", "from carol").await;
    app.send(&carol, "alice", "from carol").await;
    for ws in [&mut alice_ws, &mut bob_ws] {
        let next = frame(ws).await;
        assert_eq!(
            (&next["type"], &next["data"]["user"]),
            (&json!("message"), &json!("carol"))
        );
    }
    for (token, peer) in [(&alice, "bob"), (&bob, "alice")] {
        let (_, page) = get_json(&app, token, &format!("/api/v1/message/?target={peer}")).await;
        assert_eq!(page["count"], 1, "both still read their history: {page}");
        assert_eq!(page["results"][0]["body"], "hi bob");
    }
    let (_, inbox) = get_json(&app, &bob, "/api/v1/conversation/").await;
    assert_eq!(
        inbox["unread_total"], 2,
        "one from alice, one from carol: {inbox}"
    );
    // Deleting one's own message stays allowed.
    assert_eq!(delete(&app, &alice, &id).await.status(), 204);
    for ws in [&mut alice_ws, &mut bob_ws] {
        assert_eq!(frame(ws).await["type"], "delete");
    }

    // Unblocking (twice) opens the way again.
    for _ in 0..2 {
        assert_eq!(set_block(&app, &bob, "alice", false).await.status(), 204);
    }
    assert_eq!(
        try_send(&app, &alice, "bob", "friends again?").await.status(),
        201
    );
    for ws in [&mut alice_ws, &mut bob_ws] {
        assert_eq!(frame(ws).await["data"]["body"], "friends again?");
    }
    close(alice_ws).await;
    close(bob_ws).await;
}

pub async fn block_routes_answer_errors_and_list_by_name(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    for name in ["Zed", "bob", "carol"] {
        app.user(name).await;
    }
    assert_eq!(
        error_of(set_block(&app, &alice, "nobody", true).await, 404).await,
        "user not found"
    );
    assert_eq!(
        error_of(set_block(&app, &alice, "nobody", false).await, 404).await,
        "user not found"
    );
    for on in [true, false] {
        assert_eq!(
            error_of(set_block(&app, &alice, "Alice", on).await, 400).await,
            "you cannot block yourself"
        );
    }
    let response = app
        .anonymous()
        .put(app.url("/api/v1/block/bob"))
        .send()
        .await
        .unwrap();
    error_of(response, 401).await;
    let response = app
        .anonymous()
        .get(app.url("/api/v1/block/"))
        .send()
        .await
        .unwrap();
    error_of(response, 401).await;

    for path in ["/api/v1/block/", "/api/v1/block"] {
        assert_eq!(get_json(&app, &alice, path).await, (200, json!([])));
    }
    for name in ["zed", "carol", "BOB"] {
        assert_eq!(set_block(&app, &alice, name, true).await.status(), 204);
    }
    let all = json!([{"username": "bob"}, {"username": "carol"}, {"username": "Zed"}]);
    for path in ["/api/v1/block/", "/api/v1/block"] {
        assert_eq!(get_json(&app, &alice, path).await, (200, all.clone()));
    }
    assert_eq!(
        get_json(&app, &alice, "/api/v1/block/?limit=2").await,
        (200, json!([{"username": "bob"}, {"username": "carol"}]))
    );
    assert_eq!(
        get_json(&app, &alice, "/api/v1/block/?limit=2&after=Carol").await,
        (200, json!([{"username": "Zed"}]))
    );
    let (_, bobs) = app.user("bob2").await;
    assert_eq!(get_json(&app, &bobs, "/api/v1/block/").await, (200, json!([])));
    let response = app
        .client(&alice)
        .get(app.url("/api/v1/block/?limit=0"))
        .send()
        .await
        .unwrap();
    error_of(response, 400).await;
    let response = app
        .client(&alice)
        .get(app.url("/api/v1/block/?limit=x"))
        .send()
        .await
        .unwrap();
    error_of(response, 400).await;
    assert_eq!(set_block(&app, &alice, "carol", false).await.status(), 204);
    assert_eq!(
        get_json(&app, &alice, "/api/v1/block").await,
        (200, json!([{"username": "bob"}, {"username": "Zed"}]))
    );
}
