//! Side-by-side workloads: annals, SQLite, a plain redb table and (feature `postgres`) annals'
//! PostgreSQL backend doing the same work, plus the disk's own limits. The criterion benches in the repository's `benches/` folder and
//! `annals bench` (the `annals-cli` crate) both run this code, so their figures never disagree.
//!
//! Every system stores the same events (stream, version, id, type, timestamp, 100-byte payload
//! by default), checks the stream's current version on every append, and makes every append
//! durable before returning:
//!
//! - **annals**: [`annals::Store`] with [`annals::Durability::Immediate`];
//! - **SQLite**: WAL, `synchronous=FULL`, one `events` table with a unique `(stream, version)`;
//!   one `BEGIN IMMEDIATE` transaction per append that reads the stream's last version and
//!   inserts; one connection per thread;
//! - **redb**: a `log` table (global sequence → encoded event) and a `streams` table
//!   ((stream, version) → sequence), one durable write transaction per append;
//! - **PostgreSQL** (feature `postgres`, module `pg`): annals' `PgStore` on a server with
//!   `synchronous_commit` on, one transaction per append that reads the stream's version and
//!   inserts (and, as `PgStore` does, serialises commits on its head row).
//!
//! ```
//! use annals_bench::{Event, System, open_annals};
//!
//! let dir = tempfile::tempdir()?;
//! let sys = open_annals(dir.path())?;
//! sys.append("s", &[Event::new(100)])?;
//! assert_eq!(sys.read_stream("s")?, 1);
//! # Ok::<(), annals_bench::BenchError>(())
//! ```

#![deny(missing_docs)]

mod aggregate;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod reclaim;
pub mod scaling;
mod systems;

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

pub use aggregate::{
    AGGREGATE_EVENTS, Account, AccountEvent, Deposited, aggregate_stream, balance_of, deposit,
    deposit_events, fill_aggregate, typed_batches,
};
pub use systems::{Annals, Redb, Sqlite, disk_usage, open_annals, open_redb, open_sqlite};

/// Error of the workloads (they come from three different engines).
pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// Result type of the workloads.
pub type BenchResult<T> = std::result::Result<T, BenchError>;

/// One event of a workload.
#[derive(Debug, Clone)]
pub struct Event {
    /// Event id.
    pub id: uuid::Uuid,
    /// Event type.
    pub event_type: &'static str,
    /// Payload bytes (shared: cloning an event does not copy them).
    pub payload: bytes::Bytes,
    /// How the payload encodes a typed event (`None`: raw bytes); annals records it.
    pub codec: Option<PayloadCodec>,
}

/// How a typed event's payload is encoded (the two codecs of annals' typed events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadCodec {
    /// JSON (annals' default).
    Json,
    /// bincode 2, standard configuration.
    Bincode,
}

impl PayloadCodec {
    /// Its name in workload names and labels.
    pub fn name(self) -> &'static str {
        match self {
            PayloadCodec::Json => "json",
            PayloadCodec::Bincode => "bincode",
        }
    }
}

impl Event {
    /// An event with a fresh id and a payload of `size` bytes.
    pub fn new(size: usize) -> Event {
        Event {
            id: uuid::Uuid::now_v7(),
            event_type: "Deposited",
            payload: (0..size)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>()
                .into(),
            codec: None,
        }
    }
}

/// An event store under test.
pub trait System: Send + Sync {
    /// Short name for tables.
    fn name(&self) -> &'static str;
    /// Appends `events` to `stream` durably, after reading the stream's current version.
    fn append(&self, stream: &str, events: &[Event]) -> BenchResult<()>;
    /// Reads every event of `stream` (touching type and payload); returns how many.
    fn read_stream(&self, stream: &str) -> BenchResult<u64>;
    /// Reads every event in log order (touching stream, type and payload); returns how many.
    fn read_all(&self) -> BenchResult<u64>;
    /// Loads the [`Account`] whose events are encoded with `codec` (see [`aggregate_stream`]):
    /// reads its events, decodes each payload and applies it.
    fn load_aggregate(&self, codec: PayloadCodec) -> BenchResult<Account>;
    /// Bytes the system's files take on the disk (allocated blocks, not apparent lengths).
    fn disk_bytes(&self) -> BenchResult<u64>;
}

