//! Exactly-once processing under `kill -9`: a child process runs a processor that writes one
//! invoice for each order, committed with its checkpoint in one atomic append
//! (`Store::run_processor`); the parent kills it at random moments, adds orders between
//! rounds, and after each kill checks that every order before the checkpoint has exactly one
//! invoice and no order after it has any: nothing processed twice, nothing skipped.
//!
//! `ANNALS_PROCESSOR_KILL_ROUNDS` sets the number of rounds (default 100).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use annals::subscriptions::{CatchUpStart, Filter, ProjectionOptions};
use annals::{Direction, ExpectedVersion, NewEvent, Position, RecordedEvent, Store, Transaction};

const DIR_VAR: &str = "ANNALS_PROCESSOR_CHILD_DIR";
const NAME: &str = "invoicer";
/// Orders placed before each round.
const PER_ROUND: u64 = 300;

fn open(dir: &Path) -> Store {
    Store::builder()
        .segment_size(1 << 20)
        .index_flush_events(300)
        .open(dir.join("processed"))
        .expect("open")
}

/// The processor's handler: one invoice per order, naming it.
fn invoice<'s>(
    order: &RecordedEvent,
    tx: Transaction<'s>,
) -> Result<Transaction<'s>, annals::BoxError> {
    let invoice = NewEvent::new("Invoiced", order.id().to_string());
    Ok(tx.append("invoices", ExpectedVersion::Any, [invoice]))
}

fn orders() -> Filter {
    Filter::Category("order".into())
}

/// The child: runs the processor until killed.
#[test]
#[ignore = "run by an_exactly_once_processor_survives_kill_9 in a child process"]
fn child_processor() {
    let dir = std::env::var(DIR_VAR).expect("started by the parent test");
    let store = Arc::new(open(Path::new(&dir)));
    let options = ProjectionOptions {
        batch: 3,
        ..ProjectionOptions::default()
    };
    let _processor = store
        .run_processor(NAME, CatchUpStart::Beginning, orders(), invoice, options)
        .expect("start the processor");
    println!("READY");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Checks the invariant; returns (orders invoiced, orders waiting).
fn check(store: &Store, round: u64) -> (usize, usize) {
    let checkpoint = store
        .catch_up(NAME, CatchUpStart::Beginning, orders())
        .unwrap()
        .position();
    let mut invoiced: HashMap<String, u32> = HashMap::new();
    for e in store
        .read_stream("invoices", 0, Direction::Forwards, usize::MAX)
        .unwrap()
    {
        let e = e.unwrap();
        *invoiced
            .entry(String::from_utf8(e.payload().to_vec()).unwrap())
            .or_default() += 1;
    }
    let (mut done, mut waiting) = (0, 0);
    for order in store
        .read_category("order", Position::START, usize::MAX)
        .unwrap()
    {
        let order = order.unwrap();
        let n = invoiced.remove(&order.id().to_string()).unwrap_or(0);
        if order.position() < checkpoint {
            assert_eq!(
                n,
                1,
                "round {round}: order {} invoiced {n} times",
                order.id()
            );
            done += 1;
        } else {
            assert_eq!(
                n,
                0,
                "round {round}: order {} past the checkpoint invoiced",
                order.id()
            );
            waiting += 1;
        }
    }
    assert!(invoiced.is_empty(), "round {round}: invoices of no order");
    (done, waiting)
}

/// Places orders `first..first + n`, one stream each, in one commit.
fn place(store: &Store, first: u64, n: u64) {
    let mut tx = store.transaction();
    for i in first..first + n {
        tx = tx.append(
            &format!("order-{i}"),
            ExpectedVersion::NoStream,
            [NewEvent::new("OrderPlaced", i.to_string())],
        );
    }
    tx.commit().unwrap();
}

#[test]
fn an_exactly_once_processor_survives_kill_9() {
    let rounds = crate::common::rounds("ANNALS_PROCESSOR_KILL_ROUNDS", 100);
    let dir = tempfile::tempdir().unwrap();
    let mut placed = 0;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let (mut progressed, mut interrupted) = (0, 0);
    let mut last_done = 0;
    for round in 0..rounds {
        {
            let store = open(dir.path());
            place(&store, placed, PER_ROUND);
            placed += PER_ROUND;
        }
        crate::common::run_and_kill(
            "processor_kill::child_processor",
            &[(DIR_VAR, dir.path().as_os_str())],
            &mut rng,
            1,
            40,
        );
        let store = open(dir.path());
        let (done, waiting) = check(&store, round);
        assert_eq!(done + waiting, placed as usize);
        assert!(done >= last_done, "round {round}: the checkpoint went back");
        if done > last_done {
            progressed += 1;
        }
        if waiting > 0 {
            interrupted += 1;
        }
        last_done = done;
    }
    // To the end, in this process: every order once.
    let store = Arc::new(open(dir.path()));
    let processor = store
        .run_processor(
            NAME,
            CatchUpStart::Beginning,
            orders(),
            invoice,
            ProjectionOptions::default(),
        )
        .unwrap();
    assert!(
        processor
            .wait_for(
                Position::new(store.end_position().as_u64() - 1),
                Duration::from_secs(60)
            )
            .unwrap()
    );
    processor.stop().unwrap();
    let (done, waiting) = check(&store, rounds);
    assert_eq!((done, waiting), (placed as usize, 0));
    assert!(
        progressed > rounds / 4,
        "the children processed orders in {progressed} rounds"
    );
    assert!(
        interrupted > rounds / 4,
        "kills landed in the middle of the work in {interrupted} rounds"
    );
    println!(
        "{rounds} SIGKILLs of an exactly-once processor: {placed} orders, each invoiced exactly \
         once; the children made progress in {progressed} rounds and were killed with orders \
         still waiting in {interrupted}; {last_done} orders were invoiced before the last kill"
    );
}
