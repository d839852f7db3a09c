//! Regression tests for the "Trust" issue: each names the scenario that broke the promise
//! "nothing acknowledged is lost, no damage is silent" (on commit 99ffab1) and checks it holds.

use std::io::ErrorKind;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::{Commit, verify};
use annals::log::format::{EventRecord, FrameLink, PayloadEncoding, encode_event};
use annals::storage::{
    CrashPolicy, FaultFs, FaultMode, FileSystem, MemoryFs, OpenMode, StorageFile,
};
use annals::subscriptions::CatchUpStart;
use annals::subscriptions::Filter;
use annals::{Direction, Error, ExpectedVersion, NewEvent, Position, Store};

const SEGMENT: u64 = 64 * 1024;
const FIRST: u64 = 4096;

fn ev(t: &str, payload: impl Into<bytes::Bytes>) -> NewEvent {
    NewEvent::new(t.to_owned(), payload)
}

fn open_on(fs: &dyn Fn() -> Arc<dyn FileSystem>, path: &str) -> annals::Result<Store> {
    Store::builder()
        .shared_file_system(fs())
        .segment_size(SEGMENT)
        .index_flush_events(1_000_000)
        .open(path)
}

fn mem_open(fs: &MemoryFs) -> annals::Result<Store> {
    let fs = fs.clone();
    open_on(&move || Arc::new(fs.clone()), "/t/s")
}

fn fault_open(fs: &FaultFs) -> annals::Result<Store> {
    let fs = fs.clone();
    open_on(&move || Arc::new(fs.clone()), "/t/s")
}

fn file(fs: &dyn FileSystem, path: &str) -> Arc<dyn StorageFile> {
    fs.open(Path::new(path), OpenMode::Existing).unwrap()
}

fn read_bytes(f: &Arc<dyn StorageFile>, at: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    f.read_exact_at(&mut b, at).unwrap();
    b
}

fn flip(fs: &dyn FileSystem, path: &str, at: u64) {
    let f = file(fs, path);
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5A], at).unwrap();
}

