//! Snapshots: taken every n events, used when loading, ignored when outdated.

use annals::Direction;
use annals::domain::testing::TempStore;
use annals::domain::{Aggregate, Repository};

use super::fixtures::*;

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
