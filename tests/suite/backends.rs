//! One semantic suite, two backends. Every test here is written once, against the
//! [`Backend`] trait (and the domain's `EventStore`), and [`on_both!`] runs each on the file
//! store (`backends::file::NAME`) and on PostgreSQL (`backends::pg::NAME`, with the feature
//! `postgres`, against the server `ANNALS_PG_URL` names; without it, each says it skipped).
//!
//! Positions are compared only as the API promises them (increasing, each event's
//! `next_position` where the next one may start): the file store's are byte offsets, the
//! database's are 1, 2, 3, …

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use annals::backend::{Backend, Follower, Part};
use annals::domain::{Aggregate, CommandRelay, DomainError, EventStore, Repository, UnitOfWork};
use annals::outbox::{Outbox, OutboxMessage, OutboxOptions};
use annals::subscriptions::Filter;
use annals::{
    Direction, Error, ExpectedVersion, NewEvent, PayloadEncoding, Position, RecordedEvent,
};

use super::domain::fixtures::{Counter, Transfer, add, bank, seed_counter};
use super::domain::shop::{Order, place, shop_for};
use super::examples::light_switch::{LightSwitch, LightSwitchError};
use super::examples::reading_club::{self, BookRegistered, BookRepositoryError, register_book_cmd};
use annals::typed::EventType;

/// The environment variable naming the PostgreSQL server (a libpq connection string).
#[cfg(feature = "postgres")]
const PG_URL: &str = "ANNALS_PG_URL";

/// A PostgreSQL store in a new, empty database of its own, and its URL; or `None` (and a
/// note past the test harness's capture, so that the skip shows in every run) without a
/// server.
#[cfg(feature = "postgres")]
pub(crate) fn pg_store(test: &str) -> Option<(annals::pg::PgStore, String)> {
    let Ok(url) = std::env::var(PG_URL) else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the PostgreSQL test `{test}`: {PG_URL} is not set (`scripts/pg start DIR` \
             starts a throwaway server and prints one)"
        );
        return None;
    };
    let name = format!("annals_{}", uuid::Uuid::now_v7().simple());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a database");
    let url = format!("{url} dbname={name}");
    Some((
        annals::pg::PgStore::connect(&url).expect("connect the store"),
        url,
    ))
}

/// Runs each named test on both backends.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod file {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = annals::Store::open(dir.path().join("store")).unwrap();
                    super::$name(&store);
                }
            )*
        }

        #[cfg(feature = "postgres")]
        mod pg {
            $(
                #[test]
                fn $name() {
                    if let Some((store, _)) = super::pg_store(stringify!($name)) {
                        super::$name(&store);
                    }
                }
            )*
        }
    };
}

on_both!(
    every_kind_of_expected_version,
    transactions_are_all_or_nothing_and_parts_see_the_parts_before_them,
    reappends_by_event_id_are_idempotent_and_misplaced_ids_are_refused,
    reads_by_stream_all_category_and_type_in_both_directions,
    every_field_of_an_event_reads_back,
    synchronous_subscriptions_see_each_new_event_once_in_order,
    catch_up_resumes_at_its_checkpoint_and_projects,
    the_outbox_delivers_published_events_in_order_and_parks_failures,
    the_repository_the_bus_and_the_unit_of_work_run_unchanged,
    workflows_hand_each_dispatched_command_to_its_handler_once,
    the_seeds_examples_behave_as_their_tests_say,
    snapshots_are_kept_and_used_by_the_repository,
    the_generic_subscribe_takes_a_closure,
    a_retried_transaction_checks_its_empty_parts_as_the_first_try_did,
    a_read_returns_up_to_its_limit_past_ten_thousand_events,
    a_retried_superseded_record_does_not_replace_the_newest,
    every_value_an_event_may_hold_reads_back,
    a_caught_up_follower_is_past_its_own_checkpoint,
    an_idle_outbox_writes_nothing,
);

fn e(kind: &'static str) -> NewEvent {
    NewEvent::new(kind, "{}")
}

fn types(events: &[RecordedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_type()).collect()
}

fn streams(events: &[RecordedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.stream()).collect()
}

fn wrong_version(r: annals::Result<impl std::fmt::Debug>, want_actual: Option<u64>) {
    match r {
        Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, want_actual),
        other => panic!("expected a wrong-expected-version error, got {other:?}"),
    }
}

