//! Account removal ([`Store::remove_user`], [`Store::delete_sent_messages`]) and what it does
//! to the account's sessions and credentials ([`SessionStore`]), run against a whole
//! [`Backend`] by [`crate::account_conformance_tests!`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::inbox::all_events;
use super::*;
use crate::Forbidden;

fn stores(backend: &Arc<dyn Backend>) -> (Arc<dyn Store>, Arc<dyn SessionStore>) {
    (backend.clone(), backend.clone())
}

fn note(from: &User, to: &User, body: &str) -> NewMessage {
    NewMessage {
        sender: from.clone(),
        recipient: to.username.clone(),
        body: body.to_owned(),
        idempotency_key: None,
    }
}

/// Every message `user` sent or received, newest first, read in pages of 100.
async fn history(store: &Arc<dyn Store>, user: &User) -> Vec<Message> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = PageRequest {
            before,
            offset: 0,
            limit: 100,
        };
        let messages = store.user_messages(user.id, &page).await.unwrap().messages;
        let Some(last) = messages.last() else { break };
        before = Some(last.id);
        all.extend(messages);
    }
    all
}

/// A removed account: its sessions and password are gone, no session can be made for it nor
/// a password set, it sends nothing ([`Forbidden::AccountRemoved`]), it is not listed; its
/// name stays taken in any case and still finds it; its messages are untouched until
/// [`Store::delete_sent_messages`]. Removing it again is fine; an unknown id is not found.
pub async fn removed_accounts_keep_their_name_and_lose_everything_else(backend: Arc<dyn Backend>) {
    let (store, sessions) = stores(&backend);
    let alice = sessions
        .create_account(&name("alice"), "$argon2id$a")
        .await
        .unwrap();
    let bob = sessions
        .create_account(&name("bob"), "$argon2id$b")
        .await
        .unwrap();
    let later = Utc::now() + chrono::Duration::hours(1);
    for n in 1..=2u8 {
        sessions.create_session(&[n; 32], alice.id, later).await.unwrap();
    }
    sessions.create_session(&[9; 32], bob.id, later).await.unwrap();
    let sent = send(&store, &alice, &bob, "from alice").await;
    let received = send(&store, &bob, &alice, "to alice").await;

    store.remove_user(alice.id).await.unwrap();
    let now = Utc::now();
    for n in 1..=2u8 {
        assert_eq!(
            sessions.session_user(&[n; 32], now).await.unwrap(),
            None,
            "session {n}"
        );
    }
    assert!(
        sessions.session_user(&[9; 32], now).await.unwrap().is_some(),
        "bob's session stays"
    );
    let credentials = sessions
        .credentials(&name("alice"))
        .await
        .unwrap()
        .expect("still known");
    assert_eq!(
        (credentials.user, credentials.password_hash),
        (alice.clone(), None)
    );
    assert!(matches!(
        sessions.create_session(&[3; 32], alice.id, later).await,
        Err(Error::NotFound(Entity::User))
    ));
    assert!(matches!(
        sessions.set_password_hash(&name("alice"), "$argon2id$new").await,
        Err(Error::NotFound(Entity::User))
    ));
    for taken in ["alice", "ALICE"] {
        assert!(
            matches!(store.create_user(&name(taken)).await, Err(Error::Conflict(_))),
            "{taken}"
        );
        assert!(
            matches!(
                sessions.create_account(&name(taken), "$argon2id$x").await,
                Err(Error::Conflict(_))
            ),
            "{taken}"
        );
    }
    assert_eq!(
        store.find_user(&name("Alice")).await.unwrap(),
        Some(alice.clone())
    );
    let everyone = UserQuery {
        exclude: None,
        prefix: String::new(),
        after: None,
        limit: 10,
    };
    let listed: Vec<User> = store.list_users(&everyone).await.unwrap();
    assert_eq!(listed, vec![bob.clone()], "a removed user is not listed");
    let prefixed = UserQuery {
        prefix: "al".into(),
        ..everyone
    };
    assert!(store.list_users(&prefixed).await.unwrap().is_empty());
    assert!(matches!(
        store.insert_message(note(&alice, &bob, "still here?")).await,
        Err(Error::Forbidden(Forbidden::AccountRemoved))
    ));
    // Untouched until deleted, and both still read them.
    for viewer in [&alice, &bob] {
        for message in [&sent, &received] {
            let read = store.message_for(viewer.id, message.id).await.unwrap();
            assert_eq!(read.as_ref(), Some(message));
        }
    }
    // Bob still writes to them and reads the conversation by their name.
    let page = store
        .conversation_page(bob.id, &name("alice"), &PageRequest::latest(10))
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    store.remove_user(alice.id).await.unwrap();
    assert!(matches!(
        store.remove_user(UserId(1_000_000)).await,
        Err(Error::NotFound(Entity::User))
    ));
}

