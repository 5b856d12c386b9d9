//! End-to-end test of the web UI in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `scripts/test` installs when missing), driven over WebDriver.
//!
//! Two users in two separate browsers sign up through the page, a third writes over HTTP.
//! The inbox: bob's badge and the "(n) chatcore" title appear live for a message that arrives
//! while he is in another conversation, survive a reload (which keeps him logged in, from the
//! session cookie), and clear when he opens it; alice then sees "Seen" under her message.
//! Then the conversation itself: a message arrives live, a body of HTML shows as text and runs
//! nothing, bodies are isolated, one date line per day, after 20 messages a reload shows the
//! latest 15 and "Load older" brings the rest. Screenshots (desktop and phone-sized) are saved
//! under `target/artifacts/` (or `$CHAT_ARTIFACTS_DIR`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::ServerProcess;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const XSS: &str = "<img src=x onerror=alert(1)>";

/// chromedriver and the Chromium processes it starts, in a process group of their own, so
/// that a failing test (which never closes its sessions) leaves no browser running.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(group) = self.child.id() {
            // Chromium's processes outlive chromedriver when it alone is killed.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn start_chromedriver() -> Driver {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "Chromium is not installed ({CHROMIUM} and {CHROMEDRIVER}, Debian's chromium and chromium-driver): \
         run scripts/test, which installs it"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start listening");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1000,800",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("open a Chromium session")
}

/// Polls `check` until it returns true or 15 s pass.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn visible(client: &Client, css: &str) -> bool {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

/// The bodies of the messages shown in the open conversation, oldest first.
async fn message_texts(client: &Client) -> Vec<String> {
    let value = client
        .execute(
            "return [...document.querySelectorAll('#message-list li.msg .body')].map(b => b.textContent);",
            vec![],
        )
        .await
        .unwrap_or_default();
    serde_json::from_value(value).unwrap_or_default()
}

/// The inbox as shown: `(peer, badge text or "", preview)`, top first.
async fn inbox(client: &Client) -> Vec<(String, String, String)> {
    let value = client
        .execute(
            "return [...document.querySelectorAll('#inbox-list li')].map(li => [\
                 li.dataset.peer, \
                 (li.querySelector('.badge') || {textContent: ''}).textContent, \
                 li.querySelector('.preview').textContent]);",
            vec![],
        )
        .await
        .unwrap_or_default();
    serde_json::from_value(value).unwrap_or_default()
}

fn row(peer: &str, badge: &str, preview: &str) -> (String, String, String) {
    (peer.to_owned(), badge.to_owned(), preview.to_owned())
}

/// The badge of `peer` in the inbox: `None` when the conversation is not listed, `Some("")`
/// when it is listed without a badge.
async fn badge(client: &Client, peer: &str) -> Option<String> {
    inbox(client)
        .await
        .into_iter()
        .find(|(p, _, _)| p == peer)
        .map(|(_, badge, _)| badge)
}

async fn title(client: &Client) -> String {
    client.title().await.unwrap_or_default()
}

/// The body of the message "Seen" is under, if any.
async fn seen_under(client: &Client) -> Option<String> {
    let value = client
        .execute(
            "const seen = document.querySelectorAll('#message-list .seen'); \
             if (seen.length !== 1) return seen.length ? 'several' : null; \
             return seen[0].closest('li.msg.mine').querySelector('.body').textContent;",
            vec![],
        )
        .await
        .unwrap_or_default();
    value.as_str().map(str::to_owned)
}

