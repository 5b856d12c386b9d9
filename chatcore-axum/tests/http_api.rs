//! The HTTP and WebSocket contract (`http-api.md`), end to end, on every store.
//!
//! Add a store with one line: a module with `api_suite!(factory)` where `factory` is an
//! `async fn() -> Arc<dyn chatcore::Backend>` returning a fresh, empty store.

mod suite;

mod memory {
    async fn fresh_store() -> std::sync::Arc<dyn chatcore::Backend> {
        std::sync::Arc::new(chatcore::MemoryStore::new())
    }
    crate::api_suite!(fresh_store);
}

mod sqlite {
    async fn fresh_store() -> std::sync::Arc<dyn chatcore::Backend> {
        let store = chatcore_sqlite::SqliteStore::open(chatcore_sqlite::SqliteConfig::memory())
            .await
            .expect("open SQLite");
        store.migrate().await.expect("migrate SQLite");
        std::sync::Arc::new(store)
    }
    crate::api_suite!(fresh_store);
}

/// SQLite on a file, with the settings `chat-server` applies by default
/// (`--sqlite-synchronous full`, `--sqlite-readers 4`): fsyncs on their own thread, reads on
/// reader threads, as a standalone server runs.
mod sqlite_file {
    async fn fresh_store() -> std::sync::Arc<dyn chatcore::Backend> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = chatcore_sqlite::SqliteConfig::file(dir.path().join("chat.db"));
        config.synchronous = chatcore_sqlite::Synchronous::Full;
        config.pipelined_sync = true;
        config.readers = 4;
        let store = chatcore_sqlite::SqliteStore::open(config)
            .await
            .expect("open SQLite");
        store.migrate().await.expect("migrate SQLite");
        // The directory lives as long as the store.
        std::sync::Arc::new(crate::suite::stores::TestStore::new(std::sync::Arc::new(store)).with_guard(dir))
    }
    crate::api_suite!(fresh_store);
}

mod mysql {
    crate::api_suite!(crate::suite::stores::mysql_store);
}

mod postgres {
    crate::api_suite!(crate::suite::stores::postgres_store);
}
