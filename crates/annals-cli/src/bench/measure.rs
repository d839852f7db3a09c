//! Running the plan: the disk's limits, the write workloads on fresh stores, the read and
//! reopen workloads on filled ones, each read and reopen measure calibrated to last long enough,
//! with a progress bar on stderr. The figures come back as [`Limits`] and one [`Row`] per
//! workload.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use annals_bench::pg::PgDatabase;
use annals_bench::{self as workloads, BenchError, BenchResult, System, Workload};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::host::{remove, subdir};
use super::io_error;
use super::plan::{Item, Plan, READ_STREAMS, SystemKind, batch_size, is_write, label};
use crate::exit::{CliError, CliResult, ERROR};

/// The stream `read-stream` reads.
const READ_STREAM: &str = "fill-3";
/// Most repetitions of one read workload.
const MAX_READS: u64 = 10_000;
/// Rounds of the batch write + fdatasync loop.
const BATCH_SYNC_OPS: u64 = 500;
/// Most reopens of one store.
const MAX_REOPENS: u64 = 1_000;

/// The figures of one system on one workload.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measure {
    /// Appends, reads or opens timed.
    pub(super) ops: u64,
    /// Events written, read or opened.
    pub(super) events: u64,
    /// Time they took.
    pub(super) elapsed: Duration,
}

impl Measure {
    /// `n` per second of [`Measure::elapsed`].
    pub(super) fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One workload's results on every system.
#[derive(Debug, Clone)]
pub(super) struct Row {
    /// The workload.
    pub(super) workload: Workload,
    /// Its label in the table.
    pub(super) label: String,
    /// The figures, per system, in [`Plan::systems`] order.
    pub(super) results: Vec<(SystemKind, Measure)>,
}

impl Row {
    /// Unit of [`Row::value`].
    pub(super) fn unit(&self) -> &'static str {
        if self.workload == Workload::Reopen {
            "opens/s"
        } else {
            "events/s"
        }
    }

    /// The rate shown for `m`: opens per second for reopen, events per second otherwise.
    pub(super) fn value(&self, m: &Measure) -> f64 {
        if self.workload == Workload::Reopen {
            m.per_sec(m.ops)
        } else {
            m.per_sec(m.events)
        }
    }

    /// The rate of `kind`, if it was measured.
    pub(super) fn get(&self, kind: SystemKind) -> Option<f64> {
        self.results
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, m)| self.value(m))
    }

    /// annals' rate over `peer`'s.
    pub(super) fn ratio(&self, peer: SystemKind) -> Option<f64> {
        Some(self.get(SystemKind::Annals)? / self.get(peer)?)
    }
}

/// The disk's own limits, as measured.
#[derive(Debug, Clone, Default)]
pub(super) struct Limits {
    /// `write + fdatasync` rounds per second, and how many were timed.
    pub(super) fdatasync: Option<(f64, u64)>,
    /// Sequential write bytes per second, and how many bytes were written.
    pub(super) seq_write: Option<(f64, u64)>,
    /// `write + fdatasync` rounds per second of one batch of 1,000 events' caller bytes, and
    /// how many were timed: the most durable batches of 1,000 one thread can commit.
    pub(super) batch_sync: Option<(f64, u64)>,
    /// Disk bytes per event of each system's filled read store (allocated blocks of all its
    /// files over the events it holds).
    pub(super) disk_per_event: Vec<(SystemKind, f64)>,
}

/// Runs every selected measure in `dir`.
pub(super) fn measure(
    plan: &Plan,
    dir: &Path,
    progress: &Progress,
) -> CliResult<(Limits, Vec<Row>)> {
    let mut limits = measure_limits(plan, dir, progress)?;
    let mut rows = run_writes(plan, dir, progress)?;
    rows.extend(run_reads(plan, dir, progress, &mut limits)?);
    Ok((limits, rows))
}

/// The progress bar on stderr (drawn only when stderr is a terminal).
pub(super) struct Progress(ProgressBar);

impl Progress {
    /// A bar of `steps` steps.
    pub(super) fn new(steps: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} {wide_msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(bar)
    }

    /// Runs one step, described by `msg`.
    fn step<T>(&self, msg: impl Into<Cow<'static, str>>, f: impl FnOnce() -> T) -> T {
        self.0.set_message(msg);
        let result = f();
        self.0.inc(1);
        result
    }

