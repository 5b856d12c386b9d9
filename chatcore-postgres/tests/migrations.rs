//! Migrations: explicit, idempotent, safe from several processes at once, recorded in
//! `chatcore_migrations` only (a host's `_sqlx_migrations` is untouched), and a database newer
//! than this code (or an edited migration) is refused. No table exists before `migrate`.

mod common;

use chatcore::{Backend, Error};
use chatcore_postgres::PostgresStore;
use chatcore_postgres::testing::TestDatabase;
use sqlx::{ConnectOptions, PgConnection};

async fn connect(database: &TestDatabase) -> PgConnection {
    database.options().unwrap().connect().await.unwrap()
}

async fn tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT tablename::TEXT FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        .fetch_all(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_explicit_idempotent_and_keeps_to_its_own_tables() {
    let database = TestDatabase::create(common::PREFIX).await.unwrap();
    let mut conn = connect(&database).await;
    // The host's own migrations table, as `sqlx::migrate!` makes it.
    sqlx::query("CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO _sqlx_migrations VALUES (1, 'the host''s')")
        .execute(&mut conn)
        .await
        .unwrap();

    let store = PostgresStore::connect_with(database.options().unwrap(), common::test_config()).unwrap();
    assert_eq!(
        tables(&mut conn).await,
        ["_sqlx_migrations"],
        "nothing before migrate()"
    );

    // Several "processes" migrating at once take turns.
    let migrating: Vec<_> = (0..3)
        .map(|_| {
            let other =
                PostgresStore::connect_with(database.options().unwrap(), common::test_config()).unwrap();
            tokio::spawn(async move { other.migrate().await })
        })
        .collect();
    let mut applied = Vec::new();
    for migration in migrating {
        applied.push(migration.await.unwrap().unwrap().applied_any());
    }
    assert_eq!(
        applied.iter().filter(|a| **a).count(),
        1,
        "one of them migrated: {applied:?}"
    );
    let again = store.migrate().await.unwrap();
    assert!(!again.applied_any());
    assert_eq!(again.current, PostgresStore::schema_version());

    for table in tables(&mut conn).await {
        assert!(
            table == "_sqlx_migrations" || table.starts_with("chatcore_"),
            "unprefixed table {table}"
        );
    }
    let host: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(host, 1, "the host's migrations table is untouched");

    // A newer schema (a later version of this crate migrated it) is refused, not used.
    sqlx::query(
        "INSERT INTO chatcore_migrations (version, description, checksum) VALUES (999, 'future', '')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    match store.migrate().await {
        Err(Error::Corrupt { message, .. }) => assert!(message.contains("999"), "{message}"),
        other => panic!("expected Corrupt for a newer schema, got {other:?}"),
    }
    sqlx::query("DELETE FROM chatcore_migrations WHERE version = 999")
        .execute(&mut conn)
        .await
        .unwrap();
    // An applied migration that was edited since is refused too.
    sqlx::query("UPDATE chatcore_migrations SET checksum = '\\x00' WHERE version = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(matches!(store.migrate().await, Err(Error::Corrupt { .. })));
}
