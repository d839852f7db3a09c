//! Synchronous subscriptions, catch-up subscriptions and projections.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::storage::MemoryFs;
use annals::subscriptions::CatchUpStart;
use annals::subscriptions::{Filter, ProjectionOptions};
use annals::typed::EventType;
use annals::{Direction, Error, ExpectedVersion, NewEvent, Position, RecordedEvent, Store, events};
use serde::{Deserialize, Serialize};

fn mem() -> Store {
    Store::builder()
        .file_system(MemoryFs::new())
        .open("/s/store")
        .unwrap()
}

fn ev(t: &'static str, p: &str) -> NewEvent {
    NewEvent::new(t, p.as_bytes().to_vec())
}

fn recorder(store: &Store, name: &str, filter: Filter) -> Arc<Mutex<Vec<RecordedEvent>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    store.subscribe(name, filter, move |e| {
        sink.lock().unwrap().push(e.clone());
        Ok(())
    });
    seen
}

fn all(store: &Store) -> Vec<RecordedEvent> {
    store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn callbacks_see_their_events_in_log_order_with_filters() {
    let store = mem();
    let everything = recorder(&store, "all", Filter::All);
    let orders = recorder(&store, "orders", Filter::Category("order".into()));
    let placed = recorder(&store, "placed", Filter::EventType("Placed".into()));
    store
        .append(
            "order-1",
            ExpectedVersion::Any,
            [ev("Placed", "a"), ev("Paid", "b")],
        )
        .unwrap();
    store
        .transaction()
        .append("cart-1", ExpectedVersion::Any, [ev("Added", "c")])
        .append("order-2", ExpectedVersion::Any, [ev("Placed", "d")])
        .commit()
        .unwrap();
    let payloads = |v: &Arc<Mutex<Vec<RecordedEvent>>>| -> Vec<Vec<u8>> {
        v.lock()
            .unwrap()
            .iter()
            .map(|e| e.payload().to_vec())
            .collect()
    };
    assert_eq!(payloads(&everything), [b"a", b"b", b"c", b"d"]);
    assert_eq!(payloads(&orders), [b"a", b"b", b"d"]);
    assert_eq!(payloads(&placed), [b"a", b"d"]);
    assert_eq!(*everything.lock().unwrap(), all(&store));
}

#[test]
fn a_failing_or_panicking_callback_loses_nothing_and_is_reported() {
    let store = mem();
    store.subscribe("fails", Filter::All, |e| {
        if e.payload() == b"bad" {
            Err("refused".into())
        } else {
            Ok(())
        }
    });
    store.subscribe("panics", Filter::EventType("Boom".into()), |_| {
        panic!("kaboom")
    });
    let after = recorder(&store, "after", Filter::All);
    // A durable append returns Ok; the failures are in its result.
    let r = store
        .append("s", ExpectedVersion::Any, [ev("E", "bad"), ev("Boom", "x")])
        .expect("a durable append is Ok whatever its subscribers do");
    assert_eq!(r.version, Some(1));
    let failures = &r.subscriber_failures;
    assert_eq!(failures.len(), 2);
    assert_eq!(
        (
            failures[0].subscription.as_str(),
            failures[0].error.as_str()
        ),
        ("fails", "refused")
    );
    assert_eq!(failures[1].subscription, "panics");
    assert!(
        failures[1].error.contains("kaboom"),
        "{}",
        failures[1].error
    );
    // The append is durable and every other callback ran.
    assert_eq!(all(&store).len(), 2);
    assert_eq!(after.lock().unwrap().len(), 2);
    // The store goes on.
    store
        .append("s", ExpectedVersion::Exact(1), [ev("E", "ok")])
        .unwrap();
}

#[test]
fn many_appending_threads_feed_one_gap_free_ordered_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::builder()
            .index_flush_events(200)
            .open(dir.path().join("s"))
            .unwrap(),
    );
    let seen = recorder(&store, "all", Filter::All);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..150u32 {
                    let n = i % 3 + 1;
                    let events: Vec<_> =
                        (0..n).map(|_| NewEvent::new("E", vec![t as u8])).collect();
                    store
                        .append(&format!("t-{t}"), ExpectedVersion::Any, events)
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let seen = seen.lock().unwrap();
    let log = all(&store);
    assert_eq!(seen.len(), 8 * (50 + 100 + 150));
    assert_eq!(*seen, log, "callbacks saw exactly the log, in log order");
}

