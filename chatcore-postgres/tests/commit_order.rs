//! Ids are handed out in commit order across processes, so catch-up by "last id seen" never
//! skips a message.
//!
//! - `a_plain_sequence_reveals_a_later_id_first` runs one interleaving (an uncommitted
//!   insert, then a committed one, a reader in between) against a plain `BIGSERIAL` table and
//!   against the store, with the same check: the sequence fails it (the reader sees id n+1
//!   while n is still to come, and a client resuming after n+1 would never get n), the store
//!   passes it (the later insert waits for the earlier commit).
//! - `reconnecting_reader_misses_nothing_under_concurrent_writers`: several stores (as several
//!   processes would) write while a client keeps reconnecting with its last id.
//! - `idempotency_key_race_across_processes_stores_once`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chatcore::{MessageId, NewMessage, Position, Store, User, Username};
use chatcore_postgres::PostgresStore;
use chatcore_postgres::testing::TestDatabase;
use sqlx::{ConnectOptions, PgConnection};

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

fn note(sender: &User, recipient: &str, body: String) -> NewMessage {
    NewMessage {
        sender: sender.clone(),
        recipient: name(recipient),
        body,
        idempotency_key: None,
    }
}

async fn connect(database: &TestDatabase) -> PgConnection {
    database.options().unwrap().connect().await.unwrap()
}

