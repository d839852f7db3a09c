//! Correlation and causation through the domain layer: set once per command, carried by every
//! event a repository or a unit of work saves for it, and through a workflow's relayed command.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use annals::domain::testing::TempStore;
use annals::domain::{CommandContext, CommandRelay, Repository};
use annals::{Direction, Position, RecordedEvent, Store};
use uuid::Uuid;

use super::shop::*;

fn stream(store: &Store, name: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(name, 0, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn every_event_of_a_command_carries_its_ids_and_metadata() {
    let store = TempStore::new().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let bus = shop(handled);
    let (conversation, request) = (Uuid::now_v7(), Uuid::now_v7());
    CommandContext::correlated(conversation)
        .caused_by(request)
        .with_metadata(r#"{"user": "ada"}"#)
        .run(|| place(&bus, &store, 1, false));
    // The order's event and the workflow's event and stored command, from one unit of work.
    let order = stream(&store, "order-1");
    let flow = stream(&store, "shipping-1");
    assert_eq!((order.len(), flow.len()), (1, 2));
    for e in order.iter().chain(&flow) {
        assert_eq!(e.correlation_id(), Some(conversation), "{}", e.event_type());
        assert_eq!(e.causation_id(), Some(request), "{}", e.event_type());
        assert_eq!(e.metadata(), br#"{"user": "ada"}"#);
    }

    // The relay runs the stored command in the context following it: the shipment carries
    // the conversation, and the command event as its cause.
    let relay = CommandRelay::new("shipping").unwrap();
    assert_eq!(relay.run(&bus, &store).unwrap().handled, 1);
    let shipped = &stream(&store, "order-1")[1];
    assert_eq!(shipped.event_type(), "Shipped");
    assert_eq!(shipped.correlation_id(), Some(conversation));
    assert_eq!(shipped.causation_id(), Some(flow[1].id()));

    // Outside any context, nothing is set.
    place(&bus, &store, 2, false);
    let plain = &stream(&store, "order-2")[0];
    assert_eq!((plain.correlation_id(), plain.causation_id()), (None, None));
    assert!(plain.metadata().is_empty());
}

#[test]
fn contexts_nest_and_the_repository_uses_the_innermost() {
    let store = TempStore::new().unwrap();
    let orders = Repository::<Order, _>::new(&*store);
    let (outer, inner) = (CommandContext::new(), CommandContext::new());
    let (outer_id, inner_id) = (outer.correlation_id, inner.correlation_id);
    assert_ne!(outer_id, inner_id);
    {
        let _outer = outer.enter();
        orders
            .create(
                "a",
                |o: &mut Order| -> Result<(), std::convert::Infallible> {
                    annals::domain::Aggregate::record(
                        o,
                        Placed {
                            order: 1,
                            fail: false,
                        },
                    );
                    Ok(())
                },
            )
            .unwrap();
        inner.run(|| {
            orders
                .create(
                    "b",
                    |o: &mut Order| -> Result<(), std::convert::Infallible> {
                        annals::domain::Aggregate::record(
                            o,
                            Placed {
                                order: 2,
                                fail: false,
                            },
                        );
                        Ok(())
                    },
                )
                .unwrap();
        });
        orders
            .update(
                "a",
                |o: &mut Order| -> Result<(), std::convert::Infallible> {
                    annals::domain::Aggregate::record(o, Shipped { order: 1 });
                    Ok(())
                },
            )
            .unwrap();
    }
    let ids = |s: &str| -> Vec<Option<Uuid>> {
        stream(&store, s)
            .iter()
            .map(RecordedEvent::correlation_id)
            .collect()
    };
    assert_eq!(ids("order-a"), [outer_id, outer_id]);
    assert_eq!(ids("order-b"), [inner_id]);
    assert!(CommandContext::current().is_none());
    let everything = store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .count();
    assert_eq!(everything, 3);
}
