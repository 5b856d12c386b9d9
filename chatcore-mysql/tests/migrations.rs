//! Migrations: explicit, idempotent, in our own table, never touching the host's, utf8mb4
//! everywhere, and a schema newer than the code is refused.

mod common;

use std::sync::Arc;

use chatcore::{Backend, Error, MigrationReport, Store, Username};
use chatcore_mysql::MysqlStore;
use common::TestDatabase;
use sqlx::{ConnectOptions, Row};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_explicit_idempotent_and_keeps_to_its_own_tables() {
    let database = TestDatabase::create().await;
    let mut conn = database.options().connect().await.unwrap();
    // The host's own sqlx migrations table, with a row of its own.
    sqlx::raw_sql(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL); \
         INSERT INTO _sqlx_migrations VALUES (20240101000000, 'host app')",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let store = MysqlStore::connect_with(database.options(), common::test_config()).unwrap();
    // Nothing is created until the host asks.
    let tables = table_names(&mut conn).await;
    assert_eq!(tables, ["_sqlx_migrations"]);

    let latest = MysqlStore::schema_version();
    assert_eq!(
        store.migrate().await.unwrap(),
        MigrationReport {
            previous: 0,
            current: latest,
            notes: vec![]
        }
    );
    let again = store.migrate().await.unwrap();
    assert_eq!(
        again,
        MigrationReport {
            previous: latest,
            current: latest,
            notes: vec![]
        },
        "second run applies nothing"
    );
    assert!(!again.applied_any());
    let (recorded,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM chatcore_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(recorded, i64::from(latest), "one row per version");

    let tables = table_names(&mut conn).await;
    for table in &tables {
        assert!(
            table.starts_with("chatcore_") || table == "_sqlx_migrations",
            "unexpected table {table}"
        );
    }
    for expected in [
        "chatcore_counts",
        "chatcore_inbox",
        "chatcore_messages",
        "chatcore_migrations",
        "chatcore_read_events",
        "chatcore_sessions",
        "chatcore_users",
    ] {
        assert!(tables.iter().any(|t| t == expected), "missing {expected}");
    }
    let host_rows: Vec<(i64,)> = sqlx::query_as("SELECT version FROM _sqlx_migrations")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        host_rows,
        [(20240101000000,)],
        "the host's migrations table is untouched"
    );

    // utf8mb4 everywhere; usernames compare byte-exactly.
    let collations = sqlx::query(
        "SELECT TABLE_NAME AS t, TABLE_COLLATION AS c FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'chatcore!_%' ESCAPE '!'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for row in &collations {
        let collation: String = row.try_get_unchecked("c").unwrap();
        assert!(collation.starts_with("utf8mb4"), "{row:?}: {collation}");
    }
    let text_columns = sqlx::query(
        "SELECT CONCAT(TABLE_NAME, '.', COLUMN_NAME) AS col, CHARACTER_SET_NAME AS cs, COLLATION_NAME AS c \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME IN ('chatcore_users', 'chatcore_messages') AND CHARACTER_SET_NAME IS NOT NULL",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(text_columns.len() >= 3);
    for row in &text_columns {
        let column: String = row.try_get_unchecked("col").unwrap();
        let charset: String = row.try_get_unchecked("cs").unwrap();
        let collation: String = row.try_get_unchecked("c").unwrap();
        assert_eq!(charset, "utf8mb4", "{column}");
        assert_eq!(collation, "utf8mb4_bin", "{column}");
    }
    let (charset, collation): (String, String) =
        sqlx::query_as("SELECT @@character_set_connection, @@collation_connection")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!((charset.as_str(), collation.as_str()), ("utf8mb4", "utf8mb4_bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_migrating_at_once_take_turns() {
    let database = TestDatabase::create().await;
    let stores: Vec<_> = (0..4)
        .map(|_| Arc::new(MysqlStore::connect_with(database.options(), common::test_config()).unwrap()))
        .collect();
    let runs: Vec<_> = stores
        .iter()
        .map(|store| {
            let store = store.clone();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    let mut reports = Vec::new();
    for run in runs {
        reports.push(run.await.unwrap().expect("every concurrent migrate succeeds"));
    }
    // One of them applied everything; the others, after it, found the schema current.
    let latest = MysqlStore::schema_version();
    let applying: Vec<_> = reports.iter().filter(|r| r.applied_any()).collect();
    assert_eq!(applying.len(), 1, "applied exactly once: {reports:?}");
    assert_eq!((applying[0].previous, applying[0].current), (0, latest));
    assert!(reports.iter().all(|r| r.current == latest), "{reports:?}");
    let user = stores[1]
        .create_user(&Username::parse("alice").unwrap())
        .await
        .unwrap();
    assert_eq!(user.username.as_str(), "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_or_altered_schema_is_refused() {
    let database = TestDatabase::create().await;
    let store = database.store().await;
    let mut conn = database.options().connect().await.unwrap();

    sqlx::query(
        "INSERT INTO chatcore_migrations (version, description, checksum, applied_at) \
         VALUES (999, 'from the future', REPEAT('x', 32), UTC_TIMESTAMP(6))",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    match store.migrate().await {
        Err(Error::Corrupt { message, .. }) => {
            assert!(message.contains("newer"), "{message}");
            assert!(message.contains("999"), "{message}");
        }
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
    sqlx::query("DELETE FROM chatcore_migrations WHERE version = 999")
        .execute(&mut conn)
        .await
        .unwrap();

    sqlx::query("UPDATE chatcore_migrations SET checksum = REPEAT('y', 32) WHERE version = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    match store.migrate().await {
        Err(Error::Corrupt { message, .. }) => assert!(message.contains("different statements"), "{message}"),
        other => panic!("an altered migration must be refused, got {other:?}"),
    }
}

async fn table_names(conn: &mut sqlx::MySqlConnection) -> Vec<String> {
    let rows = sqlx::query(
        "SELECT TABLE_NAME AS t FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME",
    )
    .fetch_all(conn)
    .await
    .unwrap();
    rows.iter().map(|r| r.try_get_unchecked("t").unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_id_sequence_fails_the_send_and_stores_nothing() {
    let database = TestDatabase::create().await;
    let store = database.store().await;
    let alice = store
        .create_user(&Username::parse("alice").unwrap())
        .await
        .unwrap();
    let mut conn = database.options().connect().await.unwrap();
    sqlx::query("DELETE FROM chatcore_counts WHERE low_id = 0 AND high_id = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    let result = store
        .insert_message(chatcore::NewMessage {
            sender: alice.clone(),
            recipient: Username::parse("alice").unwrap(),
            body: "lost?".into(),
            idempotency_key: None,
        })
        .await;
    assert!(matches!(result, Err(Error::Internal { .. })), "got {result:?}");
    let (stored,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM chatcore_messages")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 0, "the failed transaction rolled back");
    let page = store
        .user_messages(alice.id, &chatcore::PageRequest::latest(10))
        .await
        .unwrap();
    assert_eq!(page.total, 0, "counters rolled back too");
    let (sequences,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM chatcore_counts WHERE low_id = 0 AND high_id = 0")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(sequences, 0, "the send did not recreate the sequence row from 0");
}

/// The same for a read marker: without the sequence row there is no position for its event,
/// so the mark fails and changes nothing (marker, unread counts, events); once the row is
/// back the same mark goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_id_sequence_fails_a_mark_and_changes_nothing() {
    let database = TestDatabase::create().await;
    let store = database.store().await;
    let alice = store
        .create_user(&Username::parse("alice").unwrap())
        .await
        .unwrap();
    let bob = store.create_user(&Username::parse("bob").unwrap()).await.unwrap();
    let sent = store
        .insert_message(chatcore::NewMessage {
            sender: alice.clone(),
            recipient: bob.username.clone(),
            body: "read me".into(),
            idempotency_key: None,
        })
        .await
        .unwrap();
    let mut conn = database.options().connect().await.unwrap();
    sqlx::query("DELETE FROM chatcore_counts WHERE low_id = 0 AND high_id = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    let result = store.mark_read(&bob, &alice.username, sent.message.id).await;
    assert!(matches!(result, Err(Error::Internal { .. })), "got {result:?}");
    let request = chatcore::InboxRequest {
        before: None,
        limit: 10,
    };
    let inbox = store.inbox(bob.id, &request).await.unwrap();
    assert_eq!(
        (inbox.unread_total, inbox.conversations[0].read_up_to),
        (1, None),
        "the failed mark rolled back"
    );
    let (events,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM chatcore_read_events")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(events, 0);

    sqlx::query("INSERT INTO chatcore_counts (low_id, high_id, total) VALUES (0, 0, ?)")
        .bind(sent.message.id.0)
        .execute(&mut conn)
        .await
        .unwrap();
    let again = store
        .mark_read(&bob, &alice.username, sent.message.id)
        .await
        .unwrap();
    assert_eq!((again.unread, again.read_up_to), (0, sent.message.id));
    assert!(again.moved.is_some());
    assert_eq!(store.inbox(bob.id, &request).await.unwrap().unread_total, 0);
    assert_eq!(
        store.latest_position(bob.id).await.unwrap(),
        chatcore::Position(sent.message.id.0 + 1),
        "one read event, right after the message"
    );
}
