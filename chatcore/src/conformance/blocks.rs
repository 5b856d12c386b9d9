//! Blocks between users ([`Store::set_block`]): sends and edits refused in both directions
//! while a block stands, nothing stored for a refused one, the block list, and the two reads
//! that join conversations and blocks ([`Store::reachable_peer`],
//! [`Store::conversation_peers`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use super::inbox::all_events;
use super::*;
use crate::Forbidden;

async fn block(store: &Arc<dyn Store>, blocker: &User, blocked: &str, on: bool) -> User {
    store
        .set_block(blocker.id, &name(blocked), on)
        .await
        .unwrap_or_else(|e| panic!("set_block({}, {blocked}, {on}): {e}", blocker.username))
}

fn is_blocked<T: std::fmt::Debug>(result: &Result<T>) -> bool {
    matches!(result, Err(Error::Forbidden(Forbidden::Blocked)))
}

/// What a refused send must leave untouched, for one user: their events, newest position,
/// inbox and message count.
#[derive(Debug, PartialEq)]
struct Trace {
    events: Vec<StoredEvent>,
    latest: Position,
    inbox: InboxPage,
    total: u64,
}

async fn trace(store: &Arc<dyn Store>, user: &User) -> Trace {
    Trace {
        events: all_events(store, user.id).await,
        latest: store.latest_position(user.id).await.unwrap(),
        inbox: store
            .inbox(
                user.id,
                &InboxRequest {
                    before: None,
                    limit: 50,
                },
            )
            .await
            .unwrap(),
        total: store
            .user_messages(user.id, &PageRequest::latest(1))
            .await
            .unwrap()
            .total,
    }
}

/// While alice blocks bob, bob's messages to alice and alice's to bob are refused with
/// [`Forbidden::Blocked`] (whatever case the name is written in) and leave no trace: no
/// message, no event, no position, no unread count, no feed entry. Others are not affected;
/// a replay of a key stored before the block still answers its message. Once alice unblocks
/// bob, messages flow again and link to the events before the block. A block by each side
/// needs both ended.
pub async fn blocks_refuse_sends_both_ways_and_store_nothing(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let keyed = send_keyed(&store, &bob, &alice, "before", Some("k1")).await;
    send(&store, &alice, &bob, "reply").await;

    let blocked = block(&store, &alice, "BOB", true).await;
    assert_eq!(blocked, bob, "set_block answers the blocked user, name as chosen");
    let feed_before = store.feed_after(Position::START, 100).await.unwrap();
    let (alice_before, bob_before) = (trace(&store, &alice).await, trace(&store, &bob).await);
    for (from, to) in [(&bob, "alice"), (&bob, "ALICE"), (&alice, "bob"), (&alice, "Bob")] {
        let refused = try_send_to(&store, from, to, "hello?").await;
        assert!(is_blocked(&refused), "{} to {to}: {refused:?}", from.username);
    }
    let replay = send_keyed(&store, &bob, &alice, "before", Some("k1")).await;
    assert!(
        replay.replayed,
        "a key stored before the block replays its message"
    );
    assert_eq!(replay.message, keyed.message);
    let page = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(10))
        .await
        .unwrap();
    assert_eq!(page.total, 2, "nothing was stored");
    assert_eq!(trace(&store, &alice).await, alice_before, "alice: no trace");
    assert_eq!(trace(&store, &bob).await, bob_before, "bob: no trace");
    assert_eq!(
        store.feed_after(Position::START, 100).await.unwrap(),
        feed_before,
        "the feed: no trace"
    );
    // Third parties are not affected, in either direction.
    send(&store, &bob, &carol, "b->c").await;
    send(&store, &carol, &alice, "c->a").await;
    send(&store, &alice, &carol, "a->c").await;

    // bob blocks alice too: alice's unblock alone does not open the way.
    block(&store, &bob, "alice", true).await;
    block(&store, &alice, "bob", false).await;
    assert!(is_blocked(&try_send_to(&store, &alice, "bob", "now?").await));
    assert!(is_blocked(&try_send_to(&store, &bob, "alice", "now?").await));
    block(&store, &bob, "alice", false).await;

    let bob_latest = store.latest_position(bob.id).await.unwrap();
    let alice_latest = store.latest_position(alice.id).await.unwrap();
    let again = send_keyed(&store, &bob, &alice, "again", None).await;
    assert!(!again.replayed);
    assert_eq!(
        (again.sender_previous, again.recipient_previous),
        (bob_latest, alice_latest),
        "the first message after the block links to the last events before it"
    );
    let back = send(&store, &alice, &bob, "welcome back").await;
    assert!(back.id > again.message.id);
    let page = store
        .conversation_page(bob.id, &name("alice"), &PageRequest::latest(10))
        .await
        .unwrap();
    assert_eq!(page.total, 4);
    assert_eq!(ids(&page.messages)[..2], [back.id.0, again.message.id.0]);
}

