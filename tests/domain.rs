//! The domain floor: aggregates, the repository (conflicts, retries, snapshots), the message
//! bus and its unit of work (atomic commits, rollback, listeners, queued commands, unique
//! claims), the publishing, in-memory and sink-hole stores, and the command relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use annals::domain::testing::{BusOutcome, BusTest, TempStore, TestStore};
use annals::domain::{
    Aggregate, BusError, COMMAND_EVENT_TYPE, COMMAND_FAILED, COMMAND_HANDLED, Command,
    CommandRelay, DomainError, EventStore, InMemoryEventStore, InMemoryTransport, MessageBus, Part,
    PublishingStore, Recorder, Repository, SinkholeEventStore, Snapshot, UnitOfWork,
};
use annals::typed::{Codec, EventType, Upcasters};
use annals::{Direction, Error, ExpectedVersion, Position, Store, events};
use serde::{Deserialize, Serialize};

// ---- a counter: the aggregate most tests use ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Added {
    n: u64,
}
impl EventType for Added {
    const NAME: &'static str = "Added";
    const PUBLISHED: bool = true;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Capped {
    at: u64,
}
impl EventType for Capped {
    const NAME: &'static str = "Capped";
}

events! {
    #[derive(Debug, Clone, PartialEq)]
    enum CounterEvent { Added(Added), Capped(Capped) }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    total: u64,
    applied: u64,
    cap: Option<u64>,
    #[serde(skip)]
    recorder: Recorder<CounterEvent>,
}

impl Aggregate for Counter {
    const CATEGORY: &'static str = "counter";
    type Event = CounterEvent;

    fn apply(&mut self, event: &CounterEvent) {
        self.applied += 1;
        match event {
            CounterEvent::Added(e) => self.total += e.n,
            CounterEvent::Capped(e) => self.cap = Some(e.at),
        }
    }

    fn recorder(&self) -> &Recorder<CounterEvent> {
        &self.recorder
    }

    fn recorder_mut(&mut self) -> &mut Recorder<CounterEvent> {
        &mut self.recorder
    }
}

impl Snapshot for Counter {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("over the cap")]
struct OverCap;

impl Counter {
    fn add(&mut self, n: u64) -> Result<u64, OverCap> {
        if self.cap.is_some_and(|cap| self.total + n > cap) {
            return Err(OverCap);
        }
        self.record(Added { n });
        Ok(self.total)
    }
}

fn add(n: u64) -> impl FnMut(&mut Counter) -> Result<u64, OverCap> {
    move |c| c.add(n)
}

// ---- aggregates and the repository ----

#[test]
fn versions_are_tracked_through_create_update_and_load() {
    let store = TempStore::new().unwrap();
    let repo = Repository::<Counter, _>::new(&*store);
    assert_eq!(repo.create("a", add(2)).unwrap(), 2);
    assert_eq!(repo.update("a", add(3)).unwrap(), 5);
    let mut c = repo.get("a").unwrap();
    assert_eq!((c.total, c.version(), c.id()), (5, Some(1), "a"));
    c.add(1).unwrap();
    c.add(1).unwrap();
    let saved = repo.save(&mut c).unwrap().expect("two events to save");
    assert_eq!((saved.version, c.version()), (Some(3), Some(3)));
    assert!(c.recorder().changes().is_empty());
    assert!(
        repo.save(&mut c).unwrap().is_none(),
        "nothing recorded, nothing saved"
    );
    assert_eq!(store.stream_version("counter-a").unwrap(), Some(3));
}

#[test]
fn missing_aggregates_and_double_creation_are_errors() {
    let store = TempStore::new().unwrap();
    let repo = Repository::<Counter, _>::new(&*store);
    assert!(
        matches!(repo.get("nope"), Err(DomainError::NotFound { stream }) if stream == "counter-nope")
    );
    assert!(matches!(
        repo.update("nope", add(1)),
        Err(DomainError::NotFound { .. })
    ));
    assert!(repo.load("nope").unwrap().is_none());
    repo.create("a", add(1)).unwrap();
    let again = repo.create("a", add(1)).unwrap_err();
    assert!(again.is_conflict(), "{again:?}");
    assert_eq!(store.stream_version("counter-a").unwrap(), Some(0));
}

#[test]
fn a_rejected_command_saves_nothing() {
    let store = TempStore::new().unwrap();
    let repo = Repository::<Counter, _>::new(&*store);
    repo.create("a", |c| -> Result<(), OverCap> {
        c.record(Capped { at: 10 });
        c.add(4).map(drop)
    })
    .unwrap();
    let refused = repo.update("a", |c| {
        c.add(5)?; // fine: 9
        c.add(5) // over the cap: the 5 recorded before is not saved either
    });
    assert!(matches!(refused, Err(DomainError::Rejected(OverCap))));
    assert_eq!(repo.get("a").unwrap().total, 4);
    assert_eq!(store.stream_version("counter-a").unwrap(), Some(1));
}

#[test]
fn the_aggregate_block_creates_or_updates() {
    let store = TempStore::new().unwrap();
    let repo = Repository::<Counter, _>::new(&*store);
    assert_eq!(repo.aggregate("a", add(2)).unwrap(), 2);
    assert_eq!(repo.aggregate("a", add(2)).unwrap(), 4);
    assert_eq!(store.stream_version("counter-a").unwrap(), Some(1));
}

#[test]
fn a_conflict_is_reported_and_keeps_the_recorded_events() {
    let store = TempStore::new().unwrap();
    let repo = Repository::<Counter, _>::new(&*store);
    repo.create("a", add(1)).unwrap();
    let mut mine = repo.get("a").unwrap();
    repo.update("a", add(10)).unwrap(); // another writer
    mine.add(5).unwrap();
    let err = repo.save(&mut mine).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongExpectedVersion {
                actual: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        mine.recorder().changes(),
        [CounterEvent::Added(Added { n: 5 })]
    );
    assert_eq!(repo.get("a").unwrap().total, 11);
}

#[test]
fn update_retrying_reloads_and_runs_the_command_again_on_a_conflict() {
    let store = TempStore::new().unwrap();
    let repo = Repository::<Counter, _>::new(&*store);
    repo.create("a", add(1)).unwrap();
    let runs = AtomicUsize::new(0);
    let total = repo
        .update_retrying("a", 3, |c| {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                // Someone else writes between our load and our save.
                Repository::<Counter, _>::new(&*store)
                    .update("a", add(100))
                    .unwrap();
            }
            c.add(1)
        })
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(total, 102);