fn every_kind_of_expected_version<B: Backend>(b: &B) {
    let r = b
        .append_to_stream(
            "order-1",
            ExpectedVersion::NoStream,
            vec![e("Placed"), e("Paid")],
        )
        .unwrap();
    assert_eq!(r.version, Some(1));
    assert!(r.first_position < r.last_position);
    wrong_version(
        b.append_to_stream("order-1", ExpectedVersion::NoStream, vec![e("X")]),
        Some(1),
    );
    wrong_version(
        b.append_to_stream("order-1", ExpectedVersion::Exact(0), vec![e("X")]),
        Some(1),
    );
    wrong_version(
        b.append_to_stream("order-1", ExpectedVersion::Exact(u64::MAX), vec![e("X")]),
        Some(1),
    );
    wrong_version(
        b.append_to_stream("order-2", ExpectedVersion::StreamExists, vec![e("X")]),
        None,
    );
    wrong_version(
        b.append_to_stream("order-2", ExpectedVersion::Exact(0), vec![e("X")]),
        None,
    );
    let exact = b
        .append_to_stream("order-1", ExpectedVersion::Exact(1), vec![e("Shipped")])
        .unwrap();
    assert_eq!(exact.version, Some(2));
    assert!(exact.first_position > r.last_position);
    let exists = b
        .append_to_stream("order-1", ExpectedVersion::StreamExists, vec![e("Noted")])
        .unwrap();
    assert_eq!(exists.version, Some(3));
    let any = b
        .append_to_stream("order-3", ExpectedVersion::Any, vec![e("Placed")])
        .unwrap();
    assert_eq!(any.version, Some(0));
    assert_eq!(b.current_version("order-1").unwrap(), Some(3));
    assert_eq!(b.current_version("order-2").unwrap(), None);
    // Nothing the failed appends tried is there.
    let order1 = b
        .read_stream_page("order-1", 0, Direction::Forwards, 100)
        .unwrap();
    assert_eq!(types(&order1), ["Placed", "Paid", "Shipped", "Noted"]);
    // The engine's streams and unusable names are refused by a plain append.
    let reserved = b.append_to_stream("$checkpoint-x", ExpectedVersion::Any, vec![e("X")]);
    assert!(
        matches!(&reserved, Err(e) if e.to_string().contains("$checkpoint-x")),
        "{reserved:?}"
    );
    assert!(
        b.append_to_stream("", ExpectedVersion::Any, vec![e("X")])
            .is_err()
    );
    assert!(
        b.append_to_stream("order-4", ExpectedVersion::Any, vec![e("")])
            .is_err()
    );
    assert_eq!(b.current_version("order-4").unwrap(), None);
}

fn transactions_are_all_or_nothing_and_parts_see_the_parts_before_them<B: Backend>(b: &B) {
    b.append_to_stream("account-a", ExpectedVersion::NoStream, vec![e("Opened")])
        .unwrap();
    let end = b.next_position().unwrap();
    let failed = b.transaction(vec![
        Part::new("account-a", ExpectedVersion::Exact(0), [e("Debited")]),
        Part::new("account-b", ExpectedVersion::Exact(5), [e("Credited")]),
    ]);
    match failed {
        Err(Error::WrongExpectedVersion { stream, actual, .. }) => {
            assert_eq!((stream.as_str(), actual), ("account-b", None))
        }
        other => panic!("expected a conflict on account-b, got {other:?}"),
    }
    assert_eq!(b.next_position().unwrap(), end, "nothing written");
    assert_eq!(b.current_version("account-a").unwrap(), Some(0));
    let results = b
        .transaction(vec![
            Part::new("account-a", ExpectedVersion::Exact(0), [e("Debited")]),
            Part::new("account-b", ExpectedVersion::NoStream, [e("Credited")]),
            Part::new("account-a", ExpectedVersion::Exact(1), [e("Charged")]),
            Part::new("account-b", ExpectedVersion::Exact(0), []),
        ])
        .unwrap();
    let versions: Vec<_> = results.iter().map(|r| r.version).collect();
    assert_eq!(versions, [Some(1), Some(0), Some(2), Some(0)]);
    let after = b.read_all_page(end, Direction::Forwards, 100).unwrap();
    assert_eq!(streams(&after), ["account-a", "account-b", "account-a"]);
    for (r, ev) in results.iter().zip(&after) {
        assert_eq!(
            (r.first_position, r.last_position),
            (ev.position(), ev.position())
        );
    }
    for pair in after.windows(2) {
        assert!(pair[0].next_position() <= pair[1].position());
    }
    // An empty transaction is a no-op; a check-only part that fails fails the whole.
    assert!(b.transaction(vec![]).unwrap().is_empty());
    wrong_version(
        b.transaction(vec![
            Part::new("account-c", ExpectedVersion::Any, [e("Opened")]),
            Part::new("account-a", ExpectedVersion::NoStream, []),
        ]),
        Some(2),
    );
    assert_eq!(b.current_version("account-c").unwrap(), None);
}

