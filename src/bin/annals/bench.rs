//! `annals bench`: annals, SQLite and a plain redb table side by side on the standard
//! workloads, in one run, in a temporary folder, with the disk's own limits for reference.
//!
//! The workloads themselves are [`annals::bench`], shared with the criterion benches
//! (`benches/engine.rs`); this module chooses their sizes, runs them, and prints the results as
//! a table, as JSON, or as an SVG chart.

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use annals::bench::{self as workloads, BenchError, BenchResult, System, Workload};
use clap::builder::PossibleValue;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::exit::{CliError, CliResult, ERROR, USAGE};

/// Examples and notes printed after `annals bench --help`.
const AFTER_HELP: &str = "\
Examples:
  annals bench                                   # small: seconds on an SSD
  annals bench --size medium --plot bench.svg    # also draw a bar chart
  annals bench --dir /mnt/data                   # measure the disk mounted there
  annals bench --systems annals,sqlite --workloads append-1,batch-100
  annals bench --events 50000 --payload 1024 --json > bench.json

Every append is durable (synced to the disk) before it returns, in all three systems: annals
(default options), SQLite (WAL, synchronous=FULL, an events table with a unique (stream,
version), one BEGIN IMMEDIATE transaction per append) and redb (a log table and a stream index,
one durable write transaction per append). Rates are events per second (opens per second for
reopen), higher is better; annals/peer above 1× means annals is faster. Disks vary from minute
to minute: compare the ratios within one run. The temporary folder is removed at the end.";

/// Streams the read store is filled with ([`workloads::fill`]); `read-stream` reads one of them.
const READ_STREAMS: u64 = 10;
/// The stream `read-stream` reads.
const READ_STREAM: &str = "fill-3";
/// Most repetitions of one read workload.
const MAX_READS: u64 = 10_000;
/// Most reopens of one store.
const MAX_REOPENS: u64 = 1_000;
/// Most bytes one batch workload commits at once (annals keeps a commit within one segment).
const MAX_BATCH_BYTES: u64 = 32 << 20;
/// Room for the framing and names of one event, on top of its payload.
const EVENT_OVERHEAD: u64 = 256;
/// Most bytes one workload may write per system.
const MAX_VOLUME: u64 = 8 << 30;
/// Largest payload accepted by `--payload`.
const MAX_PAYLOAD: usize = 1 << 20;

/// Options of `annals bench`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct BenchArgs {
    /// How much work to do; --events and --appends override parts of it.
    #[arg(long, value_enum, default_value_t = Size::Small)]
    size: Size,

    /// Events in the store the read and reopen workloads use, and events written by each batch
    /// workload [default: 20,000 small, 200,000 medium, 1,000,000 large].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    events: Option<u64>,

    /// Single-event appends made by each of append-1 and append-8 [default: 500 small, 3,000
    /// medium, 20,000 large].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(8..=1_000_000))]
    appends: Option<u64>,

    /// Payload of every event, in bytes (1 to 1048576).
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = parse_payload)]
    payload: usize,

    /// Systems to measure, comma-separated; the ratio columns need annals.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "SYSTEMS",
        default_value = "annals,sqlite,redb"
    )]
    systems: Vec<SystemKind>,

    /// Workloads to run, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "WORKLOADS")]
    workloads: Vec<Item>,

    /// Folder in which to create the temporary folder; put it on the disk to measure [default:
    /// the system's temporary folder].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Print one JSON document (machine, parameters, results) instead of the table.
    #[arg(long)]
    json: bool,

    /// Also draw the results as a grouped bar chart (SVG, log scale) into this file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// Parses `--payload`: a whole number of bytes from 1 to 1 MiB.
fn parse_payload(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of bytes"))?;
    if (1..=MAX_PAYLOAD).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "the payload must be 1 to {MAX_PAYLOAD} bytes (1 MiB), not {n}"
        ))
    }
}

/// How much work `annals bench` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Size {
    /// 500 single appends, 20,000 events for batches and reads (seconds on an SSD).
    Small,
    /// 3,000 single appends, 200,000 events (under a minute on an SSD).
    Medium,
    /// 20,000 single appends, 1,000,000 events (about a minute on an SSD).
    Large,
}