    // With one attempt the conflict is the result.
    let err = repo
        .update_retrying("a", 1, |c| {
            Repository::<Counter, _>::new(&*store)
                .update("a", add(1))
                .unwrap();
            c.add(1)
        })
        .unwrap_err();
    assert!(err.is_conflict());
    assert_eq!(repo.get("a").unwrap().total, 103);
}

#[test]
fn concurrent_updates_with_retries_lose_nothing() {
    let store = TempStore::new().unwrap();
    Repository::<Counter, _>::new(&*store)
        .create("a", add(0))
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let repo = Repository::<Counter, _>::new(&*store);
                for _ in 0..25 {
                    repo.update_retrying("a", 1000, add(1)).unwrap();
                }
            });
        }
    });
    let c = Repository::<Counter, _>::new(&*store).get("a").unwrap();
    assert_eq!((c.total, c.version()), (100, Some(100)));
}

// ---- snapshots ----

#[test]
fn snapshots_are_taken_every_n_events_and_used_when_loading() {
    let store = TempStore::new().unwrap();
    let repo = Repository::<Counter, _>::new(&*store).with_snapshots(10);
    repo.create("a", add(1)).unwrap();
    for _ in 0..24 {
        repo.update("a", add(1)).unwrap();
    }
    let (at, schema, _) = store
        .load_snapshot("counter-a")
        .unwrap()
        .expect("a snapshot");
    assert_eq!((at, schema), (19, 1), "the latest multiple of 10 events");
    let c = repo.get("a").unwrap();
    assert_eq!((c.total, c.version()), (25, Some(24)));
    assert_eq!(
        c.applied, 25,
        "the snapshot's count plus the 5 later events"
    );

    // Proof that loading starts from the snapshot: one that lies is believed (it is an
    // optimisation of the events, never checked against them) ...
    let fake = Counter {
        total: 1000,
        applied: 1000,
        ..Counter::default()
    };
    let bytes = bincode::serde::encode_to_vec(&fake, bincode::config::standard()).unwrap();
    store.save_snapshot("counter-a", 19, 1, bytes).unwrap();
    assert_eq!(repo.get("a").unwrap().total, 1005);
    // ... and a repository without snapshots reads only the events.
    assert_eq!(
        Repository::<Counter, _>::new(&*store)
            .get("a")
            .unwrap()
            .total,
        25
    );
}

