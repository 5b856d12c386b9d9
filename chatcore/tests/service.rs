//! `ChatService` behaviour over the in-memory backends.

use std::sync::Arc;
use std::time::Duration;

use chatcore::{
    CatchUp, ChatConfig, ChatService, Delivery, DirectoryQuery, Entity, Error, Event, HistoryQuery,
    LocalNotifier, MemoryStore, MessageId, SendRequest, Subscription, User,
};

fn service(config: ChatConfig) -> ChatService {
    ChatService::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalNotifier::new(64)),
        config,
    )
}

fn to(recipient: &str, body: &str) -> SendRequest {
    SendRequest {
        recipient: recipient.into(),
        body: body.into(),
        idempotency_key: None,
    }
}

async fn next_id(sub: &mut Subscription) -> Option<MessageId> {
    match tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
        Ok(Some(Delivery::Event(Event::Message(m)))) => Some(m.id),
        Ok(other) => panic!("unexpected delivery {other:?}"),
        Err(_) => None,
    }
}

async fn pair(chat: &ChatService) -> (User, User) {
    (
        chat.create_user("alice", None).await.unwrap(),
        chat.create_user("bob", None).await.unwrap(),
    )
}

#[tokio::test]
async fn send_trims_and_validates() {
    let chat = service(ChatConfig {
        max_body_chars: 10,
        ..Default::default()
    });
    let (alice, _bob) = pair(&chat).await;
    let sent = chat.send(&alice, to("bob", " aaa ")).await.unwrap();
    assert_eq!(sent.message.body, "aaa");
    assert!(!sent.replayed);
    assert!(sent.notify_error.is_none());
    for empty in ["", "   ", "\n\t "] {
        assert!(matches!(
            chat.send(&alice, to("bob", empty)).await,
            Err(Error::Invalid(_))
        ));
    }
    // Ten 4-byte characters fit, eleven do not: the limit counts characters, not bytes.
    assert!(chat.send(&alice, to("bob", &"😀".repeat(10))).await.is_ok());
    let err = chat.send(&alice, to("bob", &"😀".repeat(11))).await.unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("at most 10")),
        "{err}"
    );
    assert!(
        chat.send(&alice, to("bob", &format!("  {}  ", "x".repeat(10))))
            .await
            .is_ok(),
        "trimmed first"
    );
    assert!(matches!(
        chat.send(&alice, to("nobody", "hi")).await,
        Err(Error::NotFound(Entity::User))
    ));
    assert!(matches!(
        chat.send(&alice, to("not a name!", "hi")).await,
        Err(Error::NotFound(Entity::User))
    ));
}

#[tokio::test]
async fn both_parties_notified_once_and_others_not() {
    let chat = service(ChatConfig::default());
    let (alice, bob) = pair(&chat).await;
    let carol = chat.create_user("carol", None).await.unwrap();
    let mut alice_tab = chat.subscribe(&alice).await.unwrap();
    let mut bob_tab1 = chat.subscribe(&bob).await.unwrap();
    let mut bob_tab2 = chat.subscribe(&bob).await.unwrap();
    let mut carol_tab = chat.subscribe(&carol).await.unwrap();
    let sent = chat.send(&alice, to("bob", "hi")).await.unwrap();
    for tab in [&mut alice_tab, &mut bob_tab1, &mut bob_tab2] {
        assert_eq!(next_id(tab).await, Some(sent.message.id));
        assert_eq!(next_id(tab).await, None, "exactly once");
    }
    assert_eq!(next_id(&mut carol_tab).await, None);

    let note = chat.send(&alice, to("alice", "note to self")).await.unwrap();
    assert_eq!(next_id(&mut alice_tab).await, Some(note.message.id));
    assert_eq!(
        next_id(&mut alice_tab).await,
        None,
        "a note to oneself notifies once"
    );
}

