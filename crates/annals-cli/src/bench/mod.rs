//! `annals bench`: annals, SQLite, a plain redb table and annals' PostgreSQL backend side by
//! side on the standard workloads, in one run, in a temporary folder (and throwaway databases),
//! with the disk's own limits for reference; and `--pg-scaling`, PostgreSQL's writer scaling
//! across processes beside annals' across threads ([`scaling`]).
//!
//! The workloads themselves are [`annals_bench`], shared with the criterion benches
//! (`benches/engine.rs`); this module chooses their sizes ([`plan`]), runs them ([`measure`])
//! in a temporary folder on the disk to measure ([`host`]), and prints the results as a table,
//! as JSON, or as an SVG chart ([`report`]).

mod host;
mod measure;
mod plan;
mod reclaim;
mod report;
pub(crate) mod scaling;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use annals_bench::pg::PgSettings;

use crate::exit::{CliError, CliResult, ERROR, USAGE};
use host::{filesystem, remove_temp_folder, temp_folder};
use measure::{Progress, measure};
use plan::{Item, Plan, Size, SystemKind};
use report::{Report, json, plot, print_table};

/// Examples and notes printed after `annals bench --help`.
const AFTER_HELP: &str = "\
Examples:
  annals bench                                   # small: seconds on an SSD
  annals bench --size medium --plot bench.svg    # also draw a bar chart
  annals bench --dir /mnt/data                   # measure the disk mounted there
  annals bench --systems annals,sqlite --workloads append-1,batch-100
  annals bench --events 50000 --payload 1024 --json > bench.json
  annals bench --reclaim 1024 --payload 1024         # 1 GB store, 90 % deleted, reclaimed
  annals bench --pg-url \"host=/run/postgresql user=postgres dbname=postgres\"
  ANNALS_PG_URL=... annals bench --pg-scaling 1,2,4,8 --seconds 5

Every append is durable (synced to the disk) before it returns, in every system: annals
(default options), SQLite (WAL, synchronous=FULL, an events table with a unique (stream,
version), one BEGIN IMMEDIATE transaction per append), redb (a log table and a stream index,
one durable write transaction per append) and PostgreSQL (annals' PgStore: one transaction per
append that reads the stream's version and inserts; PgStore serialises commits on one head row
so that the global order has no gaps). PostgreSQL runs with synchronous_commit on: the bench
checks `SHOW synchronous_commit` and `SHOW fsync` and refuses a server where either is off.
PostgreSQL is measured when --pg-url or ANNALS_PG_URL names a server (then it is among the
default systems); each run works in a new database annals_bench_<uuid> there, dropped at the
end (the user must be allowed to create databases). Its data directory is wherever the server
keeps it, not --dir.

Rates are events per second (opens per second for reopen), higher is better; annals/peer above
1× means annals is faster. Disks vary from minute to minute: compare the ratios within one run.
The temporary folder is removed at the end.";
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

    /// Systems to measure, comma-separated; the ratio columns need annals [default:
    /// annals,sqlite,redb, plus postgres when --pg-url or ANNALS_PG_URL is given].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SYSTEMS")]
    systems: Vec<SystemKind>,

    /// The PostgreSQL server to measure, as a libpq connection string (`host=/run/postgresql
    /// user=postgres dbname=postgres`) or a postgres:// URI; the run creates its own database
    /// there and drops it at the end [default: the ANNALS_PG_URL environment variable].
    #[arg(long, value_name = "URL")]
    pg_url: Option<String>,

    /// Instead of the workloads: PostgreSQL's writer scaling. For each N, N processes (copies
    /// of this program) each append one event per durable append to streams of their own for
    /// --seconds, started together; then annals' file store does the same with N threads in
    /// one process (it is a single-process store; its threads share group commits). Prints
    /// appends per second in all and per writer, p50/p99 latency of one append and the speed-up
    /// over the smallest N, after checking that the database holds exactly the appends the
    /// writers reported, at positions 1 to their number (no gap). Needs --pg-url or
    /// ANNALS_PG_URL; each PgStore opens 16 connections, so the server needs 16 × N free.
    #[arg(
        long,
        value_name = "N,N,...",
        value_delimiter = ',',
        value_parser = clap::value_parser!(u32).range(1..=64),
        conflicts_with = "reclaim"
    )]
    pg_scaling: Vec<u32>,

    /// Seconds each writer appends for, per N, with --pg-scaling.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 3,
        value_parser = clap::value_parser!(u64).range(1..=600),
        requires = "pg_scaling"
    )]
    seconds: u64,

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

    /// Instead of the workloads: fill a store of this many MB (events of --payload bytes, 1000
    /// per stream), delete 90 % of the streams and give the space back (annals: scavenge with
    /// the store open; SQLite: DELETE then VACUUM; redb: delete then compact), with single
    /// appends going on in another thread meanwhile.
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    reclaim: Option<u64>,
}

