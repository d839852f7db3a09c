//! Behaviour of the store's public API on real files and in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use annals::storage::{FaultFs, FaultMode, MemoryFs};
use annals::{Direction, Error, ExpectedVersion, NewEvent, Position, RecordedEvent, Store};

fn ev(t: &'static str, payload: impl Into<Vec<u8>>) -> NewEvent {
    NewEvent::new(t, payload.into())
}

fn stream(store: &Store, name: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(name, 0, Direction::Forwards, usize::MAX)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn all(store: &Store) -> Vec<RecordedEvent> {
    store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn payloads(events: &[RecordedEvent]) -> Vec<Vec<u8>> {
    events.iter().map(|e| e.payload().to_vec()).collect()
}

fn store_file(dir: &Path) -> PathBuf {
    dir.join("s.annals")
}

#[test]
fn appended_events_read_back_with_all_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s")).unwrap();
    let corr = uuid::Uuid::now_v7();
    let e = ev("OrderPlaced", "payload")
        .with_metadata("meta")
        .with_schema_version(3)
        .with_correlation_id(corr)
        .published(true);
    let id = e.id;
    let ts = e.timestamp;
    let r = store
        .append("order-1", ExpectedVersion::NoStream, [e])
        .unwrap();
    assert_eq!(r.version, Some(0));
    assert_eq!(r.first_position, r.last_position);
    let got = stream(&store, "order-1");
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(
        (
            g.stream(),
            g.version(),
            g.event_type(),
            g.payload(),
            g.metadata()
        ),
        ("order-1", 0, "OrderPlaced", &b"payload"[..], &b"meta"[..])
    );
    assert_eq!(
        (
            g.id(),
            g.schema_version(),
            g.correlation_id(),
            g.causation_id()
        ),
        (id, 3, Some(corr), None)
    );
    assert!(g.is_published());
    assert_eq!(g.timestamp(), ts);
    assert_eq!(g.position(), r.first_position);
}

#[test]
fn expected_versions_are_enforced_and_a_mismatch_writes_nothing() {
    let store = Store::builder()
        .file_system(MemoryFs::new())
        .open("/m/s")
        .unwrap();
    let conflict = |r: Result<_, Error>, expected_actual: Option<u64>| match r {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, expected_actual),
        other => panic!("expected a conflict, got {other:?}"),
    };
    conflict(
        store.append("a", ExpectedVersion::StreamExists, [ev("E", "x")]),
        None,
    );
    conflict(
        store.append("a", ExpectedVersion::Exact(0), [ev("E", "x")]),
        None,
    );
    store
        .append("a", ExpectedVersion::NoStream, [ev("E", "0"), ev("E", "1")])
        .unwrap();
    conflict(
        store.append("a", ExpectedVersion::NoStream, [ev("E", "x")]),
        Some(1),
    );
    conflict(
        store.append("a", ExpectedVersion::Exact(0), [ev("E", "x")]),
        Some(1),
    );
    store
        .append("a", ExpectedVersion::Exact(1), [ev("E", "2")])
        .unwrap();
    store
        .append("a", ExpectedVersion::StreamExists, [ev("E", "3")])
        .unwrap();
    store
        .append("a", ExpectedVersion::Any, [ev("E", "4")])
        .unwrap();
    assert_eq!(store.stream_version("a").unwrap(), Some(4));
    assert_eq!(
        payloads(&stream(&store, "a")),
        [b"0", b"1", b"2", b"3", b"4"]
    );
    assert_eq!(all(&store).len(), 5, "failed appends wrote nothing");
}

#[test]
fn a_transaction_is_all_or_nothing() {
    let store = Store::builder()
        .file_system(MemoryFs::new())
        .open("/m/s")
        .unwrap();
    store
        .append("b", ExpectedVersion::NoStream, [ev("E", "b0")])
        .unwrap();
    let failed = store
        .transaction()
        .append("a", ExpectedVersion::NoStream, [ev("E", "a0")])
        .append("b", ExpectedVersion::NoStream, [ev("E", "b1")])
        .commit();
    assert!(matches!(failed, Err(Error::WrongExpectedVersion { ref stream, .. }) if stream == "b"));
    assert_eq!(store.stream_version("a").unwrap(), None);
    assert_eq!(all(&store).len(), 1);

    let ok = store
        .transaction()
        .append(
            "a",
            ExpectedVersion::NoStream,
            [ev("E", "a0"), ev("E", "a1")],
        )
        .append("b", ExpectedVersion::Exact(0), [ev("E", "b1")])
        .append("a", ExpectedVersion::Exact(1), [ev("E", "a2")])
        .commit()
        .unwrap();
    assert_eq!(
        ok.iter().map(|r| r.version).collect::<Vec<_>>(),
        [Some(1), Some(1), Some(2)]
    );
    assert_eq!(payloads(&stream(&store, "a")), [b"a0", b"a1", b"a2"]);
    assert_eq!(payloads(&stream(&store, "b")), [b"b0", b"b1"]);
}

