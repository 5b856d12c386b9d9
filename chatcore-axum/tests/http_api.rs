//! The HTTP and WebSocket contract (`http-api.md`), end to end, on every store.
//!
//! Add a store with one line: a module with `api_suite!(factory)` where `factory` is an
//! `async fn() -> Arc<dyn chatcore::Store>` returning a fresh, empty store.

mod suite;

mod memory {
    async fn fresh_store() -> std::sync::Arc<dyn chatcore::Store> {
        std::sync::Arc::new(chatcore::MemoryStore::new())
    }
    crate::api_suite!(fresh_store);
}

mod sqlite {
    async fn fresh_store() -> std::sync::Arc<dyn chatcore::Store> {
        let store = chatcore_sqlite::SqliteStore::open(chatcore_sqlite::SqliteConfig::memory())
            .await
            .expect("open SQLite");
        store.migrate().await.expect("migrate SQLite");
        std::sync::Arc::new(store)
    }
    crate::api_suite!(fresh_store);
}

mod mysql {
    crate::api_suite!(crate::suite::stores::mysql_store);
}
