//! Gap notices owed after failed publishes, published as [`crate::wire::Payload::gap`] on
//! each owed user's channel (the bookkeeping is [`chatcore::notify::GapDebts`]). A node that
//! receives one delivers [`chatcore::Delivery::Gap`] to the user's subscriptions.

use std::sync::Arc;

use chatcore::notify::GapDebts;
use redis::aio::ConnectionManager;

use crate::RedisConfig;
use crate::notifier::run_pipeline;
use crate::subscriber::{Channels, MAX_BATCH};
use crate::wire::{NodeId, Payload};

/// Publishes the owed notices, in pipelines of at most [`MAX_BATCH`], retrying with
/// [`RedisConfig::backoff`] while Redis refuses them. Runs until aborted.
pub(crate) async fn run(
    debts: Arc<GapDebts>,
    publisher: ConnectionManager,
    channels: Arc<Channels>,
    node: NodeId,
    config: RedisConfig,
) {
    debts
        .pay(
            MAX_BATCH,
            |failures| config.backoff(failures),
            |users| {
                let mut pipeline = redis::pipe();
                for user in users {
                    pipeline
                        .cmd("PUBLISH")
                        .arg(channels.name(user))
                        .arg(Payload::gap(node))
                        .ignore();
                }
                let (publisher, limit) = (publisher.clone(), config.command_timeout);
                async move { run_pipeline(&publisher, &pipeline, limit).await }
            },
        )
        .await
}
