//! Upcasting: events stored at old schema versions come out at the current one on every read
//! path (stream, all, category, synchronous and catch-up subscriptions, outbox).

use std::sync::{Arc, Mutex};

use annals::outbox::{Outbox, OutboxMessage, OutboxOptions};
use annals::storage::MemoryFs;
use annals::subscriptions::CatchUpStart;
use annals::subscriptions::Filter;
use annals::typed::EventType;
use annals::{Direction, ExpectedVersion, NewEvent, PayloadEncoding, Position, Store};
use serde::{Deserialize, Serialize};

/// Version 1: a single name.
#[derive(Serialize, Deserialize)]
struct RenamedV1 {
    name: String,
}

/// Version 2: first and last name.
#[derive(Serialize, Deserialize)]
struct RenamedV2 {
    first: String,
    last: String,
}

/// Version 3 (current): adds how the name was changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Renamed {
    first: String,
    last: String,
    reason: String,
}

impl EventType for Renamed {
    const NAME: &'static str = "Renamed";
    const SCHEMA_VERSION: u32 = 3;
    const PUBLISHED: bool = true;
}

fn old_event(version: u32, encoding: PayloadEncoding) -> NewEvent {
    let payload = match (version, encoding) {
        (1, PayloadEncoding::Json) => serde_json::to_vec(&RenamedV1 {
            name: "Ada Lovelace".into(),
        })
        .unwrap(),
        (1, _) => bincode::serde::encode_to_vec(
            RenamedV1 {
                name: "Ada Lovelace".into(),
            },
            bincode::config::standard(),
        )
        .unwrap(),
        (2, PayloadEncoding::Json) => serde_json::to_vec(&RenamedV2 {
            first: "Ada".into(),
            last: "Lovelace".into(),
        })
        .unwrap(),
        _ => bincode::serde::encode_to_vec(
            RenamedV2 {
                first: "Ada".into(),
                last: "Lovelace".into(),
            },
            bincode::config::standard(),
        )
        .unwrap(),
    };
    let mut e = NewEvent::new("Renamed", payload)
        .with_schema_version(version)
        .published(true);
    e.encoding = encoding;
    e
}

fn current() -> Renamed {
    Renamed {
        first: "Ada".into(),
        last: "Lovelace".into(),
        reason: "unknown".into(),
    }
}

fn upcasting_store() -> Store {
    Store::builder()
        .file_system(MemoryFs::new())
        .upcaster("Renamed", 1, |v1: RenamedV1| {
            let (first, last) = v1.name.split_once(' ').unwrap_or((&v1.name, ""));
            RenamedV2 {
                first: first.into(),
                last: last.into(),
            }
        })
        .upcaster("Renamed", 2, |v2: RenamedV2| Renamed {
            first: v2.first,
            last: v2.last,
            reason: "unknown".into(),
        })
        .register_events::<Renamed>()
        .open("/u/s")
        .unwrap()
}

#[test]
fn old_versions_come_out_current_on_every_read_path() {
    let store = upcasting_store();
    let sync_seen = Arc::new(Mutex::new(Vec::new()));
    let sink = sync_seen.clone();
    store.subscribe_to::<Renamed>("sync", move |e| {
        sink.lock().unwrap().push(e.event.clone());
        Ok(())
    });
    let olds = [
        old_event(1, PayloadEncoding::Json),
        old_event(1, PayloadEncoding::Bincode),
        old_event(2, PayloadEncoding::Json),
        old_event(2, PayloadEncoding::Bincode),
    ];
    store
        .append("person-1", ExpectedVersion::NoStream, olds)
        .unwrap();
    store
        .append_events("person-1", ExpectedVersion::Exact(3), [current()])
        .unwrap();
    let want = vec![current(); 5];

    let stream: Vec<Renamed> = store
        .read_stream_as::<Renamed>("person-1", 0, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap().event)
        .collect();
    assert_eq!(stream, want, "read_stream");
    let all: Vec<Renamed> = store
        .read_all_as::<Renamed>(Position::END, Direction::Backwards, usize::MAX)
        .unwrap()
        .map(|e| e.unwrap().event)
        .collect();
    assert_eq!(all, want, "read_all");
    let category: Vec<Renamed> = store
        .typed::<_, Renamed>(
            store
                .read_category("person", Position::START, usize::MAX)
                .unwrap(),
            false,
        )
        .map(|e| e.unwrap().event)
        .collect();
    assert_eq!(category, want, "read_category");
    assert_eq!(*sync_seen.lock().unwrap(), want, "synchronous subscription");
    let mut sub = store
        .catch_up("people", CatchUpStart::Beginning, Filter::All)
        .unwrap();
    let caught: Vec<Renamed> = sub
        .poll(100)
        .unwrap()
        .iter()
        .map(|e| store.decode::<Renamed>(e).unwrap())
        .collect();
    assert_eq!(caught, want, "catch-up subscription");

    let mut sent = Vec::new();
    let mut outbox = Outbox::new(
        &store,
        "people",
        |m: &OutboxMessage| {
            sent.push(m.envelope.clone());
            Ok(())
        },
        OutboxOptions::default(),
    )
    .unwrap();
    outbox.run_once().unwrap();
    drop(outbox);
    assert_eq!(sent.len(), 5);
    for e in &sent {
        assert_eq!(e.message_type, "Renamed_v3");
        assert_eq!(
            e.payload,
            r#"{"first": "Ada", "last": "Lovelace", "reason": "unknown"}"#
        );
    }
}

