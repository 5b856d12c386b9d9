//! End-to-end test of the web UI, `<chatcore-app>` full-screen on the standalone server's
//! page, in headless Chromium driven over WebDriver (helpers in `support/browser.rs`, shared
//! with host-app's browser test).
//!
//! Two users in two separate browsers sign up through the page, a third writes over HTTP.
//! The inbox: bob's badge and the "(n) chatcore" title appear live for a message that arrives
//! while he is in another conversation, survive a reload (which keeps him logged in, from the
//! session cookie), and clear when he opens it; alice then sees "Seen" under her message.
//! Then the conversation itself: a message arrives live, a body of HTML shows as text and runs
//! nothing, links are links, bodies are isolated, one date line per day, after 20 messages a
//! reload shows the latest 15 and "Load older" brings the rest. And what a newcomer met: the
//! keyboard (focus after login and after opening, arrows, Enter), the open conversation in
//! the URL (reload, Back), the empty state, the composer's counter, a failed send retried
//! with its key, the connection banner, contrast, and a logout that leaves nothing of the
//! previous user for the next one in the same tab. Screenshots (desktop and phone-sized) are
//! saved under `target/browser-artifacts/` (or `$CHAT_ARTIFACTS_DIR`).

mod common;
#[path = "support/browser.rs"]
mod support;

use common::ServerProcess;
use fantoccini::Client;
use serde_json::json;
use support::*;

const XSS: &str = "<img src=x onerror=alert(1)>";

/// A user outside the browsers, over HTTP with a bearer token.
struct HttpUser {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl HttpUser {
    async fn sign_up(base: &str, username: &str) -> Self {
        let http = reqwest::Client::new();
        let credentials = json!({"username": username, "password": "correct horse battery"});
        let status = http
            .post(format!("{base}/api/v1/auth/register"))
            .json(&credentials)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201, "register {username}");
        let login: serde_json::Value = http
            .post(format!("{base}/api/v1/auth/login"))
            .json(&credentials)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Self {
            http,
            base: base.to_owned(),
            token: login["token"].as_str().expect("a token").to_owned(),
        }
    }

    async fn send(&self, recipient: &str, body: &str) {
        let status = self
            .http
            .post(format!("{}/api/v1/message/", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"recipient": recipient, "body": body}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201, "send to {recipient}");
    }
}

