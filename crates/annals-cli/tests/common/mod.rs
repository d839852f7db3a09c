//! What the CLI's tests share: the PostgreSQL server they may use, and orders to place, an
//! outbox and a projection to run, on either backend. (Each test binary uses some of it.)
#![allow(dead_code)]

use annals::backend::{Backend, Follower};
use annals::outbox::{Outbox, OutboxMessage, OutboxOptions};
use annals::subscriptions::Filter;
use annals::{Direction, ExpectedVersion, NewEvent, RecordedEvent};
use uuid::Uuid;

/// The environment variable naming the PostgreSQL server (a libpq connection string).
pub const URL: &str = "ANNALS_PG_URL";

/// The server's connection string, or `None` (and a note) without one.
pub fn server(test: &str) -> Option<String> {
    match std::env::var(URL) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            // Written past the test harness's capture, so that the skip shows in every run.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED the PostgreSQL test `{test}`: {URL} is not set (`scripts/pg start DIR` \
                 starts a throwaway server and prints one)"
            );
            None
        }
    }
}

/// Places orders `range` (order `i` in stream `order-{i % 13}`, published; order 7 is
/// "poison", which the outbox of [`run_outbox`] refuses); returns their ids.
pub fn place_orders<B: Backend>(store: &B, range: std::ops::Range<u32>) -> Vec<Uuid> {
    range
        .map(|i| {
            let payload = if i == 7 {
                "\"poison\"".to_owned()
            } else {
                format!(r#"{{"order": {i}, "cents": {}}}"#, i * 100)
            };
            let e = NewEvent::new("OrderPlaced", payload)
                .published(true)
                .with_correlation_id(Uuid::now_v7());
            let id = e.id;
            store
                .append_to_stream(&format!("order-{}", i % 13), ExpectedVersion::Any, vec![e])
                .unwrap();
            id
        })
        .collect()
}

/// Delivers every published event through outbox `broker`, failing (and parking, after one
/// attempt) the events whose payload says `"poison"`; returns the delivered ids and the id of
/// each parked event.
pub fn run_outbox<B: Backend>(store: &B) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut sent = Vec::new();
    let options = OutboxOptions {
        max_attempts: 1,
        ..OutboxOptions::default()
    };
    let mut outbox = Outbox::new(
        store,
        "broker",
        |m: &OutboxMessage| {
            if m.event.payload().starts_with(b"\"poison") {
                return Err("the broker refuses it".into());
            }
            sent.push(m.event.id());
            Ok(())
        },
        options,
    )
    .unwrap();
    while !outbox.run_once().unwrap().caught_up {}
    let parked = outbox
        .parked()
        .unwrap()
        .iter()
        .map(|p| {
            store
                .read_log_page(p.position, Direction::Forwards, 1)
                .unwrap()
                .pop()
                .filter(|e| e.position() == p.position)
                .expect("a parked event names an event")
                .id()
        })
        .collect();
    drop(outbox);
    (sent, parked)
}

/// The events projection `totals` (orders) had not handled; it handles them, checkpointing
/// (the checkpoint `Store::catch_up` keeps too).
pub fn run_projection<B: Backend>(store: &B) -> Vec<Uuid> {
    let mut sub = Follower::new(store, "totals", Filter::Category("order".into())).unwrap();
    let mut seen = Vec::new();
    loop {
        let batch = sub.poll(50).unwrap();
        if batch.is_empty() {
            return seen;
        }
        seen.extend(batch.iter().map(RecordedEvent::id));
        sub.checkpoint().unwrap();
    }
}
