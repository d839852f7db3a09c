//! Publishing: the outbox after commits, restarts, the sink-hole and in-memory stores.

use std::sync::Arc;

use annals::domain::testing::{BusOutcome, BusTest, TestStore};
use annals::domain::{
    Aggregate, EventStore, InMemoryEventStore, InMemoryTransport, Part, PublishingStore,
    Repository, SinkholeEventStore, UnitOfWork,
};
use annals::typed::{Codec, Upcasters};
use annals::{Error, ExpectedVersion, Store};

use super::fixtures::*;

fn counter_bus_test() -> BusTest {
    let mut t = BusTest::new().unwrap();
    let bus = t.bus_mut();
    bus.handle_with(transfer::<TestStore>).unwrap();
    t
}

#[test]
fn committed_published_events_reach_the_transport_once_in_order() {
    let mut t = counter_bus_test();
    t.given::<Counter, _>("x", [Added { n: 3 }]).unwrap();
    let outcome: BusOutcome<u64> = t.when(Transfer {
        from: "x".into(),
        to: "y".into(),
        n: 2,
    });
    assert_eq!(*outcome.result.as_ref().unwrap(), 2);
    assert_eq!(outcome.event_types(), ["Added", "Added", "Transferred"]);
    let types: Vec<&str> = outcome
        .published
        .iter()
        .map(|e| e.message_type.as_str())
        .collect();
    assert_eq!(
        types,
        ["Added_v1", "Added_v1", "Transferred_v1"],
        "given history is not republished"
    );
    assert_eq!(outcome.published[1].payload, r#"{"n": 2}"#);
    assert_eq!(outcome.published[2].id, outcome.events[2].id().to_string());
    assert_eq!(
        t.store().publish().unwrap(),
        0,
        "nothing is delivered twice"
    );

    // Non-published event types stay home.
    struct Cap;
    t.bus_mut()
        .handle_with(
            |_: Cap, uow: &mut UnitOfWork<'_, TestStore>| -> annals::Result<()> {
                uow.get_or_create::<Counter>("x")?.record(Capped { at: 9 });
                Ok(())
            },
        )
        .unwrap();
    let outcome: BusOutcome<()> = t.when(Cap);
    assert!(outcome.result.is_ok());
    assert_eq!(outcome.event_types(), ["Capped"]);
    assert!(outcome.published.is_empty());
}

#[test]
fn a_rejected_command_publishes_nothing() {
    let mut t = counter_bus_test();
    t.given::<Counter, _>("x", [CounterEvent::Capped(Capped { at: 0 })])
        .unwrap();
    let outcome: BusOutcome<u64> = t.when(Transfer {
        from: "x".into(),
        to: "x".into(),
        n: 1,
    });
    assert_eq!(outcome.then_rejected::<OverCap>(), &OverCap);
    assert!(t.transport().events().is_empty());
}

#[test]
fn publishing_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let transport = InMemoryTransport::default();
    {
        // Commit with a plain store: nothing is published...
        let store = Store::open(&path).unwrap();
        bank::<Store>()
            .execute::<_, u64>(
                Transfer {
                    from: "x".into(),
                    to: "y".into(),
                    n: 1,
                },
                &store,
            )
            .unwrap_err(); // x does not exist
        seed_counter(&store, "x", 4);
    }
    // ...the publishing store picks the events up at its first commit.
    let store = PublishingStore::new(
        Arc::new(Store::open(&path).unwrap()),
        "out",
        transport.clone(),
    )
    .unwrap();
    let _: u64 = bank()
        .execute(
            Transfer {
                from: "x".into(),
                to: "y".into(),
                n: 1,
            },
            &store,
        )
        .unwrap();
    let types: Vec<String> = transport
        .events()
        .into_iter()
        .map(|e| e.message_type)
        .collect();
    // The seeded Added(4), then the transfer's x, y, ledger and (queued) audit events.
    assert_eq!(
        types,
        [
            "Added_v1",
            "Added_v1",
            "Added_v1",
            "Transferred_v1",
            "Added_v1"
        ]
    );
}

#[test]
fn the_sinkhole_store_publishes_without_storing() {
    let transport = InMemoryTransport::default();
    let store = SinkholeEventStore::new(transport.clone());
    let bus = bank::<SinkholeEventStore<InMemoryTransport>>();
    // Every aggregate looks new, so `get` finds nothing...
    let err = bus
        .execute::<_, u64>(
            Transfer {
                from: "x".into(),
                to: "y".into(),
                n: 1,
            },
            &store,
        )
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(transport.events().is_empty());
    // ...and what a handler records on new ones is published at the commit.
    let _: () = bus.execute(Bump { id: "a".into() }, &store).unwrap();
    let sent = transport.events();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].message_type.as_str(), sent[0].payload.as_str()),
        ("Added_v1", r#"{"n": 1}"#)
    );
    let mut seen = 0;
    EventStore::read_stream(&store, "counter-a", 0, &mut |_| {
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, 0);
}

#[test]
fn the_in_memory_store_checks_like_annals() {
    let store = InMemoryEventStore::new(Codec::Json, Upcasters::default());
    let repo = Repository::<Counter, _>::new(&store);
    repo.create("a", add(1)).unwrap();
    assert!(repo.create("a", add(1)).unwrap_err().is_conflict());
    repo.update("a", add(2)).unwrap();
    assert_eq!(repo.get("a").unwrap().total, 3);
    // Atomic multi-part appends: a failing part keeps every part out.
    let e = store
        .new_event(&CounterEvent::Added(Added { n: 1 }))
        .unwrap();
    let err = store
        .append(vec![
            Part {
                stream: "counter-b".into(),
                expected: ExpectedVersion::NoStream,
                events: vec![e.clone()],
            },
            Part {
                stream: "counter-a".into(),
                expected: ExpectedVersion::Exact(0),
                events: vec![e.clone()],
            },
        ])
        .unwrap_err();
    assert!(matches!(
        err,
        Error::WrongExpectedVersion {
            actual: Some(1),
            ..
        }
    ));
    assert_eq!(store.events().len(), 2);
    // The bus runs on it too, with snapshots.
    let bus = bank::<InMemoryEventStore>();
    let _: u64 = bus
        .execute(
            Transfer {
                from: "a".into(),
                to: "b".into(),
                n: 2,
            },
            &store,
        )
        .unwrap();
    let snapshotting = Repository::<Counter, _>::new(&store).with_snapshots(2);
    snapshotting.update("b", add(1)).unwrap();
    assert!(store.load_snapshot("counter-b").unwrap().is_some());
    assert_eq!(snapshotting.get("b").unwrap().total, 3);
    assert_eq!(store.events().len(), 7);
}
