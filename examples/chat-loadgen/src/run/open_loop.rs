//! The open loop: sends start on schedule, whether or not earlier ones have answered.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::send::{Plan, SendContext, SenderLog, pair, send_one};
use crate::transport::ConnectionPool;

/// Sender `k` of `senders`: sends start on schedule (rate / senders each, phases staggered), up
/// to `cap` in flight; a send held back by the cap counts its latency from its scheduled start.
pub(super) async fn open_loop(
    ctx: &SendContext,
    plan: &Plan,
    k: usize,
    senders: usize,
    rate: f64,
    cap: usize,
) -> SenderLog {
    let mut log = SenderLog::default();
    let pool = ctx.endpoint.clone().map(ConnectionPool::new);
    let users = ctx.names.len();
    let interval = senders as f64 / rate;
    let first = k as f64 / rate;
    let mut in_flight = FuturesUnordered::new();
    let mut i: u64 = 0;
    let mut held_back = false;
    loop {
        let due_offset = Duration::from_secs_f64(first + i as f64 * interval);
        if let Plan::Until(end) = plan
            && due_offset >= *end
        {
            break;
        }
        if in_flight.len() >= cap {
            held_back = true;
            if let Some(done) = in_flight.next().await {
                log.absorb(ctx, done);
            }
            continue;
        }
        let due = ctx.epoch + due_offset;
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => log.absorb(ctx, done),
            () = tokio::time::sleep_until(due.into()) => {
                if !plan.claim(due_offset) {
                    break;
                }
                let now = Instant::now();
                log.start_lag.record(now.saturating_duration_since(due));
                // Timer jitter is the client's, not the server's: measure from the actual
                // start. A send held back because earlier ones had not answered is the
                // server's doing: measure from the schedule (no coordinated omission).
                let start = if held_back && now > due {
                    log.late += 1;
                    due
                } else {
                    now
                };
                held_back = false;
                let (me, to) = pair(k, i, users);
                in_flight.push(send_one(ctx, pool.as_ref(), me, to, i, start));
                i += 1;
            }
        }
    }
    while let Some(done) = in_flight.next().await {
        log.absorb(ctx, done);
    }
    log
}