#[test]
fn appends_from_inside_a_callback_do_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("s")).unwrap());
    let inner = Arc::downgrade(&store);
    store.subscribe("react", Filter::Category("order".into()), move |e| {
        let store = inner.upgrade().expect("store alive");
        store.append(
            &format!("audit-{}", e.stream()),
            ExpectedVersion::Any,
            [NewEvent::new("Seen", "")],
        )?;
        Ok(())
    });
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    store
                        .append(
                            &format!("order-{t}-{i}"),
                            ExpectedVersion::Any,
                            [ev("Placed", "x")],
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(all(&store).len(), 160);
    assert_eq!(store.stream_version("audit-order-3-19").unwrap(), Some(0));
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserRegistered {
    email: String,
}
impl EventType for UserRegistered {
    const NAME: &'static str = "UserRegistered";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserRenamed {
    name: String,
}
impl EventType for UserRenamed {
    const NAME: &'static str = "UserRenamed";
}

events! {
    #[derive(Debug, Clone, PartialEq)]
    enum UserEvent {
        Registered(UserRegistered),
        Renamed(UserRenamed),
    }
}

#[test]
fn typed_subscriptions_and_unsubscribing() {
    let store = mem();
    let mails = Arc::new(Mutex::new(Vec::new()));
    let sink = mails.clone();
    let id = store.subscribe_to::<UserRegistered>("welcome", move |e| {
        sink.lock().unwrap().push(e.event.email.clone());
        Ok(())
    });
    let any = Arc::new(Mutex::new(Vec::new()));
    let sink = any.clone();
    store.subscribe_to::<UserEvent>("users", move |e| {
        sink.lock().unwrap().push(e.event.clone());
        Ok(())
    });
    store
        .append_events(
            "user-1",
            ExpectedVersion::NoStream,
            [
                UserEvent::from(UserRegistered {
                    email: "a@x".into(),
                }),
                UserEvent::from(UserRenamed { name: "Ada".into() }),
            ],
        )
        .unwrap();
    assert!(store.unsubscribe(id));
    assert!(!store.unsubscribe(id));
    store
        .append_events(
            "user-2",
            ExpectedVersion::NoStream,
            [UserRegistered {
                email: "b@x".into(),
            }],
        )
        .unwrap();
    assert_eq!(*mails.lock().unwrap(), ["a@x"]);
    assert_eq!(any.lock().unwrap().len(), 3);
}

#[test]
fn a_catch_up_subscription_reads_history_then_follows_and_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Store::open(&path).unwrap();
    for i in 0..10u8 {
        store
            .append(
                &format!("order-{}", i % 3),
                ExpectedVersion::Any,
                [NewEvent::new("Placed", vec![i])],
            )
            .unwrap();
        store
            .append(
                "cart-1",
                ExpectedVersion::Any,
                [NewEvent::new("Added", vec![i])],
            )
            .unwrap();
    }
    let mut sub = store
        .catch_up(
            "orders",
            CatchUpStart::Beginning,
            Filter::Category("order".into()),
        )
        .unwrap();
    let first: Vec<u8> = sub
        .poll(4)
        .unwrap()
        .iter()
        .map(|e| e.payload()[0])
        .collect();
    assert_eq!(first, [0, 1, 2, 3]);
    sub.checkpoint().unwrap();
    let rest: Vec<u8> = sub
        .poll(100)
        .unwrap()
        .iter()
        .map(|e| e.payload()[0])
        .collect();
    assert_eq!(rest, [4, 5, 6, 7, 8, 9]);
    assert!(sub.poll(100).unwrap().is_empty());
    assert!(!sub.wait(Duration::from_millis(20)));
    store
        .append(
            "order-9",
            ExpectedVersion::Any,
            [NewEvent::new("Placed", vec![10])],
        )
        .unwrap();
    assert!(sub.wait(Duration::from_secs(1)));
    assert_eq!(sub.poll(100).unwrap()[0].payload(), [10]);
    // The checkpoint events live in a `$` stream that read_all and filters leave out.
    assert!(all(&store).iter().all(|e| !e.stream().starts_with('$')));
    drop(sub);
    drop(store);

    // After a restart: from the checkpoint, so events after it come again (at least once).
    let store = Store::open(&path).unwrap();
    let mut sub = store
        .catch_up(
            "orders",
            CatchUpStart::Now,
            Filter::Category("order".into()),
        )
        .unwrap();
    let again: Vec<u8> = sub
        .poll(100)
        .unwrap()
        .iter()
        .map(|e| e.payload()[0])
        .collect();
    assert_eq!(again, [4, 5, 6, 7, 8, 9, 10]);
    // A new subscription from now sees only what comes next.
    let mut late = store
        .catch_up("late", CatchUpStart::Now, Filter::All)
        .unwrap();
    assert!(late.poll(10).unwrap().is_empty());
    store
        .append("x-1", ExpectedVersion::Any, [NewEvent::new("X", "")])
        .unwrap();
    assert_eq!(late.poll(10).unwrap().len(), 1);
}