fn log_events(store: &Store) -> Vec<annals::RecordedEvent> {
    store
        .read_log(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Damage inside the last synced group

#[test]
fn damage_to_a_seal_never_drops_the_commit_that_opened_the_next_segment() {
    let fs = MemoryFs::new();
    let store = mem_open(&fs).unwrap();
    let opened = loop {
        let r = store
            .append("s", ExpectedVersion::Any, [ev("E", vec![7; 1000])])
            .unwrap();
        if r.first_position.as_u64() >= FIRST + SEGMENT {
            break r;
        }
    };
    let events = log_events(&store);
    drop(store);
    let seal = events
        .iter()
        .filter(|e| e.position().as_u64() < FIRST + SEGMENT)
        .last()
        .unwrap()
        .next_position()
        .as_u64();
    // Without the sidecar, recovery reads the whole log; one damaged byte in the seal ...
    fs.remove_file(Path::new("/t/s.annals.index")).unwrap();
    flip(&fs, "/t/s.annals", seal + 36);
    // ... is corruption of acknowledged data: the commit in the next segment proves it.
    match mem_open(&fs) {
        Err(Error::Corrupt { position, reason }) => {
            assert_eq!(position, seal, "{reason}");
            assert!(reason.contains("acknowledged"), "{reason}");
        }
        other => panic!("expected Corrupt at the seal {seal}, got {other:?}"),
    }
    // Only an explicit acceptance of the loss opens it, and it says what it dropped.
    let store = Store::builder()
        .file_system(fs.clone())
        .accept_loss(true)
        .open("/t/s")
        .unwrap();
    let t = store.recovery_report().truncated.clone().expect("reported");
    assert_eq!(t.at, seal);
    assert!(t.intact_frames >= 1, "{t:?}");
    let saved = t.saved_to.expect("the dropped bytes are kept");
    let kept = file(&fs, saved.to_str().unwrap());
    assert!(kept.len().unwrap() >= opened.last_position.as_u64() - seal);
    assert!(
        log_events(&store)
            .iter()
            .all(|e| e.position().as_u64() < seal)
    );
}

#[test]
fn damage_to_a_commit_that_a_later_commit_proves_durable_is_corruption() {
    let fs = MemoryFs::new();
    let store = mem_open(&fs).unwrap();
    let a = store
        .append("s", ExpectedVersion::Any, [ev("E", "a")])
        .unwrap();
    let b = store
        .append("s", ExpectedVersion::Any, [ev("E", "bbbbbbbb")])
        .unwrap();
    store
        .append("s", ExpectedVersion::Any, [ev("E", "c")])
        .unwrap();
    drop(store);
    fs.remove_file(Path::new("/t/s.annals.index")).unwrap();
    flip(&fs, "/t/s.annals", b.first_position.as_u64() + 90);
    match mem_open(&fs) {
        Err(Error::Corrupt { position, .. }) => assert_eq!(position, b.first_position.as_u64()),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(a.first_position < b.first_position);
}

#[test]
fn a_dropped_tail_is_saved_beside_the_store_and_reported() {
    let fs = MemoryFs::new();
    let store = mem_open(&fs).unwrap();
    store
        .append("s", ExpectedVersion::Any, [ev("E", "a")])
        .unwrap();
    let last = store
        .append(
            "s",
            ExpectedVersion::Any,
            [ev("E", "b1"), ev("E", "b2"), ev("E", "b3")],
        )
        .unwrap();
    let end = store.end_position().as_u64();
    drop(store);
    fs.remove_file(Path::new("/t/s.annals.index")).unwrap();
    let at = last.first_position.as_u64();
    flip(&fs, "/t/s.annals", at + 40);
    let damaged = read_bytes(&file(&fs, "/t/s.annals"), at, (end - at) as usize);
    // The last commit is damaged and nothing after it proves it was acknowledged: recovery
    // cannot tell it from a torn write (the documented window) and drops it, but keeps it.
    let store = mem_open(&fs).unwrap();
    let t = store.recovery_report().truncated.clone().expect("reported");
    assert_eq!((t.at, t.dropped_bytes), (at, end - at));
    assert_eq!(t.intact_frames, 2, "the two intact frames after the damage");
    let saved = t.saved_to.clone().expect("saved");
    assert!(
        saved
            .to_string_lossy()
            .ends_with(&format!("s.annals.dropped-{at}"))
    );
    let kept = file(&fs, saved.to_str().unwrap());
    assert_eq!(read_bytes(&kept, 0, (end - at) as usize), damaged);
    assert_eq!(store.stream_version("s").unwrap(), Some(0));
    // A later open finds nothing more to drop and keeps the saved copy.
    drop(store);
    let store = mem_open(&fs).unwrap();
    assert!(store.recovery_report().truncated.is_none());
    assert!(fs.exists(&saved).unwrap());
}

// ---------------------------------------------------------------------------------------------
// 2. A failed fsync is never accepted by a later open

fn failed_sync_then_power_cut(restart: bool) {
    let fs = FaultFs::new();
    let store = fault_open(&fs).unwrap();
    let a = ev("E", "a");
    let a_id = a.id;
    store.append("s", ExpectedVersion::Any, [a]).unwrap();
    // The append's write succeeds, its sync fails (Linux: the pages are marked clean).
    fs.fail_at(fs.op_count() + 1, FaultMode::Once, ErrorKind::Other);
    let b = ev("E", "b");
    let b_id = b.id;
    assert!(matches!(
        store.append("s", ExpectedVersion::Any, [b]),
        Err(Error::Poisoned { .. })
    ));
    drop(store);
    // The bytes of B are still readable, in this process or (page cache) a new one.
    let fs = if restart { fs.restart() } else { fs };
    let store = fault_open(&fs).unwrap();
    let c = ev("E", "c");
    let c_id = c.id;
    store.append("s", ExpectedVersion::Any, [c]).unwrap();
    drop(store);
    // Power cut: whatever the next open finds, everything acknowledged is there.
    for policy in [
        CrashPolicy::DropUnsynced,
        CrashPolicy::KeepAll,
        CrashPolicy::Sectors { seed: 1 },
    ] {
        let store = fault_open(&fs.crash(policy))
            .unwrap_or_else(|e| panic!("{policy:?}: reopen after the power cut failed: {e}"));
        let acked = [
            Commit {
                parts: vec![("s".into(), vec![a_id])],
            },
            Commit {
                parts: vec![("s".into(), vec![c_id])],
            },
        ];
        let maybe = [Commit {
            parts: vec![("s".into(), vec![b_id])],
        }];
        verify(&store, &acked, &maybe).unwrap_or_else(|e| panic!("{policy:?}: {e}"));
    }
}

#[test]
fn a_failed_fsync_is_never_acknowledged_by_a_later_open_in_the_same_process() {
    failed_sync_then_power_cut(false);
}

#[test]
fn a_failed_fsync_is_never_acknowledged_by_a_later_open_in_another_process() {
    failed_sync_then_power_cut(true);
}

// ---------------------------------------------------------------------------------------------
// 3. A replaying open never lets its sidecar cover log bytes that are not durable

#[test]
fn a_replaying_open_syncs_the_log_before_its_sidecar_covers_it() {
    let fs = FaultFs::new();
    let store = Store::builder()
        .file_system(fs.clone())
        .segment_size(SEGMENT)
        .durability(annals::Durability::NoSync)
        .index_flush_events(1_000_000)
        .open("/t/s")
        .unwrap();
    for i in 0..40u8 {
        store
            .append("s", ExpectedVersion::Any, [ev("E", vec![i; 300])])
            .unwrap();
    }
    store.abandon(); // the process dies: nothing synced, everything in the page cache
    let died = fs.restart();
    let open_small = |fs: &FaultFs| {
        Store::builder()
            .file_system(fs.clone())
            .segment_size(SEGMENT)
            .index_flush_events(5)
            .open("/t/s")
    };
    let replayed = open_small(&died).unwrap();
    assert_eq!(replayed.stream_version("s").unwrap(), Some(39));
    assert!(replayed.recovery_report().rewritten > 0);
    drop(replayed);
    let after = died.crash(CrashPolicy::DropUnsynced);
    let store = open_small(&after).expect("the sidecar covers only durable log bytes");
    assert_eq!(store.stream_version("s").unwrap(), Some(39));
}

// ---------------------------------------------------------------------------------------------
// 5. Payload bytes never pass for a frame

/// A payload holding forged frames, one every `stride` bytes, each claiming to be at the
/// position it would have if the payload started at `payload_at`, and to be durable up to
/// itself, under `key` (0: the plain positions of format version 1).
fn forged_payload(payload_at: u64, len: usize, key: u64, stride: usize) -> Vec<u8> {
    let mut payload = vec![0u8; len];
    let mut offset = (8 - (payload_at % 8) as usize) % 8;
    while offset + 120 < len {
        let position = payload_at + offset as u64;
        let record = EventRecord {
            stream: "forged",
            version: 0,
            timestamp: 1,
            id: [0xEE; 16],
            event_type: "Forged",
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
            publish: false,
            encoding: PayloadEncoding::Raw,
            metadata: b"",
            payload: b"gotcha",
        };
        let mut frame = Vec::new();
        encode_event(
            &mut frame,
            FrameLink {
                position,
                durable: position,
                prev: 8,
                commit_end: true,
            },
            key,
            &record,
        );
        payload[offset..offset + frame.len()].copy_from_slice(&frame);
        offset += stride.max(frame.len());
    }
    payload
}

/// Where the payload of an event of stream `stream` and type `t`, without metadata or ids,
/// starts when its frame is at `at`.
fn payload_at(at: u64, stream: &str, t: &str) -> u64 {
    at + 32 + 48 + stream.len() as u64 + t.len() as u64
}

#[test]
fn a_payload_imitating_frames_cannot_make_a_torn_store_unopenable() {
    for seed in 0..40u64 {
        let fs = FaultFs::new();
        let store = fault_open(&fs).unwrap();
        let a = ev("E", "a");
        let a_id = a.id;
        store.append("s", ExpectedVersion::Any, [a]).unwrap();
        let at = store.end_position().as_u64();
        let payload = forged_payload(payload_at(at, "s", "E"), 6000, 0, 128);
        let b = ev("E", payload);
        let b_id = b.id;
        // B is written but never synced: a crash tears it in any way.
        fs.fail_at(fs.op_count() + 1, FaultMode::Always, ErrorKind::Other);
        assert!(store.append("s", ExpectedVersion::Any, [b]).is_err());
        drop(store);
        for policy in [
            CrashPolicy::Sectors { seed },
            CrashPolicy::TearAt {
                ops: 0,
                bytes: (seed as usize * 997) % 6100,
            },
            CrashPolicy::Random { seed },
        ] {
            let store = fault_open(&fs.crash(policy))
                .unwrap_or_else(|e| panic!("seed {seed} {policy:?}: refused to open: {e}"));
            verify(
                &store,
                &[Commit {
                    parts: vec![("s".into(), vec![a_id])],
                }],
                &[Commit {
                    parts: vec![("s".into(), vec![b_id])],
                }],
            )
            .unwrap();
        }
    }
}

#[test]
fn reads_from_a_position_inside_a_payload_never_return_a_forged_event() {
    let fs = MemoryFs::new();
    let store = mem_open(&fs).unwrap();
    store
        .append("s", ExpectedVersion::Any, [ev("E", "a")])
        .unwrap();
    // The strongest forger: one who read the store's frame key from the file.
    let header = read_bytes(&file(&fs, "/t/s.annals"), 0, 64);
    let key = u64::from_le_bytes(header[48..56].try_into().unwrap());
    let at = store.end_position().as_u64();
    let payload = forged_payload(payload_at(at, "s", "E"), 2000, key, 8);
    let b = store
        .append("s", ExpectedVersion::Any, [ev("E", payload)])
        .unwrap();
    store
        .append("t", ExpectedVersion::Any, [ev("After", "z")])
        .unwrap();
    let inside: Vec<u64> = (b.first_position.as_u64() + 80..b.first_position.as_u64() + 1900)
        .step_by(8)
        .collect();
    for p in inside {
        let p = Position::new(p);
        for events in [
            store.read_all(p, Direction::Forwards, 1).unwrap(),
            store.read_log(p, Direction::Forwards, 1).unwrap(),
            store.read_all(p, Direction::Backwards, 1).unwrap(),
        ] {
            for e in events {
                let e = e.unwrap();
                assert_ne!(e.stream(), "forged", "read from {p}");
            }
        }
        let mut sub = store
            .catch_up("c", CatchUpStart::At(p), Filter::All)
            .unwrap();
        let got = sub.poll(10).unwrap();
        assert!(
            got.iter().all(|e| e.stream() != "forged"),
            "catch-up from {p}"
        );
        assert_eq!(got.len(), 1, "catch-up from inside B starts after it");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Hostile versions, and a panic in the commit leader

#[test]
fn expected_version_u64_max_is_refused_never_overflowed() {
    let fs = MemoryFs::new();
    let store = mem_open(&fs).unwrap();
    assert!(matches!(
        store.append("s", ExpectedVersion::Exact(u64::MAX), [ev("E", "x")]),
        Err(Error::WrongExpectedVersion { .. })
    ));
    let events = vec![ev("E", "1"), ev("E", "2")];
    store
        .append("s", ExpectedVersion::NoStream, events.clone())
        .unwrap();
    // A retry of stored events with a hostile expected version is not "already appended".
    assert!(matches!(
        store.append("s", ExpectedVersion::Exact(u64::MAX), events),
        Err(Error::DuplicateEventId { .. })
    ));
    // The leader is alive.
    let r = store
        .append("s", ExpectedVersion::Exact(1), [ev("E", "3")])
        .unwrap();
    assert_eq!(r.version, Some(2));
}

/// A file system whose durable writes panic while `armed` is set.
#[derive(Debug, Clone)]
struct PanickyFs {
    inner: MemoryFs,
    armed: Arc<AtomicBool>,
}

#[derive(Debug)]
struct PanickyFile {
    inner: Arc<dyn StorageFile>,
    armed: Arc<AtomicBool>,
}

impl FileSystem for PanickyFs {
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Arc<dyn StorageFile>> {
        let inner = self.inner.open(path, mode)?;
        Ok(Arc::new(PanickyFile {
            inner,
            armed: self.armed.clone(),
        }))
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        self.inner.exists(path)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename_no_replace(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename_no_replace(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

impl StorageFile for PanickyFile {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn write_all_at_durable(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        assert!(
            !self.armed.load(Ordering::SeqCst),
            "the disk driver panicked"
        );
        self.inner.write_all_at_durable(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.allocate(offset, len)
    }
    fn try_lock(&self) -> std::io::Result<bool> {
        self.inner.try_lock()
    }
    fn try_lock_shared(&self) -> std::io::Result<bool> {
        self.inner.try_lock_shared()
    }
    fn unlock(&self) -> std::io::Result<()> {
        self.inner.unlock()
    }
    fn map(&self, offset: u64, len: usize) -> std::io::Result<Option<memmap2::MmapRaw>> {
        self.inner.map(offset, len)
    }
}

#[test]
fn a_panic_inside_the_commit_leader_fails_its_group_and_hangs_nobody() {
    let fs = PanickyFs {
        inner: MemoryFs::new(),
        armed: Arc::new(AtomicBool::new(false)),
    };
    let store = Arc::new(
        Store::builder()
            .file_system(fs.clone())
            .segment_size(SEGMENT)
            .open("/p/s")
            .unwrap(),
    );
    store
        .append("s", ExpectedVersion::Any, [ev("E", "before")])
        .unwrap();
    fs.armed.store(true, Ordering::SeqCst);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    for t in 0..4 {
        let (store, done) = (store.clone(), done_tx.clone());
        threads.push(std::thread::spawn(move || {
            let results: Vec<_> = (0..5)
                .map(|i| {
                    store.append(
                        &format!("t-{t}"),
                        ExpectedVersion::Any,
                        [ev("E", format!("{i}"))],
                    )
                })
                .collect();
            done.send(results).unwrap();
        }));
    }
    for _ in 0..4 {
        let results = done_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("no appending thread hangs after the leader panicked");
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(Error::Poisoned { .. }))),
            "{results:?}"
        );
    }
    threads.into_iter().for_each(|t| t.join().unwrap());
    fs.armed.store(false, Ordering::SeqCst);
    assert!(matches!(
        store.append("s", ExpectedVersion::Any, [ev("E", "x")]),
        Err(Error::Poisoned { .. })
    ));
    drop(store);
    let store = Store::builder()
        .file_system(fs.clone())
        .open("/p/s")
        .unwrap();
    assert_eq!(store.stream_version("s").unwrap(), Some(0));
    store
        .append("s", ExpectedVersion::Exact(0), [ev("E", "after")])
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// 7. A failed index flush is never forgotten

#[test]
fn a_failed_flush_index_is_reported_until_the_store_is_reopened() {
    let fs = FaultFs::new();
    let store = fault_open(&fs).unwrap();
    let mut ids = Vec::new();
    for i in 0..10u8 {
        let e = ev("E", vec![i]);
        ids.push(e.id);
        store.append("s", ExpectedVersion::Any, [e]).unwrap();
    }
    fs.fail_at(fs.op_count(), FaultMode::Once, ErrorKind::Other);
    assert!(store.flush_index().is_err());
    // Never "Ok, wrote nothing": the failure is reported again, and nothing piles up.
    assert!(matches!(store.flush_index(), Err(Error::Poisoned { .. })));
    assert!(matches!(
        store.append("s", ExpectedVersion::Any, [ev("E", "x")]),
        Err(Error::Poisoned { .. })
    ));
    drop(store);
    let store = fault_open(&fs.restart()).unwrap();
    verify(
        &store,
        &[Commit {
            parts: vec![("s".into(), ids)],
        }],
        &[],
    )
    .unwrap();
    store.flush_index().unwrap();
}

// ---------------------------------------------------------------------------------------------
// 8. A damaged sidecar is rebuilt, never used

#[test]
fn a_sidecar_with_out_of_range_values_is_rebuilt() {
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    for (key, value) in [
        ("last_frame", 8u64),
        ("next_stream_id", u64::MAX),
        ("next_stream_id", 0),
        ("covered", 7),
        ("covered", u64::MAX),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let store = Store::open(&path).unwrap();
        for i in 0..20u8 {
            store
                .append(
                    &format!("s-{}", i % 3),
                    ExpectedVersion::Any,
                    [ev("E", vec![i])],
                )
                .unwrap();
        }
        store.close().unwrap();
        {
            let db = redb::Database::create(dir.path().join("s.annals.index")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(key, &value.to_le_bytes()[..])
                .unwrap();
            txn.commit().unwrap();
        }
        let store =
            Store::open(&path).unwrap_or_else(|e| panic!("{key} = {value}: open failed: {e}"));
        assert!(
            store.recovery_report().index_rebuilt.is_some(),
            "{key} = {value}: not rebuilt"
        );
        assert_eq!(store.stream_version("s-0").unwrap(), Some(6));
        store
            .append("s-new", ExpectedVersion::NoStream, [ev("E", "x")])
            .unwrap();
        assert!(store.verify(&mut |_, _| {}).unwrap().is_clean());
    }
}

// ---------------------------------------------------------------------------------------------
// 9. A log cut from outside is damage, never a shorter store

fn store_of_1001_events(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("cut");
    let store = Store::open(&path).unwrap();
    for i in 0..1001u32 {
        store
            .append(
                &format!("s-{}", i % 7),
                ExpectedVersion::Any,
                [ev("Tick", vec![b'x'; 60])],
            )
            .unwrap();
    }
    store.close().unwrap();
    dir.join("cut.annals")
}

fn cut_to(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn a_log_cut_short_from_outside_is_corrupt_with_or_without_its_sidecar() {
    for (cut, keep_sidecar) in [
        (100_000, true),
        (100_000, false),
        (100, true),
        (100, false),
        (98_304, true),
        (98_304, false),
        (FIRST, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = store_of_1001_events(dir.path());
        let full = std::fs::metadata(&path).unwrap().len();
        assert!(full > 150_000);
        cut_to(&path, cut);
        if !keep_sidecar {
            std::fs::remove_file(dir.path().join("cut.annals.index")).unwrap();
        }
        let what = format!("cut at {cut}, sidecar kept: {keep_sidecar}");
        match Store::open(&path) {
            Err(Error::Corrupt { reason, .. }) => {
                assert!(reason.contains(&cut.to_string()), "{what}: {reason}");
                assert!(!reason.contains("delete"), "{what}: {reason}");
            }
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
        // Rebuilding the index does not accept the loss either ...
        if keep_sidecar {
            assert!(
                matches!(
                    Store::builder().rebuild_index(true).open(&path),
                    Err(Error::Corrupt { .. })
                ),
                "{what}"
            );
        }
        // ... unless told to, and then it says what was lost.
        let store = Store::builder()
            .rebuild_index(true)
            .accept_loss(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{what}: accepting the loss: {e}"));
        let report = store.recovery_report().clone();
        assert!(
            report.truncated.is_some() || report.lost.is_some(),
            "{what}"
        );
        if keep_sidecar && cut > 200 {
            let lost = report.lost.expect("the old sidecar tells what was lost");
            let left = log_events(&store).len() as u64;
            assert_eq!(lost.events, 1001 - left, "{what}: {}", lost.description);
        }
        store
            .append("s-0", ExpectedVersion::Any, [ev("Tick", "after")])
            .unwrap();
        drop(store);
        Store::open(&path).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Inspection changes nothing

#[test]
fn a_read_only_open_changes_nothing_and_reports_what_an_open_would_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_of_1001_events(dir.path());
    let store = Store::open(&path).unwrap();
    let end = store.end_position().as_u64();
    drop(store);
    // A torn tail, as a crash leaves it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xAB; 100], end).unwrap();
    }
    let sidecar = dir.path().join("cut.annals.index");
    let before = (
        std::fs::read(&path).unwrap(),
        std::fs::read(&sidecar).unwrap(),
    );
    let store = Store::open_read_only(&path).unwrap();
    let t = store.recovery_report().truncated.clone().expect("reported");
    assert_eq!((t.at, t.dropped_bytes, t.saved_to), (end, 104, None));
    assert!(store.verify(&mut |_, _| {}).unwrap().is_clean());
    assert_eq!(store.info().unwrap().events, 1001);
    drop(store);
    let after = (
        std::fs::read(&path).unwrap(),
        std::fs::read(&sidecar).unwrap(),
    );
    assert!(before == after, "a read-only open changed the files");
    // An open for writing drops it, saving it.
    let store = Store::open(&path).unwrap();
    let saved = store
        .recovery_report()
        .truncated
        .clone()
        .unwrap()
        .saved_to
        .unwrap();
    assert_eq!(std::fs::read(saved).unwrap()[..100], [0xAB; 100]);
    assert_eq!(store.info().unwrap().saved_tails.len(), 1);
}

#[test]
fn verify_counts_the_events_before_the_problem() {
    let fs = MemoryFs::new();
    let store = mem_open(&fs).unwrap();
    let mut positions = Vec::new();
    for i in 0..10u8 {
        positions.push(
            store
                .append("s", ExpectedVersion::Any, [ev("E", vec![i; 40])])
                .unwrap()
                .first_position,
        );
    }
    drop(store);
    flip(&fs, "/t/s.annals", positions[6].as_u64() + 90);
    let store = Store::builder()
        .file_system(fs.clone())
        .read_only(true)
        .open("/t/s")
        .unwrap();
    let report = store.verify(&mut |_, _| {}).unwrap();
    assert_eq!(report.problem.unwrap().0, positions[6]);
    assert_eq!(report.events, 6, "events 0..=5 were sound");
}

// ---------------------------------------------------------------------------------------------
// 11-14. Semantics peers' test suites check

#[test]
fn reading_backwards_from_before_the_first_event_returns_nothing() {
    let fs = MemoryFs::new();
    let store = mem_open(&fs).unwrap();
    for i in 0..5u8 {
        store
            .append("s", ExpectedVersion::Any, [ev("E", vec![i])])
            .unwrap();
    }
    for from in [Position::START, Position::new(FIRST - 1)] {
        assert_eq!(
            store
                .read_all(from, Direction::Backwards, 10)
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            store
                .read_log(from, Direction::Backwards, 10)
                .unwrap()
                .count(),
            0
        );
    }
    // A backwards pager that steps to `position - 1` ends, having seen each event once.
    let mut seen = Vec::new();
    let mut from = Position::END;
    loop {
        let page: Vec<_> = store
            .read_all(from, Direction::Backwards, 2)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let Some(last) = page.last() else { break };
        from = Position::new(last.position().as_u64() - 1);
        seen.extend(page.iter().map(|e| e.payload()[0]));
        assert!(seen.len() <= 5, "the pager never ends");
    }
    assert_eq!(seen, [4, 3, 2, 1, 0]);
}

#[test]
fn appending_no_events_is_a_no_op_that_reports_the_version() {
    let fs = MemoryFs::new();
    let store = mem_open(&fs).unwrap();
    let r = store.append("s", ExpectedVersion::NoStream, []).unwrap();
    assert_eq!(
        (r.version, r.next_expected()),
        (None, ExpectedVersion::NoStream)
    );
    assert_eq!(store.stream_version("s").unwrap(), None);
    store
        .append("s", ExpectedVersion::NoStream, [ev("E", "1")])
        .unwrap();
    let r = store.append("s", ExpectedVersion::Exact(0), []).unwrap();
    assert_eq!(r.version, Some(0));
    assert!(matches!(
        store.append("s", ExpectedVersion::Exact(5), []),
        Err(Error::WrongExpectedVersion { .. })
    ));
    let end = store.end_position();
    // A transaction may mix empty and non-empty parts; the commit is whole after a reopen.
    let results = store
        .transaction()
        .append("a", ExpectedVersion::Any, [ev("E", "x")])
        .append("s", ExpectedVersion::Exact(0), [])
        .commit()
        .unwrap();
    assert_eq!(results[1].version, Some(0));
    assert!(store.transaction().commit().unwrap().is_empty());
    assert!(store.end_position() > end);
    drop(store);
    fs.remove_file(Path::new("/t/s.annals.index")).unwrap();
    let store = mem_open(&fs).unwrap();
    assert_eq!(store.stream_version("a").unwrap(), Some(0));
    assert!(store.recovery_report().truncated.is_none());
}

#[test]
fn appends_made_by_callbacks_reach_every_subscriber_in_log_order() {
    let fs = MemoryFs::new();
    let store = Arc::new(mem_open(&fs).unwrap());
    let weak = Arc::downgrade(&store);
    store.subscribe("pinger", Filter::EventType("ping".into()), move |e| {
        let store = weak.upgrade().unwrap();
        store.append(
            "pong",
            ExpectedVersion::Any,
            [NewEvent::new("pong", e.payload().to_vec())],
        )?;
        Ok(())
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    store.subscribe("recorder", Filter::All, move |e| {
        record.lock().unwrap().push(e.position());
        Ok(())
    });
    std::thread::scope(|s| {
        for t in 0..3u8 {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..20u8 {
                    store
                        .append("ping", ExpectedVersion::Any, [ev("ping", vec![t, i])])
                        .unwrap();
                }
            });
        }
    });
    let log: Vec<Position> = store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap().position())
        .collect();
    assert_eq!(log.len(), 120);
    assert_eq!(
        *seen.lock().unwrap(),
        log,
        "the recorder saw the log's order"
    );
}

#[test]
fn a_durable_append_is_ok_whatever_its_subscribers_do() {
    let fs = MemoryFs::new();
    let store = mem_open(&fs).unwrap();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h = handled.clone();
    store.on_subscriber_failure(move |f| h.lock().unwrap().push(f.position));
    let up = Arc::new(AtomicBool::new(false));
    let server = up.clone();
    store.subscribe("mailer", Filter::All, move |_| {
        if server.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("smtp down".into())
        }
    });
    // A caller using `?` never sees the durable append as failed, so never writes it twice.
    let r = store
        .append("s", ExpectedVersion::NoStream, [ev("E", "x")])
        .unwrap();
    assert_eq!(r.subscriber_failures.len(), 1);
    assert_eq!(*handled.lock().unwrap(), [r.first_position]);
    assert!(matches!(
        store.redeliver(&r.subscriber_failures[0]),
        Err(Error::SubscriberFailed(_))
    ));
    up.store(true, Ordering::SeqCst);
    store.redeliver(&r.subscriber_failures[0]).unwrap();
    assert_eq!(log_events(&store).len(), 1);
}

#[test]
fn a_sidecar_missing_a_table_is_rebuilt_not_used() {
    const STREAMS: redb::TableDefinition<&str, (u64, u64)> = redb::TableDefinition::new("streams");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Store::open(&path).unwrap();
    store
        .append("a", ExpectedVersion::Any, [ev("E", "1")])
        .unwrap();
    store.close().unwrap();
    {
        let db = redb::Database::create(dir.path().join("s.annals.index")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(STREAMS).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert!(store.recovery_report().index_rebuilt.is_some());
    assert_eq!(store.stream_version("a").unwrap(), Some(0));
}