/// Blocking twice keeps one block, unblocking what is not blocked succeeds; the list is the
/// blocker's own, sorted by key (names as chosen), paged after a name written in any case.
pub async fn blocks_are_idempotent_and_listed_by_name(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "Bob").await;
    let carol = user(&store, "carol").await;
    let zed = user(&store, "Zed").await;
    let list = |after: Option<&str>, limit: u32| {
        let store = store.clone();
        let query = BlockQuery {
            after: after.map(name),
            limit,
        };
        async move { store.blocked_users(alice.id, &query).await.unwrap() }
    };
    assert!(list(None, 10).await.is_empty());
    for blocked in ["Zed", "bob", "carol", "BOB", "zed"] {
        block(&store, &alice, blocked, true).await;
    }
    assert_eq!(
        list(None, 10).await,
        vec![bob.clone(), carol.clone(), zed.clone()]
    );
    assert_eq!(list(None, 2).await, vec![bob.clone(), carol.clone()]);
    assert_eq!(list(Some("CAROL"), 2).await, vec![zed.clone()]);
    assert_eq!(list(Some("bob"), 1).await, vec![carol.clone()]);
    assert!(list(Some("zed"), 10).await.is_empty());
    assert!(
        store
            .blocked_users(
                bob.id,
                &BlockQuery {
                    after: None,
                    limit: 10
                }
            )
            .await
            .unwrap()
            .is_empty(),
        "blocks are the blocker's own"
    );
    for _ in 0..2 {
        assert_eq!(block(&store, &alice, "Carol", false).await, carol);
    }
    block(&store, &bob, "carol", false).await; // never blocked: nothing to end
    assert_eq!(list(None, 10).await, vec![bob.clone(), zed.clone()]);
    assert!(is_blocked(&try_send_to(&store, &zed, "alice", "hi").await));
    assert!(try_send_to(&store, &carol, "alice", "hi").await.is_ok());
}

/// An unknown name is [`Error::NotFound`] (blocking and unblocking), blocking oneself (in any
/// case) [`Error::Invalid`]; neither leaves a block behind.
pub async fn block_errors(store: Arc<dyn Store>) {
    let alice = user(&store, "Alice").await;
    for on in [true, false] {
        assert!(matches!(
            store.set_block(alice.id, &name("nobody"), on).await,
            Err(Error::NotFound(Entity::User))
        ));
        for me in ["alice", "ALICE"] {
            assert!(matches!(
                store.set_block(alice.id, &name(me), on).await,
                Err(Error::Invalid(_))
            ));
        }
    }
    assert!(matches!(
        store
            .set_block(UserId(alice.id.0 + 1000), &name("alice"), true)
            .await,
        Err(Error::NotFound(Entity::User))
    ));
    let query = BlockQuery {
        after: None,
        limit: 10,
    };
    assert!(store.blocked_users(alice.id, &query).await.unwrap().is_empty());
    let note = try_send_to(&store, &alice, "alice", "note to self").await;
    assert!(note.is_ok(), "notes to self are never blocked: {note:?}");
}

