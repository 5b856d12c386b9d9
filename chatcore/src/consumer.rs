//! [`FeedConsumer`]: a host's loop over the event feed ([`Store::feed_after`]), at least once
//! and in order, resuming from a checkpoint kept in the chat store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::store::{Store, StoredEvent, check_checkpoint_name};
use crate::{BoxError, Error, Position, Result};

/// Settings of a [`FeedConsumer`]; start from [`FeedConsumerConfig::new`] and change what you
/// need.
///
/// ```
/// let config = chatcore::FeedConsumerConfig::new("push-notifications");
/// assert_eq!((config.batch, config.poll_interval.as_millis()), (100, 100));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConsumerConfig {
    /// The checkpoint's name in the store ([`Store::save_checkpoint`]): one per consumer.
    /// 1 to [`crate::store::MAX_CHECKPOINT_NAME`] bytes.
    pub name: String,
    /// Most events read and handed to the handler at once. At least 1. Default 100.
    pub batch: u32,
    /// How long to wait before reading again once the feed had nothing new: the longest an
    /// event waits for the consumer while all is well. More than zero. Default 100 ms.
    pub poll_interval: Duration,
    /// The wait after a first failure (of the store or the handler); it doubles with each
    /// failure in a row, up to [`FeedConsumerConfig::retry_max`], and each wait is drawn at
    /// random between its half and itself, so many consumers do not retry in step. More than
    /// zero. Default 100 ms.
    pub retry_initial: Duration,
    /// The longest wait between retries. At least `retry_initial`. Default 30 s.
    pub retry_max: Duration,
}

impl FeedConsumerConfig {
    /// The defaults, with the checkpoint `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            batch: 100,
            poll_interval: Duration::from_millis(100),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
        }
    }

    /// Checks every setting ([`Error::Invalid`] naming the first bad one).
    pub fn validate(&self) -> Result<()> {
        check_checkpoint_name(&self.name)?;
        if self.batch == 0 {
            return Err(Error::invalid("feed consumer: batch must be at least 1"));
        }
        if self.poll_interval.is_zero() || self.retry_initial.is_zero() {
            return Err(Error::invalid(
                "feed consumer: poll_interval and retry_initial must be more than zero",
            ));
        }
        if self.retry_max < self.retry_initial {
            return Err(Error::invalid(
                "feed consumer: retry_max must be at least retry_initial",
            ));
        }
        Ok(())
    }

    /// The wait after `failures` failures in a row (at least 1): exponential from
    /// `retry_initial`, capped at `retry_max`, drawn at random between its half and itself.
    /// Public so a handler that retries on its own (a webhook delivery) backs off alike.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .retry_initial
            .saturating_mul(1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX));
        let wait = doubled.min(self.retry_max);
        wait / 2 + (wait / 2).mul_f64(rand::random::<f64>())
    }
}

/// What a [`FeedConsumer`] does with the events: push notifications, a search index,
/// webhooks, analytics.
#[async_trait]
pub trait FeedHandler: Send + Sync {
    /// Handles `events` (at least one, oldest first, each after the previous batch's). `Ok`:
    /// the checkpoint moves past the last one. `Err`: the same events (and perhaps more) are
    /// handed again after a backoff, so a handler must cope with seeing an event twice (a
    /// crash between handling and saving the checkpoint does the same).
    async fn handle(&self, events: &[StoredEvent]) -> Result<(), BoxError>;
}

/// Runs a [`FeedHandler`] over the event feed, at least once and in order, with the
/// checkpoint kept in the chat store under [`FeedConsumerConfig::name`]: it loads the
/// checkpoint, reads up to [`FeedConsumerConfig::batch`] events after it, hands them to the
/// handler, saves the checkpoint after the last of them once the handler succeeded, and
/// repeats; when the feed has nothing new it waits [`FeedConsumerConfig::poll_interval`].
/// A failure of the store (reading, or saving the checkpoint) or of the handler is logged, and
/// after a backoff ([`FeedConsumerConfig::retry_initial`]) the same batch is read and handed
/// again: nothing is skipped. A consumer restarted on any
/// node resumes after the last saved checkpoint. Run one consumer per name at a time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatcore::Result<()> {
/// use std::sync::{Arc, Mutex};
/// use chatcore::{BoxError, FeedConsumer, FeedConsumerConfig, FeedHandler, MemoryStore, StoredEvent};
/// use chatcore::{NewMessage, Store, Username};
///
/// struct Printer(Mutex<Vec<i64>>);
///
/// #[async_trait::async_trait]
/// impl FeedHandler for Printer {
///     async fn handle(&self, events: &[StoredEvent]) -> Result<(), BoxError> {
///         self.0.lock().unwrap().extend(events.iter().map(|e| e.position().0));
///         Ok(())
///     }
/// }
///
/// let store = Arc::new(MemoryStore::new());
/// let alice = store.create_user(&Username::parse("alice")?).await?;
/// let message = NewMessage { sender: alice.clone(), recipient: alice.username.clone(), body: "hi".into(), idempotency_key: None };
/// let stored = store.insert_message(message).await?.message.id.0;
///
/// let consumer = FeedConsumer::new(store.clone(), FeedConsumerConfig::new("printer"))?;
/// let printer = Printer(Mutex::new(Vec::new()));
/// // Stops once the checkpoint is past the message (a host passes its shutdown signal).
/// let store_ = store.clone();
/// let caught_up = async move {
///     while store_.load_checkpoint("printer").await.unwrap().0 < stored {
///         tokio::time::sleep(std::time::Duration::from_millis(10)).await;
///     }
/// };
/// consumer.run(&printer, caught_up).await;
/// assert_eq!(*printer.0.lock().unwrap(), [stored]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FeedConsumer {
    store: Arc<dyn Store>,
    config: FeedConsumerConfig,
}

