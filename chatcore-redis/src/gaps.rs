//! Gap notices owed after failed publishes.
//!
//! When a `PUBLISH` fails, the other nodes' subscriptions of its users may have missed an
//! event while their own subscriber connections stay up, so no reconnect `Gap` would tell
//! them. The notifier remembers those users here, and a background task publishes a gap
//! notice ([`crate::wire::Payload::gap`]) on each of their channels, retrying with the
//! reconnect backoff until Redis accepts it. A node that receives one delivers
//! [`chatcore::Delivery::Gap`] to the user's subscriptions.
//!
//! Limit: the debt lives in this process. If it ends before Redis accepts the notices, the
//! other nodes learn of the missed event from the user's next event, whose `previous` is
//! beyond what they delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chatcore::UserId;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;

use crate::RedisConfig;
use crate::notifier::run_pipeline;
use crate::subscriber::{Channels, MAX_BATCH};
use crate::wire::{NodeId, Payload};

/// The users owed a gap notice.
#[derive(Debug, Default)]
pub(crate) struct Debts {
    owed: Mutex<Owed>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Owed {
    /// Each user with the number of the failure that last added them, so that a notice
    /// published while another failure of the same user happened does not settle that one.
    users: HashMap<UserId, u64>,
    failures: u64,
}

impl Debts {
    /// Remembers that `users` are owed a gap notice, and wakes the task.
    pub(crate) fn owe(&self, users: impl IntoIterator<Item = UserId>) {
        {
            let mut owed = lock(&self.owed);
            owed.failures += 1;
            let failure = owed.failures;
            owed.users.extend(users.into_iter().map(|user| (user, failure)));
        }
        self.wake.notify_one();
    }

    /// How many users are owed a notice now.
    pub(crate) fn len(&self) -> usize {
        lock(&self.owed).users.len()
    }

    fn snapshot(&self) -> Vec<(UserId, u64)> {
        lock(&self.owed)
            .users
            .iter()
            .map(|(user, failure)| (*user, *failure))
            .collect()
    }

    /// Forgets the debts that `paid` settled (unless a later failure renewed them).
    fn settle(&self, paid: &[(UserId, u64)]) {
        let mut owed = lock(&self.owed);
        for (user, failure) in paid {
            if owed.users.get(user) == Some(failure) {
                owed.users.remove(user);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the map consistent.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Publishes the owed notices, in pipelines of at most [`MAX_BATCH`], retrying with
/// [`RedisConfig::backoff`] while Redis refuses them. Runs until aborted.
pub(crate) async fn run(
    debts: Arc<Debts>,
    publisher: ConnectionManager,
    channels: Arc<Channels>,
    node: NodeId,
    config: RedisConfig,
) {
    let mut failures = 0u32;
    loop {
        let owed = debts.snapshot();
        if owed.is_empty() {
            failures = 0;
            // `owe` stores a permit when nobody waits: a debt added since the snapshot
            // wakes this at once.
            debts.wake.notified().await;
            continue;
        }
        let mut refused = None;
        for chunk in owed.chunks(MAX_BATCH) {
            let mut pipeline = redis::pipe();
            for (user, _) in chunk {
                pipeline
                    .cmd("PUBLISH")
                    .arg(channels.name(*user))
                    .arg(Payload::gap(node))
                    .ignore();
            }
            match run_pipeline(&publisher, &pipeline, config.command_timeout).await {
                Ok(()) => debts.settle(chunk),
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        match refused {
            None => {
                if failures > 0 {
                    tracing::info!(users = owed.len(), "gap notices published after failed publishes");
                }
                failures = 0;
            }
            Some(error) => {
                let wait = config.backoff(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(%error, users = debts.len(), retry_in = ?wait, "could not publish gap notices");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_failure_is_not_settled_by_an_earlier_notice() {
        let debts = Debts::default();
        debts.owe([UserId(1), UserId(2)]);
        let first = debts.snapshot();
        debts.owe([UserId(2)]);
        debts.settle(&first);
        assert_eq!(
            debts.snapshot().iter().map(|(u, _)| *u).collect::<Vec<_>>(),
            [UserId(2)]
        );
        debts.settle(&debts.snapshot());
        assert_eq!(debts.len(), 0);
    }
}