impl BenchArgs {
    /// The PostgreSQL connection string: `--pg-url`, else a non-empty `ANNALS_PG_URL`.
    fn pg_url(&self) -> Option<String> {
        self.pg_url
            .clone()
            .or_else(|| std::env::var("ANNALS_PG_URL").ok())
            .filter(|url| !url.trim().is_empty())
    }

    /// The PostgreSQL connection string, or the error saying how to give one (`what` needs it).
    fn require_pg_url(&self, what: &str) -> CliResult<String> {
        self.pg_url().ok_or_else(|| {
            CliError::new(
                USAGE,
                format!(
                    "{what} needs a PostgreSQL server: pass --pg-url URL or set ANNALS_PG_URL \
                     (a libpq connection string such as \"host=/run/postgresql user=postgres \
                     dbname=postgres\"; `scripts/pg start DIR` starts a throwaway server and \
                     prints one)"
                ),
            )
        })
    }

    /// The systems to measure, in canonical order, without duplicates: `--systems`, or by
    /// default annals, SQLite and redb, with PostgreSQL when a server is given.
    fn systems(&self) -> CliResult<Vec<SystemKind>> {
        let mut systems = if self.systems.is_empty() {
            let mut default = vec![SystemKind::Annals, SystemKind::Sqlite, SystemKind::Redb];
            if self.pg_url().is_some() {
                default.push(SystemKind::Postgres);
            }
            default
        } else {
            self.systems.clone()
        };
        systems.sort();
        systems.dedup();
        if systems.is_empty() {
            return Err(CliError::new(USAGE, "--systems needs at least one system"));
        }
        Ok(systems)
    }
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

/// Runs `annals bench`.
pub fn run(args: BenchArgs) -> CliResult {
    if let Some(mb) = args.reclaim {
        return reclaim::run(&args, mb);
    }
    if !args.pg_scaling.is_empty() {
        return scaling::run(&args);
    }
    let start = Instant::now();
    let plan = Plan::new(&args)?;
    if let Some(path) = &args.plot {
        check_plot_target(path)?;
    }
    let postgres = match &plan.pg_url {
        Some(url) => Some(durable_server(url)?),
        None => None,
    };
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = temp_folder(&base)?;
    let progress = Progress::new(plan.steps());
    let measured = measure(&plan, tmp.path(), &progress);
    progress.finish();
    let (limits, rows) = measured?;
    remove_temp_folder(tmp)?;
    let report = Report {
        filesystem: filesystem(&base),
        postgres,
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

/// The settings of the PostgreSQL server `url` reaches, refused when its commits would not be
/// durable.
fn durable_server(url: &str) -> CliResult<PgSettings> {
    let settings = PgSettings::read(url).map_err(|e| CliError::new(ERROR, e.to_string()))?;
    if let Some(why) = settings.not_durable() {
        return Err(CliError::new(
            ERROR,
            format!("PostgreSQL would not be measured with durable appends: {why}"),
        ));
    }
    Ok(settings)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_checked() {
        assert!(parse_payload("0").is_err());
        assert!(parse_payload("x").is_err());
        assert!(parse_payload("1048577").is_err());
        assert_eq!(parse_payload("100"), Ok(100));
    }
}
