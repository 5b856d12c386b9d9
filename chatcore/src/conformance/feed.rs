//! The host's event feed ([`Store::feed_after`]): every durable event once, in one global
//! position order that concurrent writers never break, and checkpoints that survive a
//! restart.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// The whole feed after `after`, read in pages of `page`.
async fn whole_feed(store: &Arc<dyn Store>, after: Position, page: u32) -> Result<Vec<StoredEvent>> {
    let mut all: Vec<StoredEvent> = Vec::new();
    loop {
        let from = all.last().map_or(after, StoredEvent::position);
        let events = store.feed_after(from, page).await?;
        if events.len() > page as usize {
            return Err(Error::bug(format!(
                "feed_after({from}, {page}) returned {} events",
                events.len()
            )));
        }
        if events.is_empty() {
            return Ok(all);
        }
        all.extend(events);
    }
}

fn positions(events: &[StoredEvent]) -> Vec<i64> {
    events.iter().map(|e| e.position().0).collect()
}

/// Messages between several users (a note to oneself among them), read markers that move,
/// an idempotent replay and a marker that does not move: the feed lists each stored event
/// exactly once (a message once, not once per participant), as it was stored, in position
/// order; any page size reads the same list; reading after a position gives what follows it.
pub async fn feed_lists_every_event_once_in_position_order(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    assert!(
        store.feed_after(Position::START, 10).await.unwrap().is_empty(),
        "an empty store has an empty feed"
    );
    let mut expected: Vec<StoredEvent> = Vec::new();
    let pairs = [
        (&alice, &bob),
        (&bob, &alice),
        (&alice, &alice),
        (&carol, &bob),
        (&bob, &carol),
    ];
    for i in 0..15usize {
        let (from, to) = pairs[i % pairs.len()];
        let key = format!("k{i}");
        let inserted = send_keyed(&store, from, to, &format!("#{i}"), Some(key.as_str())).await;
        expected.push(StoredEvent::Message(inserted.message.clone()));
        if i % 4 == 3 {
            let replay = send_keyed(&store, from, to, &format!("#{i}"), Some(key.as_str())).await;
            assert!(replay.replayed, "a replay stores nothing");
        }
        if i % 3 == 0 && from.id != to.id {
            let marked = store
                .mark_read(to, &from.username, inserted.message.id)
                .await
                .expect("mark read");
            let moved = marked.moved.expect("a marker that moves");
            expected.push(StoredEvent::Read(moved.marker));
            let again = store
                .mark_read(to, &from.username, inserted.message.id)
                .await
                .expect("mark read again");
            assert!(again.moved.is_none(), "a marker that stays stores no event");
        }
    }
    let note = send(&store, &carol, &carol, "note").await;
    expected.push(StoredEvent::Message(note.clone()));
    let marked = store
        .mark_read(&carol, &carol.username, note.id)
        .await
        .expect("mark a note read");
    expected.push(StoredEvent::Read(marked.moved.expect("moved").marker));

    let everything = store.feed_after(Position::START, 1_000).await.unwrap();
    assert_eq!(
        everything, expected,
        "every event once, as stored, in position order"
    );
    assert!(
        positions(&everything).windows(2).all(|w| w[0] < w[1]),
        "positions strictly increase: {:?}",
        positions(&everything)
    );
    for page in [1, 3, 7] {
        assert_eq!(
            whole_feed(&store, Position::START, page).await.unwrap(),
            expected,
            "pages of {page}"
        );
    }
    let middle = expected[expected.len() / 2].position();
    let rest = store.feed_after(middle, 1_000).await.unwrap();
    assert_eq!(rest, expected[expected.len() / 2 + 1..].to_vec());
    let bounded = store.feed_after(middle, 2).await.unwrap();
    assert_eq!(bounded, expected[expected.len() / 2 + 1..][..2].to_vec());
    let last = expected.last().unwrap().position();
    assert!(store.feed_after(last, 10).await.unwrap().is_empty());
    assert!(
        store
            .feed_after(Position(last.0 + 1_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.feed_after(Position::START, 0).await.unwrap().is_empty());
}

/// See [`check_feed_order`].
pub async fn feed_never_skips_under_concurrent_writers(store: Arc<dyn Store>) {
    if let Err(failure) = check_feed_order(store).await {
        panic!("{failure}");
    }
}

/// The check behind [`feed_never_skips_under_concurrent_writers`], reporting the first broken
/// promise instead of panicking, so a test can show it catches a store that reveals
/// positions out of commit order (chatcore's `tests/conformance.rs` does). Expects a fresh
/// store: it creates the users `f0` to `f5`.
///
/// Six writer tasks each store 30 events: messages to the next writer, notes to themselves,
/// and read markers that move. A consumer task meanwhile reads `feed_after(last_seen, 20)`
/// in a loop, as a host's consumer does. At the end it must have seen exactly the whole feed,
/// in order: a store that lets a larger position be seen before a smaller one makes the
/// consumer pass the smaller one, which it then never sees.
pub async fn check_feed_order(store: Arc<dyn Store>) -> std::result::Result<(), String> {
    const WRITERS: usize = 6;
    const EACH: usize = 30;
    let failed = |what: &str, e: Error| format!("{what}: {e}");
    let mut users = Vec::with_capacity(WRITERS);
    for t in 0..WRITERS {
        users.push(
            store
                .create_user(&name(&format!("f{t}")))
                .await
                .map_err(|e| failed("creating a writer", e))?,
        );
    }
    let writing_done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (store, done) = (store.clone(), writing_done.clone());
        tokio::spawn(async move {
            let mut seen: Vec<StoredEvent> = Vec::new();
            loop {
                // Read the flag first: an empty read after every write finished is the end.
                let finished = done.load(Ordering::Acquire);
                let after = seen.last().map_or(Position::START, StoredEvent::position);
                let events = store
                    .feed_after(after, 20)
                    .await
                    .map_err(|e| failed("reading the feed", e))?;
                if let Some(event) = events.iter().find(|e| e.position() <= after) {
                    return Err(format!(
                        "the feed returned position {} after {after}",
                        event.position()
                    ));
                }
                let empty = events.is_empty();
                seen.extend(events);
                if empty {
                    if finished {
                        return Ok(seen);
                    }
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let tasks: Vec<_> = (0..WRITERS)
        .map(|t| {
            let store = store.clone();
            let me = users[t].clone();
            let next = users[(t + 1) % WRITERS].clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    match i % 3 {
                        0 | 1 => {
                            let to = if i % 3 == 0 { &next } else { &me };
                            store
                                .insert_message(NewMessage {
                                    sender: me.clone(),
                                    recipient: to.username.clone(),
                                    body: format!("{t}.{i}"),
                                    idempotency_key: None,
                                })
                                .await
                                .map_err(|e| failed("sending", e))?;
                        }
                        _ => {
                            // The newest message of the conversation with `next`: the marker
                            // moves each time, a durable event of both.
                            let mine = store
                                .messages_after(me.id, MessageId(0), 1_000)
                                .await
                                .map_err(|e| failed("reading back", e))?;
                            if let Some(last) = mine
                                .iter()
                                .rev()
                                .find(|m| m.involves(&next.username) && next.id != me.id)
                            {
                                store
                                    .mark_read(&me, &next.username, last.id)
                                    .await
                                    .map_err(|e| failed("marking read", e))?;
                            }
                        }
                    }
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| format!("a writer panicked: {e}"))??;
    }
    writing_done.store(true, Ordering::Release);
    let seen = consumer
        .await
        .map_err(|e| format!("the consumer panicked: {e}"))??;
    let everything = whole_feed(&store, Position::START, 50)
        .await
        .map_err(|e| failed("reading the whole feed", e))?;
    let seen_positions = positions(&seen);
    if seen_positions != positions(&everything) {
        let missed: Vec<i64> = positions(&everything)
            .into_iter()
            .filter(|p| !seen_positions.contains(p))
            .collect();
        return Err(format!(
            "the consumer missed positions {missed:?} of {} (a larger position was visible before them)",
            everything.len()
        ));
    }
    let messages = everything
        .iter()
        .filter(|e| matches!(e, StoredEvent::Message(_)))
        .count();
    if messages != WRITERS * EACH * 2 / 3 {
        return Err(format!(
            "the feed holds {messages} messages, {} were sent",
            WRITERS * EACH * 2 / 3
        ));
    }
    Ok(())
}

/// Checkpoints: an unknown name loads [`Position::START`]; a save replaces the position
/// under its name only (a smaller one too); names are 1 to
/// [`crate::store::MAX_CHECKPOINT_NAME`] bytes, any UTF-8, compared exactly.
pub async fn checkpoints_are_saved_by_name(store: Arc<dyn Store>) {
    assert_eq!(store.load_checkpoint("webhooks").await.unwrap(), Position::START);
    store.save_checkpoint("webhooks", Position(42)).await.unwrap();
    store.save_checkpoint("search-index", Position(7)).await.unwrap();
    assert_eq!(store.load_checkpoint("webhooks").await.unwrap(), Position(42));
    assert_eq!(store.load_checkpoint("search-index").await.unwrap(), Position(7));
    assert_eq!(
        store.load_checkpoint("Webhooks").await.unwrap(),
        Position::START,
        "names are compared exactly"
    );
    store.save_checkpoint("webhooks", Position(40)).await.unwrap();
    assert_eq!(store.load_checkpoint("webhooks").await.unwrap(), Position(40));
    let longest = "é".repeat(crate::store::MAX_CHECKPOINT_NAME / 2);
    store.save_checkpoint(&longest, Position(i64::MAX)).await.unwrap();
    assert_eq!(store.load_checkpoint(&longest).await.unwrap(), Position(i64::MAX));
    let too_long = "x".repeat(crate::store::MAX_CHECKPOINT_NAME + 1);
    for bad in ["", too_long.as_str()] {
        assert!(matches!(
            store.save_checkpoint(bad, Position(1)).await,
            Err(Error::Invalid(_))
        ));
        assert!(matches!(store.load_checkpoint(bad).await, Err(Error::Invalid(_))));
    }
}

/// Not in [`crate::store_conformance_tests!`]: a backend with durable storage runs it with a
/// store of its own. Stores events and a checkpoint in `first`, drops it (its last handle:
/// `reopen` must not keep another), then asks `reopen` for a new store on the same
/// database, which must load the same checkpoint, read the same feed after it, and give the
/// next event a position after every earlier one.
pub async fn feed_resumes_after_a_restart<F, Fut>(first: Arc<dyn Store>, reopen: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let alice = user(&first, "alice").await;
    let bob = user(&first, "bob").await;
    let mut stored = Vec::new();
    for i in 0..6 {
        let message = send(&first, &alice, &bob, &format!("before {i}")).await;
        stored.push(StoredEvent::Message(message));
    }
    let marked = first
        .mark_read(&bob, &alice.username, MessageId(stored[3].position().0))
        .await
        .expect("mark read");
    stored.push(StoredEvent::Read(marked.moved.expect("moved").marker));
    let handled = stored[2].position();
    first.save_checkpoint("consumer", handled).await.unwrap();
    drop(first);

    let store = reopen().await;
    assert_eq!(store.load_checkpoint("consumer").await.unwrap(), handled);
    assert_eq!(
        store.feed_after(handled, 100).await.unwrap(),
        stored[3..].to_vec(),
        "the feed after the checkpoint survives the restart"
    );
    let after_restart = send(&store, &bob, &alice, "after").await;
    let last_before = stored.last().unwrap().position();
    assert!(
        Position::from(after_restart.id) > last_before,
        "a position after the restart ({}) follows every earlier one ({last_before})",
        after_restart.id
    );
    assert_eq!(
        store.feed_after(last_before, 100).await.unwrap(),
        [StoredEvent::Message(after_restart)]
    );
}