async fn url_fragment(client: &Client) -> String {
    client
        .current_url()
        .await
        .unwrap()
        .fragment()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_live_in_real_browsers() {
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(work.path(), &["--database", "sqlite://chat.db"]).await;
    let driver = start_chromedriver().await;
    let alice = browser(&driver, &work.path().join("profile-alice")).await;
    let bob = browser(&driver, &work.path().join("profile-bob")).await;

    // The page links its icon, served by the chat router with the element.
    let icon = reqwest::get(format!("{}/ui/favicon.svg", server.base))
        .await
        .unwrap();
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");

    sign_up(&alice, &server.base, "alice").await;
    // Alone on the server: the empty state says what to do.
    eventually("the empty state for the first user", || {
        visible(&alice, "#nobody")
    })
    .await;
    assert!(!visible(&alice, "#inbox-empty").await);
    sign_up(&bob, &server.base, "bob").await;
    assert_eq!(title(&bob).await, "chatcore");
    assert!(
        visible(&bob, "#inbox-empty").await && !visible(&bob, "#nobody").await,
        "with someone to write to, the hint says to search"
    );
    let contrast = low_contrast(&bob).await;
    assert!(contrast.is_empty(), "text under WCAG AA contrast: {contrast:?}");

    // A message from someone bob has never talked to appears live, with its badge and the
    // total in the title.
    let carol = HttpUser::sign_up(&server.base, "carol").await;
    carol.send("bob", "hi bob, carol here").await;
    eventually("carol's conversation in bob's inbox with a badge", || async {
        inbox(&bob).await == [row("carol", "1", "hi bob, carol here")]
    })
    .await;
    eventually("the total in bob's title", || async {
        title(&bob).await == "(1) chatcore"
    })
    .await;
    assert_eq!(
        js(&bob, "return R.getElementById('announcer').textContent;").await,
        json!("carol: hi bob, carol here"),
        "a message arriving live is announced"
    );

    // By keyboard: from the search field Down reaches the conversation, Enter opens it and
    // the focus goes to the composer. Opening it (the window has focus, the latest message
    // is in view) marks it read.
    click(&bob, "the search field", "#user-search").await;
    press(&bob, ARROW_DOWN).await;
    eventually("the conversation focused", || async {
        js(&bob, "return R.activeElement && R.activeElement.closest('#inbox-list li') ? R.activeElement.closest('li').dataset.peer : null;").await
            == json!("carol")
    })
    .await;
    press(&bob, ENTER).await;
    wait_conversation(&bob, "carol").await;
    eventually("the focus in the composer", || async {
        focused(&bob).await == "send-body"
    })
    .await;
    assert_eq!(
        url_fragment(&bob).await,
        "chat=carol",
        "the open conversation is in the URL"
    );
    eventually("carol's badge cleared once bob opened it", || async {
        badge(&bob, "carol").await.as_deref() == Some("")
    })
    .await;
    eventually("bob's title without a count", || async {
        title(&bob).await == "chatcore"
    })
    .await;

    // alice starts a conversation from the directory while bob reads carol's.
    start_conversation(&alice, "bo", "bob").await;
    send(&alice, "hello bob").await;
    eventually("bob's badge for alice, on top of his inbox", || async {
        inbox(&bob).await
            == [
                row("alice", "1", "hello bob"),
                row("carol", "", "hi bob, carol here"),
            ]
    })
    .await;
    eventually("the total in bob's title", || async {
        title(&bob).await == "(1) chatcore"
    })
    .await;
    assert_eq!(
        message_texts(&bob).await,
        ["hi bob, carol here"],
        "alice's message does not land in carol's conversation"
    );
    eventually("alice's own inbox, her message as the preview", || async {
        inbox(&alice).await == [row("bob", "", "You: hello bob")]
    })
    .await;
    assert_eq!(seen_under(&alice).await, None, "bob has not read it yet");
    screenshot(&bob, "browser-bob-badge.png").await;

    // A reload keeps bob logged in (the cookie, checked with the server), keeps the counts and
    // the open conversation (from the URL).
    reload_logged_in(&bob, "bob").await;
    wait_conversation(&bob, "carol").await;
    eventually("the counts after bob's reload", || async {
        inbox(&bob).await
            == [
                row("alice", "1", "hello bob"),
                row("carol", "", "hi bob, carol here"),
            ]
    })
    .await;
    assert_eq!(title(&bob).await, "(1) chatcore");

    // bob opens it: his badge clears, and alice sees "Seen" under her message, live.
    open_conversation(&bob, "alice").await;
    eventually("the message in bob's conversation", || async {
        message_texts(&bob).await == ["hello bob"]
    })
    .await;
    eventually("alice's badge cleared", || async {
        badge(&bob, "alice").await.as_deref() == Some("")
    })
    .await;
    eventually("bob's title without a count", || async {
        title(&bob).await == "chatcore"
    })
    .await;
    eventually("\"Seen\" under alice's message", || async {
        seen_under(&alice).await.as_deref() == Some("hello bob")
    })
    .await;
    assert!(
        seen_under(&bob).await.is_none(),
        "bob has written nothing, so nothing of his is seen"
    );

    // Both reload: the read state is the server's, not the page's.
    reload_logged_in(&alice, "alice").await;
    assert_eq!(title(&alice).await, "chatcore");
    wait_conversation(&alice, "bob").await;
    eventually("\"Seen\" after alice's reload", || async {
        seen_under(&alice).await.as_deref() == Some("hello bob")
    })
    .await;
    reload_logged_in(&bob, "bob").await;
    eventually("bob's inbox after the reload", || async {
        badge(&bob, "alice").await.as_deref() == Some("") && badge(&bob, "carol").await.as_deref() == Some("")
    })
    .await;
    assert_eq!(title(&bob).await, "chatcore");
    wait_conversation(&bob, "alice").await;

    // HTML in a body is shown as text and runs nothing; an address is a link, and only that.
    send(&alice, XSS).await;
    eventually("the HTML body on bob's screen as text, live", || async {
        message_texts(&bob).await.last().map(String::as_str) == Some(XSS)
    })
    .await;
    send(&alice, "see https://example.com/a?b=1.").await;
    eventually("the link on bob's screen", || async {
        js(
            &bob,
            "const a = R.querySelectorAll('#message-list li.msg a'); \
                  return [...a].map(l => [l.getAttribute('href'), l.textContent, l.rel, l.target]);",
        )
        .await
            == json!([[
                "https://example.com/a?b=1",
                "https://example.com/a?b=1",
                "noopener noreferrer",
                "_blank"
            ]])
    })
    .await;
    for client in [&alice, &bob] {
        assert_eq!(
            js(client, "return R.querySelectorAll('#message-list img').length;").await,
            json!(0),
            "no element was created from the body"
        );
        assert!(client.get_alert_text().await.is_err(), "no alert ran");
        // Every body is isolated, so a bidirectional override in it cannot reorder the page.
        let isolation = js(
            client,
            "const b = R.querySelector('#message-list li .body'); \
             return [b.dir, getComputedStyle(b).unicodeBidi];",
        )
        .await;
        assert_eq!(isolation, json!(["auto", "isolate"]));
    }

    // Own messages sit on the right, the other's on the left.
    assert_eq!(
        js(
            &alice,
            "return R.querySelectorAll('#message-list li.msg.mine').length;"
        )
        .await,
        json!(3)
    );
    assert_eq!(
        js(&bob, "return R.querySelectorAll('#message-list li.mine').length;").await,
        json!(0)
    );

    for i in 4..=20 {
        send(&alice, &format!("message {i}")).await;
    }
    eventually("all 20 on bob's screen", || async {
        message_texts(&bob).await.len() == 20
    })
    .await;
    // bob watches the conversation: what arrives is read at once, no badge, and alice sees it.
    eventually("\"Seen\" under alice's latest message", || async {
        seen_under(&alice).await.as_deref() == Some("message 20")
    })
    .await;
    assert_eq!(badge(&bob, "alice").await.as_deref(), Some(""));
    assert_eq!(title(&bob).await, "chatcore");
    let preview = inbox(&bob).await;
    assert_eq!(
        preview[0].2, "message 20",
        "the preview follows the latest message"
    );

    reload_logged_in(&bob, "bob").await;
    wait_conversation(&bob, "alice").await;
    eventually("the latest 15 after reload", || async {
        message_texts(&bob).await.len() == 15
    })
    .await;
    let latest = message_texts(&bob).await;
    assert_eq!(latest.first().map(String::as_str), Some("message 6"));
    assert_eq!(latest.last().map(String::as_str), Some("message 20"));
    eventually("the load older button", || visible(&bob, "#load-older")).await;
    click(&bob, "load older", "#load-older").await;
    eventually("all 20 after load older", || async {
        message_texts(&bob).await.len() == 20
    })
    .await;
    let all = message_texts(&bob).await;
    assert_eq!(all[0], "hello bob");
    assert_eq!(all[1], XSS);
    assert!(!visible(&bob, "#load-older").await, "nothing older remains");
    // Messages of one day share one date line, above the first of them.
    let days = js(
        &bob,
        "const list = R.getElementById('message-list'); \
         return [[...list.querySelectorAll('li.day')].map(d => d.textContent), \
                 list.firstElementChild.className];",
    )
    .await;
    assert_eq!(days, json!([["Today"], "day"]));

    composer(&alice).await;
    failed_send_is_retried_with_its_key(&alice, &bob).await;

    screenshot(&bob, "browser-desktop-bob.png").await;
    screenshot(&alice, "browser-desktop-alice.png").await;

    // A phone-width screen shows one pane at a time; the phone's Back returns to the list.
    bob.set_window_size(390, 800).await.unwrap();
    assert!(
        !visible(&bob, "#sidebar").await,
        "the conversation takes the whole phone screen"
    );
    screenshot(&bob, "browser-phone-conversation.png").await;
    click(&bob, "the back arrow", "#back-button").await;
    eventually("the inbox on a phone", || visible(&bob, "#inbox-list")).await;
    assert!(!visible(&bob, "#conversation").await);
    assert_eq!(
        url_fragment(&bob).await,
        "",
        "the list has no conversation in the URL"
    );
    screenshot(&bob, "browser-phone-inbox.png").await;
    open_conversation(&bob, "carol").await;
    assert_eq!(url_fragment(&bob).await, "chat=carol");
    bob.back().await.unwrap();
    eventually("the inbox after the browser's Back", || {
        visible(&bob, "#inbox-list")
    })
    .await;
    assert!(!visible(&bob, "#conversation").await);
    bob.set_window_size(1000, 800).await.unwrap();

    connection_banner(&bob).await;
    logout_leaves_nothing_behind(&alice).await;

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    let status = server.terminate().await;
    assert!(status.success(), "server exits cleanly on SIGTERM: {status:?}");
}

/// Sets the composer's text as typing would (an input event), without typing it key by key.
async fn set_draft(client: &Client, text: &str) {
    let script = format!(
        "const input = R.getElementById('send-body'); input.value = {}; \
         input.dispatchEvent(new Event('input'));",
        json!(text)
    );
    js(client, &script).await;
}

/// The composer grows with its text, counts as the server does (scalar values: one emoji
/// is one, not two UTF-16 units) near the limit, and refuses, never cuts, a text too long.
async fn composer(client: &Client) {
    let one_line = js(client, "return R.getElementById('send-body').offsetHeight;").await;
    set_draft(client, "one\ntwo\nthree\nfour").await;
    let four_lines = js(client, "return R.getElementById('send-body').offsetHeight;").await;
    assert!(
        four_lines.as_f64() > one_line.as_f64(),
        "the composer grows: {one_line} then {four_lines}"
    );
    set_draft(client, "").await;
    assert!(
        !visible(client, "#send-counter").await,
        "no counter far from the limit"
    );
    set_draft(client, &"😀".repeat(3_700)).await;
    assert_eq!(text(client, "#send-counter").await, "3700 / 4000 characters");
    let long = "😀".repeat(4_001);
    set_draft(client, &long).await;
    assert_eq!(
        text(client, "#send-counter").await,
        "4001 / 4000 characters: 1 too many to send"
    );
    let sent_before = message_texts(client).await.len();
    type_into(client, "#send-body", ENTER).await;
    eventually("the refusal", || async {
        text(client, "#send-error").await == "This message is 1 characters too long to send."
    })
    .await;
    assert_eq!(
        js(client, "return [...R.getElementById('send-body').value].length;").await,
        json!(4_001),
        "the text is kept whole"
    );
    assert_eq!(message_texts(client).await.len(), sent_before);
    // Exactly at the limit it goes.
    set_draft(client, &"😀".repeat(4_000)).await;
    type_into(client, "#send-body", ENTER).await;
    eventually("the message at the limit, sent", || async {
        message_texts(client).await.len() == sent_before + 1
    })
    .await;
    assert!(!visible(client, "#send-counter").await);
    assert!(!visible(client, "#send-problem").await);
}

/// A send that fails on the network keeps its text, says so in words, and "Retry" sends it
/// with the same Idempotency-Key: it is stored once.
async fn failed_send_is_retried_with_its_key(alice: &Client, bob: &Client) {
    js(
        alice,
        "window.__keys = []; window.__fail = 1; const real = window.fetch; \
         window.fetch = (url, init) => { \
           if (String(url).endsWith('/api/v1/message/') && init && init.method === 'POST') { \
             window.__keys.push(init.headers['Idempotency-Key']); \
             if (window.__fail-- > 0) return Promise.reject(new TypeError('Failed to fetch')); \
           } \
           return real(url, init); };",
    )
    .await;
    let before = message_texts(alice).await.len();
    type_into(alice, "#send-body", &format!("try again{ENTER}")).await;
    eventually("the failure, in words", || async {
        text(alice, "#send-error").await
            == "Not sent: Cannot reach the chat server. Check your connection and try again."
    })
    .await;
    assert_eq!(
        js(alice, "return R.getElementById('send-body').value;").await,
        json!("try again"),
        "the text is back in the composer"
    );
    assert_eq!(message_texts(alice).await.len(), before);
    click(alice, "retry", "#send-retry").await;
    eventually("the retried message", || async {
        message_texts(alice).await.last().map(String::as_str) == Some("try again")
    })
    .await;
    let keys = js(alice, "return window.__keys;").await;
    let keys = keys.as_array().expect("the keys sent");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "the retry reuses the key");
    assert_eq!(
        js(alice, "return R.getElementById('send-body').value;").await,
        json!("")
    );
    assert!(!visible(alice, "#send-problem").await);
    eventually("one copy on bob's screen", || async {
        message_texts(bob).await.last().map(String::as_str) == Some("try again")
    })
    .await;
    let copies = message_texts(bob)
        .await
        .iter()
        .filter(|body| *body == "try again")
        .count();
    assert_eq!(copies, 1);
}

