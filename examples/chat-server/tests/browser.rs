//! End-to-end test of the web UI in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `scripts/test` installs when missing), driven over WebDriver.
//!
//! Two users in two separate browsers sign up through the page; alice opens bob and sends;
//! bob sees it appear without reloading; a body of HTML shows as text and runs nothing; after
//! 20 messages a reload shows the latest 15 and "Load older" brings the rest. Screenshots are
//! saved under `target/artifacts/` (or `$CHAT_ARTIFACTS_DIR`).

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

struct Driver {
    _child: Child,
    url: String,
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
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start listening");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver {
        _child: child,
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

async fn message_texts(client: &Client) -> Vec<String> {
    let items = client
        .find_all(Locator::Css("#message-list li"))
        .await
        .unwrap_or_default();
    let mut texts = Vec::new();
    for item in items {
        // The body is the item's first child (an isolated span); the <time> child follows it.
        let text: String = client
            .execute(
                "return arguments[0].firstChild.textContent;",
                vec![serde_json::to_value(&item).unwrap()],
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        texts.push(text);
    }
    texts
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
    let me = client
        .find(Locator::Id("me"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(me, username);
}

async fn open_conversation(client: &Client, partner: &str) {
    let css = format!("#user-list li[data-username='{partner}']");
    eventually("the partner in the user list", || visible(client, &css)).await;
    client
        .find(Locator::Css(&css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the send box", || visible(client, "#send-body")).await;
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

    sign_up(&alice, &server.base, "alice").await;
    sign_up(&bob, &server.base, "bob").await;

    // bob has alice's conversation open before she writes: the message must arrive live.
    open_conversation(&bob, "alice").await;
    eventually("bob's live connection", || async {
        bob.find(Locator::Id("connection"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            == "live"
    })
    .await;
    // alice signed up before bob existed: her list fills when she searches.
    let search = alice.find(Locator::Id("user-search")).await.unwrap();
    search.send_keys("bo").await.unwrap();
    open_conversation(&alice, "bob").await;

    send(&alice, "hello bob").await;
    eventually("the message on bob's screen without reload", || async {
        message_texts(&bob).await == ["hello bob"]
    })
    .await;

    // HTML in a body is shown as text and runs nothing.
    send(&alice, XSS).await;
    eventually("the HTML body on bob's screen as text", || async {
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
        .find_all(Locator::Css("#message-list li.mine"))
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

    bob.refresh().await.unwrap();
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

    let dir = artifacts_dir();
    std::fs::write(dir.join("browser-bob.png"), bob.screenshot().await.unwrap()).unwrap();
    std::fs::write(dir.join("browser-alice.png"), alice.screenshot().await.unwrap()).unwrap();

    // A phone-width screen shows one pane at a time.
    bob.set_window_size(390, 800).await.unwrap();
    assert!(
        !visible(&bob, "#sidebar").await,
        "the conversation takes the whole phone screen"
    );
    bob.find(Locator::Id("back-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the people list on a phone", || visible(&bob, "#user-list")).await;
    std::fs::write(dir.join("browser-bob-phone.png"), bob.screenshot().await.unwrap()).unwrap();

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    let status = server.terminate().await;
    assert!(status.success(), "server exits cleanly on SIGTERM: {status:?}");
}
