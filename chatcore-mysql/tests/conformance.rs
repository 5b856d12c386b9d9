//! The chatcore conformance suites (`Store` and `SessionStore`) against MariaDB/MySQL (`CHATCORE_MYSQL_URL`), each scenario
//! on its own database.

mod common;

chatcore::store_conformance_tests!(common::fresh_store);
chatcore::session_store_conformance_tests!(common::fresh_session_store);
chatcore::account_conformance_tests!(common::fresh_backend);

/// The feed and its checkpoints survive a new store instance on the same database (a
/// restart, as another process would see it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_resumes_after_a_restart() {
    let database = common::TestDatabase::create().await;
    let first: std::sync::Arc<dyn chatcore::Store> = std::sync::Arc::new(database.store().await);
    chatcore::conformance::feed_resumes_after_a_restart(first, || async {
        std::sync::Arc::new(database.store().await) as std::sync::Arc<dyn chatcore::Store>
    })
    .await;
}
