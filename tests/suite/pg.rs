//! What only the PostgreSQL backend has to prove, against a real server (set
//! `ANNALS_PG_URL`; `.ci/run` starts a throwaway server and sets it; without it these tests
//! say they were skipped and pass). The semantics both backends share are proven once, on
//! both, in `backends.rs`. Each test works in a database of its own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::outbox::{Outbox, OutboxMessage, OutboxOptions};
use annals::pg::PgStore;
use annals::subscriptions::Filter;
use annals::{Direction, ExpectedVersion, NewEvent, Position};

use super::backends::pg_store as fresh;

fn e(kind: &'static str) -> NewEvent {
    NewEvent::new(kind, "{}")
}

fn count_rows(url: &str, sql: &str) -> i64 {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn the_schema_is_created_once_by_racing_connects_and_a_newer_one_is_refused() {
    let Some((_, url)) = fresh("pg schema") else {
        return;
    };
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| PgStore::connect(&url).unwrap());
        }
    });
    assert_eq!(count_rows(&url, "SELECT count(*) FROM annals_schema"), 1);
    assert_eq!(count_rows(&url, "SELECT count(*) FROM annals_head"), 1);
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.batch_execute("UPDATE annals_schema SET version = 99")
        .unwrap();
    let newer = PgStore::connect(&url).unwrap_err();
    assert!(newer.to_string().contains("version 99"), "{newer}");
    // A URL that names no server is an error that says so, not a panic or a hang.
    let nowhere = PgStore::connect("host=/nonexistent/socket/dir user=nobody dbname=none");
    let err = nowhere.unwrap_err();
    assert!(matches!(err, annals::Error::Database { .. }), "{err}");
    assert!(PgStore::connect("this is not a connection string = = =").is_err());
}

#[test]
fn positions_count_events_and_checkpoint_records_do_not_pile_up() {
    let Some((store, url)) = fresh("pg positions") else {
        return;
    };
    store
        .append("a-1", ExpectedVersion::Any, [e("A"), e("B")])
        .unwrap();
    let all = store
        .read_all(Position::START, Direction::Forwards, 10)
        .unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position().as_u64()).collect();
    assert_eq!(positions, [1, 2]);
    assert_eq!(all[0].next_position(), all[1].position());
    assert_eq!(store.end_position().unwrap(), Position::new(3));
    let mut sub = store.catch_up("projector").unwrap();
    for _ in 0..3 {
        store.append("a-1", ExpectedVersion::Any, [e("C")]).unwrap();
        sub.poll(10).unwrap();
        sub.checkpoint().unwrap();
    }
    assert_eq!(
        count_rows(
            &url,
            "SELECT count(*) FROM annals_events WHERE stream = '$checkpoint-projector'"
        ),
        1,
        "only the newest checkpoint record is kept"
    );
    assert_eq!(
        store.stream_version("$checkpoint-projector").unwrap(),
        Some(2),
        "its version still counts every record"
    );
    let last = store
        .read_all(Position::END, Direction::Backwards, 1)
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        store.catch_up("projector").unwrap().position(),
        last.next_position(),
        "it resumes just after the last event it handled"
    );
}

#[test]
fn a_callback_that_appends_sees_its_events_next_and_failures_can_be_redelivered() {
    let Some((store, _)) = fresh("pg nested subscriptions") else {
        return;
    };
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    store.subscribe("log", Filter::All, move |e| {
        sink.lock().unwrap().push(e.event_type().to_owned());
        Ok(())
    });
    let inner = store.clone();
    store.subscribe("audit", Filter::EventType("Placed".into()), move |e| {
        inner.append(
            &format!("audit-{}", e.stream()),
            ExpectedVersion::Any,
            [NewEvent::new("Audited", "{}")],
        )?;
        Ok(())
    });
    let flaky_up = Arc::new(Mutex::new(false));
    let up = flaky_up.clone();
    store.subscribe("flaky", Filter::EventType("Paid".into()), move |_| {
        if *up.lock().unwrap() {
            Ok(())
        } else {
            Err("down".into())
        }
    });
    let told: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = told.clone();
    store.on_subscriber_failure(move |f| handler.lock().unwrap().push(f.subscription.clone()));
    let r = store
        .append("order-1", ExpectedVersion::Any, [e("Placed"), e("Paid")])
        .unwrap();
    // The audit event comes right after the event whose callback wrote it.
    assert_eq!(*seen.lock().unwrap(), ["Placed", "Audited", "Paid"]);
    assert_eq!(store.stream_version("audit-order-1").unwrap(), Some(0));
    assert_eq!(r.subscriber_failures.len(), 1);
    assert_eq!(*told.lock().unwrap(), ["flaky"]);
    let failure = &r.subscriber_failures[0];
    assert!(store.redeliver(failure).is_err());
    *flaky_up.lock().unwrap() = true;
    store.redeliver(failure).unwrap();
}

