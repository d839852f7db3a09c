//! `annals`: look inside a store, check it, move events in and out, repair it, and measure
//! annals against SQLite, redb and PostgreSQL on this machine.

mod bench;
mod exit;
mod inspect;
mod lifecycle;
mod maintenance;
mod progress;
mod tail;
mod transfer;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The annals event store's command-line tool.
#[derive(Debug, Parser)]
#[command(name = "annals", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  annals info shop.annals
  annals verify shop.annals
  annals dump shop.annals --stream cart-7
  annals tail -f shop.annals                 # while its program runs
  annals export shop.annals backup.jsonl.gz
  annals bench --size small

Exit codes: 0 success; 1 error; 2 usage; 3 not found or not a store; 4 locked by another process;
5 corrupt (or verification failed).";

#[derive(Debug, Subcommand)]
enum Command {
    /// Shows a store's format, size, counts, last position and index coverage.
    Info(inspect::InfoArgs),
    /// Checks every frame, stream version and index entry; exit code 5 at the first problem.
    Verify(inspect::VerifyArgs),
    /// Prints events as JSON lines (a stream, a category, a type, or the whole log).
    Dump(inspect::DumpArgs),
    /// Prints the last events, and with -f each new one as it is committed (never blocks the writer).
    Tail(tail::TailArgs),
    /// Writes every event to a portable JSON-lines file (gzip when it ends in .gz).
    Export(transfer::ExportArgs),
    /// Loads an export into a new or existing store (idempotent; checks stream versions).
    Import(transfer::ImportArgs),
    /// Gives back the disk space of deleted, expired and superseded events (--dry-run reports).
    Scavenge(lifecycle::ScavengeArgs),
    /// Deletes a stream (soft, or for good with --tombstone).
    Delete(lifecycle::DeleteArgs),
    /// Deletes a stream and overwrites its events' bytes in the file (personal data).
    Erase(lifecycle::EraseArgs),
    /// Discards the index sidecar and rebuilds it from the log.
    RebuildIndex(maintenance::RebuildIndexArgs),
    /// Cuts a damaged log at a position, saving the removed bytes first.
    Repair(maintenance::RepairArgs),
    /// Measures annals, SQLite, redb and PostgreSQL side by side on the standard workloads.
    Bench(bench::BenchArgs),
    /// One writer process of `annals bench --pg-scaling` (started by it).
    #[command(hide = true)]
    BenchPgWriter(bench::scaling::WriterArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => inspect::info(args),
        Command::Verify(args) => inspect::verify(args),
        Command::Dump(args) => inspect::dump(args),
        Command::Tail(args) => tail::tail(args),
        Command::Export(args) => transfer::export(args),
        Command::Import(args) => transfer::import(args),
        Command::Scavenge(args) => lifecycle::scavenge(args),
        Command::Delete(args) => lifecycle::delete(args),
        Command::Erase(args) => lifecycle::erase(args),
        Command::RebuildIndex(args) => maintenance::rebuild_index(args),
        Command::Repair(args) => maintenance::repair(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchPgWriter(args) => bench::scaling::writer(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => e.report(),
    }
}
