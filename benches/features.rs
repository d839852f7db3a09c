//! The cost of the store's features, each measured against the engine path it rides on, in the
//! same run:
//!
//! - one synchronous subscription on durable single-event appends, against none;
//! - a catch-up subscription through a 1,000,000-event history, against `read_all`: with no
//!   filter, with one stream of 100 (1 % of the events), and with a stream prefix minus a
//!   type (11 %);
//! - outbox delivery to an in-memory publisher.
//!
//! Run: `cargo bench -p annals-bench --bench features`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use annals::outbox::{Outbox, OutboxMessage, OutboxOptions};
use annals::subscriptions::CatchUpStart;
use annals::subscriptions::Filter;
use annals::{Direction, ExpectedVersion, NewEvent, Position, Store};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn dir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var("ANNALS_BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap()
}

fn payload() -> Vec<u8> {
    br#"{"account": "acc-42", "amount": 125, "currency": "EUR", "memo": "a hundred bytes of payload..."}"#.to_vec()
}

fn subscription_overhead(_: &mut Criterion) {
    // The disk's latency drifts more between two criterion runs than a callback costs, so the
    // two cases are measured interleaved, append for append, on two stores of the same disk.
    let dir = dir();
    let plain = Store::open(dir.path().join("plain")).unwrap();
    let subscribed = Store::open(dir.path().join("subscribed")).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let seen = counter.clone();
    subscribed.subscribe("count", Filter::All, move |e| {
        seen.fetch_add(e.payload().len() as u64, Ordering::Relaxed);
        Ok(())
    });
    let p = payload();
    let mut ratios = Vec::new();
    let (mut total_plain, mut total_sub, mut n) = (Duration::ZERO, Duration::ZERO, 0u32);
    for _round in 0..7 {
        let (mut t_plain, mut t_sub) = (Duration::ZERO, Duration::ZERO);
        for i in 0..1500 {
            let (first, second) = if i % 2 == 0 {
                (&plain, &subscribed)
            } else {
                (&subscribed, &plain)
            };
            for store in [first, second] {
                let start = Instant::now();
                store
                    .append("s", ExpectedVersion::Any, [NewEvent::new("E", p.clone())])
                    .unwrap();
                let took = start.elapsed();
                if std::ptr::eq(store, &plain) {
                    t_plain += took
                } else {
                    t_sub += took
                }
            }
        }
        ratios.push(t_sub.as_secs_f64() / t_plain.as_secs_f64());
        total_plain += t_plain;
        total_sub += t_sub;
        n += 1500;
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "durable_append_subscription_overhead: no subscription {:.1} us/append, one subscription {:.1} us/append; \
         median of 7 interleaved rounds: {:+.2}% (rounds from {:+.2}% to {:+.2}%)",
        total_plain.as_secs_f64() * 1e6 / f64::from(n),
        total_sub.as_secs_f64() * 1e6 / f64::from(n),
        (ratios[3] - 1.0) * 100.0,
        (ratios[0] - 1.0) * 100.0,
        (ratios[6] - 1.0) * 100.0
    );
    assert!(counter.load(Ordering::Relaxed) > 0);
}

fn history(c: &mut Criterion) {
    let dir = dir();
    let store = Store::open(dir.path().join("history")).unwrap();
    let p = payload();
    let total = 1_000_000u64;
    for i in 0..total / 1000 {
        let batch = (0..1000).map(|_| NewEvent::new("E", p.clone()).published(true));
        store
            .append(&format!("account-{}", i % 100), ExpectedVersion::Any, batch)
            .unwrap();
    }
    let mut g = c.benchmark_group("history_1m_events");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(total));
    g.bench_function("read_all", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for e in store
                .read_all(Position::START, Direction::Forwards, usize::MAX)
                .unwrap()
            {
                n += black_box(e.unwrap().payload().len() as u64);
            }
            n
        })
    });
    let mut run = 0u64;
    let filters = [
        ("catch_up", Filter::All, total),
        (
            "catch_up_one_stream",
            Filter::Stream("account-7".into()),
            total / 100,
        ),
        (
            "catch_up_prefix_except_type",
            Filter::StreamPrefix("account-1".into()).except(Filter::EventType("Other".into())),
            total * 11 / 100,
        ),
    ];
    for (name, filter, expected) in filters {
        g.bench_function(name, |b| {
            b.iter(|| {
                run += 1;
                let mut sub = store
                    .catch_up(
                        &format!("bench-{run}"),
                        CatchUpStart::Beginning,
                        filter.clone(),
                    )
                    .unwrap();
                let (mut n, mut events) = (0u64, 0u64);
                loop {
                    let batch = sub.poll(1000).unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    for e in batch {
                        n += black_box(e.payload().len() as u64);
                        events += 1;
                    }
                }
                assert_eq!(events, expected, "{name}");
                n
            })
        });
    }
    g.finish();

    // Outbox: every event is published; each iteration is a fresh outbox from the start, so it
    // delivers the whole history (and records its progress) into memory.
    let mut g = c.benchmark_group("outbox_1m_events");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(total));
    g.bench_function("deliver_to_memory", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                run += 1;
                let mut sink: Vec<annals::outbox::Envelope> = Vec::with_capacity(total as usize);
                let options = OutboxOptions {
                    batch: usize::MAX,
                    ..OutboxOptions::default()
                };
                let start = Instant::now();
                let mut outbox = Outbox::new(
                    &store,
                    &format!("bench-{run}"),
                    |m: &OutboxMessage| {
                        sink.push(m.envelope.clone());
                        Ok(())
                    },
                    options,
                )
                .unwrap();
                let report = outbox.run_once().unwrap();
                elapsed += start.elapsed();
                assert_eq!(report.delivered as u64, total);
                drop(outbox);
                black_box(sink);
            }
            elapsed
        })
    });
    g.finish();
}

criterion_group!(benches, subscription_overhead, history);
criterion_main!(benches);