/// The workloads, as `annals bench` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// One event per durable append, one thread.
    Append1,
    /// One event per durable append, eight threads (group commit).
    Append1Threads8,
    /// Durable batches of 100 events.
    Batch100,
    /// Durable batches of 1000 events.
    Batch1000,
    /// Durable batches of 1000 typed events, each encoded as JSON in the timed part.
    TypedJson,
    /// Durable batches of 1000 typed events, each encoded as bincode in the timed part.
    TypedBincode,
    /// Reading one stream of many events.
    ReadStream,
    /// Reading the whole log.
    ReadAll,
    /// Loading an aggregate of [`AGGREGATE_EVENTS`] JSON events (read, decode, apply).
    LoadAggregate,
    /// The same with bincode events.
    LoadAggregateBincode,
    /// Reopening a large store after a clean close (see [`reopen`]).
    Reopen,
}

impl Workload {
    /// Every workload, in the order `annals bench` runs and prints them.
    pub const ALL: [Workload; 11] = [
        Workload::Append1,
        Workload::Append1Threads8,
        Workload::Batch100,
        Workload::Batch1000,
        Workload::TypedJson,
        Workload::TypedBincode,
        Workload::ReadStream,
        Workload::ReadAll,
        Workload::LoadAggregate,
        Workload::LoadAggregateBincode,
        Workload::Reopen,
    ];

    /// The name `annals bench --workloads` takes.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Append1 => "append-1",
            Workload::Append1Threads8 => "append-8",
            Workload::Batch100 => "batch-100",
            Workload::Batch1000 => "batch-1000",
            Workload::TypedJson => "typed-json",
            Workload::TypedBincode => "typed-bincode",
            Workload::ReadStream => "read-stream",
            Workload::ReadAll => "read-all",
            Workload::LoadAggregate => "aggregate",
            Workload::LoadAggregateBincode => "aggregate-bincode",
            Workload::Reopen => "reopen",
        }
    }

    /// One line saying what the workload does.
    pub fn description(self) -> &'static str {
        match self {
            Workload::Append1 => "one event per durable append, one thread",
            Workload::Append1Threads8 => "one event per durable append, eight threads",
            Workload::Batch100 => "durable batches of 100 events, one stream",
            Workload::Batch1000 => "durable batches of 1,000 events, one stream",
            Workload::TypedJson => "durable batches of 1,000 typed events, encoded as JSON",
            Workload::TypedBincode => "durable batches of 1,000 typed events, encoded as bincode",
            Workload::ReadStream => "read one stream of a filled store",
            Workload::ReadAll => "read every event of a filled store, in log order",
            Workload::LoadAggregate => {
                "load a 10,000-event aggregate of JSON events: read, decode and apply each"
            }
            Workload::LoadAggregateBincode => {
                "load a 10,000-event aggregate of bincode events: read, decode and apply each"
            }
            Workload::Reopen => "open a filled store after a clean close, ready to serve",
        }
    }

    /// The workload named `name` (see [`Workload::name`]).
    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// A boxed system is a system (so openers can return `Box<dyn System>`).
impl<S: System + ?Sized> System for Box<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn append(&self, stream: &str, events: &[Event]) -> BenchResult<()> {
        (**self).append(stream, events)
    }

    fn read_stream(&self, stream: &str) -> BenchResult<u64> {
        (**self).read_stream(stream)
    }

    fn read_all(&self) -> BenchResult<u64> {
        (**self).read_all()
    }

    fn load_aggregate(&self, codec: PayloadCodec) -> BenchResult<Account> {
        (**self).load_aggregate(codec)
    }

    fn disk_bytes(&self) -> BenchResult<u64> {
        (**self).disk_bytes()
    }
}

