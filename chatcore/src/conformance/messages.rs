//! Sending and reading messages: what is stored, pages, counts, idempotency, text.

use std::collections::HashSet;

use chrono::{Duration, SubsecRound};

use super::*;

/// An insert returns the stored message: id, names, body, a UTC timestamp with microseconds.
pub async fn insert_returns_stored_message(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let before = Utc::now().trunc_subsecs(6);
    let inserted = send_keyed(&store, &alice, &bob, "hello", None).await;
    let after = Utc::now();
    assert!(!inserted.replayed);
    assert_eq!(inserted.recipient_id, bob.id);
    let m = inserted.message;
    assert_eq!(
        (m.sender.as_str(), m.recipient.as_str(), m.body.as_str()),
        ("alice", "bob", "hello")
    );
    assert!(m.created_at >= before - Duration::seconds(2) && m.created_at <= after + Duration::seconds(2));
    assert_eq!(
        m.created_at,
        m.created_at.trunc_subsecs(6),
        "microsecond precision"
    );
    assert_eq!(store.message_for(bob.id, m.id).await.unwrap(), Some(m.clone()));
    assert_eq!(store.message_for(alice.id, m.id).await.unwrap(), Some(m.clone()));
    let second = send(&store, &bob, &alice, "back").await;
    assert!(second.id > m.id, "ids increase");
    assert!(second.created_at >= m.created_at);
}

/// Sending to a user that does not exist, or from an id that is no user, stores nothing.
pub async fn unknown_recipient_is_not_found(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let ghost = User {
        id: UserId(alice.id.0 + 1_000_000),
        username: name("ghost"),
    };
    for (sender, recipient) in [(alice.clone(), name("ghost")), (ghost, alice.username.clone())] {
        let result = store
            .insert_message(NewMessage {
                sender,
                recipient,
                body: "boo".into(),
                idempotency_key: None,
            })
            .await;
        assert!(
            matches!(result, Err(Error::NotFound(Entity::User))),
            "got {result:?}"
        );
        let page = store
            .user_messages(alice.id, &PageRequest::latest(15))
            .await
            .unwrap();
        assert_eq!(page.total, 0);
        assert!(page.messages.is_empty());
    }
    assert!(matches!(
        store
            .conversation_page(alice.id, &name("ghost"), &PageRequest::latest(15))
            .await,
        Err(Error::NotFound(Entity::User))
    ));
}

