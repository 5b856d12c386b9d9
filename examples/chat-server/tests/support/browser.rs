//! Driving `<chatcore-app>` in headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which `scripts/test` installs when missing) over WebDriver. Shared by chat-server's
//! browser test and host-app's (`#[path]`), so both drive the element the same way.
//!
//! The element keeps its page in an open shadow root: elements are found in it with CSS
//! selectors (WebDriver's shadow-root commands), and scripts reach it as `R`.

#![allow(dead_code)] // each test uses a different part

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver and the Chromium processes it starts, in a process group of their own, so
/// that a failing test (which never closes its sessions) leaves no browser running.
pub struct Driver {
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

pub async fn start_chromedriver() -> Driver {
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

pub async fn browser(driver: &Driver, profile: &Path) -> Client {
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
pub async fn eventually<F, Fut>(what: &str, mut check: F)
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

/// Where screenshots go: `target/browser-artifacts/` (or `$CHAT_ARTIFACTS_DIR`).
pub fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("CHAT_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/browser-artifacts"));
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

pub async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(artifacts_dir().join(name), png).expect("save the screenshot");
}

/// Runs `script` with `R` bound to the element's shadow root (null without the element).
pub async fn js(client: &Client, script: &str) -> Value {
    let wrapped = format!(
        "const host = document.querySelector('chatcore-app'); \
         const R = host ? host.shadowRoot : null; {script}"
    );
    client.execute(&wrapped, vec![]).await.unwrap_or(Value::Null)
}

/// The element matching `css` inside `<chatcore-app>`.
pub async fn find(client: &Client, css: &str) -> Option<Element> {
    let host = client.find(Locator::Css("chatcore-app")).await.ok()?;
    let root = host.shadow_root().await.ok()?;
    root.find(Locator::Css(css)).await.ok()
}

pub async fn visible(client: &Client, css: &str) -> bool {
    match find(client, css).await {
        Some(element) => element.is_displayed().await.unwrap_or(false),
        None => false,
    }
}

pub async fn text(client: &Client, css: &str) -> String {
    match find(client, css).await {
        Some(element) => element.text().await.unwrap_or_default(),
        None => String::new(),
    }
}

/// The id of the focused element inside the element (`""` when focus is elsewhere).
pub async fn focused(client: &Client) -> String {
    js(client, "return R && R.activeElement ? R.activeElement.id : '';")
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Clicks the element `css` selects, again if the page redrew it between finding and
/// clicking (the inbox redraws on every event).
pub async fn click(client: &Client, what: &str, css: &str) {
    eventually(what, || async {
        match find(client, css).await {
            Some(element) => element.click().await.is_ok(),
            None => false,
        }
    })
    .await;
}

pub async fn type_into(client: &Client, css: &str, keys: &str) {
    find(client, css)
        .await
        .unwrap_or_else(|| panic!("no {css}"))
        .send_keys(keys)
        .await
        .unwrap();
}

/// WebDriver's keys.
pub const ENTER: &str = "\u{E007}";
pub const ARROW_DOWN: &str = "\u{E015}";
pub const TAB: &str = "\u{E004}";
pub const ARROW_UP: &str = "\u{E013}";
pub const ESCAPE: &str = "\u{E00C}";
pub const BACKSPACE: &str = "\u{E003}";

/// Sends `keys` to whatever has the focus.
pub async fn press(client: &Client, keys: &str) {
    use fantoccini::actions::InputSource;
    let mut actions = fantoccini::actions::KeyActions::new("keyboard".into());
    for key in keys.chars() {
        actions = actions
            .then(fantoccini::actions::KeyAction::Down { value: key })
            .then(fantoccini::actions::KeyAction::Up { value: key });
    }
    client.perform_actions(actions).await.unwrap();
}

/// The bodies of the messages shown in the open conversation, oldest first.
pub async fn message_texts(client: &Client) -> Vec<String> {
    let value = js(
        client,
        "return [...R.querySelectorAll('#message-list li.msg .body')].map(b => b.textContent);",
    )
    .await;
    serde_json::from_value(value).unwrap_or_default()
}

/// The inbox as shown: `(peer, badge text or "", preview)`, top first.
pub async fn inbox(client: &Client) -> Vec<(String, String, String)> {
    let value = js(
        client,
        "return [...R.querySelectorAll('#inbox-list li')].map(li => [\
             li.dataset.peer, \
             (li.querySelector('.badge') || {textContent: ''}).textContent, \
             li.querySelector('.preview').textContent]);",
    )
    .await;
    serde_json::from_value(value).unwrap_or_default()
}

pub fn row(peer: &str, badge: &str, preview: &str) -> (String, String, String) {
    (peer.to_owned(), badge.to_owned(), preview.to_owned())
}

/// The badge of `peer` in the inbox: `None` when the conversation is not listed, `Some("")`
/// when it is listed without a badge.
pub async fn badge(client: &Client, peer: &str) -> Option<String> {
    inbox(client)
        .await
        .into_iter()
        .find(|(p, _, _)| p == peer)
        .map(|(_, badge, _)| badge)
}

pub async fn title(client: &Client) -> String {
    client.title().await.unwrap_or_default()
}

/// The body of the message "Seen" is under, if any.
pub async fn seen_under(client: &Client) -> Option<String> {
    let value = js(
        client,
        "const seen = R.querySelectorAll('#message-list .seen'); \
         if (seen.length !== 1) return seen.length ? 'several' : null; \
         return seen[0].closest('li.msg.mine').querySelector('.body').textContent;",
    )
    .await;
    value.as_str().map(str::to_owned)
}

pub async fn wait_live(client: &Client) {
    eventually("the live connection", || async {
        text(client, "#connection").await == "live"
    })
    .await;
}

/// Waits for the chat of `username`, connected.
pub async fn wait_app(client: &Client, username: &str) {
    eventually("the chat", || async {
        visible(client, "#app").await && text(client, "#me").await == username
    })
    .await;
    wait_live(client).await;
}

/// Opens the conversation with `partner` from the inbox.
pub async fn open_conversation(client: &Client, partner: &str) {
    let css = format!("#inbox-list li[data-peer='{partner}'] button");
    click(client, "the conversation in the inbox", &css).await;
    wait_conversation(client, partner).await;
}

pub async fn wait_conversation(client: &Client, partner: &str) {
    eventually("the send box", || visible(client, "#send-body")).await;
    eventually("the partner's name on top", || async {
        text(client, "#partner").await == partner
    })
    .await;
}

/// Starts a conversation with someone from the directory search.
pub async fn start_conversation(client: &Client, prefix: &str, partner: &str) {
    type_into(client, "#user-search", prefix).await;
    let css = format!("#directory-list li[data-username='{partner}'] button");
    click(client, "the person in the directory", &css).await;
    wait_conversation(client, partner).await;
    assert!(
        visible(client, "#inbox-pane").await,
        "the inbox is back once a conversation is chosen"
    );
}

pub async fn send(client: &Client, body: &str) {
    let before = message_texts(client).await.len();
    type_into(client, "#send-body", &format!("{body}{ENTER}")).await;
    eventually("the sent message on the sender's screen", || async {
        message_texts(client).await.len() > before
    })
    .await;
}

/// Reloads the page and waits for the chat: no login form, the session cookie is enough.
pub async fn reload_logged_in(client: &Client, username: &str) {
    client.refresh().await.unwrap();
    eventually("the chat after a reload, without logging in again", || async {
        visible(client, "#app").await && text(client, "#me").await == username
    })
    .await;
    assert!(
        !visible(client, "#auth-form").await,
        "a reload with a valid session cookie does not ask to log in"
    );
    wait_live(client).await;
}

/// Signs up through the page's form and waits for the chat, focus on the search.
pub async fn sign_up(client: &Client, base: &str, username: &str) {
    client.goto(base).await.unwrap();
    eventually("the login form", || visible(client, "#auth-form")).await;
    assert_eq!(
        focused(client).await,
        "auth-username",
        "the login form opens with the focus on the name"
    );
    type_into(client, "#auth-username", username).await;
    type_into(client, "#auth-password", "correct horse battery").await;
    click(client, "the sign-up button", "#register-button").await;
    wait_app(client, username).await;
    assert_eq!(
        focused(client).await,
        "user-search",
        "after logging in the focus is on the search for people"
    );
}

/// Logs in through the form with the keyboard only: Enter in the password field logs in.
pub async fn log_in_with_enter(client: &Client, username: &str) {
    eventually("the login form", || visible(client, "#auth-form")).await;
    type_into(client, "#auth-username", username).await;
    type_into(client, "#auth-password", &format!("correct horse battery{ENTER}")).await;
    wait_app(client, username).await;
}

/// Every text in the element whose contrast with what is behind it is under WCAG AA (4.5:1,
/// 3:1 for large text): `[text, ratio]` pairs. Backgrounds are found by walking up to the
/// first opaque one (through the shadow root to its host).
pub async fn low_contrast(client: &Client) -> Vec<(String, f64)> {
    let value = js(
        client,
        r#"
        const parse = (c) => { const m = c.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
        const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
          return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
        const background = (el) => {
          for (let e = el; e; e = e.parentElement || (e.getRootNode() && e.getRootNode().host)) {
            const c = parse(getComputedStyle(e).backgroundColor);
            if (c[3] > 0.99) return c;
          }
          return [255, 255, 255, 1];
        };
        const bad = [];
        for (const el of R.querySelectorAll('*')) {
          if (!el.getClientRects().length || el.closest('.visually-hidden')) continue;
          const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
          if (!own) continue;
          const style = getComputedStyle(el);
          const fg = parse(style.color), bg = background(el);
          const a = lum(fg), b = lum(bg);
          const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
          const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
          const large = size >= 24 || (bold && size >= 18.66);
          if (ratio < (large ? 3 : 4.5)) bad.push([el.textContent.trim().slice(0, 40), Math.round(ratio * 100) / 100]);
        }
        return bad;"#,
    )
    .await;
    serde_json::from_value(value).unwrap_or_default()
}
