//! The whole chatcore conformance suite, on a temporary file and in memory.

mod common;

mod file {
    chatcore::store_conformance_tests!(super::common::fresh_file_store);
}

mod memory {
    chatcore::store_conformance_tests!(super::common::fresh_memory_store);
}

/// Reads served by the writer thread (`readers: 0`) on a file.
mod file_without_readers {
    async fn fresh() -> std::sync::Arc<dyn chatcore::Store> {
        super::common::temp_store(|c| c.readers = 0).await.into_shared()
    }
    chatcore::store_conformance_tests!(fresh);
}