#[test]
fn stream_reads_go_both_ways_with_limits() {
    let store = Store::builder()
        .file_system(MemoryFs::new())
        .open("/m/s")
        .unwrap();
    for i in 0..20u8 {
        store
            .append("s", ExpectedVersion::Any, [ev("E", vec![i])])
            .unwrap();
        store
            .append("other", ExpectedVersion::Any, [ev("E", vec![100 + i])])
            .unwrap();
    }
    let read = |from, dir, limit| -> Vec<u8> {
        store
            .read_stream("s", from, dir, limit)
            .unwrap()
            .map(|e| e.unwrap().payload()[0])
            .collect()
    };
    assert_eq!(read(0, Direction::Forwards, 3), [0, 1, 2]);
    assert_eq!(read(17, Direction::Forwards, 10), [17, 18, 19]);
    assert_eq!(read(20, Direction::Forwards, 10), Vec::<u8>::new());
    assert_eq!(read(u64::MAX, Direction::Backwards, 3), [19, 18, 17]);
    assert_eq!(read(2, Direction::Backwards, 10), [2, 1, 0]);
    assert_eq!(read(5, Direction::Forwards, 0), Vec::<u8>::new());
    assert!(
        store
            .read_stream("missing", 0, Direction::Forwards, 10)
            .unwrap()
            .next()
            .is_none()
    );
    assert_eq!(store.stream_version("missing").unwrap(), None);
}

#[test]
fn read_all_resumes_from_any_position() {
    let store = Store::builder()
        .file_system(MemoryFs::new())
        .open("/m/s")
        .unwrap();
    for i in 0..10u8 {
        store
            .append(
                &format!("s-{}", i % 3),
                ExpectedVersion::Any,
                [ev("E", vec![i])],
            )
            .unwrap();
    }
    let everything = all(&store);
    assert_eq!(everything.len(), 10);
    assert!(
        everything
            .windows(2)
            .all(|w| w[0].position() < w[1].position())
    );
    assert!(
        everything
            .windows(2)
            .all(|w| w[0].next_position() == w[1].position())
    );
    let from = |p: Position, d| -> Vec<u8> {
        store
            .read_all(p, d, usize::MAX)
            .unwrap()
            .map(|e| e.unwrap().payload()[0])
            .collect()
    };
    assert_eq!(
        from(everything[4].next_position(), Direction::Forwards),
        [5, 6, 7, 8, 9]
    );
    // A position inside a frame starts at the next frame forwards, at that frame backwards.
    let inside = Position::new(everything[4].position().as_u64() + 8);
    assert_eq!(from(inside, Direction::Forwards), [5, 6, 7, 8, 9]);
    assert_eq!(from(inside, Direction::Backwards), [4, 3, 2, 1, 0]);
    assert_eq!(
        from(Position::END, Direction::Backwards),
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    );
    assert_eq!(
        from(store.end_position(), Direction::Forwards),
        Vec::<u8>::new()
    );
}

