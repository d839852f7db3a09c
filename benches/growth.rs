//! How cost grows with the store: one store is grown to 10^5, 10^6 and 10^7 events (10^8 with
//! `ANNALS_GROWTH_MAX=100000000`, by hand: about 20 GB of disk), and at each size it measures
//!
//! - the durable append rate (batches of 1,000 events, 100-byte payloads, one thread);
//! - the latency of reading one stream of 1,000 events (written when the store was new, so
//!   its frames lie at the start of the log and its index entries in the oldest part);
//! - the time to reopen after a clean close, and the resident memory of a fresh process that
//!   opened the store and read that stream (measured in a child process, so each figure is its
//!   own).
//!
//! Between sizes the store grows with appends of 1,000 events to 10,000 streams in turn
//! (durable, like every append). Prints a table and writes the curves as an SVG chart to
//! `target/growth.svg` (`ANNALS_GROWTH_SVG` to change it); `docs/scale.md` shows one run.
//!
//! Run: `cargo bench -p annals-bench --bench growth`. Asserts nothing about time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use annals::{Direction, ExpectedVersion, NewEvent, Store};

/// Events per batch while growing and while measuring the append rate.
const BATCH: u64 = 1_000;
/// Streams the growth spreads over.
const STREAMS: u64 = 10_000;
/// Events of the stream whose read latency is measured.
const PROBE_EVENTS: u64 = 1_000;
/// Events appended (durably, in batches) to measure the append rate at each size (at most
/// half of the size).
const RATE_EVENTS: u64 = 200_000;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn batch(payload: &bytes::Bytes) -> Vec<NewEvent> {
    (0..BATCH)
        .map(|_| NewEvent::new("Deposited", payload.clone()))
        .collect()
}

