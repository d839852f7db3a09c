//! The transactional outbox: order, at-least-once delivery, retries, parking, durable progress,
//! the `messagebus` envelope.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::outbox::{Envelope, Outbox, OutboxMessage, OutboxOptions};
use annals::storage::{FaultFs, FaultMode, MemoryFs};
use annals::typed::{Codec, EventType};
use annals::{ExpectedVersion, NewEvent, Position, Store};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BookRegistered {
    id: String,
    isbn: String,
    title: String,
    author: String,
}

impl EventType for BookRegistered {
    const NAME: &'static str = "register_book";
    const SCHEMA_VERSION: u32 = 1;
    const PUBLISHED: bool = true;
}

fn book() -> BookRegistered {
    BookRegistered {
        id: "x".into(),
        isbn: "0-321-12521-5".into(),
        title: "Domain Driven Design".into(),
        author: "Eric Evans".into(),
    }
}

fn fast() -> OutboxOptions {
    OutboxOptions {
        max_attempts: 4,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        batch: 10_000,
    }
}

#[test]
fn the_envelope_is_the_messagebus_one_whatever_the_codec() {
    for codec in [Codec::Json, Codec::Bincode] {
        let store = Store::builder()
            .file_system(MemoryFs::new())
            .codec(codec)
            .register_events::<BookRegistered>()
            .open("/o/s")
            .unwrap();
        store
            .append_events("book-1", ExpectedVersion::NoStream, [book()])
            .unwrap();
        let mut sent: Vec<Envelope> = Vec::new();
        let mut outbox = Outbox::new(
            &store,
            "stream",
            |m: &OutboxMessage| {
                sent.push(m.envelope.clone());
                Ok(())
            },
            fast(),
        )
        .unwrap();
        outbox.run_once().unwrap();
        drop(outbox);
        assert_eq!(sent.len(), 1, "{codec:?}");
        let e = &sent[0];
        assert_eq!(
            e.payload,
            r#"{"id": "x", "isbn": "0-321-12521-5", "title": "Domain Driven Design", "author": "Eric Evans"}"#
        );
        assert_eq!(e.message_type, "register_book_v1");
        Uuid::parse_str(&e.id).unwrap();
        assert!(
            humantime::parse_rfc3339(&e.created_at).is_ok(),
            "{}",
            e.created_at
        );
        assert_eq!(
            e.to_json(),
            format!(
                r#"{{"id": "{}", "created_at": "{}", "payload": {}, "type": "register_book_v1"}}"#,
                e.id,
                e.created_at,
                serde_json::to_string(&e.payload).unwrap()
            )
        );
    }
}

fn published(i: u32) -> NewEvent {
    NewEvent::new("Happened", format!("{{\"n\": {i}}}")).published(true)
}

#[test]
fn an_intermittently_failing_publisher_gets_everything_in_order_duplicates_only_after_failures() {
    let store = Store::builder()
        .file_system(MemoryFs::new())
        .open("/o/s")
        .unwrap();
    for i in 0..200 {
        store
            .append(
                &format!("s-{}", i % 7),
                ExpectedVersion::Any,
                [published(i)],
            )
            .unwrap();
        store
            .append(
                "quiet",
                ExpectedVersion::Any,
                [NewEvent::new("Private", "{}")],
            )
            .unwrap();
    }
    // The publisher receives every call, but one in three "fails" after it has received the
    // message: a broker that got it but did not acknowledge.
    let received: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let sink = received.clone();
    let mut calls = 0u32;
    let mut outbox = Outbox::new(
        &store,
        "flaky",
        move |m: &OutboxMessage| {
            calls += 1;
            let fail = calls.is_multiple_of(3);
            sink.lock()
                .unwrap()
                .push((m.envelope.payload.clone(), fail));
            if fail {
                Err("broker hiccup".into())
            } else {
                Ok(())
            }
        },
        fast(),
    )
    .unwrap();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let report = outbox.run_once().unwrap();
        assert_eq!(report.parked, 0);
        if report.caught_up {
            break;
        }
        assert!(rounds < 10_000);
    }
    let received = received.lock().unwrap();
    let delivered: Vec<&str> = received
        .iter()
        .filter(|(_, failed)| !failed)
        .map(|(p, _)| p.as_str())
        .collect();
    let expected: Vec<String> = (0..200).map(|i| format!("{{\"n\": {i}}}")).collect();
    assert_eq!(
        delivered, expected,
        "every published event, once acknowledged, in log order"
    );
    // A payload seen twice was first seen in a failed call, and seen again right after it.
    for w in received.windows(2) {
        if w[0].0 == w[1].0 {
            assert!(w[0].1, "a repeat without a failure before it");
        } else {
            assert!(!w[0].1, "moved on after a failure");
        }
    }
    assert!(received.iter().any(|(_, failed)| *failed));
}

