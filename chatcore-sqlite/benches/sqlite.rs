//! Benchmarks of the SQLite store, durable (`synchronous=FULL`) on a temporary file:
//!
//! - `sqlite_send/concurrency/{1,8,64}`: sends per second with that many tasks sending at
//!   once (each task its own conversation), through the group-committing writer;
//! - `sqlite_page/rows/{10000,1000000}`: latency of one conversation page (latest 15) with that
//!   many messages in the table. The measured conversation holds the same 1,000 messages in
//!   both cases, spread evenly through the table; the other messages belong to 500 other
//!   conversations. The table is built with a direct bulk insert through rusqlite in one
//!   transaction, counters included. `sqlite_page/user_rows/N` reads the same 15 messages as
//!   alice's own list (`Store::user_messages`).
//!
//! - `disk/fsync_4k`: one 4 KiB write and `fdatasync` on the same file system, the floor
//!   under every durable commit. A sender waits for at least one such sync, so with `c`
//!   concurrent senders the send rate cannot exceed `c / fsync latency` (Little's law);
//!   read the send figures against it.
//!
//! Run with `cargo bench -p chatcore-sqlite`; each group takes well under a minute.

use std::sync::Arc;
use std::time::Duration;

use chatcore::store::{PageRequest, Store};
use chatcore::{User, Username};
use chatcore_sqlite::{SqliteConfig, SqliteStore, Synchronous};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};

#[path = "common/send_load.rs"]
mod send_load;
use send_load::send_load;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn name(s: &str) -> Username {
    Username::parse(s).expect("valid username")
}

fn sends(c: &mut Criterion) {
    const MAX_CONCURRENCY: usize = 64;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SqliteConfig {
        synchronous: Synchronous::Full,
        ..SqliteConfig::file(dir.path().join("sends.sqlite3"))
    };
    let (store, pairs) = rt.block_on(async {
        let store = Arc::new(SqliteStore::open(config).await.expect("open"));
        store.migrate().await.expect("migrate");
        let mut pairs = Vec::new();
        for i in 0..MAX_CONCURRENCY {
            let from = store.create_user(&name(&format!("from{i}"))).await.unwrap();
            let to = store.create_user(&name(&format!("to{i}"))).await.unwrap();
            pairs.push((from, to));
        }
        (store, Arc::new(pairs))
    });

    let mut group = c.benchmark_group("sqlite_send");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(1));
    for concurrency in [1usize, 8, 64] {
        group.bench_with_input(
            BenchmarkId::new("concurrency", concurrency),
            &concurrency,
            |b, &concurrency| {
                b.iter_custom(|iters| {
                    rt.block_on(send_load(store.clone(), pairs.clone(), concurrency, iters))
                })
            },
        );
    }
    group.finish();
    rt.block_on(store.close()).expect("close");
}

fn disk(c: &mut Criterion) {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    let mut file = std::fs::File::create(dir.path().join("fsync-probe")).expect("probe file");
    let page = [0x5au8; 4096];
    file.write_all(&page).expect("write");
    file.sync_all().expect("sync");
    let mut group = c.benchmark_group("disk");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("fsync_4k", |b| {
        b.iter(|| {
            file.seek(SeekFrom::Start(0)).expect("seek");
            file.write_all(&page).expect("write");
            file.sync_data().expect("fdatasync");
        })
    });
    group.finish();
}