#[test]
fn names_and_sizes_are_checked_before_anything_is_written() {
    let store = Store::builder()
        .file_system(MemoryFs::new())
        .max_event_size(1000)
        .open("/m/s")
        .unwrap();
    for bad in ["", " x", "x\n", "$reserved"] {
        assert!(
            matches!(
                store.append(bad, ExpectedVersion::Any, [ev("E", "x")]),
                Err(Error::InvalidStreamName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        store.append("s", ExpectedVersion::Any, [ev("", "x")]),
        Err(Error::InvalidEventType { .. })
    ));
    assert!(matches!(
        store.append("s", ExpectedVersion::Any, [ev("E", vec![0; 1001])]),
        Err(Error::TooLarge {
            size: 1001,
            limit: 1000,
            ..
        })
    ));
    // No events: a no-op that writes nothing (and reports that the stream does not exist).
    let nothing = store.append("s", ExpectedVersion::Any, Vec::new()).unwrap();
    assert_eq!(nothing.version, None);
    store
        .append("s", ExpectedVersion::NoStream, [ev("E", vec![0; 1000])])
        .unwrap();
    assert_eq!(all(&store).len(), 1);
}

#[test]
fn a_commit_larger_than_a_segment_is_refused() {
    let store = Store::builder()
        .file_system(MemoryFs::new())
        .segment_size(64 * 1024)
        .open("/m/s")
        .unwrap();
    let big: Vec<_> = (0..100).map(|_| ev("E", vec![0; 1000])).collect();
    assert!(matches!(
        store.append("s", ExpectedVersion::Any, big),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(store.stream_version("s").unwrap(), None);
}

#[test]
fn a_second_open_is_locked_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path().join("s")).unwrap();
    match Store::open(dir.path().join("s")) {
        Err(Error::Locked { path }) => assert_eq!(path, store_file(dir.path())),
        other => panic!("expected Locked, got {other:?}"),
    }
    first.close().unwrap();
    Store::open(dir.path().join("s")).unwrap();
}

#[test]
fn foreign_files_and_newer_versions_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_file(dir.path());
    std::fs::write(&path, b"SQLite format 3\0 but not really").unwrap();
    assert!(matches!(Store::open(&path), Err(Error::NotAStore { .. })));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"SQLite format 3\0 but not really"
    );
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(Store::open(&path), Err(Error::NotAStore { .. })));
    assert!(
        !dir.path().join("s.annals.index").exists(),
        "no sidecar made for a foreign file"
    );

    std::fs::remove_file(&path).unwrap();
    Store::open(&path).unwrap().close().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    match Store::open(&path) {
        Err(Error::UnsupportedVersion {
            found: 3,
            supported: 2,
        }) => {}
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn everything_survives_a_reopen_across_many_segments_and_index_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Store::builder()
            .segment_size(64 * 1024)
            .index_flush_events(50)
            .open(dir.path().join("s"))
            .unwrap()
    };
    let store = open();
    for i in 0..600u32 {
        let events: Vec<_> = (0..(i % 4 + 1))
            .map(|k| ev("E", format!("{i}.{k}:{}", "x".repeat(200))))
            .collect();
        store
            .append(&format!("s-{}", i % 7), ExpectedVersion::Any, events)
            .unwrap();
    }
    let before = all(&store);
    assert!(
        before.last().unwrap().position().as_u64() > 5 * 64 * 1024,
        "spans many segments"
    );
    let per_stream: Vec<_> = (0..7)
        .map(|s| payloads(&stream(&store, &format!("s-{s}"))))
        .collect();
    store.close().unwrap();

    let store = open();
    assert_eq!(
        store.recovery_report().commits_replayed,
        0,
        "a clean close leaves nothing to replay"
    );
    assert_eq!(all(&store), before);
    for (s, expected) in per_stream.iter().enumerate() {
        assert_eq!(&payloads(&stream(&store, &format!("s-{s}"))), expected);
    }
    let backwards: Vec<_> = store
        .read_all(Position::END, Direction::Backwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(backwards.into_iter().rev().collect::<Vec<_>>(), before);
    store.close().unwrap();

    // Without its sidecar, the store rebuilds the index from the log.
    std::fs::remove_file(dir.path().join("s.annals.index")).unwrap();
    let store = open();
    assert_eq!(
        store.recovery_report().index_rebuilt.as_deref(),
        Some("missing")
    );
    for (s, expected) in per_stream.iter().enumerate() {
        assert_eq!(&payloads(&stream(&store, &format!("s-{s}"))), expected);
    }
}