fn reappends_by_event_id_are_idempotent_and_misplaced_ids_are_refused<B: Backend>(b: &B) {
    let events = vec![e("Added"), e("Added")];
    let first = b
        .append_to_stream("cart-1", ExpectedVersion::NoStream, events.clone())
        .unwrap();
    let end = b.next_position().unwrap();
    let again = b
        .append_to_stream("cart-1", ExpectedVersion::NoStream, events.clone())
        .unwrap();
    assert_eq!(
        (again.version, again.first_position, again.last_position),
        (first.version, first.first_position, first.last_position)
    );
    assert_eq!(b.next_position().unwrap(), end, "the retry wrote nothing");
    // Some stored, some not; stored elsewhere; twice in one append: refused.
    let partly = b.append_to_stream(
        "cart-1",
        ExpectedVersion::Exact(1),
        vec![events[1].clone(), e("Removed")],
    );
    assert!(
        matches!(partly, Err(Error::DuplicateEventId { .. })),
        "{partly:?}"
    );
    let elsewhere = b.append_to_stream("cart-2", ExpectedVersion::Any, vec![events[0].clone()]);
    assert!(
        matches!(elsewhere, Err(Error::DuplicateEventId { .. })),
        "{elsewhere:?}"
    );
    let twice = e("X");
    let dup = b.append_to_stream("cart-3", ExpectedVersion::Any, vec![twice.clone(), twice]);
    assert!(
        matches!(dup, Err(Error::DuplicateEventId { .. })),
        "{dup:?}"
    );
    assert_eq!(b.next_position().unwrap(), end);
    // A whole transaction retried answers the same and writes nothing.
    let parts = vec![
        Part::new("cart-4", ExpectedVersion::NoStream, [e("Added")]),
        Part::new("cart-5", ExpectedVersion::NoStream, [e("Added")]),
    ];
    let once = b.transaction(parts.clone()).unwrap();
    let end = b.next_position().unwrap();
    let twice = b.transaction(parts).unwrap();
    assert_eq!(
        once.iter()
            .map(|r| (r.version, r.first_position))
            .collect::<Vec<_>>(),
        twice
            .iter()
            .map(|r| (r.version, r.first_position))
            .collect::<Vec<_>>()
    );
    assert_eq!(b.next_position().unwrap(), end);
    let cart1 = b
        .read_stream_page("cart-1", 0, Direction::Forwards, 10)
        .unwrap();
    assert_eq!(cart1.len(), 2);
}

fn reads_by_stream_all_category_and_type_in_both_directions<B: Backend>(b: &B) {
    for (stream, kind) in [
        ("order-1", "Placed"),
        ("order-1", "Paid"),
        ("cart-1", "Added"),
        ("order-2", "Placed"),
        ("order-1", "Shipped"),
    ] {
        b.append_to_stream(stream, ExpectedVersion::Any, vec![e(kind)])
            .unwrap();
    }
    b.save_checkpoint("reader", Position::START).unwrap();
    let fw = Direction::Forwards;
    let bw = Direction::Backwards;
    // By stream.
    let s = |from, dir, limit| b.read_stream_page("order-1", from, dir, limit).unwrap();
    assert_eq!(types(&s(0, fw, 100)), ["Placed", "Paid", "Shipped"]);
    assert_eq!(types(&s(1, fw, 100)), ["Paid", "Shipped"]);
    assert_eq!(types(&s(u64::MAX, bw, 100)), ["Shipped", "Paid", "Placed"]);
    assert_eq!(types(&s(1, bw, 1)), ["Paid"]);
    assert!(s(u64::MAX, fw, 100).is_empty());
    assert!(s(0, fw, 0).is_empty());
    assert!(
        b.read_stream_page("nothing-here", 0, fw, 10)
            .unwrap()
            .is_empty()
    );
    // The whole order, without the engine's records; with them in the log.
    let all = b.read_all_page(Position::START, fw, 100).unwrap();
    assert_eq!(
        streams(&all),
        ["order-1", "order-1", "cart-1", "order-2", "order-1"]
    );
    for pair in all.windows(2) {
        assert!(pair[0].position() < pair[1].position());
        assert!(pair[0].next_position() <= pair[1].position());
    }
    let back = b.read_all_page(Position::END, bw, 100).unwrap();
    assert_eq!(
        back.iter().map(|e| e.id()).collect::<Vec<_>>(),
        all.iter().rev().map(|e| e.id()).collect::<Vec<_>>()
    );
    let from_third = b.read_all_page(all[2].position(), fw, 2).unwrap();
    assert_eq!(streams(&from_third), ["cart-1", "order-2"]);
    let before_third = b.read_all_page(all[2].position(), bw, 100).unwrap();
    assert_eq!(streams(&before_third), ["cart-1", "order-1", "order-1"]);
    assert!(
        b.read_all_page(Position::new(u64::MAX), fw, 10)
            .unwrap()
            .is_empty()
    );
    let log = b.read_log_page(Position::START, fw, 100).unwrap();
    assert_eq!(log.len(), all.len() + 1);
    assert!(log.last().unwrap().stream().starts_with('$'));
    // By category and by type, both ways.
    let orders = b
        .read_category_page("order", Position::START, fw, 100)
        .unwrap();
    assert_eq!(
        streams(&orders),
        ["order-1", "order-1", "order-2", "order-1"]
    );
    let newest = b.read_category_page("order", Position::END, bw, 2).unwrap();
    assert_eq!(types(&newest), ["Shipped", "Placed"]);
    assert_eq!(streams(&newest), ["order-1", "order-2"]);
    let placed = b
        .read_event_type_page("Placed", Position::START, fw, 100)
        .unwrap();
    assert_eq!(streams(&placed), ["order-1", "order-2"]);
    let placed_back = b
        .read_event_type_page("Placed", Position::END, bw, 100)
        .unwrap();
    assert_eq!(streams(&placed_back), ["order-2", "order-1"]);
    let after_first = b
        .read_event_type_page("Placed", placed[0].next_position(), fw, 100)
        .unwrap();
    assert_eq!(streams(&after_first), ["order-2"]);
    assert_eq!(
        b.last_of("order-1").unwrap().unwrap().event_type(),
        "Shipped"
    );
    assert!(b.last_of("order-9").unwrap().is_none());
}