/// Waits (bounded) until `done()` or until a backend of `database` waits on a lock.
async fn until_finished_or_waiting_on_a_lock(
    observer: &mut PgConnection,
    database: &TestDatabase,
    done: impl Fn() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if done() {
            return;
        }
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(database.name())
        .fetch_one(&mut *observer)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the second insert neither finished nor waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a reader saw while the first insert was uncommitted, and every id at the end.
struct Seen {
    before_commit: Vec<i64>,
    at_end: Vec<i64>,
}

impl Seen {
    /// Ids a client resuming after the newest id it saw before the commit would never get.
    fn skipped(&self) -> Vec<i64> {
        let newest = self.before_commit.iter().copied().max().unwrap_or(0);
        self.at_end
            .iter()
            .copied()
            .filter(|id| *id < newest && !self.before_commit.contains(id))
            .collect()
    }
}

/// The interleaving on a plain sequence: another session's insert took id n and has not
/// committed; a second insert takes n+1 and commits; a reader looks; the first commits.
async fn plain_sequence(database: &TestDatabase) -> Seen {
    let mut setup = connect(database).await;
    sqlx::query("CREATE TABLE naive_messages (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&mut setup)
        .await
        .unwrap();
    let mut first = connect(database).await;
    sqlx::query("BEGIN").execute(&mut first).await.unwrap();
    sqlx::query("INSERT INTO naive_messages (body) VALUES ('first')")
        .execute(&mut first)
        .await
        .unwrap();
    let mut second = connect(database).await;
    sqlx::query("INSERT INTO naive_messages (body) VALUES ('second')")
        .execute(&mut second)
        .await
        .unwrap();
    let read = "SELECT id FROM naive_messages ORDER BY id";
    let before_commit = sqlx::query_scalar(read).fetch_all(&mut setup).await.unwrap();
    sqlx::query("COMMIT").execute(&mut first).await.unwrap();
    let at_end = sqlx::query_scalar(read).fetch_all(&mut setup).await.unwrap();
    Seen {
        before_commit,
        at_end,
    }
}

/// The same interleaving through the store: the first insert is another process's batch
/// (the store's own batch function, in a transaction left open), the second a send.
async fn store_sequence(database: &TestDatabase) -> Seen {
    let store = Arc::new(database.store(common::test_config()).await.unwrap());
    let alice = store.create_user(&name("alice")).await.unwrap();
    let bob = store.create_user(&name("bob")).await.unwrap();
    let mut first = connect(database).await;
    sqlx::query("BEGIN").execute(&mut first).await.unwrap();
    let first_id: i64 = sqlx::query_scalar(
        "SELECT message_id FROM chatcore_insert_messages($1, $2, $3, $4) WHERE outcome = 'stored'",
    )
    .bind(vec![alice.id.0])
    .bind(vec!["bob".to_owned()])
    .bind(vec!["first".to_owned()])
    .bind(vec![None::<Vec<u8>>])
    .fetch_one(&mut first)
    .await
    .unwrap();
    let second = {
        let store = store.clone();
        let alice = alice.clone();
        tokio::spawn(async move { store.insert_message(note(&alice, "bob", "second".into())).await })
    };
    let mut observer = connect(database).await;
    until_finished_or_waiting_on_a_lock(&mut observer, database, || second.is_finished()).await;
    let ids = |messages: Vec<chatcore::Message>| messages.iter().map(|m| m.id.0).collect::<Vec<_>>();
    let before_commit = ids(store.messages_after(bob.id, MessageId(0), 10).await.unwrap());
    assert!(
        !second.is_finished(),
        "the later send waits for the earlier id's commit"
    );
    sqlx::query("COMMIT").execute(&mut first).await.unwrap();
    let second = second.await.unwrap().unwrap();
    assert!(second.message.id.0 > first_id, "the later send got a larger id");
    assert_eq!(
        (second.sender_previous, second.recipient_previous),
        (Position(first_id), Position(first_id)),
        "the other process's message comes before it for both"
    );
    let at_end = ids(store.messages_after(bob.id, MessageId(0), 10).await.unwrap());
    Seen {
        before_commit,
        at_end,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sequence_reveals_a_later_id_first() {
    let database = TestDatabase::create(common::PREFIX).await.unwrap();
    let naive = plain_sequence(&database).await;
    assert_eq!(
        naive.before_commit,
        [2],
        "the committed later id is visible first"
    );
    assert_eq!(
        naive.skipped(),
        [1],
        "a client that resumed after id 2 never gets id 1: the check below catches a plain sequence"
    );

    let store = store_sequence(&database).await;
    assert!(
        store.skipped().is_empty(),
        "the store revealed {:?} before {:?}",
        store.before_commit,
        store.skipped()
    );
    assert_eq!(
        store.at_end.len(),
        2,
        "both messages are stored: {:?}",
        store.at_end
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_reader_misses_nothing_under_concurrent_writers() {
    const PROCESSES: usize = 3;
    const SENDERS: usize = 12;
    const EACH: usize = 100;
    let database = TestDatabase::create(common::PREFIX).await.unwrap();
    let config = chatcore_postgres::PostgresConfig {
        max_connections: 3,
        // Small batches: more transactions, more chances for a commit to overtake another.
        max_batch: 4,
        ..common::test_config()
    };
    let mut stores = Vec::new();
    for _ in 0..PROCESSES {
        stores.push(Arc::new(database.store(config.clone()).await.unwrap()));
    }
    let hub = stores[0].create_user(&name("hub")).await.unwrap();
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(stores[0].create_user(&name(&format!("s{i}"))).await.unwrap());
    }

    let writing = Arc::new(AtomicBool::new(true));
    let reader = {
        let store = database.store(config.clone()).await.unwrap();
        let writing = writing.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut last = MessageId(0);
            let mut seen = Vec::new();
            loop {
                let done = !writing.load(Ordering::Acquire);
                // A fresh "reconnect" each round: only the last id seen is carried over.
                let batch = store.messages_after(hub.id, last, 50).await.expect("catch up");
                if let Some(newest) = batch.last() {
                    last = newest.id;
                }
                let empty = batch.is_empty();
                seen.extend(batch.into_iter().map(|m| m.id));
                if done && empty {
                    return seen;
                }
                if empty {
                    // A polling client's pause between rounds, not a race timer.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };

    let writers: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, sender)| {
            let store = stores[i % PROCESSES].clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(EACH);
                for n in 0..EACH {
                    let inserted = store
                        .insert_message(note(&sender, "hub", format!("{} #{n}", sender.username)))
                        .await
                        .expect("send");
                    ids.push((inserted.message.id, inserted.recipient_previous));
                }
                ids
            })
        })
        .collect();
    let mut written = HashSet::new();
    let mut hub_previous = Vec::new();
    for writer in writers {
        for (id, previous) in writer.await.unwrap() {
            written.insert(id);
            hub_previous.push((id, previous));
        }
    }
    // Whichever process stored them, each of the hub's messages names the one before it.
    hub_previous.sort();
    let mut previous = Position::START;
    for (id, reported) in &hub_previous {
        assert_eq!(
            *reported, previous,
            "the hub's previous position for message {id}"
        );
        previous = Position::from(*id);
    }
    assert_eq!(stores[1].latest_position(hub.id).await.unwrap(), previous);
    writing.store(false, Ordering::Release);
    let seen = reader.await.unwrap();

    assert_eq!(written.len(), SENDERS * EACH);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "catch-up returns increasing ids"
    );
    let seen_set: HashSet<_> = seen.iter().copied().collect();
    let skipped: Vec<_> = written.difference(&seen_set).collect();
    assert!(
        skipped.is_empty(),
        "the reader skipped {} messages: {skipped:?}",
        skipped.len()
    );
    assert_eq!(seen_set, written, "saw exactly what was written");
}

/// Two stores (two "processes") sending with the same idempotency key at once store it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_race_across_processes_stores_once() {
    let database = TestDatabase::create(common::PREFIX).await.unwrap();
    let first = Arc::new(database.store(common::test_config()).await.unwrap());
    let second: Arc<PostgresStore> = Arc::new(database.store(common::test_config()).await.unwrap());
    let alice = first.create_user(&name("alice")).await.unwrap();
    first.create_user(&name("bob")).await.unwrap();
    for round in 0..20 {
        let key = format!("race-{round}");
        let send = |store: Arc<PostgresStore>| {
            let message = NewMessage {
                idempotency_key: Some(key.clone()),
                ..note(&alice, "bob", format!("round {round}"))
            };
            tokio::spawn(async move { store.insert_message(message).await })
        };
        let (a, b) = (send(first.clone()), send(second.clone()));
        let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
        assert_eq!(a.message, b.message, "both callers get the one stored message");
        assert!(a.replayed != b.replayed, "exactly one of them stored it");
    }
    let page = first
        .user_messages(alice.id, &chatcore::PageRequest::latest(100))
        .await
        .unwrap();
    assert_eq!(page.total, 20);
    assert_eq!(page.messages.len(), 20);
}
