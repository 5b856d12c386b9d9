//! The in-process notifier: publishing one event while 1, 100 and 10,000 users are subscribed,
//! and serializing a page of 15 messages to JSON.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use chatcore::notify::{Delivery, Event};
use chatcore::{LocalNotifier, Message, MessageId, Notifier, UserId, Username, now_micros};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn message(id: i64) -> Message {
    Message {
        id: MessageId(id),
        sender: Username::parse("alice").unwrap(),
        recipient: Username::parse("bob").unwrap(),
        created_at: now_micros(),
        body: "a typical short chat message, about sixty bytes long......".into(),
    }
}

fn publish(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut group = c.benchmark_group("local_notifier_publish");
    group.throughput(Throughput::Elements(1));
    for users in [1usize, 100, 10_000] {
        let notifier = LocalNotifier::new(1024);
        // Every user has a subscription, as with that many connected clients; a drain task per
        // subscription keeps queues from filling, as a WebSocket writer would.
        let subscriptions: Vec<_> = runtime.block_on(async {
            let mut subs = Vec::with_capacity(users);
            for u in 0..users {
                subs.push(notifier.subscribe(UserId(u as i64)).await.unwrap());
            }
            subs
        });
        let drains: Vec<_> = subscriptions
            .into_iter()
            .map(|mut sub| {
                runtime.spawn(async move {
                    while let Some(delivery) = sub.recv().await {
                        if matches!(delivery, Delivery::Lagged) {
                            break;
                        }
                    }
                })
            })
            .collect();
        let event = Event::Message(Arc::new(message(1)));
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(users), &users, |b, &users| {
            b.to_async(&runtime).iter(|| {
                // A message notifies its two participants, spread over all subscribed users.
                next = (next + 2) % users.max(2);
                let pair = [UserId(next as i64), UserId(((next + 1) % users) as i64)];
                let notifier = &notifier;
                let event = &event;
                async move { notifier.publish(black_box(&pair), event).await.unwrap() }
            })
        });
        drop(notifier);
        for drain in drains {
            drain.abort();
        }
    }
    group.finish();
}

fn serialize_page(c: &mut Criterion) {
    let page: Vec<Message> = (0..15).map(message).collect();
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Elements(15));
    group.bench_function("page_of_15", |b| {
        b.iter(|| serde_json::to_vec(black_box(&page)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, publish, serialize_page);
criterion_main!(benches);
