//! Writers keep a spare connection between batches; that must never hold up `close()` or
//! readers on a small pool.

mod common;

use std::time::Duration;

use chatcore::{NewMessage, Store, Username};
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
        store.close().await;
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
    store.close().await;
}
