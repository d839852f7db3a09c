//! The seeds' examples, asserted as the seeds' own tests assert them.

#[path = "../../examples/light_switch.rs"]
#[allow(dead_code)]
pub(crate) mod light_switch;
#[path = "../../examples/reading_club.rs"]
#[allow(dead_code)]
pub(crate) mod reading_club;

use std::sync::Arc;

use annals::domain::testing::{AggregateTest, BusOutcome, BusTest, TempStore, TestStore};
use annals::domain::{
    Aggregate, DomainError, InMemoryTransport, PublishingStore, Repository, SinkholeEventStore,
    UnitOfWork,
};
use annals::{Direction, Store};
use light_switch::{LightEvent, LightSwitch, LightSwitchError, TurnedOff, TurnedOn};
use reading_club::{
    Book, BookEvent, BookRegistered, BookRepositoryError, RegisterBook, register_book_cmd,
};
use uuid::Uuid;

// ---- event_sourcery: the light switch ----

#[test]
fn turning_on_a_shining_light_is_refused() {
    let mut test = AggregateTest::<LightSwitch>::new("kitchen").unwrap();
    test.when(LightSwitch::turn_on).then([TurnedOn]);
    test.when(LightSwitch::turn_on)
        .then_rejected(LightSwitchError::AlreadyTurnedOn);
    test.when(LightSwitch::turn_off).then([TurnedOff]);
    test.when(LightSwitch::turn_off)
        .then_rejected(LightSwitchError::AlreadyTurnedOff);
    let switch = test.aggregate().unwrap().unwrap();
    assert!(!switch.shines());
    assert_eq!(switch.version(), Some(1));
}

#[test]
fn the_second_incarnation_recovers_from_its_mistake() {
    let store = TempStore::new().unwrap();
    let events = light_switch::walk_through(&store, "hall").unwrap();
    assert_eq!(events, ["TurnedOn", "TurnedOff"]);
    let switch = Repository::<LightSwitch, _>::new(&*store)
        .get("hall")
        .unwrap();
    assert!(!switch.shines());
    // The events are typed on the way back, in order.
    let typed: Vec<LightEvent> = store
        .read_stream_as::<LightEvent>("light_switch-hall", 0, Direction::Forwards, 10)
        .unwrap()
        .map(|e| e.unwrap().event)
        .collect();
    assert_eq!(
        typed,
        [LightEvent::On(TurnedOn), LightEvent::Off(TurnedOff)]
    );
}

#[test]
fn the_light_switch_walk_through_survives_a_reopen() {
    let mut store = TempStore::new().unwrap();
    light_switch::walk_through(&store, "porch").unwrap();
    store.reopen().unwrap();
    let again = Repository::<LightSwitch, _>::new(&*store).update("porch", LightSwitch::turn_off);
    assert!(matches!(
        again,
        Err(DomainError::Rejected(LightSwitchError::AlreadyTurnedOff))
    ));
    let on = Repository::<LightSwitch, _>::new(&*store).update("porch", LightSwitch::turn_on);
    assert!(on.is_ok());
    assert_eq!(store.stream_version("light_switch-porch").unwrap(), Some(2));
}

// ---- messagebus: the reading club ----

fn expected_book() -> Book {
    Book::new(
        Uuid::from_u128(1),
        "Domain Driven Design",
        "Eric Evans",
        "0-321-12521-5",
    )
}

fn publishing_store(
    dir: &std::path::Path,
) -> (PublishingStore<InMemoryTransport>, InMemoryTransport) {
    let transport = InMemoryTransport::default();
    let store = Arc::new(Store::open(dir.join("reading_club")).unwrap());
    (
        PublishingStore::new(store, "eventstream", transport.clone()).unwrap(),
        transport,
    )
}

/// `test_register_book`: the handler called directly, bypassing the bus.
#[test]
fn test_register_book() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = publishing_store(dir.path());
    let cmd = register_book_cmd();

    let mut transaction = UnitOfWork::new(&store);
    let operation = reading_club::register_book(cmd.clone(), &mut transaction);
    assert!(operation.is_ok(), "{operation:?}");
    let book = reading_club::book_by_id(&mut transaction, cmd.id)
        .expect("the book is in the unit of work");
    assert_eq!(*book, expected_book());
    assert_eq!(
        book.messages(),
        [BookEvent::Registered(BookRegistered {
            id: Uuid::from_u128(1),
            isbn: "0-321-12521-5".into(),
            title: "Domain Driven Design".into(),
            author: "Eric Evans".into(),
        })]
    );
    transaction.commit().unwrap();

    let mut transaction = UnitOfWork::new(&store);
    let operation = reading_club::register_book(cmd, &mut transaction);
    assert!(operation.is_err());
    assert!(matches!(
        operation,
        Err(DomainError::Rejected(BookRepositoryError::IntegrityError))
    ));
    transaction.rollback();
}