#[tokio::test]
async fn idempotent_retry_returns_same_message_and_notifies_once() {
    let chat = service(ChatConfig::default());
    let (alice, bob) = pair(&chat).await;
    let mut bob_tab = chat.subscribe(&bob).await.unwrap();
    let keyed = SendRequest {
        idempotency_key: Some("retry-1".into()),
        ..to("bob", "once")
    };
    let first = chat.send(&alice, keyed.clone()).await.unwrap();
    let again = chat.send(&alice, keyed.clone()).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.message.id, first.message.id);
    assert_eq!(next_id(&mut bob_tab).await, Some(first.message.id));
    assert_eq!(next_id(&mut bob_tab).await, None);
    let page = chat
        .conversation(&bob, "alice", HistoryQuery::default())
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    let long_key = SendRequest {
        idempotency_key: Some("k".repeat(256)),
        ..to("bob", "x")
    };
    assert!(matches!(
        chat.send(&alice, long_key).await,
        Err(Error::Invalid(_))
    ));
}

#[tokio::test]
async fn history_defaults_and_limits() {
    let chat = service(ChatConfig::default());
    let (alice, bob) = pair(&chat).await;
    for i in 0..120 {
        chat.send(&alice, to("bob", &format!("{i}"))).await.unwrap();
    }
    let page = chat
        .conversation(&bob, "alice", HistoryQuery::default())
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 15);
    assert_eq!(page.total, 120);
    assert_eq!(page.messages[0].body, "119");
    let big = HistoryQuery {
        limit: Some(1000),
        ..Default::default()
    };
    assert_eq!(
        chat.conversation(&bob, "alice", big)
            .await
            .unwrap()
            .messages
            .len(),
        100,
        "clamped"
    );
    let second = HistoryQuery {
        page: Some(2),
        ..Default::default()
    };
    assert_eq!(
        chat.conversation(&bob, "alice", second).await.unwrap().messages[0].body,
        "104"
    );
    for bad in [
        HistoryQuery {
            page: Some(0),
            ..Default::default()
        },
        HistoryQuery {
            limit: Some(0),
            ..Default::default()
        },
    ] {
        assert!(matches!(
            chat.conversation(&bob, "alice", bad).await,
            Err(Error::Invalid(_))
        ));
    }
    assert!(matches!(
        chat.conversation(&bob, "ghost", HistoryQuery::default()).await,
        Err(Error::NotFound(Entity::User))
    ));
    let all = chat.all_messages(&alice, HistoryQuery::default()).await.unwrap();
    assert_eq!((all.messages.len(), all.total), (15, 120));
    let id = all.messages[0].id;
    assert_eq!(chat.message(&bob, id).await.unwrap().body, "119");
    let carol = chat.create_user("carol", None).await.unwrap();
    assert!(matches!(
        chat.message(&carol, id).await,
        Err(Error::NotFound(Entity::Message))
    ));
}

#[tokio::test]
async fn catch_up_replays_or_asks_for_resync() {
    let chat = service(ChatConfig {
        catch_up_limit: 5,
        ..Default::default()
    });
    let (alice, bob) = pair(&chat).await;
    let first = chat.send(&alice, to("bob", "0")).await.unwrap().message.id;
    for i in 1..=5 {
        chat.send(&alice, to("bob", &format!("{i}"))).await.unwrap();
    }
    match chat.catch_up(&bob, first).await.unwrap() {
        CatchUp::Messages(missed) => {
            let bodies: Vec<_> = missed.iter().map(|m| m.body.as_str()).collect();
            assert_eq!(bodies, ["1", "2", "3", "4", "5"]);
        }
        CatchUp::Resync => panic!("five missed fit the limit"),
    }
    assert_eq!(chat.catch_up(&bob, MessageId(0)).await.unwrap(), CatchUp::Resync);
}

#[tokio::test]
async fn directory_excludes_caller_and_pages() {
    let chat = service(ChatConfig::default());
    let (alice, _) = pair(&chat).await;
    for name in ["carol", "carl", "dave"] {
        chat.create_user(name, None).await.unwrap();
    }
    let names = |users: Vec<User>| {
        users
            .into_iter()
            .map(|u| u.username.into_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(chat.users(&alice, DirectoryQuery::default()).await.unwrap()),
        ["bob", "carl", "carol", "dave"]
    );
    let car = DirectoryQuery {
        prefix: Some("car".into()),
        ..Default::default()
    };
    assert_eq!(names(chat.users(&alice, car).await.unwrap()), ["carl", "carol"]);
    let paged = DirectoryQuery {
        after: Some("carl".into()),
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(names(chat.users(&alice, paged).await.unwrap()), ["carol"]);
    assert!(matches!(
        chat.create_user("bob", None).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(chat.create_user("", None).await, Err(Error::Invalid(_))));
}