/// With the socket down a banner says so and offers "Retry now", which reconnects.
async fn connection_banner(client: &Client) {
    assert!(!visible(client, "#banner").await, "no banner while live");
    client.execute("window.__socket = null;", vec![]).await.unwrap();
    // Sockets made from here on go nowhere until allowed again; the open one is closed.
    client
        .execute(
            "window.__block = true; const Real = window.WebSocket; \
             window.WebSocket = class extends Real { \
               constructor(url, protocols) { super(window.__block ? 'ws://127.0.0.1:9/' : url, protocols); \
                 window.__socket = this; } }; window.__block = false;",
            vec![],
        )
        .await
        .unwrap();
    // Logging in again (without a reload, which would drop the wrapper) makes the page open
    // its socket through it.
    click(client, "log out", "#logout-button").await;
    log_in_with_enter(client, "bob").await;
    eventually("a socket made by the page", || async {
        client.execute("return !!window.__socket;", vec![]).await.unwrap() == json!(true)
    })
    .await;
    client
        .execute("window.__block = true; window.__socket.close();", vec![])
        .await
        .unwrap();
    eventually("the banner", || visible(client, "#banner")).await;
    assert!(text(client, "#banner-text").await.starts_with("Not connected"));
    assert!(visible(client, "#retry-now").await);
    client.execute("window.__block = false;", vec![]).await.unwrap();
    click(client, "retry now", "#retry-now").await;
    wait_live(client).await;
    assert!(!visible(client, "#banner").await);
}

