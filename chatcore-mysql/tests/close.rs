//! Writers keep a spare connection between batches; that must never hold up `close()` or
//! readers on a small pool.

mod common;

use std::time::Duration;

use chatcore::{Backend, NewMessage, Store, Username};
use chatcore_mysql::MysqlConfig;
use common::TestDatabase;

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

async fn send_a_few(config: MysqlConfig) -> (TestDatabase, chatcore_mysql::MysqlStore) {
    let database = TestDatabase::create().await;
    let store = database.store_with(config).await;
    let alice = store.create_user(&name("alice")).await.unwrap();
    store.create_user(&name("bob")).await.unwrap();
    for i in 0..5 {
        store
            .insert_message(NewMessage {
                sender: alice.clone(),
                recipient: name("bob"),
                body: format!("hello {i}"),
                idempotency_key: None,
            })
            .await
            .unwrap();
    }
    (database, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_closes_the_writers_spare_connection_at_once() {
    let config = MysqlConfig {
        // Long enough that only the close signal can free the spare connection in time.
        ping_if_idle_for: Duration::from_secs(60),
        ..common::test_config()
    };
    let (_database, store) = send_a_few(config).await;
    tokio::time::timeout(Duration::from_secs(5), async {
        store.close().await.unwrap();
        // Every connection is closed, the writers' spare too (it goes back as soon as the
        // pool starts closing, not after `ping_if_idle_for`).
        while store.pool().size() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("close() closes every connection while the writers are idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_connection_pool_serves_reads_right_after_sends() {
    let config = MysqlConfig {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(3),
        ping_if_idle_for: Duration::from_secs(60),
        ..common::test_config()
    };
    let (_database, store) = send_a_few(config).await;
    let found = tokio::time::timeout(Duration::from_secs(2), store.find_user(&name("bob")))
        .await
        .expect("a read does not wait for an idle writer");
    assert!(found.unwrap().is_some());
    store.close().await.unwrap();
}

/// `close` lets a send already made finish (here one waiting inside its transaction for the id
/// sequence another process holds), and every call after it is `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_lets_sends_in_flight_finish_and_refuses_later_calls() {
    use sqlx::ConnectOptions;

    let database = TestDatabase::create().await;
    let store = std::sync::Arc::new(database.store().await);
    let alice = store.create_user(&name("alice")).await.unwrap();
    store.create_user(&name("bob")).await.unwrap();
    let send = |body: &str| NewMessage {
        sender: alice.clone(),
        recipient: name("bob"),
        body: body.to_owned(),
        idempotency_key: None,
    };

    // Another "process" holds the id sequence row, so the send waits inside its transaction.
    let mut other = database.options().connect().await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT total FROM chatcore_counts WHERE low_id = 0 AND high_id = 0 FOR UPDATE")
        .execute(&mut other)
        .await
        .unwrap();
    let in_flight = {
        let store = store.clone();
        let message = send("in flight");
        tokio::spawn(async move { store.insert_message(message).await })
    };
    // Wait (by polling, not by guessing a duration) until the send's transaction is running
    // its id upsert, which waits for that lock.
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (waiting,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE DB = DATABASE() AND COMMAND = 'Query' AND INFO LIKE 'INSERT INTO chatcore!_counts%' ESCAPE '!'",
            )
            .fetch_one(&mut other)
            .await
            .unwrap();
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the send reaches the database");
    let closing = {
        let store = store.clone();
        tokio::spawn(async move { store.close().await })
    };
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    let stored = in_flight
        .await
        .unwrap()
        .expect("the send made before close is stored");
    assert_eq!(stored.message.body, "in flight");
    closing.await.unwrap().expect("close");
    match store.insert_message(send("too late")).await {
        Err(chatcore::Error::Unavailable { what: "storage", .. }) => {}
        other => panic!("a send after close must be unavailable, got {other:?}"),
    }
    match store.find_user(&name("alice")).await {
        Err(chatcore::Error::Unavailable { what: "storage", .. }) => {}
        other => panic!("a read after close must be unavailable, got {other:?}"),
    }
    let (stored,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM chatcore_messages")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(stored, 1, "only the send made before close");
}
