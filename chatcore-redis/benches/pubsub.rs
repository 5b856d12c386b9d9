//! Notification latency through the real Redis at `CHATCORE_REDIS_URL` (default
//! `redis://127.0.0.1:6379`): node A publishes, a subscription on node B (or on node A
//! itself, delivered without the round trip) receives.
//!
//! `cargo bench -p chatcore-redis --bench pubsub`

use chatcore::notify::{Delivery, Event, Notifier, Recipient};
use chatcore::{Message, MessageId, Position, UserId, Username, now_micros};
use chatcore_redis::{RedisConfig, RedisNotifier};
use criterion::{Criterion, criterion_main};

fn event() -> Event {
    Event::message(&Message {
        id: MessageId(1),
        sender: Username::parse("alice").unwrap(),
        recipient: Username::parse("bob").unwrap(),
        created_at: now_micros(),
        body: "a typical short chat message of about a hundred characters, give or take a few words".into(),
        edited: None,
        deleted: false,
    })
}

async fn receive(subscription: &mut chatcore::Subscription) {
    match subscription.recv().await {
        Some(Delivery::Event { .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
}

fn pubsub(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = RedisConfig {
        url: std::env::var("CHATCORE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        channel_prefix: format!("chatcore-bench:{}:", std::process::id()),
        ..Default::default()
    };
    let (node_a, node_b) = runtime.block_on(async {
        (
            RedisNotifier::connect(config.clone()).await.expect("redis"),
            RedisNotifier::connect(config).await.expect("redis"),
        )
    });
    let (alice, bob) = (UserId(1), UserId(2));
    let both = [
        Recipient {
            user: alice,
            previous: Some(Position(0)),
        },
        Recipient {
            user: bob,
            previous: Some(Position(0)),
        },
    ];
    let event = event();

    let mut group = c.benchmark_group("redis_notifier");
    // Both participants of a message (one pipelined round trip); nobody listens.
    group.bench_function("publish_two_users", |b| {
        b.to_async(&runtime)
            .iter(|| async { node_a.publish(&both, &event).await.unwrap() })
    });

    // Publish on node A, receive on node B: what a recipient on another node waits.
    let mut bobs_tab = runtime.block_on(node_b.subscribe(bob)).unwrap();
    group.bench_function("cross_node_publish_to_receive", |b| {
        b.iter(|| {
            runtime.block_on(async {
                node_a.publish(&both, &event).await.unwrap();
                receive(&mut bobs_tab).await;
            })
        })
    });

    // Publish on node A, receive on node A: delivered before the PUBLISH round trip, but
    // `publish` still waits for it.
    let mut alices_tab = runtime.block_on(node_a.subscribe(alice)).unwrap();
    group.bench_function("same_node_publish_to_receive", |b| {
        b.iter(|| {
            runtime.block_on(async {
                node_a.publish(&both, &event).await.unwrap();
                receive(&mut alices_tab).await;
                receive(&mut bobs_tab).await;
            })
        })
    });
    drop(alices_tab);

    // 100 messages published concurrently on node A, all received on node B: per-message
    // cost under load (divide by 100), the regime of the 1,000 messages/s target.
    const BURST: u64 = 100;
    group.throughput(criterion::Throughput::Elements(BURST));
    group.bench_function("cross_node_burst_of_100", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let publishes = (0..BURST).map(|_| node_a.publish(&both, &event));
                for result in futures_util::future::join_all(publishes).await {
                    result.unwrap();
                }
                for _ in 0..BURST {
                    receive(&mut bobs_tab).await;
                }
            })
        })
    });
    group.finish();
}

mod group {
    //! The criterion entry points (generated, hence undocumented).
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::pubsub);
}

criterion_main!(group::benches);
