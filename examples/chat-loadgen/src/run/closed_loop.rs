//! The closed loop: each sender starts its next send when the last one has answered.

use std::time::Instant;

use super::send::{Plan, SendContext, SenderLog, pair, read_after, send_one};
use crate::transport::ConnectionPool;

/// Sender `k`'s sends, one at a time, until `plan` is spent.
pub(super) async fn closed_loop(ctx: &SendContext, plan: &Plan, k: usize) -> SenderLog {
    let mut log = SenderLog::default();
    let pool = ctx.endpoint.clone().map(ConnectionPool::new);
    let users = ctx.names.len();
    let mut i = 0;
    while plan.claim(ctx.epoch.elapsed()) {
        let (me, to) = pair(k, i, users);
        let done = send_one(ctx, pool.as_ref(), me, to, i, Instant::now()).await;
        let id = done.id();
        log.absorb(ctx, done);
        i += 1;
        if ctx.read_every > 0
            && i % ctx.read_every == 0
            && let Some(id) = id
        {
            read_after(ctx, &mut log, me, to, id).await;
        }
    }
    log
}
