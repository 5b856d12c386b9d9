//! `PgNotifier` runs the notifier conformance suite: two nodes (two notifiers) on a database
//! of each test's own. The outage case breaks publishing the way a server that refuses
//! connections would: the database stops accepting new connections and the publishing
//! connections are cut, while the listening connections stay up.

mod common;

use chatcore::notifier_conformance::{Node, NotifierFixture};
use chatcore_postgres::testing::TestDatabase;
use chatcore_postgres::{PgNotifier, PgNotifierConfig};
use sqlx::{ConnectOptions, PgConnection};
use tokio::sync::OnceCell;

/// One deployment: a migrated database (for the large-payload table), made on first use.
#[derive(Default)]
struct Deployment {
    database: OnceCell<TestDatabase>,
}

impl Deployment {
    async fn database(&self) -> &TestDatabase {
        self.database
            .get_or_init(|| async {
                let database = TestDatabase::create(common::PREFIX).await.expect("test database");
                let store = database
                    .store(common::test_config())
                    .await
                    .expect("migrated store");
                chatcore::Backend::close(&store).await.expect("close");
                database
            })
            .await
    }

    /// A connection to the maintenance database, as the server's superuser.
    async fn admin(&self) -> PgConnection {
        self.database()
            .await
            .options()
            .unwrap()
            .database("postgres")
            .connect()
            .await
            .expect("admin connection")
    }
}

#[async_trait::async_trait]
impl NotifierFixture for Deployment {
    async fn nodes(&self, count: usize, queue_capacity: usize) -> Vec<Node> {
        let options = self.database().await.options().unwrap();
        let config = PgNotifierConfig {
            queue_capacity,
            max_connections: 2,
            ..PgNotifierConfig::default()
        };
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            let notifier = PgNotifier::connect_with(options.clone(), config.clone())
                .await
                .expect("connect the notifier");
            let counted = notifier.clone();
            nodes.push(Node::new(notifier).with_subscriber_count(move |user| counted.subscriber_count(user)));
        }
        nodes
    }

    async fn break_publishing(&self) -> bool {
        let name = self.database().await.name().to_owned();
        let mut admin = self.admin().await;
        sqlx::query(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'chatcore-notify-publish'",
        )
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();
        true
    }

    async fn restore_publishing(&self) {
        let name = self.database().await.name().to_owned();
        let mut admin = self.admin().await;
        sqlx::query(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

chatcore::notifier_conformance_tests!(Deployment::default(), multi_node, outage);
