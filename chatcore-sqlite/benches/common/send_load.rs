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

/// `total` sends spread over `concurrency` tasks among `users` (at least 2), the way
/// `chat-loadgen` pairs them: task `t` sends as user `t % n` to each other user in turn,
/// so every conversation among them stays active and each user's inbox is warm. With
/// `read_every > 0`, each task's every `read_every`th send is followed by the recipient
/// marking the conversation read up to it and reading the first page of their inbox (as
/// `chat-loadgen --read-every`). Returns the wall time.
#[allow(dead_code)] // not every includer runs this load
pub async fn send_load_among(
    store: Arc<SqliteStore>,
    users: Arc<Vec<User>>,
    concurrency: usize,
    total: u64,
    read_every: u64,
) -> Duration {
    let n = users.len();
    assert!(n >= 2, "send_load_among needs two users");
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let store = store.clone();
            let users = users.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let me = t % n;
                let mut i = 0u64;
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    // Tasks sharing a user start at different recipients.
                    let turn = (i as usize + t / n) % (n - 1);
                    let to = &users[(me + 1 + turn) % n];
                    let sent = store
                        .insert_message(NewMessage {
                            sender: users[me].clone(),
                            recipient: to.username.clone(),
                            body: "a benchmark message of a typical length, about sixty bytes".into(),
                            idempotency_key: None,
                        })
                        .await
                        .expect("send");
                    i += 1;
                    if read_every > 0 && i.is_multiple_of(read_every) {
                        store
                            .mark_read(to, &users[me].username, sent.message.id)
                            .await
                            .expect("mark read");
                        store
                            .inbox(
                                to.id,
                                &chatcore::store::InboxRequest {
                                    before: None,
                                    limit: 20,
                                },
                            )
                            .await
                            .expect("inbox");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("sender task");
    }
    start.elapsed()
}