/// While a block stands (either way), neither side edits a message of their conversation
/// ([`Forbidden::Blocked`], nothing changed, no event); the recipient is still told they are
/// not the sender first. Deleting one's own message stays allowed. After the block, edits
/// work again.
pub async fn blocked_edits_are_refused_and_deletes_allowed(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let to_bob = send(&store, &alice, &bob, "a1").await;
    let to_alice = send(&store, &bob, &alice, "b1").await;
    let edit = |body: &str| MessageChange::Edit {
        body: body.to_owned(),
        not_before: None,
    };
    block(&store, &bob, "alice", true).await;
    let before = (trace(&store, &alice).await, trace(&store, &bob).await);
    for (who, id) in [(&alice, to_bob.id), (&bob, to_alice.id)] {
        let refused = store.change_message(who.id, id, &edit("changed")).await;
        assert!(is_blocked(&refused), "{}: {refused:?}", who.username);
    }
    assert!(matches!(
        store.change_message(bob.id, to_bob.id, &edit("x")).await,
        Err(Error::Forbidden(Forbidden::NotTheSender))
    ));
    assert_eq!(
        (trace(&store, &alice).await, trace(&store, &bob).await),
        before,
        "refused edits change nothing"
    );
    assert_eq!(
        store.message_for(bob.id, to_bob.id).await.unwrap(),
        Some(to_bob.clone())
    );
    let deleted = store
        .change_message(alice.id, to_bob.id, &MessageChange::Delete)
        .await
        .expect("deleting stays allowed while blocked");
    assert!(deleted.message.deleted && deleted.event.is_some());
    block(&store, &bob, "alice", false).await;
    let edited = store
        .change_message(bob.id, to_alice.id, &edit("b1, edited"))
        .await
        .expect("edits work again once unblocked");
    assert_eq!(edited.message.body, "b1, edited");
}

/// Sends in both directions race a block: every send that succeeded is in the history the
/// blocker reads right after the block is confirmed, nothing is stored after it, and every
/// send that starts after it is refused.
pub async fn no_send_lands_after_a_block_is_confirmed(store: Arc<dyn Store>) {
    const SENDERS_PER_SIDE: usize = 3;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let confirmed = Arc::new(AtomicBool::new(false));
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let mut senders = Vec::new();
    for n in 0..2 * SENDERS_PER_SIDE {
        let (from, to) = if n % 2 == 0 {
            (&bob, &alice)
        } else {
            (&alice, &bob)
        };
        let (store, from, to) = (store.clone(), from.clone(), to.clone());
        let (started, confirmed) = (started_tx.clone(), confirmed.clone());
        senders.push(tokio::spawn(async move {
            let mut stored = Vec::new();
            for i in 0.. {
                // Read before the send starts: a send that starts after the confirmation
                // must be refused; one already under way may still have been stored first.
                let after_confirmation = confirmed.load(Ordering::SeqCst);
                match try_send_to(&store, &from, to.username.as_str(), &format!("{n}/{i}")).await {
                    Ok(inserted) => {
                        assert!(
                            !after_confirmation,
                            "sender {n}: a send that started after the block was confirmed was stored"
                        );
                        stored.push(inserted.message.id);
                        if stored.len() == 1 {
                            let _ = started.send(());
                        }
                    }
                    Err(Error::Forbidden(Forbidden::Blocked)) => break,
                    Err(other) => panic!("send {n}/{i}: {other}"),
                }
                tokio::task::yield_now().await;
            }
            stored
        }));
    }
    drop(started_tx);
    for _ in 0..senders.len() {
        started.recv().await.expect("every sender stores a first message");
    }
    block(&store, &alice, "bob", true).await;
    confirmed.store(true, Ordering::SeqCst);
    let at_confirmation = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(1))
        .await
        .unwrap();
    let newest = at_confirmation.messages[0].id;
    let mut succeeded = 0u64;
    for sender in senders {
        let stored = sender.await.expect("sender task");
        assert!(
            stored.iter().all(|id| *id <= newest),
            "a message was stored after the block was confirmed"
        );
        succeeded += stored.len() as u64;
    }
    let after = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(1))
        .await
        .unwrap();
    assert_eq!(
        (after.total, after.messages[0].id),
        (at_confirmation.total, newest),
        "nothing stored after the block"
    );
    assert_eq!(after.total, succeeded, "every successful send is in the history");
}

