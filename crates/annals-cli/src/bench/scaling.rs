//! `annals bench --pg-scaling N,N,...`: how PostgreSQL's appends scale with writer processes,
//! beside annals' file store with as many threads in one process.
//!
//! For each N the parent creates a fresh database, spawns N copies of this program as writers
//! (the hidden `annals bench-pg-writer`), waits until every one has connected and says `ready`
//! on its standard output, then writes `go` to each one's standard input, so that process
//! start-up and connecting are not timed. Each writer appends one event per durable append to
//! streams of its own for the given time ([`annals_bench::scaling::write_for`]) and prints one
//! JSON line ([`WriterReport`]). The parent sums them and checks the database: it must hold
//! exactly the appends reported, at positions 1 to their number ([`LogCheck`]).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::Duration;

use annals_bench::pg::{LogCheck, PG_POOL_CONNECTIONS, PgDatabase, open_postgres};
use annals_bench::scaling::{self, Latencies, WriterReport, WriterRun};
use annals_bench::{System, open_annals};

use super::host::{filesystem, remove, remove_temp_folder, subdir, temp_folder};
use super::plan::thousands;
use super::report::{postgres_json, postgres_line};
use super::{BenchArgs, durable_server};
use crate::exit::{CliError, CliResult, ERROR, USAGE};

/// Streams each writer appends to, round robin.
const STREAMS_PER_WRITER: u32 = 4;
/// The environment variable the parent hands a writer its database's connection string in (not
/// an argument, so that a password stays out of the process list).
const WRITER_URL_ENV: &str = "ANNALS_BENCH_WRITER_URL";
/// What a writer prints once connected.
const READY: &str = "ready";
/// What the parent writes to start the writers.
const GO: &str = "go";

/// Options of the hidden `annals bench-pg-writer`: one writer process of `--pg-scaling`.
#[derive(Debug, clap::Args)]
pub(crate) struct WriterArgs {
    /// The database (a libpq connection string) [default: ANNALS_BENCH_WRITER_URL].
    #[arg(long, value_name = "URL")]
    url: Option<String>,

    /// This writer's number (its streams are writer<K>-0, writer<K>-1, ...).
    #[arg(long, value_name = "K", default_value_t = 0)]
    writer: u32,

    /// How long to append for, from `go`.
    #[arg(long, value_name = "S", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,

    /// Streams to append to, round robin.
    #[arg(long, value_name = "N", default_value_t = STREAMS_PER_WRITER, value_parser = clap::value_parser!(u32).range(1..=1000))]
    streams: u32,

    /// Payload of every event, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = super::parse_payload)]
    payload: usize,
}

