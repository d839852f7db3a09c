//! The main job: a real store in a temporary folder. Appends from one and from several threads,
//! in batches and as a multi-stream transaction, shows an optimistic-concurrency conflict, reads
//! everything back, reopens, and prints what it did and how fast.
//!
//! Run: `cargo run --release --example demo`

use std::sync::Arc;
use std::time::Instant;

use annals::{Direction, Error, ExpectedVersion, NewEvent, Position, Store};

const PAYLOAD: &[u8] = br#"{"account":"acc-42","amount":125,"currency":"EUR","memo":"demo payload, 100 bytes.........."}"#;

fn rate(n: u64, started: Instant) -> String {
    let per_sec = n as f64 / started.elapsed().as_secs_f64();
    if per_sec >= 1e6 {
        format!("{:.2} M/s", per_sec / 1e6)
    } else {
        format!("{:.1} k/s", per_sec / 1e3)
    }
}

/// `n` with thousands separators.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("demo");
    println!("annals demo: store at {}.annals", path.display());
    let store = Arc::new(Store::open(&path)?);

    // 0. Warm-up, untimed: right after `cargo build` the disk is still writing back the build's
    // files, and the first syncs of a run can be many times slower than the rest.
    for _ in 0..200 {
        store.append(
            "warm-up",
            ExpectedVersion::Any,
            [NewEvent::new("Tick", "x")],
        )?;
    }

    // 1. One thread, one durable append per event.
    let started = Instant::now();
    let mut expected = ExpectedVersion::NoStream;
    for _ in 0..2_000 {
        expected = store
            .append(
                "account-single",
                expected,
                [NewEvent::new("Deposited", PAYLOAD)],
            )?
            .next_expected();
    }
    println!(
        "  1 thread : 2,000 durable single-event appends      {:>10}",
        rate(2_000, started)
    );

    // 2. Eight threads, each on its own stream with version checks: they share syncs.
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || -> annals::Result<()> {
                let stream = format!("account-{t}");
                let mut expected = ExpectedVersion::NoStream;
                for _ in 0..1_000 {
                    expected = store
                        .append(&stream, expected, [NewEvent::new("Deposited", PAYLOAD)])?
                        .next_expected();
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("appender thread")?;
    }
    println!(
        "  8 threads: 8,000 durable single-event appends      {:>10}",
        rate(8_000, started)
    );

    // 3. Batches of 1,000 events per durable append.
    let started = Instant::now();
    for _ in 0..200 {
        let batch = (0..1_000).map(|_| NewEvent::new("Deposited", PAYLOAD));
        store.append("ledger", ExpectedVersion::Any, batch)?;
    }
    println!(
        "  batches  : 200 x 1,000 events, durable per batch   {:>10}",
        rate(200_000, started)
    );

    // 4. An atomic transfer across two streams, and a conflict that writes nothing.
    let a = store.stream_version("account-0")?;
    let b = store.stream_version("account-1")?;
    store
        .transaction()
        .append(
            "account-0",
            ExpectedVersion::Exact(a.unwrap()),
            [NewEvent::new("Withdrawn", "25")],
        )
        .append(
            "account-1",
            ExpectedVersion::Exact(b.unwrap()),
            [NewEvent::new("Deposited", "25")],
        )
        .commit()?;
    match store.append(
        "account-0",
        ExpectedVersion::Exact(a.unwrap()),
        [NewEvent::new("Withdrawn", "1")],
    ) {
        Err(Error::WrongExpectedVersion {
            expected, actual, ..
        }) => {
            let actual = actual.map_or_else(|| "no stream".to_owned(), |v| format!("version {v}"));
            println!(
                "  conflict : expected version {expected}, the stream is at {actual}: nothing written"
            )
        }
        other => return Err(format!("expected a conflict, got {other:?}").into()),
    }

    // 5. Read back.
    let started = Instant::now();
    let mut n = 0;
    for e in store.read_stream("ledger", 0, Direction::Forwards, usize::MAX)? {
        assert_eq!(e?.payload(), PAYLOAD);
        n += 1;
    }
    println!(
        "  read     : stream `ledger`, {} events          {:>10}",
        thousands(n),
        rate(n, started)
    );
    let started = Instant::now();
    let total = store
        .read_all(Position::START, Direction::Forwards, usize::MAX)?
        .count() as u64;
    println!(
        "  read     : whole log, {} events                {:>10}",
        thousands(total),
        rate(total, started)
    );
    let end = store.end_position();
    drop(store);

    // 6. Reopen: the index covers everything, so nothing is replayed.
    let started = Instant::now();
    let store = Store::open(&path)?;
    let reopen = started.elapsed();
    let again = store
        .read_all(Position::START, Direction::Forwards, usize::MAX)?
        .count() as u64;
    assert_eq!(again, total);
    assert_eq!(store.end_position(), end);
    assert_eq!(store.stream_version("account-0")?, Some(1_000));
    let report = store.recovery_report();
    println!(
        "  reopen   : {:.1} ms, {} events, {} commits replayed, torn tail: {}",
        reopen.as_secs_f64() * 1e3,
        thousands(again),
        report.commits_replayed,
        if report.truncated.is_some() {
            "truncated"
        } else {
            "none"
        }
    );
    println!(
        "  file     : {:.1} MB for {} events (space is prepared ahead of the log, a chunk at a time)",
        std::fs::metadata(store.path())?.len() as f64 / 1e6,
        thousands(total)
    );
    store.close()?;
    println!("done: every acknowledged event read back after reopen");
    Ok(())
}
