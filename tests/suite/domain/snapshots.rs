//! Snapshots: ignored when outdated, kept across a reopen. (Taken every n events and used
//! when loading: `backends.rs`, on both backends.)

use annals::Direction;
use annals::domain::testing::TempStore;
use annals::domain::{Aggregate, Repository};

use super::fixtures::*;

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