/// Runs one writer: connects, prints `ready`, waits for `go` on standard input, appends for
/// `--seconds`, prints its [`WriterReport`] as one JSON line.
pub(crate) fn writer(args: WriterArgs) -> CliResult {
    let url = args
        .url
        .clone()
        .or_else(|| std::env::var(WRITER_URL_ENV).ok())
        .ok_or_else(|| CliError::new(USAGE, format!("--url or {WRITER_URL_ENV} is needed")))?;
    let sys = open_postgres(&url)
        .map_err(|e| CliError::new(ERROR, format!("writer {}: {e}", args.writer)))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}")?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != GO {
        return Err(CliError::new(
            ERROR,
            format!("writer {}: not started (no `{GO}`)", args.writer),
        ));
    }
    let run = scaling::write_for(
        &sys,
        args.writer,
        args.streams,
        args.payload,
        Duration::from_secs(args.seconds),
    )
    .map_err(|e| CliError::new(ERROR, format!("writer {}: {e}", args.writer)))?;
    serde_json::to_writer(&mut out, &run.report())
        .map_err(|e| CliError::new(ERROR, format!("cannot write the report: {e}")))?;
    writeln!(out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// One row of the table: N writers of one system.
#[derive(Debug, Clone)]
struct ScalingRow {
    /// `postgres` or `annals`.
    system: &'static str,
    /// Whether the writers were processes (else threads of one process).
    processes: bool,
    /// Writers.
    writers: u32,
    /// Appends they made in all.
    appends: u64,
    /// Appends per second in all (the sum of the writers' rates: they ran at the same time).
    rate: f64,
    /// Latencies of every append.
    latencies: Latencies,
    /// Events the store held afterwards.
    in_log: u64,
}

impl ScalingRow {
    /// Sums the writers' runs.
    fn new(system: &'static str, processes: bool, runs: &[WriterRun], in_log: u64) -> Self {
        let mut latencies = Latencies::default();
        for r in runs {
            latencies.merge(&r.latencies);
        }
        ScalingRow {
            system,
            processes,
            writers: runs.len() as u32,
            appends: runs.iter().map(|r| r.appends).sum(),
            rate: runs.iter().map(WriterRun::rate).sum(),
            latencies,
            in_log,
        }
    }

    /// The writers, as the table names them.
    fn who(&self) -> String {
        let (one, many) = if self.processes {
            ("process", "processes")
        } else {
            ("thread", "threads")
        };
        format!(
            "{} {}",
            self.writers,
            if self.writers == 1 { one } else { many }
        )
    }
}

/// Runs `annals bench --pg-scaling`.
pub(super) fn run(args: &BenchArgs) -> CliResult {
    let url = args.require_pg_url("--pg-scaling")?;
    let mut counts = args.pg_scaling.clone();
    counts.sort_unstable();
    counts.dedup();
    let most = u64::from(counts.last().copied().unwrap_or(1));
    let duration = Duration::from_secs(args.seconds);
    let settings = durable_server(&url)?;
    // Each writer's PgStore opens its whole pool; the parent's checks take one more.
    let needed = PG_POOL_CONNECTIONS * most + 2;
    if settings.usable_connections() < needed {
        return Err(CliError::new(
            ERROR,
            format!(
                "{most} writer processes need about {needed} connections ({PG_POOL_CONNECTIONS} \
                 per PgStore) but the server allows {} (max_connections {} less {} reserved): \
                 raise max_connections or ask for fewer processes",
                settings.usable_connections(),
                settings.max_connections,
                settings.reserved_connections
            ),
        ));
    }
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(ERROR, format!("cannot find this program's path: {e}")))?;
    let mut rows = Vec::new();
    for &n in &counts {
        eprintln!(
            "postgres: {n} writer process{} for {} s ...",
            if n == 1 { "" } else { "es" },
            args.seconds
        );
        rows.push(run_processes(&exe, &url, n, args.payload, duration)?);
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = temp_folder(&base)?;
    for &n in &counts {
        eprintln!(
            "annals: {n} writer thread{} for {} s ...",
            if n == 1 { "" } else { "s" },
            args.seconds
        );
        rows.push(run_threads(tmp.path(), n, args.payload, duration)?);
    }
    remove_temp_folder(tmp)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &json(args, &settings, &base, &rows))
            .map_err(|e| CliError::new(ERROR, format!("cannot write the JSON: {e}")))?;
        writeln!(out)?;
    } else {
        print_table(&mut out, args, &settings, &base, &rows)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The writer processes of one N, stopped and reaped if the run ends early.
struct Writers {
    children: Vec<(u32, Child)>,
}

impl Writers {
    /// Waits for writer `k` to exit and says how it ended.
    fn exit_of(&mut self, k: usize) -> String {
        match self.children[k].1.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("cannot wait for it: {e}"),
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// N writer processes on a fresh database; checks it afterwards.
fn run_processes(
    exe: &Path,
    url: &str,
    n: u32,
    payload: usize,
    duration: Duration,
) -> CliResult<ScalingRow> {
    let pg_error = |e: annals_bench::BenchError| CliError::new(ERROR, format!("postgres: {e}"));
    let db = PgDatabase::create(url).map_err(pg_error)?;
    // The schema exists before the writers connect: they do not race to create it.
    drop(open_postgres(db.url()).map_err(pg_error)?);
    let mut writers = Writers {
        children: Vec::new(),
    };
    let mut pipes: Vec<(ChildStdin, BufReader<ChildStdout>)> = Vec::new();
    for k in 0..n {
        let mut child = Command::new(exe)
            .args(["bench-pg-writer", "--writer", &k.to_string()])
            .args(["--seconds", &duration.as_secs().to_string()])
            .args(["--streams", &STREAMS_PER_WRITER.to_string()])
            .args(["--payload", &payload.to_string()])
            .env(WRITER_URL_ENV, db.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| CliError::new(ERROR, format!("cannot start writer {k}: {e}")))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(CliError::new(ERROR, "a writer's pipes are missing"));
        };
        writers.children.push((k, child));
        pipes.push((stdin, BufReader::new(stdout)));
    }
    for (k, (_, stdout)) in pipes.iter_mut().enumerate() {
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != READY {
            let exit = writers.exit_of(k);
            return Err(CliError::new(
                ERROR,
                format!("writer {k} did not start ({exit}); see its message above"),
            ));
        }
    }
    for (stdin, _) in &mut pipes {
        writeln!(stdin, "{GO}")?;
        stdin.flush()?;
    }
    let mut runs = Vec::with_capacity(n as usize);
    for (k, (_, stdout)) in pipes.iter_mut().enumerate() {
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let report: Option<WriterReport> = serde_json::from_str(line.trim()).ok();
        let Some(report) = report else {
            let exit = writers.exit_of(k);
            return Err(CliError::new(
                ERROR,
                format!("writer {k} failed ({exit}); see its message above"),
            ));
        };
        runs.push(report.run().map_err(pg_error)?);
    }
    for (k, child) in &mut writers.children {
        let status = child.wait()?;
        if !status.success() {
            return Err(CliError::new(
                ERROR,
                format!("writer {k} ended with {status} after reporting"),
            ));
        }
    }
    drop(pipes);
    let row = ScalingRow::new("postgres", true, &runs, 0);
    let check = LogCheck::read(db.url()).map_err(pg_error)?;
    if let Some(problem) = check.problem(row.appends) {
        return Err(CliError::new(
            ERROR,
            format!("postgres, {n} writer processes: event-count check failed: {problem}"),
        ));
    }
    db.remove().map_err(pg_error)?;
    Ok(ScalingRow {
        in_log: check.events,
        ..row
    })
}

/// N writer threads on a fresh annals store in `dir`; checks it afterwards.
fn run_threads(dir: &Path, n: u32, payload: usize, duration: Duration) -> CliResult<ScalingRow> {
    let annals_error = |e: annals_bench::BenchError| CliError::new(ERROR, format!("annals: {e}"));
    let dir = subdir(dir, &format!("threads-{n}"))?;
    let sys = open_annals(&dir).map_err(annals_error)?;
    let runs = scaling::write_threads(&sys, n, STREAMS_PER_WRITER, payload, duration)
        .map_err(annals_error)?;
    let in_log = sys.read_all().map_err(annals_error)?;
    drop(sys);
    remove(&dir)?;
    let row = ScalingRow::new("annals", false, &runs, in_log);
    if in_log != row.appends {
        return Err(CliError::new(
            ERROR,
            format!(
                "annals, {n} writer threads: the store holds {in_log} events but the writers \
                 reported {} appends",
                row.appends
            ),
        ));
    }
    Ok(row)
}

/// Microseconds as milliseconds for the table.
fn ms(us: Option<u64>) -> String {
    match us {
        Some(us) if us < 100 => format!("{:.3}", us as f64 / 1000.0),
        Some(us) => format!("{:.2}", us as f64 / 1000.0),
        None => "-".into(),
    }
}

/// The rate of the row with the fewest writers of the same system (what speed-ups are over).
fn baseline(rows: &[ScalingRow], row: &ScalingRow) -> Option<f64> {
    rows.iter()
        .filter(|r| r.system == row.system)
        .min_by_key(|r| r.writers)
        .map(|r| r.rate)
        .filter(|r| *r > 0.0)
}

/// Prints the table.
fn print_table(
    out: &mut impl Write,
    args: &BenchArgs,
    settings: &annals_bench::pg::PgSettings,
    base: &Path,
    rows: &[ScalingRow],
) -> std::io::Result<()> {
    writeln!(
        out,
        "writer scaling: one {}-byte event per durable append, {STREAMS_PER_WRITER} streams per \
         writer, {} s per row",
        args.payload, args.seconds
    )?;
    writeln!(out, "{}", postgres_line(settings))?;
    writeln!(
        out,
        "annals: file store in {} ({}), N threads of one process (it is a single-process store)",
        base.display(),
        filesystem(base).unwrap_or("unknown file system")
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<9} {:<13} {:>10} {:>11} {:>11} {:>8} {:>8} {:>9} {:>10}",
        "system",
        "writers",
        "appends",
        "appends/s",
        "per writer",
        "p50 ms",
        "p99 ms",
        "speed-up",
        "in log"
    )?;
    for row in rows {
        let speedup = baseline(rows, row).map_or("-".into(), |b| format!("{:.2}×", row.rate / b));
        writeln!(
            out,
            "{:<9} {:<13} {:>10} {:>11} {:>11} {:>8} {:>8} {:>9} {:>10}",
            row.system,
            row.who(),
            thousands(row.appends),
            thousands(row.rate.round() as u64),
            thousands((row.rate / f64::from(row.writers.max(1))).round() as u64),
            ms(row.latencies.percentile_us(0.50)),
            ms(row.latencies.percentile_us(0.99)),
            speedup,
            thousands(row.in_log)
        )?;
    }
    let smallest = rows.iter().map(|r| r.writers).min().unwrap_or(1);
    writeln!(
        out,
        "\nappends/s: the sum of the writers' rates (they ran at the same time); p50/p99: latency \
         of one append,\nover every writer's appends; speed-up: over {smallest} writer{} of the \
         same system; in log: events the store held\nafterwards. Checked: each PostgreSQL \
         database held exactly the appends its writers reported, at\npositions 1 to their number \
         (no gap); PgStore commits one append at a time (a lock on its head row).",
        if smallest == 1 { "" } else { "s" }
    )
}

/// The results as one JSON document.
fn json(
    args: &BenchArgs,
    settings: &annals_bench::pg::PgSettings,
    base: &Path,
    rows: &[ScalingRow],
) -> serde_json::Value {
    use serde_json::json;
    let rows: Vec<_> = rows
        .iter()
        .map(|row| {
            json!({
                "system": row.system,
                "writers": row.writers,
                "writer_kind": if row.processes { "processes" } else { "threads" },
                "appends": row.appends,
                "appends_per_sec": row.rate,
                "appends_per_sec_per_writer": row.rate / f64::from(row.writers.max(1)),
                "p50_us": row.latencies.percentile_us(0.50),
                "p99_us": row.latencies.percentile_us(0.99),
                "speedup": baseline(rows, row).map(|b| row.rate / b),
                "events_in_log": row.in_log,
            })
        })
        .collect();
    json!({
        "annals_version": env!("CARGO_PKG_VERSION"),
        "workload": "pg-scaling",
        "seconds": args.seconds,
        "payload_bytes": args.payload,
        "streams_per_writer": STREAMS_PER_WRITER,
        "postgres": postgres_json(settings),
        "annals_dir": base.display().to_string(),
        "annals_filesystem": filesystem(base),
        "log_check": "passed",
        "rows": rows,
    })
}
