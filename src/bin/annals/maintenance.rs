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
rebuilds it (the store must not be open elsewhere).

Example:
  annals rebuild-index shop.annals"
)]
pub struct RebuildIndexArgs {
    /// The store.
    pub store: PathBuf,
}

/// Runs `annals rebuild-index`.
pub fn rebuild_index(args: RebuildIndexArgs) -> CliResult {
    let start = Instant::now();
    let store = open_with(&args.store, Store::builder().rebuild_index(true))?;
    let report = store.recovery_report().clone();
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
    let store = open_with(&args.store, Store::builder())?;
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
