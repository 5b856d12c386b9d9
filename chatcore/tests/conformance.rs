//! The in-memory store runs the whole conformance suite.

use std::sync::Arc;

async fn fresh_store() -> Arc<dyn chatcore::Store> {
    Arc::new(chatcore::MemoryStore::new())
}

chatcore::store_conformance_tests!(fresh_store);
