//! The inbox and read state: conversations by latest activity, unread counts kept at write
//! time, read markers that only move forward, and read events in each user's stream.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::store::{Conversation, InboxPage, InboxRequest, MarkedRead, ReadMarker, StoredEvent};

async fn inbox_page(store: &Arc<dyn Store>, user: &User, before: Option<MessageId>, limit: u32) -> InboxPage {
    store
        .inbox(user.id, &InboxRequest { before, limit })
        .await
        .expect("read inbox")
}

/// The whole inbox, read in pages of `limit`.
async fn whole_inbox(store: &Arc<dyn Store>, user: &User, limit: u32) -> Vec<Conversation> {
    let mut all: Vec<Conversation> = Vec::new();
    loop {
        let before = all.last().map(|c| c.last_message.id);
        let page = inbox_page(store, user, before, limit).await;
        assert!(
            page.conversations.len() <= limit as usize,
            "a page holds at most its limit"
        );
        if page.conversations.is_empty() {
            return all;
        }
        all.extend(page.conversations);
    }
}

async fn mark(store: &Arc<dyn Store>, reader: &User, peer: &User, up_to: MessageId) -> MarkedRead {
    store
        .mark_read(reader, &peer.username, up_to)
        .await
        .expect("mark read")
}

fn peers(conversations: &[Conversation]) -> Vec<&str> {
    conversations.iter().map(|c| c.peer.as_str()).collect()
}