/// `test_bus_handler`: through the bus, with the transport fixture.
#[test]
fn test_bus_handler() {
    let dir = tempfile::tempdir().unwrap();
    let (store, transport) = publishing_store(dir.path());
    let bus = reading_club::bus();
    let cmd = register_book_cmd();

    let mut transaction = UnitOfWork::new(&store);
    let () = bus.handle(cmd.clone(), &mut transaction).unwrap();
    let book = reading_club::book_by_id(&mut transaction, cmd.id).unwrap();
    assert_eq!(*book, expected_book());
    assert!(
        book.messages().is_empty(),
        "the bus took the book's messages"
    );
    assert!(
        transport.events().is_empty(),
        "nothing is published before the commit"
    );
    transaction.commit().unwrap();

    let events = transport.events();
    assert_eq!(events.len(), 1);
    let published = &events[0];
    assert_eq!(
        published.payload,
        r#"{"id": "00000000-0000-0000-0000-000000000001", "isbn": "0-321-12521-5", "title": "Domain Driven Design", "author": "Eric Evans"}"#
    );
    assert_eq!(published.message_type, "register_book_v1");
    // The id is the stored event's id, created_at its timestamp.
    let stored = store
        .store()
        .read_stream(
            "book-00000000-0000-0000-0000-000000000001",
            0,
            Direction::Forwards,
            1,
        )
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(published.id, stored.id().to_string());
    assert_eq!(
        published.created_at,
        humantime::format_rfc3339_micros(stored.timestamp()).to_string()
    );
    // The serialized form the transport would send: the seed's four keys, in order.
    let json: serde_json::Value = serde_json::from_str(&published.to_json()).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["id", "created_at", "payload", "type"]);
}

#[test]
fn registering_the_same_isbn_twice_is_an_integrity_error_and_publishes_nothing() {
    let mut t = BusTest::new().unwrap();
    t.bus_mut()
        .handle_with(reading_club::register_book::<TestStore>)
        .unwrap();
    let first: BusOutcome<()> = t.when(register_book_cmd());
    assert!(first.result.is_ok());
    assert_eq!(first.published.len(), 1);

    // Another book with the same ISBN...
    let twin = RegisterBook {
        id: Uuid::from_u128(2),
        ..register_book_cmd()
    };
    let second: BusOutcome<()> = t.when(twin);
    assert_eq!(
        second.then_rejected::<BookRepositoryError>(),
        &BookRepositoryError::IntegrityError
    );
    // ...and the same book again.
    let again: BusOutcome<()> = t.when(register_book_cmd());
    assert_eq!(
        again.then_rejected::<BookRepositoryError>(),
        &BookRepositoryError::IntegrityError
    );
    assert_eq!(t.transport().events().len(), 1);
    assert_eq!(
        Repository::<Book, _>::new(t.store())
            .load(&Uuid::from_u128(2).to_string())
            .unwrap(),
        None
    );
}

#[test]
fn concurrent_registrations_of_one_isbn_leave_one_book() {
    let dir = tempfile::tempdir().unwrap();
    let (store, transport) = publishing_store(dir.path());
    let bus = reading_club::bus();
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4u128)
            .map(|i| {
                let (bus, store) = (&bus, &store);
                s.spawn(move || {
                    let cmd = RegisterBook {
                        id: Uuid::from_u128(10 + i),
                        ..register_book_cmd()
                    };
                    // A lost race is a conflict; handled again it is an integrity error.
                    loop {
                        match bus.execute::<_, ()>(cmd.clone(), store) {
                            Err(e) if e.is_conflict() => continue,
                            other => {
                                return other
                                    .map_err(|e| e.rejection::<BookRepositoryError>().copied());
                            }
                        }
                    }
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| o.is_ok() || *o == Err(Some(BookRepositoryError::IntegrityError)))
    );
    assert_eq!(transport.events().len(), 1);
}

#[test]
fn the_sinkhole_store_sends_the_same_envelope() {
    let transport = InMemoryTransport::default();
    let store = SinkholeEventStore::new(transport.clone());
    let bus = reading_club::bus();
    let () = bus.execute(register_book_cmd(), &store).unwrap();
    let events = transport.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].message_type, "register_book_v1");
    assert_eq!(
        events[0].payload,
        r#"{"id": "00000000-0000-0000-0000-000000000001", "isbn": "0-321-12521-5", "title": "Domain Driven Design", "author": "Eric Evans"}"#
    );
    assert!(Uuid::parse_str(&events[0].id).is_ok());
    assert!(events[0].created_at.ends_with('Z'));
}

#[test]
fn book_is_an_aggregate_in_the_book_category() {
    assert_eq!(Book::stream_name("x"), "book-x");
    let book = Book::from_history(
        "x",
        [BookEvent::Registered(BookRegistered {
            id: Uuid::from_u128(1),
            isbn: "0-321-12521-5".into(),
            title: "Domain Driven Design".into(),
            author: "Eric Evans".into(),
        })],
    );
    assert_eq!(book, expected_book());
    assert_eq!(book.version(), Some(0));
}
