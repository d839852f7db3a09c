//! Structured corruption: a log is written with fuzzer-chosen commits, then bytes are changed
//! at fuzzer-chosen places and the file may be cut. Recovery never panics; it refuses the log
//! or opens it, and then every commit wholly before the first changed byte is there, intact,
//! and nothing that was never written is. Without changes, every commit is there.
//!
//! Runs the log floor alone (`annals::internals`): no index sidecar, no threads.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use annals::internals::{LogFile, recover};
use annals::storage::{FileSystem, MemoryFs, OpenMode};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    keyed: bool,
    /// (stream, events in the commit, payload size)
    commits: Vec<(u8, u8, u16)>,
    changes: Vec<(u32, u8)>,
    cut: Option<u32>,
    accept_loss: bool,
}

const PATH: &str = "/c/log.annals";

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

fuzz_target!(|input: Input| {
    init_malloc();
    let fs = MemoryFs::new();
    let key = if input.keyed {
        0x5151_7777_0101_0003
    } else {
        0
    };
    let mut log = LogFile::create(&fs, Path::new(PATH), 64 * 1024, key).unwrap();
    let mut versions = [0u64; 5];
    // Each commit: the positions of its frames and where it ends.
    let mut written: Vec<(Vec<u64>, u64)> = Vec::new();
    for (stream, count, size) in input.commits.iter().take(40) {
        let s = usize::from(*stream % 5);
        let name = format!("s-{s}");
        let payload = vec![*count; usize::from(size % 2500)];
        let events: Vec<(&str, u64, &[u8])> = (0..u64::from(count % 4 + 1))
            .map(|k| (name.as_str(), versions[s] + k, &payload[..]))
            .collect();
        let mut positions = Vec::new();
        let end = log.append_at(&events, &mut positions).unwrap();
        versions[s] += events.len() as u64;
        written.push((positions, end));
    }
    drop(log);
    let f = fs.open(Path::new(PATH), OpenMode::Existing).unwrap();
    let len = f.len().unwrap();
    let mut image = vec![0u8; len as usize];
    f.read_exact_at(&mut image, 0).unwrap();
    // Every frame as written: position -> bytes (a frame ends where the next one starts, or at
    // its commit's end).
    let mut frames: HashMap<u64, &[u8]> = HashMap::new();
    for (positions, end) in &written {
        for (k, p) in positions.iter().enumerate() {
            let to = positions.get(k + 1).copied().unwrap_or(*end);
            frames.insert(*p, &image[*p as usize..to as usize]);
        }
    }
    let mut first_change = u64::MAX;
    for (at, xor) in input.changes.iter().take(8) {
        let at = u64::from(*at) % len;
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        if *xor != 0 {
            f.write_all_at(&[b[0] ^ xor], at).unwrap();
            first_change = first_change.min(at);
        }
    }
    if let Some(cut) = input.cut {
        let cut = u64::from(cut) % (len + 1);
        f.set_len(cut).unwrap();
        first_change = first_change.min(cut);
    }
    drop(f);
    let Ok(after) = recover(&fs, Path::new(PATH), true, input.accept_loss) else {
        assert!(first_change != u64::MAX, "an unchanged log is refused");
        return;
    };
    let found: HashMap<u64, &bytes::Bytes> = after
        .commits
        .iter()
        .flatten()
        .map(|(p, b)| (*p, b))
        .collect();
    // Nothing that was never written.
    for (p, bytes) in &found {
        assert!(
            frames.get(p) == Some(&&bytes[..]),
            "an event at {p} that was never written"
        );
    }
    // Every commit wholly before the first change, intact.
    for (positions, end) in &written {
        if first_change >= 4096 && *end <= first_change {
            for p in positions {
                assert!(found.contains_key(p), "lost the intact event at {p}");
            }
        }
    }
    if first_change == u64::MAX {
        assert!(after.truncated.is_none());
        assert_eq!(found.len(), frames.len());
    }
});