#[test]
fn undecodable_or_outdated_snapshots_are_ignored() {
    let store = TempStore::new().unwrap();
    let repo = Repository::<Counter, _>::new(&*store).with_snapshots(5);
    repo.create("a", add(1)).unwrap();
    for _ in 0..11 {
        repo.update("a", add(2)).unwrap();
    }
    // The state's shape changed: garbage under the current snapshot version.
    store
        .save_snapshot("counter-a", 11, 1, vec![0xFF; 3])
        .unwrap();
    let c = repo.get("a").unwrap();
    assert_eq!((c.total, c.applied, c.version()), (23, 12, Some(11)));

    // A snapshot of another snapshot version is ignored too.
    let other = Counter {
        total: 7,
        ..Counter::default()
    };
    let bytes = bincode::serde::encode_to_vec(&other, bincode::config::standard()).unwrap();
    store.save_snapshot("counter-a", 11, 2, bytes).unwrap();
    assert_eq!(repo.get("a").unwrap().total, 23);

    // And the next save past a multiple of 5 writes a fresh, usable one.
    for _ in 0..5 {
        repo.update("a", add(1)).unwrap();
    }
    let (at, schema, _) = store.load_snapshot("counter-a").unwrap().unwrap();
    assert_eq!((at, schema), (14, 1));
    assert_eq!(repo.get("a").unwrap().total, 28);
}

#[test]
fn snapshots_survive_a_reopen_and_are_not_events_of_the_stream() {
    let mut store = TempStore::new().unwrap();
    Repository::<Counter, _>::new(&*store)
        .with_snapshots(3)
        .create("a", |c| -> Result<(), OverCap> {
            for _ in 0..7 {
                c.add(1)?;
            }
            Ok(())
        })
        .unwrap();
    store.reopen().unwrap();
    assert_eq!(
        store.load_snapshot("counter-a").unwrap().map(|s| s.0),
        Some(6)
    );
    let events: Vec<_> = store
        .read_stream("counter-a", 0, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap().event_type().to_owned())
        .collect();
    assert_eq!(events, vec!["Added"; 7]);
}

// ---- the message bus and the unit of work ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Transferred {
    from: String,
    to: String,
    n: u64,
}
impl EventType for Transferred {
    const NAME: &'static str = "Transferred";
    const PUBLISHED: bool = true;
}
events! {
    #[derive(Debug, Clone, PartialEq)]
    enum LedgerEvent { Transferred(Transferred) }
}
#[derive(Debug, Default)]
struct Ledger {
    entries: u64,
    recorder: Recorder<LedgerEvent>,
}
impl Aggregate for Ledger {
    const CATEGORY: &'static str = "ledger";
    type Event = LedgerEvent;
    fn apply(&mut self, _: &LedgerEvent) {
        self.entries += 1;
    }
    fn recorder(&self) -> &Recorder<LedgerEvent> {
        &self.recorder
    }
    fn recorder_mut(&mut self) -> &mut Recorder<LedgerEvent> {
        &mut self.recorder
    }
}

/// Move `n` from one counter to another (both recorded in one unit of work).
struct Transfer {
    from: String,
    to: String,
    n: u64,
}
/// Add to a counter (queued by a listener).
struct Bump {
    id: String,
}

fn transfer<S: EventStore>(
    t: Transfer,
    uow: &mut UnitOfWork<'_, S>,
) -> Result<u64, DomainError<OverCap>> {
    uow.get::<Counter>(&t.from)
        .map_err(DomainError::widen)?
        .add(0)
        .map_err(DomainError::Rejected)?;
    let total = uow
        .get_or_create::<Counter>(&t.to)?
        .add(t.n)
        .map_err(DomainError::Rejected)?;
    uow.get_or_create::<Ledger>("main")?.record(Transferred {
        from: t.from,
        to: t.to,
        n: t.n,
    });
    Ok(total)
}