/// Drafts stay with their conversation; then alice logs out and bob logs in in the same tab
/// (with Enter): nothing of alice's is left.
async fn logout_leaves_nothing_behind(client: &Client) {
    // A draft stays with its conversation while another is open.
    set_draft(client, "a draft of alice's").await;
    start_conversation(client, "ca", "carol").await;
    assert_eq!(
        js(client, "return R.getElementById('send-body').value;").await,
        json!("")
    );
    open_conversation(client, "bob").await;
    assert_eq!(
        js(client, "return R.getElementById('send-body').value;").await,
        json!("a draft of alice's")
    );
    type_into(client, "#user-search", "ca").await;
    click(client, "log out", "#logout-button").await;
    eventually("the login form after logging out", || {
        visible(client, "#auth-form")
    })
    .await;
    assert_eq!(title(client).await, "chatcore");
    assert_eq!(url_fragment(client).await, "");
    let leftovers = js(
        client,
        "return ['message-list', 'inbox-list', 'directory-list', 'me', 'partner', 'announcer'] \
           .map(id => [id, R.getElementById(id).textContent.trim()]) \
           .concat([['send-body', R.getElementById('send-body').value], \
                    ['user-search', R.getElementById('user-search').value]]) \
           .filter(([id, value]) => value && value !== 'No conversation open');",
    )
    .await;
    assert_eq!(leftovers, json!([]), "nothing of alice's is left on the page");
    log_in_with_enter(client, "bob").await;
    eventually("bob's own inbox", || async {
        let peers: Vec<String> = inbox(client).await.into_iter().map(|(peer, _, _)| peer).collect();
        peers == ["alice", "carol"]
    })
    .await;
    assert!(!visible(client, "#messages").await, "no conversation open");
    assert_eq!(message_texts(client).await, Vec::<String>::new());
    assert_eq!(
        js(client, "return R.getElementById('send-body').value;").await,
        json!("")
    );
    let text = js(client, "return R.textContent;").await;
    assert!(
        !text.as_str().unwrap_or_default().contains("a draft of alice's"),
        "alice's draft is gone"
    );
}