/// Median time to read the probe stream whole.
fn probe_latency(store: &Store) -> Duration {
    let mut times: Vec<Duration> = (0..21)
        .map(|_| {
            let started = Instant::now();
            let bytes: usize = store
                .read_stream("probe", 0, Direction::Forwards, usize::MAX)
                .unwrap()
                .map(|e| e.unwrap().payload().len())
                .sum();
            assert_eq!(bytes as u64, PROBE_EVENTS * 100);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// In a fresh process: open after a clean close (timed), read the probe stream, print the
/// open time in ms and the resident memory in MiB.
fn child(path: &Path) {
    let started = Instant::now();
    let store = Store::open(path).unwrap();
    let opened = started.elapsed();
    let _ = probe_latency(&store);
    println!("{} {}", opened.as_secs_f64() * 1e3, rss_mib());
}

/// Reopen time (ms) and resident memory (MiB) of a fresh process; the best of three opens.
fn reopen(path: &Path) -> (f64, f64) {
    let mut best = (f64::MAX, 0.0);
    for _ in 0..3 {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--open-child", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut it = text.split_whitespace().map(|v| v.parse::<f64>().unwrap());
        let (ms, rss) = (it.next().unwrap(), it.next().unwrap());
        if ms < best.0 {
            best = (ms, rss);
        }
    }
    best
}

/// One row of the table.
struct Point {
    events: u64,
    append_rate: f64,
    read_ms: f64,
    reopen_ms: f64,
    rss_mib: f64,
    log_bytes: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--open-child") {
        child(Path::new(&args[i + 1]));
        return;
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and friends
    }
    let max: u64 = std::env::var("ANNALS_GROWTH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    // `ANNALS_GROWTH_SIZES=100000,3000000` measures at other sizes.
    let sizes: Vec<u64> = match std::env::var("ANNALS_GROWTH_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
        Err(_) => [100_000u64, 1_000_000, 10_000_000, 100_000_000]
            .into_iter()
            .filter(|&n| n <= max)
            .collect(),
    };
    let base = std::env::var("ANNALS_BENCH_DIR").unwrap_or_else(|_| ".".into());
    let dir = tempfile::tempdir_in(base).unwrap();
    let path: PathBuf = dir.path().join("growth.annals");
    let payload = bytes::Bytes::from(vec![0x42u8; 100]);

    let mut store = Store::open(&path).unwrap();
    store
        .append(
            "probe",
            ExpectedVersion::NoStream,
            (0..PROBE_EVENTS).map(|_| NewEvent::new("Deposited", payload.clone())),
        )
        .unwrap();
    let mut held = PROBE_EVENTS;
    let mut next_stream = 0u64;
    let mut points = Vec::new();
    println!(
        "| events | durable append rate (batches of 1,000) | read a 1,000-event stream | reopen after a clean close | RSS of a fresh process after open + read | log bytes |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &size in &sizes {
        // Grow to `size` (the events of the rate measure count).
        let rate_events = RATE_EVENTS.min(size / 2);
        // One durable batch to the next of the streams in turn.
        let mut append_batch = |store: &Store| {
            store
                .append(
                    &format!("account-{next_stream}"),
                    ExpectedVersion::Any,
                    batch(&payload),
                )
                .unwrap();
            next_stream = (next_stream + 1) % STREAMS;
        };
        while held + rate_events < size {
            append_batch(&store);
            held += BATCH;
        }
        let started = Instant::now();
        let mut appended = 0;
        while appended < rate_events {
            append_batch(&store);
            appended += BATCH;
        }
        let append_rate = appended as f64 / started.elapsed().as_secs_f64();
        held += appended;
        let read_ms = probe_latency(&store).as_secs_f64() * 1e3;
        let log_bytes = store.end_position().as_u64();
        store.close().unwrap();
        let (reopen_ms, rss_mib) = reopen(&path);
        store = Store::open(&path).unwrap();
        let p = Point {
            events: held,
            append_rate,
            read_ms,
            reopen_ms,
            rss_mib,
            log_bytes,
        };
        println!(
            "| {} | {:.0} events/s | {:.3} ms | {:.2} ms | {:.1} MiB | {:.2} GB |",
            p.events,
            p.append_rate,
            p.read_ms,
            p.reopen_ms,
            p.rss_mib,
            p.log_bytes as f64 / 1e9
        );
        points.push(p);
    }
    store.close().unwrap();
    let svg = std::env::var("ANNALS_GROWTH_SVG")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/growth.svg").into());
    std::fs::write(&svg, chart(&points)).unwrap();
    println!("\nchart written to {svg}");
}

/// Four small line charts side by side (log-scale x: events), each with its own linear y axis
/// from 0.
fn chart(points: &[Point]) -> String {
    type Metric = (&'static str, &'static str, fn(&Point) -> f64);
    let metrics: [Metric; 4] = [
        ("durable append rate", "M events/s", |p| p.append_rate / 1e6),
        ("read a 1,000-event stream", "ms", |p| p.read_ms),
        ("reopen after a clean close", "ms", |p| p.reopen_ms),
        ("resident memory after open", "MiB", |p| p.rss_mib),
    ];
    let (w, h, pad) = (260.0, 200.0, 45.0);
    let mut s = String::new();
    let total_w = w * metrics.len() as f64 + 20.0;
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{}" font-family="sans-serif" font-size="11">"#,
        h + 40.0
    );
    let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let xs: Vec<f64> = points.iter().map(|p| (p.events as f64).log10()).collect();
    let (x0, x1) = (
        xs.iter().copied().fold(f64::MAX, f64::min).floor(),
        xs.iter().copied().fold(f64::MIN, f64::max).ceil().max(1.0),
    );
    for (m, (title, unit, f)) in metrics.iter().enumerate() {
        let ox = 10.0 + m as f64 * w;
        let ys: Vec<f64> = points.iter().map(f).collect();
        let ymax = ys.iter().copied().fold(0.0, f64::max).max(1e-9) * 1.15;
        let px = |x: f64| ox + pad + (x - x0) / (x1 - x0).max(1e-9) * (w - pad - 15.0);
        let py = |y: f64| 25.0 + (h - 50.0) * (1.0 - y / ymax);
        let _ = write!(
            s,
            r#"<text x="{}" y="15" font-weight="bold">{title}</text>"#,
            ox + pad
        );
        let _ = write!(
            s,
            r#"<line x1="{a}" y1="{b}" x2="{a}" y2="{c}" stroke="black"/><line x1="{a}" y1="{c}" x2="{d}" y2="{c}" stroke="black"/>"#,
            a = ox + pad,
            b = py(ymax),
            c = py(0.0),
            d = px(x1)
        );
        for k in 0..=4 {
            let y = ymax * k as f64 / 4.0;
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{y:.2}</text>"#,
                ox + pad - 4.0,
                py(y) + 4.0
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{unit}</text>"#,
            ox + pad,
            py(ymax) - 4.0 + 0.0 * 12.0
        );
        let mut x = x0;
        while x <= x1 + 1e-9 {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">10^{x:.0}</text>"#,
                px(x),
                py(0.0) + 14.0
            );
            x += 1.0;
        }
        let line: Vec<String> = xs
            .iter()
            .zip(&ys)
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
            line.join(" ")
        );
        for (x, y) in xs.iter().zip(&ys) {
            let _ = write!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#1f77b4"/>"##,
                px(*x),
                py(*y)
            );
        }
    }
    let _ = write!(
        s,
        r#"<text x="10" y="{}">events in the store (log scale)</text></svg>"#,
        h + 30.0
    );
    s
}
