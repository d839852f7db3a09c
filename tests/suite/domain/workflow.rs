//! Workflows and the command relay: commands stored with the workflow, handled exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use annals::domain::testing::{BusOutcome, BusTest, TempStore, TestStore};
use annals::domain::{
    Aggregate, BusError, COMMAND_EVENT_TYPE, COMMAND_FAILED, COMMAND_HANDLED, CommandRelay,
    MessageBus, Repository, UnitOfWork,
};
use annals::{Direction, Position, Store};

use super::shop::*;

#[test]
fn dispatched_commands_are_stored_with_the_workflow_and_handled_once() {
    let store = TempStore::new().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let bus = shop(handled.clone());
    place(&bus, &store, 1, false);
    place(&bus, &store, 2, false);
    // The command is an event of the workflow's stream, written with its decision.
    let flow: Vec<String> = store
        .read_stream("shipping-1", 0, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap().event_type().to_owned())
        .collect();
    assert_eq!(flow, ["ShippingRequested", COMMAND_EVENT_TYPE]);
    // The workflow's state ignores its stored commands when it is loaded.
    assert!(
        Repository::<Shipping, _>::new(&*store)
            .get("1")
            .unwrap()
            .requested
    );

    let relay = CommandRelay::new("shipping").unwrap();
    let report = relay.run(&bus, &store).unwrap();
    assert_eq!((report.handled, report.failed.len()), (2, 0));
    assert_eq!(relay.run(&bus, &store).unwrap().handled, 0);
    place(&bus, &store, 3, false);
    assert_eq!(relay.run(&bus, &store).unwrap().handled, 1);
    assert_eq!(handled.load(Ordering::SeqCst), 3);
    for order in ["1", "2", "3"] {
        assert!(
            Repository::<Order, _>::new(&*store)
                .get(order)
                .unwrap()
                .shipped
        );
    }
    // Markers and effects went in together: one marker per command.
    let markers: Vec<String> = store
        .read_stream(relay.stream(), 0, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap().event_type().to_owned())
        .collect();
    assert_eq!(markers, [COMMAND_HANDLED; 3]);
}

#[test]
fn a_failing_command_is_recorded_and_not_retried() {
    let store = TempStore::new().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let bus = shop(handled.clone());
    place(&bus, &store, 1, true);
    place(&bus, &store, 2, false);
    let relay = CommandRelay::new("shipping").unwrap();
    let report = relay.run(&bus, &store).unwrap();
    assert_eq!(report.handled, 1);
    assert_eq!(report.failed.len(), 1);
    let failure = &report.failed[0];
    assert_eq!(
        (failure.command.as_str(), failure.stream.as_str()),
        ("Ship", "shipping-1")
    );
    assert!(
        failure.error.contains("refused order 1"),
        "{}",
        failure.error
    );
    assert_eq!(relay.run(&bus, &store).unwrap(), Default::default());
    assert_eq!(handled.load(Ordering::SeqCst), 2);
    assert!(
        !Repository::<Order, _>::new(&*store)
            .get("1")
            .unwrap()
            .shipped
    );
    let last = store
        .read_stream(relay.stream(), u64::MAX, Direction::Backwards, 2)
        .unwrap();
    let types: Vec<String> = last.map(|e| e.unwrap().event_type().to_owned()).collect();
    assert_eq!(types, [COMMAND_HANDLED, COMMAND_FAILED]);
}

#[test]
fn relays_sharing_a_name_never_handle_a_command_twice() {
    let store = TempStore::new().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let bus = shop(handled.clone());
    for order in 0..40 {
        place(&bus, &store, order, false);
    }
    let relay = CommandRelay::new("shipping").unwrap();
    let totals: Vec<usize> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| relay.run(&bus, &store).unwrap().handled))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(totals.iter().sum::<usize>(), 40, "{totals:?}");
    // Handlers may run more than once (a losing relay's work is discarded), their effects not.
    assert!(handled.load(Ordering::SeqCst) >= 40);
    let shipped = store
        .read_event_type("Shipped", Position::START, usize::MAX)
        .unwrap()
        .count();
    assert_eq!(shipped, 40);
    assert_eq!(store.stream_version(relay.stream()).unwrap(), Some(39));
}

#[test]
fn commands_without_a_handler_or_undecodable_ones_are_failures() {
    let store = TempStore::new().unwrap();
    let bus = shop(Arc::new(AtomicUsize::new(0)));
    place(&bus, &store, 1, false);
    let relay = CommandRelay::new("shipping").unwrap();
    let empty = MessageBus::<Store>::new();
    let report = relay.run(&empty, &store).unwrap();
    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0].error.contains("no handler"),
        "{:?}",
        report.failed
    );
    assert!(CommandRelay::new("").is_err());
}

#[test]
fn the_relay_works_through_the_bus_test_helper() {
    let mut t = BusTest::new().unwrap();
    t.bus_mut().listen(
        |e: &Placed, uow: &mut UnitOfWork<'_, TestStore>| -> annals::Result<()> {
            uow.get_or_create::<Shipping>(&e.order.to_string())?
                .dispatch(&Ship {
                    order: e.order,
                    fail: false,
                })
        },
    );
    t.bus_mut()
        .handle_command(
            |c: Ship, uow: &mut UnitOfWork<'_, TestStore>| -> Result<(), BusError> {
                uow.get::<Order>(&c.order.to_string())?
                    .record(Shipped { order: c.order });
                Ok(())
            },
        )
        .unwrap();
    t.bus_mut()
        .handle_with(
            |o: Placed, uow: &mut UnitOfWork<'_, TestStore>| -> annals::Result<()> {
                uow.create::<Order>(&o.order.to_string()).record(o);
                Ok(())
            },
        )
        .unwrap();
    let placed: BusOutcome<()> = t.when(Placed {
        order: 7,
        fail: false,
    });
    assert_eq!(placed.event_types(), ["Placed", COMMAND_EVENT_TYPE]);
    assert!(placed.published.is_empty());
    let relayed = t.relay("shipping");
    assert_eq!(relayed.result.as_ref().unwrap().handled, 1);
    assert_eq!(relayed.event_types(), ["Shipped"]);
    assert_eq!(relayed.published[0].message_type, "Shipped_v1");
}
