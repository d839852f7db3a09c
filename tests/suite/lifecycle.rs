//! Deleting, retention, scavenging and erasure: every rule of `src/store/lifecycle.rs`,
//! `scavenge.rs` and `erase.rs`, on real files where disk use is measured.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use annals::outbox::{Outbox, OutboxMessage, OutboxOptions};
use annals::subscriptions::{CatchUpStart, Filter};
use annals::{
    Direction, Error, ExpectedVersion, NewEvent, Position, RecordedEvent, ScavengeOptions,
    ScavengeReport, Store, StreamMetadata,
};

fn stream(store: &Store, s: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(s, 0, Direction::Forwards, usize::MAX)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn versions(store: &Store, s: &str) -> Vec<u64> {
    stream(store, s).iter().map(|e| e.version()).collect()
}

fn all(store: &Store) -> Vec<RecordedEvent> {
    store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn streams_in(events: &[RecordedEvent]) -> HashSet<String> {
    events.iter().map(|e| e.stream().to_owned()).collect()
}

fn log_file(path: &Path) -> PathBuf {
    path.with_extension("annals")
}

/// Bytes the file takes on disk (what `du` counts).
fn disk_use(path: &Path) -> u64 {
    std::fs::metadata(log_file(path)).unwrap().blocks() * 512
}

fn append_n(store: &Store, s: &str, n: usize, size: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let events: Vec<_> = chunk
            .iter()
            .map(|i| {
                let json = format!(r#"{{"s":"{s}","i":{i},"pad":"{}"}}"#, "x".repeat(size));
                NewEvent::new("Tick", json).published(true)
            })
            .collect();
        store.append(s, ExpectedVersion::Any, events).unwrap();
    }
}

#[test]
fn a_soft_deleted_stream_reads_empty_does_not_exist_and_starts_again_after_its_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s")).unwrap();
    append_n(&store, "order-1", 3, 10);
    append_n(&store, "order-2", 2, 10);
    // The expected version is checked, as for an append.
    assert!(matches!(
        store.delete_stream("order-1", ExpectedVersion::Exact(1)),
        Err(Error::WrongExpectedVersion {
            actual: Some(2),
            ..
        })
    ));
    assert!(matches!(
        store.delete_stream("order-1", ExpectedVersion::NoStream),
        Err(Error::WrongExpectedVersion { .. })
    ));
    store
        .delete_stream("order-1", ExpectedVersion::Exact(2))
        .unwrap();
    assert_eq!(versions(&store, "order-1"), Vec::<u64>::new());
    assert_eq!(store.stream_version("order-1").unwrap(), None);
    let everything = all(&store);
    assert_eq!(
        streams_in(&everything),
        HashSet::from(["order-2".to_owned()])
    );
    assert_eq!(
        store
            .read_category("order", Position::START, usize::MAX)
            .unwrap()
            .count(),
        2
    );
    assert_eq!(
        store
            .read_event_type("Tick", Position::START, usize::MAX)
            .unwrap()
            .count(),
        2
    );
    assert_eq!(
        store
            .read_category_backwards("order", Position::END, usize::MAX)
            .unwrap()
            .count(),
        2
    );
    assert_eq!(
        store
            .read_stream("order-1", u64::MAX, Direction::Backwards, 10)
            .unwrap()
            .count(),
        0
    );
    // It does not exist for expected versions.
    assert!(matches!(
        store.append(
            "order-1",
            ExpectedVersion::StreamExists,
            [NewEvent::new("A", "")]
        ),
        Err(Error::WrongExpectedVersion { actual: None, .. })
    ));
    assert!(matches!(
        store.append(
            "order-1",
            ExpectedVersion::Exact(2),
            [NewEvent::new("A", "")]
        ),
        Err(Error::WrongExpectedVersion { actual: None, .. })
    ));
    // Appending starts it again; versions continue after the deleted ones (KurrentDB's rule).
    let r = store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            [NewEvent::new("Again", "")],
        )
        .unwrap();
    assert_eq!(r.version, Some(3));
    assert_eq!(versions(&store, "order-1"), [3]);
    assert_eq!(store.stream_version("order-1").unwrap(), Some(3));
    store
        .append(
            "order-1",
            ExpectedVersion::Exact(3),
            [NewEvent::new("More", "")],
        )
        .unwrap();
    // Reading from an old version starts at the first readable one; backwards stops there.
    assert_eq!(
        store
            .read_stream("order-1", u64::MAX, Direction::Backwards, 10)
            .unwrap()
            .map(|e| e.unwrap().version())
            .collect::<Vec<_>>(),
        [4, 3]
    );
    // After a reopen (the metadata is in the log), the same.
    drop(store);
    let store = Store::open(dir.path().join("s")).unwrap();
    assert_eq!(versions(&store, "order-1"), [3, 4]);
    assert_eq!(store.stream_version("order-1").unwrap(), Some(4));
}