/// Every durable event of `user`, oldest first, read back in pages of `events_after`.
/// A task reading `user`'s stream with `events_after` while writers run, until `done` is set
/// and it is caught up: every event it saw, in the order it saw them.
pub(crate) fn follow_stream(
    store: &Arc<dyn Store>,
    user: &User,
    done: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<StoredEvent>> {
    let (store, user, done) = (store.clone(), user.clone(), done.clone());
    tokio::spawn(async move {
        let mut seen: Vec<StoredEvent> = Vec::new();
        loop {
            let finished = done.load(Ordering::Acquire);
            let after = seen.last().map_or(Position::START, StoredEvent::position);
            let page = store.events_after(user.id, after, 50).await.unwrap();
            let empty = page.is_empty();
            seen.extend(page);
            if finished && empty {
                return seen;
            }
            tokio::task::yield_now().await;
        }
    })
}

pub(crate) async fn all_events(store: &Arc<dyn Store>, user: UserId) -> Vec<StoredEvent> {
    let mut all: Vec<StoredEvent> = Vec::new();
    loop {
        let after = all.last().map_or(Position::START, StoredEvent::position);
        let page = store.events_after(user, after, 7).await.expect("events after");
        assert!(page.len() <= 7, "events_after respects its limit");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Conversations come newest activity first, each with its newest message, the caller's
/// unread count (messages from the peer only) and no markers yet; the unread total covers
/// every conversation; pages of one walk the same list; a user with no conversation has an
/// empty inbox.
pub async fn inbox_lists_conversations_by_latest_activity(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "Bob").await;
    let carol = user(&store, "carol").await;
    let dave = user(&store, "dave").await;
    let erin = user(&store, "erin").await;
    send(&store, &bob, &alice, "b1").await;
    send(&store, &carol, &alice, "c1").await;
    let to_dave = send(&store, &alice, &dave, "a->d").await;
    send(&store, &carol, &alice, "c2").await;
    let last_bob = send(&store, &bob, &alice, "b2").await;

    let page = inbox_page(&store, &alice, None, 10).await;
    assert_eq!(peers(&page.conversations), ["Bob", "carol", "dave"]);
    assert_eq!(page.unread_total, 4);
    let bobs = &page.conversations[0];
    assert_eq!(bobs.last_message, last_bob);
    assert_eq!(
        (bobs.unread, bobs.read_up_to, bobs.peer_read_up_to),
        (2, None, None)
    );
    assert_eq!(page.conversations[1].unread, 2);
    assert_eq!(page.conversations[2].last_message, to_dave);
    assert_eq!(
        page.conversations[2].unread, 0,
        "alice wrote to dave: nothing unread"
    );

    let walked = whole_inbox(&store, &alice, 1).await;
    assert_eq!(walked, page.conversations, "pages of one walk the same list");

    let daves = inbox_page(&store, &dave, None, 10).await;
    assert_eq!(peers(&daves.conversations), ["alice"]);
    assert_eq!((daves.unread_total, daves.conversations[0].unread), (1, 1));
    let erins = inbox_page(&store, &erin, None, 10).await;
    assert_eq!(erins, InboxPage::default());
    let limited = inbox_page(&store, &alice, None, 2).await;
    assert_eq!(peers(&limited.conversations), ["Bob", "carol"]);
    assert_eq!(
        limited.unread_total, 4,
        "the total covers every conversation, not the page"
    );
}

/// Each side counts only what the other wrote after its marker; a marker on one's own message
/// covers the peer's messages before it; each side sees the other's marker.
pub async fn unread_counts_both_directions(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let a1 = send(&store, &alice, &bob, "a1").await;
    let a2 = send(&store, &alice, &bob, "a2").await;
    let b1 = send(&store, &bob, &alice, "b1").await;
    let a3 = send(&store, &alice, &bob, "a3").await;
    let unread = |page: &InboxPage| (page.unread_total, page.conversations[0].unread);
    assert_eq!(unread(&inbox_page(&store, &bob, None, 10).await), (3, 3));
    assert_eq!(unread(&inbox_page(&store, &alice, None, 10).await), (1, 1));

    // bob marks up to his own reply: alice's two messages before it are read.
    let marked = mark(&store, &bob, &alice, b1.id).await;
    assert_eq!((marked.unread, marked.read_up_to), (1, b1.id));
    assert!(marked.moved.is_some());
    let bobs = inbox_page(&store, &bob, None, 10).await;
    assert_eq!(unread(&bobs), (1, 1));
    assert_eq!(bobs.conversations[0].read_up_to, Some(b1.id));
    assert_eq!(bobs.conversations[0].peer_read_up_to, None);
    let alices = inbox_page(&store, &alice, None, 10).await;
    assert_eq!(
        alices.conversations[0].peer_read_up_to,
        Some(b1.id),
        "alice sees bob's marker"
    );
    assert_eq!(alices.conversations[0].read_up_to, None);

    let marked = mark(&store, &alice, &bob, a3.id).await;
    assert_eq!((marked.unread, marked.read_up_to), (0, a3.id));
    assert_eq!(unread(&inbox_page(&store, &alice, None, 10).await), (0, 0));
    let marked = mark(&store, &bob, &alice, a3.id).await;
    assert_eq!(marked.unread, 0);
    assert_eq!(unread(&inbox_page(&store, &bob, None, 10).await), (0, 0));
    let _ = (a1, a2);

    // New messages count again, on top of the markers.
    send(&store, &alice, &bob, "a4").await;
    send(&store, &alice, &bob, "a5").await;
    assert_eq!(unread(&inbox_page(&store, &bob, None, 10).await), (2, 2));
    assert_eq!(unread(&inbox_page(&store, &alice, None, 10).await), (0, 0));
}

/// An older or equal id changes nothing and stores no event; ids outside the conversation
/// and unknown peers are not found; a marker moves past the newest message only to a message.
pub async fn read_markers_only_move_forward(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(send(&store, &alice, &bob, &format!("m{i}")).await);
    }
    let elsewhere = send(&store, &alice, &carol, "not bob's").await;

    let moved = mark(&store, &bob, &alice, sent[3].id).await;
    assert_eq!((moved.unread, moved.read_up_to), (1, sent[3].id));
    let latest = store.latest_position(bob.id).await.unwrap();
    for older in [sent[1].id, sent[3].id] {
        let again = mark(&store, &bob, &alice, older).await;
        assert_eq!(
            (again.unread, again.read_up_to, again.moved),
            (1, sent[3].id, None),
            "marking {older} after {} changes nothing",
            sent[3].id
        );
    }
    assert_eq!(
        store.latest_position(bob.id).await.unwrap(),
        latest,
        "no event for a marker that did not move"
    );

    let not_found = |result: Result<MarkedRead>, entity: Entity, what: &str| match result {
        Err(Error::NotFound(found)) => assert_eq!(found, entity, "{what}"),
        other => panic!("{what}: expected NotFound({entity:?}), got {other:?}"),
    };
    not_found(
        store.mark_read(&bob, &alice.username, elsewhere.id).await,
        Entity::Message,
        "a message of another conversation",
    );
    not_found(
        store
            .mark_read(&bob, &alice.username, MessageId(elsewhere.id.0 + 1_000))
            .await,
        Entity::Message,
        "an id that does not exist",
    );
    not_found(
        store.mark_read(&bob, &name("nobody"), sent[4].id).await,
        Entity::User,
        "an unknown peer",
    );
    not_found(
        store.mark_read(&carol, &bob.username, sent[4].id).await,
        Entity::Message,
        "carol and bob have no conversation",
    );
    let bobs = inbox_page(&store, &bob, None, 10).await;
    assert_eq!(
        (bobs.unread_total, bobs.conversations[0].read_up_to),
        (1, Some(sent[3].id)),
        "failed marks change nothing"
    );
    let done = mark(&store, &bob, &alice, sent[4].id).await;
    assert_eq!((done.unread, done.read_up_to), (0, sent[4].id));
}

/// Notes to oneself are one conversation with oneself, never unread; marking it read is one
/// event in one stream.
pub async fn note_to_self_is_never_unread(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    send(&store, &bob, &alice, "from bob").await;
    let mut notes = Vec::new();
    for i in 0..3 {
        notes.push(send(&store, &alice, &alice, &format!("note {i}")).await);
    }
    let page = inbox_page(&store, &alice, None, 10).await;
    assert_eq!(peers(&page.conversations), ["alice", "bob"]);
    assert_eq!(page.conversations[0].unread, 0);
    assert_eq!(page.conversations[0].last_message, notes[2]);
    assert_eq!(page.unread_total, 1, "only bob's message is unread");

    let before = store.latest_position(alice.id).await.unwrap();
    let marked = mark(&store, &alice, &alice, notes[1].id).await;
    assert_eq!((marked.unread, marked.read_up_to), (0, notes[1].id));
    let moved = marked.moved.expect("the marker moved");
    assert_eq!(moved.peer_id, alice.id);
    assert_eq!((moved.reader_previous, moved.peer_previous), (before, before));
    assert_eq!(
        store.latest_position(alice.id).await.unwrap(),
        moved.marker.position
    );
    let page = inbox_page(&store, &alice, None, 10).await;
    let own = &page.conversations[0];
    assert_eq!(
        (own.read_up_to, own.peer_read_up_to),
        (Some(notes[1].id), Some(notes[1].id))
    );
    let reads = all_events(&store, alice.id)
        .await
        .into_iter()
        .filter(|e| matches!(e, StoredEvent::Read(_)))
        .count();
    assert_eq!(reads, 1, "one read event, listed once");
}

/// A marker that moves is an event of both users at a new position, after everything before
/// it in both streams; `events_after` returns messages and read events in position order,
/// bounded and from any position; the reported previous positions link each stream.
pub async fn read_events_take_their_place_in_both_streams(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let mut markers = Vec::new();
    for round in 0..6 {
        let m = send(&store, &alice, &bob, &format!("a{round}")).await;
        send(&store, &carol, &bob, &format!("c{round}")).await;
        send(&store, &alice, &carol, &format!("ac{round}")).await;
        let alice_before = store.latest_position(alice.id).await.unwrap();
        let bob_before = store.latest_position(bob.id).await.unwrap();
        let moved = mark(&store, &bob, &alice, m.id)
            .await
            .moved
            .expect("the marker moved");
        assert_eq!(
            moved.reader_previous, bob_before,
            "round {round}: bob's previous position"
        );
        assert_eq!(
            moved.peer_previous, alice_before,
            "round {round}: alice's previous position"
        );
        assert_eq!(moved.peer_id, alice.id);
        assert!(moved.marker.position > bob_before && moved.marker.position > alice_before);
        assert_eq!(
            (
                moved.marker.reader.as_str(),
                moved.marker.peer.as_str(),
                moved.marker.up_to
            ),
            ("bob", "alice", m.id)
        );
        assert_eq!(
            store.latest_position(bob.id).await.unwrap(),
            moved.marker.position
        );
        assert_eq!(
            store.latest_position(alice.id).await.unwrap(),
            moved.marker.position
        );
        markers.push(moved.marker);
    }
    for (who, expected_messages) in [(&alice, 12), (&bob, 12), (&carol, 12)] {
        let events = all_events(&store, who.id).await;
        let positions: Vec<Position> = events.iter().map(StoredEvent::position).collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{}: events in position order",
            who.username
        );
        let messages = events
            .iter()
            .filter(|e| matches!(e, StoredEvent::Message(_)))
            .count();
        assert_eq!(messages, expected_messages, "{}: every message", who.username);
        let reads: Vec<&ReadMarker> = events
            .iter()
            .filter_map(|e| match e {
                StoredEvent::Read(marker) => Some(marker),
                _ => None,
            })
            .collect();
        if who.id == carol.id {
            assert!(reads.is_empty(), "carol is not in the conversation that was read");
        } else {
            assert_eq!(
                reads,
                markers.iter().collect::<Vec<_>>(),
                "{}: every read event",
                who.username
            );
        }
        // From any position, the rest; bounded.
        let middle = positions[positions.len() / 2];
        let rest = store.events_after(who.id, middle, 1_000).await.unwrap();
        assert_eq!(rest, events[positions.len() / 2 + 1..].to_vec());
        let bounded = store.events_after(who.id, middle, 3).await.unwrap();
        assert_eq!(bounded, events[positions.len() / 2 + 1..][..3].to_vec());
        let last = *positions.last().unwrap();
        assert!(store.events_after(who.id, last, 10).await.unwrap().is_empty());
        assert_eq!(store.latest_position(who.id).await.unwrap(), last);
    }
}