fn every_field_of_an_event_reads_back<B: Backend>(b: &B) {
    let id = uuid::Uuid::now_v7();
    let (corr, cause) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let raw = NewEvent::new("Scanned", vec![0u8, 159, 146, 150, b'$', 0xFF])
        .with_id(id)
        .with_metadata(vec![0u8, 255, 7])
        .with_schema_version(3)
        .with_timestamp(UNIX_EPOCH + Duration::from_nanos(1_234_567_890_123_456_789))
        .with_correlation_id(corr)
        .with_causation_id(cause)
        .published(true);
    let json = NewEvent::json("Noted", &serde_json::json!({"n": 1, "text": "ü"})).unwrap();
    b.append_to_stream(
        "scan-1",
        ExpectedVersion::NoStream,
        vec![raw.clone(), json.clone()],
    )
    .unwrap();
    let got = b
        .read_stream_page("scan-1", 0, Direction::Forwards, 10)
        .unwrap();
    let r = &got[0];
    assert_eq!((r.stream(), r.version(), r.id()), ("scan-1", 0, id));
    assert_eq!((r.event_type(), r.schema_version()), ("Scanned", 3));
    assert_eq!(r.payload(), &raw.payload[..]);
    assert_eq!(r.metadata(), &[0u8, 255, 7][..]);
    assert_eq!(r.timestamp(), raw.timestamp);
    assert_eq!(
        (r.correlation_id(), r.causation_id()),
        (Some(corr), Some(cause))
    );
    assert!(r.is_published());
    assert_eq!(r.encoding(), raw.encoding);
    let j = &got[1];
    assert_eq!(j.encoding(), PayloadEncoding::Json);
    assert_eq!(j.payload(), &json.payload[..]);
    assert_eq!((j.correlation_id(), j.is_published()), (None, false));
    assert_eq!(j.timestamp(), json.timestamp);
    assert_eq!(
        b.event_json(j).unwrap().0,
        String::from_utf8(json.payload.to_vec()).unwrap()
    );
}

fn synchronous_subscriptions_see_each_new_event_once_in_order<B: Backend>(b: &B) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let orders = b.add_subscription(
        "orders",
        Filter::Category("order".into()),
        Arc::new(move |e: &RecordedEvent| {
            sink.lock()
                .unwrap()
                .push(format!("{} {}", e.stream(), e.event_type()));
            Ok(())
        }),
    );
    b.add_subscription(
        "flaky",
        Filter::EventType("Paid".into()),
        Arc::new(|_: &RecordedEvent| Err("the mail server is down".into())),
    );
    let r = b
        .append_to_stream(
            "order-1",
            ExpectedVersion::NoStream,
            vec![e("Placed"), e("Paid")],
        )
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), ["order-1 Placed", "order-1 Paid"]);
    assert_eq!(r.subscriber_failures.len(), 1);
    let failure = &r.subscriber_failures[0];
    assert_eq!(failure.subscription, "flaky");
    assert_eq!(failure.position, r.last_position);
    assert!(failure.error.contains("mail server"), "{}", failure.error);
    // Another category, and the engine's records, are not handed out.
    b.append_to_stream("cart-1", ExpectedVersion::Any, vec![e("Added")])
        .unwrap();
    b.save_checkpoint("x", Position::START).unwrap();
    let results = b
        .transaction(vec![
            Part::new("order-2", ExpectedVersion::Any, [e("Placed")]),
            Part::new("cart-1", ExpectedVersion::Any, [e("Added")]),
            Part::new("order-1", ExpectedVersion::Any, [e("Shipped")]),
        ])
        .unwrap();
    assert!(results.iter().all(|r| r.subscriber_failures.is_empty()));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "order-1 Placed",
            "order-1 Paid",
            "order-2 Placed",
            "order-1 Shipped"
        ]
    );
    assert!(b.remove_subscription(orders));
    assert!(!b.remove_subscription(orders));
    b.append_to_stream("order-3", ExpectedVersion::Any, vec![e("Placed")])
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 4, "unsubscribed");
    // Concurrent appends: every event once, in log order.
    let log_before = b.next_position().unwrap();
    let seen: Arc<Mutex<Vec<uuid::Uuid>>> = Arc::default();
    let sink = seen.clone();
    b.add_subscription(
        "all",
        Filter::All,
        Arc::new(move |e: &RecordedEvent| {
            sink.lock().unwrap().push(e.id());
            Ok(())
        }),
    );
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for _ in 0..10 {
                    b.append_to_stream(&format!("load-{t}"), ExpectedVersion::Any, vec![e("Tick")])
                        .unwrap();
                }
            });
        }
    });
    let logged: Vec<_> = b
        .read_all_page(log_before, Direction::Forwards, 1000)
        .unwrap()
        .iter()
        .map(|e| e.id())
        .collect();
    assert_eq!(logged.len(), 40);
    assert_eq!(*seen.lock().unwrap(), logged);
}

