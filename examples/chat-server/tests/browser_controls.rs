//! End-to-end test of what people control in `<chatcore-app>` (issues 19 and 20), in two
//! headless Chromium browsers driven over WebDriver (helpers in `support/browser.rs`).
//!
//! Edits and deletions: the Up key in an empty composer edits alice's last message (Escape
//! cancels, Enter saves), a refused edit keeps its text and says why, the menu of her own
//! message is reached and worked with the keyboard, and bob sees the edit ("edited") and the
//! deletion ("Message deleted", in the conversation and as the inbox preview) live. Typing:
//! bob sees "typing…" while alice types, and it ends when she sends or clears the box, well
//! before it would expire. Presence: bob sees alice's dot and "online", then "last seen just
//! now" once her page is gone (the server runs with a short presence grace), then online again.
//! Blocking: bob blocks alice from the conversation's header (confirmed), his composer closes
//! with an explanation, alice's next send is refused with its text kept; bob unblocks her from
//! the settings panel. Leaving: alice deletes her account there (password and confirmation)
//! and is back at an empty login screen while bob sees her messages deleted.
//! Screenshots go to `target/browser-artifacts/` (or `$CHAT_ARTIFACTS_DIR`).

mod common;
#[path = "support/browser.rs"]
mod support;

use std::time::{Duration, Instant};

use common::ServerProcess;
use fantoccini::Client;
use serde_json::json;
use support::*;

/// The server's typing expiry (`--typing-expiry-ms`, default): an indication that ends
/// sooner was ended by the typist.
const TYPING_EXPIRY: Duration = Duration::from_secs(6);

/// The line under the peer's name ("online", "last seen …", "typing…"); `""` when hidden.
async fn partner_status(client: &Client) -> String {
    let value = js(
        client,
        "const s = R.getElementById('partner-status'); return s.hidden ? '' : s.textContent;",
    )
    .await;
    value.as_str().unwrap_or_default().to_owned()
}

/// Whether `peer`'s inbox entry shows the online dot, with its words for screen readers.
async fn online_dot(client: &Client, peer: &str) -> bool {
    let script = format!(
        "const li = R.querySelector('#inbox-list li[data-peer=\"' + {} + '\"]'); \
         if (!li || !li.querySelector('.dot')) return false; \
         const words = li.querySelector('.visually-hidden'); \
         return !!words && words.textContent.includes('online') \
           && li.querySelector('.dot').getAttribute('aria-hidden') === 'true';",
        json!(peer)
    );
    js(client, &script).await == json!(true)
}

async fn composer_value(client: &Client) -> String {
    let value = js(client, "return R.getElementById('send-body').value;").await;
    value.as_str().unwrap_or_default().to_owned()
}

/// The bodies of the messages marked "edited", oldest first.
async fn edited(client: &Client) -> Vec<String> {
    let value = js(
        client,
        "return [...R.querySelectorAll('#message-list li.msg')] \
           .filter(li => li.querySelector('.edited')) \
           .map(li => li.querySelector('.body').textContent);",
    )
    .await;
    serde_json::from_value(value).unwrap_or_default()
}

/// The class list of the focused element inside the element.
async fn focused_class(client: &Client) -> String {
    let value = js(
        client,
        "return R && R.activeElement ? R.activeElement.className : '';",
    )
    .await;
    value.as_str().unwrap_or_default().to_owned()
}

/// Shift+Tab, to whatever has the focus.
async fn shift_tab(client: &Client) {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    const SHIFT: char = '\u{E008}';
    let tab = TAB.chars().next().unwrap();
    let actions = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: SHIFT })
        .then(KeyAction::Down { value: tab })
        .then(KeyAction::Up { value: tab })
        .then(KeyAction::Up { value: SHIFT });
    client.perform_actions(actions).await.unwrap();
}

async fn assert_contrast(client: &Client, when: &str) {
    let contrast = low_contrast(client).await;
    assert!(
        contrast.is_empty(),
        "text under WCAG AA contrast ({when}): {contrast:?}"
    );
}

