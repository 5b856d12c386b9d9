//! The example host site in headless Chromium: two of the site's users log in with the
//! site's own form, and the `<chatcore-app>` element the site nests under `/chat` shows their
//! chat without a second login (the site set the chat cookie), finds the API under `/chat`
//! from its module's address, carries a message live, wears the site's theme (custom
//! properties) within WCAG AA contrast, keeps the open conversation over a reload, and the
//! site's logout ends the chat session too. Then SIGTERM: the site shuts down gracefully and
//! closes its store. Screenshots (desktop and phone) under `target/browser-artifacts/`.

#[path = "../../chat-server/tests/support/browser.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The running `host-app`; killed when dropped.
struct Site {
    child: Child,
    base: String,
}

impl Site {
    async fn start(dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_host-app"))
            .current_dir(dir)
            .args(["--listen", "127.0.0.1:0", "--database", "chat.sqlite3"])
            .args(["--user", "alice:alice-password", "--user", "bob:bob-password"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("start host-app");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("host-app printed its address in time")
            .expect("read host-app's output")
            .expect("host-app exited before listening");
        let base = line
            .strip_prefix("host-app listening on ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .to_owned();
        Self { child, base }
    }
}

/// Logs in with the site's own form (not the chat's), Enter in the password field.
async fn site_login(client: &Client, base: &str, name: &str) {
    client.goto(base).await.unwrap();
    let form = client.find(Locator::Css("main.login form")).await.unwrap();
    form.find(Locator::Css("input[name=username]"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    form.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(&format!("{name}-password{ENTER}"))
        .await
        .unwrap();
    // The site's page, with the chat in it, logged in from the cookie the site set.
    wait_app(client, name).await;
    assert!(
        !visible(client, "#auth-form").await,
        "no second login: the chat's own form is not shown"
    );
    assert!(
        !visible(client, "#logout-button").await,
        "logging out is the site's"
    );
    assert_eq!(
        client
            .execute("return document.activeElement === document.body;", vec![])
            .await
            .unwrap(),
        json!(true),
        "an element that loads with a session leaves the page's focus alone"
    );
}

/// What `fetch(path)` answers in the page: the status.
async fn status_in_page(client: &Client, path: &str) -> serde_json::Value {
    client
        .execute(
            "return fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.status);",
            vec![json!(path)],
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_inside_a_host_site() {
    let work = tempfile::tempdir().unwrap();
    let site = Site::start(work.path()).await;
    let driver = start_chromedriver().await;
    let alice = browser(&driver, &work.path().join("profile-alice")).await;
    let bob = browser(&driver, &work.path().join("profile-bob")).await;

    site_login(&alice, &site.base, "alice").await;
    site_login(&bob, &site.base, "bob").await;
    // The chat lives under /chat only: the element found it from its module's address.
    assert_eq!(
        status_in_page(&alice, "/chat/api/v1/auth/session").await,
        json!(200)
    );
    assert_eq!(status_in_page(&alice, "/api/v1/auth/session").await, json!(404));

    start_conversation(&alice, "bo", "bob").await;
    send(&alice, "hello from the site").await;
    eventually("the message in bob's inbox, live", || async {
        inbox(&bob).await == [row("alice", "1", "hello from the site")]
    })
    .await;
    open_conversation(&bob, "alice").await;
    eventually("the message in bob's conversation", || async {
        message_texts(&bob).await == ["hello from the site"]
    })
    .await;
    send(&bob, "hi alice").await;
    eventually("bob's answer on alice's screen", || async {
        message_texts(&alice).await == ["hello from the site", "hi alice"]
    })
    .await;

    // The site's theme reaches into the element through its custom properties.
    let accent = js(
        &bob,
        "return getComputedStyle(R.getElementById('send-button')).backgroundColor;",
    )
    .await;
    assert_eq!(accent, json!("rgb(11, 110, 79)"));
    let contrast = low_contrast(&bob).await;
    assert!(contrast.is_empty(), "text under WCAG AA contrast: {contrast:?}");

    // A reload of the site's page keeps the open conversation.
    reload_logged_in(&bob, "bob").await;
    wait_conversation(&bob, "alice").await;
    screenshot(&bob, "host-desktop-bob.png").await;
    bob.set_window_size(390, 800).await.unwrap();
    assert!(!visible(&bob, "#sidebar").await, "one pane at a time on a phone");
    screenshot(&bob, "host-phone-conversation.png").await;
    bob.back().await.unwrap();
    eventually("the list after Back", || visible(&bob, "#inbox-list")).await;
    screenshot(&bob, "host-phone-inbox.png").await;

    // The site's logout ends the chat session as well.
    alice
        .find(Locator::Id("site-logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the site's login form", || async {
        alice.find(Locator::Css("main.login form")).await.is_ok()
    })
    .await;
    assert_eq!(
        status_in_page(&alice, "/chat/api/v1/auth/session").await,
        json!(401)
    );

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    let pid = site.child.id().expect("host-app runs");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = site.child;
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("host-app stops after SIGTERM")
        .unwrap();
    assert!(exit.success(), "host-app shuts down cleanly: {exit:?}");
}
