//! The two halves of the real-kernel power-loss test (`scripts/powercut.sh`, root only):
//!
//! - `powercut write DIR`: appends to a store in `DIR` until the file system stops it: single
//!   events, batches (up to 1,000 events, so the log grows through its chunks and segments),
//!   and two-stream transactions, from two threads; after each acknowledged append it prints
//!   one line `ack STREAM FIRST_VERSION ID…` to stdout (the script keeps it on another disk).
//! - `powercut check DIR ACKS`: opens the store after the file system was cut and remounted,
//!   and checks that every acknowledged event is there, at its stream and version, and that
//!   the store verifies clean. Exit 0 on success, 1 with the first problem otherwise.
//!
//! Run: `sudo scripts/powercut.sh` (it builds this example).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use annals::{Direction, ExpectedVersion, NewEvent, Position, Store};

fn payload(n: u64) -> Vec<u8> {
    (0..(40 + n % 400)).map(|i| (i ^ n) as u8).collect()
}

fn write(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(
        Store::builder()
            .segment_size(4 << 20)
            .open(dir.join("powercut"))?,
    );
    let out = Arc::new(parking_lot::Mutex::new(std::io::stdout()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let (store, out, stop) = (store.clone(), out.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = t * 1_000_000_000;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let stream = format!("s{t}-{}", n % 17);
                    let size = match n % 200 {
                        0 => 1000,
                        1..=20 => 50,
                        _ => 1,
                    };
                    let events: Vec<NewEvent> = (0..size)
                        .map(|k| NewEvent::new("E", payload(n + k)))
                        .collect();
                    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                    match store.append(&stream, ExpectedVersion::Any, events) {
                        Ok(r) => {
                            let first = r.version.unwrap_or(0) + 1 - size;
                            let mut out = out.lock();
                            let _ = writeln!(out, "ack {stream} {first} {}", ids.join(" "));
                            let _ = out.flush();
                        }
                        Err(e) => {
                            eprintln!("writer {t} stopped: {e}");
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn check(dir: &Path, acks: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(dir.join("powercut"))?;
    // Every stored event: id -> (stream, version), read in place.
    let mut found: HashMap<u128, (String, u64)> = HashMap::new();
    let mut events = store.read_all(Position::START, Direction::Forwards, usize::MAX)?;
    while let Some(e) = events.next_ref() {
        let e = e?;
        found.insert(e.id().as_u128(), (e.stream().to_owned(), e.version()));
    }
    let mut acked = 0u64;
    for line in std::io::BufReader::new(std::fs::File::open(acks)?).lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        if words.next() != Some("ack") {
            continue;
        }
        let (Some(stream), Some(first)) = (words.next(), words.next()) else {
            continue; // a line cut by the kill: never fully acknowledged to anyone
        };
        let first: u64 = first.parse()?;
        for (k, id) in words.enumerate() {
            let id = uuid::Uuid::parse_str(id)?.as_u128();
            match found.get(&id) {
                Some((s, v)) if s == stream && *v == first + k as u64 => acked += 1,
                other => {
                    return Err(format!(
                        "acknowledged event {id:032x} ({stream} version {}) is {other:?} after \
                         the power cut",
                        first + k as u64
                    )
                    .into());
                }
            }
        }
    }
    let report = store.verify(&mut |_, _| {})?;
    if let Some((at, what)) = report.problem {
        return Err(format!("verify: {what} at {at:?}").into());
    }
    let recovery = store.recovery_report();
    println!(
        "ok: {acked} acknowledged events present of {} stored; recovery dropped {:?} bytes",
        found.len(),
        recovery.truncated.as_ref().map(|t| t.dropped_bytes)
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("write") if args.len() == 3 => write(Path::new(&args[2])),
        Some("check") if args.len() == 4 => check(Path::new(&args[2]), Path::new(&args[3])),
        _ => Err("usage: powercut write DIR | powercut check DIR ACKS".into()),
    };
    if let Err(e) = result {
        eprintln!("powercut: {e}");
        std::process::exit(1);
    }
}