/// [`Store::delete_sent_messages`] tombstones the sender's messages oldest first, at most
/// `limit` at a time after the cursor, skipping tombstones; each is a durable delete event of
/// both participants; messages they received are untouched; an empty answer ends it.
pub async fn deleting_sent_messages_pages_oldest_first_and_skips_tombstones(backend: Arc<dyn Backend>) {
    let (store, _) = stores(&backend);
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let mut sent = Vec::new();
    for n in 0..7 {
        let to = if n % 2 == 0 { &bob } else { &carol };
        sent.push(send(&store, &alice, to, &format!("secret {n}")).await);
        send(&store, to, &alice, &format!("reply {n}")).await;
    }
    let note_to_self = send(&store, &alice, &alice, "note").await;
    sent.push(note_to_self);
    // One deleted by hand already: skipped, no second event.
    store
        .change_message(alice.id, sent[2].id, &MessageChange::Delete)
        .await
        .unwrap();
    let bob_before = store.latest_position(bob.id).await.unwrap();
    let mut after = MessageId(0);
    let mut deleted = Vec::new();
    loop {
        let batch = store.delete_sent_messages(alice.id, after, 3).await.unwrap();
        assert!(batch.len() <= 3);
        let Some(last) = batch.last() else { break };
        after = last.message.id;
        for changed in batch {
            assert!(changed.message.deleted && changed.message.body.is_empty());
            let event = changed.event.as_ref().expect("a deletion is an event");
            assert!(event.position > Position::from(changed.message.id));
            deleted.push(changed);
        }
    }
    let expected: Vec<MessageId> = sent.iter().filter(|m| m.id != sent[2].id).map(|m| m.id).collect();
    let got: Vec<MessageId> = deleted.iter().map(|c| c.message.id).collect();
    assert_eq!(
        got, expected,
        "oldest first, each once, the earlier tombstone skipped"
    );
    assert!(
        store
            .delete_sent_messages(alice.id, MessageId(0), 3)
            .await
            .unwrap()
            .is_empty()
    );
    // Every message alice sent is a tombstone in every history; what she received is not.
    for viewer in [&alice, &bob, &carol] {
        for message in history(&store, viewer).await {
            assert_eq!(message.deleted, message.sender == alice.username, "{message:?}");
            assert_eq!(message.body.is_empty(), message.deleted, "{message:?}");
        }
    }
    // Bob's stream got one delete event per message of alice's to him (not the one deleted
    // before), in order, with the tombstone.
    let events = all_events(&store, bob.id).await;
    let tombstones: Vec<MessageId> = events
        .iter()
        .filter(|event| event.position() > bob_before)
        .map(|event| match event {
            StoredEvent::Delete(changed) => {
                assert!(changed.message.deleted && changed.message.body.is_empty());
                changed.message.id
            }
            other => panic!("only deletions happened: {other:?}"),
        })
        .collect();
    assert_eq!(tombstones, vec![sent[0].id, sent[4].id, sent[6].id]);
    // Nothing for an unknown sender.
    assert!(
        store
            .delete_sent_messages(UserId(1_000_000), MessageId(0), 3)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Removal and deletion while the account sends from several tasks: once
/// [`Store::remove_user`] returned, every send is refused, and once the deletion has paged
/// to its end, no message of theirs is left with a body.
pub async fn removal_under_concurrent_sends_leaves_no_body(backend: Arc<dyn Backend>) {
    let (store, _) = stores(&backend);
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let stored = Arc::new(AtomicU64::new(0));
    let removed = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|task| {
            let (store, alice, bob, stored, removed) = (
                store.clone(),
                alice.clone(),
                bob.clone(),
                stored.clone(),
                removed.clone(),
            );
            tokio::spawn(async move {
                for n in 0.. {
                    let removed_before = removed.load(Ordering::SeqCst);
                    match store
                        .insert_message(note(&alice, &bob, &format!("{task}/{n}")))
                        .await
                    {
                        Ok(_) => {
                            assert!(!removed_before, "a send started after the removal was stored");
                            stored.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Error::Forbidden(Forbidden::AccountRemoved)) => return,
                        Err(other) => panic!("send failed: {other}"),
                    }
                }
            })
        })
        .collect();
    while stored.load(Ordering::SeqCst) < 50 {
        tokio::task::yield_now().await;
    }
    store.remove_user(alice.id).await.unwrap();
    removed.store(true, Ordering::SeqCst);
    let mut after = MessageId(0);
    loop {
        let batch = store.delete_sent_messages(alice.id, after, 16).await.unwrap();
        let Some(last) = batch.last() else { break };
        after = last.message.id;
    }
    for task in senders {
        task.await.expect("sender task");
    }
    let history = history(&store, &bob).await;
    assert_eq!(history.len() as u64, stored.load(Ordering::SeqCst));
    let left: Vec<&Message> = history
        .iter()
        .filter(|m| !m.deleted || !m.body.is_empty())
        .collect();
    assert!(
        left.is_empty(),
        "{} messages kept their body: {:?}",
        left.len(),
        left.first()
    );
}

fn refused_as(result: Result<Inserted>, expected: Forbidden) -> bool {
    matches!(result, Err(Error::Forbidden(why)) if why == expected)
}

/// Removal and blocks together: a removed sender's sends are refused as removed, to a user
/// they block or who blocks them too (removal comes first); sends to them from a user either
/// side of a block are refused as blocked; their block list stays; deleting their sent
/// messages is never refused for a block; users outside the blocks are not touched.
pub async fn removal_and_blocks_refuse_each_their_sends(backend: Arc<dyn Backend>) {
    let (store, _) = stores(&backend);
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let to_bob = send(&store, &alice, &bob, "before").await;
    let to_carol = send(&store, &alice, &carol, "before").await;
    store.set_block(alice.id, &name("bob"), true).await.unwrap();
    store.set_block(carol.id, &name("ALICE"), true).await.unwrap();
    for peer in [&bob, &carol] {
        assert!(
            refused_as(
                store.insert_message(note(&alice, peer, "blocked")).await,
                Forbidden::Blocked
            ),
            "{peer:?}"
        );
    }
    store.remove_user(alice.id).await.unwrap();
    for peer in [&bob, &carol] {
        assert!(
            refused_as(
                store.insert_message(note(&alice, peer, "after")).await,
                Forbidden::AccountRemoved
            ),
            "from the removed user to {peer:?}"
        );
        assert!(
            refused_as(
                store.insert_message(note(peer, &alice, "to her")).await,
                Forbidden::Blocked
            ),
            "from {peer:?} to the removed user"
        );
    }
    send(&store, &bob, &carol, "unblocked pair").await;
    let query = BlockQuery {
        after: None,
        limit: 10,
    };
    assert_eq!(
        store.blocked_users(alice.id, &query).await.unwrap(),
        vec![bob.clone()]
    );
    assert_eq!(
        store.blocked_users(carol.id, &query).await.unwrap(),
        vec![alice.clone()]
    );

    let deleted = store
        .delete_sent_messages(alice.id, MessageId(0), 10)
        .await
        .unwrap();
    assert_eq!(
        deleted.iter().map(|c| c.message.id).collect::<Vec<_>>(),
        vec![to_bob.id, to_carol.id]
    );
    for changed in &deleted {
        assert!(changed.message.deleted && changed.message.body.is_empty());
        assert!(changed.event.is_some(), "a block does not refuse a deletion");
    }
    assert!(
        store
            .delete_sent_messages(alice.id, to_carol.id, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The same under concurrent sends, so a backend that gathers sends into batches meets a
/// removal, blocked pairs and free pairs in one batch: each send gets its own answer (a send
/// of the removed user to a user she blocks is blocked until the removal and refused as
/// removed once it has returned; a blocked pair is always refused; a free pair always
/// stored), and nothing of a refused send is stored.
pub async fn removal_and_blocks_under_concurrent_sends(backend: Arc<dyn Backend>) {
    let (store, _) = stores(&backend);
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let dave = user(&store, "dave").await;
    let erin = user(&store, "erin").await;
    let frank = user(&store, "frank").await;
    store.set_block(alice.id, &name("bob"), true).await.unwrap();
    store.set_block(dave.id, &name("carol"), true).await.unwrap();
    let removed = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    // Sends stored by alice, then sends started after the removal, per task.
    let stored = Arc::new(AtomicU64::new(0));
    let after: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    // (sender, recipient): alice to bob (blocked), alice to erin (free until the removal),
    // carol to dave (blocked), erin to frank (free).
    let pairs = [(&alice, &bob), (&alice, &erin), (&carol, &dave), (&erin, &frank)];
    let tasks: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(task, (from, to))| {
            let (store, from, to) = (store.clone(), from.clone(), to.clone());
            let (removed, done, stored, after) =
                (removed.clone(), done.clone(), stored.clone(), after.clone());
            tokio::spawn(async move {
                let mut kept = 0u64;
                for n in 0.. {
                    if done.load(Ordering::SeqCst) {
                        return kept;
                    }
                    let removed_before = removed.load(Ordering::SeqCst);
                    let result = store
                        .insert_message(note(&from, &to, &format!("{task}/{n}")))
                        .await;
                    match (task, result) {
                        (0 | 1, Err(Error::Forbidden(Forbidden::AccountRemoved))) => {}
                        (0, Err(Error::Forbidden(Forbidden::Blocked))) => {
                            assert!(!removed_before, "refused as blocked after the removal")
                        }
                        (1, Ok(_)) => {
                            assert!(!removed_before, "a send started after the removal was stored");
                            stored.fetch_add(1, Ordering::SeqCst);
                        }
                        (2, Err(Error::Forbidden(Forbidden::Blocked))) => {}
                        (3, Ok(_)) => kept += 1,
                        (task, other) => panic!("task {task}: unexpected answer {other:?}"),
                    }
                    if removed_before {
                        after[task].fetch_add(1, Ordering::SeqCst);
                    }
                    // A store that answers without waiting (memory) would otherwise keep
                    // this worker thread from the other tasks.
                    tokio::task::yield_now().await;
                }
                unreachable!("the loop ends when told")
            })
        })
        .collect();
    let any_ended = |tasks: &[tokio::task::JoinHandle<u64>]| tasks.iter().any(|t| t.is_finished());
    while stored.load(Ordering::SeqCst) < 20 && !any_ended(&tasks) {
        tokio::task::yield_now().await;
    }
    store.remove_user(alice.id).await.unwrap();
    removed.store(true, Ordering::SeqCst);
    while after.iter().any(|n| n.load(Ordering::SeqCst) < 5) && !any_ended(&tasks) {
        tokio::task::yield_now().await;
    }
    done.store(true, Ordering::SeqCst);
    let mut kept = 0;
    for task in tasks {
        kept += task.await.expect("sender task");
    }
    let count = |a: &User, b: &User| {
        let store = store.clone();
        let (a, b) = (a.id, b.username.clone());
        async move {
            store
                .conversation_page(
                    a,
                    &b,
                    &PageRequest {
                        before: None,
                        offset: 0,
                        limit: 1,
                    },
                )
                .await
                .unwrap()
                .total
        }
    };
    assert_eq!(
        count(&alice, &bob).await,
        0,
        "nothing of a blocked send is stored"
    );
    assert_eq!(
        count(&carol, &dave).await,
        0,
        "nothing of a blocked send is stored"
    );
    assert_eq!(count(&alice, &erin).await, stored.load(Ordering::SeqCst));
    assert_eq!(count(&erin, &frank).await, kept);
}
