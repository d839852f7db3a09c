//! A small shop program that keeps running: it places typed orders, publishes them through the
//! outbox and keeps a projection of the takings. Use it to watch a store while its program runs
//! (`annals tail -f`, `annals info`), and to see that a backup restores the outbox's progress.
//!
//! ```sh
//! cargo run --example shop_program -- /tmp/shop 5     # place orders for 5 seconds
//! annals tail -f /tmp/shop                             # in another terminal, meanwhile
//! annals export /tmp/shop backup.jsonl.gz && annals import backup.jsonl.gz /tmp/copy
//! cargo run --example shop_program -- /tmp/copy 0     # the copy's outbox sends nothing again
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use annals::outbox::{Outbox, OutboxMessage, OutboxOptions};
use annals::subscriptions::{CatchUpStart, Filter};
use annals::typed::EventType;
use annals::{ExpectedVersion, Store};
use serde::{Deserialize, Serialize};

/// An order was placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The customer.
    pub customer: String,
    /// What it costs, in cents.
    pub cents: u64,
}

impl EventType for OrderPlaced {
    const NAME: &'static str = "OrderPlaced";
    const PUBLISHED: bool = true;
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: shop_program PATH SECONDS")?;
    let seconds: u64 = args.next().unwrap_or_else(|| "5".into()).parse()?;
    let store = Store::open(&path)?;

    // The "broker": what the outbox sends is counted, and printed to standard error.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let mut outbox = Outbox::new(
        &store,
        "broker",
        move |m: &OutboxMessage| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            eprintln!("outbox sent {} {}", m.event.stream(), m.event.id());
            Ok(())
        },
        OutboxOptions::default(),
    )?;
    let sent_so_far = || sent.load(std::sync::atomic::Ordering::Relaxed);
    let orders = Filter::Category("order".into());
    let mut takings = store.catch_up("takings", CatchUpStart::Beginning, orders)?;
    let (mut total, mut handled) = (0u64, 0u64);
    let mut project = |sub: &mut annals::subscriptions::CatchUp<'_>| -> annals::Result<u64> {
        for e in sub.poll(usize::MAX)? {
            let order: OrderPlaced = store.decode(&e)?;
            total += order.cents;
            handled += 1;
        }
        sub.checkpoint()?;
        Ok(handled)
    };

    // What a restored store still had to do.
    outbox.run_once()?;
    let handled_at_start = project(&mut takings)?;
    let sent_at_start = sent_so_far();

    let started = Instant::now();
    let mut placed = 0u64;
    let first = store
        .read_category("order", annals::Position::START, usize::MAX)?
        .count() as u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let n = first + placed;
        let order = OrderPlaced {
            customer: format!("customer-{}", n % 7),
            cents: 100 + (n * 37) % 900,
        };
        store.append_events(&format!("order-{n}"), ExpectedVersion::NoStream, [order])?;
        placed += 1;
        if placed.is_multiple_of(10) {
            outbox.run_once()?;
            project(&mut takings)?;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    outbox.run_once()?;
    let handled = project(&mut takings)?;
    drop(outbox);
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "at start: the outbox sent {sent_at_start} events and the projection handled \
         {handled_at_start} that the store had not yet sent or handled"
    )?;
    writeln!(
        out,
        "placed {placed} orders in {seconds} s; sent {} events in all; the projection handled \
         {handled} orders in this run (takings seen: {total} cents)",
        sent_so_far()
    )?;
    Ok(())
}