/// The latest page holds the newest 15, newest first, of this conversation only.
pub async fn latest_page_is_newest_first_and_limited(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let mut sent = Vec::new();
    for i in 0..20 {
        let (from, to) = if i % 2 == 0 {
            (&alice, &bob)
        } else {
            (&bob, &alice)
        };
        sent.push(send(&store, from, to, &format!("m{i}")).await);
        send(&store, &alice, &carol, "elsewhere").await;
    }
    let page = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(15))
        .await
        .unwrap();
    let expected: Vec<_> = sent.iter().rev().take(15).cloned().collect();
    assert_eq!(page.messages, expected);
    assert_eq!(page.total, 20);
    let from_bob = store
        .conversation_page(bob.id, &name("alice"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(from_bob, page, "the same conversation from either side");
    let empty = store
        .conversation_page(bob.id, &name("carol"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(empty.total, 0);
    assert!(empty.messages.is_empty());
}

/// Walking a 1,000-message conversation with `before` skips and repeats nothing.
pub async fn before_cursor_walks_1000_messages(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let mut expected = Vec::new();
    for i in 0..1000 {
        let (from, to) = if i % 3 == 0 {
            (&bob, &alice)
        } else {
            (&alice, &bob)
        };
        expected.push(send(&store, from, to, &format!("{i}")).await.id.0);
        if i % 10 == 0 {
            send(&store, &carol, &alice, "noise").await;
        }
    }
    expected.reverse();
    for limit in [15, 100, 7] {
        let mut seen = Vec::new();
        let mut page = PageRequest::latest(limit);
        loop {
            let got = store
                .conversation_page(alice.id, &name("bob"), &page)
                .await
                .unwrap();
            assert_eq!(got.total, 1000);
            assert!(got.messages.len() <= limit as usize);
            let Some(last) = got.messages.last() else { break };
            page.before = Some(last.id);
            seen.extend(ids(&got.messages));
        }
        assert_eq!(seen, expected, "limit {limit}");
    }
    let past_the_end = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::before(MessageId(1), 15))
        .await
        .unwrap();
    assert!(past_the_end.messages.is_empty());
}

/// `offset` (the original app's `?page=N`) gives the same pages as the cursor.
pub async fn offset_pages_match_cursor_pages(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    for i in 0..40 {
        send(&store, &alice, &bob, &format!("{i}")).await;
    }
    let first = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(15))
        .await
        .unwrap();
    let second = store
        .conversation_page(
            alice.id,
            &name("bob"),
            &PageRequest {
                before: None,
                offset: 15,
                limit: 15,
            },
        )
        .await
        .unwrap();
    let cursor = store
        .conversation_page(
            alice.id,
            &name("bob"),
            &PageRequest::before(first.messages[14].id, 15),
        )
        .await
        .unwrap();
    assert_eq!(second.messages, cursor.messages);
    let third = store
        .conversation_page(
            alice.id,
            &name("bob"),
            &PageRequest {
                before: None,
                offset: 30,
                limit: 15,
            },
        )
        .await
        .unwrap();
    assert_eq!(third.messages.len(), 10);
    let beyond = store
        .user_messages(
            alice.id,
            &PageRequest {
                before: None,
                offset: 45,
                limit: 15,
            },
        )
        .await
        .unwrap();
    assert!(beyond.messages.is_empty());
    assert_eq!(beyond.total, 40);
}

/// Only the sender and the recipient can read a message; a missing id looks the same.
pub async fn only_participants_read_a_message(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let eve = user(&store, "eve").await;
    let m = send(&store, &alice, &bob, "secret").await;
    assert!(store.message_for(alice.id, m.id).await.unwrap().is_some());
    assert!(store.message_for(bob.id, m.id).await.unwrap().is_some());
    assert_eq!(store.message_for(eve.id, m.id).await.unwrap(), None);
    assert_eq!(
        store
            .message_for(alice.id, MessageId(m.id.0 + 1000))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.message_for(alice.id, MessageId(-1)).await.unwrap(), None);
    assert_eq!(
        store.message_for(alice.id, MessageId(i64::MAX)).await.unwrap(),
        None
    );
    let eves = store
        .user_messages(eve.id, &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(eves.total, 0);
    assert!(
        store
            .messages_after(eve.id, MessageId(0), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Conversation and per-user totals are exact.
pub async fn counts_are_exact(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    for _ in 0..7 {
        send(&store, &alice, &bob, "ab").await;
    }
    for _ in 0..5 {
        send(&store, &carol, &alice, "ca").await;
    }
    for _ in 0..3 {
        send(&store, &bob, &carol, "bc").await;
    }
    let total = |viewer: &User, other: &str| {
        let store = store.clone();
        let viewer = viewer.id;
        let other = name(other);
        async move {
            store
                .conversation_page(viewer, &other, &PageRequest::latest(1))
                .await
                .unwrap()
                .total
        }
    };
    assert_eq!(total(&alice, "bob").await, 7);
    assert_eq!(total(&bob, "alice").await, 7);
    assert_eq!(total(&alice, "carol").await, 5);
    assert_eq!(total(&carol, "bob").await, 3);
    let all = |u: &User| {
        let store = store.clone();
        let id = u.id;
        async move { store.user_messages(id, &PageRequest::latest(100)).await.unwrap() }
    };
    let alices = all(&alice).await;
    assert_eq!(alices.total, 12);
    assert_eq!(alices.messages.len(), 12);
    assert!(
        alices.messages.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    assert!(alices.messages.iter().all(|m| m.involves(&alice.username)));
    assert_eq!(all(&bob).await.total, 10);
    assert_eq!(all(&carol).await.total, 8);
}

/// A key reused by the same sender returns the first message and stores nothing; keys are
/// per sender.
pub async fn idempotency_key_replays_first_message(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let first = send_keyed(&store, &alice, &bob, "once", Some("key-1")).await;
    assert!(!first.replayed);
    let retry = send_keyed(&store, &alice, &bob, "once", Some("key-1")).await;
    assert!(retry.replayed);
    assert_eq!(retry.message, first.message);
    assert_eq!(retry.recipient_id, bob.id);
    let other_key = send_keyed(&store, &alice, &bob, "twice", Some("key-2")).await;
    assert_ne!(other_key.message.id, first.message.id);
    let bobs_key = send_keyed(&store, &bob, &alice, "bob's", Some("key-1")).await;
    assert!(!bobs_key.replayed, "keys are scoped to their sender");
    let page = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(page.total, 3);
}

/// Emoji and other 4-byte UTF-8 characters come back unchanged.
pub async fn four_byte_utf8_round_trips(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let bodies = [
        "😀 grinning",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙",
        "家族 👨‍👩‍👧‍👦 with ZWJ",
        "𠜎𠜱𠝹𠱓 CJK Extension B",
        "mixed: é ß ♥ 🇫🇷 \u{10FFFF}",
        "quotes ' \" ` \\ % _ and NUL-free",
    ];
    for body in bodies {
        let m = send(&store, &alice, &bob, body).await;
        assert_eq!(m.body, body);
        assert_eq!(store.message_for(bob.id, m.id).await.unwrap().unwrap().body, body);
    }
    let page = store
        .conversation_page(bob.id, &name("alice"), &PageRequest::latest(15))
        .await
        .unwrap();
    let mut read: Vec<_> = page.messages.iter().map(|m| m.body.as_str()).collect();
    read.reverse();
    assert_eq!(read, bodies);
    let emoji_user = user(&store, "ünïcødé").await;
    assert_eq!(store.find_user(&name("ünïcødé")).await.unwrap(), Some(emoji_user));
}

/// A 4,000-character body (of 4-byte characters: 16,000 bytes) is stored whole.
pub async fn longest_body_round_trips(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let long = "🎉".repeat(4000);
    let m = send(&store, &alice, &bob, &long).await;
    assert_eq!(store.message_for(bob.id, m.id).await.unwrap().unwrap().body, long);
    let ascii = "x".repeat(4000);
    let m = send(&store, &alice, &bob, &ascii).await;
    assert_eq!(
        store.message_for(alice.id, m.id).await.unwrap().unwrap().body,
        ascii
    );
}

/// 64 tasks sending at once: no lost id, no duplicate id, exact totals.
pub async fn concurrent_senders_get_unique_ids(store: Arc<dyn Store>) {
    const TASKS: usize = 64;
    const EACH: usize = 20;
    let hub = user(&store, "hub").await;
    let mut senders = Vec::new();
    for t in 0..TASKS {
        senders.push(user(&store, &format!("sender{t}")).await);
    }
    let handles: Vec<_> = senders
        .iter()
        .cloned()
        .map(|sender| {
            let store = store.clone();
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let key = format!("k{i}");
                    let inserted = send_keyed(
                        &store,
                        &sender,
                        &hub,
                        &format!("{} {i}", sender.username),
                        Some(&key),
                    )
                    .await;
                    assert!(!inserted.replayed);
                    ids.push(inserted.message.id);
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        let ids = handle.await.expect("sender task");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "one sender's ids increase");
        all.extend(ids);
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(unique.len(), TASKS * EACH, "no duplicate id");
    let page = store
        .user_messages(hub.id, &PageRequest::latest(1))
        .await
        .unwrap();
    assert_eq!(page.total, (TASKS * EACH) as u64);
    let caught_up = store.messages_after(hub.id, MessageId(0), 10_000).await.unwrap();
    let read: HashSet<_> = caught_up.iter().map(|m| m.id).collect();
    assert_eq!(read, unique, "nothing lost");
    for sender in &senders {
        let conv = store
            .conversation_page(hub.id, &sender.username, &PageRequest::latest(100))
            .await
            .unwrap();
        assert_eq!(conv.total, EACH as u64);
        assert_eq!(conv.messages.len(), EACH);
    }
}

/// A message to oneself is one message: listed once, counted once.
pub async fn note_to_self_is_listed_once(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let inserted = send_keyed(&store, &alice, &alice, "note", None).await;
    assert_eq!(inserted.recipient_id, alice.id);
    let page = store
        .user_messages(alice.id, &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.messages, vec![inserted.message.clone()]);
    let conv = store
        .conversation_page(alice.id, &name("alice"), &PageRequest::latest(15))
        .await
        .unwrap();
    assert_eq!(conv.total, 1);
    assert_eq!(conv.messages.len(), 1);
    assert_eq!(
        store
            .messages_after(alice.id, MessageId(0), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A user's messages interleaved over several conversations (some quiet for a long time, one
/// with themself): every page, by offset and by cursor, and every catch-up, match the
/// messages in id order.
pub async fn user_pages_span_conversations(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let others = [
        user(&store, "bob").await,
        user(&store, "carol").await,
        user(&store, "dave").await,
        user(&store, "erin").await,
    ];
    let frank = user(&store, "frank").await;
    let mut alices: Vec<Message> = Vec::new();
    for i in 0..90usize {
        // Uneven traffic: bob often, erin only early on, notes to self now and then, and
        // messages alice is not part of in between.
        let m = match i % 9 {
            0 | 3 | 6 => send(&store, &alice, &others[0], "ab").await,
            1 if i < 30 => send(&store, &others[3], &alice, "ea").await,
            2 => send(&store, &others[1], &alice, "ca").await,
            4 => send(&store, &alice, &alice, "note").await,
            5 | 8 => send(&store, &alice, &others[2], "ad").await,
            _ => {
                send(&store, &frank, &others[0], "fb").await;
                continue;
            }
        };
        alices.push(m);
    }
    let newest_first: Vec<Message> = alices.iter().rev().cloned().collect();
    let total = alices.len() as u64;
    for limit in [1u32, 7, 15, 100] {
        let mut offset = 0u32;
        loop {
            let page = store
                .user_messages(
                    alice.id,
                    &PageRequest {
                        before: None,
                        offset,
                        limit,
                    },
                )
                .await
                .unwrap();
            assert_eq!(page.total, total);
            let expected = slice(&newest_first, offset, limit);
            assert_eq!(page.messages, expected, "offset {offset} limit {limit}");
            if offset as usize + expected.len() >= newest_first.len() {
                break;
            }
            offset += limit;
        }
        let mut before = None;
        let mut walked = Vec::new();
        loop {
            let page = store
                .user_messages(
                    alice.id,
                    &PageRequest {
                        before,
                        offset: 0,
                        limit,
                    },
                )
                .await
                .unwrap();
            if page.messages.is_empty() {
                break;
            }
            before = page.messages.last().map(|m| m.id);
            walked.extend(page.messages);
        }
        assert_eq!(walked, newest_first, "cursor walk with limit {limit}");
    }
    // A cursor that is not one of alice's messages (frank's) still bounds the page.
    let foreign = send(&store, &frank, &others[1], "fc").await;
    let page = store
        .user_messages(alice.id, &PageRequest::before(foreign.id, 5))
        .await
        .unwrap();
    assert_eq!(page.messages, newest_first[..5]);
    for since_index in [0usize, 10, 40, 70] {
        let since = alices[since_index].id;
        for limit in [1u32, 3, 16, 1000] {
            let caught_up = store.messages_after(alice.id, since, limit).await.unwrap();
            let expected: Vec<Message> = alices[since_index + 1..]
                .iter()
                .take(limit as usize)
                .cloned()
                .collect();
            assert_eq!(caught_up, expected, "after #{since_index} limit {limit}");
        }
    }
    let frank_page = store
        .user_messages(frank.id, &PageRequest::latest(100))
        .await
        .unwrap();
    assert!(frank_page.messages.iter().all(|m| m.sender == frank.username));
    assert_eq!(frank_page.total, frank_page.messages.len() as u64);
}

/// Many tasks writing into one conversation at once (so a group commit holds several of its
/// messages) beside a second, quieter one: every page by cursor and by offset, cursors that
/// are not messages of the conversation, and catch-ups from anywhere all see the messages in
/// id order, none missing.
pub async fn busy_conversation_reads_in_commit_order(store: Arc<dyn Store>) {
    const TASKS: usize = 12;
    const EACH: usize = 25;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            // Both directions of alice-bob, and every fourth task alice-carol.
            let (from, to) = match t % 4 {
                0 => (alice.clone(), carol.clone()),
                1 => (bob.clone(), alice.clone()),
                _ => (alice.clone(), bob.clone()),
            };
            tokio::spawn(async move {
                let mut sent = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    sent.push(send(&store, &from, &to, &format!("{t}.{i}")).await);
                }
                sent
            })
        })
        .collect();
    let mut with_bob = Vec::new();
    let mut with_carol = Vec::new();
    for handle in handles {
        for message in handle.await.expect("sender task") {
            if message.recipient == carol.username {
                with_carol.push(message);
            } else {
                with_bob.push(message);
            }
        }
    }
    let newest_first = |messages: &mut Vec<Message>| messages.sort_by_key(|m| std::cmp::Reverse(m.id));
    newest_first(&mut with_bob);
    newest_first(&mut with_carol);
    let page = |before: Option<MessageId>, offset: u32, limit: u32| PageRequest {
        before,
        offset,
        limit,
    };
    for (other, expected) in [(&bob, &with_bob), (&carol, &with_carol)] {
        let all = store
            .conversation_page(alice.id, &other.username, &page(None, 0, 1000))
            .await
            .unwrap();
        assert_eq!(all.total, expected.len() as u64);
        assert_eq!(
            &all.messages, expected,
            "the whole conversation with {}",
            other.username
        );
        let mut before = None;
        let mut walked = Vec::new();
        loop {
            let got = store
                .conversation_page(alice.id, &other.username, &page(before, 0, 15))
                .await
                .unwrap();
            let Some(last) = got.messages.last() else { break };
            before = Some(last.id);
            walked.extend(got.messages);
        }
        assert_eq!(&walked, expected, "cursor walk with {}", other.username);
        for offset in (0..expected.len() as u32 + 3).step_by(7) {
            let got = store
                .conversation_page(alice.id, &other.username, &page(None, offset, 15))
                .await
                .unwrap();
            assert_eq!(got.messages, slice(expected, offset, 15), "offset {offset}");
        }
    }
    // Cursors taken from the other conversation, with and without an offset.
    for cursor in with_carol.iter().map(|m| m.id).step_by(3) {
        for offset in [0u32, 5, 40] {
            let got = store
                .conversation_page(alice.id, &bob.username, &page(Some(cursor), offset, 15))
                .await
                .unwrap();
            let below: Vec<Message> = with_bob.iter().filter(|m| m.id < cursor).cloned().collect();
            assert_eq!(
                got.messages,
                slice(&below, offset, 15),
                "before {cursor:?} offset {offset}"
            );
        }
    }
    let mut oldest_first: Vec<Message> = with_bob.iter().chain(&with_carol).cloned().collect();
    oldest_first.sort_by_key(|m| m.id);
    // Catch-ups after the `seen`th oldest message of alice's.
    for seen in [0usize, 1, 17, 100, 250, oldest_first.len() - 1] {
        let after = seen.checked_sub(1).map_or(MessageId(0), |i| oldest_first[i].id);
        for limit in [1u32, 16, 33, 1000] {
            let got = store.messages_after(alice.id, after, limit).await.unwrap();
            let expected: Vec<Message> = oldest_first[seen..]
                .iter()
                .take(limit as usize)
                .cloned()
                .collect();
            assert_eq!(got, expected, "alice after #{seen} limit {limit}");
        }
    }
}