fn catch_up_resumes_at_its_checkpoint_and_projects<B: Backend>(b: &B) {
    for i in 0..5 {
        b.append_to_stream(
            &format!("order-{i}"),
            ExpectedVersion::Any,
            vec![e("Placed")],
        )
        .unwrap();
        b.append_to_stream("cart-1", ExpectedVersion::Any, vec![e("Added")])
            .unwrap();
    }
    let mut f = Follower::new(b, "orders", Filter::Category("order".into())).unwrap();
    assert_eq!(f.checkpointed(), None);
    let first = f.poll(2).unwrap();
    assert_eq!(streams(&first), ["order-0", "order-1"]);
    let rest = f.poll(100).unwrap();
    assert_eq!(streams(&rest), ["order-2", "order-3", "order-4"]);
    assert!(f.poll(100).unwrap().is_empty());
    f.checkpoint().unwrap();
    let at = f.position();
    assert_eq!(b.load_checkpoint("orders").unwrap(), Some(at));
    drop(f);
    // The checkpoint is an engine record: not in the global order.
    assert!(
        b.read_all_page(Position::START, Direction::Forwards, 100)
            .unwrap()
            .iter()
            .all(|e| !e.stream().starts_with('$'))
    );
    b.append_to_stream("order-5", ExpectedVersion::Any, vec![e("Placed")])
        .unwrap();
    let mut again = Follower::new(b, "orders", Filter::Category("order".into())).unwrap();
    assert_eq!(again.checkpointed(), Some(at));
    assert_eq!(streams(&again.poll(100).unwrap()), ["order-5"]);
    // Not checkpointed: handed out again by the next handle (at least once).
    let mut third = Follower::new(b, "orders", Filter::Category("order".into())).unwrap();
    assert_eq!(third.poll(100).unwrap().len(), 1);
    // A projection: caught up in batches, checkpointed, then nothing more to do.
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    let mut p = Follower::new(b, "counts", Filter::All).unwrap();
    let handled = p
        .project(&mut counts, 3, |c, e| {
            *c.entry(e.event_type().to_owned()).or_default() += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(handled, 11);
    assert_eq!((counts["Placed"], counts["Added"]), (6, 5));
    let mut p = Follower::new(b, "counts", Filter::All).unwrap();
    assert_eq!(p.project(&mut counts, 3, |_, _| Ok(())).unwrap(), 0);
    // A failing projection keeps its place: the failed batch comes again.
    b.append_to_stream("order-6", ExpectedVersion::Any, vec![e("Placed")])
        .unwrap();
    let mut p = Follower::new(b, "counts", Filter::All).unwrap();
    let failed = p.project(&mut counts, 3, |_, _| {
        Err(Error::InvalidArgument("no".into()))
    });
    assert!(failed.is_err());
    let handled = p.project(&mut counts, 3, |_, _| Ok(())).unwrap();
    assert_eq!(handled, 1);
}

fn the_outbox_delivers_published_events_in_order_and_parks_failures<B: Backend>(b: &B) {
    let registered = |email: &str| {
        NewEvent::json("UserRegistered", &serde_json::json!({ "email": email }))
            .unwrap()
            .published(true)
    };
    b.append_to_stream("user-1", ExpectedVersion::Any, vec![registered("a@x")])
        .unwrap();
    b.append_to_stream("user-1", ExpectedVersion::Any, vec![e("Noted")])
        .unwrap();
    b.append_to_stream("user-2", ExpectedVersion::Any, vec![registered("b@x")])
        .unwrap();
    let mut sent = Vec::new();
    let mut outbox = Outbox::new(
        b,
        "broker",
        |m: &OutboxMessage| {
            sent.push(m.envelope.clone());
            Ok(())
        },
        OutboxOptions::default(),
    )
    .unwrap();
    let report = outbox.run_once().unwrap();
    assert_eq!((report.delivered, report.caught_up), (2, true));
    drop(outbox);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].message_type, "UserRegistered_v1");
    assert!(sent[0].payload.contains("a@x") && sent[1].payload.contains("b@x"));
    // Progress is kept: a new outbox of the same name delivers only what is new.
    b.append_to_stream("user-3", ExpectedVersion::Any, vec![registered("c@x")])
        .unwrap();
    let mut later = Vec::new();
    let mut outbox = Outbox::new(
        b,
        "broker",
        |m: &OutboxMessage| {
            later.push(m.event.stream().to_owned());
            Ok(())
        },
        OutboxOptions::default(),
    )
    .unwrap();
    assert_eq!(outbox.run_once().unwrap().delivered, 1);
    drop(outbox);
    assert_eq!(later, ["user-3"]);
    // A publisher that keeps failing: retried, then parked; replayed once it works.
    let options = OutboxOptions {
        max_attempts: 2,
        backoff: Duration::ZERO,
        ..OutboxOptions::default()
    };
    let mut down =
        Outbox::new(b, "webhook", |_: &OutboxMessage| Err("503".into()), options).unwrap();
    let first = down.run_once().unwrap();
    assert_eq!((first.delivered, first.parked), (0, 0));
    assert_eq!(first.last_error.as_deref(), Some("503"));
    let mut parked = 0;
    for _ in 0..10 {
        parked += down.run_once().unwrap().parked;
    }
    assert_eq!(
        parked, 3,
        "each of the three published events, after two attempts"
    );
    assert_eq!(down.parked().unwrap().len(), 3);
    drop(down);
    let mut up = Outbox::new(b, "webhook", |_: &OutboxMessage| Ok(()), options).unwrap();
    assert_eq!(up.parked().unwrap().len(), 3, "parked events are kept");
    let (replayed, failed) = up.replay_parked().unwrap();
    assert_eq!((replayed, failed.len()), (3, 0));
    assert!(up.parked().unwrap().is_empty());
    assert_eq!(up.run_once().unwrap().delivered, 0, "nothing is due twice");
}

