//! Edits and deletions ([`Store::change_message`]): who may change a message, tombstones,
//! and the durable events both participants get.

use std::sync::atomic::{AtomicBool, Ordering};

use super::inbox::{all_events, follow_stream};
use super::*;
use crate::Forbidden;

fn edit(body: &str) -> MessageChange {
    MessageChange::Edit {
        body: body.to_owned(),
        not_before: None,
    }
}

async fn change(
    store: &Arc<dyn Store>,
    who: &User,
    id: MessageId,
    change: &MessageChange,
) -> Result<Changed> {
    store.change_message(who.id, id, change).await
}

/// Only the sender edits or deletes: the recipient is refused ([`Forbidden::NotTheSender`]),
/// anyone else and a missing id get the same [`Error::NotFound`]; an edit window refuses an
/// older message; refused changes change nothing. An edit replaces the body and sets
/// `edited`, everywhere the message is read.
pub async fn only_the_sender_changes_a_message(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let sent = send(&store, &alice, &bob, "helo").await;
    for what in [edit("hacked"), MessageChange::Delete] {
        assert!(
            matches!(
                change(&store, &bob, sent.id, &what).await,
                Err(Error::Forbidden(Forbidden::NotTheSender))
            ),
            "the recipient may not {what:?}"
        );
        for (who, id) in [(&carol, sent.id), (&alice, MessageId(sent.id.0 + 1000))] {
            assert!(
                matches!(
                    change(&store, who, id, &what).await,
                    Err(Error::NotFound(Entity::Message))
                ),
                "{} on {id}: not found",
                who.username
            );
        }
    }
    let window = MessageChange::Edit {
        body: "late".into(),
        not_before: Some(sent.created_at + chrono::Duration::seconds(1)),
    };
    assert!(matches!(
        change(&store, &alice, sent.id, &window).await,
        Err(Error::Forbidden(Forbidden::EditWindowClosed))
    ));
    let unchanged = store.message_for(bob.id, sent.id).await.unwrap().unwrap();
    assert_eq!(unchanged, sent, "refused changes change nothing");
    assert_eq!(unchanged.edited, None);

    let in_window = MessageChange::Edit {
        body: "hello".into(),
        not_before: Some(sent.created_at - chrono::Duration::seconds(60)),
    };
    let edited = change(&store, &alice, sent.id, &in_window).await.unwrap();
    assert_eq!(edited.message.body, "hello");
    assert_eq!(
        (edited.message.id, edited.message.created_at),
        (sent.id, sent.created_at)
    );
    let at = edited.message.edited.expect("an edit sets `edited`");
    assert!(at >= sent.created_at);
    assert!(!edited.message.deleted);
    assert!(edited.event.is_some(), "an edit is an event");
    for viewer in [&alice, &bob] {
        assert_eq!(
            store.message_for(viewer.id, sent.id).await.unwrap().as_ref(),
            Some(&edited.message)
        );
        let page = store
            .conversation_page(viewer.id, &carol.username, &PageRequest::latest(10))
            .await
            .unwrap();
        assert!(page.messages.is_empty());
        let mine = store
            .user_messages(viewer.id, &PageRequest::latest(10))
            .await
            .unwrap();
        assert_eq!(mine.messages, vec![edited.message.clone()]);
    }
    let page = store
        .conversation_page(bob.id, &alice.username, &PageRequest::latest(10))
        .await
        .unwrap();
    assert_eq!(page.messages, vec![edited.message.clone()]);
    let again = change(&store, &alice, sent.id, &edit("hello again"))
        .await
        .unwrap();
    assert_eq!(again.message.body, "hello again");
    assert!(again.message.edited >= Some(at));
}