impl std::fmt::Debug for FeedConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedConsumer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one step of the loop did.
enum Step {
    /// Handled a batch: read again at once.
    Handled,
    /// Nothing new: wait before reading again.
    CaughtUp,
}

/// Why a step failed, for the log (with its cause: it is never handed on).
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("the store failed: {0}")]
    Store(Error),
    #[error("the handler failed: {0}")]
    Handler(BoxError),
}

impl FeedConsumer {
    /// A consumer over `store`'s feed; a bad `config` is [`Error::Invalid`] here.
    pub fn new(store: Arc<dyn Store>, config: FeedConsumerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { store, config })
    }

    /// Runs until `shutdown` completes, then returns at once: a batch being handled then is
    /// dropped and handed again after a restart (at least once).
    pub async fn run(&self, handler: &dyn FeedHandler, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        // The position after which to read; `None` until the checkpoint is loaded.
        let mut handled: Option<Position> = None;
        let mut failures = 0u32;
        loop {
            let outcome = tokio::select! {
                biased;
                () = &mut shutdown => return,
                outcome = self.step(handler, &mut handled) => outcome,
            };
            let wait = match outcome {
                Ok(Step::Handled) => {
                    failures = 0;
                    continue;
                }
                Ok(Step::CaughtUp) => {
                    failures = 0;
                    self.config.poll_interval
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let wait = self.config.backoff(failures);
                    tracing::warn!(
                        consumer = %self.config.name,
                        %error,
                        failures,
                        retry_in_ms = wait.as_millis() as u64,
                        "feed consumer failed, retrying"
                    );
                    wait
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Reads after `handled` (loaded from the store first), hands what came to the handler
    /// and saves the checkpoint; `handled` moves only once it is saved, so any failure hands
    /// the same batch again.
    async fn step(
        &self,
        handler: &dyn FeedHandler,
        handled: &mut Option<Position>,
    ) -> Result<Step, StepError> {
        let name = &self.config.name;
        let after = match *handled {
            Some(after) => after,
            None => {
                let loaded = self.store.load_checkpoint(name).await.map_err(StepError::Store)?;
                *handled = Some(loaded);
                loaded
            }
        };
        let events = self
            .store
            .feed_after(after, self.config.batch)
            .await
            .map_err(StepError::Store)?;
        let Some(last) = events.last().map(StoredEvent::position) else {
            return Ok(Step::CaughtUp);
        };
        handler.handle(&events).await.map_err(StepError::Handler)?;
        self.store
            .save_checkpoint(name, last)
            .await
            .map_err(StepError::Store)?;
        *handled = Some(last);
        Ok(Step::Handled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let config = FeedConsumerConfig {
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            ..FeedConsumerConfig::new("x")
        };
        for (failures, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1_000), (60, 1_000)] {
            for _ in 0..20 {
                let wait = config.backoff(failures).as_millis();
                assert!(
                    (full / 2..=full).contains(&wait),
                    "{failures} failures: {wait} ms not in [{}, {full}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let good = FeedConsumerConfig::new("x");
        for bad in [
            FeedConsumerConfig::new(""),
            FeedConsumerConfig {
                batch: 0,
                ..good.clone()
            },
            FeedConsumerConfig {
                poll_interval: Duration::ZERO,
                ..good.clone()
            },
            FeedConsumerConfig {
                retry_max: Duration::from_millis(1),
                ..good.clone()
            },
        ] {
            assert!(matches!(bad.validate(), Err(Error::Invalid(_))), "{bad:?}");
        }
    }
}
