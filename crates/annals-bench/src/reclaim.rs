//! Giving space back: a store of `total_bytes` where 90 % of the streams are then deleted, and
//! each system reclaims the space its own way (annals: `delete_stream` then `scavenge`, while
//! the store stays open; SQLite: `DELETE` then `VACUUM`; redb: deleting the entries then
//! `compact`). Measured: the time to delete and to reclaim, the disk use before and after (as
//! `du` counts it), and how many single-event durable appends another thread completed while
//! the space was being reclaimed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{BenchResult, Event, System, open_annals, open_redb, open_sqlite};

/// Events per stream (appended as one batch, so a stream's events lie together).
pub const PER_STREAM: u64 = 1000;

/// What one system did.
#[derive(Debug, Clone)]
pub struct Reclaimed {
    /// The system.
    pub system: &'static str,
    /// Events written.
    pub events: u64,
    /// Events deleted.
    pub deleted: u64,
    /// Disk use after filling (bytes).
    pub disk_before: u64,
    /// Disk use after reclaiming (bytes).
    pub disk_after: u64,
    /// Time to delete the streams.
    pub delete: Duration,
    /// Time to give the space back.
    pub reclaim: Duration,
    /// Durable single-event appends another thread completed while the space was reclaimed
    /// (`None`: the system cannot take appends then).
    pub appends_during: Option<u64>,
}

impl Reclaimed {
    /// Bytes given back.
    pub fn freed(&self) -> u64 {
        self.disk_before.saturating_sub(self.disk_after)
    }
}

/// The streams of a store of `events` events, and which of them are deleted (9 of every 10).
fn streams(events: u64) -> (Vec<String>, Vec<String>) {
    let n = events.div_ceil(PER_STREAM);
    let all: Vec<String> = (0..n).map(|k| format!("s-{k}")).collect();
    let deleted = all
        .iter()
        .enumerate()
        .filter(|(k, _)| k % 10 != 0)
        .map(|(_, s)| s.clone())
        .collect();
    (all, deleted)
}

fn fill(sys: &dyn System, all: &[String], payload: usize) -> BenchResult<u64> {
    for stream in all {
        let batch: Vec<Event> = (0..PER_STREAM).map(|_| Event::new(payload)).collect();
        sys.append(stream, &batch)?;
    }
    Ok(all.len() as u64 * PER_STREAM)
}

/// Payload of the events appended while the space is reclaimed (small, so that they change
/// the disk use little).
pub const APPENDED: usize = 100;

/// Runs `reclaim` while another thread appends single events to `sys`; returns the time it
/// took and the appends made meanwhile.
fn with_appender<S: System + 'static>(
    sys: Arc<S>,
    reclaim: impl FnOnce() -> BenchResult<()>,
) -> BenchResult<(Duration, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let appender = {
        let (sys, stop, done) = (sys.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || -> BenchResult<()> {
            while !stop.load(Ordering::Relaxed) {
                sys.append("live", &[Event::new(APPENDED)])?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    // The appender is running before the reclaim starts.
    while done.load(Ordering::Relaxed) < 5 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = done.load(Ordering::Relaxed);
    let start = Instant::now();
    let result = reclaim();
    let took = start.elapsed();
    let during = done.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    appender.join().map_err(|_| "the appender panicked")??;
    result?;
    Ok((took, during))
}

/// annals: `delete_stream` for each, then `scavenge` with the store open.
pub fn annals(dir: &Path, events: u64, payload: usize) -> BenchResult<Reclaimed> {
    let sys = Arc::new(open_annals(dir)?);
    let (all, deleted) = streams(events);
    let events = fill(&*sys, &all, payload)?;
    // Into a new segment, so that the deleted events lie in sealed ones.
    sys.store.flush_index()?;
    let disk_before = sys.disk_bytes()?;
    let start = Instant::now();
    for s in &deleted {
        sys.store.delete_stream(s, annals::ExpectedVersion::Any)?;
    }
    let delete = start.elapsed();
    let store_sys = sys.clone();
    let (reclaim, during) = with_appender(sys.clone(), move || {
        store_sys.store.scavenge().map(drop).map_err(Into::into)
    })?;
    let disk_after = sys.disk_bytes()?;
    Ok(Reclaimed {
        system: "annals",
        events,
        deleted: deleted.len() as u64 * PER_STREAM,
        disk_before,
        disk_after,
        delete,
        reclaim,
        appends_during: Some(during),
    })
}

/// SQLite: one `DELETE` transaction, then `VACUUM`.
pub fn sqlite(dir: &Path, events: u64, payload: usize) -> BenchResult<Reclaimed> {
    let sys = Arc::new(open_sqlite(dir)?);
    let (all, deleted) = streams(events);
    let events = fill(&*sys, &all, payload)?;
    sys.vacuum()?;
    let disk_before = sys.disk_bytes()?;
    let start = Instant::now();
    sys.delete_streams(&deleted)?;
    let delete = start.elapsed();
    let vacuum = sys.clone();
    let (reclaim, during) = with_appender(sys.clone(), move || vacuum.vacuum())?;
    // The appender kept the WAL busy: truncate it now (not timed), as a quiet moment would.
    sys.checkpoint()?;
    let disk_after = sys.disk_bytes()?;
    Ok(Reclaimed {
        system: "sqlite",
        events,
        deleted: deleted.len() as u64 * PER_STREAM,
        disk_before,
        disk_after,
        delete,
        reclaim,
        appends_during: Some(during),
    })
}

/// redb: one transaction removing the entries, then `compact` (no appends can run meanwhile).
pub fn redb(dir: &Path, events: u64, payload: usize) -> BenchResult<Reclaimed> {
    let mut sys = open_redb(dir)?;
    let (all, deleted) = streams(events);
    let events = fill(&sys, &all, payload)?;
    let disk_before = sys.disk_bytes()?;
    let start = Instant::now();
    sys.delete_streams(&deleted)?;
    let delete = start.elapsed();
    let start = Instant::now();
    sys.compact()?;
    let reclaim = start.elapsed();
    let disk_after = sys.disk_bytes()?;
    Ok(Reclaimed {
        system: "redb",
        events,
        deleted: deleted.len() as u64 * PER_STREAM,
        disk_before,
        disk_after,
        delete,
        reclaim,
        appends_during: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_system_gives_back_most_of_what_was_deleted() {
        // annals leaves the segment being written (64 MiB by default) for a later scavenge:
        // its store must be larger than that.
        for (run, events) in [
            (
                annals as fn(&Path, u64, usize) -> BenchResult<Reclaimed>,
                80_000,
            ),
            (sqlite, 20_000),
            (redb, 20_000),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let r = run(dir.path(), events, 1000).unwrap();
            assert_eq!((r.events, r.deleted), (events, events / 10 * 9));
            assert!(r.freed() > events * 1000 / 2, "{r:?}");
            if r.system == "annals" {
                assert!(
                    r.appends_during.unwrap() > 0,
                    "appends go on during a scavenge"
                );
            }
        }
    }
}