#[test]
fn an_event_that_keeps_failing_is_parked_listed_and_replayable() {
    let store = Store::builder()
        .file_system(MemoryFs::new())
        .open("/o/s")
        .unwrap();
    for i in 0..5 {
        store
            .append("s", ExpectedVersion::Any, [published(i)])
            .unwrap();
    }
    let broken = Arc::new(Mutex::new(true));
    let delivered: Arc<Mutex<Vec<String>>> = Arc::default();
    let (b, d) = (broken.clone(), delivered.clone());
    let mut outbox = Outbox::new(
        &store,
        "picky",
        move |m: &OutboxMessage| {
            if m.envelope.payload == "{\"n\": 2}" && *b.lock().unwrap() {
                return Err(format!("rejected (attempt {})", m.attempt).into());
            }
            d.lock().unwrap().push(m.envelope.payload.clone());
            Ok(())
        },
        fast(),
    )
    .unwrap();
    let mut parked_total = 0;
    while !outbox
        .run_once()
        .map(|r| {
            parked_total += r.parked;
            r.caught_up
        })
        .unwrap()
    {}
    assert_eq!(parked_total, 1);
    assert_eq!(
        *delivered.lock().unwrap(),
        ["{\"n\": 0}", "{\"n\": 1}", "{\"n\": 3}", "{\"n\": 4}"]
    );
    let parked = outbox.parked().unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].attempts, parked[0].error.as_str()),
        (4, "rejected (attempt 4)")
    );
    // Still broken: replay fails and it stays parked.
    let (n, failed) = outbox.replay_parked().unwrap();
    assert_eq!((n, failed.len()), (0, 1));
    assert_eq!(outbox.parked().unwrap().len(), 1);
    *broken.lock().unwrap() = false;
    assert_eq!(outbox.replay_parked().unwrap().0, 1);
    assert!(outbox.parked().unwrap().is_empty());
    assert_eq!(delivered.lock().unwrap().last().unwrap(), "{\"n\": 2}");
}

#[test]
fn progress_survives_a_reopen_and_a_lost_progress_write_means_redelivery() {
    let fs = FaultFs::new();
    let open = |fs: &FaultFs| {
        Store::builder()
            .file_system(fs.clone())
            .open("/o/s")
            .unwrap()
    };
    let store = open(&fs);
    for i in 0..3 {
        store
            .append("s", ExpectedVersion::Any, [published(i)])
            .unwrap();
    }
    let count = |store: &Store| {
        let mut n = 0;
        let mut outbox = Outbox::new(
            store,
            "main",
            |_: &OutboxMessage| {
                n += 1;
                Ok(())
            },
            fast(),
        )
        .unwrap();
        let r = outbox.run_once();
        drop(outbox);
        (n, r)
    };
    assert_eq!(count(&store).0, 3);
    assert_eq!(count(&store).0, 0, "progress was recorded");
    drop(store);
    let store = open(&fs);
    assert_eq!(count(&store).0, 0, "and survives a reopen");
    store
        .append("s", ExpectedVersion::Any, [published(3)])
        .unwrap();
    // The next progress write fails (the round delivered, then could not record it).
    fs.fail_at(fs.op_count(), FaultMode::Always, std::io::ErrorKind::Other);
    let (n, result) = count(&store);
    assert_eq!(n, 1);
    assert!(result.is_err());
    drop(store);
    fs.clear_faults();
    let store = open(&fs);
    assert_eq!(count(&store).0, 1, "delivered again: at least once");
}

#[test]
fn a_background_runner_delivers_live_appends_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("s")).unwrap());
    let got: Arc<Mutex<Vec<Position>>> = Arc::default();
    let sink = got.clone();
    let runner = Outbox::new(
        store.clone(),
        "live",
        move |m: &OutboxMessage| {
            sink.lock().unwrap().push(m.event.position());
            Ok(())
        },
        OutboxOptions::default(),
    )
    .unwrap()
    .spawn()
    .unwrap();
    let mut positions = Vec::new();
    for i in 0..50 {
        positions.push(
            store
                .append("s", ExpectedVersion::Any, [published(i)])
                .unwrap()
                .first_position,
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.lock().unwrap().len() < 50 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let outbox = runner.stop().unwrap();
    assert_eq!(*got.lock().unwrap(), positions);
    assert!(outbox.position() > *positions.last().unwrap());
}

/// Without `register_events`: JSON events (the default codec) are delivered all the same;
/// bincode events cannot be turned into JSON, and the outbox says so when it starts (and
/// parks them, as before); registering their types fixes it.
#[test]
fn unregistered_types_deliver_as_json_and_an_outbox_that_cannot_decode_says_so_at_start() {
    for codec in [Codec::Json, Codec::Bincode] {
        let fs = MemoryFs::new();
        let store = Store::builder()
            .file_system(fs.clone())
            .codec(codec)
            .open("/o/s")
            .unwrap();
        for i in 0..12 {
            store
                .append_events(&format!("book-{i}"), ExpectedVersion::NoStream, [book()])
                .unwrap();
        }
        let mut sent = 0;
        let mut outbox = Outbox::new(
            &store,
            "broker",
            |_: &OutboxMessage| {
                sent += 1;
                Ok(())
            },
            fast(),
        )
        .unwrap();
        let warning = outbox.cannot_decode().map(str::to_owned);
        let report = outbox.run_once().unwrap();
        drop(outbox);
        match codec {
            Codec::Json => {
                assert_eq!(warning, None);
                assert_eq!((report.delivered, report.parked, sent), (12, 0, 12));
            }
            _ => {
                let warning = warning.expect("the outbox says it cannot decode");
                assert!(warning.contains("12 published events"), "{warning}");
                assert!(warning.contains("register_book"), "{warning}");
                assert!(warning.contains("register_events"), "{warning}");
                assert_eq!(sent, 0);
                drop(store);
                // Registered, a new outbox sees nothing it cannot decode.
                let store = Store::builder()
                    .file_system(fs)
                    .register_events::<BookRegistered>()
                    .open("/o/s")
                    .unwrap();
                let outbox =
                    Outbox::new(&store, "other", |_: &OutboxMessage| Ok(()), fast()).unwrap();
                assert_eq!(outbox.cannot_decode(), None);
            }
        }
    }
}
