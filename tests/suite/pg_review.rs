//! PostgreSQL-backend bugs found in review: each test fails on the commit it was written
//! against, and says what the backend should do instead.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::subscriptions::Filter;
use annals::{Direction, ExpectedVersion, NewEvent, Position};

use super::backends::pg_store as fresh;

fn e(kind: &'static str) -> NewEvent {
    NewEvent::new(kind, "{}")
}

/// An append made from a callback of one store into *another* store is that other store's
/// append: its events go to the other store's subscribers, never to this one's.
#[test]
fn a_callback_appending_to_another_store_feeds_that_stores_subscribers() {
    let (Some((a, _)), Some((other, _))) = (fresh("pg nested a"), fresh("pg nested b")) else {
        return;
    };
    let seen_by_a: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen_by_other: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen_by_other.clone();
    other.subscribe("audit", Filter::All, move |e| {
        sink.lock().unwrap().push(e.stream().to_owned());
        Ok(())
    });
    let sink = seen_by_a.clone();
    let forward = other.clone();
    a.subscribe("forwarder", Filter::All, move |e| {
        sink.lock().unwrap().push(e.stream().to_owned());
        if e.stream() == "order-1" {
            forward.append(
                "copy-1",
                ExpectedVersion::Any,
                [NewEvent::new("Copied", "{}")],
            )?;
        }
        Ok(())
    });
    a.append("order-1", ExpectedVersion::Any, [e("Placed")])
        .unwrap();
    assert_eq!(
        *seen_by_a.lock().unwrap(),
        ["order-1"],
        "store a's subscriber saw another database's event"
    );
    assert_eq!(
        *seen_by_other.lock().unwrap(),
        ["copy-1"],
        "the other store's subscriber missed its event"
    );
}

/// A callback may wait for an event another thread appends (a saga waiting for a reply, a
/// test helper): on the file store the other thread's append commits meanwhile (only its
/// callbacks wait their turn); here it must not be held up before it commits.
#[test]
fn a_callback_may_wait_for_another_threads_append_to_commit() {
    let Some((store, _)) = fresh("pg wait in callback") else {
        return;
    };
    let committed = Arc::new(AtomicBool::new(false));
    let waited = Arc::new(Mutex::new(None::<bool>));
    let (reader, flag, out) = (store.clone(), committed.clone(), waited.clone());
    store.subscribe("waiter", Filter::EventType("Request".into()), move |_| {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut seen = false;
        while Instant::now() < deadline {
            if reader.stream_version("reply-1")?.is_some() {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        *out.lock().unwrap() = Some(seen);
        Ok(())
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            store
                .append("request-1", ExpectedVersion::Any, [e("Request")])
                .unwrap();
        });
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            store
                .append("reply-1", ExpectedVersion::Any, [e("Reply")])
                .unwrap();
            flag.store(true, Ordering::Release);
        });
    });
    assert_eq!(
        *waited.lock().unwrap(),
        Some(true),
        "the other thread's append could not commit while a callback ran"
    );
    assert!(committed.load(Ordering::Acquire));
}

/// The same on the file store, which passes: the difference is PostgreSQL's.
#[test]
fn a_callback_may_wait_for_another_threads_append_to_commit_on_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(annals::Store::open(dir.path().join("s")).unwrap());
    let waited = Arc::new(Mutex::new(None::<bool>));
    let (reader, out) = (store.clone(), waited.clone());
    store.subscribe("waiter", Filter::EventType("Request".into()), move |_| {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut seen = false;
        while Instant::now() < deadline {
            if reader.stream_version("reply-1")?.is_some() {
                seen = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        *out.lock().unwrap() = Some(seen);
        Ok(())
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            store
                .append("request-1", ExpectedVersion::Any, [e("Request")])
                .unwrap();
        });
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            store
                .append("reply-1", ExpectedVersion::Any, [e("Reply")])
                .unwrap();
        });
    });
    assert_eq!(*waited.lock().unwrap(), Some(true));
}

/// A stream that starts past version 0 (`start_stream_at`, what `annals import` does for a
/// stream whose oldest events were deleted): its first append, retried with the same event
/// ids and the same `NoStream`, is the earlier append, not a duplicate-id error.
#[test]
fn a_retried_first_append_after_start_stream_at_is_idempotent() {
    let Some((store, _)) = fresh("pg start_stream_at retry") else {
        return;
    };
    store.start_stream_at("order-9", 12).unwrap();
    let events = vec![e("Placed"), e("Paid")];
    let first = store
        .append("order-9", ExpectedVersion::NoStream, events.clone())
        .unwrap();
    assert_eq!(first.version, Some(13));
    let again = store.append("order-9", ExpectedVersion::NoStream, events);
    assert!(
        matches!(&again, Ok(r) if r.version == Some(13) && r.first_position == first.first_position),
        "{again:?}"
    );
}

/// The same on the file store (its `already_appended` has the same `NoStream => version 0`
/// rule).
#[test]
fn a_retried_first_append_after_start_stream_at_is_idempotent_on_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = annals::Store::open(dir.path().join("s")).unwrap();
    store.start_stream_at("order-9", 12).unwrap();
    let events = vec![e("Placed"), e("Paid")];
    let first = store
        .append("order-9", ExpectedVersion::NoStream, events.clone())
        .unwrap();
    assert_eq!(first.version, Some(13));
    let again = store.append("order-9", ExpectedVersion::NoStream, events);
    assert!(
        matches!(&again, Ok(r) if r.version == Some(13) && r.first_position == first.first_position),
        "{again:?}"
    );
}

/// What the library reads from the database is checked, never trusted: a row it cannot use
/// (here a NULL where the schema it created says NOT NULL, after someone altered the table)
/// is an error, not a panic.
#[test]
fn a_null_column_read_from_the_database_is_an_error_not_a_panic() {
    let Some((store, url)) = fresh("pg hostile row") else {
        return;
    };
    store
        .append("order-1", ExpectedVersion::Any, [e("Placed")])
        .unwrap();
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.batch_execute(
        "ALTER TABLE annals_events ALTER COLUMN metadata DROP NOT NULL; \
         UPDATE annals_events SET metadata = NULL",
    )
    .unwrap();
    let read = catch_unwind(AssertUnwindSafe(|| {
        store.read_all(Position::START, Direction::Forwards, 10)
    }));
    match read {
        Ok(r) => assert!(r.is_err(), "a NULL metadata read back as {r:?}"),
        Err(_) => panic!("reading a NULL column panicked inside the library"),
    }
    // The head row, too.
    c.batch_execute(
        "ALTER TABLE annals_head ALTER COLUMN position DROP NOT NULL; \
         UPDATE annals_head SET position = NULL",
    )
    .unwrap();
    let end = catch_unwind(AssertUnwindSafe(|| store.end_position()));
    assert!(matches!(end, Ok(Err(_))), "a NULL head: {end:?}");
}
