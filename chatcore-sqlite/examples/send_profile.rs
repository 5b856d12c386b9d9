//! Where a durable send's cost goes: runs `--sends N` sends from `--concurrency C` tasks (each
//! task its own conversation, as in the criterion bench) against a fresh database, and prints
//! sends per second next to figures that do not depend on how busy the machine is: the
//! average group-commit batch, and per send the process's read and write system calls, bytes
//! written and CPU time (from `/proc/self/io` and `getrusage` via `/proc/self/stat`).
//!
//! ```sh
//! cargo run --release -p chatcore-sqlite --example send_profile -- --sends 200000 --concurrency 64
//! ```
//!
//! `--users M` sends among M users the way `chat-loadgen` pairs them (every conversation
//! active, each inbox warm: `M * (M - 1)` sends before the measured ones) instead of one
//! conversation per task; `--read-every N` then follows every Nth send of a task with the
//! recipient's mark and inbox read (as `chat-loadgen --read-every`):
//!
//! ```sh
//! cargo run --release -p chatcore-sqlite --example send_profile -- --sends 100000 --concurrency 64 --users 32
//! ```
//!
//! `--dir PATH` puts the database elsewhere than the temp directory (e.g. `/dev/shm` to take
//! `fsync` out); `--normal` uses `synchronous=NORMAL`; `--no-pipeline` turns
//! `SqliteConfig::pipelined_sync` off (SQLite syncs inside each commit); `--checkpoint-pages N`
//! sets `SqliteConfig::wal_autocheckpoint_pages`.

use std::sync::Arc;

use chatcore::Username;
use chatcore::store::Store;
use chatcore_sqlite::{SqliteConfig, SqliteStore, Synchronous};

#[path = "../benches/common/send_load.rs"]
mod send_load;
use send_load::{send_load, send_load_among};

struct Args {
    sends: u64,
    concurrency: usize,
    dir: Option<std::path::PathBuf>,
    normal: bool,
    no_pipeline: bool,
    checkpoint_pages: u32,
    users: usize,
    read_every: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        sends: 100_000,
        concurrency: 64,
        dir: None,
        normal: false,
        no_pipeline: false,
        checkpoint_pages: 1000,
        users: 0,
        read_every: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--sends" => args.sends = value().parse().expect("--sends N"),
            "--concurrency" => args.concurrency = value().parse().expect("--concurrency N"),
            "--dir" => args.dir = Some(value().into()),
            "--normal" => args.normal = true,
            "--no-pipeline" => args.no_pipeline = true,
            "--checkpoint-pages" => args.checkpoint_pages = value().parse().expect("--checkpoint-pages N"),
            "--users" => args.users = value().parse().expect("--users M"),
            "--read-every" => args.read_every = value().parse().expect("--read-every N"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// `(read syscalls, write syscalls, bytes written)` of this process so far.
fn io_counters() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("syscr:"), field("syscw:"), field("wchar:"))
}

/// User + system CPU time of this process so far, in clock ticks (`/proc/self/stat`).
fn cpu_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

fn main() {
    let args = parse_args();
    let dir = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let config = SqliteConfig {
        synchronous: if args.normal {
            Synchronous::Normal
        } else {
            Synchronous::Full
        },
        ..SqliteConfig::file(dir.path().join("profile.sqlite3"))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = Arc::new(SqliteStore::open(config).await.expect("open"));
        store.migrate().await.expect("migrate");
        let name = |s: String| Username::parse(&s).expect("name");
        let mut users = Vec::new();
        let mut pairs = Vec::new();
        if args.users >= 2 {
            for i in 0..args.users {
                users.push(store.create_user(&name(format!("user{i}"))).await.expect("user"));
            }
        } else {
            for i in 0..args.concurrency {
                let from = store.create_user(&name(format!("from{i}"))).await.expect("user");
                let to = store.create_user(&name(format!("to{i}"))).await.expect("user");
                pairs.push((from, to));
            }
        }
        let (users, pairs) = (Arc::new(users), Arc::new(pairs));
        if args.users >= 2 {
            // Every conversation gets messages, so the measured sends move existing rows.
            let warm = (args.users * (args.users - 1)) as u64;
            send_load_among(store.clone(), users.clone(), args.concurrency, warm, args.read_every).await;
        }
        let before_stats = store.stats();
        let (r0, w0, b0) = io_counters();
        let cpu0 = cpu_ticks();
        let elapsed = if args.users >= 2 {
            send_load_among(store.clone(), users, args.concurrency, args.sends, args.read_every).await
        } else {
            send_load(store.clone(), pairs, args.concurrency, args.sends).await
        };
        let (r1, w1, b1) = io_counters();
        let cpu1 = cpu_ticks();
        let stats = store.stats();
        let n = args.sends as f64;
        let transactions = (stats.transactions - before_stats.transactions).max(1) as f64;
        let ticks_per_sec = 100.0; // USER_HZ on Linux
        println!(
            "{} sends at concurrency {} in {:.2} s: {:.0} sends/s",
            args.sends,
            args.concurrency,
            elapsed.as_secs_f64(),
            n / elapsed.as_secs_f64()
        );
        println!(
            "transactions {:.0} (batch {:.1}); per send: read syscalls {:.2}, write syscalls {:.2}, bytes written {:.0}, CPU {:.1} us",
            transactions,
            n / transactions,
            (r1 - r0) as f64 / n,
            (w1 - w0) as f64 / n,
            (b1 - b0) as f64 / n,
            (cpu1 - cpu0) as f64 / ticks_per_sec * 1e6 / n
        );
        store.close().await.expect("close");
    });
}
