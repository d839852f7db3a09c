//! Regression tests for what a review of the first lifecycle code found (each failed before
//! its fix).

use std::time::{Duration, SystemTime};

use annals::storage::{CrashPolicy, FaultFs};
use annals::{Direction, ExpectedVersion, NewEvent, Position, Store, StreamMetadata};

fn open(path: &std::path::Path) -> Store {
    Store::builder().segment_size(64 * 1024).open(path).unwrap()
}

fn ev(ty: &'static str) -> NewEvent {
    NewEvent::new(ty, "x")
}

/// Appends filler until the log is in a new segment (the earlier ones are sealed).
fn seal(store: &Store) {
    for _ in 0..40 {
        store
            .append(
                "fill-1",
                ExpectedVersion::Any,
                [NewEvent::new("Fill", vec![1u8; 4000])],
            )
            .unwrap();
    }
}

fn types_of(r: impl Iterator<Item = annals::Result<annals::RecordedEvent>>) -> Vec<String> {
    r.map(|e| e.map(|e| format!("{}@{}", e.stream(), e.version())))
        .collect::<annals::Result<_>>()
        .unwrap()
}

#[test]
fn a_backwards_category_read_over_a_gap_returns_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s"));
    store
        .append("x-a", ExpectedVersion::Any, [ev("E")])
        .unwrap(); // X1
    store
        .append("x-b", ExpectedVersion::Any, [ev("E")])
        .unwrap(); // X2 (run [X1, X2])
    store
        .append("y-1", ExpectedVersion::Any, [ev("E")])
        .unwrap(); // Y1
    store
        .append("x-a", ExpectedVersion::Any, [ev("E")])
        .unwrap(); // X3 (run [X3])
    store.delete_stream("x-b", ExpectedVersion::Any).unwrap();
    store.delete_stream("y-1", ExpectedVersion::Any).unwrap();
    seal(&store);
    let before = types_of(
        store
            .read_category_backwards("x", Position::END, usize::MAX)
            .unwrap(),
    );
    assert_eq!(before, ["x-a@1", "x-a@0"]);
    let r = store.scavenge().unwrap();
    assert_eq!(r.gaps, 1);
    let after = types_of(
        store
            .read_category_backwards("x", Position::END, usize::MAX)
            .unwrap(),
    );
    assert_eq!(after, ["x-a@1", "x-a@0"], "duplicate after scavenge");
}

#[test]
fn an_event_expired_in_the_middle_of_a_stream_is_left_for_later_and_reads_go_on_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s"));
    let old = SystemTime::now() - Duration::from_secs(10 * 86400);
    store
        .append(
            "s-1",
            ExpectedVersion::NoStream,
            [ev("E"), ev("E").with_timestamp(old), ev("E")],
        )
        .unwrap();
    let meta = StreamMetadata {
        max_age: Some(Duration::from_secs(86400)),
        ..Default::default()
    };
    store
        .set_stream_metadata("s-1", ExpectedVersion::NoStream, meta)
        .unwrap();
    seal(&store);
    let read = |d| {
        store
            .read_stream(
                "s-1",
                if d == Direction::Forwards {
                    0
                } else {
                    u64::MAX
                },
                d,
                10,
            )
            .unwrap()
            .map(|e| e.map(|e| e.version()))
            .collect::<annals::Result<Vec<_>>>()
    };
    assert_eq!(read(Direction::Forwards).unwrap(), [0, 2]);
    assert_eq!(read(Direction::Backwards).unwrap(), [2, 0]);
    // A scavenge removes a prefix of a stream only: the expired version 1 stays on disk.
    assert_eq!(store.scavenge().unwrap().events, 0);
    assert_eq!(read(Direction::Backwards).unwrap(), [2, 0], "backwards");
    assert_eq!(read(Direction::Forwards).unwrap(), [0, 2], "forwards");
}

