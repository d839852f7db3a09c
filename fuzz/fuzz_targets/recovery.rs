//! Recovery over arbitrary bytes: a store whose log (after a valid header) holds whatever the
//! fuzzer wrote. Opening never panics; if it succeeds, every read works or fails cleanly, and
//! the store takes a new append and reopens with it.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use annals::storage::{FileSystem, MemoryFs, OpenMode};
use annals::{Direction, ExpectedVersion, NewEvent, Position, Store};
use libfuzzer_sys::fuzz_target;

const SEGMENT: u64 = 64 * 1024;

/// The header block of a fresh store, made once.
fn header() -> &'static [u8] {
    static HEADER: OnceLock<Vec<u8>> = OnceLock::new();
    HEADER.get_or_init(|| {
        let fs = MemoryFs::new();
        drop(open(&fs).unwrap());
        let f = fs.open(Path::new("/f/s.annals"), OpenMode::Existing).unwrap();
        let mut b = vec![0; 4096];
        f.read_exact_at(&mut b, 0).unwrap();
        b
    })
}

fn open(fs: &MemoryFs) -> annals::Result<Store> {
    Store::builder()
        .file_system(fs.clone())
        .segment_size(SEGMENT)
        .index_flush_events(16)
        .open("/f/s")
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(3 * SEGMENT as usize)];
    let fs = MemoryFs::new();
    let f = fs.open(Path::new("/f/s.annals"), OpenMode::CreateNew).unwrap();
    f.write_all_at(header(), 0).unwrap();
    f.set_len(4096 + SEGMENT).unwrap();
    f.write_all_at(data, 4096).unwrap();
    drop(f);
    let Ok(store) = open(&fs) else { return };
    let mut streams = Vec::new();
    if let Ok(events) = store.read_all(Position::START, Direction::Forwards, usize::MAX) {
        for e in events {
            let Ok(e) = e else { break };
            streams.push(e.stream().to_owned());
        }
    }
    if let Ok(events) = store.read_all(Position::END, Direction::Backwards, 50) {
        events.for_each(drop);
    }
    for s in streams.iter().take(8) {
        if let Ok(events) = store.read_stream(s, 0, Direction::Forwards, usize::MAX) {
            events.for_each(drop);
        }
    }
    let appended = store.append("fuzz-after", ExpectedVersion::Any, [NewEvent::new("After", "x")]);
    drop(store);
    if appended.is_ok() {
        let store = open(&fs).expect("a store that took an append reopens");
        assert!(store.stream_version("fuzz-after").unwrap().is_some());
    }
});