#[test]
fn a_missing_upcaster_or_a_newer_version_is_a_clear_error() {
    let store = Store::builder()
        .file_system(MemoryFs::new())
        .open("/u/s")
        .unwrap();
    store
        .append(
            "p",
            ExpectedVersion::Any,
            [old_event(1, PayloadEncoding::Json)],
        )
        .unwrap();
    let mut newer = NewEvent::new("Renamed", b"{}".to_vec()).with_schema_version(9);
    newer.encoding = PayloadEncoding::Json;
    store.append("p", ExpectedVersion::Any, [newer]).unwrap();
    store
        .append("p", ExpectedVersion::Any, [NewEvent::new("Other", "x")])
        .unwrap();
    let errors: Vec<String> = store
        .read_stream_as::<Renamed>("p", 0, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(|e| match e {
            Err(annals::Error::Decode {
                position, reason, ..
            }) => format!("{position}: {reason}"),
            other => panic!("expected a decode error, got {other:?}"),
        })
        .collect();
    assert_eq!(errors.len(), 3);
    assert!(errors[0].contains("no upcaster from it"), "{}", errors[0]);
    assert!(errors[1].contains("newer"), "{}", errors[1]);
    assert!(
        errors[2].contains("not one of the event types"),
        "{}",
        errors[2]
    );
    // Reading everything as `Renamed` passes over other types but not undecodable ones.
    assert_eq!(
        store
            .read_all_as::<Renamed>(Position::START, Direction::Forwards, usize::MAX)
            .unwrap()
            .count(),
        2
    );
}

/// A withdrawal as the first release of an app wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WithdrawnV1 {
    cents: u64,
}
impl EventType for WithdrawnV1 {
    const NAME: &'static str = "Withdrawn";
}

/// The same event type a release later: a field added with `#[serde(default)]`, same name, same
/// schema version, no upcaster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Withdrawn {
    cents: u64,
    #[serde(default)]
    memo: String,
}
impl EventType for Withdrawn {
    const NAME: &'static str = "Withdrawn";
}

/// Typed events are JSON by default: people can read them (`annals dump` shows them as JSON),
/// and a field added with `#[serde(default)]` reads the old events with no upcaster. Bincode
/// stays a per-store choice, and a store with both reads each right.
#[test]
fn typed_events_are_json_by_default_and_survive_an_added_field() {
    let fs = MemoryFs::new();
    let store = Store::builder()
        .file_system(fs.clone())
        .open("/j/s")
        .unwrap();
    store
        .append(
            "account-1",
            ExpectedVersion::NoStream,
            [store.new_event(&WithdrawnV1 { cents: 60_000 }).unwrap()],
        )
        .unwrap();
    let stored: Vec<_> = store
        .read_stream("account-1", 0, Direction::Forwards, 10)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    assert_eq!(stored[0].encoding(), PayloadEncoding::Json);
    assert_eq!(stored[0].payload(), br#"{"cents": 60000}"#);
    let now: Withdrawn = store.decode(&stored[0]).unwrap();
    assert_eq!(
        now,
        Withdrawn {
            cents: 60_000,
            memo: String::new()
        }
    );
    drop(store);

    // The same store opened with bincode writes bincode from then on and reads both.
    let store = Store::builder()
        .file_system(fs)
        .codec(annals::typed::Codec::Bincode)
        .open("/j/s")
        .unwrap();
    store
        .append(
            "account-1",
            ExpectedVersion::Exact(0),
            [store
                .new_event(&Withdrawn {
                    cents: 5,
                    memo: "rent".into(),
                })
                .unwrap()],
        )
        .unwrap();
    let all: Vec<Withdrawn> = store
        .read_stream("account-1", 0, Direction::Forwards, 10)
        .unwrap()
        .map(|e| store.decode(&e.unwrap()).unwrap())
        .collect();
    assert_eq!(all[0].cents, 60_000);
    assert_eq!(all[1].memo, "rent");
    let encodings: Vec<_> = store
        .read_stream("account-1", 0, Direction::Forwards, 10)
        .unwrap()
        .map(|e| e.unwrap().encoding())
        .collect();
    assert_eq!(encodings, [PayloadEncoding::Json, PayloadEncoding::Bincode]);
}