    /// Removes the bar.
    pub(super) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Turns a workload failure into a CLI error saying which system and workload failed.
fn failed(kind: SystemKind, what: &str) -> impl FnOnce(BenchError) -> CliError {
    move |e| CliError::new(ERROR, format!("{} failed on {what}: {e}", kind.name()))
}

/// Measures the disk's limits that were selected.
fn measure_limits(plan: &Plan, dir: &Path, progress: &Progress) -> CliResult<Limits> {
    let mut limits = Limits::default();
    if plan.has(Item::Fdatasync) {
        let ops = plan.appends;
        let rate = progress.step("disk: write + fdatasync", || {
            workloads::raw_fdatasync(dir, ops, plan.payload)
        });
        let rate = rate.map_err(|e| io_error("write + fdatasync loop".into(), e))?;
        limits.fdatasync = Some((rate, ops));
    }
    if plan.has(Item::SeqWrite) {
        let bytes = plan.seq_bytes;
        let rate = progress.step("disk: sequential write", || {
            workloads::sequential_write(dir, bytes)
        });
        let rate = rate.map_err(|e| io_error("sequential write".into(), e))?;
        limits.seq_write = Some((rate, bytes));
        let ops = BATCH_SYNC_OPS;
        let size = (1000 * plan.caller_bytes()) as usize;
        let rate = progress.step("disk: batch + fdatasync", || {
            workloads::raw_fdatasync(dir, ops, size)
        });
        let rate = rate.map_err(|e| io_error("batch write + fdatasync loop".into(), e))?;
        limits.batch_sync = Some((rate, ops));
    }
    Ok(limits)
}

/// A new database of the run on the PostgreSQL server when postgres is measured (one per
/// phase, as each file-based system gets a folder per phase); dropped with the guard.
fn fresh_database(plan: &Plan) -> CliResult<Option<PgDatabase>> {
    plan.pg_url
        .as_deref()
        .map(PgDatabase::create)
        .transpose()
        .map_err(failed(SystemKind::Postgres, "creating its database"))
}

/// Opens every system of the plan in `dir` (PostgreSQL in `db`).
fn open_all(
    plan: &Plan,
    dir: &Path,
    db: Option<&PgDatabase>,
) -> CliResult<Vec<(SystemKind, Box<dyn System>)>> {
    plan.systems
        .iter()
        .map(|&kind| {
            let sys = kind
                .open(dir, db.map(PgDatabase::url))
                .map_err(failed(kind, "open"))?;
            Ok((kind, sys))
        })
        .collect()
}

/// Drops the phase's database, if there is one.
fn remove_database(db: Option<PgDatabase>) -> CliResult<()> {
    match db {
        Some(db) => db
            .remove()
            .map_err(failed(SystemKind::Postgres, "dropping its database")),
        None => Ok(()),
    }
}

/// Runs the write workloads, each on every system in turn, on one store per system.
fn run_writes(plan: &Plan, dir: &Path, progress: &Progress) -> CliResult<Vec<Row>> {
    let selected: Vec<Workload> = plan.workloads().filter(|w| is_write(*w)).collect();
    if selected.is_empty() {
        return Ok(Vec::new());
    }
    let dir = subdir(dir, "write")?;
    // Declared before the systems, so dropped after them on every path.
    let db = fresh_database(plan)?;
    let systems = open_all(plan, &dir, db.as_ref())?;
    let mut rows = Vec::new();
    for w in selected {
        rows.push(run_row(plan, w, &systems, progress, measure_write)?);
    }
    drop(systems);
    remove_database(db)?;
    remove(&dir)?;
    Ok(rows)
}

/// Runs workload `w` on every system in turn, with `measure`; one row of the table.
fn run_row(
    plan: &Plan,
    w: Workload,
    systems: &[(SystemKind, Box<dyn System>)],
    progress: &Progress,
    measure: fn(&Plan, Workload, &dyn System) -> BenchResult<Measure>,
) -> CliResult<Row> {
    let mut results = Vec::new();
    for (kind, sys) in systems {
        let m = progress.step(format!("{} · {}", w.name(), kind.name()), || {
            measure(plan, w, sys.as_ref())
        });
        results.push((*kind, m.map_err(failed(*kind, w.name()))?));
    }
    Ok(Row {
        workload: w,
        label: label(plan, w),
        results,
    })
}

/// Runs one write workload on `sys`.
fn measure_write(plan: &Plan, w: Workload, sys: &dyn System) -> BenchResult<Measure> {
    let (threads, appends) = match w {
        Workload::Append1 => (1, plan.appends),
        Workload::Append1Threads8 => (8, plan.appends),
        _ => {
            let batch = batch_size(w).ok_or("not a write workload")?;
            let n = (plan.events / batch).max(1);
            let elapsed = match w {
                Workload::TypedJson => {
                    workloads::typed_batches(sys, n, batch, workloads::PayloadCodec::Json)?
                }
                Workload::TypedBincode => {
                    workloads::typed_batches(sys, n, batch, workloads::PayloadCodec::Bincode)?
                }
                _ => workloads::batches(sys, n, batch as usize, plan.payload)?,
            };
            return Ok(Measure {
                ops: n,
                events: n * batch,
                elapsed,
            });
        }
    };
    let elapsed = workloads::appends(sys, threads, appends, plan.payload)?;
    let events = appends.div_ceil(threads as u64) * threads as u64;
    Ok(Measure {
        ops: events,
        events,
        elapsed,
    })
}

/// Fills one store per system, then runs the read workloads and the reopens on them.
fn run_reads(
    plan: &Plan,
    dir: &Path,
    progress: &Progress,
    limits: &mut Limits,
) -> CliResult<Vec<Row>> {
    if !plan.needs_fill() {
        return Ok(Vec::new());
    }
    let dir = subdir(dir, "read")?;
    let db = fresh_database(plan)?;
    let systems = open_all(plan, &dir, db.as_ref())?;
    for (kind, sys) in &systems {
        progress
            .step(format!("fill · {}", kind.name()), || {
                workloads::fill(sys.as_ref(), plan.events, READ_STREAMS, plan.payload)?;
                if plan.has_aggregate() {
                    workloads::fill_aggregate(sys.as_ref())?;
                }
                Ok(())
            })
            .map_err(failed(*kind, "fill"))?;
        let bytes = sys.disk_bytes().map_err(failed(*kind, "disk usage"))?;
        limits
            .disk_per_event
            .push((*kind, bytes as f64 / plan.stored_events().max(1) as f64));
    }
    let mut rows = Vec::new();
    for w in plan
        .workloads()
        .filter(|w| !is_write(*w) && *w != Workload::Reopen)
    {
        rows.push(run_row(plan, w, &systems, progress, measure_read)?);
    }
    // Dropping a system closes it cleanly: that is the state reopen starts from.
    drop(systems);
    if plan.has(Item::Run(Workload::Reopen)) {
        rows.push(run_reopens(plan, &dir, db.as_ref(), progress)?);
    }
    remove_database(db)?;
    remove(&dir)?;
    Ok(rows)
}

/// Runs one read workload on `sys`, checking every read returns the whole stream or log.
fn measure_read(plan: &Plan, w: Workload, sys: &dyn System) -> BenchResult<Measure> {
    let expect = match w {
        Workload::ReadStream => plan.per_stream(),
        Workload::LoadAggregate | Workload::LoadAggregateBincode => workloads::AGGREGATE_EVENTS,
        _ => plan.stored_events(),
    };
    let balance = workloads::balance_of(workloads::AGGREGATE_EVENTS);
    let (reps, elapsed) = calibrated(plan.min_time, MAX_READS, |n| {
        let start = Instant::now();
        for _ in 0..n {
            let got = match w {
                Workload::ReadStream => sys.read_stream(READ_STREAM)?,
                Workload::LoadAggregate | Workload::LoadAggregateBincode => {
                    let codec = if w == Workload::LoadAggregate {
                        workloads::PayloadCodec::Json
                    } else {
                        workloads::PayloadCodec::Bincode
                    };
                    let account = sys.load_aggregate(codec)?;
                    if account.balance != balance {
                        return Err(format!(
                            "loaded a balance of {}, expected {balance}",
                            account.balance
                        )
                        .into());
                    }
                    account.deposits
                }
                _ => sys.read_all()?,
            };
            if got != expect {
                return Err(format!("read {got} events, expected {expect}").into());
            }
        }
        Ok(start.elapsed())
    })?;
    Ok(Measure {
        ops: reps,
        events: reps * expect,
        elapsed,
    })
}

/// Reopens every system's filled store ([`workloads::reopen`]); PostgreSQL's "open" is
/// [`annals::pg::PgStore::connect`] (its pool's connections and the schema check).
fn run_reopens(
    plan: &Plan,
    dir: &Path,
    db: Option<&PgDatabase>,
    progress: &Progress,
) -> CliResult<Row> {
    let w = Workload::Reopen;
    let mut results = Vec::new();
    for &kind in &plan.systems {
        let m = progress.step(format!("{} · {}", w.name(), kind.name()), || {
            let (reps, elapsed) = calibrated(plan.min_time, MAX_REOPENS, |n| {
                workloads::reopen(n, || kind.open(dir, db.map(PgDatabase::url)))
            })?;
            Ok::<_, BenchError>(Measure {
                ops: reps,
                events: reps * plan.stored_events(),
                elapsed,
            })
        });
        results.push((kind, m.map_err(failed(kind, w.name()))?));
    }
    Ok(Row {
        workload: w,
        label: label(plan, w),
        results,
    })
}

/// Runs `run(1)` once untimed (warm-up, and to size the measure), then `run(n)` with `n` such
/// that it takes about `min_time` (at most `max`); if it took less than half of that, sizes
/// again from it, at most three times. Returns `n` and the time the last `run(n)` took.
fn calibrated(
    min_time: Duration,
    max: u64,
    mut run: impl FnMut(u64) -> BenchResult<Duration>,
) -> BenchResult<(u64, Duration)> {
    let target = min_time.as_secs_f64();
    let mut each = run(1)?.as_secs_f64();
    let mut last = (1, Duration::ZERO);
    for _ in 0..3 {
        let reps = ((target / each.max(1e-7)).ceil() as u64).clamp(1, max);
        let elapsed = run(reps)?;
        last = (reps, elapsed);
        if reps == max || elapsed.as_secs_f64() >= target / 2.0 {
            break;
        }
        each = elapsed.as_secs_f64() / reps as f64;
    }
    Ok(last)
}