/// A deleted message stays in its place in every history as a tombstone (same id, sender,
/// recipient and timestamp; empty body; `deleted`; not `edited`), pages and totals do not
/// change, deleting again succeeds without an event, and editing a tombstone is
/// [`Error::NotFound`].
pub async fn tombstones_keep_ids_and_order(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let mut sent = Vec::new();
    for i in 0..6 {
        let (from, to) = if i % 2 == 0 {
            (&alice, &bob)
        } else {
            (&bob, &alice)
        };
        sent.push(send(&store, from, to, &format!("secret {i}")).await);
    }
    let before = store
        .conversation_page(alice.id, &bob.username, &PageRequest::latest(100))
        .await
        .unwrap();
    change(&store, &alice, sent[2].id, &edit("edited first"))
        .await
        .unwrap();
    let mut expected: Vec<Message> = sent.clone();
    for i in [2usize, 3, 4] {
        let sender = if i % 2 == 0 { &alice } else { &bob };
        let gone = change(&store, sender, sent[i].id, &MessageChange::Delete)
            .await
            .unwrap();
        assert!(gone.event.is_some());
        expected[i] = sent[i].clone().into_tombstone();
        assert_eq!(gone.message, expected[i], "the tombstone of #{i}");
        assert!(gone.message.body.is_empty() && gone.message.deleted && gone.message.edited.is_none());
    }
    let latest = store.latest_position(alice.id).await.unwrap();
    let again = change(&store, &alice, sent[2].id, &MessageChange::Delete)
        .await
        .unwrap();
    assert_eq!(
        (again.message, again.event),
        (expected[2].clone(), None),
        "delete is idempotent"
    );
    assert_eq!(
        store.latest_position(alice.id).await.unwrap(),
        latest,
        "and stores nothing"
    );
    assert!(matches!(
        change(&store, &alice, sent[2].id, &edit("back")).await,
        Err(Error::NotFound(Entity::Message))
    ));
    assert!(
        matches!(
            change(&store, &bob, sent[2].id, &MessageChange::Delete).await,
            Err(Error::Forbidden(Forbidden::NotTheSender))
        ),
        "the recipient still may not, even a tombstone"
    );
    let newest_first: Vec<Message> = expected.iter().rev().cloned().collect();
    for viewer in [&alice, &bob] {
        let other = if viewer.id == alice.id { &bob } else { &alice };
        let page = store
            .conversation_page(viewer.id, &other.username, &PageRequest::latest(100))
            .await
            .unwrap();
        assert_eq!(page.messages, newest_first, "{}'s conversation", viewer.username);
        assert_eq!(page.total, before.total, "the total counts tombstones");
        let page = store
            .conversation_page(viewer.id, &other.username, &PageRequest::before(sent[4].id, 2))
            .await
            .unwrap();
        assert_eq!(page.messages, vec![expected[3].clone(), expected[2].clone()]);
        let mine = store
            .user_messages(viewer.id, &PageRequest::latest(100))
            .await
            .unwrap();
        assert_eq!(mine.messages, newest_first);
        let after = store.messages_after(viewer.id, sent[1].id, 100).await.unwrap();
        assert_eq!(after, expected[2..].to_vec());
        for (i, message) in expected.iter().enumerate() {
            assert_eq!(
                store.message_for(viewer.id, message.id).await.unwrap().as_ref(),
                Some(message),
                "message #{i}"
            );
        }
    }
}