/// [`Store::reachable_peer`]: the peer's id only with a conversation between the two and no
/// block either way; never oneself, never an unknown name.
pub async fn reachable_peer_needs_a_conversation_and_no_block(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "Bob").await;
    let carol = user(&store, "carol").await;
    let reach = |from: &User, to: &str| {
        let (store, from, to) = (store.clone(), from.id, name(to));
        async move { store.reachable_peer(from, &to).await.unwrap() }
    };
    assert_eq!(reach(&alice, "bob").await, None, "no conversation yet");
    assert_eq!(reach(&alice, "nobody").await, None);
    send(&store, &alice, &alice, "note").await;
    assert_eq!(reach(&alice, "alice").await, None, "never oneself");
    send(&store, &alice, &bob, "hi").await;
    assert_eq!(reach(&alice, "BOB").await, Some(bob.id));
    assert_eq!(reach(&bob, "Alice").await, Some(alice.id));
    assert_eq!(reach(&carol, "alice").await, None);
    assert_eq!(reach(&alice, "carol").await, None);
    block(&store, &bob, "alice", true).await;
    assert_eq!(reach(&alice, "bob").await, None, "blocked by the peer");
    assert_eq!(reach(&bob, "alice").await, None, "blocking the peer");
    block(&store, &bob, "alice", false).await;
    assert_eq!(reach(&alice, "bob").await, Some(bob.id));
    block(&store, &alice, "carol", true).await;
    assert_eq!(
        reach(&alice, "bob").await,
        Some(bob.id),
        "other blocks do not matter"
    );
}

/// [`Store::conversation_peers`]: exactly the listed users with a conversation with the
/// viewer (themself for notes to self), each once, unknown ids left out.
pub async fn conversation_peers_are_the_listed_users_with_a_conversation(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let dave = user(&store, "dave").await;
    let erin = user(&store, "erin").await;
    send(&store, &alice, &bob, "a->b").await;
    send(&store, &dave, &alice, "d->a").await;
    send(&store, &carol, &erin, "c->e").await;
    let peers = |viewer: &User, among: Vec<UserId>| {
        let (store, viewer) = (store.clone(), viewer.id);
        async move {
            let found = store.conversation_peers(viewer, &among).await.unwrap();
            let unique: BTreeSet<UserId> = found.iter().copied().collect();
            assert_eq!(unique.len(), found.len(), "each peer once");
            unique
        }
    };
    let everyone = vec![
        bob.id,
        carol.id,
        dave.id,
        alice.id,
        bob.id,
        erin.id,
        UserId(9_999),
    ];
    assert_eq!(
        peers(&alice, everyone.clone()).await,
        BTreeSet::from([bob.id, dave.id])
    );
    send(&store, &alice, &alice, "note").await;
    assert_eq!(
        peers(&alice, everyone.clone()).await,
        BTreeSet::from([alice.id, bob.id, dave.id])
    );
    assert_eq!(peers(&erin, everyone.clone()).await, BTreeSet::from([carol.id]));
    assert_eq!(peers(&bob, vec![carol.id, dave.id]).await, BTreeSet::new());
    assert_eq!(peers(&alice, Vec::new()).await, BTreeSet::new());
    // A block does not end a conversation: presence rules are the caller's.
    store.set_block(alice.id, &name("bob"), true).await.unwrap();
    assert!(peers(&alice, vec![bob.id]).await.contains(&bob.id));
}
