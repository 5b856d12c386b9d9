//! Positions: catch-up after a position, each user's previous position, and the ordering
//! promise under concurrent writers (see [`crate::event`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// `messages_after` returns the user's later messages oldest first, bounded.
pub async fn catch_up_after_id(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let mut alices = Vec::new();
    for i in 0..30 {
        let m = match i % 3 {
            0 => send(&store, &alice, &bob, "ab").await,
            1 => send(&store, &carol, &alice, "ca").await,
            _ => {
                send(&store, &bob, &carol, "bc").await;
                continue;
            }
        };
        alices.push(m);
    }
    let everything = store.messages_after(alice.id, MessageId(0), 1000).await.unwrap();
    assert_eq!(everything, alices);
    let since = alices[5].id;
    let rest = store.messages_after(alice.id, since, 1000).await.unwrap();
    assert_eq!(rest, alices[6..].to_vec());
    let bounded = store.messages_after(alice.id, since, 4).await.unwrap();
    assert_eq!(bounded, alices[6..10].to_vec());
    let last = alices.last().unwrap().id;
    assert!(
        store
            .messages_after(alice.id, last, 1000)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The previous position an insert reports for `user` (a participant of `inserted`).
fn previous_for(inserted: &Inserted, sender: UserId, user: UserId) -> Position {
    if user == sender {
        inserted.sender_previous
    } else {
        inserted.recipient_previous
    }
}

/// Every message `user` sent or received, oldest first, read back in pages of `messages_after`.
async fn everything_of(store: &Arc<dyn Store>, user: UserId) -> Result<Vec<Message>> {
    let mut all: Vec<Message> = Vec::new();
    loop {
        let after = all.last().map_or(MessageId(0), |m| m.id);
        let page = store.messages_after(user, after, 500).await?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

/// Interleaved sends between a few users, notes to oneself and idempotent replays among
/// them, one at a time: every insert reports, for each participant, the position of that
/// user's message just before it as `messages_after` reads it back ([`Position::START`] for
/// their first; one value for both sides of a note to oneself), and `latest_position`
/// follows. A replay stores nothing and moves no one's position.
pub async fn previous_positions_link_each_users_events(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let dave = user(&store, "dave").await; // never takes part
    let everyone = [&alice, &bob, &carol, &dave];
    let mut latest: HashMap<UserId, Position> = everyone.iter().map(|u| (u.id, Position::START)).collect();
    // What each insert reported for each participant.
    let mut reported: HashMap<(UserId, MessageId), Position> = HashMap::new();
    let mut keyed: Vec<(User, User, String, Message)> = Vec::new();
    let pairs = [
        (&alice, &bob),
        (&bob, &alice),
        (&alice, &alice),
        (&carol, &bob),
        (&carol, &carol),
        (&alice, &carol),
        (&bob, &bob),
        (&carol, &alice),
        (&bob, &carol),
    ];
    for i in 0..72usize {
        // A replay of an earlier keyed send every 7th time, once there is one.
        if i % 7 == 6
            && let Some((from, to, key, first)) = keyed.get(i % keyed.len().max(1)).cloned()
        {
            let replay = send_keyed(&store, &from, &to, "again", Some(&key)).await;
            assert!(replay.replayed, "send #{i}: key {key} was used before");
            assert_eq!(
                replay.message, first,
                "send #{i}: the replay returns the first message"
            );
            for user in [from.id, to.id] {
                assert_eq!(
                    store.latest_position(user).await.unwrap(),
                    latest[&user],
                    "send #{i}: a replay moves no position"
                );
            }
            continue;
        }
        let (from, to) = pairs[(i * 5 + i / 9) % pairs.len()];
        let key = (i % 4 == 1).then(|| format!("key-{i}"));
        let inserted = send_keyed(&store, from, to, &format!("#{i}"), key.as_deref()).await;
        assert!(!inserted.replayed);
        let id = inserted.message.id;
        assert_eq!(
            inserted.sender_previous, latest[&from.id],
            "send #{i} ({} to {}): the sender's previous position",
            from.username, to.username
        );
        assert_eq!(
            inserted.recipient_previous, latest[&to.id],
            "send #{i} ({} to {}): the recipient's previous position",
            from.username, to.username
        );
        if from.id == to.id {
            assert_eq!(
                inserted.sender_previous, inserted.recipient_previous,
                "a note to oneself"
            );
        }
        for user in [from.id, to.id] {
            reported.insert((user, id), previous_for(&inserted, from.id, user));
            latest.insert(user, Position::from(id));
            assert_eq!(
                store.latest_position(user).await.unwrap(),
                Position::from(id),
                "send #{i}"
            );
        }
        if let Some(key) = key {
            keyed.push((from.clone(), to.clone(), key, inserted.message));
        }
    }
    for user in everyone {
        let read = everything_of(&store, user.id).await.unwrap();
        let mut previous = Position::START;
        for message in &read {
            assert_eq!(
                reported.get(&(user.id, message.id)),
                Some(&previous),
                "{}: the insert of message {} reported the wrong previous position",
                user.username,
                message.id
            );
            previous = Position::from(message.id);
        }
        let reported_for_user = reported.keys().filter(|(u, _)| *u == user.id).count();
        assert_eq!(
            read.len(),
            reported_for_user,
            "{}: every message read back",
            user.username
        );
        assert_eq!(
            store.latest_position(user.id).await.unwrap(),
            previous,
            "{}",
            user.username
        );
    }
    assert_eq!(latest[&dave.id], Position::START);
    let unknown = UserId(dave.id.0 + 1_000_000);
    assert_eq!(store.latest_position(unknown).await.unwrap(), Position::START);
}

/// One insert as the concurrent check records it.
#[derive(Debug, Clone)]
struct Recorded {
    sender: UserId,
    recipient: UserId,
    inserted: Inserted,
}

/// Writers sending at once to and from one hub user (and among themselves, and notes to self,
/// and idempotent retries) while a reader keeps catching up on the hub with the last id it
/// saw: the reader never meets an id below one it has seen and ends with every message of the
/// hub exactly once, and for every user the previous positions the inserts reported form one
/// chain through their messages in id order. See [`check_concurrent_positions`].
pub async fn concurrent_writers_never_reveal_a_lower_position(store: Arc<dyn Store>) {
    if let Err(failure) = check_concurrent_positions(store).await {
        panic!("{failure}");
    }
}

/// The check behind [`concurrent_writers_never_reveal_a_lower_position`], reporting the first
/// broken promise instead of panicking, so a test can show that it catches a store that hands
/// out positions out of commit order (chatcore's `tests/conformance.rs` does). Expects a
/// fresh store: it creates the users `hub` and `w0` to `w7`. Errors of the store itself are
/// failures too.
///
/// Eight writer tasks each send 32 messages: writer `t` to the hub, from the hub, to writer
/// `t + 1`, and a note from the hub to itself (even `t`) or a keyed send retried at once (odd
/// `t`). A reader task meanwhile calls `messages_after(hub, last_seen, 50)` in a loop, as a
/// client that keeps reconnecting would. A store whose positions do not follow commit order
/// lets the reader pass an id whose message appears later (it never sees it), and reports
/// a previous position that skips a message or names one twice.
pub async fn check_concurrent_positions(store: Arc<dyn Store>) -> std::result::Result<(), String> {
    const WRITERS: usize = 8;
    const EACH: usize = 32;
    let failed = |what: &str, e: Error| format!("{what}: {e}");
    let hub = store
        .create_user(&name("hub"))
        .await
        .map_err(|e| failed("creating the hub", e))?;
    let mut writers = Vec::with_capacity(WRITERS);
    for t in 0..WRITERS {
        writers.push(
            store
                .create_user(&name(&format!("w{t}")))
                .await
                .map_err(|e| failed("creating a writer", e))?,
        );
    }
    let writing_done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let done = writing_done.clone();
        let hub = hub.id;
        tokio::spawn(async move {
            let mut last = MessageId(0);
            let mut seen = Vec::new();
            loop {
                // Read the flag first: an empty read after every write finished is the end.
                let finished = done.load(Ordering::Acquire);
                let batch = store
                    .messages_after(hub, last, 50)
                    .await
                    .map_err(|e| failed("catching up", e))?;
                for message in &batch {
                    if message.id <= last {
                        return Err(format!(
                            "the reader saw message {} after message {last}",
                            message.id
                        ));
                    }
                    last = message.id;
                    seen.push(message.id);
                }
                if batch.is_empty() {
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
            let hub = hub.clone();
            let me = writers[t].clone();
            let next = writers[(t + 1) % WRITERS].clone();
            tokio::spawn(async move {
                let mut recorded = Vec::with_capacity(EACH);
                for i in 0..EACH {
                    let (from, to, key) = match i % 4 {
                        0 => (&me, &hub, None),
                        1 => (&hub, &me, None),
                        2 => (&me, &next, None),
                        _ if t % 2 == 0 => (&hub, &hub, None),
                        _ => (&me, &hub, Some(format!("{t}.{i}"))),
                    };
                    let new = NewMessage {
                        sender: from.clone(),
                        recipient: to.username.clone(),
                        body: format!("{t}.{i}"),
                        idempotency_key: key.clone(),
                    };
                    let inserted = store
                        .insert_message(new.clone())
                        .await
                        .map_err(|e| failed("sending", e))?;
                    if inserted.replayed {
                        return Err(format!("writer {t}: send {i} was reported as a replay"));
                    }
                    if key.is_some() {
                        let retry = store
                            .insert_message(new)
                            .await
                            .map_err(|e| failed("retrying a send", e))?;
                        if !retry.replayed || retry.message != inserted.message {
                            return Err(format!(
                                "writer {t}: the retry of send {i} stored a new message ({retry:?})"
                            ));
                        }
                    }
                    recorded.push(Recorded {
                        sender: from.id,
                        recipient: to.id,
                        inserted,
                    });
                }
                Ok::<_, String>(recorded)
            })
        })
        .collect();
    let mut recorded = Vec::with_capacity(WRITERS * EACH);
    let mut first_failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(mine)) => recorded.extend(mine),
            Ok(Err(failure)) => {
                first_failure.get_or_insert(failure);
            }
            Err(e) => {
                first_failure.get_or_insert(format!("a writer task panicked: {e}"));
            }
        }
    }
    writing_done.store(true, Ordering::Release);
    let seen = reader
        .await
        .map_err(|e| format!("the reader task panicked: {e}"))??;
    if let Some(failure) = first_failure {
        return Err(failure);
    }

    let ids: HashSet<MessageId> = recorded.iter().map(|r| r.inserted.message.id).collect();
    if ids.len() != recorded.len() {
        return Err("two sends got the same id".to_owned());
    }
    // Each user's messages in id order, with what their inserts reported for that user.
    let mut by_user: HashMap<UserId, Vec<(MessageId, Position)>> = HashMap::new();
    for r in &recorded {
        let id = r.inserted.message.id;
        by_user
            .entry(r.sender)
            .or_default()
            .push((id, r.inserted.sender_previous));
        if r.recipient != r.sender {
            by_user
                .entry(r.recipient)
                .or_default()
                .push((id, r.inserted.recipient_previous));
        } else if r.inserted.recipient_previous != r.inserted.sender_previous {
            return Err(format!(
                "note to self {id}: sender_previous {} but recipient_previous {}",
                r.inserted.sender_previous, r.inserted.recipient_previous
            ));
        }
    }
    for user in std::iter::once(&hub).chain(&writers) {
        let mut events = by_user.remove(&user.id).unwrap_or_default();
        events.sort_by_key(|(id, _)| *id);
        let expected: Vec<MessageId> = events.iter().map(|(id, _)| *id).collect();
        let stored: Vec<MessageId> = everything_of(&store, user.id)
            .await
            .map_err(|e| failed("reading back", e))?
            .iter()
            .map(|m| m.id)
            .collect();
        if stored != expected {
            return Err(format!(
                "{}: the store holds messages {stored:?}, the sends returned {expected:?}",
                user.username
            ));
        }
        let mut previous = Position::START;
        for (id, reported) in &events {
            if *reported != previous {
                return Err(format!(
                    "{}: message {id} reports previous position {reported}, but the message \
                     before it is {previous}",
                    user.username
                ));
            }
            previous = Position::from(*id);
        }
        let latest = store
            .latest_position(user.id)
            .await
            .map_err(|e| failed("reading a latest position", e))?;
        if latest != previous {
            return Err(format!(
                "{}: latest position {latest}, but the newest message is {previous}",
                user.username
            ));
        }
        if user.id == hub.id && seen != expected {
            let seen_set: HashSet<&MessageId> = seen.iter().collect();
            let missed: Vec<i64> = expected
                .iter()
                .filter(|id| !seen_set.contains(id))
                .map(|id| id.0)
                .collect();
            return Err(format!(
                "the hub's reader, catching up with the last id it saw, saw {} of {} messages \
                 and missed {} (first: {:?}): a message became visible after a larger id",
                seen.len(),
                expected.len(),
                missed.len(),
                &missed[..missed.len().min(5)]
            ));
        }
    }
    Ok(())
}

/// `latest_position` is the id of the user's newest message: [`Position::START`] before any
/// (and for an unknown user), moved by every message the user sends or receives (once by a
/// note to oneself), never by others' messages, a replay or a failed send.
pub async fn latest_position_is_the_newest_event(store: Arc<dyn Store>) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let everyone = [&alice, &bob, &carol];
    let latest = |u: &User| {
        let store = store.clone();
        let id = u.id;
        async move { store.latest_position(id).await.unwrap() }
    };
    for u in everyone {
        assert_eq!(
            latest(u).await,
            Position::START,
            "{} has no message yet",
            u.username
        );
    }
    assert_eq!(
        store
            .latest_position(UserId(carol.id.0 + 1_000_000))
            .await
            .unwrap(),
        Position::START,
        "an unknown user"
    );
    let first = send(&store, &alice, &bob, "hi").await;
    assert_eq!(latest(&alice).await, Position::from(first.id));
    assert_eq!(latest(&bob).await, Position::from(first.id));
    assert_eq!(latest(&carol).await, Position::START);
    let note = send(&store, &carol, &carol, "note").await;
    assert_eq!(latest(&carol).await, Position::from(note.id));
    assert_eq!(latest(&alice).await, Position::from(first.id), "others' messages");
    let keyed = send_keyed(&store, &alice, &carol, "once", Some("k"))
        .await
        .message;
    send(&store, &bob, &bob, "bob's note").await;
    let replay = send_keyed(&store, &alice, &carol, "once", Some("k")).await;
    assert!(replay.replayed);
    assert_eq!(latest(&alice).await, Position::from(keyed.id), "a replay");
    assert_eq!(latest(&carol).await, Position::from(keyed.id), "a replay");
    let failed = store
        .insert_message(NewMessage {
            sender: alice.clone(),
            recipient: name("nobody"),
            body: "lost".into(),
            idempotency_key: None,
        })
        .await;
    assert!(matches!(failed, Err(Error::NotFound(Entity::User))), "{failed:?}");
    assert_eq!(latest(&alice).await, Position::from(keyed.id), "a failed send");
    let mut newest: HashMap<UserId, Position> = HashMap::new();
    for i in 0..45usize {
        let from = everyone[i % 3];
        let to = everyone[(i / 3 + i) % 3];
        let m = send(&store, from, to, &format!("{i}")).await;
        newest.insert(from.id, Position::from(m.id));
        newest.insert(to.id, Position::from(m.id));
        for u in everyone {
            if let Some(&p) = newest.get(&u.id) {
                assert_eq!(latest(u).await, p, "{} after send #{i}", u.username);
            }
        }
    }
    for u in everyone {
        let read = everything_of(&store, u.id).await.unwrap();
        let last = read.last().map_or(Position::START, |m| Position::from(m.id));
        assert_eq!(
            latest(u).await,
            last,
            "{}: the newest message read back",
            u.username
        );
    }
}

/// `check_ready` answers `Ok` on an empty store and on one with users and messages, and
/// leaves nothing behind: no user, no message, no position moved (a readiness probe runs
/// every few seconds for the life of a server).
pub async fn check_ready_reads_without_a_trace(store: Arc<dyn Store>) {
    store
        .check_ready()
        .await
        .expect("an empty, working store is ready");
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let sent = send(&store, &alice, &bob, "hello").await;
    for _ in 0..3 {
        store.check_ready().await.expect("a working store is ready");
    }
    let everyone = store
        .list_users(&UserQuery {
            exclude: None,
            prefix: String::new(),
            after: None,
            limit: 10,
        })
        .await
        .expect("list users");
    assert_eq!(everyone.len(), 2, "check_ready created or removed users");
    for who in [&alice, &bob] {
        assert_eq!(
            store.latest_position(who.id).await.expect("latest position"),
            Position(sent.id.0),
            "check_ready moved {}'s position",
            who.username
        );
    }
}