#[test]
fn a_catch_up_subscription_following_concurrent_appenders_sees_everything_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::builder()
            .index_flush_events(100)
            .open(dir.path().join("s"))
            .unwrap(),
    );
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    store
                        .append(
                            &format!("w-{t}"),
                            ExpectedVersion::Any,
                            [NewEvent::new("E", i.to_le_bytes().to_vec())],
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    let mut sub = store
        .catch_up("follower", CatchUpStart::Beginning, Filter::All)
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 800 {
        let batch = sub.poll(37).unwrap();
        if batch.is_empty() {
            sub.wait(Duration::from_millis(100));
        }
        seen.extend(batch);
    }
    writers.into_iter().for_each(|w| w.join().unwrap());
    assert!(sub.poll(10).unwrap().is_empty());
    assert_eq!(seen, all(&store));
}

#[test]
fn a_projection_gives_read_your_writes_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let totals = |store: &Arc<Store>| {
        store
            .run_projection(
                "totals",
                CatchUpStart::Beginning,
                Filter::EventType("Deposited".into()),
                0u64,
                |total, e, _| {
                    *total += u64::from(e.payload()[0]);
                    Ok(())
                },
                ProjectionOptions {
                    checkpoint_every: 3,
                    ..ProjectionOptions::default()
                },
            )
            .unwrap()
    };
    let store = Arc::new(Store::open(&path).unwrap());
    let handle = totals(&store);
    let mut last = Position::START;
    for i in 1..=10u8 {
        last = store
            .append(
                "acct-1",
                ExpectedVersion::Any,
                [NewEvent::new("Deposited", vec![i])],
            )
            .unwrap()
            .last_position;
        store
            .append(
                "acct-1",
                ExpectedVersion::Any,
                [NewEvent::new("Withdrawn", vec![1])],
            )
            .unwrap();
    }
    assert!(handle.wait_for(last, Duration::from_secs(5)).unwrap());
    assert_eq!(handle.with(|t| *t), 55);
    assert_eq!(handle.stop().unwrap(), 55);
    drop(store);
    // Restarted from its checkpoint, with a fresh state: it sees only what came after.
    let store = Arc::new(Store::open(&path).unwrap());
    let handle = totals(&store);
    let r = store
        .append(
            "acct-1",
            ExpectedVersion::Any,
            [NewEvent::new("Deposited", vec![100])],
        )
        .unwrap();
    assert!(
        handle
            .wait_for(r.last_position, Duration::from_secs(5))
            .unwrap()
    );
    assert_eq!(handle.with(|t| *t), 100);
}

#[test]
fn a_failing_projection_stops_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().join("s")).unwrap());
    let handle = store
        .run_projection(
            "strict",
            CatchUpStart::Beginning,
            Filter::All,
            (),
            |_, e, _| {
                if e.payload() == b"poison" {
                    Err("cannot handle".into())
                } else {
                    Ok(())
                }
            },
            ProjectionOptions::default(),
        )
        .unwrap();
    let r = store
        .append("s", ExpectedVersion::Any, [NewEvent::new("E", "poison")])
        .unwrap();
    match handle.wait_for(r.last_position, Duration::from_secs(5)) {
        Err(Error::Projection { reason, .. }) => {
            assert!(reason.contains("cannot handle"), "{reason}")
        }
        other => panic!("expected a projection error, got {other:?}"),
    }
    assert!(handle.stop().is_err());
}
