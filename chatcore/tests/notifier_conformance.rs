//! The in-process notifier runs the notifier conformance suite (one node; it cannot fail).

use chatcore::LocalNotifier;
use chatcore::notifier_conformance::{Node, NotifierFixture};

struct Local;

#[async_trait::async_trait]
impl NotifierFixture for Local {
    async fn nodes(&self, count: usize, queue_capacity: usize) -> Vec<Node> {
        assert_eq!(count, 1, "an in-process notifier is one node");
        let notifier = LocalNotifier::new(queue_capacity);
        let counted = notifier.clone();
        vec![Node::new(notifier).with_subscriber_count(move |user| counted.subscriber_count(user))]
    }
}

chatcore::notifier_conformance_tests!(Local);