#[test]
fn an_event_expired_in_the_middle_of_a_stream_is_left_for_later_and_reads_go_on_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s"));
    let old = SystemTime::now() - Duration::from_secs(10 * 86400);
    store
        .append(
            "s-1",
            ExpectedVersion::NoStream,
            [ev("E"), ev("E").with_timestamp(old), ev("E")],
        )
        .unwrap();
    let meta = StreamMetadata {
        max_age: Some(Duration::from_secs(86400)),
        ..Default::default()
    };
    store
        .set_stream_metadata("s-1", ExpectedVersion::NoStream, meta)
        .unwrap();
    seal(&store);
    let read = |d| {
        store
            .read_stream(
                "s-1",
                if d == Direction::Forwards {
                    0
                } else {
                    u64::MAX
                },
                d,
                10,
            )
            .unwrap()
            .map(|e| e.map(|e| e.version()))
            .collect::<annals::Result<Vec<_>>>()
    };
    assert_eq!(read(Direction::Forwards).unwrap(), [0, 2]);
    assert_eq!(read(Direction::Backwards).unwrap(), [2, 0]);
    assert_eq!(store.scavenge().unwrap().events, 0);
    assert_eq!(read(Direction::Forwards).unwrap(), [0, 2], "forwards");
    // Once the older ones expire too, the whole expired prefix goes.
    let meta = StreamMetadata {
        max_age: Some(Duration::from_secs(86400)),
        truncate_before: Some(2),
        ..Default::default()
    };
    store
        .set_stream_metadata("s-1", ExpectedVersion::Exact(0), meta)
        .unwrap();
    let r = store.scavenge().unwrap();
    assert_eq!(
        (r.events, r.records),
        (3, 1),
        "two events and the superseded metadata"
    );
    assert_eq!(read(Direction::Forwards).unwrap(), [2]);
    assert_eq!(read(Direction::Backwards).unwrap(), [2]);
}

#[test]
fn a_store_opens_after_a_scavenge_removed_the_frame_its_sidecar_last_covered() {
    let fs = FaultFs::new();
    let open = |fs: &FaultFs| {
        Store::builder()
            .file_system(fs.clone())
            .segment_size(64 * 1024)
            .index_flush_events(1_000_000)
            .open("/db/s")
    };
    let store = open(&fs).unwrap();
    for _ in 0..3 {
        store
            .append("d-1", ExpectedVersion::Any, [ev("E")])
            .unwrap();
    }
    store.close().unwrap(); // the sidecar covers up to here: its last frame is d-1@2
    let store = open(&fs).unwrap();
    for _ in 0..3 {
        store
            .append("d-1", ExpectedVersion::Any, [ev("E")])
            .unwrap();
    }
    seal(&store);
    store.delete_stream("d-1", ExpectedVersion::Any).unwrap();
    assert!(store.scavenge().unwrap().gaps >= 1);
    // The process dies (nothing lost from the page cache).
    let crashed = fs.crash(CrashPolicy::KeepAll);
    drop(store);
    let reopened = open(&crashed);
    assert!(reopened.is_ok(), "reopen failed: {:?}", reopened.err());
}

#[test]
fn gaps_merged_by_a_later_scavenge_are_found_again_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = open(&path);
    store
        .append("keep-1", ExpectedVersion::Any, [ev("K")])
        .unwrap();
    store
        .append("a-1", ExpectedVersion::Any, [ev("A")])
        .unwrap();
    store
        .append("b-1", ExpectedVersion::Any, [ev("B"), ev("T2")])
        .unwrap();
    store
        .append("c-1", ExpectedVersion::Any, [ev("C")])
        .unwrap();
    store
        .append("keep-1", ExpectedVersion::Any, [ev("K")])
        .unwrap();
    store.delete_stream("b-1", ExpectedVersion::Any).unwrap();
    seal(&store);
    assert_eq!(store.scavenge().unwrap().gaps, 1);
    store.close().unwrap();
    let store = open(&path);
    // Lands inside the gap (b-1@1): the reader walks segment 0 once.
    assert_eq!(
        store
            .read_event_type("T2", Position::START, 10)
            .unwrap()
            .count(),
        0
    );
    store.delete_stream("a-1", ExpectedVersion::Any).unwrap();
    store.delete_stream("c-1", ExpectedVersion::Any).unwrap();
    assert_eq!(
        store.scavenge().unwrap().gaps,
        1,
        "one gap over a-1, the old gap, c-1"
    );
    let c: annals::Result<Vec<_>> = store
        .read_category("c", Position::START, 10)
        .unwrap()
        .collect();
    assert_eq!(c.unwrap().len(), 0);
}

#[test]
fn an_id_span_removed_up_to_the_seal_is_forgotten_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s"));
    // Fill segment 0 nearly full, then a batch (one id span) that ends the segment.
    let mut ids = Vec::new();
    loop {
        let events: Vec<NewEvent> = (0..3)
            .map(|_| NewEvent::new("E", vec![2u8; 1000]))
            .collect();
        let batch: Vec<_> = events.iter().map(|e| e.id).collect();
        let r = store.append("p-1", ExpectedVersion::Any, events).unwrap();
        if r.first_position.as_u64() >= 4096 + 64 * 1024 {
            break;
        }
        ids = batch;
    }
    // ids: the last batch of p-1 that is in segment 0; the batch after went to segment 1.
    store.delete_stream("p-1", ExpectedVersion::Any).unwrap();
    seal(&store);
    store.scavenge().unwrap();
    // Retrying the append of a removed event: looks the id up.
    let again = NewEvent::new("E", "y").with_id(ids[1]);
    let r = store.append("q-1", ExpectedVersion::Any, [again]);
    assert!(r.is_ok(), "{:?}", r.err());
}

