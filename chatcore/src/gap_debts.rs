//! [`GapDebts`]: the gap notices a broker-backed notifier owes after failed publishes.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use crate::UserId;

/// The users a notifier owes a gap notice, for notifiers that carry events between processes
/// through a broker (Redis, PostgreSQL's `NOTIFY`, ...).
///
/// When a publish fails, the other processes' subscriptions of its users may have missed an
/// event while their own broker connections stay up, so no reconnect would tell them. The
/// notifier calls [`GapDebts::owe`] with those users, and a background task runs
/// [`GapDebts::pay`], which publishes a gap notice for each (through the notifier's own wire
/// format), retrying with backoff until the broker accepts it. A process that receives a
/// notice delivers [`crate::Delivery::Gap`] to the user's subscriptions, and their clients
/// catch up from storage.
///
/// A debt added by a failure that happens while an earlier notice for the same user is in
/// flight is not settled by that notice: it waits for a notice published after it.
///
/// Limit: the debts live in this process. If it ends before the broker accepts the notices,
/// the other processes learn of the missed event from the user's next event, whose
/// `previous` position is beyond what they delivered.
///
/// ```
/// use std::time::Duration;
/// use chatcore::UserId;
/// use chatcore::notify::GapDebts;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let debts = std::sync::Arc::new(GapDebts::default());
/// debts.owe([UserId(7)]);
/// let (sent, mut published) = tokio::sync::mpsc::unbounded_channel();
/// let payer = tokio::spawn({
///     let debts = debts.clone();
///     async move {
///         debts
///             .pay(100, |_| Duration::from_millis(10), move |users| {
///                 // A real notifier publishes one notice per user here.
///                 let sent = sent.clone();
///                 async move { sent.send(users).map_err(|_| "receiver gone") }
///             })
///             .await
///     }
/// });
/// assert_eq!(published.recv().await, Some(vec![UserId(7)]));
/// payer.abort();
/// # }
/// ```
#[derive(Debug, Default)]
pub struct GapDebts {
    owed: Mutex<Owed>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Owed {
    /// Each user with the number of the failure that last added them.
    users: HashMap<UserId, u64>,
    failures: u64,
}

impl GapDebts {
    /// Remembers that `users` are owed a gap notice, and wakes [`GapDebts::pay`].
    pub fn owe(&self, users: impl IntoIterator<Item = UserId>) {
        {
            let mut owed = lock(&self.owed);
            owed.failures += 1;
            let failure = owed.failures;
            owed.users.extend(users.into_iter().map(|user| (user, failure)));
        }
        self.wake.notify_one();
    }

    /// How many users are owed a notice now.
    pub fn len(&self) -> usize {
        lock(&self.owed).users.len()
    }

    /// Whether no notice is owed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes the owed notices until the task running it is aborted: `publish` gets the
    /// users of one notice batch (at most `batch` of them) and publishes a notice to each;
    /// when it fails, the rest wait `backoff(failures in a row)` and are tried again.
    /// Failures are logged at `warn`, the first success after them at `info`.
    pub async fn pay<P, F, E>(&self, batch: usize, backoff: impl Fn(u32) -> Duration, mut publish: P)
    where
        P: FnMut(Vec<UserId>) -> F,
        F: Future<Output = Result<(), E>>,
        E: Display,
    {
        let batch = batch.max(1);
        let mut failures = 0u32;
        loop {
            let owed = self.snapshot();
            if owed.is_empty() {
                // `owe` stores a permit when nobody waits: a debt added since the snapshot
                // wakes this at once.
                self.wake.notified().await;
                continue;
            }
            let mut refused = None;
            for chunk in owed.chunks(batch) {
                match publish(chunk.iter().map(|(user, _)| *user).collect()).await {
                    Ok(()) => self.settle(chunk),
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
                    let wait = backoff(failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, users = self.len(), retry_in = ?wait, "could not publish gap notices");
                    tokio::time::sleep(wait).await;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_later_failure_is_not_settled_by_an_earlier_notice() {
        let debts = GapDebts::default();
        debts.owe([UserId(1), UserId(2)]);
        let first = debts.snapshot();
        debts.owe([UserId(2)]);
        debts.settle(&first);
        assert_eq!(
            debts.snapshot().iter().map(|(u, _)| *u).collect::<Vec<_>>(),
            [UserId(2)]
        );
        debts.settle(&debts.snapshot());
        assert!(debts.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn refused_notices_are_retried_until_accepted_in_batches() {
        let debts = Arc::new(GapDebts::default());
        debts.owe((1..=5).map(UserId));
        let (sent, mut published) = tokio::sync::mpsc::unbounded_channel();
        let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let payer = tokio::spawn({
            let (debts, attempts) = (debts.clone(), attempts.clone());
            async move {
                debts
                    .pay(
                        2,
                        |_| Duration::from_secs(1),
                        move |users| {
                            let refuse = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2;
                            let sent = sent.clone();
                            async move {
                                if refuse {
                                    return Err("broker down");
                                }
                                sent.send(users).map_err(|_| "receiver gone")
                            }
                        },
                    )
                    .await
            }
        });
        let mut paid = Vec::new();
        while paid.len() < 5 {
            let batch = published.recv().await.expect("a batch");
            assert!(batch.len() <= 2, "batches of at most 2: {batch:?}");
            paid.extend(batch);
        }
        paid.sort_by_key(|user| user.0);
        assert_eq!(paid, (1..=5).map(UserId).collect::<Vec<_>>());
        assert!(debts.is_empty());
        assert_eq!(
            attempts.load(std::sync::atomic::Ordering::SeqCst),
            5,
            "two refusals, three batches"
        );
        payer.abort();
    }
}
