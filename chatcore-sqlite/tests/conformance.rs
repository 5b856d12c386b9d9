//! Both chatcore conformance suites (`Store` and `SessionStore`), on a temporary file, in
//! memory, and on a file with reads served by the writer.

mod common;

mod file {
    chatcore::store_conformance_tests!(super::common::fresh_file_store);
    chatcore::session_store_conformance_tests!(super::common::fresh_file_session_store);
    chatcore::account_conformance_tests!(super::common::fresh_file_backend);
}

mod memory {
    chatcore::store_conformance_tests!(super::common::fresh_memory_store);
    chatcore::session_store_conformance_tests!(super::common::fresh_memory_session_store);
    chatcore::account_conformance_tests!(super::common::fresh_memory_backend);
}

/// Reads served by the writer thread (`readers: 0`) on a file.
mod file_without_readers {
    async fn fresh() -> std::sync::Arc<dyn chatcore::Store> {
        super::common::temp_store(|c| c.readers = 0).await.into_shared()
    }
    async fn fresh_sessions() -> std::sync::Arc<dyn chatcore::SessionStore> {
        super::common::temp_store(|c| c.readers = 0)
            .await
            .into_shared_sessions()
    }
    async fn fresh_backend() -> std::sync::Arc<dyn chatcore::Backend> {
        super::common::temp_store(|c| c.readers = 0)
            .await
            .into_shared_backend()
    }
    chatcore::store_conformance_tests!(fresh);
    chatcore::session_store_conformance_tests!(fresh_sessions);
    chatcore::account_conformance_tests!(fresh_backend);
}

/// The feed and its checkpoints survive closing the file and opening it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_resumes_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.sqlite3");
    let open = || async {
        let config = chatcore_sqlite::SqliteConfig::file(path.clone());
        let store = chatcore_sqlite::SqliteStore::open(config).await.expect("open");
        store.migrate().await.expect("migrate");
        std::sync::Arc::new(store) as std::sync::Arc<dyn chatcore::Store>
    };
    chatcore::conformance::feed_resumes_after_a_restart(open().await, open).await;
}
