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

/// An event with the id `id` (as a big-endian integer).
fn with_id(id: u128) -> NewEvent {
    NewEvent::new("E", "x").with_id(uuid::Uuid::from_u128(id))
}

/// The ids of a stream's events, in order.
fn stream_ids(store: &Store, stream: &str) -> Vec<u128> {
    store
        .read_stream(stream, 0, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap().id().as_u128())
        .collect()
}

/// Time-ordered ids are recorded as one span per append; ids that are not (random, reused,
/// or falling inside a span's range without being one of its ids) one by one. Every kind is
/// found again, in memory, in the sidecar, after a reopen and after a rebuilt index, and none
/// can be stored twice.
#[test]
fn ids_inside_and_outside_spans_are_all_found_and_never_stored_twice() {
    let fs = MemoryFs::new();
    let span: Vec<u128> = vec![100, 110, 120, 130, 140];
    let inside = 115; // within the span's range, not one of its ids
    let below = 7; // below everything stored before it
    let appended = {
        let store = open(&fs, 1_000_000);
        let appended = store
            .append(
                "a",
                ExpectedVersion::NoStream,
                span.iter().map(|&i| with_id(i)),
            )
            .unwrap();
        store
            .append("b", ExpectedVersion::NoStream, [with_id(inside)])
            .unwrap();
        store
            .append("c", ExpectedVersion::NoStream, [with_id(below)])
            .unwrap();
        // Refused: an id twice in one append, alone or after new ids.
        duplicate(store.append("d", ExpectedVersion::Any, [with_id(500), with_id(500)]));
        duplicate(store.append("d", ExpectedVersion::Any, [with_id(501), with_id(120)]));
        appended
    };
    let checks = |store: &Store| {
        // Retries are recognised, whichever way the ids were recorded.
        let again = store
            .append(
                "a",
                ExpectedVersion::NoStream,
                span.iter().map(|&i| with_id(i)),
            )
            .unwrap();
        assert_eq!(again, appended);
        for (stream, id, version) in [("b", inside, 0), ("c", below, 0)] {
            let r = store
                .append(stream, ExpectedVersion::NoStream, [with_id(id)])
                .unwrap();
            assert_eq!(r.version, Some(version), "{stream}");
        }
        // The same ids anywhere else are refused: span ids (first, middle, last), the id
        // inside the span's range, the one below it.
        for (stream, id) in [
            ("z", 100),
            ("z", 120),
            ("z", 140),
            ("a", inside),
            ("z", below),
        ] {
            duplicate(store.append(stream, ExpectedVersion::Any, [with_id(id)]));
        }
        assert_eq!(stream_ids(store, "a"), span);
        assert_eq!(stream_ids(store, "b"), vec![inside]);
        assert_eq!(stream_ids(store, "c"), vec![below]);
        assert!(stream_ids(store, "d").is_empty() && stream_ids(store, "z").is_empty());
        assert!(store.verify(&mut |_, _| {}).unwrap().is_clean());
    };
    let store = open(&fs, 1_000_000);
    checks(&store);
    store.flush_index().unwrap();
    checks(&store);
    drop(store);
    // Without the sidecar: the index is rebuilt from the log, spans and all.
    use annals::storage::FileSystem;
    fs.remove_file(std::path::Path::new("/i/s.annals.index"))
        .unwrap();
    let store = open(&fs, 2);
    assert!(store.recovery_report().index_rebuilt.is_some());
    checks(&store);
}