/// Edits and deletions are durable events of both participants, once each (once for a note
/// to oneself), at the next position of each one's stream: `events_after` and the feed read
/// them back in position order, `latest_position` moves to them, each change reports each
/// participant's previous position. They render the message as it is now (an edit read
/// after a deletion shows the tombstone: no deleted text survives in an event). No change
/// moves an unread count or a marker; the inbox shows the newest message as it is now.
pub async fn changes_are_events_in_both_streams(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let first = send(&store, &alice, &bob, "one").await;
    let second = send(&store, &alice, &bob, "two").await;
    let note = send(&store, &alice, &alice, "note").await;
    let inbox_before = store
        .inbox(
            bob.id,
            &InboxRequest {
                before: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(inbox_before.unread_total, 2);
    let feed_start = store.latest_position(alice.id).await.unwrap();

    let edited = change(&store, &alice, first.id, &edit("one!")).await.unwrap();
    let ev = edited.event.clone().unwrap();
    assert_eq!(ev.recipient_id, bob.id);
    assert_eq!(ev.sender_previous, Position::from(note.id));
    assert_eq!(ev.recipient_previous, Position::from(second.id));
    assert!(ev.position > Position::from(note.id));
    assert_eq!(store.latest_position(alice.id).await.unwrap(), ev.position);
    assert_eq!(store.latest_position(bob.id).await.unwrap(), ev.position);

    let deleted = change(&store, &alice, second.id, &MessageChange::Delete)
        .await
        .unwrap();
    let dv = deleted.event.clone().unwrap();
    assert_eq!(
        (dv.sender_previous, dv.recipient_previous),
        (ev.position, ev.position)
    );
    let noted = change(&store, &alice, note.id, &edit("note!")).await.unwrap();
    let nv = noted.event.clone().unwrap();
    assert_eq!(
        (nv.recipient_id, nv.sender_previous, nv.recipient_previous),
        (alice.id, dv.position, dv.position)
    );
    assert_eq!(
        store.latest_position(bob.id).await.unwrap(),
        dv.position,
        "a note to self is alice's alone"
    );

    let inbox = store
        .inbox(
            bob.id,
            &InboxRequest {
                before: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(inbox.unread_total, 2, "changes never move unread counts");
    assert_eq!(inbox.conversations.len(), 1);
    assert_eq!(inbox.conversations[0].unread, 2);
    assert_eq!(
        inbox.conversations[0].last_message, deleted.message,
        "the preview shows the newest message deleted"
    );
    let alices = store
        .inbox(
            alice.id,
            &InboxRequest {
                before: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        alices.conversations[0].last_message, noted.message,
        "the note, edited"
    );

    let expect_bob = vec![
        StoredEvent::Message(edited.message.clone()),
        StoredEvent::Message(deleted.message.clone()),
        StoredEvent::Edit(ChangedMessage {
            position: ev.position,
            message: edited.message.clone(),
        }),
        StoredEvent::Delete(ChangedMessage {
            position: dv.position,
            message: deleted.message.clone(),
        }),
    ];
    assert_eq!(all_events(&store, bob.id).await, expect_bob, "bob's stream");
    let alices = all_events(&store, alice.id).await;
    assert_eq!(alices.len(), 6, "alice's: 3 messages, 3 changes, each once");
    assert_eq!(
        alices[5],
        StoredEvent::Edit(ChangedMessage {
            position: nv.position,
            message: noted.message.clone(),
        })
    );
    let tail = store.events_after(bob.id, ev.position, 10).await.unwrap();
    assert_eq!(tail, expect_bob[3..].to_vec(), "read after a position");

    let feed = store.feed_after(feed_start, 100).await.unwrap();
    let positions: Vec<Position> = feed.iter().map(StoredEvent::position).collect();
    assert_eq!(
        positions,
        vec![ev.position, dv.position, nv.position],
        "the feed, once each"
    );
    assert!(matches!(&feed[0], StoredEvent::Edit(c) if c.message == edited.message));
    assert!(matches!(&feed[1], StoredEvent::Delete(c) if c.message.deleted));

    // An edit read back after the message was deleted shows the tombstone.
    let later = send(&store, &bob, &alice, "oops").await;
    let e = change(&store, &bob, later.id, &edit("oops!"))
        .await
        .unwrap()
        .event
        .unwrap();
    change(&store, &bob, later.id, &MessageChange::Delete)
        .await
        .unwrap();
    let replay = store
        .events_after(alice.id, Position(e.position.0 - 1), 10)
        .await
        .unwrap();
    assert_eq!(replay.len(), 2);
    for event in &replay {
        match event {
            StoredEvent::Edit(c) | StoredEvent::Delete(c) => {
                assert_eq!(
                    c.message,
                    later.clone().into_tombstone(),
                    "no deleted text is replayed"
                )
            }
            other => panic!("expected changes, got {other:?}"),
        }
    }
}

/// Edits, deletions and sends from several writers at once: a reader following the
/// recipient's stream sees it in position order with nothing revealed late, every change is
/// in it, and the messages end as the last change left them.
pub async fn concurrent_changes_and_sends_reveal_positions_in_order(store: Arc<dyn Store>) {
    let bob = user(&store, "bob").await;
    let mut peers = Vec::new();
    for i in 0..4 {
        peers.push(user(&store, &format!("peer{i}")).await);
    }
    let done = Arc::new(AtomicBool::new(false));
    let reader = follow_stream(&store, &bob, &done);
    let mut writers = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let (store, bob, peer) = (store.clone(), bob.clone(), peer.clone());
        writers.push(tokio::spawn(async move {
            let mut finals = Vec::new();
            for n in 0..30 {
                let m = send(&store, &peer, &bob, &format!("{i}-{n}")).await;
                let last = match n % 3 {
                    0 => change(&store, &peer, m.id, &edit(&format!("{i}-{n} edited")))
                        .await
                        .unwrap(),
                    1 => change(&store, &peer, m.id, &MessageChange::Delete).await.unwrap(),
                    _ => Changed {
                        message: m,
                        event: None,
                    },
                };
                finals.push(last.message);
            }
            finals
        }));
    }
    let mut finals = Vec::new();
    for writer in writers {
        finals.extend(writer.await.unwrap());
    }
    done.store(true, Ordering::Release);
    let seen = reader.await.unwrap();
    let everything = all_events(&store, bob.id).await;
    let positions = |events: &[StoredEvent]| events.iter().map(StoredEvent::position).collect::<Vec<_>>();
    assert_eq!(
        positions(&seen),
        positions(&everything),
        "the reader saw bob's stream in order, with nothing revealed late"
    );
    let changes = everything
        .iter()
        .filter(|e| matches!(e, StoredEvent::Edit(_) | StoredEvent::Delete(_)))
        .count();
    assert_eq!(changes, 4 * 20, "every change is in bob's stream");
    for message in finals {
        assert_eq!(
            store.message_for(bob.id, message.id).await.unwrap(),
            Some(message)
        );
    }
}

/// What an export reads (`ChatService::export_page`): a user's whole history, tombstones
/// included, in pages of a bounded size walked down by `before`: every page within its
/// limit, newest first, each message once, none missing, across conversations.
pub async fn export_pages_through_a_large_history(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let mut expected = Vec::new();
    for i in 0..2_100 {
        let (from, to) = match i % 3 {
            0 => (&alice, &bob),
            1 => (&carol, &alice),
            _ => (&bob, &carol),
        };
        let m = send(&store, from, to, &format!("#{i}")).await;
        if from.id == alice.id || to.id == alice.id {
            expected.push(m);
        }
    }
    let gone = change(&store, &alice, expected[0].id, &MessageChange::Delete)
        .await
        .unwrap();
    expected[0] = gone.message;
    expected.reverse();
    let mut exported: Vec<Message> = Vec::new();
    let mut pages = 0;
    loop {
        let before = exported.last().map(|m| m.id);
        let page = match before {
            Some(before) => PageRequest::before(before, 250),
            None => PageRequest::latest(250),
        };
        let page = store.user_messages(alice.id, &page).await.unwrap();
        assert!(page.messages.len() <= 250, "a page holds at most its limit");
        if page.messages.is_empty() {
            break;
        }
        pages += 1;
        exported.extend(page.messages);
    }
    assert_eq!(pages, expected.len().div_ceil(250));
    assert_eq!(exported.len(), expected.len());
    assert!(
        exported == expected,
        "the whole history, newest first, once, tombstones included"
    );
}
