//! A store of 10 million events in 100,000 streams: how long it takes to reopen (after a clean
//! close, after a crash, and without its index sidecar) and how much memory the process holds
//! afterwards. Each reopen runs in a fresh process, so its memory figure is its own.
//!
//! Run: `cargo bench -p annals-bench --bench scale`. `ANNALS_SCALE_EVENTS` changes the size,
//! `ANNALS_BENCH_DIR` the disk. Prints a table; asserts nothing about time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use annals::{Direction, Durability, ExpectedVersion, NewEvent, Position, Store};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// In a fresh process: open, time it, read a little, report time and memory.
fn measure(path: &Path, label: &str) {
    let started = Instant::now();
    let store = Store::open(path).unwrap();
    let took = started.elapsed();
    let replayed = store.recovery_report().commits_replayed;
    let rss_open = rss_mib();
    let started = Instant::now();
    let n = store
        .read_stream("account-4242", 0, Direction::Forwards, usize::MAX)
        .unwrap()
        .count();
    let m = store
        .read_all(Position::END, Direction::Backwards, 100_000)
        .unwrap()
        .count();
    let read = started.elapsed();
    println!(
        "| {label:<29} | {:>10.1} ms | {replayed:>16} | {rss_open:>8.1} MiB | {:>7.1} ms / {:>6.1} MiB |",
        took.as_secs_f64() * 1e3,
        read.as_secs_f64() * 1e3,
        rss_mib()
    );
    assert!(n > 0 && m == 100_000);
}

fn run_child(path: &Path, label: &str) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--measure-open", path.to_str().unwrap(), label])
        .status()
        .unwrap();
    assert!(status.success());
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::copy(from.with_extension("annals"), to.with_extension("annals")).unwrap();
    std::fs::copy(
        from.with_extension("annals.index"),
        to.with_extension("annals.index"),
    )
    .unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--measure-open") {
        measure(Path::new(&args[i + 1]), &args[i + 2]);
        return;
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and friends
    }
    let events: u64 = std::env::var("ANNALS_SCALE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let streams: u64 = (events / 100).max(10_000);
    let base = std::env::var("ANNALS_BENCH_DIR").unwrap_or_else(|_| ".".into());
    let dir = tempfile::tempdir_in(base).unwrap();
    let path: PathBuf = dir.path().join("scale");
    let payload = vec![0x42u8; 100];

    // Fill: each commit appends 10 events to each of 10 streams, so streams interleave.
    // (Not synced per commit: this is setup, not the thing measured.)
    let started = Instant::now();
    let store = Store::builder()
        .durability(Durability::NoSync)
        .open(&path)
        .unwrap();
    let per_stream = events / streams;
    let mut written = 0u64;
    let mut round = 0;
    while round * 10 < per_stream {
        let n = (per_stream - round * 10).min(10);
        for group in 0..streams.div_ceil(10) {
            let mut tx = store.transaction();
            for s in group * 10..((group + 1) * 10).min(streams) {
                let batch = (0..n).map(|_| NewEvent::new("Deposited", payload.clone()));
                tx = tx.append(&format!("account-{s}"), ExpectedVersion::Any, batch);
                written += n;
            }
            tx.commit().unwrap();
        }
        round += 1;
    }
    let size = std::fs::metadata(store.path()).unwrap().len();
    let sidecar = std::fs::metadata(path.with_extension("annals.index"))
        .unwrap()
        .len();
    store.close().unwrap();
    println!(
        "store: {written} events in {streams} streams, log {:.2} GB, index sidecar {:.0} MB, filled in {:.0} s",
        size as f64 / 1e9,
        sidecar as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| reopen                        |          time | commits replayed |  RSS after open | then read 1 stream + newest 100k |"
    );
    println!(
        "|-------------------------------|---------------|------------------|-----------------|----------------------------------|"
    );
    run_child(&path, "after a clean close");

    // A crash: 50,000 commits after the last index flush, then the files are copied while the
    // store is open (what a killed process leaves behind).
    let crashed = dir.path().join("crashed");
    {
        let store = Store::builder()
            .durability(Durability::NoSync)
            .index_flush_events(1_000_000)
            .open(&path)
            .unwrap();
        for i in 0..50_000u64 {
            store
                .append(
                    &format!("account-{}", i % streams),
                    ExpectedVersion::Any,
                    [NewEvent::new("Late", payload.clone())],
                )
                .unwrap();
        }
        copy_store(&path, &crashed);
        store.close().unwrap();
    }
    run_child(&crashed, "after a crash (50k to replay)");

    std::fs::remove_file(path.with_extension("annals.index")).unwrap();
    run_child(&path, "without the index sidecar");
    run_child(&path, "again, after that rebuild");
}
