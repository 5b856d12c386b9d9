//! What presence costs the server under connection churn: `W` watchers hold a connection
//! each, while churners connect and disconnect at `--rate` per second, each staying
//! `--session-ms`; every churner shares a conversation with `--peers` watchers. Reports the
//! process's CPU time per connect+disconnect (user + system, from `/proc/self/stat`),
//! presence frames per watcher per second and the shortest gap between two frames of one
//! watcher. Run it with presence on and off: the difference is presence's cost.
//!
//! ```sh
//! cargo bench -p chatcore-benches --bench presence_churn -- --presence on --grace-ms 0
//! cargo bench -p chatcore-benches --bench presence_churn -- --presence off
//! ```
//!
//! Service level (no sockets, no HTTP), over the memory store: it isolates presence from the
//! transport and the database, whose per-connection costs are the same either way.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatcore::{ChatConfig, ChatService, Delivery, EventKind, LocalNotifier, MemoryStore, NewMessage, Store};

struct Args {
    presence: bool,
    watchers: usize,
    churners: usize,
    peers: usize,
    rate: u64,
    session: Duration,
    grace: Duration,
    seconds: u64,
}

fn args() -> Args {
    let mut args = Args {
        presence: true,
        watchers: 1_000,
        churners: 2_000,
        peers: 10,
        rate: 1_000,
        session: Duration::from_millis(1_000),
        grace: Duration::ZERO,
        seconds: 10,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        if flag == "--bench" {
            continue;
        }
        let value = given.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--presence" => args.presence = value == "on",
            "--watchers" => args.watchers = number() as usize,
            "--churners" => args.churners = number() as usize,
            "--peers" => args.peers = number() as usize,
            "--rate" => args.rate = number(),
            "--session-ms" => args.session = Duration::from_millis(number()),
            "--grace-ms" => args.grace = Duration::from_millis(number()),
            "--seconds" => args.seconds = number(),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses.
    let after = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports in USER_HZ, 100 per second on every common configuration.
    Duration::from_millis(ticks * 10)
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let store = Arc::new(MemoryStore::new());
    let config = ChatConfig {
        presence: args.presence,
        presence_grace: args.grace,
        max_connections_per_user: 100,
        ..Default::default()
    };
    let store_dyn: Arc<dyn Store> = store.clone();
    let chat = ChatService::new(store_dyn, Arc::new(LocalNotifier::new(256)), config);
    let mut watchers = Vec::new();
    for w in 0..args.watchers {
        watchers.push(chat.create_user(&format!("w{w}")).await.unwrap());
    }
    let mut churners = Vec::new();
    for c in 0..args.churners {
        let churner = chat.create_user(&format!("c{c}")).await.unwrap();
        for p in 0..args.peers {
            let watcher = &watchers[(c * args.peers + p) % args.watchers];
            store
                .insert_message(NewMessage {
                    sender: churner.clone(),
                    recipient: watcher.username.clone(),
                    body: "hi".into(),
                    idempotency_key: None,
                })
                .await
                .unwrap();
        }
        churners.push(churner);
    }
    chat.start_presence();
    let frames = Arc::new(AtomicU64::new(0));
    let changes = Arc::new(AtomicU64::new(0));
    let shortest_gap_ms = Arc::new(AtomicU64::new(u64::MAX));
    for watcher in &watchers {
        let mut feed = chat.subscribe(watcher, None).await.unwrap();
        let (frames, changes, shortest) = (frames.clone(), changes.clone(), shortest_gap_ms.clone());
        tokio::spawn(async move {
            let mut last: Option<Instant> = None;
            while let Some(delivery) = feed.recv().await {
                if let Delivery::Event { event, .. } = delivery
                    && event.kind() == EventKind::Presence
                {
                    let now = Instant::now();
                    if let Some(last) = last {
                        shortest.fetch_min(now.duration_since(last).as_millis() as u64, Ordering::Relaxed);
                    }
                    last = Some(now);
                    frames.fetch_add(1, Ordering::Relaxed);
                    let listed = event.frame_str().matches("\"user\"").count() as u64;
                    changes.fetch_add(listed, Ordering::Relaxed);
                }
            }
        });
    }
    // Warm up for one session length plus the grace, so the online population is steady.
    let warmup = args.session + args.grace + Duration::from_secs(2);
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut online = VecDeque::new();
    let mut next = 0usize;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut measured: Option<(Instant, Duration, u64, u64, u64)> = None;
    let mut ops = 0u64;
    let end = warmup + Duration::from_secs(args.seconds);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if measured.is_none() && now.duration_since(started) >= warmup {
            measured = Some((
                now,
                cpu_time(),
                ops,
                frames.load(Ordering::Relaxed),
                changes.load(Ordering::Relaxed),
            ));
            shortest_gap_ms.store(u64::MAX, Ordering::Relaxed);
        }
        if now.duration_since(started) >= end {
            break;
        }
        while online
            .front()
            .is_some_and(|(since, _): &(Instant, _)| now.duration_since(*since) >= args.session)
        {
            online.pop_front();
        }
        let churner = &churners[next % churners.len()];
        next += 1;
        online.push_back((now, chat.subscribe(churner, None).await.unwrap()));
        ops += 1;
    }
    let (from, cpu_from, ops_from, frames_from, changes_from) = measured.expect("measured");
    let wall = from.elapsed();
    let cpu = cpu_time() - cpu_from;
    let ops = ops - ops_from;
    let frames = frames.load(Ordering::Relaxed) - frames_from;
    let changes = changes.load(Ordering::Relaxed) - changes_from;
    let per_watcher = frames as f64 / args.watchers as f64 / wall.as_secs_f64();
    let shortest = shortest_gap_ms.load(Ordering::Relaxed);
    println!(
        "presence {} grace {:?} session {:?}: {} watchers, {} churners x {} peers; {:.0} connects+disconnects/s over {:.1} s; CPU {:.2} s ({:.0}% of one core), {:.1} us per connect+disconnect; {:.2} presence frames per watcher per second, {:.1} changes per frame, shortest gap between two frames of one watcher {} ms",
        if args.presence { "on" } else { "off" },
        args.grace,
        args.session,
        args.watchers,
        args.churners,
        args.peers,
        ops as f64 / wall.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / ops as f64,
        per_watcher,
        if frames > 0 {
            changes as f64 / frames as f64
        } else {
            0.0
        },
        if shortest == u64::MAX {
            "-".to_owned()
        } else {
            shortest.to_string()
        },
    );
}
