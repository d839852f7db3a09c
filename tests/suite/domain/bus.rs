//! The message bus and the unit of work: one atomic append, rollback, errors, unique claims, listener loops.

use annals::domain::testing::TempStore;
use annals::domain::{Aggregate, BusError, DomainError, MessageBus, Repository, UnitOfWork};
use annals::{Direction, Error, Store};

use super::fixtures::*;

#[test]
fn a_command_its_listeners_and_queued_commands_commit_as_one_append() {
    let mut store = TempStore::new().unwrap();
    seed_counter(&*store, "x", 1);
    let bus = bank::<Store>();
    let before = store.end_position();
    let mut uow = UnitOfWork::new(&*store);
    let total: u64 = bus
        .handle(
            Transfer {
                from: "x".into(),
                to: "y".into(),
                n: 5,
            },
            &mut uow,
        )
        .unwrap();
    assert_eq!(total, 5);
    // Nothing is in the store before the commit.
    assert_eq!(store.end_position(), before);
    assert_eq!(store.stream_version("counter-y").unwrap(), None);
    let results = uow.commit().unwrap();
    assert_eq!(results.len(), 4, "x, y, the ledger and the audit counter");
    let streams: Vec<String> = store
        .read_all(before, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap().stream().to_owned())
        .collect();
    assert_eq!(
        streams,
        ["counter-x", "counter-y", "ledger-main", "counter-audit"]
    );
    // One append: the parts' events follow one another in the log, each part starting where
    // the one before it ended ...
    let log: Vec<_> = store
        .read_all(before, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    for pair in log.windows(2) {
        assert_eq!(pair[0].next_position(), pair[1].position());
    }
    for (r, e) in results.iter().zip(&log) {
        assert_eq!(r.first_position, e.position());
    }
    // ... and a reopen shows them all, in that order.
    store.reopen().unwrap();
    let after: Vec<_> = store
        .read_all(before, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(after, log);
    let c = Repository::<Counter, _>::new(&*store).get("audit").unwrap();
    assert_eq!(c.total, 1);
    let y = Repository::<Counter, _>::new(&*store).get("y").unwrap();
    assert_eq!(y.total, 5);
}

#[test]
fn dropping_or_rolling_back_a_unit_of_work_saves_nothing() {
    let store = TempStore::new().unwrap();
    seed_counter(&*store, "x", 1);
    let bus = bank::<Store>();
    let end = store.end_position();
    {
        let mut uow = UnitOfWork::new(&*store);
        let _: u64 = bus
            .handle(
                Transfer {
                    from: "x".into(),
                    to: "y".into(),
                    n: 1,
                },
                &mut uow,
            )
            .unwrap();
        uow.rollback();
    }
    {
        let mut uow = UnitOfWork::new(&*store);
        let _: u64 = bus
            .handle(
                Transfer {
                    from: "x".into(),
                    to: "y".into(),
                    n: 1,
                },
                &mut uow,
            )
            .unwrap();
    }
    assert_eq!(store.end_position(), end);
}

#[test]
fn handler_and_listener_errors_abort_the_whole_unit_of_work() {
    let store = TempStore::new().unwrap();
    seed_counter(&*store, "x", 1);
    let end = store.end_position();
    let mut bus = bank::<Store>();
    let err = bus
        .execute::<_, u64>(
            Transfer {
                from: "nobody".into(),
                to: "y".into(),
                n: 1,
            },
            &*store,
        )
        .unwrap_err();
    assert!(matches!(err, BusError::Handler(_)), "{err:?}");
    assert!(err.to_string().contains("counter-nobody"), "{err}");

    bus.listen(|e: &Transferred, _: &mut UnitOfWork<'_, Store>| {
        if e.n > 10 {
            Err(BusError::rejected(OverCap))
        } else {
            Ok(())
        }
    });
    let err = bus
        .execute::<_, u64>(
            Transfer {
                from: "x".into(),
                to: "y".into(),
                n: 11,
            },
            &*store,
        )
        .unwrap_err();
    assert_eq!(err.rejection::<OverCap>(), Some(&OverCap));
    assert_eq!(
        store.end_position(),
        end,
        "nothing of either command was saved"
    );

    // A rejection by the aggregate, through `DomainError::Rejected`.
    Repository::<Counter, _>::new(&*store)
        .update("x", |c| -> Result<(), OverCap> {
            c.record(Capped { at: 1 });
            Ok(())
        })
        .unwrap();
    let err = bus
        .execute::<_, u64>(
            Transfer {
                from: "x".into(),
                to: "x".into(),
                n: 1,
            },
            &*store,
        )
        .unwrap_err();
    assert_eq!(err.rejection::<OverCap>(), Some(&OverCap));
}

#[test]
fn one_handler_per_command_and_unknown_commands_are_errors() {
    let store = TempStore::new().unwrap();
    let mut bus = bank::<Store>();
    let dup =
        bus.handle_with(|_: Bump, _: &mut UnitOfWork<'_, Store>| -> annals::Result<()> { Ok(()) });
    assert!(matches!(dup, Err(BusError::DuplicateHandler(name)) if name.ends_with("Bump")));
    struct Unknown;
    let err = bus.execute::<_, ()>(Unknown, &*store).unwrap_err();
    assert!(matches!(err, BusError::NoHandler(_)), "{err:?}");
    let err = bus
        .execute::<_, String>(Bump { id: "z".into() }, &*store)
        .unwrap_err();
    assert!(err.to_string().contains("does not reply"), "{err}");
}

#[test]
fn a_unit_of_work_conflict_changes_no_stream() {
    let store = TempStore::new().unwrap();
    seed_counter(&*store, "x", 1);
    seed_counter(&*store, "y", 1);
    let bus = bank::<Store>();
    let mut uow = UnitOfWork::new(&*store);
    let _: u64 = bus
        .handle(
            Transfer {
                from: "x".into(),
                to: "y".into(),
                n: 1,
            },
            &mut uow,
        )
        .unwrap();
    // Another writer changes y in between.
    Repository::<Counter, _>::new(&*store)
        .update("y", add(1))
        .unwrap();
    let end = store.end_position();
    let err = uow.commit().unwrap_err();
    assert!(
        matches!(&err, Error::WrongExpectedVersion { stream, .. } if stream == "counter-y"),
        "{err:?}"
    );
    assert_eq!(store.end_position(), end);
    assert_eq!(store.stream_version("ledger-main").unwrap(), None);
}

#[test]
fn unique_claims_reject_duplicates_and_lose_races_with_a_conflict() {
    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("taken")]
    struct Taken;
    let store = TempStore::new().unwrap();
    let mut uow = UnitOfWork::new(&*store);
    uow.claim_unique("email", "ada@example.com", || Taken)
        .unwrap();
    assert!(matches!(
        uow.claim_unique("email", "ada@example.com", || Taken),
        Err(DomainError::Rejected(Taken))
    ));
    // A racing unit of work checks before the first commits...
    let mut racer = UnitOfWork::new(&*store);
    racer
        .claim_unique("email", "ada@example.com", || Taken)
        .unwrap();
    uow.commit().unwrap();
    // ...and loses at its commit.
    assert!(matches!(
        racer.commit(),
        Err(Error::WrongExpectedVersion { .. })
    ));
    let mut late = UnitOfWork::new(&*store);
    assert!(matches!(
        late.claim_unique("email", "ada@example.com", || Taken),
        Err(DomainError::Rejected(Taken))
    ));
    late.claim_unique("email", "bob@example.com", || Taken)
        .unwrap();
}

#[test]
fn a_listener_loop_is_stopped_and_saves_nothing() {
    let store = TempStore::new().unwrap();
    let mut bus = MessageBus::<Store>::new();
    // A listener that records the very event it listens to, forever.
    bus.listen(
        |_: &Added, uow: &mut UnitOfWork<'_, Store>| -> annals::Result<()> {
            uow.get_or_create::<Counter>("loop")?.record(Added { n: 1 });
            Ok(())
        },
    );
    bus.handle_with(
        |b: Bump, uow: &mut UnitOfWork<'_, Store>| -> annals::Result<()> {
            uow.get_or_create::<Counter>(&b.id)?.record(Added { n: 1 });
            Ok(())
        },
    )
    .unwrap();
    let err = bus
        .execute::<_, ()>(Bump { id: "x".into() }, &*store)
        .unwrap_err();
    assert!(err.to_string().contains("listener loop"), "{err}");
    assert_eq!(
        store.end_position(),
        TempStore::new().unwrap().end_position()
    );
}