fn the_repository_the_bus_and_the_unit_of_work_run_unchanged<B: Backend + EventStore + 'static>(
    b: &B,
) {
    let repo = Repository::<Counter, _>::new(b);
    assert_eq!(repo.create("a", add(2)).unwrap(), 2);
    assert_eq!(repo.update("a", add(3)).unwrap(), 5);
    assert!(matches!(
        repo.create("a", add(1)),
        Err(e) if e.is_conflict()
    ));
    assert!(matches!(
        repo.update("nope", add(1)),
        Err(DomainError::NotFound { .. })
    ));
    // A conflict between two loaded copies.
    let mut one = repo.get("a").unwrap();
    let mut two = repo.get("a").unwrap();
    one.add(1).unwrap();
    two.add(1).unwrap();
    repo.save(&mut one).unwrap();
    assert!(matches!(
        repo.save(&mut two),
        Err(Error::WrongExpectedVersion { .. })
    ));
    assert_eq!(repo.get("a").unwrap().total, 6);
    // A command, its listeners and queued commands: one atomic append.
    seed_counter(b, "x", 1);
    let bus = bank::<B>();
    let before = b.next_position().unwrap();
    let mut uow = UnitOfWork::new(b);
    let total: u64 = bus
        .handle(
            Transfer {
                from: "x".into(),
                to: "y".into(),
                n: 5,
            },
            &mut uow,
        )
        .unwrap();
    assert_eq!(total, 5);
    assert_eq!(
        b.next_position().unwrap(),
        before,
        "nothing before the commit"
    );
    let results = uow.commit().unwrap();
    assert_eq!(results.len(), 4);
    let after = b.read_all_page(before, Direction::Forwards, 100).unwrap();
    assert_eq!(
        streams(&after),
        ["counter-x", "counter-y", "ledger-main", "counter-audit"]
    );
    // A rejected command saves nothing.
    let before = b.next_position().unwrap();
    let refused = bus.execute::<_, u64>(
        Transfer {
            from: "missing".into(),
            to: "y".into(),
            n: 1,
        },
        b,
    );
    assert!(refused.is_err());
    assert_eq!(b.next_position().unwrap(), before);
}

fn workflows_hand_each_dispatched_command_to_its_handler_once<B: Backend + EventStore + 'static>(
    b: &B,
) {
    let handled = Arc::new(AtomicUsize::new(0));
    let bus = shop_for::<B>(handled.clone());
    place(&bus, b, 1, false);
    place(&bus, b, 2, true);
    let relay = CommandRelay::new("shipping").unwrap();
    let report = relay.run(&bus, b).unwrap();
    assert_eq!((report.handled, report.failed.len()), (1, 1));
    assert!(report.failed[0].error.contains("refused order 2"));
    assert_eq!(relay.run(&bus, b).unwrap().handled, 0, "once");
    place(&bus, b, 3, false);
    assert_eq!(relay.run(&bus, b).unwrap().handled, 1);
    assert_eq!(handled.load(Ordering::SeqCst), 3);
    let repo = Repository::<Order, _>::new(b);
    assert!(repo.get("1").unwrap().shipped);
    assert!(!repo.get("2").unwrap().shipped);
    assert!(repo.get("3").unwrap().shipped);
}