/// alice sends 200 messages from several tasks while bob keeps marking read up to the newest
/// he can see: at the end bob's unread count is exactly the number of alice's messages after
/// his marker, and his total agrees.
pub async fn concurrent_sends_while_the_other_marks_read(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let done = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for task in 0..4 {
        let (store, alice, bob) = (store.clone(), alice.clone(), bob.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..50 {
                send(&store, &alice, &bob, &format!("{task}-{i}")).await;
            }
        }));
    }
    let marker = {
        let (store, alice, bob, done) = (store.clone(), alice.clone(), bob.clone(), done.clone());
        tokio::spawn(async move {
            let mut marks = 0;
            while !done.load(Ordering::Acquire) {
                let page = store
                    .conversation_page(bob.id, &alice.username, &PageRequest::latest(1))
                    .await
                    .unwrap();
                if let Some(newest) = page.messages.first() {
                    let marked = mark(&store, &bob, &alice, newest.id).await;
                    assert!(marked.read_up_to >= newest.id);
                    marks += 1;
                }
                tokio::task::yield_now().await;
            }
            marks
        })
    };
    for sender in senders {
        sender.await.unwrap();
    }
    done.store(true, Ordering::Release);
    let marks = marker.await.unwrap();
    assert!(marks > 0, "bob marked while alice sent");

    let page = inbox_page(&store, &bob, None, 10).await;
    let conversation = &page.conversations[0];
    let read_up_to = conversation.read_up_to.expect("bob marked");
    let all = store
        .conversation_page(bob.id, &alice.username, &PageRequest::latest(1_000))
        .await
        .unwrap();
    assert_eq!(all.total, 200);
    let after_marker = all.messages.iter().filter(|m| m.id > read_up_to).count() as u64;
    assert_eq!(
        conversation.unread, after_marker,
        "unread = alice's messages after the marker"
    );
    assert_eq!(page.unread_total, after_marker);
    let newest = all.messages[0].id;
    let last = mark(&store, &bob, &alice, newest).await;
    assert_eq!(last.unread, 0);
    assert_eq!(inbox_page(&store, &bob, None, 10).await.unread_total, 0);
}

