//! The in-process notifier: publishing one (already rendered) event while 1, 100 and 10,000
//! users are subscribed; rendering a message event once; serializing a page of 15 messages
//! to JSON.

// criterion_group!/criterion_main! generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;

use chatcore::notify::{Event, Recipient};
use chatcore::{LocalNotifier, Message, MessageId, Notifier, Position, UserId, Username, now_micros};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn message(id: i64) -> Message {
    Message {
        id: MessageId(id),
        sender: Username::parse("alice").unwrap(),
        recipient: Username::parse("bob").unwrap(),
        created_at: now_micros(),
        body: "a typical short chat message, about sixty bytes long......".into(),
        edited: None,
        deleted: false,
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
            .map(|mut sub| runtime.spawn(async move { while sub.recv().await.is_some() {} }))
            .collect();
        // Rendered once, as the service does; publishing shares the bytes.
        let event = Event::message(&message(1));
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(users), &users, |b, &users| {
            b.to_async(&runtime).iter(|| {
                // A message notifies its two participants, spread over all subscribed users.
                next = (next + 2) % users.max(2);
                let pair = [next, (next + 1) % users].map(|user| Recipient {
                    user: UserId(user as i64),
                    previous: Some(Position(0)),
                });
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

    // What one send costs in rendering, whatever the number of sockets and nodes it reaches.
    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("render_message", |b| {
        b.iter(|| Event::message(black_box(&page[0])))
    });
    group.finish();
}

criterion_group!(benches, publish, serialize_page);
criterion_main!(benches);