fn the_seeds_examples_behave_as_their_tests_say<B: Backend + EventStore + 'static>(b: &B) {
    // event_sourcery's light switch.
    let switches = Repository::<LightSwitch, _>::new(b);
    switches.create("kitchen", LightSwitch::turn_on).unwrap();
    assert!(matches!(
        switches.update("kitchen", LightSwitch::turn_on),
        Err(DomainError::Rejected(LightSwitchError::AlreadyTurnedOn))
    ));
    switches.update("kitchen", LightSwitch::turn_off).unwrap();
    assert!(!switches.get("kitchen").unwrap().shines());
    assert_eq!(b.current_version("light_switch-kitchen").unwrap(), Some(1));
    // messagebus's reading club: a book registers once; its ISBN is claimed.
    let bus = reading_club::bus::<B>();
    let () = bus.execute(register_book_cmd(), b).unwrap();
    let mut twin = register_book_cmd();
    twin.id = uuid::Uuid::from_u128(2);
    let again: Result<(), _> = bus.execute(twin, b);
    let err = again.unwrap_err();
    assert!(
        err.to_string()
            .contains(&BookRepositoryError::IntegrityError.to_string()),
        "{err}"
    );
    let registered = b
        .read_event_type_page(
            <BookRegistered as EventType>::NAME,
            Position::START,
            Direction::Forwards,
            10,
        )
        .unwrap();
    assert_eq!(registered.len(), 1);
}

// Found in review.

/// A retry of a whole transaction (same event ids) answers as the first try did, check-only
/// parts included: their expected versions are checked and their versions reported.
fn a_retried_transaction_checks_its_empty_parts_as_the_first_try_did<B: Backend>(b: &B) {
    b.append_to_stream("acct-1", ExpectedVersion::NoStream, vec![e("Opened")])
        .unwrap();
    let parts = vec![
        Part::new("acct-2", ExpectedVersion::NoStream, [e("Opened")]),
        Part::new("acct-1", ExpectedVersion::Exact(0), []),
    ];
    let once = b.transaction(parts.clone()).unwrap();
    assert_eq!(once[1].version, Some(0));
    let again = b.transaction(parts.clone()).unwrap();
    assert_eq!(
        again.iter().map(|r| r.version).collect::<Vec<_>>(),
        once.iter().map(|r| r.version).collect::<Vec<_>>(),
        "the check-only part of the retry reports the stream's version"
    );
    // The same events with a check-only part that does not hold: refused.
    let mut wrong = parts;
    wrong[1] = Part::new("acct-1", ExpectedVersion::NoStream, []);
    wrong_version(b.transaction(wrong), Some(0));
}

/// `limit` is the page size on both backends: a caller that asks for more than 10,000 events
/// (and pages on "a full page means there may be more") gets them all.
fn a_read_returns_up_to_its_limit_past_ten_thousand_events<B: Backend>(b: &B) {
    let n = 10_001;
    b.append_to_stream(
        "bulk-1",
        ExpectedVersion::NoStream,
        (0..n).map(|_| e("Tick")).collect(),
    )
    .unwrap();
    let fw = Direction::Forwards;
    assert_eq!(b.read_stream_page("bulk-1", 0, fw, n).unwrap().len(), n);
    assert_eq!(b.read_all_page(Position::START, fw, n).unwrap().len(), n);
    assert_eq!(
        b.read_stream_page("bulk-1", 0, fw, usize::MAX)
            .unwrap()
            .len(),
        n
    );
}

/// A checkpoint (or outbox progress) record retried with its event id after a newer one
/// superseded it is the earlier append, not a new newest record: the checkpoint must not go
/// back.
fn a_retried_superseded_record_does_not_replace_the_newest<B: Backend>(b: &B) {
    b.append_to_stream(
        "order-1",
        ExpectedVersion::Any,
        vec![e("Placed"), e("Paid")],
    )
    .unwrap();
    let record = |p: u64| {
        NewEvent::new(
            annals::records::CHECKPOINT,
            annals::records::encode_position(p).to_vec(),
        )
    };
    let old = record(1);
    let stream = annals::records::checkpoint_stream("mailer");
    b.transaction(vec![Part::new(
        &stream,
        ExpectedVersion::Any,
        [old.clone()],
    )])
    .unwrap();
    b.transaction(vec![Part::new(&stream, ExpectedVersion::Any, [record(2)])])
        .unwrap();
    assert_eq!(b.load_checkpoint("mailer").unwrap(), Some(Position::new(2)));
    // The first save is retried (its answer was lost): nothing changes.
    let end = b.next_position().unwrap();
    let _ = b.transaction(vec![Part::new(&stream, ExpectedVersion::Any, [old])]);
    assert_eq!(
        b.load_checkpoint("mailer").unwrap(),
        Some(Position::new(2)),
        "the retried older checkpoint became the newest"
    );
    assert_eq!(b.next_position().unwrap(), end, "the retry wrote nothing");
}

