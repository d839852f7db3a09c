//! `annals rebuild-index` and `annals repair`: fixing a store, only on explicit request.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use annals::{Position, Store};

use crate::exit::CliResult;
use crate::inspect::{open_with, store_error};

/// Options of `annals rebuild-index`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The index sidecar (NAME.annals.index) is derived from the log: this discards it and
rebuilds it (the store must not be open elsewhere). It refuses when the log ends before what the
old sidecar covered (acknowledged events are missing from the log, or it was cut short), unless
--accept-loss says to go on; then it reports what was lost.

Examples:
  annals rebuild-index shop.annals
  annals rebuild-index shop.annals --accept-loss"
)]
pub struct RebuildIndexArgs {
    /// The store.
    pub store: PathBuf,
    /// Rebuild even when acknowledged events are missing from the log, and report them.
    #[arg(long)]
    pub accept_loss: bool,
}

/// Runs `annals rebuild-index`.
pub fn rebuild_index(args: RebuildIndexArgs) -> CliResult {
    let start = Instant::now();
    let builder = Store::builder()
        .rebuild_index(true)
        .accept_loss(args.accept_loss);
    // The rebuild reads the whole log inside the open: a spinner with the elapsed time.
    let spinner = crate::progress::progress("rebuilding the index", 0, "from the log");
    let opened = open_with(&args.store, builder);
    spinner.finish_and_clear();
    let store = opened?;
    let report = store.recovery_report().clone();
    if let Some(lost) = &report.lost {
        println!("accepted a loss: {}", lost.description);
    }
    if let Some(t) = &report.truncated {
        println!(
            "dropped {} bytes at position {} ({}){}",
            t.dropped_bytes,
            t.at,
            t.reason,
            t.saved_to
                .as_ref()
                .map(|p| format!("; saved them to {}", p.display()))
                .unwrap_or_default()
        );
    }
    let end = store.end_position().as_u64();
    store.close()?;
    println!(
        "rebuilt the index from the log: {} commits, log end {end}, in {:.1?}",
        report.commits_replayed,
        start.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

/// Options of `annals repair`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Cuts the log at a byte position, for a store that `open` or `verify` reports corrupt at that
position. The bytes removed are saved first beside the store (NAME.annals.removed-POS); commits
before POS are kept whole; the index is rebuilt. This removes events: it runs only with
--truncate-at.

Examples:
  annals verify shop.annals            # reports: verification failed at position 81920: ...
  annals repair shop.annals --truncate-at 81920"
)]
pub struct RepairArgs {
    /// The store.
    pub store: PathBuf,
    /// Cut the log here (a byte position, as `verify` and errors report it).
    #[arg(long, value_name = "POS")]
    pub truncate_at: u64,
}

/// Runs `annals repair`.
pub fn repair(args: RepairArgs) -> CliResult {
    let report = Store::truncate_log(&args.store, Position::new(args.truncate_at))
        .map_err(|e| store_error(&args.store, e))?;
    match &report.saved_to {
        Some(saved) => println!(
            "removed {} bytes from position {}; saved them to {}",
            report.removed,
            args.truncate_at,
            saved.display()
        ),
        None => println!(
            "nothing was written at or after position {}",
            args.truncate_at
        ),
    }
    let spinner = crate::progress::progress("reopening and reindexing", 0, "the store");
    let opened = open_with(&args.store, Store::builder());
    spinner.finish_and_clear();
    let store = opened?;
    let info = store.info()?;
    store.close()?;
    println!(
        "the store opens: {} events in {} streams, log end {}",
        info.events,
        info.streams,
        info.end.as_u64()
    );
    Ok(ExitCode::SUCCESS)
}