/// The amounts a [`Size`] stands for.
#[derive(Debug, Clone, Copy)]
struct Preset {
    /// Single-event appends per append workload.
    appends: u64,
    /// Events of the read store and of each batch workload.
    events: u64,
    /// Bytes written by the sequential-write measure.
    seq_bytes: u64,
    /// Least time spent in each read and reopen measure.
    min_time: Duration,
}

impl Size {
    /// The amounts of this size.
    fn preset(self) -> Preset {
        match self {
            Size::Small => Preset {
                appends: 500,
                events: 20_000,
                seq_bytes: 64 << 20,
                min_time: Duration::from_millis(200),
            },
            Size::Medium => Preset {
                appends: 3_000,
                events: 200_000,
                seq_bytes: 256 << 20,
                min_time: Duration::from_millis(500),
            },
            Size::Large => Preset {
                appends: 20_000,
                events: 1_000_000,
                seq_bytes: 1 << 30,
                min_time: Duration::from_secs(1),
            },
        }
    }

    /// The name `--size` takes.
    fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
        }
    }
}

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum SystemKind {
    /// annals, default options.
    Annals,
    /// SQLite, WAL, synchronous=FULL.
    Sqlite,
    /// A plain redb table and index.
    Redb,
}

impl SystemKind {
    /// The name used in tables and JSON.
    fn name(self) -> &'static str {
        match self {
            SystemKind::Annals => "annals",
            SystemKind::Sqlite => "sqlite",
            SystemKind::Redb => "redb",
        }
    }

    /// Opens (or creates) this system's store in `dir`.
    fn open(self, dir: &Path) -> BenchResult<Box<dyn System>> {
        Ok(match self {
            SystemKind::Annals => Box::new(workloads::open_annals(dir)?),
            SystemKind::Sqlite => Box::new(workloads::open_sqlite(dir)?),
            SystemKind::Redb => Box::new(workloads::open_redb(dir)?),
        })
    }
}

/// What `--workloads` can select: a workload run on every system, or a limit of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// A workload run on every selected system.
    Run(Workload),
    /// The raw `write + fdatasync` loop.
    Fdatasync,
    /// The sequential write bandwidth.
    SeqWrite,
}

/// Everything `--workloads` accepts, in the order it runs.
const ITEMS: [Item; 9] = [
    Item::Fdatasync,
    Item::SeqWrite,
    Item::Run(Workload::Append1),
    Item::Run(Workload::Append1Threads8),
    Item::Run(Workload::Batch100),
    Item::Run(Workload::Batch1000),
    Item::Run(Workload::ReadStream),
    Item::Run(Workload::ReadAll),
    Item::Run(Workload::Reopen),
];

impl Item {
    /// The name `--workloads` takes.
    fn name(self) -> &'static str {
        match self {
            Item::Run(w) => w.name(),
            Item::Fdatasync => "fdatasync",
            Item::SeqWrite => "seq-write",
        }
    }

    /// What it measures.
    fn description(self) -> &'static str {
        match self {
            Item::Run(w) => w.description(),
            Item::Fdatasync => "disk limit: raw write of one payload + fdatasync, one thread",
            Item::SeqWrite => "disk limit: sequential write bandwidth (1 MiB writes, one sync)",
        }
    }
}

impl clap::ValueEnum for Item {
    fn value_variants<'a>() -> &'a [Self] {
        &ITEMS
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()).help(self.description()))
    }
}

/// Whether `w` writes (and runs on the write store) rather than reads the filled store.
fn is_write(w: Workload) -> bool {
    matches!(
        w,
        Workload::Append1 | Workload::Append1Threads8 | Workload::Batch100 | Workload::Batch1000
    )
}

/// Events per append of a batch workload, if `w` is one.
fn batch_size(w: Workload) -> Option<u64> {
    match w {
        Workload::Batch100 => Some(100),
        Workload::Batch1000 => Some(1000),
        _ => None,
    }
}

/// The resolved parameters of one run.
#[derive(Debug, Clone)]
struct Plan {
    /// The `--size` the amounts come from.
    size: Size,
    /// Single-event appends per append workload.
    appends: u64,
    /// Events of the read store and of each batch workload.
    events: u64,
    /// Payload bytes per event.
    payload: usize,
    /// Bytes of the sequential-write measure.
    seq_bytes: u64,
    /// Least time per read and reopen measure.
    min_time: Duration,
    /// Systems, in canonical order, without duplicates.
    systems: Vec<SystemKind>,
    /// Workloads and limits, in run order, without duplicates.
    items: Vec<Item>,
}