/// 60 people have written to bob; while he pages his inbox seven at a time, some of them
/// write again. No conversation appears twice, each page is newest first, and every
/// conversation he did not see got a message after he started (so its event reaches him).
pub async fn inbox_pages_never_repeat_under_concurrent_sends(store: Arc<dyn Store>) {
    let bob = user(&store, "bob").await;
    let mut writers = Vec::new();
    for i in 0..60 {
        let writer = user(&store, &format!("writer{i:02}")).await;
        send(&store, &writer, &bob, "hello").await;
        writers.push(writer);
    }
    let start = store.latest_position(bob.id).await.unwrap();
    let sending = {
        let (store, bob, writers) = (store.clone(), bob.clone(), writers.clone());
        tokio::spawn(async move {
            for round in 0..40usize {
                let writer = &writers[(round * 17) % writers.len()];
                send(&store, writer, &bob, "again").await;
                tokio::task::yield_now().await;
            }
        })
    };
    let mut seen: Vec<Conversation> = Vec::new();
    loop {
        let before = seen.last().map(|c| c.last_message.id);
        let page = inbox_page(&store, &bob, before, 7).await;
        if page.conversations.is_empty() {
            break;
        }
        let ids: Vec<MessageId> = page.conversations.iter().map(|c| c.last_message.id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] > w[1]),
            "a page is newest first: {ids:?}"
        );
        if let Some(before) = before {
            assert!(ids[0] < before, "a page starts below its cursor");
        }
        seen.extend(page.conversations);
        tokio::task::yield_now().await;
    }
    sending.await.unwrap();
    let names: Vec<&str> = peers(&seen);
    let unique: HashSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "no conversation repeated: {names:?}");
    for writer in &writers {
        if unique.contains(writer.username.as_str()) {
            continue;
        }
        let newest = store
            .conversation_page(bob.id, &writer.username, &PageRequest::latest(1))
            .await
            .unwrap();
        assert!(
            Position::from(newest.messages[0].id) > start,
            "{} was skipped without new activity",
            writer.username
        );
    }
    let settled = whole_inbox(&store, &bob, 7).await;
    assert_eq!(settled.len(), 60, "every conversation once the sends are over");
}

