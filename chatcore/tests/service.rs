//! `ChatService` behaviour over the in-memory backends.

use std::time::Duration;

use chatcore::{
    CatchUpPage, ChatConfig, ChatService, CloseReason, Delivery, DirectoryQuery, Entity, Error, Feed,
    HistoryQuery, MessageId, Position, SendRequest, SessionId, User,
};

mod common;

use common::{pair, service, to};

/// The next event's position, `None` when nothing is queued. `LocalNotifier` delivers
/// within `publish`, so everything a finished send published is already queued.
async fn next_id(feed: &mut Feed) -> Option<MessageId> {
    match feed.try_recv() {
        Some(Delivery::Event { event, .. }) => event.position().map(|p| MessageId(p.0)),
        None => None,
        Some(other) => panic!("unexpected delivery {other:?}"),
    }
}

async fn next(feed: &mut Feed) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .expect("a delivery within 5 s")
        .expect("the feed goes on")
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
    let carol = chat.create_user("carol").await.unwrap();
    let mut alice_tab = chat.subscribe(&alice, None).await.unwrap();
    let mut bob_tab1 = chat.subscribe(&bob, None).await.unwrap();
    let mut bob_tab2 = chat.subscribe(&bob, None).await.unwrap();
    let mut carol_tab = chat.subscribe(&carol, None).await.unwrap();
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
    let mut bob_tab = chat.subscribe(&bob, None).await.unwrap();
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
async fn numbered_pages_stop_at_the_configured_depth() {
    let chat = service(ChatConfig {
        send_burst: 0,
        max_page_offset: 30,
        ..Default::default()
    });
    let (alice, bob) = pair(&chat).await;
    for i in 0..60 {
        chat.send(&alice, to("bob", &format!("{i}"))).await.unwrap();
    }
    let page = |n| HistoryQuery {
        page: Some(n),
        ..Default::default()
    };
    // Page 3 skips 30 messages: the deepest allowed.
    let deepest = chat.conversation(&bob, "alice", page(3)).await.unwrap();
    assert_eq!(deepest.messages[0].body, "29");
    assert_eq!(chat.all_messages(&bob, page(3)).await.unwrap().messages.len(), 15);
    // Page 4 would skip 45: refused on both lists, pointing to the cursor.
    for refused in [
        chat.conversation(&bob, "alice", page(4)).await,
        chat.all_messages(&bob, page(4)).await,
        chat.all_messages(&bob, page(u32::MAX)).await,
    ] {
        match refused {
            Err(Error::Invalid(message)) => assert!(message.contains("?before="), "{message}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    // The cursor reaches every depth.
    let oldest_of_deepest = deepest.messages.last().unwrap().id;
    let below = HistoryQuery {
        before: Some(oldest_of_deepest),
        ..Default::default()
    };
    let next = chat.conversation(&bob, "alice", below).await.unwrap();
    assert_eq!(next.messages[0].body, "14");
}

#[tokio::test]
async fn history_defaults_and_limits() {
    let chat = service(ChatConfig {
        send_burst: 0,
        ..Default::default()
    });
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
    let carol = chat.create_user("carol").await.unwrap();
    assert!(matches!(
        chat.message(&carol, id).await,
        Err(Error::NotFound(Entity::Message))
    ));
}

async fn read_all(chat: &ChatService, user: &User, since: i64) -> Result<Vec<String>, Position> {
    let mut catch_up = chat.catch_up(user, Position(since));
    let mut bodies = Vec::new();
    loop {
        match chat.catch_up_page(&mut catch_up).await.unwrap() {
            CatchUpPage::Events(events) if events.is_empty() => return Ok(bodies),
            CatchUpPage::Events(events) => {
                assert!(events.len() <= chat.config().catch_up_page as usize);
                bodies.extend(events.iter().map(|e| e.message_data().unwrap().body));
                assert_eq!(catch_up.after(), events.last().unwrap().position().unwrap());
            }
            CatchUpPage::Resync { resume_after } => return Err(resume_after),
        }
    }
}

#[tokio::test]
async fn catch_up_replays_in_pages_or_asks_for_resync() {
    for page in [1, 2, 3, 100] {
        let chat = service(ChatConfig {
            catch_up_limit: 5,
            catch_up_page: page,
            ..Default::default()
        });
        let (alice, bob) = pair(&chat).await;
        let first = chat.send(&alice, to("bob", "0")).await.unwrap().message.id;
        let mut last = first;
        for i in 1..=5 {
            last = chat
                .send(&alice, to("bob", &format!("{i}")))
                .await
                .unwrap()
                .message
                .id;
        }
        assert_eq!(
            read_all(&chat, &bob, first.0).await,
            Ok(["1", "2", "3", "4", "5"].map(String::from).to_vec()),
            "page {page}"
        );
        // Six missed: more than the limit, so resync and resume after the newest.
        assert_eq!(
            read_all(&chat, &bob, 0).await,
            Err(Position::from(last)),
            "page {page}"
        );
        // Nothing missed.
        assert_eq!(read_all(&chat, &bob, last.0).await, Ok(vec![]));
    }
}

#[tokio::test]
async fn a_since_beyond_the_newest_event_is_brought_back() {
    let chat = service(ChatConfig::default());
    let (alice, bob) = pair(&chat).await;
    let sent = chat.send(&alice, to("bob", "x")).await.unwrap().message.id;
    let mut catch_up = chat.catch_up(&bob, Position(1_000_000));
    assert_eq!(
        chat.catch_up_page(&mut catch_up).await.unwrap(),
        CatchUpPage::Events(vec![])
    );
    assert_eq!(catch_up.after(), Position::from(sent));
    assert_eq!(chat.latest_position(&bob).await.unwrap(), Position::from(sent));
}

#[tokio::test]
async fn live_events_carry_each_users_previous_position() {
    let chat = service(ChatConfig::default());
    let (alice, bob) = pair(&chat).await;
    let carol = chat.create_user("carol").await.unwrap();
    let mut bob_tab = chat.subscribe(&bob, None).await.unwrap();
    let mut carol_tab = chat.subscribe(&carol, None).await.unwrap();
    let m1 = chat.send(&alice, to("bob", "1")).await.unwrap().message.id;
    let m2 = chat.send(&alice, to("carol", "2")).await.unwrap().message.id;
    let m3 = chat.send(&carol, to("bob", "3")).await.unwrap().message.id;
    let previous = |d: Delivery| match d {
        Delivery::Event { event, previous } => (event.position().unwrap(), previous.unwrap()),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(previous(next(&mut bob_tab).await), (m1.into(), Position::START));
    assert_eq!(previous(next(&mut bob_tab).await), (m3.into(), m1.into()));
    assert_eq!(previous(next(&mut carol_tab).await), (m2.into(), Position::START));
    assert_eq!(previous(next(&mut carol_tab).await), (m3.into(), m2.into()));
}

#[tokio::test]
async fn ending_a_session_closes_its_feeds_only() {
    let chat = service(ChatConfig::default());
    let (alice, bob) = pair(&chat).await;
    let mut laptop = chat.subscribe(&bob, Some(SessionId(1))).await.unwrap();
    let mut phone = chat.subscribe(&bob, Some(SessionId(2))).await.unwrap();
    let mut token_client = chat.subscribe(&bob, None).await.unwrap();
    chat.end_session(&bob, SessionId(1)).await.unwrap();
    assert_eq!(
        next(&mut laptop).await,
        Delivery::Closed(CloseReason::SessionEnded)
    );
    assert_eq!(laptop.recv().await, None);
    let sent = chat
        .send(&alice, to("bob", "still here"))
        .await
        .unwrap()
        .message
        .id;
    assert_eq!(
        next_id(&mut phone).await,
        Some(sent),
        "the session event is not forwarded"
    );
    assert_eq!(next_id(&mut token_client).await, Some(sent));
}

#[tokio::test]
async fn too_many_connections_close_the_oldest() {
    let chat = service(ChatConfig {
        max_connections_per_user: 2,
        ..Default::default()
    });
    let (alice, bob) = pair(&chat).await;
    let mut first = chat.subscribe(&bob, None).await.unwrap();
    let mut second = chat.subscribe(&bob, None).await.unwrap();
    assert_eq!(chat.connection_count(&bob), 2);
    let mut third = chat.subscribe(&bob, None).await.unwrap();
    assert_eq!(chat.connection_count(&bob), 2);
    assert_eq!(
        first.try_recv(),
        Some(Delivery::Closed(CloseReason::TooManyConnections))
    );
    let sent = chat.send(&alice, to("bob", "x")).await.unwrap().message.id;
    assert_eq!(next_id(&mut second).await, Some(sent));
    assert_eq!(next_id(&mut third).await, Some(sent));
    drop(second);
    assert_eq!(chat.connection_count(&bob), 1);
    // Other users are counted apart.
    let _alice_tab = chat.subscribe(&alice, None).await.unwrap();
    assert_eq!(chat.connection_count(&bob), 1);
}

#[tokio::test]
async fn is_connected_here_follows_the_users_live_connections() {
    let chat = service(ChatConfig::default());
    let (alice, bob) = pair(&chat).await;
    assert!(!chat.is_connected_here(bob.id));
    let first = chat.subscribe(&bob, None).await.unwrap();
    let second = chat.clone().subscribe(&bob, None).await.unwrap();
    assert!(chat.is_connected_here(bob.id), "clones share the table");
    assert!(!chat.is_connected_here(alice.id), "per user");
    drop(first);
    assert!(chat.is_connected_here(bob.id), "one connection left");
    drop(second);
    assert!(!chat.is_connected_here(bob.id));
}

#[tokio::test]
async fn directory_excludes_caller_and_pages() {
    let chat = service(ChatConfig::default());
    let (alice, _) = pair(&chat).await;
    for name in ["carol", "carl", "dave"] {
        chat.create_user(name).await.unwrap();
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
    assert!(matches!(chat.create_user("bob").await, Err(Error::Conflict(_))));
    assert!(matches!(chat.create_user("").await, Err(Error::Invalid(_))));
}

#[tokio::test]
async fn the_send_rate_limit_is_the_services() {
    let chat = service(ChatConfig {
        send_burst: 3,
        send_rate_per_sec: 1,
        ..Default::default()
    });
    let (alice, bob) = pair(&chat).await;
    for i in 0..3 {
        chat.send(&alice, to("bob", &format!("{i}"))).await.unwrap();
    }
    match chat.send(&alice, to("bob", "one too many")).await {
        Err(Error::RateLimited { retry_after }) => {
            assert!(
                retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1),
                "{retry_after:?}"
            )
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Each user has a bucket of their own.
    chat.send(&bob, to("alice", "mine")).await.unwrap();
    // 0 turns it off.
    let unlimited = service(ChatConfig {
        send_burst: 0,
        ..Default::default()
    });
    let (alice, _) = pair(&unlimited).await;
    for i in 0..500 {
        unlimited.send(&alice, to("bob", &format!("{i}"))).await.unwrap();
    }
}

#[tokio::test]
async fn an_idempotency_key_names_one_message() {
    let chat = service(ChatConfig::default());
    let (alice, _bob) = pair(&chat).await;
    let keyed = |recipient: &str, body: &str| SendRequest {
        recipient: recipient.into(),
        body: body.into(),
        idempotency_key: Some("k1".into()),
    };
    let first = chat.send(&alice, keyed("bob", " same ")).await.unwrap();
    // The same request (the body trims to the same text) replays.
    let again = chat.send(&alice, keyed("bob", "same")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.message.id, first.message.id);
    for (recipient, body) in [("bob", "other"), ("alice", "same")] {
        assert!(
            matches!(
                chat.send(&alice, keyed(recipient, body)).await,
                Err(Error::Unprocessable(_))
            ),
            "{recipient} {body}"
        );
    }
}

#[tokio::test]
async fn catch_up_pages_end_at_a_byte_bound_too() {
    let chat = service(ChatConfig {
        send_burst: 0,
        catch_up_page: 100,
        catch_up_page_bytes: 10_000,
        ..Default::default()
    });
    let (alice, bob) = pair(&chat).await;
    let long = "x".repeat(3_000);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(chat.send(&alice, to("bob", &long)).await.unwrap().message.id);
    }
    let mut catch_up = chat.catch_up(&bob, Position::START);
    let mut pages = Vec::new();
    loop {
        match chat.catch_up_page(&mut catch_up).await.unwrap() {
            CatchUpPage::Events(events) if events.is_empty() => break,
            CatchUpPage::Events(events) => pages.push(events.len()),
            other => panic!("unexpected {other:?}"),
        }
    }
    // 3,000-byte bodies, 10,000 bytes a page: four a page (the one that crosses the bound
    // ends it), everything once.
    assert_eq!(pages, [4, 4, 2]);
    assert_eq!(catch_up.after(), Position::from(*ids.last().unwrap()));
    // A single body over the bound still makes a page of one.
    let tiny = service(ChatConfig {
        send_burst: 0,
        catch_up_page_bytes: 1,
        ..Default::default()
    });
    let (alice, bob) = pair(&tiny).await;
    tiny.send(&alice, to("bob", &long)).await.unwrap();
    let mut catch_up = tiny.catch_up(&bob, Position::START);
    match tiny.catch_up_page(&mut catch_up).await.unwrap() {
        CatchUpPage::Events(events) => assert_eq!(events.len(), 1),
        other => panic!("unexpected {other:?}"),
    }
}
