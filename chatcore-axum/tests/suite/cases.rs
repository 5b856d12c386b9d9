//! The cases of the suite, one per row (or group of rows) of the HTTP and WebSocket contract.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use chatcore::notify::SubscriberTable;
use chatcore::{
    Backend, ChatConfig, Delivery, Event, Notifier, Recipient, SendRequest, Subscription, UserId,
};
use chatcore_axum::ApiConfig;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::app::*;
use super::stores::TestStore;

/// The JSON error body of a response, checking its shape.
pub(crate) async fn error_of(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status, "status");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "error answers are JSON"
    );
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().expect("{\"error\": ...}").to_owned()
}

pub async fn auth_register_login_logout(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let http = app.anonymous();
    let register = |body: Value| http.post(app.url("/api/v1/auth/register")).json(&body).send();

    let response = register(json!({"username": "alice", "password": "correct horse"}))
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"username": "alice"})
    );
    let taken = register(json!({"username": "alice", "password": "another one"}))
        .await
        .unwrap();
    error_of(taken, 409).await;
    let bad_name = register(json!({"username": "no spaces", "password": "correct horse"}))
        .await
        .unwrap();
    error_of(bad_name, 400).await;
    let empty_name = register(json!({"username": "", "password": "correct horse"}))
        .await
        .unwrap();
    error_of(empty_name, 400).await;
    let long_name = register(json!({"username": "x".repeat(151), "password": "correct horse"}))
        .await
        .unwrap();
    error_of(long_name, 400).await;
    let short = register(json!({"username": "bob", "password": "1234567"}))
        .await
        .unwrap();
    assert!(error_of(short, 400).await.contains("8"));
    // Registration by form works as well.
    let form = http
        .post(app.url("/api/v1/auth/register/"))
        .form(&[("username", "bob"), ("password", "12345678")])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 201);

    // Wrong password and unknown user: the same 401.
    let login = |user: &str, password: &str| {
        http.post(app.url("/api/v1/auth/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
    };
    let wrong = error_of(login("alice", "wrong horse").await.unwrap(), 401).await;
    let unknown = error_of(login("nobody", "correct horse").await.unwrap(), 401).await;
    assert_eq!(wrong, unknown);

    let response = login("alice", "correct horse").await.unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["chatcore_session=", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain-HTTP localhost must keep working"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["username"], "alice");
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 43);

    // The cookie (kept by the client) and the bearer token both authenticate.
    let by_cookie = http.get(app.url("/api/v1/user/")).send().await.unwrap();
    assert_eq!(by_cookie.status(), 200);
    assert_eq!(
        by_cookie.json::<Value>().await.unwrap(),
        json!([{"username": "bob"}])
    );
    let bearer = app.client(&token);
    assert_eq!(
        bearer
            .get(app.url("/api/v1/user/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ws = app.ws(&token, None).await;
    close(ws).await;

    // Logout by cookie: 204, and both the cookie and the token stop working at once.
    let logout = http.post(app.url("/api/v1/auth/logout")).send().await.unwrap();
    assert_eq!(logout.status(), 204);
    error_of(http.get(app.url("/api/v1/user/")).send().await.unwrap(), 401).await;
    error_of(bearer.get(app.url("/api/v1/user/")).send().await.unwrap(), 401).await;
    let (status, _) = app.ws_refused(app.ws_request(Some(&token), "")).await;
    assert_eq!(status, 401);

    // Logout by bearer token.
    let again = login("alice", "correct horse")
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let second = app.client(again["token"].as_str().unwrap());
    assert_eq!(
        second
            .post(app.url("/api/v1/auth/logout/"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    error_of(second.get(app.url("/api/v1/message/")).send().await.unwrap(), 401).await;
    // Nothing to log out of.
    error_of(
        app.anonymous()
            .post(app.url("/api/v1/auth/logout"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
}

/// `Retry-After` of a 429, in seconds.
fn retry_after(response: &reqwest::Response) -> u64 {
    assert_eq!(response.status(), 429);
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds")
}

pub async fn login_and_registration_are_limited_per_client_address(store: Arc<dyn Backend>) {
    let limited = |behind_proxy| Options {
        sessions: chatcore_axum::SessionConfig {
            logins_per_minute: 3,
            registrations_per_hour: 2,
            behind_proxy,
            ..fast_sessions()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store.clone(), limited(false)).await;
    // Two clients: 127.0.0.1 and 127.0.0.2 (all of 127/8 is loopback).
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let (first, second) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    let register = |client: &reqwest::Client, name: &str| {
        client
            .post(app.url("/api/v1/auth/register"))
            .json(&json!({"username": name, "password": "correct horse"}))
            .send()
    };
    let login = |client: &reqwest::Client, password: &str| {
        client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"username": "alice", "password": password}))
            .send()
    };
    assert_eq!(register(&first, "alice").await.unwrap().status(), 201);
    // A refused registration counts as well.
    assert_eq!(register(&first, "alice").await.unwrap().status(), 409);
    let refused = register(&first, "bob").await.unwrap();
    // One registration more every 30 minutes.
    assert!((1..=1800).contains(&retry_after(&refused)), "{refused:?}");
    error_of(refused, 429).await;
    assert_eq!(register(&second, "bob").await.unwrap().status(), 201);

    // Three logins a minute per address, wrong passwords included; then 429 for about 20 s.
    assert_eq!(login(&first, "wrong horse").await.unwrap().status(), 401);
    for _ in 0..2 {
        assert_eq!(login(&first, "correct horse").await.unwrap().status(), 200);
    }
    let refused = login(&first, "correct horse").await.unwrap();
    assert!((1..=20).contains(&retry_after(&refused)), "{refused:?}");
    assert_eq!(login(&second, "correct horse").await.unwrap().status(), 200);

    // Behind a proxy the last X-Forwarded-For entry is the client; the TCP peer (the proxy,
    // here 127.0.0.1 for everyone) is not counted, and a request without the header is a 500.
    let proxied = TestApp::spawn_with(store, limited(true)).await;
    let forwarded = |chain: &str| {
        first
            .post(proxied.url("/api/v1/auth/login"))
            .header("x-forwarded-for", chain)
            .json(&json!({"username": "alice", "password": "correct horse"}))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(
            forwarded("198.51.100.9, 203.0.113.7").await.unwrap().status(),
            200
        );
    }
    // The client's own claims (earlier entries) change nothing.
    let refused = forwarded("198.51.100.10, 203.0.113.7").await.unwrap();
    assert!(retry_after(&refused) >= 1);
    assert_eq!(forwarded("203.0.113.7, 203.0.113.8").await.unwrap().status(), 200);
    let no_header = first
        .post(proxied.url("/api/v1/auth/login"))
        .json(&json!({"username": "alice", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(no_header, 500).await, "internal error");
}

pub async fn expired_sessions_are_swept_in_the_background(store: Arc<dyn Backend>) {
    let options = Options {
        sessions: chatcore_axum::SessionConfig {
            expired_session_sweep: Duration::from_millis(50),
            ..fast_sessions()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store.clone(), options).await;
    let (alice, _) = app.user("alice").await;
    let now = chrono::Utc::now();
    let (expired, live) = ([7u8; 32], [8u8; 32]);
    store
        .create_session(&expired, alice.id, now - chrono::Duration::seconds(1))
        .await
        .unwrap();
    store
        .create_session(&live, alice.id, now + chrono::Duration::hours(1))
        .await
        .unwrap();
    // Asked as of an hour ago, a session is found as long as its row exists.
    let an_hour_ago = now - chrono::Duration::hours(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.session_user(&expired, an_hour_ago).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired session is still stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.session_user(&live, an_hour_ago).await.unwrap().is_some());
}

pub async fn unauthenticated_requests_get_401(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, token) = app.user("alice").await;
    app.user("bob").await;
    let id = app.send(&token, "bob", "hi").await["id"].as_i64().unwrap();
    let nobody = app.anonymous();
    let forged = app.client(&"A".repeat(43));
    let malformed = app.client("not-a-token");
    for client in [&nobody, &forged, &malformed] {
        let requests = [
            client.get(app.url("/api/v1/user/")),
            client.get(app.url("/api/v1/message/?target=bob")),
            client.get(app.url(&format!("/api/v1/message/{id}/"))),
            client
                .post(app.url("/api/v1/message/"))
                .json(&json!({"recipient": "bob", "body": "sneaky"})),
        ];
        for request in requests {
            let response = request.send().await.unwrap();
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            error_of(response, 401).await;
        }
    }
    let (status, body) = app.ws_refused(app.ws_request(None, "")).await;
    assert_eq!(status, 401);
    assert!(body["error"].is_string(), "{body}");
    let (status, _) = app.ws_refused(app.ws_request(Some(&"B".repeat(43)), "")).await;
    assert_eq!(status, 401);
    // Nothing was stored by the refused send.
    let page = app
        .client(&token)
        .get(app.url("/api/v1/message/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.json::<Value>().await.unwrap()["count"], 1);
}

pub async fn send_notifies_every_socket_of_both_and_no_one_else(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let (_, carol) = app.user("carol").await;
    let mut alice_ws = app.ws(&alice, None).await;
    let mut bob_tab1 = app.ws(&bob, None).await;
    let mut bob_tab2 = app.ws(&bob, None).await;
    let mut carol_ws = app.ws(&carol, None).await;

    let sent = app.send(&alice, "bob", "  hello bob ").await;
    assert_eq!(sent["body"], "hello bob");
    assert_eq!(sent["user"], "alice");
    assert_eq!(sent["recipient"], "bob");
    let timestamp = sent["timestamp"].as_str().unwrap();
    assert!(timestamp.ends_with('Z') && timestamp.len() == 27, "{timestamp}");
    for ws in [&mut alice_ws, &mut bob_tab1, &mut bob_tab2] {
        let frame = frame(ws).await;
        assert_eq!(frame["message"], sent["id"].to_string());
        assert_eq!(frame["data"], sent);
    }
    // Carol hears nothing of it: the first frame she gets is about her own message.
    let to_carol = app.send(&bob, "carol", "hi carol").await;
    assert_eq!(frame_id(&mut carol_ws).await, to_carol["id"].as_i64().unwrap());
    no_frame(&mut alice_ws, Duration::from_millis(100)).await;
    for ws in [&mut bob_tab1, &mut bob_tab2] {
        assert_eq!(frame_id(ws).await, to_carol["id"].as_i64().unwrap());
    }
    // A note to oneself reaches each socket once.
    let note = app.send(&alice, "alice", "note").await;
    assert_eq!(frame_id(&mut alice_ws).await, note["id"].as_i64().unwrap());
    no_frame(&mut alice_ws, Duration::from_millis(100)).await;
    for ws in [alice_ws, bob_tab1, bob_tab2, carol_ws] {
        close(ws).await;
    }
}

/// Many sends at once, so notifications of one commit reach a socket together and cross each
/// other: with frames gathered into one write and written one by one, every socket of a
/// party gets each message exactly once, in position order, and no socket gets anyone else's.
pub async fn concurrent_sends_reach_every_socket_exactly_once(store: Arc<dyn Backend>) {
    for gather in [true, false] {
        let options = Options {
            api: ApiConfig {
                ws_gather_frames: gather,
                ..Default::default()
            },
            chat: ChatConfig {
                send_burst: 0,
                ..Default::default()
            },
            ..Default::default()
        };
        let app = Arc::new(TestApp::spawn_with(store.clone(), options).await);
        let names: Vec<String> = (0..4).map(|i| format!("g{gather}{i}")).collect();
        let mut tokens = Vec::new();
        let mut sockets = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (_, token) = app.user(name).await;
            // Two sockets for each user.
            for _ in 0..2 {
                sockets.push((i, app.ws(&token, None).await));
            }
            tokens.push(token);
        }
        let senders: Vec<_> = (0..8)
            .map(|k| {
                let (app, tokens, names) = (app.clone(), tokens.clone(), names.clone());
                tokio::spawn(async move {
                    let mut sent = Vec::new();
                    for i in 0..20 {
                        let (from, to) = (k % 4, (k + i) % 4);
                        let message = app.send(&tokens[from], &names[to], &format!("{k}.{i}")).await;
                        sent.push((from, to, message["id"].as_i64().unwrap()));
                    }
                    sent
                })
            })
            .collect();
        let mut expected: Vec<Vec<i64>> = vec![Vec::new(); names.len()];
        for sender in senders {
            for (from, to, id) in sender.await.unwrap() {
                expected[from].push(id);
                if to != from {
                    expected[to].push(id);
                }
            }
        }
        for (user, mut ws) in sockets {
            let want = &mut expected[user];
            want.sort_unstable();
            let mut got = Vec::with_capacity(want.len());
            while got.len() < want.len() {
                got.push(frame_id(&mut ws).await);
            }
            // In position order, not just complete: a client resumes from the last it saw.
            assert_eq!(&got, want, "user {user}, gathering {gather}");
            no_frame(&mut ws, Duration::from_millis(50)).await;
            close(ws).await;
        }
    }
}

pub async fn form_bodies_trailing_slashes_and_reading_by_id(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let (_, carol) = app.user("carol").await;
    let response = app
        .client(&alice)
        .post(app.url("/api/v1/message"))
        .form(&[("recipient", "bob"), ("body", " aaa ")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let sent: Value = response.json().await.unwrap();
    assert_eq!(sent["body"], "aaa");
    let id = sent["id"].as_i64().unwrap();
    for path in [format!("/api/v1/message/{id}/"), format!("/api/v1/message/{id}")] {
        for token in [&alice, &bob] {
            let response = app.client(token).get(app.url(&path)).send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.json::<Value>().await.unwrap(), sent);
        }
        // A third user gets the same 404 as for an id that does not exist.
        let third = error_of(app.client(&carol).get(app.url(&path)).send().await.unwrap(), 404).await;
        let missing = app
            .client(&alice)
            .get(app.url("/api/v1/message/999999/"))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(missing, 404).await, third);
    }
    let garbage = app
        .client(&alice)
        .get(app.url("/api/v1/message/abc/"))
        .send()
        .await
        .unwrap();
    error_of(garbage, 404).await;
    for path in [
        "/api/v1/message",
        "/api/v1/message/",
        "/api/v1/user",
        "/api/v1/user/",
    ] {
        let response = app.client(&alice).get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

pub async fn message_validation_errors(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    app.user("bob").await;
    let client = app.client(&alice);
    let post = || client.post(app.url("/api/v1/message/"));
    let send_json = |body: Value| post().json(&body).send();

    // Invisible characters alone are empty; control characters (NUL included) are refused;
    // line breaks are kept as `\n`, bidirectional overrides are kept.
    for invisible in ["\u{200B}", "\u{3164}\u{FFA0}", " \u{2060}\u{FEFF} "] {
        let response = send_json(json!({"recipient": "bob", "body": invisible}))
            .await
            .unwrap();
        assert!(error_of(response, 400).await.contains("empty"), "{invisible:?}");
    }
    for control in ["nul \0 inside", "bell \u{7}", "escape \u{1B}[2J"] {
        let response = send_json(json!({"recipient": "bob", "body": control}))
            .await
            .unwrap();
        assert!(error_of(response, 400).await.contains("control"), "{control:?}");
    }
    let kept = send_json(json!({"recipient": "bob", "body": "two\r\nlines \u{202E}olleh"}))
        .await
        .unwrap();
    assert_eq!(kept.status(), 201);
    assert_eq!(
        kept.json::<Value>().await.unwrap()["body"],
        "two\nlines \u{202E}olleh"
    );
    // Invalid UTF-8 in a form body is a 400, as in JSON.
    let raw_form = post()
        .header("content-type", "application/x-www-form-urlencoded")
        .body("recipient=bob&body=%FF%FEhi")
        .send()
        .await
        .unwrap();
    error_of(raw_form, 400).await;

    error_of(
        send_json(json!({"recipient": "bob", "body": "   "}))
            .await
            .unwrap(),
        400,
    )
    .await;
    let longest = "é".repeat(4_000);
    assert_eq!(
        send_json(json!({"recipient": "bob", "body": longest}))
            .await
            .unwrap()
            .status(),
        201
    );
    let too_long = "é".repeat(4_001);
    error_of(
        send_json(json!({"recipient": "bob", "body": too_long}))
            .await
            .unwrap(),
        400,
    )
    .await;
    error_of(
        send_json(json!({"recipient": "nobody", "body": "hi"}))
            .await
            .unwrap(),
        404,
    )
    .await;
    error_of(send_json(json!({"recipient": "bob"})).await.unwrap(), 400).await;
    error_of(
        send_json(json!({"recipient": "bob", "body": 5})).await.unwrap(),
        400,
    )
    .await;
    error_of(send_json(json!("bob")).await.unwrap(), 400).await;
    // Malformed JSON: 400 JSON, and the server lives on.
    for broken in [
        "{",
        "{\"recipient\": \"bob\", \"body\": \"hi\"",
        "",
        "null",
        "\u{0}",
    ] {
        let response = post()
            .header("content-type", "application/json")
            .body(broken)
            .send()
            .await
            .unwrap();
        error_of(response, 400).await;
    }
    let form_missing = post().form(&[("recipient", "bob")]).send().await.unwrap();
    error_of(form_missing, 400).await;
    // Other content types: 415.
    let text = post()
        .header("content-type", "text/plain")
        .body("recipient=bob&body=hi")
        .send()
        .await
        .unwrap();
    error_of(text, 415).await;
    error_of(post().body("{}").send().await.unwrap(), 415).await;
    // Over the request body limit (64 KiB): 413.
    let huge = json!({"recipient": "bob", "body": "x".repeat(70 * 1024)});
    error_of(send_json(huge).await.unwrap(), 413).await;
    let huge_form = post()
        .form(&[("recipient", "bob"), ("body", &"y".repeat(70 * 1024))])
        .send()
        .await
        .unwrap();
    error_of(huge_form, 413).await;
    // A bad Idempotency-Key: 400.
    let long_key = post()
        .header("idempotency-key", "k".repeat(300))
        .json(&json!({"recipient": "bob", "body": "hi"}))
        .send()
        .await
        .unwrap();
    error_of(long_key, 400).await;
    // Writing to yourself is allowed; of everything above only the two valid messages (the
    // CRLF one and the longest) were stored.
    assert_eq!(
        send_json(json!({"recipient": "alice", "body": "me"}))
            .await
            .unwrap()
            .status(),
        201
    );
    let all: Value = client
        .get(app.url("/api/v1/message/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["count"], 3);
}

pub async fn idempotent_retry_returns_same_message_and_notifies_once(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut bob_ws = app.ws(&bob, None).await;
    let keyed = |token: &str, key: &str, body: &str| {
        app.client(token)
            .post(app.url("/api/v1/message/"))
            .header("Idempotency-Key", key)
            .json(&json!({"recipient": "bob", "body": body}))
            .send()
    };
    let first: Value = keyed(&alice, "retry-1", "once")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let retry = keyed(&alice, "retry-1", "once").await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    // The same key for another message is refused, never a silent replay of the first.
    let reused = keyed(&alice, "retry-1", "a different body").await.unwrap();
    assert!(error_of(reused, 422).await.contains("Idempotency-Key"));
    let to_someone_else = app
        .client(&alice)
        .post(app.url("/api/v1/message/"))
        .header("Idempotency-Key", "retry-1")
        .json(&json!({"recipient": "alice", "body": "once"}))
        .send()
        .await
        .unwrap();
    error_of(to_someone_else, 422).await;
    // Another key, or the same key from another sender, is a new message.
    let other_key: Value = keyed(&alice, "retry-2", "twice")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(other_key["id"], first["id"]);
    let other_sender: Value = keyed(&bob, "retry-1", "bob's")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(other_sender["id"], first["id"]);
    // One notification for the retried send.
    assert_eq!(frame_id(&mut bob_ws).await, first["id"].as_i64().unwrap());
    assert_eq!(frame_id(&mut bob_ws).await, other_key["id"].as_i64().unwrap());
    assert_eq!(frame_id(&mut bob_ws).await, other_sender["id"].as_i64().unwrap());
    no_frame(&mut bob_ws, Duration::from_millis(100)).await;
    let history: Value = app
        .client(&alice)
        .get(app.url("/api/v1/message/?target=bob"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The alice-bob conversation holds the two distinct messages (bob's went to himself).
    assert_eq!(history["count"], 2);
    close(bob_ws).await;
}

pub async fn send_rate_limit_answers_429_with_retry_after(store: Arc<dyn Backend>) {
    let options = Options {
        chat: ChatConfig {
            send_burst: 3,
            send_rate_per_sec: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    for i in 0..3 {
        app.send(&alice, "bob", &format!("burst {i}")).await;
    }
    let limited = app
        .client(&alice)
        .post(app.url("/api/v1/message/"))
        .json(&json!({"recipient": "bob", "body": "one too many"}))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    error_of(limited, 429).await;
    // Bob has his own bucket; reading is not limited.
    app.send(&bob, "alice", "not limited").await;
    let read = app
        .client(&alice)
        .get(app.url("/api/v1/message/"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.json::<Value>().await.unwrap()["count"], 4);
    // After Retry-After, a send succeeds again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    app.send(&alice, "bob", "later").await;

    // 0 turns the limit off.
    let off = Options {
        chat: ChatConfig {
            send_burst: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(Arc::new(chatcore::MemoryStore::new()), off).await;
    let (_, alice) = app.user("alice").await;
    for i in 0..150 {
        app.send(&alice, "alice", &format!("{i}")).await;
    }
}

/// Refuses spam (422) and links (403), rewrites "darn", allows the rest.
struct Moderator;

#[async_trait]
impl chatcore::SendPolicy for Moderator {
    async fn check(&self, draft: &chatcore::Draft<'_>) -> Result<chatcore::Verdict, chatcore::BoxError> {
        use chatcore::{Rejection, Verdict};
        Ok(if draft.body.contains("spam") {
            Verdict::Reject(Rejection::unprocessable("that looks like spam"))
        } else if draft.body.contains("http://") {
            Verdict::Reject(Rejection::forbidden("links are for subscribers"))
        } else if draft.body.contains("darn") {
            Verdict::Rewrite(draft.body.replace("darn", "d*rn"))
        } else {
            Verdict::Allow
        })
    }
}

/// Never answers.
struct SilentPolicy;

#[async_trait]
impl chatcore::SendPolicy for SilentPolicy {
    async fn check(&self, _draft: &chatcore::Draft<'_>) -> Result<chatcore::Verdict, chatcore::BoxError> {
        std::future::pending().await
    }
}

pub async fn send_policies_answer_403_422_or_rewrite(store: Arc<dyn Backend>) {
    let options = Options {
        policies: vec![Arc::new(Moderator) as Arc<dyn chatcore::SendPolicy>],
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut bob_ws = app.ws(&bob, None).await;
    let post = |body: &str| {
        app.client(&alice)
            .post(app.url("/api/v1/message/"))
            .json(&json!({"recipient": "bob", "body": body}))
            .send()
    };
    let spam = error_of(post("cheap spam").await.unwrap(), 422).await;
    assert_eq!(spam, "that looks like spam");
    let link = error_of(post("see http://example.com").await.unwrap(), 403).await;
    assert_eq!(link, "links are for subscribers");
    let rewritten = app.send(&alice, "bob", "darn it").await;
    assert_eq!(rewritten["body"], "d*rn it");
    // The refused messages were never notified: bob's first frame is the rewritten one.
    let first = frame(&mut bob_ws).await;
    assert_eq!(first["data"], rewritten);
    // ... nor stored.
    let (status, history) = get_json(&app, &bob, "/api/v1/message/?target=alice").await;
    assert_eq!(status, 200);
    assert_eq!(history["count"], 1);
    assert_eq!(history["results"][0]["body"], "d*rn it");
    close(bob_ws).await;

    // A policy that does not answer in time, with the fallback "reject": 403, nothing stored.
    let strict = Options {
        chat: ChatConfig {
            policy_deadline: Duration::from_millis(50),
            policy_fallback: chatcore::PolicyFallback::Reject,
            ..Default::default()
        },
        policies: vec![Arc::new(SilentPolicy) as Arc<dyn chatcore::SendPolicy>],
        ..Default::default()
    };
    let app = TestApp::spawn_with(Arc::new(chatcore::MemoryStore::new()), strict).await;
    let (_, alice) = app.user("alice").await;
    app.user("bob").await;
    let refused = app
        .client(&alice)
        .post(app.url("/api/v1/message/"))
        .json(&json!({"recipient": "bob", "body": "hello"}))
        .send()
        .await
        .unwrap();
    error_of(refused, 403).await;
    assert_eq!(app.chat.policy_counts().timed_out, 1);
    let (_, history) = get_json(&app, &alice, "/api/v1/message/").await;
    assert_eq!(history["count"], 0);
}

pub async fn unknown_paths_and_wrong_methods_answer_json(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let client = app.client(&alice);
    for path in [
        "/nope",
        "/api/v1/",
        "/api/v1/messages/",
        "/api/v1/message/1/extra",
    ] {
        error_of(client.get(app.url(path)).send().await.unwrap(), 404).await;
    }
    let cases = [
        (reqwest::Method::DELETE, "/api/v1/message/"),
        (reqwest::Method::PUT, "/api/v1/message"),
        (reqwest::Method::POST, "/api/v1/user/"),
        (reqwest::Method::PUT, "/api/v1/message/1/"),
        (reqwest::Method::POST, "/api/v1/message/1"),
        (reqwest::Method::POST, "/ws"),
        (reqwest::Method::GET, "/api/v1/auth/login"),
        (reqwest::Method::DELETE, "/api/v1/auth/logout/"),
    ];
    for (method, path) in cases {
        let response = client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert!(response.headers().contains_key("allow"), "{method} {path}");
        error_of(response, 405).await;
    }
    // A plain GET of /ws without the upgrade: a JSON error, not a panic.
    let plain = client.get(app.url("/ws")).send().await.unwrap();
    let message = error_of(plain, 400).await;
    assert!(message.to_lowercase().contains("upgrade"), "{message}");
    // The host's own routes are untouched.
    let home = reqwest::get(app.absolute("/")).await.unwrap();
    assert_eq!(home.text().await.unwrap(), "host home");
}

pub async fn cross_site_cookie_requests_are_refused(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    app.auth.register("alice", "correct horse").await.unwrap();
    app.user("bob").await;
    let browser = app.anonymous();
    // Login CSRF: another site cannot log the browser into an account.
    let forged_login = browser
        .post(app.url("/api/v1/auth/login"))
        .header("origin", "http://evil.example")
        .json(&json!({"username": "alice", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert!(!forged_login.headers().contains_key("set-cookie"));
    error_of(forged_login, 403).await;
    let login = browser
        .post(app.url("/api/v1/auth/login"))
        .header("origin", app.origin())
        .json(&json!({"username": "alice", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let token = login.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let send = |origin: Option<(&str, &str)>| {
        let mut request = browser
            .post(app.url("/api/v1/message/"))
            .json(&json!({"recipient": "bob", "body": "hi"}));
        if let Some((name, value)) = origin {
            request = request.header(name, value);
        }
        request.send()
    };
    error_of(send(Some(("origin", "http://evil.example"))).await.unwrap(), 403).await;
    error_of(send(Some(("origin", "null"))).await.unwrap(), 403).await;
    error_of(
        send(Some(("referer", "http://evil.example/page"))).await.unwrap(),
        403,
    )
    .await;
    assert_eq!(send(Some(("origin", &app.origin()))).await.unwrap().status(), 201);
    let own_page = format!("{}/chat/", app.origin());
    assert_eq!(send(Some(("referer", &own_page))).await.unwrap().status(), 201);
    assert_eq!(send(None).await.unwrap().status(), 201);
    // A bearer token is not sent by browsers on their own: exempt.
    let bearer = app
        .client(&token)
        .post(app.url("/api/v1/message/"))
        .header("origin", "http://evil.example")
        .json(&json!({"recipient": "bob", "body": "api client"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 201);
    // Cross-site WebSocket with the cookie: refused before the upgrade.
    let mut request = app.ws_request(None, "");
    let headers = request.headers_mut();
    headers.insert("cookie", format!("chatcore_session={token}").parse().unwrap());
    headers.insert("origin", "http://evil.example".parse().unwrap());
    let (status, _) = app.ws_refused(request).await;
    assert_eq!(status, 403);
    let mut request = app.ws_request(None, "");
    let headers = request.headers_mut();
    headers.insert("cookie", format!("chatcore_session={token}").parse().unwrap());
    headers.insert("origin", app.origin().parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    close(ws).await;
    // Cross-site logout is refused too; the session survives it.
    let logout = browser
        .post(app.url("/api/v1/auth/logout"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    error_of(logout, 403).await;
    let all: Value = browser
        .get(app.url("/api/v1/message/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["count"], 4);
}

pub async fn history_pages_with_page_before_and_limit(store: Arc<dyn Backend>) {
    let app = TestApp::spawn_with(
        store,
        Options {
            chat: ChatConfig {
                send_burst: 0,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let (alice_user, alice) = app.user("alice").await;
    app.user("bob").await;
    app.user("carol+1").await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let sent = app
            .chat
            .send(
                &alice_user,
                SendRequest {
                    recipient: "bob".into(),
                    body: format!("m{i}"),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        ids.push(sent.message.id.0);
    }
    for i in 0..5 {
        app.send(&alice, "carol+1", &format!("c{i}")).await;
    }
    ids.reverse(); // newest first
    let client = app.client(&alice);
    let get = |url: String| {
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let result_ids = |page: &Value| -> Vec<i64> {
        page["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect()
    };

    // Cursor mode: the first page links on with `before`.
    let first = get(app.url("/api/v1/message/?target=bob")).await;
    assert_eq!(first["count"], 40);
    assert_eq!(result_ids(&first), ids[..15]);
    assert_eq!(first["previous"], Value::Null);
    let next = first["next"].as_str().unwrap();
    assert_eq!(
        next,
        format!("{PREFIX}/api/v1/message/?target=bob&before={}", ids[14])
    );
    let second = get(app.absolute(next)).await;
    assert_eq!(result_ids(&second), ids[15..30]);
    assert_eq!(second["count"], 40);
    assert_eq!(second["previous"], format!("{PREFIX}/api/v1/message/?target=bob"));
    let third = get(app.absolute(second["next"].as_str().unwrap())).await;
    assert_eq!(result_ids(&third), ids[30..]);
    assert_eq!(third["next"], Value::Null);

    // Page numbers, as in the original app.
    let page2 = get(app.url("/api/v1/message/?target=bob&page=2")).await;
    assert_eq!(result_ids(&page2), ids[15..30]);
    assert_eq!(
        page2["next"],
        format!("{PREFIX}/api/v1/message/?target=bob&page=3")
    );
    assert_eq!(page2["previous"], format!("{PREFIX}/api/v1/message/?target=bob"));
    let page3 = get(app.absolute(page2["next"].as_str().unwrap())).await;
    assert_eq!(result_ids(&page3), ids[30..]);
    assert_eq!(page3["next"], Value::Null);
    assert_eq!(
        page3["previous"],
        format!("{PREFIX}/api/v1/message/?target=bob&page=2")
    );
    let beyond = get(app.url("/api/v1/message/?target=bob&page=9")).await;
    assert_eq!(result_ids(&beyond), Vec::<i64>::new());

    // `limit` sets the size (at most 100) and stays in the links.
    let small = get(app.url("/api/v1/message/?target=bob&limit=5")).await;
    assert_eq!(result_ids(&small), ids[..5]);
    assert_eq!(
        small["next"],
        format!("{PREFIX}/api/v1/message/?target=bob&limit=5&before={}", ids[4])
    );
    let below = get(app.url(&format!("/api/v1/message/?target=bob&before={}&limit=3", ids[9]))).await;
    assert_eq!(result_ids(&below), ids[10..13]);
    let huge = get(app.url("/api/v1/message/?target=bob&limit=1000")).await;
    assert_eq!(result_ids(&huge), ids);
    assert_eq!(huge["next"], Value::Null);

    // Without a target: everything the caller sent or received. Names are encoded in links.
    let all = get(app.url("/api/v1/message/?limit=2")).await;
    assert_eq!(all["count"], 45);
    assert_eq!(all["results"][0]["recipient"], "carol+1");
    let carol = get(app.url("/api/v1/message/?target=carol%2B1&limit=2")).await;
    assert_eq!(carol["count"], 5);
    assert!(
        carol["next"]
            .as_str()
            .unwrap()
            .contains("target=carol%2B1&limit=2&before=")
    );
    let carol2 = get(app.absolute(carol["next"].as_str().unwrap())).await;
    assert_eq!(carol2["results"].as_array().unwrap().len(), 2);

    // Pages hold at most 100, however many are asked for.
    for i in 0..60 {
        let note = SendRequest {
            recipient: "alice".into(),
            body: format!("note {i}"),
            ..Default::default()
        };
        app.chat.send(&alice_user, note).await.unwrap();
    }
    let capped = get(app.url("/api/v1/message/?limit=500")).await;
    assert_eq!(capped["count"], 105);
    assert_eq!(capped["results"].as_array().unwrap().len(), 100);
    let rest = get(app.absolute(capped["next"].as_str().unwrap())).await;
    assert_eq!(rest["results"].as_array().unwrap().len(), 5);
    assert_eq!(rest["next"], Value::Null);

    // Bad input.
    for query in ["target=nobody", "target=not%20a%20name"] {
        let response = client
            .get(app.url(&format!("/api/v1/message/?{query}")))
            .send()
            .await
            .unwrap();
        error_of(response, 404).await;
    }
    for query in ["page=0", "page=abc", "limit=0", "limit=-1", "before=x"] {
        let response = client
            .get(app.url(&format!("/api/v1/message/?target=bob&{query}")))
            .send()
            .await
            .unwrap();
        error_of(response, 400).await;
    }
}

pub async fn user_directory_filters_and_pages(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    for name in ["dave", "bobby", "carol", "bob"] {
        app.user(name).await;
    }
    let client = app.client(&alice);
    let names = |query: &'static str| {
        let client = client.clone();
        let url = app.url(&format!("/api/v1/user/{query}"));
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body.as_array()
                .unwrap()
                .iter()
                .map(|u| u["username"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names("").await, ["bob", "bobby", "carol", "dave"]);
    assert_eq!(names("?q=bo").await, ["bob", "bobby"]);
    assert_eq!(names("?q=z").await, Vec::<String>::new());
    assert_eq!(names("?limit=2").await, ["bob", "bobby"]);
    assert_eq!(names("?limit=2&after=bobby").await, ["carol", "dave"]);
    assert_eq!(names("?q=bo&after=bob").await, ["bobby"]);
    let bad = client.get(app.url("/api/v1/user/?limit=x")).send().await.unwrap();
    error_of(bad, 400).await;
    let zero = client.get(app.url("/api/v1/user/?limit=0")).send().await.unwrap();
    error_of(zero, 400).await;
}

pub async fn reconnect_with_since_gets_exactly_the_missed_messages(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut bob_ws = app.ws(&bob, None).await;
    let seen = app.send(&alice, "bob", "seen").await["id"].as_i64().unwrap();
    assert_eq!(frame_id(&mut bob_ws).await, seen);
    close(bob_ws).await;

    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(
            app.send(&alice, "bob", &format!("missed {i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    missed.push(
        app.send(&bob, "alice", "from another device").await["id"]
            .as_i64()
            .unwrap(),
    );
    app.user("carol").await;
    let mut bob_ws = app.ws(&bob, Some(seen)).await;
    for id in &missed {
        assert_eq!(frame_id(&mut bob_ws).await, *id);
    }
    // Then live, without repeating anything.
    let live = app.send(&alice, "bob", "live").await["id"].as_i64().unwrap();
    assert_eq!(frame_id(&mut bob_ws).await, live);
    no_frame(&mut bob_ws, Duration::from_millis(100)).await;
    close(bob_ws).await;
    // Nothing missed: no catch-up frame.
    let mut bob_ws = app.ws(&bob, Some(live)).await;
    no_frame(&mut bob_ws, Duration::from_millis(100)).await;
    close(bob_ws).await;
    // A `since` beyond the newest message (e.g. from another server) does not mute live events.
    let mut bob_ws = app.ws(&bob, Some(live + 1_000_000)).await;
    let after = app.send(&alice, "bob", "after").await["id"].as_i64().unwrap();
    assert_eq!(frame_id(&mut bob_ws).await, after);
    close(bob_ws).await;
    let (status, _) = app.ws_refused(app.ws_request(Some(&bob), "?since=abc")).await;
    assert_eq!(status, 400);
}

pub async fn since_under_concurrent_sends_has_no_gap_and_no_duplicate(store: Arc<dyn Backend>) {
    let app = TestApp::spawn_with(
        store,
        Options {
            chat: ChatConfig {
                send_burst: 0,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let (alice_user, _) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let chat = app.chat.clone();
    // The sender keeps sending until told to stop; the test tells it only once the socket,
    // opened from id 0 in the middle of the stream, has delivered a message sent after it
    // opened: so sends happen before, during and after the catch-up, with no timing guess.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
    let sender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let sent = chat
                    .send(
                        &alice_user,
                        SendRequest {
                            recipient: "bob".into(),
                            body: format!("{i}"),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                ids.push(sent.message.id.0);
                let _ = sent_tx.send(sent.message.id.0);
                i += 1;
                tokio::task::yield_now().await;
            }
            ids
        })
    };
    // Fifty sent, then reconnect from id 0 while the sends go on.
    let mut newest_at_open = 0;
    for _ in 0..50 {
        newest_at_open = sent_rx.recv().await.expect("the sender runs");
    }
    let mut bob_ws = app.ws(&bob, Some(0)).await;
    while let Ok(id) = sent_rx.try_recv() {
        newest_at_open = id;
    }
    let mut got = Vec::new();
    loop {
        let id = frame_id(&mut bob_ws).await;
        got.push(id);
        if id > newest_at_open {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let sent = sender.await.unwrap();
    assert!(sent.len() > 50, "sends went on after the reconnect");
    while got.len() < sent.len() {
        got.push(frame_id(&mut bob_ws).await);
    }
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), got.len(), "duplicates in {got:?}");
    assert_eq!(sorted, sent, "gap");
    no_frame(&mut bob_ws, Duration::from_millis(100)).await;
    close(bob_ws).await;
}

pub async fn too_many_missed_messages_ask_for_resync(store: Arc<dyn Backend>) {
    let options = Options {
        chat: ChatConfig {
            catch_up_limit: 5,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let start = app.send(&alice, "bob", "start").await["id"].as_i64().unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.send(&alice, "bob", &format!("{i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    // Exactly the bound: replayed.
    let mut ws = app.ws(&bob, Some(start)).await;
    for id in &ids {
        assert_eq!(frame_id(&mut ws).await, *id);
    }
    close(ws).await;
    // One more than the bound: resync, then live frames.
    let mut ws = app.ws(&bob, Some(start - 1)).await;
    resync(&mut ws).await;
    no_frame(&mut ws, Duration::from_millis(100)).await;
    let live = app.send(&alice, "bob", "live").await["id"].as_i64().unwrap();
    assert_eq!(frame_id(&mut ws).await, live);
    close(ws).await;
}

pub async fn transport_gap_is_caught_up_from_storage(store: Arc<dyn Backend>) {
    let notifier = Arc::new(LossyNotifier::default());
    let options = Options {
        notifier: Some(notifier.clone()),
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut tab1 = app.ws(&bob, None).await;
    let mut tab2 = app.ws(&bob, None).await;
    let m1 = app.send(&alice, "bob", "m1").await["id"].as_i64().unwrap();
    for ws in [&mut tab1, &mut tab2] {
        assert_eq!(frame_id(ws).await, m1);
    }
    // A tab that has been sent nothing yet starts from where bob stood when it connected.
    let mut fresh_tab = app.ws(&bob, None).await;
    // One that connected with `since` resumes from there, though its backlog was empty.
    let mut since_tab = app.ws(&bob, Some(m1)).await;
    // The transport loses two events, then reports the gap.
    notifier.mode.store(LOSE, Ordering::SeqCst);
    let m2 = app.send(&alice, "bob", "m2").await["id"].as_i64().unwrap();
    let m3 = app.send(&bob, "alice", "m3").await["id"].as_i64().unwrap();
    notifier.mode.store(PASS, Ordering::SeqCst);
    notifier.table.deliver_all(&Delivery::Gap);
    for ws in [&mut tab1, &mut tab2, &mut since_tab, &mut fresh_tab] {
        assert_eq!(frame_id(ws).await, m2);
        assert_eq!(frame_id(ws).await, m3);
    }
    // Live again, each message once.
    let m4 = app.send(&alice, "bob", "m4").await["id"].as_i64().unwrap();
    for ws in [&mut tab1, &mut tab2, &mut fresh_tab, &mut since_tab] {
        assert_eq!(frame_id(ws).await, m4);
        no_frame(ws, Duration::from_millis(100)).await;
    }
    for ws in [tab1, tab2, fresh_tab, since_tab] {
        close(ws).await;
    }
}

/// A lost notification with no gap signal at all (a publisher that died between commit and
/// publish): the next event's `previous` reveals it, and storage fills it in, in order.
pub async fn a_silently_lost_notification_is_noticed_by_the_next_one(store: Arc<dyn Backend>) {
    let notifier = Arc::new(LossyNotifier::default());
    let options = Options {
        notifier: Some(notifier.clone()),
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut ws = app.ws(&bob, None).await;
    notifier.mode.store(LOSE, Ordering::SeqCst);
    let lost = app.send(&alice, "bob", "lost").await["id"].as_i64().unwrap();
    notifier.mode.store(PASS, Ordering::SeqCst);
    let next = app.send(&alice, "bob", "next").await["id"].as_i64().unwrap();
    assert_eq!(frame_id(&mut ws).await, lost);
    assert_eq!(frame_id(&mut ws).await, next);
    no_frame(&mut ws, Duration::from_millis(100)).await;
    close(ws).await;
}

/// Notifications that cross (the second send's published first, as two senders or two
/// nodes can do) still reach the socket in position order, without waiting for storage.
pub async fn crossed_notifications_arrive_in_position_order(store: Arc<dyn Backend>) {
    let notifier = Arc::new(LossyNotifier::default());
    let options = Options {
        notifier: Some(notifier.clone()),
        api: ApiConfig {
            // Long enough that only the crossed notification itself can release the held one.
            ws_gap_wait: Duration::from_secs(30),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let (_, carol) = app.user("carol").await;
    let mut bob_ws = app.ws(&bob, None).await;
    notifier.mode.store(HOLD, Ordering::SeqCst);
    let first = app.send(&alice, "bob", "first").await["id"].as_i64().unwrap();
    notifier.mode.store(PASS, Ordering::SeqCst);
    let second = app.send(&carol, "bob", "second").await["id"].as_i64().unwrap();
    // The second is out now, the first still held by the transport: nothing yet.
    no_frame(&mut bob_ws, Duration::from_millis(100)).await;
    notifier.release().await;
    assert_eq!(frame_id(&mut bob_ws).await, first);
    assert_eq!(frame_id(&mut bob_ws).await, second);
    no_frame(&mut bob_ws, Duration::from_millis(100)).await;
    close(bob_ws).await;
}

const PASS: u8 = 0;
const LOSE: u8 = 1;
const HOLD: u8 = 2;

/// An in-process transport that passes events on, loses them, or holds them back until
/// released, on demand: a broker connection that dropped, a publisher that died, or two
/// publishers whose notifications crossed.
struct LossyNotifier {
    table: Arc<SubscriberTable>,
    mode: std::sync::atomic::AtomicU8,
    held: tokio::sync::Mutex<Vec<(Vec<Recipient>, Event)>>,
}

impl Default for LossyNotifier {
    fn default() -> Self {
        Self {
            table: Arc::new(SubscriberTable::new(64)),
            mode: Default::default(),
            held: Default::default(),
        }
    }
}

impl LossyNotifier {
    fn deliver(&self, recipients: &[Recipient], event: &Event) {
        for recipient in recipients {
            let delivery = Delivery::Event {
                event: event.clone(),
                previous: recipient.previous,
            };
            self.table.deliver(recipient.user, &delivery);
        }
    }

    async fn release(&self) {
        for (recipients, event) in self.held.lock().await.drain(..) {
            self.deliver(&recipients, &event);
        }
    }
}

#[async_trait]
impl Notifier for LossyNotifier {
    async fn publish(&self, recipients: &[Recipient], event: &Event) -> chatcore::Result<()> {
        match self.mode.load(Ordering::SeqCst) {
            PASS => self.deliver(recipients, event),
            HOLD => self.held.lock().await.push((recipients.to_vec(), event.clone())),
            _ => {}
        }
        Ok(())
    }

    async fn subscribe(&self, user: UserId) -> chatcore::Result<Subscription> {
        Ok(self.table.subscribe(user, || ()).0)
    }
}

pub async fn a_users_oldest_socket_closes_past_the_limit(store: Arc<dyn Backend>) {
    let options = Options {
        chat: ChatConfig {
            max_connections_per_user: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut oldest = app.ws(&bob, None).await;
    let mut second = app.ws(&bob, None).await;
    let mut alices = app.ws(&alice, None).await;
    let mut newest = app.ws(&bob, Some(0)).await;
    let (code, reason) = close_code(&mut oldest).await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "too many connections for this user")
    );
    let id = app.send(&alice, "bob", "hi").await["id"].as_i64().unwrap();
    for ws in [&mut second, &mut newest, &mut alices] {
        assert_eq!(frame_id(ws).await, id);
    }
    for ws in [second, newest, alices] {
        close(ws).await;
    }
}

pub async fn logout_and_expiry_close_that_sessions_sockets(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store.clone()).await;
    let (alice_user, alice) = app.user("alice").await;
    let (bob_user, bob_laptop) = app.user("bob").await;
    let bob_phone = app.auth.start_session(bob_user.clone()).await.unwrap().token;
    let mut laptop = app.ws(&bob_laptop, None).await;
    let mut laptop_tab = app.ws(&bob_laptop, Some(0)).await;
    let mut phone = app.ws(&bob_phone, None).await;
    let response = app
        .client(&bob_laptop)
        .post(app.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    for ws in [&mut laptop, &mut laptop_tab] {
        assert_eq!(close_code(ws).await, (4001, "session ended".to_owned()));
    }
    let id = app.send(&alice, "bob", "phone still hears").await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(frame_id(&mut phone).await, id);
    let (status, _) = app.ws_refused(app.ws_request(Some(&bob_laptop), "")).await;
    assert_eq!(status, 401);
    close(phone).await;
    // A session that expires closes its sockets when it does.
    let token = "expiring-session-token-0123456789abcdefghij";
    let hash = chatcore_axum::token_hash(token);
    let expires_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    store
        .create_session(&hash, alice_user.id, expires_at)
        .await
        .unwrap();
    let mut expiring = app.ws(token, None).await;
    assert_eq!(
        close_code(&mut expiring).await,
        (4001, "session ended".to_owned())
    );
    assert!(
        chrono::Utc::now() >= expires_at,
        "closed before the session expired"
    );
}

pub async fn oversized_client_frames_close_with_1009(store: Arc<dyn Backend>) {
    let options = Options {
        api: ApiConfig {
            ws_max_incoming_message: 1024,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, bob) = app.user("bob").await;
    let mut ws = app.ws(&bob, None).await;
    send_raw(&mut ws, WsMessage::text("x".repeat(1024))).await;
    send_raw(&mut ws, WsMessage::text("x".repeat(1025))).await;
    assert_eq!(close_code(&mut ws).await, (1009, "message too big".to_owned()));
}

pub async fn a_long_backlog_is_sent_in_pages_in_order(store: Arc<dyn Backend>) {
    let options = Options {
        chat: ChatConfig {
            catch_up_page: 3,
            catch_up_limit: 20,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            app.send(&alice, "bob", &format!("{i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let mut ws = app.ws(&bob, Some(0)).await;
    for id in &ids {
        assert_eq!(frame_id(&mut ws).await, *id);
    }
    let live = app.send(&alice, "bob", "live").await["id"].as_i64().unwrap();
    assert_eq!(frame_id(&mut ws).await, live);
    no_frame(&mut ws, Duration::from_millis(100)).await;
    close(ws).await;
}

pub async fn client_frames_are_ignored_and_pings_keep_it_alive(store: Arc<dyn Backend>) {
    let options = Options {
        api: ApiConfig {
            ws_ping_interval: Duration::from_millis(100),
            ws_ping_timeout: Duration::from_millis(400),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut ws = app.ws(&bob, None).await;
    send_raw(&mut ws, WsMessage::text("hello server")).await;
    send_raw(&mut ws, WsMessage::text("{\"not\": \"a command\"")).await;
    send_raw(&mut ws, WsMessage::binary(vec![0u8, 159, 146, 150])).await;
    // The server pings; the client library answers, so after several intervals the socket lives.
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, ws.next()).await {
        match frame {
            WsMessage::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings} pings");
    let id = app.send(&alice, "bob", "still there?").await["id"]
        .as_i64()
        .unwrap();
    assert_eq!(frame_id(&mut ws).await, id);
    close(ws).await;
}

pub async fn dead_websocket_is_dropped(store: Arc<dyn Backend>) {
    let options = Options {
        api: ApiConfig {
            ws_ping_interval: Duration::from_millis(100),
            ws_ping_timeout: Duration::from_millis(100),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (_, bob) = app.user("bob").await;
    // Never polled: it answers no ping, like a client whose network vanished.
    let silent = app.ws(&bob, None).await;
    assert_eq!(app.shutdown.open_sockets(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.shutdown.open_sockets() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "dead socket kept open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(silent);
}

pub async fn slow_websocket_reader_catches_up_from_storage_in_order(store: Arc<dyn Backend>) {
    let options = Options {
        chat: ChatConfig {
            send_burst: 0,
            ..Default::default()
        },
        notifier_queue: 8,
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    let (alice_user, _) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    // A client with a tiny receive window that does not read for a while.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let request = app.ws_request(Some(&bob), "");
    let (mut ws, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let body = "𝄞".repeat(4_000); // 16,000 bytes a message
    let total = 400;
    for _ in 0..total {
        app.chat
            .send(
                &alice_user,
                SendRequest {
                    recipient: "bob".into(),
                    body: body.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    // Now read: its queue overflowed long ago, so it is caught up from storage, page by page,
    // and gets every message once, in order, with no close.
    let mut ids = Vec::new();
    while ids.len() < total {
        ids.push(frame_id(&mut ws).await);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order or duplicated");
    no_frame(&mut ws, Duration::from_millis(200)).await;
}

pub async fn shutdown_sends_close_frames(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let mut sockets = vec![
        app.ws(&alice, None).await,
        app.ws(&bob, None).await,
        app.ws(&bob, None).await,
    ];
    assert_eq!(app.shutdown.open_sockets(), 3);
    app.shutdown.shutdown();
    for ws in &mut sockets {
        match incoming(ws).await {
            Incoming::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    drop(sockets);
    tokio::time::timeout(Duration::from_secs(10), app.server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert_eq!(app.shutdown.open_sockets(), 0);
    assert!(
        tokio::net::TcpStream::connect(app.addr).await.is_err(),
        "still listening"
    );
}

pub async fn unavailable_storage_answers_503(store: Arc<dyn Backend>) {
    let failing = Arc::new(TestStore::new(store));
    let app = TestApp::spawn(failing.clone()).await;
    let (alice_user, alice) = app.user("alice").await;
    // A session not looked up yet, so not in the authenticator's cache.
    let uncached = app.auth.start_session(alice_user).await.unwrap().token;
    app.user("bob").await;
    app.send(&alice, "bob", "before the outage").await;
    failing.down.store(true, Ordering::SeqCst);
    let client = app.client(&alice);
    let requests = [
        client
            .post(app.url("/api/v1/message/"))
            .json(&json!({"recipient": "bob", "body": "hi"})),
        client.get(app.url("/api/v1/message/?target=bob")),
        client.get(app.url("/api/v1/message/")),
        client.get(app.url("/api/v1/message/1/")),
        client.get(app.url("/api/v1/user/")),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        assert_eq!(response.headers()["retry-after"], "1");
        let message = error_of(response, 503).await;
        assert!(!message.contains("injected"), "internals leaked: {message}");
    }
    let (status, _) = app.ws_refused(app.ws_request(Some(&alice), "?since=0")).await;
    assert_eq!(status, 503);
    // The authenticator's storage failing is a 503 too, not a 401.
    failing.sessions_down.store(true, Ordering::SeqCst);
    let response = app
        .client(&uncached)
        .get(app.url("/api/v1/user/"))
        .send()
        .await
        .unwrap();
    error_of(response, 503).await;
    // Back up: everything works again.
    failing.down.store(false, Ordering::SeqCst);
    failing.sessions_down.store(false, Ordering::SeqCst);
    app.send(&alice, "bob", "after the outage").await;
}

/// The promise end to end: eight senders at once through `nodes` (one server, or several
/// sharing a store and a transport), and a client of bob's that drops its socket at random
/// moments and reconnects, to a random node, with `since` = the last position it saw. It
/// must get every message of bob's exactly once, in position order.
pub async fn reconnecting_client_gets_every_message_once_in_order_over(nodes: &[TestApp]) {
    use rand::Rng;
    let (_, bob) = nodes[0].user("bob").await;
    let mut senders = Vec::new();
    for k in 0..8 {
        senders.push(nodes[0].user(&format!("sender{k}")).await);
    }
    let addresses: Vec<(std::net::SocketAddr, String)> = nodes
        .iter()
        .map(|n| (n.addr, n.url("/api/v1/message/")))
        .collect();
    let per_sender = 40;
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(k, (_, token))| {
            let addresses = addresses.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut mine = Vec::new();
                for i in 0..per_sender {
                    let url = &addresses[(k + i) % addresses.len()].1;
                    // Every third message goes elsewhere, so bob's positions are not contiguous.
                    let to = if i % 3 == 2 {
                        format!("sender{}", (k + 1) % 8)
                    } else {
                        "bob".to_owned()
                    };
                    let response = client
                        .post(url)
                        .bearer_auth(&token)
                        .json(&json!({"recipient": to, "body": format!("{k}.{i}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 201);
                    let sent: Value = response.json().await.unwrap();
                    if to == "bob" {
                        mine.push(sent["id"].as_i64().unwrap());
                    }
                }
                mine
            })
        })
        .collect();
    // Known in advance, so the client knows when it has everything.
    let total = 8 * (0..per_sender).filter(|i| i % 3 != 2).count();
    let mut got: Vec<i64> = Vec::new();
    let mut last = 0;
    let mut reconnects = 0;
    let mut rng = rand::rng();
    while got.len() < total {
        let node = &nodes[rng.random_range(0..nodes.len())];
        let mut ws = node.ws(&bob, Some(last)).await;
        let drop_after = rng.random_range(1..25);
        let mut read = 0;
        while read < drop_after && got.len() < total {
            let id = match tokio::time::timeout(Duration::from_secs(4), frame_id(&mut ws)).await {
                Ok(id) => id,
                Err(_) => panic!(
                    "stuck after position {last} with {} of {total} messages",
                    got.len()
                ),
            };
            assert!(id > last, "position {id} after {last}: out of order or repeated");
            last = id;
            got.push(id);
            read += 1;
        }
        drop(ws);
        reconnects += 1;
    }
    let mut expected: Vec<i64> = Vec::new();
    for task in tasks {
        expected.extend(task.await.unwrap());
    }
    expected.sort_unstable();
    assert_eq!(
        got, expected,
        "every message once, in order ({reconnects} reconnects)"
    );
    assert!(reconnects > 3, "only {reconnects} reconnects: nothing tested");
    // Nothing more afterwards.
    let mut ws = nodes[0].ws(&bob, Some(last)).await;
    no_frame(&mut ws, Duration::from_millis(100)).await;
}

pub async fn reconnecting_client_gets_every_message_once_in_order(store: Arc<dyn Backend>) {
    let options = Options {
        chat: ChatConfig {
            send_burst: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::spawn_with(store, options).await;
    reconnecting_client_gets_every_message_once_in_order_over(std::slice::from_ref(&app)).await;
}

/// GET a path as the owner of `token`; the status and the JSON body.
pub(crate) async fn get_json(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let response = app.client(token).get(app.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// POSTs `{"up_to": id}` to mark `peer`'s conversation read.
async fn mark_read(app: &TestApp, token: &str, peer: &str, up_to: i64) -> (u16, Value) {
    let response = app
        .client(token)
        .post(app.url(&format!("/api/v1/conversation/{peer}/read")))
        .json(&json!({ "up_to": up_to }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The next frame, checked to be a read event; returns it.
async fn read_frame(ws: &mut Ws) -> Value {
    let value = frame(ws).await;
    assert_eq!(value["type"], "read", "expected a read frame, got {value}");
    assert!(value["position"].is_i64(), "a read frame has a position: {value}");
    value
}

pub async fn inbox_lists_conversations_with_unread_counts_and_pages(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("Bob").await;
    let (_, carol) = app.user("carol").await;
    app.send(&bob, "alice", "b1").await;
    app.send(&carol, "alice", "c1").await;
    let last = app.send(&bob, "alice", "b2").await;
    app.send(&alice, "alice", "a note").await;

    for path in ["/api/v1/conversation/", "/api/v1/conversation"] {
        let (status, inbox) = get_json(&app, &alice, path).await;
        assert_eq!(status, 200, "{path}: {inbox}");
        assert_eq!(inbox["unread_total"], 3, "{inbox}");
        assert_eq!(inbox["next"], Value::Null);
        let results = inbox["results"].as_array().unwrap();
        let peers: Vec<&str> = results.iter().map(|c| c["peer"].as_str().unwrap()).collect();
        assert_eq!(peers, ["alice", "Bob", "carol"]);
        assert_eq!(results[0]["unread"], 0, "a note to self is never unread");
        assert_eq!(
            results[1]["last_message"], last,
            "the newest message, in the message shape"
        );
        assert_eq!(results[1]["unread"], 2);
        assert_eq!(results[1]["read_up_to"], Value::Null);
        assert_eq!(results[1]["peer_read_up_to"], Value::Null);
    }
    // Pages of one, following `next`.
    let mut peers = Vec::new();
    let mut url = app.url("/api/v1/conversation/?limit=1");
    loop {
        let response = app.client(&alice).get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        let results = page["results"].as_array().unwrap();
        assert!(results.len() <= 1);
        peers.extend(results.iter().map(|c| c["peer"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => {
                assert!(next.contains("limit=1") && next.contains("before="), "{next}");
                url = app.absolute(next);
            }
            None => break,
        }
    }
    assert_eq!(peers, ["alice", "Bob", "carol"]);

    let (_, bobs) = get_json(&app, &bob, "/api/v1/conversation/").await;
    assert_eq!(
        bobs["unread_total"], 0,
        "bob wrote, he has nothing unread: {bobs}"
    );
    for bad in ["?limit=0", "?limit=x", "?before=abc"] {
        let response = app
            .client(&alice)
            .get(app.url(&format!("/api/v1/conversation/{bad}")))
            .send()
            .await
            .unwrap();
        error_of(response, 400).await;
    }
    let response = app
        .anonymous()
        .get(app.url("/api/v1/conversation/"))
        .send()
        .await
        .unwrap();
    error_of(response, 401).await;
}

pub async fn marking_read_moves_forward_and_notifies_both(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let (_, carol) = app.user("carol").await;
    let mut alice_ws = app.ws(&alice, None).await;
    let mut bob_ws = app.ws(&bob, None).await;
    let first = app.send(&alice, "bob", "one").await["id"].as_i64().unwrap();
    let second = app.send(&alice, "bob", "two").await["id"].as_i64().unwrap();
    for ws in [&mut alice_ws, &mut bob_ws] {
        assert_eq!(frame_id(ws).await, first);
        assert_eq!(frame_id(ws).await, second);
    }

    let (status, body) = mark_read(&app, &bob, "alice", first).await;
    assert_eq!((status, &body), (200, &json!({"unread": 1, "read_up_to": first})));
    let mut positions = Vec::new();
    for ws in [&mut bob_ws, &mut alice_ws] {
        let read = read_frame(ws).await;
        assert_eq!(
            (&read["reader"], &read["peer"], &read["up_to"]),
            (&json!("bob"), &json!("alice"), &json!(first)),
            "{read}"
        );
        assert!(read["position"].as_i64().unwrap() > second);
        positions.push(read["position"].clone());
    }
    assert_eq!(positions[0], positions[1], "one event, one position for both");
    // alice sees bob's marker in her inbox.
    let (_, inbox) = get_json(&app, &alice, "/api/v1/conversation/").await;
    assert_eq!(inbox["results"][0]["peer_read_up_to"], first);

    // Backwards or in place: accepted, nothing changes, nothing is sent.
    let (status, body) = mark_read(&app, &bob, "alice", first).await;
    assert_eq!((status, &body), (200, &json!({"unread": 1, "read_up_to": first})));
    no_frame(&mut bob_ws, Duration::from_millis(100)).await;
    // A form body and a trailing slash work too.
    let response = app
        .client(&bob)
        .post(app.url("/api/v1/conversation/alice/read/"))
        .form(&[("up_to", second.to_string())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"unread": 0, "read_up_to": second}));
    assert_eq!(read_frame(&mut bob_ws).await["up_to"], second);
    assert_eq!(read_frame(&mut alice_ws).await["up_to"], second);
    let (_, inbox) = get_json(&app, &bob, "/api/v1/conversation/").await;
    assert_eq!(inbox["unread_total"], 0);

    // Not found: unknown peer, a message of another conversation, an id that does not exist.
    let elsewhere = app.send(&alice, "carol", "not bob's").await["id"]
        .as_i64()
        .unwrap();
    for (peer, id) in [
        ("nobody", second),
        ("alice", elsewhere),
        ("alice", elsewhere + 1_000),
    ] {
        let (status, body) = mark_read(&app, &bob, peer, id).await;
        assert_eq!(status, 404, "{peer} {id}: {body}");
        assert!(body["error"].is_string());
    }
    let (status, _) = mark_read(&app, &carol, "bob", second).await;
    assert_eq!(status, 404, "carol cannot mark bob's and alice's conversation");
    // Bad bodies.
    for body in [json!({}), json!({"up_to": "x"}), json!({"up_to": 1.5})] {
        let response = app
            .client(&bob)
            .post(app.url("/api/v1/conversation/alice/read"))
            .json(&body)
            .send()
            .await
            .unwrap();
        error_of(response, 400).await;
    }
    no_frame(&mut bob_ws, Duration::from_millis(100)).await;
    close(alice_ws).await;
    close(bob_ws).await;
}

pub async fn read_events_are_replayed_by_since_in_order(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("alice").await;
    let (_, bob) = app.user("bob").await;
    let seen = app.send(&bob, "alice", "seen").await["id"].as_i64().unwrap();
    // While alice is away: a message, bob reads it, another message, alice reads on another tab.
    let m1 = app.send(&alice, "bob", "m1").await["id"].as_i64().unwrap();
    assert_eq!(mark_read(&app, &bob, "alice", m1).await.0, 200);
    let m2 = app.send(&bob, "alice", "m2").await["id"].as_i64().unwrap();
    assert_eq!(mark_read(&app, &alice, "bob", m2).await.0, 200);

    let mut ws = app.ws(&alice, Some(seen)).await;
    assert_eq!(frame_id(&mut ws).await, m1);
    let bob_read = read_frame(&mut ws).await;
    assert_eq!(
        (&bob_read["reader"], &bob_read["up_to"]),
        (&json!("bob"), &json!(m1))
    );
    assert_eq!(frame_id(&mut ws).await, m2);
    let alice_read = read_frame(&mut ws).await;
    assert_eq!(
        (&alice_read["reader"], &alice_read["peer"], &alice_read["up_to"]),
        (&json!("alice"), &json!("bob"), &json!(m2))
    );
    let positions = [
        m1,
        bob_read["position"].as_i64().unwrap(),
        m2,
        alice_read["position"].as_i64().unwrap(),
    ];
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    no_frame(&mut ws, Duration::from_millis(100)).await;
    close(ws).await;
    // Resuming from the read event's position replays only what follows it.
    let mut ws = app.ws(&alice, Some(positions[1])).await;
    assert_eq!(frame_id(&mut ws).await, m2);
    assert_eq!(read_frame(&mut ws).await["position"], positions[3]);
    no_frame(&mut ws, Duration::from_millis(100)).await;
    close(ws).await;
}

pub async fn auth_session_names_the_caller(store: Arc<dyn Backend>) {
    let app = TestApp::spawn(store).await;
    let (_, alice) = app.user("Alice").await;
    for path in ["/api/v1/auth/session", "/api/v1/auth/session/"] {
        let (status, body) = get_json(&app, &alice, path).await;
        assert_eq!(
            (status, body),
            (200, json!({"username": "Alice", "max_message_chars": 4000}))
        );
    }
    let response = app
        .anonymous()
        .get(app.url("/api/v1/auth/session"))
        .send()
        .await
        .unwrap();
    error_of(response, 401).await;
    let response = app
        .client("not-a-token")
        .get(app.url("/api/v1/auth/session"))
        .send()
        .await
        .unwrap();
    error_of(response, 401).await;
}
