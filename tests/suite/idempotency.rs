//! Re-appending events that are already stored where the append puts them succeeds and writes
//! nothing; their ids anywhere else are an error.

use annals::storage::MemoryFs;
use annals::{Direction, Error, ExpectedVersion, NewEvent, Position, Store};

fn ev(t: &'static str, p: &'static str) -> NewEvent {
    NewEvent::new(t, p)
}

fn log_len(store: &Store) -> usize {
    store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .count()
}

fn open(fs: &MemoryFs, flush: u64) -> Store {
    Store::builder()
        .file_system(fs.clone())
        .index_flush_events(flush)
        .open("/i/s")
        .unwrap()
}

fn duplicate(r: annals::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::DuplicateEventId { detail, .. }) => detail,
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
}

/// Runs the checks with ids in the in-memory index and, separately, in the sidecar.
fn each_layer(check: impl Fn(&Store, &dyn Fn(&Store))) {
    for flush_between in [false, true] {
        let fs = MemoryFs::new();
        let store = open(&fs, 1_000_000);
        check(&store, &|s: &Store| {
            if flush_between {
                s.flush_index().unwrap();
            }
        });
    }
}

#[test]
fn a_retried_append_writes_nothing_and_returns_the_first_result() {
    each_layer(|store, settle| {
        let batch = vec![ev("A", "1"), ev("B", "2")];
        let first = store
            .append("s", ExpectedVersion::NoStream, batch.clone())
            .unwrap();
        settle(store);
        let again = store
            .append("s", ExpectedVersion::NoStream, batch.clone())
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(log_len(store), 2);
        // Others append meanwhile; the retry still finds its events where it put them.
        store
            .append("s", ExpectedVersion::Any, [ev("C", "3")])
            .unwrap();
        settle(store);
        assert_eq!(
            store
                .append("s", ExpectedVersion::NoStream, batch.clone())
                .unwrap(),
            first
        );
        assert_eq!(
            store.append("s", ExpectedVersion::Any, batch).unwrap(),
            first
        );
        assert_eq!(log_len(store), 3);
    });
}

#[test]
fn the_same_ids_elsewhere_are_refused() {
    each_layer(|store, settle| {
        let e = ev("A", "1");
        store
            .append("s", ExpectedVersion::NoStream, [e.clone()])
            .unwrap();
        store
            .append("s", ExpectedVersion::Any, [ev("B", "2")])
            .unwrap();
        settle(store);
        assert!(
            duplicate(store.append("other", ExpectedVersion::Any, [e.clone()]))
                .contains("version 0 of `s`")
        );
        // Expected at version 1, but it is at version 0: not where this append puts it.
        assert!(
            duplicate(store.append("s", ExpectedVersion::Exact(0), [e.clone()]))
                .contains("not where")
        );
        // One stored event and one new one.
        duplicate(store.append("s", ExpectedVersion::Any, [e.clone(), ev("C", "3")]));
        // The same id twice in one append.
        let twice = ev("D", "4");
        assert!(
            duplicate(store.append("t", ExpectedVersion::Any, [twice.clone(), twice]))
                .contains("twice")
        );
        assert_eq!(log_len(store), 2, "nothing refused was written");
    });
}

#[test]
fn a_retried_transaction_is_recognised_whole() {
    each_layer(|store, settle| {
        let (a, b) = (ev("A", "a"), ev("B", "b"));
        let tx = |store: &Store| {
            store
                .transaction()
                .append("x", ExpectedVersion::NoStream, [a.clone()])
                .append("y", ExpectedVersion::NoStream, [b.clone()])
                .commit()
        };
        let first = tx(store).unwrap();
        settle(store);
        assert_eq!(tx(store).unwrap(), first);
        assert_eq!(log_len(store), 2);
    });
}

#[test]
fn ids_survive_a_reopen_and_a_rebuilt_index() {
    let fs = MemoryFs::new();
    let e = ev("A", "1");
    let first = {
        let store = open(&fs, 3);
        for i in 0..10 {
            store
                .append("pad", ExpectedVersion::Any, [NewEvent::new("P", vec![i])])
                .unwrap();
        }
        store
            .append("s", ExpectedVersion::NoStream, [e.clone()])
            .unwrap()
    };
    let store = open(&fs, 3);
    assert_eq!(
        store
            .append("s", ExpectedVersion::NoStream, [e.clone()])
            .unwrap(),
        first
    );
    duplicate(store.append("t", ExpectedVersion::Any, [e.clone()]));
    drop(store);
    use annals::storage::FileSystem;
    fs.remove_file(std::path::Path::new("/i/s.annals.index"))
        .unwrap();
    let store = open(&fs, 3);
    assert!(store.recovery_report().index_rebuilt.is_some());
    assert_eq!(
        store
            .append("s", ExpectedVersion::NoStream, [e.clone()])
            .unwrap(),
        first
    );
    duplicate(store.append("t", ExpectedVersion::Any, [e]));
}

#[test]
fn concurrent_retries_in_one_group_write_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path().join("s")).unwrap());
    let e = ev("A", "once");
    let results: Vec<_> = (0..8)
        .map(|_| {
            let (store, e) = (store.clone(), e.clone());
            std::thread::spawn(move || store.append("s", ExpectedVersion::Any, [e]))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    assert_eq!(log_len(&store), 1);
}