#[test]
fn a_tombstoned_stream_refuses_every_append_and_delete_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Store::open(&path).unwrap();
    append_n(&store, "user-1", 2, 10);
    store
        .tombstone_stream("user-1", ExpectedVersion::StreamExists)
        .unwrap();
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
    ] {
        assert!(matches!(
            store.append("user-1", expected, [NewEvent::new("A", "")]),
            Err(Error::StreamDeleted { .. })
        ));
    }
    assert!(matches!(
        store.delete_stream("user-1", ExpectedVersion::Any),
        Err(Error::StreamDeleted { .. })
    ));
    assert!(matches!(
        store
            .transaction()
            .append("other", ExpectedVersion::Any, [NewEvent::new("A", "")])
            .append("user-1", ExpectedVersion::Any, [NewEvent::new("A", "")])
            .commit(),
        Err(Error::StreamDeleted { .. })
    ));
    assert_eq!(
        store.stream_version("other").unwrap(),
        None,
        "all or nothing"
    );
    assert!(stream(&store, "user-1").is_empty());
    let (_, meta) = store.stream_metadata("user-1").unwrap().unwrap();
    assert!(meta.tombstoned);
    assert_eq!(meta.deleted_before, Some(2));
    drop(store);
    let store = Store::open(&path).unwrap();
    assert!(matches!(
        store.append("user-1", ExpectedVersion::Any, [NewEvent::new("A", "")]),
        Err(Error::StreamDeleted { .. })
    ));
}

#[test]
fn deleted_events_leave_catch_up_subscriptions_and_the_outbox_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s")).unwrap();
    append_n(&store, "keep-1", 3, 10);
    append_n(&store, "gone-1", 3, 10);
    let mut sub = store
        .catch_up("p", CatchUpStart::Beginning, Filter::All)
        .unwrap();
    assert_eq!(sub.poll(2).unwrap().len(), 2);
    sub.checkpoint().unwrap();
    store.delete_stream("gone-1", ExpectedVersion::Any).unwrap();
    let rest = sub.poll(usize::MAX).unwrap();
    assert_eq!(streams_in(&rest), HashSet::from(["keep-1".to_owned()]));
    assert_eq!(rest.len(), 1);

    let mut sent = Vec::new();
    let mut outbox = Outbox::new(
        &store,
        "bus",
        |m: &OutboxMessage| {
            sent.push(m.event.stream().to_owned());
            Ok(())
        },
        OutboxOptions::default(),
    )
    .unwrap();
    let report = outbox.run_once().unwrap();
    let parked = outbox.parked().unwrap();
    drop(outbox);
    assert_eq!(
        sent,
        ["keep-1", "keep-1", "keep-1"],
        "{report:?} {parked:?}"
    );
}

#[test]
fn a_retry_is_recognised_while_the_deleted_event_is_on_disk_and_forgotten_after_a_scavenge() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder()
        .segment_size(64 * 1024)
        .open(dir.path().join("s"))
        .unwrap();
    let e = NewEvent::new("Placed", "1");
    store
        .append("cart-1", ExpectedVersion::NoStream, [e.clone()])
        .unwrap();
    store.delete_stream("cart-1", ExpectedVersion::Any).unwrap();
    // A retry of the append that stored it (and was deleted since) writes nothing ...
    let retry = store
        .append("cart-1", ExpectedVersion::NoStream, [e.clone()])
        .unwrap();
    assert_eq!(retry.version, Some(0));
    assert!(stream(&store, "cart-1").is_empty());
    // ... until a scavenge removed its frame: then the id is new again.
    append_n(&store, "fill", 300, 400);
    assert_eq!(
        store.scavenge().unwrap().events - 1,
        0,
        "the deleted event (no records)"
    );
    let again = store
        .append("cart-1", ExpectedVersion::NoStream, [e.clone()])
        .unwrap();
    assert_eq!(again.version, Some(1));
    assert_eq!(
        stream(&store, "cart-1")
            .iter()
            .map(|r| r.id())
            .collect::<Vec<_>>(),
        [e.id]
    );
}