/// Senders and a marker write while a reader follows bob's stream with `events_after`: what
/// the reader saw, page after page, is exactly bob's stream as read at the end (no position
/// revealed before a lower one of his).
pub async fn concurrent_marks_and_sends_reveal_positions_in_order(store: Arc<dyn Store>) {
    let bob = user(&store, "bob").await;
    let mut peers_of_bob = Vec::new();
    for i in 0..4 {
        peers_of_bob.push(user(&store, &format!("peer{i}")).await);
    }
    let done = Arc::new(AtomicBool::new(false));
    let reader = follow_stream(&store, &bob, &done);
    let mut writers = Vec::new();
    for (i, peer) in peers_of_bob.iter().enumerate() {
        let (store, bob, peer) = (store.clone(), bob.clone(), peer.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..40 {
                let to_bob = send(&store, &peer, &bob, &format!("{i}-{n}")).await;
                if n % 3 == 0 {
                    store.mark_read(&bob, &peer.username, to_bob.id).await.unwrap();
                }
                if n % 5 == 0 {
                    send(&store, &bob, &peer, "reply").await;
                    store.mark_read(&peer, &bob.username, to_bob.id).await.unwrap();
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
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
    let reads = everything
        .iter()
        .filter(|e| matches!(e, StoredEvent::Read(_)))
        .count();
    assert_eq!(
        reads,
        4 * (14 + 8),
        "bob's and his peers' marks are all in his stream"
    );
}
