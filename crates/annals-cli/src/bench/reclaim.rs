//! `annals bench --reclaim MB`: giving space back after deleting 90 % of a store, annals
//! beside SQLite and redb (the workload is [`annals_bench::reclaim`]).

use std::io::Write;
use std::process::ExitCode;

use annals_bench::reclaim::{self, APPENDED, PER_STREAM, Reclaimed};
use serde_json::json;

use super::BenchArgs;
use super::host::{remove_temp_folder, temp_folder};
use super::plan::SystemKind;
use crate::exit::{CliError, CliResult, ERROR, USAGE};

/// Runs the reclaim bench for a store of `mb` megabytes.
pub(super) fn run(args: &BenchArgs, mb: u64) -> CliResult {
    let payload = args.payload;
    let events = (mb * 1_000_000 / payload as u64).max(PER_STREAM * 10);
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    // PostgreSQL is not among the default systems here: PgStore has no way to give space back.
    let systems = if args.systems.is_empty() {
        vec![SystemKind::Annals, SystemKind::Sqlite, SystemKind::Redb]
    } else {
        args.systems()?
    };
    if systems.contains(&SystemKind::Postgres) {
        return Err(CliError::new(
            USAGE,
            "--reclaim does not run on postgres (annals' PostgreSQL backend has no scavenge): \
             leave it out of --systems",
        ));
    }
    let mut results: Vec<Reclaimed> = Vec::new();
    for kind in &systems {
        let tmp = temp_folder(&base)?;
        eprintln!(
            "{}: filling {events} events, deleting 90 %, reclaiming ...",
            kind.name()
        );
        let run = match kind {
            SystemKind::Annals => reclaim::annals,
            SystemKind::Sqlite => reclaim::sqlite,
            SystemKind::Redb => reclaim::redb,
            SystemKind::Postgres => {
                return Err(CliError::new(USAGE, "--reclaim does not run on postgres"));
            }
        };
        let r = run(tmp.path(), events, payload)
            .map_err(|e| CliError::new(ERROR, format!("{}: {e}", kind.name())))?;
        remove_temp_folder(tmp)?;
        results.push(r);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| {
                json!({
                    "system": r.system,
                    "events": r.events,
                    "deleted": r.deleted,
                    "disk_before": r.disk_before,
                    "disk_after": r.disk_after,
                    "freed": r.freed(),
                    "delete_seconds": r.delete.as_secs_f64(),
                    "reclaim_seconds": r.reclaim.as_secs_f64(),
                    "appends_during": r.appends_during,
                })
            })
            .collect();
        writeln!(
            out,
            "{}",
            json!({"payload": payload, "events": events, "results": rows})
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "reclaiming space: {events} events of {payload} bytes ({mb} MB of payload) in streams of \
         {PER_STREAM}; 90 % of the streams deleted; single durable appends of {APPENDED} bytes go \
         on in another thread while the space is reclaimed"
    )?;
    writeln!(
        out,
        "{:<8} {:>10} {:>11} {:>14} {:>14} {:>14} {:>16}",
        "system", "delete s", "reclaim s", "du before", "du after", "freed", "appends during"
    )?;
    for r in &results {
        let during = match r.appends_during {
            Some(n) => format!("{n} ({:.0}/s)", n as f64 / r.reclaim.as_secs_f64()),
            None => "impossible".to_owned(),
        };
        writeln!(
            out,
            "{:<8} {:>10.3} {:>11.3} {:>14} {:>14} {:>14} {:>16}",
            r.system,
            r.delete.as_secs_f64(),
            r.reclaim.as_secs_f64(),
            r.disk_before,
            r.disk_after,
            r.freed(),
            during
        )?;
    }
    if let Some(a) = results.iter().find(|r| r.system == "annals") {
        for peer in results.iter().filter(|r| r.system != "annals") {
            writeln!(
                out,
                "annals/{}: reclaim {:.2}x as fast, {:.2}x the bytes freed",
                peer.system,
                peer.reclaim.as_secs_f64() / a.reclaim.as_secs_f64(),
                a.freed() as f64 / peer.freed().max(1) as f64
            )?;
        }
    }
    writeln!(
        out,
        "redb's compact needs the database to itself: no append can run meanwhile. annals leaves \
         the segment being written for a later scavenge."
    )?;
    Ok(ExitCode::SUCCESS)
}
