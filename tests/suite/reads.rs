//! Reads and subscriptions that users of other event stores expect: catch-up to one stream,
//! from now and from a point in time; filters on reads, catch-up and synchronous subscriptions
//! (each event once); bounded reads in both directions. Each checked against a model: the
//! whole log, filtered in the test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use annals::subscriptions::{CatchUpStart, Filter};
use annals::{Direction, ExpectedVersion, NewEvent, Position, RecordedEvent, Store};

const STREAMS: [&str; 5] = ["order-1", "order-2", "cart-1", "cartography-9", "invoice-1"];
const TYPES: [&str; 4] = ["OrderPlaced", "OrderPaid", "ItemAdded", "DraftSaved"];

/// 200 events over 5 streams and 4 types, an hour apart from `T0`, with checkpoints between.
fn filled(dir: &std::path::Path) -> Store {
    let store = Store::open(dir.join("reads")).unwrap();
    for i in 0..200u64 {
        let e = NewEvent::new(TYPES[(i % 4) as usize], i.to_string())
            .with_timestamp(t0() + Duration::from_secs(3600 * i));
        store
            .append(STREAMS[(i % 5) as usize], ExpectedVersion::Any, [e])
            .unwrap();
        if i % 50 == 0 {
            let mut sub = store
                .catch_up("noise", CatchUpStart::Beginning, Filter::All)
                .unwrap();
            sub.poll(7).unwrap();
            sub.checkpoint().unwrap();
        }
    }
    store
}

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn everything(store: &Store) -> Vec<RecordedEvent> {
    store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn payloads(events: &[RecordedEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.payload().to_vec()).unwrap())
        .collect()
}

fn filters() -> Vec<Filter> {
    vec![
        Filter::All,
        Filter::Stream("order-1".into()),
        Filter::Streams(vec!["order-2".into(), "cart-1".into(), "nope".into()]),
        Filter::StreamPrefix("cart".into()),
        Filter::Category("cart".into()),
        Filter::EventTypePrefix("Order".into()),
        Filter::EventTypes(vec!["ItemAdded".into(), "DraftSaved".into()]),
        // Overlapping parts: each event once.
        Filter::StreamPrefix("order-".into())
            .or(Filter::EventType("OrderPaid".into()))
            .or(Filter::Stream("order-1".into())),
        Filter::All.except(Filter::EventTypePrefix("Draft".into())),
        Filter::StreamPrefix("order".into()).and(Filter::EventType("OrderPaid".into())),
        Filter::AnyOf(vec![]),
    ]
}

#[test]
fn filtered_reads_catch_up_and_subscriptions_agree_with_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(dir.path());
    let all = everything(&store);
    assert_eq!(all.len(), 200);
    for filter in filters() {
        let model: Vec<_> = all.iter().filter(|e| filter.matches(e)).cloned().collect();
        let read: Vec<_> = store
            .read_all(Position::START, Direction::Forwards, usize::MAX)
            .unwrap()
            .matching(filter.clone())
            .map(Result::unwrap)
            .collect();
        assert_eq!(payloads(&read), payloads(&model), "{filter:?} forwards");
        let mut back: Vec<_> = store
            .read_all(Position::END, Direction::Backwards, usize::MAX)
            .unwrap()
            .matching(filter.clone())
            .map(Result::unwrap)
            .collect();
        back.reverse();
        assert_eq!(payloads(&back), payloads(&model), "{filter:?} backwards");
        // A limit counts the events that pass.
        let first3 = store
            .read_all(Position::START, Direction::Forwards, 3)
            .unwrap()
            .matching(filter.clone())
            .count();
        assert_eq!(first3, model.len().min(3), "{filter:?}");
        // Catch-up, in small polls.
        let mut sub = store
            .catch_up("f", CatchUpStart::Beginning, filter.clone())
            .unwrap();
        let mut got = Vec::new();
        loop {
            let batch = sub.poll(4).unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend(batch);
        }
        assert_eq!(payloads(&got), payloads(&model), "{filter:?} catch-up");
    }
    // Sample filters by hand, so the model's own filter is checked too.
    let order_1 = Filter::Stream("order-1".into());
    assert_eq!(all.iter().filter(|e| order_1.matches(e)).count(), 40);
    let cart = Filter::StreamPrefix("cart".into());
    assert_eq!(all.iter().filter(|e| cart.matches(e)).count(), 80);
    let not_drafts = Filter::All.except(Filter::EventTypePrefix("Draft".into()));
    assert_eq!(all.iter().filter(|e| not_drafts.matches(e)).count(), 150);
}

#[test]
fn a_synchronous_subscription_with_overlapping_filters_gets_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("sync")).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let filter = Filter::Stream("order-1".into())
        .or(Filter::EventTypePrefix("Order".into()))
        .or(Filter::StreamPrefix("order-".into()));
    store.subscribe(
        "once",
        filter.except(Filter::EventType("OrderVoided".into())),
        move |e| {
            s.lock().unwrap().push(e.event_type().to_owned());
            Ok(())
        },
    );
    for (stream, t) in [
        ("order-1", "OrderPlaced"),
        ("order-1", "OrderVoided"),
        ("cart-1", "OrderLike"),
        ("cart-1", "ItemAdded"),
        ("order-2", "Shipped"),
    ] {
        store
            .append(stream, ExpectedVersion::Any, [NewEvent::new(t, "{}")])
            .unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        ["OrderPlaced", "OrderLike", "Shipped"]
    );
}