/// Two browsers, alice and bob, signed up, with a conversation open on both sides.
async fn two_in_a_conversation(
    server: &ServerProcess,
    driver: &Driver,
    dir: &std::path::Path,
) -> (Client, Client) {
    let alice = browser(driver, &dir.join("profile-alice")).await;
    let bob = browser(driver, &dir.join("profile-bob")).await;
    sign_up(&alice, &server.base, "alice").await;
    sign_up(&bob, &server.base, "bob").await;
    start_conversation(&alice, "bo", "bob").await;
    send(&alice, "hello bob").await;
    open_conversation(&bob, "alice").await;
    eventually("alice's message on bob's screen", || async {
        message_texts(&bob).await == ["hello bob"]
    })
    .await;
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletions_typing_and_presence_in_real_browsers() {
    let work = tempfile::tempdir().unwrap();
    // A closed page shows offline after 300 ms rather than the default 5 s; rounds every 100 ms.
    let server = ServerProcess::start(
        work.path(),
        &[
            "--database",
            "sqlite://chat.db",
            "--presence-grace-ms",
            "300",
            "--presence-interval-ms",
            "100",
        ],
    )
    .await;
    let driver = start_chromedriver().await;
    let (alice, bob) = two_in_a_conversation(&server, &driver, work.path()).await;

    // Presence: alice is online, as a dot with words in bob's inbox and on top of his
    // conversation.
    eventually("alice's online dot in bob's inbox", || online_dot(&bob, "alice")).await;
    eventually("\"online\" on top of bob's conversation", || async {
        partner_status(&bob).await == "online"
    })
    .await;

    // Typing: shown while alice types, ended by her send (long before it would expire).
    type_into(&alice, "#send-body", "typing here").await;
    eventually("\"typing…\" on bob's screen", || async {
        partner_status(&bob).await == "typing…"
    })
    .await;
    let typing_seen = Instant::now();
    screenshot(&bob, "browser-controls-typing.png").await;
    type_into(&alice, "#send-body", ENTER).await;
    eventually("alice's message on bob's screen", || async {
        message_texts(&bob).await.last().map(String::as_str) == Some("typing here")
    })
    .await;
    eventually("\"typing…\" ended by the send", || async {
        partner_status(&bob).await == "online"
    })
    .await;
    assert!(
        typing_seen.elapsed() < TYPING_EXPIRY - Duration::from_secs(1),
        "the send ended it, not its expiry"
    );
    // And by clearing the box.
    type_into(&alice, "#send-body", "x").await;
    eventually("\"typing…\" again", || async {
        partner_status(&bob).await == "typing…"
    })
    .await;
    let typing_seen = Instant::now();
    type_into(&alice, "#send-body", BACKSPACE).await;
    eventually("\"typing…\" ended by clearing the box", || async {
        partner_status(&bob).await == "online"
    })
    .await;
    assert!(typing_seen.elapsed() < TYPING_EXPIRY - Duration::from_secs(1));

    // Up in the empty composer edits alice's last message; Escape cancels.
    assert_eq!(composer_value(&alice).await, "");
    type_into(&alice, "#send-body", ARROW_UP).await;
    eventually("the editing bar", || visible(&alice, "#editing-bar")).await;
    assert_eq!(composer_value(&alice).await, "typing here");
    assert_eq!(text(&alice, "#send-button").await, "Save");
    assert_eq!(
        js(
            &alice,
            "return R.querySelector('#message-list li.editing .body').textContent;"
        )
        .await,
        json!("typing here"),
        "the message being edited is marked"
    );
    assert_contrast(&alice, "editing").await;
    screenshot(&alice, "browser-controls-alice-editing.png").await;
    type_into(&alice, "#send-body", ESCAPE).await;
    eventually("editing cancelled", || async {
        !visible(&alice, "#editing-bar").await
    })
    .await;
    assert_eq!(composer_value(&alice).await, "", "the empty draft is back");
    assert_eq!(text(&alice, "#send-button").await, "Send");

    // A refused edit keeps its text and says why (the server's answer to an edit past the
    // window, given here by the page's fetch so that no clock is involved).
    js(
        &alice,
        "window.__fetch = window.fetch; \
         window.fetch = (url, init) => init && init.method === 'PATCH' \
           ? Promise.resolve(new Response(JSON.stringify({error: 'this message can no longer be edited'}), \
               {status: 403, headers: {'Content-Type': 'application/json'}})) \
           : window.__fetch(url, init);",
    )
    .await;
    type_into(&alice, "#send-body", ARROW_UP).await;
    eventually("the editing bar", || visible(&alice, "#editing-bar")).await;
    type_into(&alice, "#send-body", &format!(" again{ENTER}")).await;
    eventually("the refusal, in words", || async {
        text(&alice, "#send-error").await == "Not saved: this message can no longer be edited"
    })
    .await;
    assert_eq!(
        composer_value(&alice).await,
        "typing here again",
        "the text is kept"
    );
    assert!(visible(&alice, "#editing-bar").await, "still editing");
    js(&alice, "window.fetch = window.__fetch;").await;

    // Enter saves: alice and bob see the new text, marked "edited", and bob's inbox follows.
    type_into(&alice, "#send-body", ENTER).await;
    eventually("alice's edited message", || async {
        edited(&alice).await == ["typing here again"]
    })
    .await;
    assert!(!visible(&alice, "#editing-bar").await);
    assert!(!visible(&alice, "#send-problem").await);
    assert_eq!(composer_value(&alice).await, "");
    eventually("the edit on bob's screen, live", || async {
        message_texts(&bob).await == ["hello bob", "typing here again"]
            && edited(&bob).await == ["typing here again"]
    })
    .await;
    eventually("bob's inbox preview follows the edit", || async {
        inbox(&bob).await == [row("alice", "", "typing here again")]
    })
    .await;

    // The menu of alice's message, by keyboard: Shift+Tab from the composer reaches its
    // button, Enter opens it on "Edit", Down moves to "Delete", Escape goes back to the button.
    click(&alice, "the composer", "#send-body").await;
    shift_tab(&alice).await;
    eventually("the last message's menu button focused", || async {
        focused_class(&alice).await == "actions"
    })
    .await;
    press(&alice, ENTER).await;
    eventually("the menu, on Edit", || async {
        visible(&alice, "#message-menu").await && focused(&alice).await == "menu-edit"
    })
    .await;
    assert_eq!(
        js(&alice, "return R.activeElement.getAttribute('role');").await,
        json!("menuitem")
    );
    assert_contrast(&alice, "the menu open").await;
    screenshot(&alice, "browser-controls-alice-menu.png").await;
    press(&alice, ARROW_DOWN).await;
    assert_eq!(focused(&alice).await, "menu-delete");
    press(&alice, ESCAPE).await;
    eventually("the menu closed, focus back on its button", || async {
        !visible(&alice, "#message-menu").await && focused_class(&alice).await == "actions"
    })
    .await;
    press(&alice, ENTER).await;
    eventually("the menu again", || async {
        focused(&alice).await == "menu-edit"
    })
    .await;
    press(&alice, ARROW_DOWN).await;
    press(&alice, ENTER).await;
    // Deleting asks first, the safe answer focused.
    eventually("the question", || visible(&alice, "#confirm")).await;
    assert_eq!(focused(&alice).await, "confirm-cancel");
    press(&alice, TAB).await;
    assert_eq!(focused(&alice).await, "confirm-ok");
    press(&alice, ENTER).await;
    eventually("the tombstone on alice's screen", || async {
        message_texts(&alice).await == ["hello bob", "Message deleted"]
    })
    .await;
    assert!(!visible(&alice, "#confirm").await);
    assert_eq!(
        js(
            &alice,
            "return R.querySelectorAll('#message-list li.deleted .actions').length;"
        )
        .await,
        json!(0),
        "a deleted message has no menu"
    );
    eventually("the deletion on bob's screen, live", || async {
        message_texts(&bob).await == ["hello bob", "Message deleted"] && edited(&bob).await.is_empty()
    })
    .await;
    eventually("bob's inbox preview of a deleted last message", || async {
        inbox(&bob).await == [row("alice", "", "Message deleted")]
    })
    .await;
    assert_contrast(&bob, "a tombstone").await;
    screenshot(&bob, "browser-controls-bob.png").await;
    // After a reload the history has the same tombstone.
    reload_logged_in(&bob, "bob").await;
    wait_conversation(&bob, "alice").await;
    eventually("the tombstone in the history and the inbox", || async {
        message_texts(&bob).await == ["hello bob", "Message deleted"]
            && inbox(&bob).await == [row("alice", "", "Message deleted")]
    })
    .await;

    // Presence: alice's page goes away; after the grace bob sees her offline, last seen just
    // now. Then she is back.
    // (A tab of its own replaces the chat's, which is closed: a page navigated away from may
    // live on in the back-forward cache.)
    let blank = alice.new_window(true).await.unwrap();
    alice.close_window().await.unwrap();
    alice.switch_to_window(blank.handle).await.unwrap();
    eventually("alice's dot gone from bob's inbox", || async {
        !online_dot(&bob, "alice").await
    })
    .await;
    eventually("\"last seen just now\" on top of bob's conversation", || async {
        partner_status(&bob).await == "last seen just now"
    })
    .await;
    screenshot(&bob, "browser-controls-last-seen.png").await;
    let texts = js(
        &bob,
        "return import(new URL('ui/chatcore-app.js', location.href)).then((m) => { \
           const now = new Date(2026, 10, 30, 12, 0); \
           return [1, 5, 61, 150, 26 * 60].map((min) => m.lastSeenText(new Date(now - min * 60000), now)); });",
    )
    .await;
    let texts: Vec<String> = serde_json::from_value(texts).unwrap();
    assert_eq!(
        texts[..4],
        ["1 min ago", "5 min ago", "1 hour ago", "2 hours ago"]
    );
    // The clock time is in the browser's locale ("10:00" or "10:00 AM").
    assert!(texts[4].starts_with("yesterday at 10:00"), "{texts:?}");
    alice.goto(&server.base).await.unwrap();
    wait_app(&alice, "alice").await;
    eventually("alice online again for bob", || async {
        online_dot(&bob, "alice").await && partner_status(&bob).await == "online"
    })
    .await;

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    let status = server.terminate().await;
    assert!(status.success(), "server exits cleanly on SIGTERM: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_in_real_browsers() {
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(work.path(), &["--database", "sqlite://chat.db"]).await;
    let driver = start_chromedriver().await;
    let (alice, bob) = two_in_a_conversation(&server, &driver, work.path()).await;

    // bob blocks alice from the conversation's header, after a question.
    eventually("the block button", || visible(&bob, "#block-button")).await;
    assert_eq!(text(&bob, "#block-button").await, "Block");
    click(&bob, "block", "#block-button").await;
    eventually("the question", || visible(&bob, "#confirm")).await;
    assert_eq!(focused(&bob).await, "confirm-cancel");
    assert!(text(&bob, "#confirm-text").await.starts_with("Block alice?"));
    click(&bob, "confirm", "#confirm-ok").await;
    eventually("the blocked state", || visible(&bob, "#blocked-note")).await;
    assert!(
        text(&bob, "#blocked-text")
            .await
            .starts_with("You blocked alice: neither of you can send messages")
    );
    assert_eq!(
        js(
            &bob,
            "return [R.getElementById('send-body').disabled, R.getElementById('send-button').disabled];"
        )
        .await,
        json!([true, true]),
        "the composer is closed"
    );
    assert_eq!(text(&bob, "#block-button").await, "Unblock");
    assert_eq!(focused(&bob).await, "unblock-button");
    assert_contrast(&bob, "blocked").await;
    screenshot(&bob, "browser-controls-bob-blocked.png").await;

    // alice's next send is refused: the reason, and her text kept.
    type_into(&alice, "#send-body", &format!("are you there?{ENTER}")).await;
    eventually("the refusal on alice's screen", || async {
        text(&alice, "#send-error").await == "Not sent: you cannot message this user"
    })
    .await;
    assert_eq!(composer_value(&alice).await, "are you there?");
    assert!(!visible(&alice, "#send-retry").await, "nothing to retry");
    assert_eq!(message_texts(&alice).await, ["hello bob"]);
    screenshot(&alice, "browser-controls-alice-refused.png").await;

    // The settings panel lists whom bob blocks; he unblocks alice there.
    click(&bob, "settings", "#settings-button").await;
    eventually("the settings panel", || visible(&bob, "#settings")).await;
    eventually("alice in the blocked list", || async {
        js(
            &bob,
            "return [...R.querySelectorAll('#blocked-list li')].map(li => li.dataset.username);",
        )
        .await
            == json!(["alice"])
    })
    .await;
    assert_contrast(&bob, "the settings panel").await;
    screenshot(&bob, "browser-controls-settings.png").await;
    click(
        &bob,
        "unblock alice",
        "#blocked-list li[data-username='alice'] button",
    )
    .await;
    eventually("nobody blocked", || visible(&bob, "#blocked-none")).await;
    press(&bob, ESCAPE).await;
    eventually("the panel closed", || async { !visible(&bob, "#settings").await }).await;
    assert_eq!(
        focused(&bob).await,
        "settings-button",
        "the focus is back on its button"
    );
    assert!(!visible(&bob, "#blocked-note").await);
    assert_eq!(text(&bob, "#block-button").await, "Block");
    assert_eq!(
        js(&bob, "return R.getElementById('send-body').disabled;").await,
        json!(false)
    );

    // alice's kept text goes now.
    type_into(&alice, "#send-body", ENTER).await;
    eventually("the message on bob's screen", || async {
        message_texts(&bob).await == ["hello bob", "are you there?"]
    })
    .await;

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    let status = server.terminate().await;
    assert!(status.success(), "server exits cleanly on SIGTERM: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_deletion_in_real_browsers() {
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(work.path(), &["--database", "sqlite://chat.db"]).await;
    let driver = start_chromedriver().await;
    let (alice, bob) = two_in_a_conversation(&server, &driver, work.path()).await;
    send(&alice, "are you there?").await;
    eventually("both messages on bob's screen", || async {
        message_texts(&bob).await == ["hello bob", "are you there?"]
    })
    .await;

    // alice deletes her account from the settings panel: a wrong password is refused in
    // words, the right one (and a confirmation) logs her out for good.
    click(&alice, "settings", "#settings-button").await;
    eventually("the settings panel", || visible(&alice, "#settings")).await;
    type_into(&alice, "#delete-password", "not my password").await;
    click(&alice, "delete my account", "#delete-account").await;
    eventually("the question", || visible(&alice, "#confirm")).await;
    click(&alice, "confirm", "#confirm-ok").await;
    eventually("the refusal", || async {
        !text(&alice, "#delete-error").await.is_empty()
    })
    .await;
    assert!(visible(&alice, "#settings").await, "still in the panel");
    assert!(visible(&alice, "#app").await, "still logged in");
    // Cancelling the question deletes nothing.
    js(&alice, "R.getElementById('delete-password').value = '';").await;
    type_into(&alice, "#delete-password", "correct horse battery").await;
    click(&alice, "delete my account", "#delete-account").await;
    eventually("the question", || visible(&alice, "#confirm")).await;
    click(&alice, "cancel", "#confirm-cancel").await;
    assert!(visible(&alice, "#app").await);
    click(&alice, "delete my account", "#delete-account").await;
    eventually("the question", || visible(&alice, "#confirm")).await;
    click(&alice, "confirm", "#confirm-ok").await;
    eventually("the login screen", || visible(&alice, "#auth-form")).await;
    assert_eq!(
        text(&alice, "#auth-error").await,
        "Your account has been deleted."
    );
    assert!(!visible(&alice, "#settings").await);
    let leftovers = js(
        &alice,
        "return ['message-list', 'inbox-list', 'me', 'settings-me', 'blocked-list'] \
           .map(id => [id, R.getElementById(id).textContent.trim()]) \
           .concat([['send-body', R.getElementById('send-body').value], \
                    ['delete-password', R.getElementById('delete-password').value], \
                    ['auth-username', R.getElementById('auth-username').value]]) \
           .filter(([id, value]) => value);",
    )
    .await;
    assert_eq!(leftovers, json!([]), "nothing of alice's is left on the page");
    screenshot(&alice, "browser-controls-account-deleted.png").await;
    // Everything she sent is a tombstone for bob, live.
    eventually("alice's messages deleted on bob's screen", || async {
        message_texts(&bob).await == ["Message deleted", "Message deleted"]
    })
    .await;
    // Her account is gone: logging in again fails.
    log_in_fails(&alice, "alice").await;

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    let status = server.terminate().await;
    assert!(status.success(), "server exits cleanly on SIGTERM: {status:?}");
}

async fn log_in_fails(client: &Client, username: &str) {
    js(client, "R.getElementById('auth-error').textContent = '';").await;
    type_into(client, "#auth-username", username).await;
    type_into(client, "#auth-password", &format!("correct horse battery{ENTER}")).await;
    eventually("the login refused", || async {
        !text(client, "#auth-error").await.is_empty()
    })
    .await;
    assert!(!visible(client, "#app").await);
}