impl Plan {
    /// Resolves and checks the options.
    fn new(args: &BenchArgs) -> CliResult<Plan> {
        let preset = args.size.preset();
        let mut systems = args.systems.clone();
        systems.sort();
        systems.dedup();
        if systems.is_empty() {
            return Err(CliError::new(USAGE, "--systems needs at least one system"));
        }
        let items = ITEMS
            .into_iter()
            .filter(|i| args.workloads.is_empty() || args.workloads.contains(i))
            .collect();
        let plan = Plan {
            size: args.size,
            appends: args.appends.unwrap_or(preset.appends),
            events: args.events.unwrap_or(preset.events),
            payload: args.payload,
            seq_bytes: preset.seq_bytes,
            min_time: preset.min_time,
            systems,
            items,
        };
        plan.check_volumes()?;
        Ok(plan)
    }

    /// Refuses combinations that would write too much at once or in all.
    fn check_volumes(&self) -> CliResult<()> {
        let event_bytes = self.payload as u64 + EVENT_OVERHEAD;
        for w in self.workloads() {
            if let Some(batch) = batch_size(w) {
                let bytes = batch * event_bytes;
                if bytes > MAX_BATCH_BYTES {
                    return Err(CliError::new(
                        USAGE,
                        format!(
                            "{} with {}-byte payloads would commit about {} MB at once (the \
                             limit is {} MiB); lower --payload or leave it out with --workloads",
                            w.name(),
                            self.payload,
                            bytes / 1_000_000,
                            MAX_BATCH_BYTES >> 20
                        ),
                    ));
                }
            }
        }
        for (what, n) in [("--events", self.events), ("--appends", self.appends)] {
            let bytes = n.saturating_mul(event_bytes);
            if bytes > MAX_VOLUME {
                return Err(CliError::new(
                    USAGE,
                    format!(
                        "{what} {n} with {}-byte payloads would write about {} GB per system \
                         (the limit is {} GiB); lower {what} or --payload",
                        self.payload,
                        bytes / 1_000_000_000,
                        MAX_VOLUME >> 30
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The selected workloads that run on every system, in run order.
    fn workloads(&self) -> impl Iterator<Item = Workload> + '_ {
        self.items.iter().filter_map(|i| match i {
            Item::Run(w) => Some(*w),
            _ => None,
        })
    }

    /// Whether `item` was selected.
    fn has(&self, item: Item) -> bool {
        self.items.contains(&item)
    }

    /// Events in each stream of the read store.
    fn per_stream(&self) -> u64 {
        self.events / READ_STREAMS
    }

    /// Events in the read store.
    fn read_events(&self) -> u64 {
        self.per_stream() * READ_STREAMS
    }

    /// Whether the read store is needed.
    fn needs_fill(&self) -> bool {
        self.workloads().any(|w| !is_write(w))
    }

    /// Steps of the progress bar.
    fn steps(&self) -> u64 {
        let limits = self
            .items
            .iter()
            .filter(|i| !matches!(i, Item::Run(_)))
            .count();
        let runs = self.workloads().count() + usize::from(self.needs_fill());
        (limits + runs * self.systems.len()) as u64
    }
}

/// The figures of one system on one workload.
#[derive(Debug, Clone, Copy)]
struct Measure {
    /// Appends, reads or opens timed.
    ops: u64,
    /// Events written, read or opened.
    events: u64,
    /// Time they took.
    elapsed: Duration,
}

impl Measure {
    /// `n` per second of [`Measure::elapsed`].
    fn per_sec(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One workload's results on every system.
#[derive(Debug, Clone)]
struct Row {
    /// The workload.
    workload: Workload,
    /// Its label in the table.
    label: String,
    /// The figures, per system, in [`Plan::systems`] order.
    results: Vec<(SystemKind, Measure)>,
}

impl Row {
    /// Unit of [`Row::value`].
    fn unit(&self) -> &'static str {
        if self.workload == Workload::Reopen {
            "opens/s"
        } else {
            "events/s"
        }
    }

    /// The rate shown for `m`: opens per second for reopen, events per second otherwise.
    fn value(&self, m: &Measure) -> f64 {
        if self.workload == Workload::Reopen {
            m.per_sec(m.ops)
        } else {
            m.per_sec(m.events)
        }
    }

    /// The rate of `kind`, if it was measured.
    fn get(&self, kind: SystemKind) -> Option<f64> {
        self.results
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, m)| self.value(m))
    }

    /// annals' rate over `peer`'s.
    fn ratio(&self, peer: SystemKind) -> Option<f64> {
        Some(self.get(SystemKind::Annals)? / self.get(peer)?)
    }
}

/// The disk's own limits, as measured.
#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    /// `write + fdatasync` rounds per second, and how many were timed.
    fdatasync: Option<(f64, u64)>,
    /// Sequential write bytes per second, and how many bytes were written.
    seq_write: Option<(f64, u64)>,
}

/// Everything one run measured.
#[derive(Debug)]
struct Report {
    /// The parameters.
    plan: Plan,
    /// The folder the temporary folder was created in.
    base: PathBuf,
    /// Its file system, when known.
    filesystem: Option<&'static str>,
    /// The disk's limits.
    limits: Limits,
    /// One row per workload.
    rows: Vec<Row>,
    /// Wall time of the whole run.
    took: Duration,
}

impl Report {
    /// The peers annals is compared with (none when annals was not measured).
    fn peers(&self) -> Vec<SystemKind> {
        if !self.plan.systems.contains(&SystemKind::Annals) {
            return Vec::new();
        }
        self.plan
            .systems
            .iter()
            .copied()
            .filter(|k| *k != SystemKind::Annals)
            .collect()
    }
}

/// Runs `annals bench`.
pub fn run(args: BenchArgs) -> CliResult {
    let start = Instant::now();
    let plan = Plan::new(&args)?;
    if let Some(path) = &args.plot {
        check_plot_target(path)?;
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("annals-bench-")
        .tempdir_in(&base)
        .map_err(|e| {
            io_error(
                format!("cannot create a temporary folder in {}", base.display()),
                e,
            )
        })?;
    let progress = Progress::new(plan.steps());
    let measured = measure(&plan, tmp.path(), &progress);
    progress.finish();
    let (limits, rows) = measured?;
    tmp.close()
        .map_err(|e| io_error("cannot remove the temporary folder".into(), e))?;
    let report = Report {
        filesystem: filesystem(&base),
        plan,
        base,
        limits,
        rows,
        took: start.elapsed(),
    };
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &json(&report))
            .map_err(|e| CliError::new(ERROR, format!("cannot write the JSON: {e}")))?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &report)?;
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &report)?;
        if !args.json {
            writeln!(out, "chart written to {}", path.display())?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// An I/O failure with what was being done; "not found" maps to its own exit code.
fn io_error(what: String, e: io::Error) -> CliError {
    let code = CliError::from(io::Error::new(e.kind(), "")).code;
    CliError::new(code, format!("{what}: {e}"))
}

/// Fails early when the chart could not be written to `path`.
fn check_plot_target(path: &Path) -> CliResult<()> {
    if path.is_dir() {
        return Err(CliError::new(
            ERROR,
            format!("--plot {} is a folder, not a file", path.display()),
        ));
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => Err(CliError::new(
            ERROR,
            format!(
                "cannot write the chart to {}: folder {} does not exist",
                path.display(),
                parent.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// Runs every selected measure in `dir`.
fn measure(plan: &Plan, dir: &Path, progress: &Progress) -> CliResult<(Limits, Vec<Row>)> {
    let limits = measure_limits(plan, dir, progress)?;
    let mut rows = run_writes(plan, dir, progress)?;
    rows.extend(run_reads(plan, dir, progress)?);
    Ok((limits, rows))
}

/// The progress bar on stderr (drawn only when stderr is a terminal).
struct Progress(ProgressBar);

impl Progress {
    /// A bar of `steps` steps.
    fn new(steps: u64) -> Progress {
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
    fn finish(&self) {
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
    }
    Ok(limits)
}

/// A folder `name` inside `dir`, created.
fn subdir(dir: &Path, name: &str) -> CliResult<PathBuf> {
    let path = dir.join(name);
    std::fs::create_dir(&path)
        .map_err(|e| io_error(format!("cannot create {}", path.display()), e))?;
    Ok(path)
}

/// Opens every system of the plan in `dir`.
fn open_all(plan: &Plan, dir: &Path) -> CliResult<Vec<(SystemKind, Box<dyn System>)>> {
    plan.systems
        .iter()
        .map(|&kind| {
            let sys = kind.open(dir).map_err(failed(kind, "open"))?;
            Ok((kind, sys))
        })
        .collect()
}

/// Runs the write workloads, each on every system in turn, on one store per system.
fn run_writes(plan: &Plan, dir: &Path, progress: &Progress) -> CliResult<Vec<Row>> {
    let selected: Vec<Workload> = plan.workloads().filter(|w| is_write(*w)).collect();
    if selected.is_empty() {
        return Ok(Vec::new());
    }
    let dir = subdir(dir, "write")?;
    let systems = open_all(plan, &dir)?;
    let mut rows = Vec::new();
    for w in selected {
        rows.push(run_row(plan, w, &systems, progress, measure_write)?);
    }
    drop(systems);
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
            let elapsed = workloads::batches(sys, n, batch as usize, plan.payload)?;
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
fn run_reads(plan: &Plan, dir: &Path, progress: &Progress) -> CliResult<Vec<Row>> {
    if !plan.needs_fill() {
        return Ok(Vec::new());
    }
    let dir = subdir(dir, "read")?;
    let systems = open_all(plan, &dir)?;
    for (kind, sys) in &systems {
        progress
            .step(format!("fill · {}", kind.name()), || {
                workloads::fill(sys.as_ref(), plan.events, READ_STREAMS, plan.payload)
            })
            .map_err(failed(*kind, "fill"))?;
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
        rows.push(run_reopens(plan, &dir, progress)?);
    }
    remove(&dir)?;
    Ok(rows)
}

/// Runs one read workload on `sys`, checking every read returns the whole stream or log.
fn measure_read(plan: &Plan, w: Workload, sys: &dyn System) -> BenchResult<Measure> {
    let expect = match w {
        Workload::ReadStream => plan.per_stream(),
        _ => plan.read_events(),
    };
    let (reps, elapsed) = calibrated(plan.min_time, MAX_READS, |n| {
        let start = Instant::now();
        for _ in 0..n {
            let got = match w {
                Workload::ReadStream => sys.read_stream(READ_STREAM)?,
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

/// Reopens every system's filled store ([`workloads::reopen`]).
fn run_reopens(plan: &Plan, dir: &Path, progress: &Progress) -> CliResult<Row> {
    let w = Workload::Reopen;
    let mut results = Vec::new();
    for &kind in &plan.systems {
        let m = progress.step(format!("{} · {}", w.name(), kind.name()), || {
            let (reps, elapsed) = calibrated(plan.min_time, MAX_REOPENS, |n| {
                workloads::reopen(n, || kind.open(dir))
            })?;
            Ok::<_, BenchError>(Measure {
                ops: reps,
                events: reps * plan.read_events(),
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

/// Removes a folder of the run.
fn remove(dir: &Path) -> CliResult<()> {
    std::fs::remove_dir_all(dir)
        .map_err(|e| io_error(format!("cannot remove {}", dir.display()), e))
}

/// The table label of `w`.
fn label(plan: &Plan, w: Workload) -> String {
    match w {
        Workload::Append1 => "append 1 event, 1 thread".into(),
        Workload::Append1Threads8 => "append 1 event, 8 threads".into(),
        Workload::Batch100 => "batches of 100".into(),
        Workload::Batch1000 => "batches of 1,000".into(),
        Workload::ReadStream => format!("read 1 stream of {}", thousands(plan.per_stream())),
        Workload::ReadAll => format!("read all {} events", thousands(plan.read_events())),
        Workload::Reopen => format!("reopen, {} events", thousands(plan.read_events())),
    }
}

/// `n` with thousands separators.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate for the table: whole with separators from 100 up, else three significant digits.
fn rate(v: f64) -> String {
    if !v.is_finite() || v < 0.0 {
        "n/a".into()
    } else if v >= 100.0 {
        thousands(v.round() as u64)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A ratio for the table.
fn ratio(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v >= 10.0 {
        format!("{v:.1}×")
    } else {
        format!("{v:.2}×")
    }
}

/// Width of the label column.
const LABEL_WIDTH: usize = 30;
/// Width of the unit column.
const UNIT_WIDTH: usize = 9;
/// Width of a system's column.
const VALUE_WIDTH: usize = 12;
/// Width of a ratio column.
const RATIO_WIDTH: usize = 15;

/// Prints the results as a text table.
fn print_table(out: &mut impl Write, report: &Report) -> io::Result<()> {
    print_header(out, report)?;
    let peers = report.peers();
    if !report.rows.is_empty() {
        write!(out, "{:<LABEL_WIDTH$} {:<UNIT_WIDTH$}", "workload", "unit")?;
        for kind in &report.plan.systems {
            write!(out, " {:>VALUE_WIDTH$}", kind.name())?;
        }
        for peer in &peers {
            write!(out, " {:>RATIO_WIDTH$}", format!("annals/{}", peer.name()))?;
        }
        writeln!(out)?;
        for row in &report.rows {
            print_row(out, row, &report.plan.systems, &peers)?;
        }
    }
    print_limits(out, report)?;
    let ratios = if peers.is_empty() {
        ""
    } else {
        " ratios above 1× mean annals is faster."
    };
    writeln!(
        out,
        "\nHigher is better;{ratios} Took {:.1} s.",
        report.took.as_secs_f64()
    )
}

/// Prints what was run, where.
fn print_header(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let plan = &report.plan;
    writeln!(
        out,
        "annals bench, size {}: {} single appends, {} events per batch workload and read store, \
         {}-byte payloads",
        plan.size.name(),
        thousands(plan.appends),
        thousands(plan.events),
        plan.payload
    )?;
    let fs = report.filesystem.unwrap_or("unknown file system");
    writeln!(
        out,
        "in {} ({fs}), {} CPUs; every append is durable before it returns",
        report.base.display(),
        cpus()
    )?;
    if matches!(report.filesystem, Some("tmpfs" | "ramfs")) {
        writeln!(
            out,
            "note: {fs} is memory, where fdatasync does nothing; use --dir on a real disk"
        )?;
    }
    writeln!(out)
}

/// Prints one workload row.
fn print_row(
    out: &mut impl Write,
    row: &Row,
    systems: &[SystemKind],
    peers: &[SystemKind],
) -> io::Result<()> {
    write!(
        out,
        "{:<LABEL_WIDTH$} {:<UNIT_WIDTH$}",
        row.label,
        row.unit()
    )?;
    for kind in systems {
        let v = row.get(*kind).map_or_else(|| "-".into(), rate);
        write!(out, " {v:>VALUE_WIDTH$}")?;
    }
    for peer in peers {
        let r = row.ratio(*peer).map_or_else(|| "-".into(), ratio);
        write!(out, " {r:>RATIO_WIDTH$}")?;
    }
    writeln!(out)
}

/// Prints the disk's limits, as rows of their own.
fn print_limits(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let limits = &report.limits;
    if limits.fdatasync.is_none() && limits.seq_write.is_none() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<LABEL_WIDTH$} {:<UNIT_WIDTH$} {:>VALUE_WIDTH$}",
        "disk limit", "unit", "disk"
    )?;
    if let Some((v, _)) = limits.fdatasync {
        let what = format!("write {} B + fdatasync", report.plan.payload);
        writeln!(
            out,
            "{what:<LABEL_WIDTH$} {:<UNIT_WIDTH$} {:>VALUE_WIDTH$}",
            "syncs/s",
            rate(v)
        )?;
    }
    if let Some((v, bytes)) = limits.seq_write {
        let what = format!("sequential write, {} MiB", bytes >> 20);
        writeln!(
            out,
            "{what:<LABEL_WIDTH$} {:<UNIT_WIDTH$} {:>VALUE_WIDTH$}",
            "MB/s",
            rate(v / 1e6)
        )?;
    }
    Ok(())
}

/// CPUs available to this process.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU's model name, from `/proc/cpuinfo` (Linux).
fn cpu_model() -> Option<String> {
    use std::io::BufRead;
    let file = std::fs::File::open("/proc/cpuinfo").ok()?;
    io::BufReader::new(file)
        .lines()
        .take(64)
        .map_while(Result::ok)
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
}

/// The kernel release (Linux).
fn kernel() -> Option<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    Some(release.trim().chars().take(100).collect())
}

/// The kind of file system `path` is on, for the common ones (Linux).
#[cfg(target_os = "linux")]
fn filesystem(path: &Path) -> Option<&'static str> {
    let stat = rustix::fs::statfs(path).ok()?;
    Some(match i128::from(stat.f_type) {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0x0102_1994 => "tmpfs",
        0x8584_58F6 => "ramfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        _ => return None,
    })
}

/// The kind of file system `path` is on (unknown off Linux).
#[cfg(not(target_os = "linux"))]
fn filesystem(_path: &Path) -> Option<&'static str> {
    None
}

/// The results as one JSON document.
fn json(report: &Report) -> serde_json::Value {
    use serde_json::json;
    let plan = &report.plan;
    let peers = report.peers();
    let results: Vec<_> = report
        .rows
        .iter()
        .map(|row| {
            let systems: serde_json::Map<String, serde_json::Value> = row
                .results
                .iter()
                .map(|(kind, m)| (kind.name().to_string(), measure_json(m)))
                .collect();
            let ratios: serde_json::Map<String, serde_json::Value> = peers
                .iter()
                .filter_map(|p| Some((format!("annals/{}", p.name()), json!(row.ratio(*p)?))))
                .collect();
            json!({
                "workload": row.workload.name(),
                "description": row.workload.description(),
                "label": row.label,
                "unit": row.unit(),
                "systems": systems,
                "ratios": ratios,
            })
        })
        .collect();
    json!({
        "annals_version": env!("CARGO_PKG_VERSION"),
        "machine": {
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "cpus": cpus(),
            "cpu_model": cpu_model(),
            "kernel": kernel(),
            "dir": report.base.display().to_string(),
            "filesystem": report.filesystem,
        },
        "parameters": {
            "size": plan.size.name(),
            "appends": plan.appends,
            "events": plan.events,
            "payload_bytes": plan.payload,
            "read_streams": READ_STREAMS,
            "read_stream_events": plan.per_stream(),
            "sequential_write_bytes": plan.seq_bytes,
            "min_time_secs": plan.min_time.as_secs_f64(),
            "systems": plan.systems.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "workloads": plan.items.iter().map(|i| i.name()).collect::<Vec<_>>(),
        },
        "limits": {
            "fdatasync": report.limits.fdatasync.map(|(rate, ops)| json!({
                "ops_per_sec": rate,
                "ops": ops,
                "bytes_per_op": plan.payload,
            })),
            "sequential_write": report.limits.seq_write.map(|(rate, bytes)| json!({
                "bytes_per_sec": rate,
                "bytes": bytes,
            })),
        },
        "results": results,
        "elapsed_secs": report.took.as_secs_f64(),
    })
}

/// One measure as JSON.
fn measure_json(m: &Measure) -> serde_json::Value {
    serde_json::json!({
        "events_per_sec": m.per_sec(m.events),
        "ops_per_sec": m.per_sec(m.ops),
        "events": m.events,
        "ops": m.ops,
        "elapsed_secs": m.elapsed.as_secs_f64(),
    })
}

/// The SVG chart of `--plot`.
mod plot {
    use std::path::Path;

    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    use super::{Report, Row, SystemKind};
    use crate::exit::{CliError, CliResult, ERROR};

    /// Height of the chart, in pixels.
    const HEIGHT: u32 = 520;
    /// Width given to each workload's group of bars, in pixels.
    const GROUP_WIDTH: u32 = 150;
    /// Width of everything else (axis labels, margins), in pixels.
    const FRAME_WIDTH: u32 = 160;

    /// Draws the workload rows of `report` into the SVG file `path`: one group of bars per
    /// workload, one bar per system, on a log scale so that every workload fits.
    pub fn draw(path: &Path, report: &Report) -> CliResult<()> {
        if report.rows.is_empty() {
            return Err(CliError::new(
                ERROR,
                "no workload to draw: --plot needs at least one workload besides the disk limits",
            ));
        }
        render(path, report)
            .map_err(|e| CliError::new(ERROR, format!("cannot draw {}: {e}", path.display())))?;
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return Err(CliError::new(
                ERROR,
                format!("the chart {} came out empty", path.display()),
            ));
        }
        Ok(())
    }

    /// The colour of `kind`'s bars.
    fn colour(kind: SystemKind) -> RGBColor {
        match kind {
            SystemKind::Annals => RGBColor(221, 104, 17),
            SystemKind::Sqlite => RGBColor(46, 110, 170),
            SystemKind::Redb => RGBColor(90, 160, 80),
        }
    }

    /// A rate in few characters: 950, 7.84k, 12.2M, 1M.
    pub(super) fn compact(v: f64) -> String {
        let (scaled, suffix) = match v {
            v if v >= 1e9 => (v / 1e9, "G"),
            v if v >= 1e6 => (v / 1e6, "M"),
            v if v >= 1e3 => (v / 1e3, "k"),
            v => (v, ""),
        };
        let digits = if scaled >= 100.0 {
            0
        } else if scaled >= 10.0 {
            1
        } else {
            2
        };
        let text = format!("{scaled:.digits$}");
        let text = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.')
        } else {
            &text
        };
        format!("{text}{suffix}")
    }

    /// The one or two lines labelling a workload under its bars.
    fn axis_label(row: &Row) -> Vec<String> {
        let label = &row.label;
        if let Some((a, b)) = label.split_once(", ") {
            return vec![a.to_string(), b.to_string()];
        }
        if label.len() <= 18 {
            return vec![label.clone()];
        }
        let middle = label.len() / 2;
        let split = label
            .match_indices(' ')
            .map(|(i, _)| i)
            .min_by_key(|i| i.abs_diff(middle));
        match split {
            Some(i) => vec![label[..i].to_string(), label[i + 1..].to_string()],
            None => vec![label.clone()],
        }
    }

    /// The log-scale range covering every value, in whole decades.
    fn y_range(report: &Report) -> (f64, f64) {
        let values = report
            .rows
            .iter()
            .flat_map(|r| r.results.iter().map(|(_, m)| r.value(m)))
            .filter(|v| v.is_finite() && *v > 0.0);
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            return (1.0, 10.0);
        }
        let lo = 10f64.powf(lo.log10().floor());
        let hi = 10f64.powf((hi.log10() + 0.15).ceil());
        (lo, hi.max(lo * 10.0))
    }

    /// Draws the chart; errors are plotters' own.
    fn render(path: &Path, report: &Report) -> Result<(), Box<dyn std::error::Error>> {
        let n = report.rows.len();
        let width = FRAME_WIDTH + GROUP_WIDTH * n as u32;
        let root = SVGBackend::new(path, (width, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (lo, hi) = y_range(report);
        let plan = &report.plan;
        let caption = format!(
            "annals bench ({}, {}-byte payloads): rate, log scale",
            plan.size.name(),
            plan.payload
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .y_desc("events/s (reopen: opens/s)")
            .y_label_formatter(&|v| compact(*v))
            .draw()?;
        let systems = &plan.systems;
        let bar = 0.8 / systems.len() as f64;
        let value_style = TextStyle::from(("sans-serif", 11).into_font())
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        for (j, &kind) in systems.iter().enumerate() {
            let fill = colour(kind).filled();
            let bars: Vec<(f64, f64)> = report
                .rows
                .iter()
                .enumerate()
                .filter_map(|(i, row)| {
                    let v = row.get(kind).filter(|v| v.is_finite() && *v > 0.0)?;
                    Some((i as f64 - 0.4 + bar * j as f64, v))
                })
                .collect();
            chart
                .draw_series(
                    bars.iter()
                        .map(|&(x, v)| Rectangle::new([(x, lo), (x + bar * 0.92, v)], fill)),
                )?
                .label(kind.name())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], fill));
            chart
                .draw_series(bars.iter().map(|&(x, v)| {
                    Text::new(compact(v), (x + bar * 0.46, v), value_style.clone())
                }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        let label_style =
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (i, row) in report.rows.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64, lo));
            for (k, line) in axis_label(row).into_iter().enumerate() {
                root.draw(&Text::new(
                    line,
                    (x, y + 8 + 16 * k as i32),
                    label_style.clone(),
                ))?;
            }
        }
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn rates_and_ratios_read_well() {
        assert_eq!(rate(1234.4), "1,234");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(1.234), "1.23");
        assert_eq!(rate(f64::NAN), "n/a");
        assert_eq!(ratio(1.284), "1.28×");
        assert_eq!(ratio(11.14), "11.1×");
        assert_eq!(plot::compact(7838.0), "7.84k");
        assert_eq!(plot::compact(12_220_000.0), "12.2M");
        assert_eq!(plot::compact(950.0), "950");
        assert_eq!(plot::compact(1_000_000.0), "1M");
        assert_eq!(plot::compact(7_800.0), "7.8k");
    }

    #[test]
    fn payload_is_checked() {
        assert!(parse_payload("0").is_err());
        assert!(parse_payload("x").is_err());
        assert!(parse_payload("1048577").is_err());
        assert_eq!(parse_payload("100"), Ok(100));
    }

    #[test]
    fn workload_names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(Workload::from_name(w.name()), Some(w));
        }
    }
}