/// Appends `total` single-event appends spread over `threads` threads (thread `t` appends to
/// stream `bench-t`). Returns the elapsed time.
pub fn appends(
    sys: &dyn System,
    threads: usize,
    total: u64,
    payload: usize,
) -> BenchResult<Duration> {
    let per = total.div_ceil(threads as u64);
    let event = Event::new(payload);
    let start = Instant::now();
    std::thread::scope(|s| -> BenchResult<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let event = event.clone();
                s.spawn(move || -> BenchResult<()> {
                    let stream = format!("bench-{t}");
                    for _ in 0..per {
                        let e = Event {
                            id: uuid::Uuid::now_v7(),
                            ..event.clone()
                        };
                        sys.append(&stream, std::slice::from_ref(&e))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "appender thread panicked")??;
        }
        Ok(())
    })?;
    Ok(start.elapsed())
}

/// Appends `batches` durable batches of `batch` events to one stream. Returns the elapsed time.
pub fn batches(
    sys: &dyn System,
    batches: u64,
    batch: usize,
    payload: usize,
) -> BenchResult<Duration> {
    let template: Vec<Event> = (0..batch).map(|_| Event::new(payload)).collect();
    let mut elapsed = Duration::ZERO;
    for _ in 0..batches {
        let events: Vec<Event> = template
            .iter()
            .map(|e| Event {
                id: uuid::Uuid::now_v7(),
                ..e.clone()
            })
            .collect();
        let start = Instant::now();
        sys.append("batches", &events)?;
        elapsed += start.elapsed();
    }
    Ok(elapsed)
}

/// Most payload bytes in one append of [`fill`].
const FILL_BATCH_BYTES: usize = 8 << 20;

/// Fills `sys` with `events` events in `streams` streams (round robin, in batches of 1000 per
/// stream, fewer for payloads above 8 KiB so that a batch stays within 8 MiB), for the read
/// workloads. Stream `fill-0` gets `events / streams` events.
pub fn fill(sys: &dyn System, events: u64, streams: u64, payload: usize) -> BenchResult<()> {
    let per_stream = events / streams.max(1);
    let batch = (FILL_BATCH_BYTES / payload.max(1)).clamp(1, 1000) as u64;
    let mut written = 0;
    while written < per_stream {
        let n = (per_stream - written).min(batch) as usize;
        for s in 0..streams {
            let batch: Vec<Event> = (0..n).map(|_| Event::new(payload)).collect();
            sys.append(&format!("fill-{s}"), &batch)?;
        }
        written += n as u64;
    }
    Ok(())
}

/// Name of the stream [`reopen`] reads after each open: it never exists, so reading it costs
/// nothing but what it takes to have the store ready.
pub const REOPEN_PROBE: &str = "reopen-probe";

/// Opens a store `times` times with `open` (which must open an existing, cleanly closed store)
/// and reads one empty stream ([`REOPEN_PROBE`]) so that the store is ready to serve. Each store
/// is closed, untimed, before the next open. Returns the time spent opening and probing.
pub fn reopen<S: System>(
    times: u64,
    mut open: impl FnMut() -> BenchResult<S>,
) -> BenchResult<Duration> {
    let mut elapsed = Duration::ZERO;
    for _ in 0..times {
        let start = Instant::now();
        let sys = open()?;
        sys.read_stream(REOPEN_PROBE)?;
        elapsed += start.elapsed();
        drop(sys);
    }
    Ok(elapsed)
}

/// Rate of a raw loop of `write(size bytes)` at the end of a file followed by `fdatasync`, in
/// operations per second: the physical limit of one durable append per sync.
pub fn raw_fdatasync(dir: &Path, ops: u64, size: usize) -> io::Result<f64> {
    let path = dir.join("raw-fdatasync.bin");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let buf = vec![0x5Au8; size];
    let start = Instant::now();
    for i in 0..ops {
        file.write_all_at(&buf, i * size as u64)?;
        file.sync_data()?;
    }
    let rate = ops as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// Sequential write bandwidth of the disk in bytes per second: `total` bytes written in 1 MiB
/// chunks, then one `fdatasync`.
pub fn sequential_write(dir: &Path, total: u64) -> io::Result<f64> {
    let path = dir.join("seq-write.bin");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let chunk = vec![0xA5u8; 1 << 20];
    let start = Instant::now();
    let mut at = 0;
    while at < total {
        file.write_all_at(&chunk, at)?;
        at += chunk.len() as u64;
    }
    file.sync_data()?;
    let rate = at as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}