/// Builds a database with `rows` messages and returns the open store, the viewer and the
/// other participant of the measured conversation.
fn page_fixture(rt: &tokio::runtime::Runtime, dir: &std::path::Path, rows: i64) -> (SqliteStore, User) {
    const MEASURED: i64 = 1_000;
    const OTHER_CONVERSATIONS: i64 = 500;
    let path = dir.join(format!("page-{rows}.sqlite3"));
    let (alice, users) = rt.block_on(async {
        let store = SqliteStore::open(SqliteConfig::file(&path)).await.expect("open");
        store.migrate().await.expect("migrate");
        let alice = store.create_user(&name("alice")).await.unwrap();
        store.create_user(&name("bob")).await.unwrap();
        let mut users = Vec::new();
        for i in 0..OTHER_CONVERSATIONS * 2 {
            users.push(store.create_user(&name(&format!("u{i}"))).await.unwrap().id.0);
        }
        store.close().await.expect("close");
        (alice, users)
    });
    let bob_id = alice.id.0 + 1;
    let mut conn = rusqlite::Connection::open(&path).expect("bulk connection");
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut message = tx
            .prepare(
                "INSERT INTO chatcore_messages
                 (id, sender_id, recipient_id, conv_low, conv_high, created_at, body, prev_id, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .unwrap();
        // Each conversation's chain as the writer builds it (schema version 3): the previous
        // message, the number in the conversation, and a mark on every 16th.
        let mut mark = tx
            .prepare("INSERT INTO chatcore_conversation_marks (conv_low, conv_high, seq, id) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        let mut tails = std::collections::HashMap::<(i64, i64), (i64, Option<i64>)>::new();
        let every = rows / MEASURED;
        let start = chatcore::now_micros().timestamp_micros() - rows;
        for id in 1..=rows {
            let (from, to) = if id % every == 0 {
                (alice.id.0, bob_id)
            } else {
                let pair = (id % OTHER_CONVERSATIONS) as usize;
                (users[2 * pair], users[2 * pair + 1])
            };
            let body = format!("bulk message number {id} with a body of a typical length");
            let (low, high) = (from.min(to), from.max(to));
            let (seq, prev) = tails.entry((low, high)).or_insert((0, None));
            *seq += 1;
            message
                .execute(rusqlite::params![
                    id,
                    from,
                    to,
                    low,
                    high,
                    start + id,
                    body,
                    *prev,
                    *seq
                ])
                .unwrap();
            if *seq % 16 == 0 {
                mark.execute([low, high, *seq, id]).unwrap();
            }
            *prev = Some(id);
        }
    }
    tx.execute_batch(
        "INSERT INTO chatcore_conversations (conv_low, conv_high, message_count, last_id)
             SELECT conv_low, conv_high, count(*), max(id) FROM chatcore_messages GROUP BY conv_low, conv_high;
         INSERT INTO chatcore_user_counts (user_id, message_count)
             SELECT user_id, sum(n) FROM (
                 SELECT sender_id AS user_id, count(*) AS n FROM chatcore_messages GROUP BY sender_id
                 UNION ALL
                 SELECT recipient_id, count(*) FROM chatcore_messages WHERE recipient_id != sender_id GROUP BY recipient_id)
             GROUP BY user_id;",
    )
    .unwrap();
    tx.commit().unwrap();
    drop(conn);
    let store = rt
        .block_on(SqliteStore::open(SqliteConfig::file(&path)))
        .expect("reopen");
    (store, alice)
}

fn pages(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("sqlite_page");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let bob = name("bob");
    for rows in [10_000i64, 1_000_000] {
        let (store, alice) = page_fixture(&rt, dir.path(), rows);
        let check = rt
            .block_on(store.conversation_page(alice.id, &bob, &PageRequest::latest(15)))
            .expect("page");
        assert_eq!((check.total, check.messages.len()), (1_000, 15));
        group.bench_with_input(BenchmarkId::new("rows", rows), &rows, |b, _| {
            b.to_async(&rt).iter(|| async {
                store
                    .conversation_page(alice.id, &bob, &PageRequest::latest(15))
                    .await
                    .expect("page")
            })
        });
        // The same messages as alice's own list (read through her conversations).
        group.bench_with_input(BenchmarkId::new("user_rows", rows), &rows, |b, _| {
            b.to_async(&rt).iter(|| async {
                store
                    .user_messages(alice.id, &PageRequest::latest(15))
                    .await
                    .expect("user page")
            })
        });
        // Page 21 by offset (`?page=21` in the original app's terms): the conversation jumps to
        // it through a mark; alice's own list walks the 315 newest messages.
        let page_21 = PageRequest {
            before: None,
            offset: 300,
            limit: 15,
        };
        group.bench_with_input(BenchmarkId::new("offset_300_rows", rows), &rows, |b, _| {
            b.to_async(&rt).iter(|| async {
                store
                    .conversation_page(alice.id, &bob, &page_21)
                    .await
                    .expect("offset page")
            })
        });
        group.bench_with_input(BenchmarkId::new("user_offset_300_rows", rows), &rows, |b, _| {
            b.to_async(&rt).iter(|| async {
                store
                    .user_messages(alice.id, &page_21)
                    .await
                    .expect("user offset page")
            })
        });
        rt.block_on(store.close()).expect("close");
    }
    group.finish();
}

mod harness {
    criterion::criterion_group!(benches, super::disk, super::sends, super::pages);
}
criterion_main!(harness::benches);