#[test]
fn a_foreign_or_garbage_sidecar_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s");
    let t = dir.path().join("t");
    let store = Store::open(&s).unwrap();
    store
        .append("a", ExpectedVersion::Any, [ev("E", "1")])
        .unwrap();
    store.close().unwrap();
    Store::open(&t).unwrap().close().unwrap();

    std::fs::copy(
        dir.path().join("t.annals.index"),
        dir.path().join("s.annals.index"),
    )
    .unwrap();
    let store = Store::open(&s).unwrap();
    assert_eq!(
        store.recovery_report().index_rebuilt.as_deref(),
        Some("belongs to another store")
    );
    assert_eq!(store.stream_version("a").unwrap(), Some(0));
    store.close().unwrap();

    std::fs::write(dir.path().join("s.annals.index"), vec![0xAB; 10_000]).unwrap();
    let store = Store::open(&s).unwrap();
    assert!(store.recovery_report().index_rebuilt.is_some());
    assert_eq!(payloads(&stream(&store, "a")), [b"1"]);
}

#[test]
fn a_torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s")).unwrap();
    store
        .append("a", ExpectedVersion::Any, [ev("E", "kept")])
        .unwrap();
    let end = store.end_position().as_u64();
    store.close().unwrap();
    // Garbage where the next commit would have gone: an unacknowledged, torn write.
    let path = store_file(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[end as usize..end as usize + 100].copy_from_slice(&[0x5A; 100]);
    std::fs::write(&path, &bytes).unwrap();

    let store = Store::open(dir.path().join("s")).unwrap();
    let t = store
        .recovery_report()
        .truncated
        .clone()
        .expect("a truncation");
    assert_eq!((t.at, t.stopped_at), (end, end));
    assert_eq!(payloads(&all(&store)), [b"kept"]);
    store
        .append("a", ExpectedVersion::Exact(0), [ev("E", "next")])
        .unwrap();
    store.close().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        !bytes[end as usize + 200..end as usize + 300].contains(&0x5A),
        "garbage zeroed"
    );
    let store = Store::open(dir.path().join("s")).unwrap();
    assert!(store.recovery_report().truncated.is_none());
    assert_eq!(payloads(&all(&store)), [b"kept", b"next"]);
}