#[test]
fn catch_up_to_one_stream_from_the_start_now_and_a_point_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(dir.path());
    let one = || Filter::Stream("order-2".into());
    // History, then live.
    let mut sub = store
        .catch_up("one", CatchUpStart::Beginning, one())
        .unwrap();
    let history = sub.poll(usize::MAX).unwrap();
    assert_eq!(history.len(), 40);
    assert!(history.iter().all(|e| e.stream() == "order-2"));
    assert!(
        history
            .windows(2)
            .all(|w| w[1].version() == w[0].version() + 1)
    );
    store
        .append(
            "order-2",
            ExpectedVersion::Any,
            [NewEvent::new("Late", "x")],
        )
        .unwrap();
    store
        .append(
            "order-3",
            ExpectedVersion::Any,
            [NewEvent::new("Other", "y")],
        )
        .unwrap();
    let live = sub.poll(usize::MAX).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].version(), 40);

    // From now: only what comes after.
    let mut now = store.catch_up("now", CatchUpStart::Now, one()).unwrap();
    assert!(now.poll(10).unwrap().is_empty());
    store
        .append(
            "order-2",
            ExpectedVersion::Any,
            [NewEvent::new("Later", "z")],
        )
        .unwrap();
    assert_eq!(now.poll(10).unwrap()[0].event_type(), "Later");

    // From a point in time: the first event at or after it.
    for hours in [0u64, 1, 77, 150, 199] {
        let at = t0() + Duration::from_secs(3600 * hours) - Duration::from_secs(1);
        let mut sub = store
            .catch_up(&format!("t{hours}"), CatchUpStart::Time(at), Filter::All)
            .unwrap();
        let first = sub.poll(1).unwrap();
        assert_eq!(first[0].payload(), hours.to_string().as_bytes(), "{hours}");
    }
    let after_all = t0() + Duration::from_secs(3600 * 500);
    assert_eq!(
        store.position_at_time(after_all).unwrap(),
        store.end_position()
    );
}

#[test]
fn bounded_reads_cover_half_open_ranges_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(dir.path());
    let all = everything(&store);
    let at = |i: usize| all[i].position();
    for (from, stop) in [(0, 10), (5, 6), (17, 150), (0, 199), (42, 42), (100, 50)] {
        // Forwards: [from, stop).
        let got: Vec<_> = store
            .read_all(at(from), Direction::Forwards, usize::MAX)
            .unwrap()
            .until(at(stop))
            .map(Result::unwrap)
            .collect();
        let model: Vec<_> = all
            .iter()
            .filter(|e| e.position() >= at(from) && e.position() < at(stop))
            .cloned()
            .collect();
        assert_eq!(payloads(&got), payloads(&model), "forwards {from}..{stop}");
        // Backwards: [stop, from], newest first.
        let got: Vec<_> = store
            .read_all(at(stop), Direction::Backwards, usize::MAX)
            .unwrap()
            .until(at(from))
            .map(Result::unwrap)
            .collect();
        let mut model: Vec<_> = all
            .iter()
            .filter(|e| e.position() >= at(from) && e.position() <= at(stop))
            .cloned()
            .collect();
        model.reverse();
        assert_eq!(
            payloads(&got),
            payloads(&model),
            "backwards {stop}..={from}"
        );
    }
    // A hostile stop: nothing past the end, everything before it.
    let n = store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .until(Position::new(u64::MAX))
        .count();
    assert_eq!(n, 200);
    let n = store
        .read_log(Position::END, Direction::Backwards, usize::MAX)
        .unwrap()
        .until(Position::new(u64::MAX))
        .count();
    assert_eq!(n, 0);
}

#[test]
fn commit_with_is_atomic_and_refuses_a_second_processor_of_one_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("once")).unwrap();
    let other = Store::open(dir.path().join("other")).unwrap();
    for i in 0..3 {
        store
            .append(
                &format!("order-{i}"),
                ExpectedVersion::NoStream,
                [NewEvent::new("Placed", "{}")],
            )
            .unwrap();
    }
    let orders = || Filter::Category("order".into());
    let mut a = store
        .catch_up("p", CatchUpStart::Beginning, orders())
        .unwrap();
    let mut b = store
        .catch_up("p", CatchUpStart::Beginning, orders())
        .unwrap();
    assert_eq!(a.poll(2).unwrap().len(), 2);
    assert_eq!(b.poll(2).unwrap().len(), 2);
    fn write(s: &Store) -> annals::Transaction<'_> {
        s.transaction()
            .append("out", ExpectedVersion::Any, [NewEvent::new("Out", "1")])
    }
    a.commit_with(write(&store), a.position()).unwrap();
    // The second handle saw no checkpoint: it may not process the same events again.
    assert!(matches!(
        b.commit_with(write(&store), b.position()),
        Err(annals::Error::WrongExpectedVersion { .. })
    ));
    assert_eq!(
        store.stream_version("out").unwrap(),
        Some(0),
        "nothing of the refused commit"
    );
    // A transaction of another store is refused.
    assert!(matches!(
        a.commit_with(write(&other), a.position()),
        Err(annals::Error::InvalidArgument(_))
    ));
    // A failing part writes neither the effects nor the checkpoint.
    let rest = a.poll(10).unwrap();
    assert_eq!(rest.len(), 1);
    let conflict = store.transaction().append(
        "out",
        ExpectedVersion::Exact(7),
        [NewEvent::new("Out", "2")],
    );
    assert!(a.commit_with(conflict, a.position()).is_err());
    let reopened = store
        .catch_up("p", CatchUpStart::Beginning, orders())
        .unwrap();
    assert_eq!(reopened.checkpointed(), a.checkpointed());
    assert_eq!(
        store
            .catch_up("p", CatchUpStart::Beginning, orders())
            .unwrap()
            .poll(10)
            .unwrap()
            .len(),
        1
    );
}

