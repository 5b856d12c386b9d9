//! Send policies ([`chatcore::SendPolicy`]) as `ChatService` applies them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chatcore::{
    BoxError, ChatConfig, ChatService, Delivery, Draft, Error, Feed, HistoryQuery, PolicyAction,
    PolicyCounts, PolicyFallback, Rejection, RejectionKind, SendPolicy, SendRequest, User, Verdict,
};

mod common;

use common::{pair, service, to};

/// The bodies of the messages `feed` has queued (`LocalNotifier` delivers within `publish`,
/// so everything a finished send published is already there).
fn queued_bodies(feed: &mut Feed) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(delivery) = feed.try_recv() {
        match delivery {
            Delivery::Event { event, .. } => bodies.push(event.message_data().expect("a message event").body),
            other => panic!("unexpected delivery {other:?}"),
        }
    }
    bodies
}

async fn stored_bodies(chat: &ChatService, viewer: &User, peer: &str) -> Vec<String> {
    let page = chat
        .conversation(viewer, peer, HistoryQuery::default())
        .await
        .unwrap();
    page.messages.into_iter().rev().map(|m| m.body).collect()
}

/// Writes down every draft it is shown, then allows it.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(PolicyAction, String, String, String)>>,
}

#[async_trait]
impl SendPolicy for Recorder {
    async fn check(&self, draft: &Draft<'_>) -> Result<Verdict, BoxError> {
        self.seen.lock().unwrap().push((
            draft.action,
            draft.sender.username.to_string(),
            draft.recipient.to_string(),
            draft.body.to_owned(),
        ));
        Ok(Verdict::Allow)
    }
}

/// Refuses spam (422) and links (403), rewrites "darn", allows the rest.
struct Moderator;

#[async_trait]
impl SendPolicy for Moderator {
    async fn check(&self, draft: &Draft<'_>) -> Result<Verdict, BoxError> {
        Ok(if draft.body.contains("spam") {
            Verdict::Reject(Rejection::unprocessable("that looks like spam"))
        } else if draft.body.contains("http://") {
            Verdict::Reject(Rejection::forbidden("links are for subscribers"))
        } else if draft.body.contains("darn") {
            // Padded: the service trims a rewrite like any body.
            Verdict::Rewrite(format!("  {}  ", draft.body.replace("darn", "d*rn")))
        } else if draft.body == "erase me" {
            Verdict::Rewrite("\u{200B} ".to_owned())
        } else {
            Verdict::Allow
        })
    }
}

/// Never answers.
struct Silent;

#[async_trait]
impl SendPolicy for Silent {
    async fn check(&self, _draft: &Draft<'_>) -> Result<Verdict, BoxError> {
        std::future::pending().await
    }
}

/// Always fails.
struct Broken;

#[async_trait]
impl SendPolicy for Broken {
    async fn check(&self, _draft: &Draft<'_>) -> Result<Verdict, BoxError> {
        Err("the moderation service is down".into())
    }
}

#[tokio::test]
async fn policies_allow_refuse_and_rewrite_in_order() {
    let before = Arc::new(Recorder::default());
    let after = Arc::new(Recorder::default());
    let chat = service(ChatConfig::default())
        .with_send_policy(before.clone())
        .with_send_policy(Arc::new(Moderator))
        .with_send_policy(after.clone());
    let (alice, bob) = pair(&chat).await;
    let mut bobs_feed = chat.subscribe(&bob, None).await.unwrap();

    let sent = chat.send(&alice, to("BOB", " well darn ")).await.unwrap();
    assert_eq!(sent.message.body, "well d*rn");
    chat.send(&alice, to("bob", "hello")).await.unwrap();

    let spam = chat.send(&alice, to("bob", "buy spam")).await.unwrap_err();
    assert!(
        matches!(&spam, Error::Rejected(r) if r.kind == RejectionKind::Unprocessable && r.reason == "that looks like spam"),
        "{spam:?}"
    );
    let link = chat.send(&alice, to("bob", "see http://x")).await.unwrap_err();
    assert!(
        matches!(&link, Error::Rejected(r) if r.kind == RejectionKind::Forbidden),
        "{link:?}"
    );
    // A rewrite is checked again: an invisible body is empty.
    let erased = chat.send(&alice, to("bob", "erase me")).await.unwrap_err();
    assert!(
        matches!(&erased, Error::Invalid(m) if m.contains("empty")),
        "{erased:?}"
    );

    // Refused messages are neither stored nor notified.
    assert_eq!(stored_bodies(&chat, &bob, "alice").await, ["well d*rn", "hello"]);
    assert_eq!(queued_bodies(&mut bobs_feed), ["well d*rn", "hello"]);

    // The first policy saw every draft, trimmed, with the recipient as written; the last saw
    // only what the moderator let through, rewritten.
    let seen = before.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    assert_eq!(
        seen[0],
        (
            PolicyAction::Send,
            "alice".to_owned(),
            "BOB".to_owned(),
            "well darn".to_owned()
        )
    );
    let after_bodies: Vec<String> = after.seen.lock().unwrap().iter().map(|s| s.3.clone()).collect();
    assert_eq!(after_bodies, ["well d*rn", "hello"]);
    assert_eq!(chat.policy_counts(), PolicyCounts::default());
}

#[tokio::test]
async fn a_rewrite_is_held_to_the_body_limit() {
    let chat = service(ChatConfig {
        max_body_chars: 4,
        ..Default::default()
    })
    .with_send_policy(Arc::new(Lengthen));
    let (alice, bob) = pair(&chat).await;
    assert_eq!(
        chat.send(&alice, to("bob", "ab")).await.unwrap().message.body,
        "abab"
    );
    // Within the limit as sent, beyond it once rewritten.
    let err = chat.send(&alice, to("bob", "abcd")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("at most 4")),
        "{err:?}"
    );
    assert_eq!(stored_bodies(&chat, &bob, "alice").await, ["abab"]);
}