async fn text(client: &Client, id: &str) -> String {
    match client.find(Locator::Id(id)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn sign_up(client: &Client, base: &str, username: &str) {
    client.goto(base).await.unwrap();
    eventually("the login form", || visible(client, "#auth-form")).await;
    client
        .find(Locator::Id("auth-username"))
        .await
        .unwrap()
        .send_keys(username)
        .await
        .unwrap();
    client
        .find(Locator::Id("auth-password"))
        .await
        .unwrap()
        .send_keys("correct horse battery")
        .await
        .unwrap();
    client
        .find(Locator::Id("register-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the app after sign-up", || visible(client, "#app")).await;
    assert_eq!(text(client, "me").await, username);
    wait_live(client).await;
}

async fn wait_live(client: &Client) {
    eventually("the live connection", || async {
        text(client, "connection").await == "live"
    })
    .await;
}

/// Clicks the element `css` selects, again if the page redrew it between finding and
/// clicking (the inbox redraws on every event).
async fn click(client: &Client, what: &str, css: &str) {
    eventually(what, || async {
        match client.find(Locator::Css(css)).await {
            Ok(element) => element.click().await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
}

/// Opens the conversation with `partner` from the inbox.
async fn open_conversation(client: &Client, partner: &str) {
    let css = format!("#inbox-list li[data-peer='{partner}'] button");
    click(client, "the conversation in the inbox", &css).await;
    eventually("the send box", || visible(client, "#send-body")).await;
    eventually("the partner's name on top", || async {
        text(client, "partner").await == partner
    })
    .await;
}

/// Starts a conversation with someone from the directory search.
async fn start_conversation(client: &Client, prefix: &str, partner: &str) {
    let search = client.find(Locator::Id("user-search")).await.unwrap();
    search.send_keys(prefix).await.unwrap();
    let css = format!("#directory-list li[data-username='{partner}'] button");
    click(client, "the person in the directory", &css).await;
    eventually("the send box", || visible(client, "#send-body")).await;
    assert!(
        visible(client, "#inbox-pane").await,
        "the inbox is back once a conversation is chosen"
    );
}

async fn send(client: &Client, body: &str) {
    let before = message_texts(client).await.len();
    let input = client.find(Locator::Id("send-body")).await.unwrap();
    input.send_keys(&format!("{body}\u{E007}")).await.unwrap(); // U+E007 is WebDriver's Enter
    eventually("the sent message on the sender's screen", || async {
        message_texts(client).await.len() > before
    })
    .await;
}

/// Reloads the page and waits for the app: no login form, the session cookie is enough.
async fn reload_logged_in(client: &Client, username: &str) {
    client.refresh().await.unwrap();
    eventually("the app after a reload, without logging in again", || async {
        visible(client, "#app").await && text(client, "me").await == username
    })
    .await;
    assert!(
        !visible(client, "#auth-form").await,
        "a reload with a valid session cookie does not ask to log in"
    );
    wait_live(client).await;
}

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

fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("CHAT_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts"));
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_live_in_real_browsers() {
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(work.path(), &["--database", "sqlite://chat.db"]).await;
    let driver = start_chromedriver().await;
    let alice = browser(&driver, &work.path().join("profile-alice")).await;
    let bob = browser(&driver, &work.path().join("profile-bob")).await;
    let dir = artifacts_dir();

    sign_up(&alice, &server.base, "alice").await;
    sign_up(&bob, &server.base, "bob").await;
    assert_eq!(title(&bob).await, "chatcore");

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

    // Opening it (the window has focus, the latest message is in view) marks it read.
    open_conversation(&bob, "carol").await;
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
    std::fs::write(dir.join("browser-bob-badge.png"), bob.screenshot().await.unwrap()).unwrap();

    // A reload keeps bob logged in (the cookie, checked with the server) and keeps the counts.
    reload_logged_in(&bob, "bob").await;
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
    open_conversation(&alice, "bob").await;
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
    open_conversation(&bob, "alice").await;

    // HTML in a body is shown as text and runs nothing.
    send(&alice, XSS).await;
    eventually("the HTML body on bob's screen as text, live", || async {
        message_texts(&bob).await.last().map(String::as_str) == Some(XSS)
    })
    .await;
    for client in [&alice, &bob] {
        assert!(
            client
                .find_all(Locator::Css("#message-list img"))
                .await
                .unwrap()
                .is_empty(),
            "no element was created from the body"
        );
        assert!(client.get_alert_text().await.is_err(), "no alert ran");
        // Every body is isolated, so a bidirectional override in it cannot reorder the page.
        let isolation = client
            .execute(
                "const b = document.querySelector('#message-list li .body'); \
                 return [b.dir, getComputedStyle(b).unicodeBidi];",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(isolation, serde_json::json!(["auto", "isolate"]));
    }

    // Own messages sit on the right, the other's on the left.
    let mine = alice
        .find_all(Locator::Css("#message-list li.msg.mine"))
        .await
        .unwrap();
    assert_eq!(mine.len(), 2);
    assert!(
        bob.find_all(Locator::Css("#message-list li.mine"))
            .await
            .unwrap()
            .is_empty()
    );

    for i in 3..=20 {
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
    open_conversation(&bob, "alice").await;
    eventually("the latest 15 after reload", || async {
        message_texts(&bob).await.len() == 15
    })
    .await;
    let latest = message_texts(&bob).await;
    assert_eq!(latest.first().map(String::as_str), Some("message 6"));
    assert_eq!(latest.last().map(String::as_str), Some("message 20"));
    eventually("the load older button", || visible(&bob, "#load-older")).await;
    bob.find(Locator::Id("load-older"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("all 20 after load older", || async {
        message_texts(&bob).await.len() == 20
    })
    .await;
    let all = message_texts(&bob).await;
    assert_eq!(all[0], "hello bob");
    assert_eq!(all[1], XSS);
    assert!(!visible(&bob, "#load-older").await, "nothing older remains");
    // Messages of one day share one date line, above the first of them.
    let days: serde_json::Value = bob
        .execute(
            "const list = document.getElementById('message-list'); \
             return [[...list.querySelectorAll('li.day')].map(d => d.textContent), \
                     list.firstElementChild.className];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(days, json!([["Today"], "day"]));

    std::fs::write(dir.join("browser-bob.png"), bob.screenshot().await.unwrap()).unwrap();
    std::fs::write(dir.join("browser-alice.png"), alice.screenshot().await.unwrap()).unwrap();

    // A phone-width screen shows one pane at a time.
    bob.set_window_size(390, 800).await.unwrap();
    assert!(
        !visible(&bob, "#sidebar").await,
        "the conversation takes the whole phone screen"
    );
    std::fs::write(
        dir.join("browser-bob-phone-conversation.png"),
        bob.screenshot().await.unwrap(),
    )
    .unwrap();
    bob.find(Locator::Id("back-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the inbox on a phone", || visible(&bob, "#inbox-list")).await;
    assert!(!visible(&bob, "#conversation").await);
    std::fs::write(dir.join("browser-bob-phone.png"), bob.screenshot().await.unwrap()).unwrap();

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    let status = server.terminate().await;
    assert!(status.success(), "server exits cleanly on SIGTERM: {status:?}");
}
