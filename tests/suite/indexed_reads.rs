//! Reads by category and by event type, through the index (memory, sidecar, rebuilt).

use annals::storage::MemoryFs;
use annals::{ExpectedVersion, NewEvent, Position, RecordedEvent, Store, category_of};

fn open(fs: &MemoryFs, flush: u64) -> Store {
    Store::builder()
        .file_system(fs.clone())
        .segment_size(64 * 1024)
        .index_flush_events(flush)
        .open("/x/s")
        .unwrap()
}

fn collect(events: annals::read::IndexedEvents<'_>) -> Vec<RecordedEvent> {
    events.collect::<Result<_, _>>().unwrap()
}

fn all(store: &Store) -> Vec<RecordedEvent> {
    store
        .read_all(Position::START, annals::Direction::Forwards, usize::MAX)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn categories_follow_the_first_dash() {
    assert_eq!(category_of("order-1"), "order");
    assert_eq!(category_of("order-eu-7"), "order");
    assert_eq!(category_of("order"), "order");
    assert_eq!(category_of("-x"), "");
}

/// Writes a mix of streams and types, some in batches, some interleaved, across segments.
fn fill(store: &Store) {
    for i in 0..700u32 {
        let stream = match i % 5 {
            0 | 1 => format!("order-{}", i % 7),
            2 => format!("cart-{}", i % 3),
            3 => "order".to_owned(),
            _ => format!("orderly-{}", i % 2),
        };
        let types: Vec<NewEvent> = (0..(i % 4 + 1))
            .map(|k| {
                let t = if (i + k) % 97 == 0 {
                    "Rare"
                } else if k % 2 == 0 {
                    "Common"
                } else {
                    "Other"
                };
                NewEvent::new(t, vec![k as u8; 50 + (i as usize % 200)])
            })
            .collect();
        store.append(&stream, ExpectedVersion::Any, types).unwrap();
    }
}

fn check(store: &Store) {
    let log = all(store);
    for category in ["order", "cart", "orderly", "nope"] {
        let want: Vec<_> = log
            .iter()
            .filter(|e| category_of(e.stream()) == category)
            .cloned()
            .collect();
        assert_eq!(
            collect(
                store
                    .read_category(category, Position::START, usize::MAX)
                    .unwrap()
            ),
            want
        );
        if want.len() > 10 {
            // From the position of an event in the middle, and with a limit.
            let from = want[want.len() / 2].position();
            let got = collect(store.read_category(category, from, 7).unwrap());
            assert_eq!(got, want[want.len() / 2..want.len() / 2 + 7]);
            // From a position between two of its events.
            let between = log
                .iter()
                .find(|e| e.position() > want[3].position() && category_of(e.stream()) != category);
            if let Some(b) = between {
                let got = collect(store.read_category(category, b.position(), 1).unwrap());
                let expected: Vec<_> = want
                    .iter()
                    .filter(|e| e.position() > b.position())
                    .take(1)
                    .cloned()
                    .collect();
                assert_eq!(got, expected);
            }
        }
    }
    for t in ["Rare", "Common", "Other", "Missing"] {
        let want: Vec<_> = log
            .iter()
            .filter(|e| e.event_type() == t)
            .cloned()
            .collect();
        let got = collect(
            store
                .read_event_type(t, Position::START, usize::MAX)
                .unwrap(),
        );
        if got != want {
            let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
            panic!(
                "{t}: got {} events, want {}; first difference at {first_diff:?}: got {:?} want {:?}",
                got.len(),
                want.len(),
                first_diff.map(|i| &got[i]),
                first_diff.map(|i| &want[i])
            );
        }
    }
    assert!(
        !collect(
            store
                .read_event_type("Rare", Position::START, usize::MAX)
                .unwrap()
        )
        .is_empty()
    );
}

#[test]
fn reads_by_category_and_type_match_a_scan_of_the_log() {
    for flush in [1_000_000, 50, 1] {
        let fs = MemoryFs::new();
        let store = open(&fs, flush);
        fill(&store);
        check(&store);
        drop(store);
        let store = open(&fs, flush);
        check(&store);
        drop(store);
        use annals::storage::FileSystem;
        fs.remove_file(std::path::Path::new("/x/s.annals.index"))
            .unwrap();
        let store = open(&fs, flush);
        check(&store);
    }
}
