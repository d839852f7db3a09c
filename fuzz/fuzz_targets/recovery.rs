//! Recovery over arbitrary bytes: a log file whose header is valid and whose log is whatever
//! the fuzzer wrote (in format version 1, where frame positions are plain, so the fuzzer finds
//! frames easily, or version 2 with a key). Recovery never panics; judging and repairing agree;
//! after a repair, recovery finds the same commits and nothing more to drop, and a follower
//! (a read-only open beside a writer, reading up to a published end) finds exactly them too;
//! a follower given any end never panics.
//!
//! Runs the log floor alone (`annals::internals`): no index sidecar, no threads.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use annals::internals::{LogFile, follow, recover};
use annals::storage::{FileSystem, MemoryFs, OpenMode};
use libfuzzer_sys::fuzz_target;

const SEGMENT: u64 = 64 * 1024;
const PATH: &str = "/f/log.annals";

/// The header blocks of a fresh log, without and with a key, made once.
fn header(keyed: bool) -> &'static [u8] {
    static HEADERS: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    &HEADERS.get_or_init(|| {
        [0u64, 0x9E37_79B9_7F4A_7C15].map(|key| {
            let fs = MemoryFs::new();
            drop(LogFile::create(&fs, Path::new(PATH), SEGMENT, key).unwrap());
            let f = fs.open(Path::new(PATH), OpenMode::Existing).unwrap();
            let mut b = vec![0; 4096];
            f.read_exact_at(&mut b, 0).unwrap();
            b
        })
    })[usize::from(keyed)]
}

/// Large buffers (a segment, a read chunk) come and go every run: keep them on the heap
/// instead of mapping and unmapping them each time (page faults dominated the profile).
fn init_malloc() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: mallopt only tunes the allocator's thresholds; called once, before any use here.
    ONCE.call_once(|| unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    });
}

fuzz_target!(|data: &[u8]| {
    init_malloc();
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let data = &data[..data.len().min(2 * SEGMENT as usize)];
    let fs = MemoryFs::new();
    let f = fs.open(Path::new(PATH), OpenMode::CreateNew).unwrap();
    f.write_all_at(header(flags & 1 == 1), 0).unwrap();
    // A length the engine writes (a segment or two), or, sometimes, any length.
    let len = if flags & 2 == 0 {
        4096 + SEGMENT * (1 + u64::from(data.len() as u64 > SEGMENT))
    } else {
        4096 + data.len() as u64
    };
    f.set_len(len).unwrap();
    f.write_all_at(&data[..data.len().min((len - 4096) as usize)], 4096)
        .unwrap();
    drop(f);
    let accept_loss = flags & 4 != 0;
    // A follower told any end (a hostile live file) errs or reads; it never panics.
    let any_end = u64::from(flags >> 3) * 4096 + data.len() as u64 % 8192;
    let _ = follow(&fs, Path::new(PATH), any_end);
    let judged = recover(&fs, Path::new(PATH), false, accept_loss);
    let repaired = recover(&fs, Path::new(PATH), true, accept_loss);
    match (&judged, &repaired) {
        (Ok(j), Ok(r)) => {
            assert_eq!((j.end, &j.commits), (r.end, &r.commits));
            assert_eq!(
                j.truncated
                    .as_ref()
                    .map(|t| (t.at, t.stopped_at, t.dropped_bytes)),
                r.truncated
                    .as_ref()
                    .map(|t| (t.at, t.stopped_at, t.dropped_bytes))
            );
            assert!(r.end >= 4096 && r.end % 8 == 0);
            if r.truncated.as_ref().is_some_and(|t| t.dropped_bytes > 0) {
                assert!(r.truncated.as_ref().unwrap().saved_to.is_some());
            }
            let again = recover(&fs, Path::new(PATH), false, false)
                .expect("a repaired log opens without accepting any loss");
            assert_eq!((again.end, &again.commits), (r.end, &r.commits));
            assert!(again.truncated.is_none(), "{:?}", again.truncated);
            let followed = follow(&fs, Path::new(PATH), r.end)
                .expect("a sound log followed to its end reads");
            assert_eq!((followed.end, &followed.commits), (r.end, &r.commits));
        }
        (Err(_), Err(_)) => {}
        (j, r) => panic!("judging and repairing disagree: {j:?} / {r:?}"),
    }
});
