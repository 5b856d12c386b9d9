//! The chatcore conformance suites (`Store`, `SessionStore`, account removal) against PostgreSQL
//! (`CHATCORE_POSTGRES_URL`), each scenario on its own database.

mod common;

chatcore::store_conformance_tests!(common::fresh_store);
chatcore::session_store_conformance_tests!(common::fresh_session_store);
chatcore::account_conformance_tests!(common::fresh_backend);

/// The feed and its checkpoints survive a new store instance on the same database (a
/// restart, as another process would see it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_resumes_after_a_restart() {
    let database = chatcore_postgres::testing::TestDatabase::create(common::PREFIX)
        .await
        .expect("create a test database");
    let open = || async {
        let store = database
            .store(common::test_config())
            .await
            .expect("migrated store");
        std::sync::Arc::new(store) as std::sync::Arc<dyn chatcore::Store>
    };
    chatcore::conformance::feed_resumes_after_a_restart(open().await, open).await;
}
