//! A PostgreSQL that goes away: store calls and publishes fail with `Error::Unavailable`
//! within their timeouts (no hang); when it comes back the store works again and each
//! `PgNotifier` reconnects by itself and tells its subscriptions they may have missed events
//! (a `Gap`) before events flow again. Runs a private PostgreSQL (its own data directory and
//! free port), never the machine's server.

use std::time::{Duration, Instant};

use chatcore::notify::{Delivery, Notifier, Recipient};
use chatcore::{
    Backend, Error, Event, Message, MessageId, NewMessage, PageRequest, Position, Store, Username,
};
use chatcore_postgres::testing::PrivateServer;
use chatcore_postgres::{PgNotifier, PgNotifierConfig, PostgresConfig, PostgresStore};

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
const PATIENCE: Duration = Duration::from_secs(10);

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

fn event(id: i64) -> Event {
    Event::message(&Message {
        id: MessageId(id),
        sender: name("alice"),
        recipient: name("bob"),
        created_at: chatcore::now_micros(),
        body: format!("event {id}"),
        edited: None,
        deleted: false,
    })
}

async fn next(subscription: &mut chatcore::Subscription, what: &str) -> Delivery {
    tokio::time::timeout(PATIENCE, subscription.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {PATIENCE:?}"))
        .unwrap_or_else(|| panic!("{what}: the subscription ended"))
}

fn assert_unavailable<T: std::fmt::Debug>(result: chatcore::Result<T>, started: Instant, what: &str) {
    match result {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took < ACQUIRE_TIMEOUT + Duration::from_secs(2),
        "{what} took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unavailable_in_time_and_everything_recovers() {
    let server = PrivateServer::start().await.expect("a private PostgreSQL");
    server.create_database("chat").await.unwrap();
    let url = server.url("chat");
    let config = PostgresConfig {
        acquire_timeout: ACQUIRE_TIMEOUT,
        max_connections: 4,
        ..PostgresConfig::default()
    };
    let store = PostgresStore::connect(&url, config).await.unwrap();
    store.migrate().await.unwrap();
    let notifier_config = PgNotifierConfig {
        reconnect_min_delay: Duration::from_millis(50),
        reconnect_max_delay: Duration::from_millis(500),
        ..PgNotifierConfig::default()
    };
    let node_a = PgNotifier::connect(&url, notifier_config.clone()).await.unwrap();
    let node_b = PgNotifier::connect(&url, notifier_config).await.unwrap();
    let alice = store.create_user(&name("alice")).await.unwrap();
    let bob = store.create_user(&name("bob")).await.unwrap();
    let send = |body: &str| NewMessage {
        sender: alice.clone(),
        recipient: name("bob"),
        body: body.into(),
        idempotency_key: None,
    };
    let first = store.insert_message(send("before")).await.unwrap();
    let mut bob_on_b = node_b.subscribe(bob.id).await.unwrap();
    let to_bob = |previous: i64| {
        [Recipient {
            user: bob.id,
            previous: Some(Position(previous)),
        }]
    };
    node_a.publish(&to_bob(0), &event(1)).await.unwrap();
    assert!(matches!(
        next(&mut bob_on_b, "before the outage").await,
        Delivery::Event { .. }
    ));

    server.stop().await.expect("stop the private PostgreSQL");
    let started = Instant::now();
    assert_unavailable(store.insert_message(send("while down")).await, started, "a send");
    let started = Instant::now();
    assert_unavailable(
        store.user_messages(bob.id, &PageRequest::latest(10)).await,
        started,
        "a read",
    );
    let started = Instant::now();
    assert_unavailable(node_a.publish(&to_bob(1), &event(2)).await, started, "a publish");

    server
        .start_again()
        .await
        .expect("start the private PostgreSQL again");
    // Sends right after the restart may meet connections that died with the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        match store.insert_message(send("after")).await {
            Ok(stored) => break stored,
            Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("the store did not recover: {other:?}"),
        }
    };
    assert_eq!(stored.recipient_previous, Position::from(first.message.id));
    // Node B's listening connection was lost: it reconnects and owes its subscription a gap
    // (the failed publish's notice may come too); then events flow again.
    let mut gaps = 0;
    let delivered = loop {
        match next(&mut bob_on_b, "after the restart").await {
            Delivery::Gap => {
                gaps += 1;
                if gaps == 1 {
                    node_a.publish(&to_bob(2), &event(3)).await.unwrap();
                }
            }
            other => break other,
        }
    };
    assert!(gaps >= 1, "a gap before the events that follow the outage");
    match delivered {
        Delivery::Event { event: got, previous } => {
            assert_eq!(got.position(), Some(Position(3)));
            assert_eq!(previous, Some(Position(2)));
        }
        other => panic!("expected event 3, got {other:?}"),
    }
    // Both listening connections are back (each reconnects on its own schedule), and the
    // failed publish's gap notice was taken once the server was back.
    let deadline = Instant::now() + PATIENCE;
    while !(node_a.is_connected() && node_b.is_connected()) || node_a.gap_notices_owed() > 0 {
        assert!(
            Instant::now() < deadline,
            "not reconnected, or gap notices still owed: {node_a:?} {node_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No send is answered before its commit is on disk: every acknowledged send survives a
/// crash of the server. The WAL writer is made lazy (10 s), so that a send answered before
/// its commit's flush (a commit without `synchronous_commit`, say) would still be in the
/// server's buffers when it crashes, and be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_a_server_crash() {
    let server = PrivateServer::start().await.expect("a private PostgreSQL");
    server.create_database("chat").await.unwrap();
    let url = server.url("chat");
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("ALTER SYSTEM SET wal_writer_delay = '10s'")
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let config = PostgresConfig::default();
    let store = PostgresStore::connect(&url, config.clone()).await.unwrap();
    store.migrate().await.unwrap();
    let alice = store.create_user(&name("alice")).await.unwrap();
    store.create_user(&name("bob")).await.unwrap();

    // Concurrent sends: a lone one stored by its caller, the others in batches.
    let sends = (0..64).map(|i| {
        store.insert_message(NewMessage {
            sender: alice.clone(),
            recipient: name("bob"),
            body: format!("durable {i}"),
            idempotency_key: None,
        })
    });
    let acknowledged: Vec<i64> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|sent| sent.expect("a send").message.id.0)
        .collect();
    server.crash().await.unwrap();
    drop(store);
    server.start_again().await.unwrap();

    let store = PostgresStore::connect(&url, config).await.unwrap();
    let page = store
        .conversation_page(alice.id, &name("bob"), &PageRequest::latest(100))
        .await
        .unwrap();
    let stored: std::collections::HashSet<i64> = page.messages.iter().map(|m| m.id.0).collect();
    let lost: Vec<&i64> = acknowledged.iter().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged but gone after the crash: {lost:?}");
}
