//! Real-process crash test of workflows: a child process places orders (each placement makes
//! a workflow dispatch a `Ship` command, stored with the workflow's event) while two command
//! relays with the same name hand those commands to a handler whose effect is an append with
//! no expected version (so a second handling would show as a duplicate). The parent kills the
//! child with SIGKILL at a random moment, reopens the store, finishes the relay's work, and
//! checks that every acknowledged order is there, that every stored order's command exists
//! exactly once and was handled exactly once, and that nothing was handled for an order that
//! does not exist.
//!
//! `ANNALS_WORKFLOW_KILL_ROUNDS` sets the number of rounds (default 30).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::domain::shop::{Order, Placed, Ship, orders_bus};
use annals::domain::{
    Aggregate, BusError, COMMAND_EVENT_TYPE, COMMAND_HANDLED, CommandRelay, MessageBus, Part,
    UnitOfWork,
};
use annals::{Direction, ExpectedVersion, NewEvent, Position, Store};

const DIR_VAR: &str = "ANNALS_WORKFLOW_KILL_DIR";
const START_VAR: &str = "ANNALS_WORKFLOW_KILL_START";
const EFFECTS: &str = "shipped-log";

/// The shop's orders bus, with a `Ship` handler whose effect nothing but the relay's marker
/// keeps from being repeated.
fn bus() -> MessageBus<Store> {
    let mut bus = orders_bus();
    bus.handle_command(
        |c: Ship, uow: &mut UnitOfWork<'_, Store>| -> Result<(), BusError> {
            // An effect that nothing but the relay's marker keeps from being repeated.
            uow.append(Part {
                stream: EFFECTS.into(),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent::new("Shipped", c.order.to_le_bytes().to_vec())],
            });
            Ok(())
        },
    )
    .unwrap();
    bus
}

fn open(dir: &Path) -> annals::Result<Store> {
    Store::builder()
        .segment_size(1 << 20)
        .index_flush_events(100)
        .open(dir.join("workflows"))
}

/// The child: places orders and relays commands until killed.
#[test]
#[ignore = "run by kill_9_never_loses_or_repeats_a_dispatched_command in a child process"]
fn child_workflows() {
    let dir = std::env::var(DIR_VAR).expect("started by the parent test");
    let start: u64 = std::env::var(START_VAR).unwrap().parse().unwrap();
    let store = open(Path::new(&dir)).expect("child open");
    let bus = bus();
    let relay = CommandRelay::new("shipping").unwrap();
    println!("READY");
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    relay.run(&bus, &store).expect("child relay");
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        }
        for order in start.. {
            let mut uow = UnitOfWork::new(&store);
            uow.create::<Order>(&order.to_string())
                .record(Placed { order, fail: false });
            bus.settle(&mut uow).expect("child settle");
            uow.commit().expect("child commit");
            let mut out = std::io::stdout().lock();
            writeln!(out, "P {order}").unwrap();
            out.flush().unwrap();
        }
    });
}

/// Checks the store after a crash (and after the parent's relay finished); returns the number
/// of orders.
fn check(store: &Store, acked: &HashSet<u64>) -> Result<usize, String> {
    let mut orders = HashSet::new();
    let mut commands: HashMap<u64, usize> = HashMap::new();
    let mut effects: HashMap<u64, usize> = HashMap::new();
    let mut sources = HashSet::new();
    for e in store
        .read_log(Position::START, Direction::Forwards, usize::MAX)
        .map_err(|e| e.to_string())?
    {
        let e = e.map_err(|e| e.to_string())?;
        let stream = e.stream();
        if let Some(id) = stream.strip_prefix("order-") {
            orders.insert(id.parse::<u64>().unwrap());
        } else if let Some(id) = stream.strip_prefix("shipping-")
            && e.event_type() == COMMAND_EVENT_TYPE
        {
            *commands.entry(id.parse().unwrap()).or_default() += 1;
        } else if stream == EFFECTS {
            let order = u64::from_le_bytes(e.payload().try_into().unwrap());
            *effects.entry(order).or_default() += 1;
        } else if stream == "$relay-shipping" {
            if e.event_type() != COMMAND_HANDLED {
                return Err(format!("unexpected marker {}", e.event_type()));
            }
            let marker: serde_json::Value = serde_json::from_slice(e.payload()).unwrap();
            if !sources.insert(marker["source"].as_u64().unwrap()) {
                return Err(format!("command at {} marked twice", marker["source"]));
            }
        }
    }
    if let Some(lost) = acked.iter().find(|o| !orders.contains(o)) {
        return Err(format!("acknowledged order {lost} is missing"));
    }
    for order in &orders {
        if commands.get(order) != Some(&1) {
            return Err(format!(
                "order {order} has {:?} stored commands",
                commands.get(order)
            ));
        }
        if effects.get(order) != Some(&1) {
            return Err(format!(
                "order {order} was handled {:?} times",
                effects.get(order)
            ));
        }
    }
    if let Some(ghost) = effects
        .keys()
        .chain(commands.keys())
        .find(|o| !orders.contains(o))
    {
        return Err(format!(
            "order {ghost} does not exist but has a command or an effect"
        ));
    }
    if sources.len() != orders.len() {
        return Err(format!(
            "{} markers for {} orders",
            sources.len(),
            orders.len()
        ));
    }
    Ok(orders.len())
}

#[test]
fn kill_9_never_loses_or_repeats_a_dispatched_command() {
    let rounds = crate::common::rounds("ANNALS_WORKFLOW_KILL_ROUNDS", 30);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashSet<u64> = HashSet::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut pending_at_kill = 0;
    let mut orders = 0;
    for round in 0..rounds {
        let start = (round * 1_000_000).to_string();
        let lines = crate::common::run_and_kill(
            "workflow_kill::child_workflows",
            &[
                (DIR_VAR, dir.path().as_os_str()),
                (START_VAR, std::ffi::OsStr::new(&start)),
            ],
            &mut rng,
            5,
            80,
        );
        acked.extend(
            lines
                .iter()
                .filter_map(|l| l.strip_prefix("P "))
                .map(|o| o.parse::<u64>().unwrap()),
        );

        let store =
            open(dir.path()).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let relay = CommandRelay::new("shipping").unwrap();
        pending_at_kill += relay.run(&bus(), &store).unwrap().handled;
        orders = check(&store, &acked).unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    assert!(
        acked.len() as u64 > rounds,
        "the children placed orders ({})",
        acked.len()
    );
    println!(
        "{rounds} SIGKILLs: {orders} orders ({} acknowledged), each command stored and handled exactly once; \
         {pending_at_kill} commands were still pending at a kill and handled after the reopen",
        acked.len()
    );
}
