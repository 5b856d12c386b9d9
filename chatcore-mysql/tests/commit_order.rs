//! Ids are handed out in commit order across processes, so catch-up by "last id seen" never
//! skips a message. Several stores (each with its own pool and writer tasks, as several server
//! processes would have) write at once while a client keeps reconnecting with its last id.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chatcore::{MessageId, NewMessage, Position, Store, User, Username};
use chatcore_mysql::{MysqlConfig, MysqlStore};
use common::TestDatabase;
use sqlx::ConnectOptions;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_reader_misses_nothing_under_concurrent_writers() {
    const PROCESSES: usize = 4;
    const SENDERS: usize = 16;
    const EACH: usize = 120;
    let database = TestDatabase::create().await;
    let config = MysqlConfig {
        max_connections: 3,
        // Small batches: more transactions, more chances for a commit to overtake another.
        max_batch: 4,
        ..common::test_config()
    };
    let mut stores = Vec::new();
    for _ in 0..PROCESSES {
        stores.push(Arc::new(database.store_with(config.clone()).await));
    }
    let hub = stores[0].create_user(&name("hub")).await.unwrap();
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(stores[0].create_user(&name(&format!("s{i}"))).await.unwrap());
    }

    let writing = Arc::new(AtomicBool::new(true));
    let reader = {
        let store = database.store_with(config.clone()).await;
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

/// Waits (bounded) until `done()` or until a transaction on `database` waits for a lock.
async fn until_finished_or_waiting_on_a_lock(database: &TestDatabase, done: impl Fn() -> bool) {
    let mut observer = database.options().connect().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if done() {
            return;
        }
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.INNODB_TRX AS t \
             JOIN information_schema.PROCESSLIST AS p ON p.ID = t.trx_mysql_thread_id \
             WHERE t.trx_state = 'LOCK WAIT' AND p.DB = ?",
        )
        .bind(database.name())
        .fetch_one(&mut observer)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second insert neither finished nor waited for a lock"
        );
        // Polls the server's lock table; the wait itself is the event.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Another process that reserved an id and has not committed yet holds back every later id:
/// the store's insert waits for that commit and then gets a larger id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncommitted_id_holds_back_later_ones() {
    let database = TestDatabase::create().await;
    let store = Arc::new(database.store().await);
    let alice = store.create_user(&name("alice")).await.unwrap();
    let bob = store.create_user(&name("bob")).await.unwrap();
    store
        .insert_message(note(&alice, "bob", "first".into()))
        .await
        .unwrap();

    // The "other process": a transaction that took the next id the way every writer does.
    let mut other = database.options().connect().await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query(
        "INSERT INTO chatcore_counts (low_id, high_id, total) VALUES (0, 0, LAST_INSERT_ID(0) + 1) \
         ON DUPLICATE KEY UPDATE total = LAST_INSERT_ID(total + VALUES(total))",
    )
    .execute(&mut other)
    .await
    .unwrap();
    let (slow_id,): (i64,) = sqlx::query_as("SELECT CAST(LAST_INSERT_ID() AS SIGNED)")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert!(slow_id > 1, "the sequence row existed: {slow_id}");

    let pending = {
        let store = store.clone();
        let alice = alice.clone();
        tokio::spawn(async move { store.insert_message(note(&alice, "bob", "second".into())).await })
    };
    until_finished_or_waiting_on_a_lock(&database, || pending.is_finished()).await;
    assert!(
        !pending.is_finished(),
        "a later insert must wait for the earlier id's commit"
    );
    // Meanwhile a reader sees nothing past the first message.
    let visible = store.messages_after(bob.id, MessageId(0), 10).await.unwrap();
    assert_eq!(visible.len(), 1);

    sqlx::query(
        "INSERT INTO chatcore_messages (id, sender_id, recipient_id, conversation_low, conversation_high, \
         created_at, body) VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6), 'slow')",
    )
    .bind(slow_id)
    .bind(alice.id.0)
    .bind(bob.id.0)
    .bind(alice.id.0.min(bob.id.0))
    .bind(alice.id.0.max(bob.id.0))
    .execute(&mut other)
    .await
    .unwrap();
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    let second = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("insert proceeds after the commit")
        .unwrap()
        .unwrap();
    assert!(second.message.id.0 > slow_id, "the later insert got a larger id");
    assert_eq!(
        (second.sender_previous, second.recipient_previous),
        (Position(slow_id), Position(slow_id)),
        "the other process's message comes before it for both"
    );
    let all = store.messages_after(bob.id, MessageId(0), 10).await.unwrap();
    let bodies: Vec<_> = all.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["first", "slow", "second"]);
}

/// Two stores (two "processes") sending with the same idempotency key at once store it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_race_across_processes_stores_once() {
    let database = TestDatabase::create().await;
    let first = Arc::new(database.store().await);
    let second: Arc<MysqlStore> = Arc::new(database.store().await);
    let alice = first.create_user(&name("alice")).await.unwrap();
    first.create_user(&name("bob")).await.unwrap();
    for round in 0..20 {
        let key = format!("race-{round}");
        let send = |store: Arc<MysqlStore>| {
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
