//! Aggregates and the repository: versions, conflicts, retries.

use std::sync::atomic::{AtomicUsize, Ordering};

use annals::Error;
use annals::domain::testing::TempStore;
use annals::domain::{Aggregate, DomainError, Repository};

use super::fixtures::*;

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