/// Checks a backwards read of `name` against the model: the events `keep` passes at or
/// before `from`, newest first, at most `limit`.
fn same_backwards(
    all: &[RecordedEvent],
    got: annals::read::IndexedEvents<'_>,
    keep: impl Fn(&RecordedEvent) -> bool,
    from: Position,
    limit: usize,
    name: &str,
) {
    let model: Vec<_> = all
        .iter()
        .rev()
        .filter(|e| e.position() <= from && keep(e))
        .take(limit)
        .cloned()
        .collect();
    let got: Vec<_> = got.map(Result::unwrap).collect();
    assert_eq!(
        payloads(&got),
        payloads(&model),
        "{name} from {from:?} limit {limit}"
    );
}

#[test]
fn reads_by_category_and_type_go_backwards_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("back");
    // Flushes every 37 events: runs come from the sidecar and from memory.
    let open = || Store::builder().index_flush_events(37).open(&path).unwrap();
    let store = open();
    for i in 0..300u64 {
        // Runs of several consecutive frames of one category, and single ones.
        let stream = match i % 11 {
            0..=4 => "order-1".to_owned(),
            5 | 6 => format!("cart-{}", i % 3),
            7 => "cartography-1".to_owned(),
            _ => format!("order-{}", i % 4),
        };
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                [NewEvent::new(TYPES[(i % 3) as usize], i.to_string())],
            )
            .unwrap();
    }
    let mut store = Some(store);
    for _reopened in [false, true] {
        let store = store.take().unwrap_or_else(open);
        let all = everything(&store);
        let starts = [
            Position::END,
            Position::START,
            all[0].position(),
            all[150].position(),
            Position::new(all[150].position().as_u64() + 1),
            all[299].position(),
        ];
        for from in starts {
            for limit in [usize::MAX, 1, 7] {
                for c in ["order", "cart", "cartography", "none"] {
                    let got = store.read_category_backwards(c, from, limit).unwrap();
                    let model = |e: &RecordedEvent| annals::category_of(e.stream()) == c;
                    same_backwards(&all, got, model, from, limit, c);
                }
                for t in TYPES {
                    let got = store.read_event_type_backwards(t, from, limit).unwrap();
                    same_backwards(&all, got, |e| e.event_type() == t, from, limit, t);
                }
            }
        }
        let orders = store
            .read_category_backwards("order", Position::END, usize::MAX)
            .unwrap()
            .count();
        // 27 whole cycles of 11, 3 of each cycle elsewhere: 300 - 81.
        assert_eq!(orders, 219, "hand count");
    }
}

#[test]
fn a_processor_whose_batch_does_not_fit_one_commit_takes_fewer_events_at_a_time() {
    use annals::subscriptions::ProjectionOptions;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::builder()
            .segment_size(8 << 20)
            .open(dir.path().join("big"))
            .unwrap(),
    );
    for i in 0..40 {
        store
            .append(
                &format!("order-{i}"),
                ExpectedVersion::NoStream,
                [NewEvent::new("Placed", "{}")],
            )
            .unwrap();
    }
    // Each order makes 600 KB: 40 of them cannot go in one 8 MiB segment's commit.
    let p = store
        .run_processor(
            "copier",
            CatchUpStart::Beginning,
            Filter::Category("order".into()),
            |order, tx| {
                Ok(tx.append(
                    &format!("copy-{}", order.stream()),
                    ExpectedVersion::NoStream,
                    [NewEvent::new("Copied", vec![7u8; 600_000])],
                ))
            },
            ProjectionOptions {
                batch: 40,
                ..ProjectionOptions::default()
            },
        )
        .unwrap();
    let last = store
        .read_category("order", Position::START, usize::MAX)
        .unwrap()
        .last()
        .unwrap()
        .unwrap();
    assert!(
        p.wait_for(last.position(), Duration::from_secs(30))
            .unwrap()
    );
    p.stop().unwrap();
    for i in 0..40 {
        assert_eq!(
            store.stream_version(&format!("copy-order-{i}")).unwrap(),
            Some(0)
        );
    }
}