#[test]
fn retention_by_count_truncation_and_age_is_honoured_by_every_read_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s")).unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..6u64 {
        let at = if i < 3 { hour_ago } else { SystemTime::now() };
        store
            .append(
                "sensor-1",
                ExpectedVersion::Any,
                [NewEvent::new("Read", i.to_string()).with_timestamp(at)],
            )
            .unwrap();
    }
    append_n(&store, "sensor-2", 5, 1);
    // The metadata has its own expected version.
    let v = store
        .set_stream_metadata(
            "sensor-1",
            ExpectedVersion::NoStream,
            StreamMetadata {
                max_age: Some(Duration::from_secs(60)),
                custom: Some(serde_json::json!({"unit": "celsius"})),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(v, 0);
    assert!(matches!(
        store.set_stream_metadata(
            "sensor-1",
            ExpectedVersion::NoStream,
            StreamMetadata::default()
        ),
        Err(Error::WrongExpectedVersion { .. })
    ));
    assert_eq!(versions(&store, "sensor-1"), [3, 4, 5]);
    let (version, meta) = store.stream_metadata("sensor-1").unwrap().unwrap();
    assert_eq!(version, 0);
    assert_eq!(meta.custom, Some(serde_json::json!({"unit": "celsius"})));
    assert_eq!(meta.max_age, Some(Duration::from_secs(60)));
    // Truncation and count together: the stricter wins; the stream still exists.
    store
        .set_stream_metadata(
            "sensor-1",
            ExpectedVersion::Exact(0),
            StreamMetadata {
                truncate_before: Some(4),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(versions(&store, "sensor-1"), [4, 5]);
    assert_eq!(store.stream_version("sensor-1").unwrap(), Some(5));
    store
        .set_stream_metadata(
            "sensor-2",
            ExpectedVersion::NoStream,
            StreamMetadata {
                max_count: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(versions(&store, "sensor-2"), [3, 4]);
    let from_all: Vec<(String, u64)> = all(&store)
        .iter()
        .map(|e| (e.stream().to_owned(), e.version()))
        .collect();
    assert_eq!(
        from_all,
        [
            ("sensor-1".into(), 4),
            ("sensor-1".into(), 5),
            ("sensor-2".into(), 3),
            ("sensor-2".into(), 4)
        ]
    );
    let by_type: Vec<u64> = store
        .read_event_type("Read", Position::START, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap().version())
        .collect();
    assert_eq!(by_type, [4, 5]);
    // A new event pushes the oldest kept one out of a max-count stream at once.
    append_n(&store, "sensor-2", 1, 1);
    assert_eq!(versions(&store, "sensor-2"), [4, 5]);
}

#[test]
fn scavenge_gives_back_what_du_measures_and_never_moves_a_surviving_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Store::builder().segment_size(1 << 20).open(&path).unwrap();
    for k in 0..20 {
        append_n(&store, &format!("doomed-{k}"), 200, 400);
        append_n(&store, &format!("kept-{k}"), 20, 400);
    }
    // Checkpoints superseded many times over.
    let mut sub = store
        .catch_up(
            "proj",
            CatchUpStart::Beginning,
            Filter::StreamPrefix("kept-".into()),
        )
        .unwrap();
    for _ in 0..50 {
        sub.poll(3).unwrap();
        sub.checkpoint().unwrap();
    }
    let resume_at = sub.position();
    drop(sub);
    for k in 0..20 {
        store
            .delete_stream(&format!("doomed-{k}"), ExpectedVersion::Exact(199))
            .unwrap();
    }
    // Move to a new segment so that the doomed events are all in sealed ones.
    append_n(&store, "filler", 3000, 400);
    store.flush_index().unwrap();
    // Owned copies: events still held from the file's map would keep their segments busy.
    let before: Vec<(Position, uuid::Uuid, Vec<u8>, String)> = all(&store)
        .iter()
        .map(|e| {
            (
                e.position(),
                e.id(),
                e.payload().to_vec(),
                e.stream().to_owned(),
            )
        })
        .collect();
    let du_before = disk_use(&path);
    let dry = store.scavenge_dry_run().unwrap();
    assert!(dry.dry_run);
    assert_eq!(disk_use(&path), du_before, "a dry run writes nothing");
    // An event still held from before keeps its segment out of the scavenge.
    let held = store
        .read_stream("kept-0", 0, Direction::Forwards, 1)
        .unwrap()
        .next();
    let busy = store
        .scavenge_with(ScavengeOptions {
            dry_run: false,
            busy_wait: Duration::from_millis(50),
        })
        .unwrap();
    assert_eq!(busy.segments_busy, 1, "{busy:?}");
    assert!(busy.events < dry.events);
    drop(held);
    let report = store.scavenge().unwrap();
    assert_eq!(report.segments_busy, 0);
    assert_eq!(
        (
            report.events + busy.events,
            report.bytes_freed + busy.bytes_freed
        ),
        (dry.events, dry.bytes_freed)
    );
    let report = ScavengeReport {
        events: report.events + busy.events,
        records: report.records + busy.records,
        bytes_freed: report.bytes_freed + busy.bytes_freed,
        ..report
    };
    assert_eq!(report.events - report.records, 20 * 200);
    assert!(report.records >= 49, "older checkpoints: {report:?}");
    let du_after = disk_use(&path);
    assert!(
        du_before - du_after >= report.bytes_freed * 9 / 10,
        "du dropped by {} of the {} reported freed",
        du_before - du_after,
        report.bytes_freed
    );
    assert!(report.bytes_freed > 20 * 200 * 400 * 8 / 10, "{report:?}");
    // Everything readable is where it was, byte for byte.
    let after: Vec<RecordedEvent> = all(&store);
    assert_eq!(before.len(), after.len());
    for (a, b) in before.iter().zip(&after) {
        assert_eq!((a.0, a.1, &a.2[..]), (b.position(), b.id(), b.payload()));
    }
    // A subscription resumes from its checkpoint taken before the scavenge.
    let mut sub = store
        .catch_up(
            "proj",
            CatchUpStart::Beginning,
            Filter::StreamPrefix("kept-".into()),
        )
        .unwrap();
    assert_eq!(sub.position(), resume_at);
    let rest = sub.poll(usize::MAX).unwrap();
    assert_eq!(rest.len(), 20 * 20 - 150);
    // Reads from positions inside removed frames land on the next surviving event.
    let doomed_at = before.iter().find(|e| e.3 == "kept-3").unwrap().0;
    let first = store
        .read_all(
            Position::new(doomed_at.as_u64() - 400 * 30),
            Direction::Forwards,
            1,
        )
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert!(first.position() <= doomed_at);
    // Category and type reads still work over the gaps, both ways.
    assert_eq!(
        store
            .read_category("kept", Position::START, usize::MAX)
            .unwrap()
            .count(),
        400
    );
    assert_eq!(
        store
            .read_category_backwards("kept", Position::END, usize::MAX)
            .unwrap()
            .count(),
        400
    );
    assert_eq!(
        store
            .read_all(Position::END, Direction::Backwards, usize::MAX)
            .unwrap()
            .count(),
        before.len()
    );
    assert_eq!(store.scavenge_dry_run().unwrap().events, 0);
    // Versions continue, before and after a reopen, and after rebuilding the index from the
    // log alone.
    store
        .append(
            "doomed-0",
            ExpectedVersion::NoStream,
            [NewEvent::new("Back", "")],
        )
        .unwrap();
    store.close().unwrap();
    std::fs::remove_file(dir.path().join("s.annals.index")).unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(versions(&store, "doomed-0"), [200]);
    let r = store
        .append(
            "doomed-1",
            ExpectedVersion::NoStream,
            [NewEvent::new("Back", "")],
        )
        .unwrap();
    assert_eq!(
        r.version,
        Some(200),
        "the deletion's metadata keeps the version"
    );
    assert_eq!(all(&store).len(), before.len() + 2);
    let report = store.verify(&mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn appends_and_reads_go_on_during_a_scavenge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Arc::new(Store::builder().segment_size(1 << 20).open(&path).unwrap());
    for k in 0..30 {
        append_n(&store, &format!("old-{k}"), 300, 300);
    }
    for k in 0..30 {
        store
            .delete_stream(&format!("old-{k}"), ExpectedVersion::Any)
            .unwrap();
    }
    append_n(&store, "live", 10, 10);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 100 {
                store
                    .append(
                        "live",
                        ExpectedVersion::Any,
                        [NewEvent::new("E", n.to_string())],
                    )
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n = store
                    .read_all(Position::START, Direction::Forwards, usize::MAX)
                    .unwrap()
                    .map(|e| {
                        let e = e.unwrap();
                        assert_eq!(e.stream(), "live");
                        e
                    })
                    .count();
                assert!(n >= 10);
                reads += 1;
            }
            reads
        })
    };
    let report = store.scavenge().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = writer.join().unwrap();
    let reads = reader.join().unwrap();
    assert!(report.events > 0 && report.bytes_freed > 0, "{report:?}");
    assert!(reads > 0);
    assert_eq!(versions(&store, "live").len() as u64, 10 + appended);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(versions(&store, "live").len() as u64, 10 + appended);
}

#[test]
fn erasure_leaves_no_byte_of_the_payload_in_the_file_or_the_sidecar_and_is_recorded() {
    const MARKER: &[u8] = b"MARKER-ada-lovelace-1815";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Store::builder()
        .segment_size(64 * 1024)
        .open(&path)
        .unwrap();
    let contains = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        bytes.windows(MARKER.len()).any(|w| w == MARKER)
    };
    for i in 0..40 {
        let mut payload = MARKER.to_vec();
        payload.extend(vec![b'.'; i * 100]);
        store
            .append(
                "person-1",
                ExpectedVersion::Any,
                [NewEvent::new("Named", payload).with_metadata(MARKER.to_vec())],
            )
            .unwrap();
        append_n(&store, "other", 1, 50);
    }
    store.flush_index().unwrap();
    assert!(contains(&log_file(&path)));
    let report = store.erase_stream("person-1").unwrap();
    assert_eq!(report.events, 40);
    assert_eq!(report.before_version, 40);
    assert!(stream(&store, "person-1").is_empty());
    assert_eq!(all(&store).len(), 40, "the others are untouched");
    store.flush_index().unwrap();
    assert!(
        !contains(&log_file(&path)),
        "the marker is gone from the log"
    );
    assert!(!contains(&dir.path().join("s.annals.index")));
    // The erasure is recorded: which stream, when, how many.
    let record = store
        .read_stream("$erased-person-1", 0, Direction::Forwards, 10)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let erased: serde_json::Value = serde_json::from_slice(record.payload()).unwrap();
    assert_eq!(erased["events"], 40);
    assert_eq!(erased["stream"], "person-1");
    assert!(record.timestamp() <= SystemTime::now());
    // The stream starts again, versions continuing.
    let r = store
        .append(
            "person-1",
            ExpectedVersion::NoStream,
            [NewEvent::new("Named", "x")],
        )
        .unwrap();
    assert_eq!(r.version, Some(40));
    store.close().unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(versions(&store, "person-1"), [40]);
    assert!(store.verify(&mut |_, _| {}).unwrap().is_clean());
}

#[test]
fn the_in_memory_event_store_deletes_like_the_store() {
    use annals::domain::{EventStore, InMemoryEventStore, Part};
    let mem = InMemoryEventStore::default();
    mem.append(vec![Part {
        stream: "a-1".into(),
        expected: ExpectedVersion::NoStream,
        events: vec![NewEvent::new("E", ""), NewEvent::new("E", "")],
    }])
    .unwrap();
    assert!(mem.delete_stream("a-1", ExpectedVersion::Exact(0)).is_err());
    mem.delete_stream("a-1", ExpectedVersion::Exact(1)).unwrap();
    assert!(mem.last_event("a-1").unwrap().is_none());
    let r = mem
        .append(vec![Part {
            stream: "a-1".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent::new("E", "")],
        }])
        .unwrap();
    assert_eq!(r[0].version, Some(2));
    let mut seen = Vec::new();
    mem.read_stream("a-1", 0, &mut |e| {
        seen.push(e.version());
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, [2]);
}