#[test]
fn corruption_of_acknowledged_data_is_reported_never_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s")).unwrap();
    let mut positions = vec![];
    for i in 0..5u8 {
        positions.push(
            store
                .append("a", ExpectedVersion::Any, [ev("E", vec![i; 50])])
                .unwrap()
                .first_position,
        );
    }
    store.close().unwrap();
    let path = store_file(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let victim = positions[2].as_u64() as usize + 70;
    bytes[victim] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    // With the sidecar, open succeeds and the read of the damaged event fails, naming it.
    let store = Store::open(dir.path().join("s")).unwrap();
    let results: Vec<_> = store
        .read_stream("a", 0, Direction::Forwards, 10)
        .unwrap()
        .collect();
    assert!(results[0].is_ok() && results[1].is_ok());
    match &results[2] {
        Err(Error::Corrupt { position, .. }) => assert_eq!(*position, positions[2].as_u64()),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    store.close().unwrap();

    // Without it, recovery scans the log, meets the bad frame, sees later frames that prove it
    // was acknowledged, and refuses to open: nothing is truncated.
    std::fs::remove_file(dir.path().join("s.annals.index")).unwrap();
    match Store::open(dir.path().join("s")) {
        Err(Error::Corrupt { position, reason }) => {
            assert_eq!(position, positions[2].as_u64(), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file was not changed"
    );
}

#[test]
fn concurrent_appenders_all_land_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::builder()
            .index_flush_events(500)
            .open(dir.path().join("s"))
            .unwrap(),
    );
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut expected = ExpectedVersion::NoStream;
                for i in 0..200u32 {
                    let r = store
                        .append(
                            &format!("t-{t}"),
                            expected,
                            [ev("E", i.to_le_bytes().to_vec())],
                        )
                        .unwrap();
                    assert_eq!(r.version, Some(u64::from(i)));
                    expected = r.next_expected();
                    // Everyone also appends to one shared stream without a version check.
                    store
                        .append("shared", ExpectedVersion::Any, [ev("E", vec![t as u8])])
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    for t in 0..8 {
        let got: Vec<u32> = stream(&store, &format!("t-{t}"))
            .iter()
            .map(|e| u32::from_le_bytes(e.payload().try_into().unwrap()))
            .collect();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }
    let shared = stream(&store, "shared");
    assert_eq!(shared.len(), 1600);
    assert!(
        shared
            .iter()
            .enumerate()
            .all(|(i, e)| e.version() == i as u64)
    );
    assert_eq!(all(&store).len(), 3200);
}

#[test]
fn a_failed_sync_poisons_until_reopen() {
    let fs = FaultFs::new();
    let store = Store::builder()
        .file_system(fs.clone())
        .open("/d/s")
        .unwrap();
    store
        .append("a", ExpectedVersion::Any, [ev("E", "1")])
        .unwrap();
    fs.fail_at(
        fs.op_count() + 1,
        FaultMode::Once,
        std::io::ErrorKind::Other,
    );
    assert!(matches!(
        store.append("a", ExpectedVersion::Any, [ev("E", "2")]),
        Err(Error::Poisoned { .. })
    ));
    // The fault was one-off, but the store stays poisoned: no fsync retry is trusted.
    assert!(matches!(
        store.append("a", ExpectedVersion::Any, [ev("E", "3")]),
        Err(Error::Poisoned { .. })
    ));
    drop(store);
    let store = Store::builder().file_system(fs).open("/d/s").unwrap();
    let got = payloads(&all(&store));
    assert!(
        got == [b"1".to_vec()] || got == [b"1".to_vec(), b"2".to_vec()],
        "{got:?}"
    );
    store
        .append("a", ExpectedVersion::Any, [ev("E", "3")])
        .unwrap();
}

#[test]
fn a_full_disk_at_a_segment_start_is_an_error_that_loses_nothing() {
    let fs = FaultFs::new();
    let store = Store::builder()
        .file_system(fs.clone())
        .segment_size(64 * 1024)
        .open("/d/s")
        .unwrap();
    fs.set_capacity(Some(fs.used_bytes()));
    let mut acknowledged = 0;
    let err = loop {
        match store.append("a", ExpectedVersion::Any, [ev("E", vec![1; 2000])]) {
            Ok(_) => acknowledged += 1,
            Err(e) => break e,
        }
    };
    // Appends fill the space the segment reserved, then the next segment cannot be reserved.
    assert!(acknowledged > 20, "{acknowledged}");
    assert!(
        matches!(err, Error::Io(ref e) if e.kind() == std::io::ErrorKind::StorageFull),
        "{err:?}"
    );
    // Not poisoned: nothing was written, and once there is space again appends go on.
    assert!(matches!(
        store.append("a", ExpectedVersion::Any, [ev("E", vec![1; 2000])]),
        Err(Error::Io(_))
    ));
    fs.set_capacity(None);
    store
        .append("a", ExpectedVersion::Any, [ev("E", vec![2; 2000])])
        .unwrap();
    drop(store);
    let store = Store::builder().file_system(fs).open("/d/s").unwrap();
    let got = stream(&store, "a");
    assert_eq!(got.len(), acknowledged + 1);
    assert_eq!(got.last().unwrap().payload(), vec![2; 2000]);
}

#[test]
fn concurrent_new_streams_with_constant_index_flushes_keep_the_index_right() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Store::builder()
            .index_flush_events(1)
            .open(dir.path().join("s"))
            .unwrap()
    };
    let store = Arc::new(open());
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..60u32 {
                    // Each thread keeps creating streams and appending to the previous ones.
                    let stream = format!("n-{t}-{}", i / 3);
                    store
                        .append(
                            &stream,
                            ExpectedVersion::Any,
                            [ev("E", i.to_le_bytes().to_vec())],
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let check = |store: &Store| {
        for t in 0..6 {
            for s in 0..20 {
                let got: Vec<u32> = stream(store, &format!("n-{t}-{s}"))
                    .iter()
                    .map(|e| u32::from_le_bytes(e.payload().try_into().unwrap()))
                    .collect();
                assert_eq!(got, [s * 3, s * 3 + 1, s * 3 + 2], "stream n-{t}-{s}");
            }
        }
    };
    check(&store);
    drop(store);
    check(&open());
}

#[test]
fn after_a_clean_close_a_later_crash_still_gets_the_full_corruption_check() {
    use annals::storage::{CrashPolicy, FileSystem, OpenMode};
    let fs = FaultFs::new();
    let open = |fs: &FaultFs| Store::builder().file_system(fs.clone()).open("/d/s");
    let store = open(&fs).unwrap();
    store
        .append("a", ExpectedVersion::Any, [ev("E", "x")])
        .unwrap();
    store.close().unwrap();
    let store = open(&fs).unwrap();
    let a = store
        .append("a", ExpectedVersion::Any, [ev("E", vec![7; 300])])
        .unwrap();
    store
        .append("a", ExpectedVersion::Any, [ev("E", "b")])
        .unwrap();
    // Power cut without a close; then the first of the two synced events is zeroed.
    let crashed = fs.crash(CrashPolicy::DropUnsynced);
    drop(store);
    let f = crashed
        .open(Path::new("/d/s.annals"), OpenMode::Existing)
        .unwrap();
    f.write_all_at(&[0; 64], a.first_position.as_u64()).unwrap();
    drop(f);
    match open(&crashed) {
        Err(Error::Corrupt { position, .. }) => assert_eq!(position, a.first_position.as_u64()),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn readers_see_consistent_prefixes_while_writers_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::builder()
            .segment_size(256 * 1024)
            .index_flush_events(300)
            .open(dir.path().join("s"))
            .unwrap(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..400u32 {
                    let events: Vec<_> = (0..(i % 3 + 1))
                        .map(|_| ev("E", vec![t as u8; 100 + (i as usize % 700)]))
                        .collect();
                    store
                        .append(&format!("w-{t}"), ExpectedVersion::Any, events)
                        .unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last_len = 0;
                let mut rounds = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let log = all(&store);
                    assert!(log.len() >= last_len, "a later snapshot is never shorter");
                    assert!(log.windows(2).all(|w| w[0].position() < w[1].position()));
                    let mut next: std::collections::HashMap<&str, u64> = Default::default();
                    for e in &log {
                        let v = next.entry(e.stream()).or_default();
                        assert_eq!(e.version(), *v, "versions of {} in log order", e.stream());
                        *v += 1;
                    }
                    for (s, n) in &next {
                        let read = store
                            .read_stream(s, 0, Direction::Forwards, usize::MAX)
                            .unwrap();
                        assert!(
                            read.count() as u64 >= *n,
                            "the stream has at least what the log had"
                        );
                    }
                    last_len = log.len();
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    writers.into_iter().for_each(|w| w.join().unwrap());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(all(&store).len(), 3 * (134 + 133 * 2 + 133 * 3));
}

#[test]
fn reopening_a_clean_store_keeps_the_log_and_the_first_append_clears_the_clean_mark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quiet");
    {
        let store = Store::open(&path).unwrap();
        store
            .append("s", ExpectedVersion::Any, [NewEvent::new("E", "x")])
            .unwrap();
    }
    let files = |dir: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = files(dir.path());
    for _ in 0..3 {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.stream_version("s").unwrap(), Some(0));
        assert_eq!(store.recovery_report().commits_replayed, 0);
    }
    let after = files(dir.path());
    // (redb rewrites its own file on every open and close; the log must not change.)
    for ((name, a), (_, b)) in before
        .iter()
        .zip(&after)
        .filter(|((n, _), _)| n.ends_with(".annals"))
    {
        let first_diff = a.iter().zip(b).position(|(x, y)| x != y);
        assert!(
            a.len() == b.len() && first_diff.is_none(),
            "a read-only open changed {name}: {} -> {} bytes, first difference at {first_diff:?}",
            a.len(),
            b.len()
        );
    }
    // The first append clears the clean mark first; a crash after it replays the log.
    let store = Store::open(&path).unwrap();
    store
        .append("s", ExpectedVersion::Exact(0), [NewEvent::new("E", "y")])
        .unwrap();
    // A crash now: copy the files as they are (the store is still open, never closed).
    let crashed = tempfile::tempdir().unwrap();
    for (name, bytes) in files(dir.path()) {
        std::fs::write(crashed.path().join(name), bytes).unwrap();
    }
    drop(store);
    let reopened = Store::open(crashed.path().join("quiet")).unwrap();
    assert_eq!(reopened.stream_version("s").unwrap(), Some(1));
    assert!(
        reopened.recovery_report().commits_replayed >= 1,
        "not taken for a clean close: the log after the sidecar was scanned"
    );
}

/// What a read returns as (position, stream, version, type, payload), owned or borrowed.
type Seen = (u64, String, u64, String, Vec<u8>);

fn seen_owned(e: &RecordedEvent) -> Seen {
    (
        e.position().as_u64(),
        e.stream().to_owned(),
        e.version(),
        e.event_type().to_owned(),
        e.payload().to_vec(),
    )
}

fn seen_view(e: &annals::EventView<'_>) -> Seen {
    (
        e.position().as_u64(),
        e.stream().to_owned(),
        e.version(),
        e.event_type().to_owned(),
        e.payload().to_vec(),
    )
}

/// Borrowed reads (`next_ref`) return exactly what owned reads return, in both directions,
/// with limits, from any position, across segments, through maps (a real file) and without
/// them (in memory).
#[test]
fn borrowed_reads_see_what_owned_reads_see() {
    let dir = tempfile::tempdir().unwrap();
    let on_disk = Store::builder()
        .segment_size(64 * 1024)
        .open(dir.path().join("views"))
        .unwrap();
    let in_memory = Store::builder()
        .file_system(MemoryFs::new())
        .segment_size(64 * 1024)
        .open("/m/views")
        .unwrap();
    for store in [&on_disk, &in_memory] {
        for i in 0..600u32 {
            let events =
                (0..(i % 4 + 1)).map(|k| ev("E", vec![(i + k) as u8; (i as usize * 7) % 300]));
            store
                .append(&format!("s-{}", i % 5), ExpectedVersion::Any, events)
                .unwrap();
        }
        // An engine record (`$` stream) that read_all leaves out and read_log keeps.
        store.flush_index().unwrap();
        let positions: Vec<u64> = all(store).iter().map(|e| e.position().as_u64()).collect();
        assert!(
            store.end_position().as_u64() > 3 * 64 * 1024,
            "several segments"
        );
        for direction in [Direction::Forwards, Direction::Backwards] {
            for (from, limit) in [
                (Position::START, usize::MAX),
                (Position::END, usize::MAX),
                (Position::new(positions[positions.len() / 3]), 50),
                (Position::new(positions[positions.len() / 2] + 8), 1000),
            ] {
                let owned: Vec<Seen> = store
                    .read_all(from, direction, limit)
                    .unwrap()
                    .map(|e| seen_owned(&e.unwrap()))
                    .collect();
                let mut events = store.read_all(from, direction, limit).unwrap();
                let mut borrowed = Vec::new();
                while let Some(e) = events.next_ref() {
                    borrowed.push(seen_view(&e.unwrap()));
                }
                assert_eq!(borrowed, owned, "{direction:?} from {from:?} limit {limit}");
            }
            for (stream, from, limit) in
                [("s-0", 0, usize::MAX), ("s-3", 100, 40), ("s-4", 10_000, 5)]
            {
                let owned: Vec<Seen> = store
                    .read_stream(stream, from, direction, limit)
                    .unwrap()
                    .map(|e| seen_owned(&e.unwrap()))
                    .collect();
                let mut events = store.read_stream(stream, from, direction, limit).unwrap();
                let mut borrowed = Vec::new();
                while let Some(e) = events.next_ref() {
                    let e = e.unwrap();
                    assert_eq!(seen_owned(&e.to_owned()), seen_view(&e));
                    borrowed.push(seen_view(&e));
                }
                assert_eq!(
                    borrowed, owned,
                    "{stream} {direction:?} from {from} limit {limit}"
                );
                let whole = stream == "s-0" && direction == Direction::Forwards;
                assert!(!whole || borrowed.len() > 100, "{}", borrowed.len());
            }
        }
    }
}

/// A full disk when a store is created: the error names the file (the log, or its index
/// sidecar), keeps its kind (`StorageFull`), and for the log says how much space it needed.
#[test]
fn a_full_disk_at_creation_names_the_file_and_the_space_it_needed() {
    for (capacity, file) in [
        (1_000u64, "/full/store.annals:"),
        (100_000, "/full/store.annals:"),
        (300_000, "/full/store.annals.index:"),
    ] {
        let fs = FaultFs::new();
        fs.set_capacity(Some(capacity));
        let err = Store::builder()
            .file_system(fs.clone())
            .open("/full/store")
            .expect_err("no room for a store");
        let text = err.to_string();
        assert!(text.starts_with(file), "{capacity}: {text}");
        if !file.contains("index") {
            assert!(text.contains("takes 266240 bytes"), "{capacity}: {text}");
        }
        assert!(
            err.io_error()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::StorageFull),
            "{capacity}: {err:?}"
        );
    }
}
