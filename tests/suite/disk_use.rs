//! Small stores stay small: a new store holding a few events takes well under 1 MiB on a real
//! file system, and the store file grows in proportion to what it holds (at most about twice
//! its contents, plus the first chunk), up to whole segments. Sizes are allocated blocks
//! (`st_blocks`), what the store really takes on the disk.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use annals::{ExpectedVersion, NewEvent, Store};

/// Bytes allocated on the disk for the file at `path`.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Bytes allocated for the store's log and its index sidecar.
fn store_bytes(dir: &Path) -> (u64, u64) {
    (
        allocated(&dir.join("s.annals")),
        allocated(&dir.join("s.annals.index")),
    )
}

fn event(i: u64) -> NewEvent {
    NewEvent::new("Deposited", vec![(i % 251) as u8; 100])
}

#[test]
fn a_new_store_with_three_events_takes_at_most_one_mib() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path().join("s.annals")).unwrap();
        store
            .append("account-1", ExpectedVersion::NoStream, (0..3).map(event))
            .unwrap();
    }
    let (log, index) = store_bytes(dir.path());
    assert!(
        log + index <= 1 << 20,
        "a store of 3 events takes {log} + {index} bytes"
    );
    // Reopened, it still holds them, and is no larger.
    let store = Store::open(dir.path().join("s.annals")).unwrap();
    assert_eq!(
        store
            .read_stream("account-1", 0, annals::Direction::Forwards, 10)
            .unwrap()
            .count(),
        3
    );
    drop(store);
    let (log2, _) = store_bytes(dir.path());
    assert!(log2 <= log, "{log2} > {log}");
}

#[test]
fn the_log_grows_in_proportion_to_its_contents_up_to_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let segment = 4 << 20;
    let store = Store::builder()
        .segment_size(segment)
        .open(dir.path().join("s.annals"))
        .unwrap();
    let mut sizes = Vec::new();
    for round in 0..60u64 {
        let batch: Vec<_> = (0..1000).map(|i| event(round * 1000 + i)).collect();
        store.append("big", ExpectedVersion::Any, batch).unwrap();
        let used = store.end_position().as_u64();
        let (log, _) = store_bytes(dir.path());
        sizes.push((used, log));
        // Never more than twice the log, plus the first chunk (256 KiB) and the 4 KiB header
        // block: preparation keeps the file within about twice what it holds.
        assert!(
            log <= 2 * used + (256 << 10) + 4096,
            "round {round}: the log uses {used} bytes and the file takes {log}"
        );
        assert!(log >= used, "the file holds the log ({log} < {used})");
    }
    // It did grow past its first chunks (60,000 events of ~200 bytes: about 12 MB).
    let (used, log) = *sizes.last().unwrap();
    assert!(used > 2 * segment && log > 2 * segment, "{used} {log}");
}