/// What one backend stores, the other stores too: timestamps after 2262 and schema versions up
/// to `u32::MAX` are values a `NewEvent` may hold.
fn every_value_an_event_may_hold_reads_back<B: Backend>(b: &B) {
    let late = UNIX_EPOCH + Duration::from_secs(10_000_000_000); // the year 2286
    let a = b.append_to_stream(
        "clock-1",
        ExpectedVersion::Any,
        vec![e("Tick").with_timestamp(late)],
    );
    assert!(a.is_ok(), "{a:?}");
    let got = b
        .read_stream_page("clock-1", 0, Direction::Forwards, 1)
        .unwrap();
    assert_eq!(got[0].timestamp(), late);
    let v = b.append_to_stream(
        "clock-2",
        ExpectedVersion::Any,
        vec![e("Tick").with_schema_version(u32::MAX)],
    );
    assert!(v.is_ok(), "{v:?}");
}

/// A follower that has caught up is at the end of the log, past its own checkpoint record: so
/// its `wait` waits for a new event instead of returning at once, forever (a follow loop of
/// `wait` and `poll` would spin).
fn a_caught_up_follower_is_past_its_own_checkpoint<B: Backend>(b: &B) {
    b.append_to_stream("order-1", ExpectedVersion::Any, vec![e("Placed")])
        .unwrap();
    let mut f = Follower::new(b, "mailer", Filter::All).unwrap();
    assert_eq!(f.poll(100).unwrap().len(), 1);
    f.checkpoint().unwrap();
    assert!(f.poll(100).unwrap().is_empty());
    assert_eq!(
        f.position(),
        b.next_position().unwrap(),
        "caught up, yet its position is before its own checkpoint record"
    );
}

/// An outbox with nothing to deliver records no progress: otherwise each round's progress
/// record is the next round's "progress" (it moves past it), and a runner, whose
/// `wait_past` returns at once because of that record, writes one record per round forever.
fn an_idle_outbox_writes_nothing<B: Backend>(b: &B) {
    let published = NewEvent::json("UserRegistered", &serde_json::json!({ "email": "a@x" }))
        .unwrap()
        .published(true);
    b.append_to_stream("user-1", ExpectedVersion::Any, vec![published])
        .unwrap();
    let mut outbox = Outbox::new(
        b,
        "broker",
        |_: &OutboxMessage| Ok(()),
        OutboxOptions::default(),
    )
    .unwrap();
    let first = outbox.run_once().unwrap();
    assert_eq!((first.delivered, first.caught_up), (1, true));
    let end = b.next_position().unwrap();
    for _ in 0..3 {
        let r = outbox.run_once().unwrap();
        assert_eq!(r.delivered, 0);
    }
    assert_eq!(
        b.next_position().unwrap(),
        end,
        "idle rounds of the outbox wrote progress records"
    );
}

// Found by a user's trial of the PostgreSQL backend.

/// The repository's snapshots are kept (on PostgreSQL they were silently dropped) and used
/// when loading; they are engine records, not in the global order.
fn snapshots_are_kept_and_used_by_the_repository<B: Backend + EventStore + 'static>(b: &B) {
    let repo = Repository::<Counter, _>::new(b).with_snapshots(10);
    repo.create("a", add(1)).unwrap();
    for _ in 0..24 {
        repo.update("a", add(1)).unwrap();
    }
    let (at, schema, _) = b.latest_snapshot("counter-a").unwrap().expect("a snapshot");
    assert_eq!((at, schema), (19, 1), "the latest multiple of 10 events");
    let c = repo.get("a").unwrap();
    assert_eq!((c.total, c.version()), (25, Some(24)));
    assert_eq!(
        c.applied, 25,
        "the snapshot's count plus the 5 later events"
    );
    // A snapshot is believed (an optimisation, never checked): proof that loading used it.
    let fake = Counter {
        total: 1000,
        applied: 1000,
        ..Counter::default()
    };
    let bytes = bincode::serde::encode_to_vec(&fake, bincode::config::standard()).unwrap();
    b.store_snapshot("counter-a", 19, 1, bytes).unwrap();
    assert_eq!(repo.get("a").unwrap().total, 1005);
    // ... and a repository without snapshots reads only the events.
    assert_eq!(Repository::<Counter, _>::new(b).get("a").unwrap().total, 25);
    assert!(
        b.read_all_page(Position::START, Direction::Forwards, 1000)
            .unwrap()
            .iter()
            .all(|e| !e.stream().starts_with('$'))
    );
    assert_eq!(b.latest_snapshot("counter-none").unwrap(), None);
}

/// Generic code subscribes with a closure, as on either store's own `subscribe`.
fn the_generic_subscribe_takes_a_closure<B: Backend>(b: &B) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let id = Backend::subscribe(b, "count", Filter::All, move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    b.append_to_stream("tick-1", ExpectedVersion::Any, vec![e("Tick"), e("Tick")])
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert!(b.remove_subscription(id));
}
