//! `annals`: look inside a store, check it, move events in and out, repair it, and measure
//! annals against SQLite and redb on this machine.

mod bench;
mod exit;

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
  annals export shop.annals backup.jsonl.gz
  annals bench --size small

Exit codes: 0 success; 1 error; 2 usage; 3 not found or not a store; 4 locked by another process;
5 corrupt (or verification failed).";

#[derive(Debug, Subcommand)]
enum Command {
    /// Measures annals, SQLite and redb side by side on the standard workloads.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => e.report(),
    }
}
