//! `RedisNotifier` runs the notifier conformance suite: two nodes (two notifiers) on a
//! `redis-server` each test starts for itself, so that the outage case can forbid `PUBLISH`
//! (an ACL) while the subscriber connections stay up.

mod common;

use chatcore::notifier_conformance::{Node, NotifierFixture};
use chatcore_redis::{RedisConfig, RedisNotifier};
use common::{PrivateRedis, test_config};
use tokio::sync::OnceCell;

/// One deployment: a private Redis, started on the first call of `nodes`.
#[derive(Default)]
struct PrivateDeployment {
    server: OnceCell<PrivateRedis>,
}

impl PrivateDeployment {
    async fn server(&self) -> &PrivateRedis {
        self.server.get_or_init(PrivateRedis::start).await
    }
}

#[async_trait::async_trait]
impl NotifierFixture for PrivateDeployment {
    async fn nodes(&self, count: usize, queue_capacity: usize) -> Vec<Node> {
        let config = RedisConfig {
            queue_capacity,
            ..test_config(self.server().await.url())
        };
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            let notifier = RedisNotifier::connect(config.clone())
                .await
                .expect("connect to the private redis");
            let counted = notifier.clone();
            nodes.push(Node::new(notifier).with_subscriber_count(move |user| counted.subscriber_count(user)));
        }
        nodes
    }

    async fn break_publishing(&self) -> bool {
        self.server().await.allow_publish(false).await;
        true
    }

    async fn restore_publishing(&self) {
        self.server().await.allow_publish(true).await;
    }
}

chatcore::notifier_conformance_tests!(PrivateDeployment::default(), multi_node, outage);