#[test]
fn an_outbox_runner_delivers_live_appends_from_other_connections() {
    let Some((store, url)) = fresh("pg outbox runner") else {
        return;
    };
    let delivered: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = delivered.clone();
    let runner = Outbox::new(
        Arc::new(store.clone()),
        "broker",
        move |m: &OutboxMessage| {
            sink.lock().unwrap().push(m.event.stream().to_owned());
            Ok(())
        },
        OutboxOptions::default(),
    )
    .unwrap()
    .spawn()
    .unwrap();
    let writer = PgStore::connect(&url).unwrap();
    for i in 0..20 {
        writer
            .append(
                &format!("user-{i}"),
                ExpectedVersion::Any,
                [e("Registered").published(i % 2 == 0)],
            )
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.lock().unwrap().len() < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let outbox = runner.stop().unwrap();
    let got = delivered.lock().unwrap().clone();
    let want: Vec<String> = (0..20).step_by(2).map(|i| format!("user-{i}")).collect();
    assert_eq!(got, want, "every published event once, in order");
    let last_published = store
        .read_stream("user-18", 0, Direction::Forwards, 1)
        .unwrap()
        .pop()
        .unwrap();
    assert!(outbox.position() >= last_published.next_position());
}

#[test]
fn a_catch_up_subscription_resumes_at_its_checkpoint_kept_in_the_database() {
    let Some((store, url)) = fresh("pg catch-up") else {
        return;
    };
    for i in 0..10 {
        store
            .append(&format!("s-{}", i % 3), ExpectedVersion::Any, [e("E")])
            .unwrap();
    }
    let mut sub = store.catch_up("projector").unwrap();
    assert_eq!(sub.poll(4).unwrap().len(), 4);
    sub.checkpoint().unwrap();
    assert_eq!(
        sub.poll(2).unwrap().len(),
        2,
        "handed out, not checkpointed"
    );
    drop(sub);
    // Another process (a new connection pool) resumes after the checkpoint.
    let other = PgStore::connect(&url).unwrap();
    let mut sub = other.catch_up("projector").unwrap();
    assert_eq!(sub.position(), Position::new(5));
    let rest = sub.poll(100).unwrap();
    assert_eq!(rest.len(), 6);
    assert_eq!(rest[0].position(), Position::new(5));
    store
        .append("s-9", ExpectedVersion::Any, [e("Late")])
        .unwrap();
    assert_eq!(sub.poll(100).unwrap()[0].event_type(), "Late");
}

const CHILD_URL: &str = "ANNALS_PG_CHILD_URL";
const CHILD_ID: &str = "ANNALS_PG_CHILD_ID";
const PER_WRITER: u64 = 150;

/// A writer process of the no-gap test: appends to its own streams until done.
#[test]
#[ignore = "run by many_writer_processes_and_a_reader_that_sees_every_event_once"]
fn child_pg_writer() {
    let url = std::env::var(CHILD_URL).expect("started by the parent test");
    let id = std::env::var(CHILD_ID).unwrap();
    let store = PgStore::connect(&url).unwrap();
    for i in 0..PER_WRITER {
        let stream = format!("w{id}-{}", i % 3);
        let n = 1 + (i % 3) as usize;
        let events: Vec<_> = (0..n).map(|_| e("Tick")).collect();
        store.append(&stream, ExpectedVersion::Any, events).unwrap();
    }
}

#[test]
fn many_writer_processes_and_a_reader_that_sees_every_event_once() {
    let Some((store, url)) = fresh("pg no gaps") else {
        return;
    };
    let writers = 6;
    let children: Vec<_> = (0..writers)
        .map(|w| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "pg::child_pg_writer",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env(CHILD_URL, &url)
                .env(CHILD_ID, w.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // The reader follows the global order while the writers run.
    let expected_total: u64 = writers * (0..PER_WRITER).map(|i| 1 + i % 3).sum::<u64>();
    let mut seen = Vec::new();
    let mut next = Position::START;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (seen.len() as u64) < expected_total && Instant::now() < deadline {
        let page = store.read_all(next, Direction::Forwards, 500).unwrap();
        if let Some(last) = page.last() {
            next = Position::new(last.position().as_u64() + 1);
        } else {
            std::thread::sleep(Duration::from_millis(2));
        }
        seen.extend(page);
    }
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a writer process failed");
    }
    assert_eq!(
        seen.len() as u64,
        expected_total,
        "every event, none skipped"
    );
    let ids: HashSet<_> = seen.iter().map(|e| e.id()).collect();
    assert_eq!(ids.len(), seen.len(), "none seen twice");
    // In an order consistent with every stream's versions.
    let mut versions: HashMap<String, u64> = HashMap::new();
    for ev in &seen {
        let want = versions.entry(ev.stream().to_owned()).or_insert(0);
        assert_eq!(ev.version(), *want, "{} out of order", ev.stream());
        *want += 1;
    }
    // And the same as a read after the fact.
    let after = store
        .read_all(Position::START, Direction::Forwards, 10_000)
        .unwrap();
    assert_eq!(
        after.iter().map(|e| e.id()).collect::<Vec<_>>(),
        seen.iter().map(|e| e.id()).collect::<Vec<_>>()
    );
    println!(
        "{writers} writer processes, {} events, read live in order, none skipped or repeated",
        seen.len()
    );
}
