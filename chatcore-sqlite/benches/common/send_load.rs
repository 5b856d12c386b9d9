//! The send load shared by `benches/sqlite.rs` and `examples/send_profile.rs`, so both
//! measure exactly the same thing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatcore::store::Store;
use chatcore::{NewMessage, User};
use chatcore_sqlite::SqliteStore;

/// `total` sends spread over `concurrency` tasks, task `t` always from `pairs[t].0` to
/// `pairs[t].1` (its own conversation); returns the wall time.
pub async fn send_load(
    store: Arc<SqliteStore>,
    pairs: Arc<Vec<(User, User)>>,
    concurrency: usize,
    total: u64,
) -> Duration {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let store = store.clone();
            let pairs = pairs.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let (from, to) = &pairs[t];
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    store
                        .insert_message(NewMessage {
                            sender: from.clone(),
                            recipient: to.username.clone(),
                            body: "a benchmark message of a typical length, about sixty bytes".into(),
                            idempotency_key: None,
                        })
                        .await
                        .expect("send");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("sender task");
    }
    start.elapsed()
}
