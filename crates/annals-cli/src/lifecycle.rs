//! `annals scavenge`, `annals delete` and `annals erase`: making a store smaller, on request.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use annals::{ExpectedVersion, ScavengeOptions, Store};
use serde_json::json;

use crate::exit::{CliError, CliResult, ERROR};
use crate::inspect::{disk_use, open_with};

/// Options of `annals scavenge`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Gives back the disk space of every event no read returns any more (deleted, truncated,
expired streams; checkpoints, outbox progress and snapshots that newer ones replaced). Surviving
events never move: positions and checkpoints stay valid. The file keeps its length; its disk use
(du) drops by the bytes reported. The store must not be open elsewhere (a program can call
Store::scavenge while it runs instead). --dry-run only reports.

Examples:
  annals scavenge shop.annals --dry-run
  annals scavenge shop.annals --json"
)]
pub struct ScavengeArgs {
    /// The store.
    pub store: PathBuf,
    /// Report what would be removed and freed; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `annals scavenge`.
pub fn scavenge(args: ScavengeArgs) -> CliResult {
    let builder = Store::builder().read_only(args.dry_run);
    let store = open_with(&args.store, builder)?;
    let path = store.path().to_owned();
    let before = disk_use(&path);
    let start = Instant::now();
    let r = store.scavenge_with(ScavengeOptions {
        dry_run: args.dry_run,
        ..Default::default()
    })?;
    let took = start.elapsed();
    store.close()?;
    let after = disk_use(&path);
    if args.json {
        println!(
            "{}",
            json!({
                "dry_run": r.dry_run,
                "events": r.events,
                "engine_records": r.records,
                "bytes_removed": r.bytes_removed,
                "bytes_freed": r.bytes_freed,
                "gaps": r.gaps,
                "segments_busy": r.segments_busy,
                "up_to": r.up_to.as_u64(),
                "disk_use_before": before,
                "disk_use_after": after,
                "seconds": took.as_secs_f64(),
            })
        );
    } else {
        let verb = if r.dry_run { "would remove" } else { "removed" };
        println!(
            "{verb} {} events ({} of them superseded engine records), {} bytes of log, \
             in {} gaps; {} {} bytes back to the file system ({:.2} s)",
            r.events,
            r.records,
            r.bytes_removed,
            r.gaps,
            if r.dry_run { "would give" } else { "gave" },
            r.bytes_freed,
            took.as_secs_f64()
        );
        if let (Some(b), Some(a)) = (before, after)
            && !r.dry_run
        {
            println!("disk use {b} -> {a} bytes");
        }
        println!(
            "the segment being written (from position {}) is left for a later scavenge",
            r.up_to.as_u64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Options of `annals delete`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Deletes a stream: it reads as empty at once and no longer exists for expected versions; a
later append starts it again, its versions continuing. With --tombstone it can never be
appended to again. `annals scavenge` then gives its space back. --expected checks the stream's
version first (a number, `any`, `no-stream` or `exists`).

Examples:
  annals delete shop.annals cart-7
  annals delete shop.annals user-9 --tombstone --expected 41"
)]
pub struct DeleteArgs {
    /// The store.
    pub store: PathBuf,
    /// The stream.
    pub stream: String,
    /// Delete for good: the stream can never be appended to again.
    #[arg(long)]
    pub tombstone: bool,
    /// The version the stream must be at.
    #[arg(long, default_value = "any")]
    pub expected: String,
}

fn expected(s: &str) -> CliResult<ExpectedVersion> {
    Ok(match s {
        "any" => ExpectedVersion::Any,
        "no-stream" => ExpectedVersion::NoStream,
        "exists" => ExpectedVersion::StreamExists,
        n => ExpectedVersion::Exact(n.parse().map_err(|_| {
            CliError::new(
                ERROR,
                format!("--expected takes a version, any, no-stream or exists, not `{n}`"),
            )
        })?),
    })
}

/// Runs `annals delete`.
pub fn delete(args: DeleteArgs) -> CliResult {
    let expected = expected(&args.expected)?;
    let store = open_with(&args.store, Store::builder())?;
    let at = if args.tombstone {
        store.tombstone_stream(&args.stream, expected)?
    } else {
        store.delete_stream(&args.stream, expected)?
    };
    store.close()?;
    println!(
        "{} `{}` (recorded at position {})",
        if args.tombstone {
            "deleted for good"
        } else {
            "deleted"
        },
        args.stream,
        at.as_u64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Options of `annals erase`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Erases a stream: deletes it and overwrites the payload and metadata of every one of its
events in the file, so they cannot be recovered from it (personal data). The erasure is recorded
in `$erased-STREAM` (when, how many events). Crash-safe: if it is cut off, the next open
finishes it.

Examples:
  annals erase shop.annals customer-1842"
)]
pub struct EraseArgs {
    /// The store.
    pub store: PathBuf,
    /// The stream.
    pub stream: String,
}

/// Runs `annals erase`.
pub fn erase(args: EraseArgs) -> CliResult {
    let store = open_with(&args.store, Store::builder())?;
    let r = store.erase_stream(&args.stream)?;
    store.close()?;
    println!(
        "erased {} events of `{}` ({} bytes overwritten, {} given back); recorded at position {}",
        r.events,
        args.stream,
        r.bytes,
        r.bytes_freed,
        r.record.as_u64()
    );
    Ok(ExitCode::SUCCESS)
}