fn bank<S: EventStore + 'static>() -> MessageBus<S> {
    let mut bus = MessageBus::new();
    bus.handle_with(transfer::<S>).unwrap();
    bus.handle_with(
        |b: Bump, uow: &mut UnitOfWork<'_, S>| -> Result<(), DomainError<OverCap>> {
            uow.get_or_create::<Counter>(&b.id)?
                .add(1)
                .map_err(DomainError::Rejected)?;
            Ok(())
        },
    )
    .unwrap();
    // Every transfer bumps the "audit" counter through a queued command.
    bus.listen(
        |_: &Transferred, uow: &mut UnitOfWork<'_, S>| -> annals::Result<()> {
            uow.dispatch(Bump { id: "audit".into() });
            Ok(())
        },
    );
    bus
}

fn seed_counter<S: EventStore>(store: &S, id: &str, n: u64) {
    Repository::<Counter, _>::new(store)
        .create(id, add(n))
        .unwrap();
}

#[test]
fn a_command_its_listeners_and_queued_commands_commit_as_one_append() {
    let store = TempStore::new().unwrap();
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
    // One append: every event of the commit carries the same commit (consecutive positions,
    // one transaction); a reopen shows them all.
    let c = Repository::<Counter, _>::new(&*store).get("audit").unwrap();
    assert_eq!(c.total, 1);
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

// ---- publishing ----

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

// ---- workflows and the command relay ----

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Placed {
    order: u32,
    fail: bool,
}
impl EventType for Placed {
    const NAME: &'static str = "Placed";
}
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Requested {
    order: u32,
}
impl EventType for Requested {
    const NAME: &'static str = "ShippingRequested";
}
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Shipped {
    order: u32,
}
impl EventType for Shipped {
    const NAME: &'static str = "Shipped";
    const PUBLISHED: bool = true;
}
events! { #[derive(Debug, Clone)] enum OrderEvent { Placed(Placed), Shipped(Shipped) } }
events! { #[derive(Debug, Clone)] enum FlowEvent { Requested(Requested) } }

#[derive(Default)]
struct Order {
    shipped: bool,
    recorder: Recorder<OrderEvent>,
}
impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Event = OrderEvent;
    fn apply(&mut self, e: &OrderEvent) {
        if matches!(e, OrderEvent::Shipped(_)) {
            self.shipped = true;
        }
    }
    fn recorder(&self) -> &Recorder<OrderEvent> {
        &self.recorder
    }
    fn recorder_mut(&mut self) -> &mut Recorder<OrderEvent> {
        &mut self.recorder
    }
}

/// The workflow: its own state is event-sourced; it dispatches `Ship` once per order.
#[derive(Default)]
struct Shipping {
    requested: bool,
    recorder: Recorder<FlowEvent>,
}
impl Aggregate for Shipping {
    const CATEGORY: &'static str = "shipping";
    type Event = FlowEvent;
    fn apply(&mut self, _: &FlowEvent) {
        self.requested = true;
    }
    fn recorder(&self) -> &Recorder<FlowEvent> {
        &self.recorder
    }
    fn recorder_mut(&mut self) -> &mut Recorder<FlowEvent> {
        &mut self.recorder
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Ship {
    order: u32,
    fail: bool,
}
impl Command for Ship {
    const NAME: &'static str = "Ship";
}

#[derive(Debug, thiserror::Error)]
#[error("the carrier refused order {0}")]
struct Refused(u32);

fn shop(handled: Arc<AtomicUsize>) -> MessageBus<Store> {
    let mut bus = MessageBus::new();
    bus.listen(
        |e: &Placed, uow: &mut UnitOfWork<'_, Store>| -> annals::Result<()> {
            let flow = uow.get_or_create::<Shipping>(&e.order.to_string())?;
            if !flow.requested {
                flow.record(Requested { order: e.order });
                flow.dispatch(&Ship {
                    order: e.order,
                    fail: e.fail,
                })?;
            }
            Ok(())
        },
    );
    bus.handle_command(
        move |c: Ship, uow: &mut UnitOfWork<'_, Store>| -> Result<(), BusError> {
            handled.fetch_add(1, Ordering::SeqCst);
            if c.fail {
                return Err(BusError::rejected(Refused(c.order)));
            }
            let order = uow.get::<Order>(&c.order.to_string())?;
            order.record(Shipped { order: c.order });
            Ok(())
        },
    )
    .unwrap();
    bus
}

fn place(bus: &MessageBus<Store>, store: &Store, order: u32, fail: bool) {
    let mut uow = UnitOfWork::new(store);
    uow.create::<Order>(&order.to_string())
        .record(Placed { order, fail });
    bus.settle(&mut uow).unwrap();
    uow.commit().unwrap();
}

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