#[test]
fn versions_continue_after_a_rebuild_when_a_restarted_stream_expired_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = open(&path);
    store
        .append("u-1", ExpectedVersion::Any, [ev("E"), ev("E"), ev("E")])
        .unwrap();
    store.delete_stream("u-1", ExpectedVersion::Any).unwrap();
    let r = store
        .append("u-1", ExpectedVersion::NoStream, [ev("E"), ev("E")])
        .unwrap();
    assert_eq!(r.version, Some(4));
    let (v, _) = store.stream_metadata("u-1").unwrap().unwrap();
    store
        .set_stream_metadata(
            "u-1",
            ExpectedVersion::Exact(v),
            StreamMetadata {
                max_count: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
    seal(&store);
    store.scavenge().unwrap();
    store.close().unwrap();
    let store = Store::builder()
        .segment_size(64 * 1024)
        .rebuild_index(true)
        .open(&path)
        .unwrap();
    let r = store
        .append("u-1", ExpectedVersion::Any, [ev("E")])
        .unwrap();
    assert_eq!(r.version, Some(5), "versions must continue after 4");
}

#[test]
fn metadata_that_would_not_read_back_is_refused_and_never_stops_an_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = open(&path);
    let mut v = serde_json::json!(1);
    for _ in 0..200 {
        v = serde_json::json!([v]);
    }
    let refused = store.set_stream_metadata(
        "m-1",
        ExpectedVersion::NoStream,
        StreamMetadata {
            custom: Some(v),
            ..Default::default()
        },
    );
    assert!(
        matches!(refused, Err(annals::Error::InvalidArgument(_))),
        "{refused:?}"
    );
    store.close().unwrap();
    let again = Store::builder().segment_size(64 * 1024).open(&path);
    assert!(again.is_ok(), "{:?}", again.err());
}

#[test]
fn a_huge_truncate_before_and_a_delete_leave_the_stream_appendable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = open(&path);
    store
        .append("w-1", ExpectedVersion::Any, [ev("E")])
        .unwrap();
    store
        .set_stream_metadata(
            "w-1",
            ExpectedVersion::NoStream,
            StreamMetadata {
                truncate_before: Some(u64::MAX),
                ..Default::default()
            },
        )
        .unwrap();
    store.delete_stream("w-1", ExpectedVersion::Any).unwrap();
    let before = store
        .append("w-1", ExpectedVersion::NoStream, [ev("E")])
        .unwrap();
    assert_eq!(before.version, Some(1));
    store.close().unwrap();
    let store = open(&path);
    let after = store.append("w-1", ExpectedVersion::Any, [ev("E")]);
    assert!(after.is_ok(), "after reopen: {:?}", after.err());
}

#[test]
fn metadata_that_keeps_more_waits_for_a_running_scavenge() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s"));
    store
        .append("h-1", ExpectedVersion::Any, [ev("E")])
        .unwrap();
    for _ in 0..10 {
        store
            .append("m-1", ExpectedVersion::Any, [ev("E")])
            .unwrap();
    }
    store
        .set_stream_metadata(
            "m-1",
            ExpectedVersion::NoStream,
            StreamMetadata {
                max_count: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    seal(&store);
    // An event of segment 0 the application still holds.
    let held = store
        .read_stream("h-1", 0, Direction::Forwards, 1)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    std::thread::scope(|s| {
        let scavenge = s.spawn(|| {
            store
                .scavenge_with(annals::ScavengeOptions {
                    dry_run: false,
                    busy_wait: Duration::from_secs(1),
                })
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(500));
        // Acknowledged: all ten are readable again.
        store
            .set_stream_metadata("m-1", ExpectedVersion::Exact(0), StreamMetadata::default())
            .unwrap();
        assert_eq!(
            store
                .read_stream("m-1", 0, Direction::Forwards, 100)
                .unwrap()
                .count(),
            10
        );
        drop(held);
        let report = scavenge.join().unwrap();
        assert_eq!(report.segments_busy, 1, "{report:?}");
    });
    assert_eq!(
        store
            .read_stream("m-1", 0, Direction::Forwards, 100)
            .unwrap()
            .count(),
        10,
        "events readable before the scavenge wrote its gaps are gone"
    );
}

#[test]
fn a_tombstoned_stream_can_be_erased() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s"));
    store
        .append(
            "pii-1",
            ExpectedVersion::Any,
            [NewEvent::new("Named", "Ada Lovelace")],
        )
        .unwrap();
    store
        .tombstone_stream("pii-1", ExpectedVersion::Any)
        .unwrap();
    let r = store.erase_stream("pii-1").unwrap();
    assert_eq!(r.events, 1);
}