/// Doubles every body.
struct Lengthen;

#[async_trait]
impl SendPolicy for Lengthen {
    async fn check(&self, draft: &Draft<'_>) -> Result<Verdict, BoxError> {
        Ok(Verdict::Rewrite(draft.body.repeat(2)))
    }
}

#[tokio::test]
async fn a_late_or_failed_policy_gets_the_fallback_and_is_counted() {
    let deadline = Duration::from_millis(50);
    // Allow: the message goes on to the next policy and is stored.
    let lenient = service(ChatConfig {
        policy_deadline: deadline,
        policy_fallback: PolicyFallback::Allow,
        ..Default::default()
    })
    .with_send_policy(Arc::new(Silent))
    .with_send_policy(Arc::new(Broken))
    .with_send_policy(Arc::new(Moderator));
    let (alice, bob) = pair(&lenient).await;
    let sent = lenient.send(&alice, to("bob", "darn")).await.unwrap();
    assert_eq!(sent.message.body, "d*rn", "later policies still decide");
    assert!(matches!(
        lenient.send(&alice, to("bob", "spam")).await,
        Err(Error::Rejected(_))
    ));
    assert_eq!(
        lenient.policy_counts(),
        PolicyCounts {
            timed_out: 2,
            failed: 2
        }
    );
    // Clones share the counters.
    assert_eq!(lenient.clone().policy_counts().timed_out, 2);
    assert_eq!(stored_bodies(&lenient, &bob, "alice").await, ["d*rn"]);

    // Reject: nothing unchecked is stored.
    for policy in [Arc::new(Silent) as Arc<dyn SendPolicy>, Arc::new(Broken)] {
        let strict = service(ChatConfig {
            policy_deadline: deadline,
            policy_fallback: PolicyFallback::Reject,
            ..Default::default()
        })
        .with_send_policy(policy);
        let (alice, bob) = pair(&strict).await;
        let mut bobs_feed = strict.subscribe(&bob, None).await.unwrap();
        let err = strict.send(&alice, to("bob", "hello")).await.unwrap_err();
        assert!(
            matches!(&err, Error::Rejected(r) if r.kind == RejectionKind::Forbidden),
            "{err:?}"
        );
        let counts = strict.policy_counts();
        assert_eq!(counts.timed_out + counts.failed, 1, "{counts:?}");
        assert!(stored_bodies(&strict, &bob, "alice").await.is_empty());
        assert!(queued_bodies(&mut bobs_feed).is_empty());
    }
}

#[tokio::test]
async fn a_retry_with_the_same_key_is_asked_again_and_replays() {
    let recorder = Arc::new(Recorder::default());
    let chat = service(ChatConfig::default())
        .with_send_policy(Arc::new(Moderator))
        .with_send_policy(recorder.clone());
    let (alice, bob) = pair(&chat).await;
    let keyed = SendRequest {
        idempotency_key: Some("k1".into()),
        ..to("bob", "darn")
    };
    let first = chat.send(&alice, keyed.clone()).await.unwrap();
    let retry = chat.send(&alice, keyed).await.unwrap();
    assert!(retry.replayed);
    assert_eq!(
        (retry.message.id, retry.message.body.as_str()),
        (first.message.id, "d*rn")
    );
    assert_eq!(recorder.seen.lock().unwrap().len(), 2);
    assert_eq!(stored_bodies(&chat, &bob, "alice").await, ["d*rn"]);
}

#[test]
fn a_zero_policy_deadline_is_refused_where_the_config_is_built() {
    let config = ChatConfig {
        policy_deadline: Duration::ZERO,
        ..Default::default()
    };
    let err = config.validate().unwrap_err();
    assert!(err.to_string().contains("policy_deadline"), "{err}");
}

/// Edits are asked too, as [`PolicyAction::Edit`] with the message's recipient: a refused
/// edit changes nothing, a rewrite is what is stored; the recipient is refused before any
/// policy is asked.
#[tokio::test]
async fn edits_are_asked_of_the_policies() {
    let recorder = Arc::new(Recorder::default());
    let chat = service(ChatConfig::default())
        .with_send_policy(recorder.clone())
        .with_send_policy(Arc::new(Moderator));
    let (alice, bob) = pair(&chat).await;
    let sent = chat.send(&alice, to("bob", "hello")).await.unwrap();
    let id = sent.message.id;
    let refused = chat.edit_message(&alice, id, "buy spam").await.unwrap_err();
    assert!(
        matches!(&refused, Error::Rejected(r) if r.kind == RejectionKind::Unprocessable),
        "{refused:?}"
    );
    assert_eq!(stored_bodies(&chat, &bob, "alice").await, ["hello"]);
    let edited = chat.edit_message(&alice, id, " oh darn ").await.unwrap();
    assert_eq!(edited.body, "oh d*rn");
    assert_eq!(stored_bodies(&chat, &bob, "alice").await, ["oh d*rn"]);
    let by_bob = chat.edit_message(&bob, id, "mine now").await.unwrap_err();
    assert!(
        matches!(by_bob, Error::Forbidden(chatcore::Forbidden::NotTheSender)),
        "{by_bob:?}"
    );
    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        3,
        "the send and two edits, not the recipient's attempt"
    );
    assert_eq!(
        seen[2],
        (
            PolicyAction::Edit,
            "alice".to_owned(),
            "bob".to_owned(),
            "oh darn".to_owned()
        )
    );
}
