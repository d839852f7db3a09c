//! `annals bench` (being written).

use std::process::ExitCode;

use crate::exit::CliResult;

/// Options of `annals bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Runs `annals bench`.
pub fn run(_args: BenchArgs) -> CliResult {
    Ok(ExitCode::SUCCESS)
}
