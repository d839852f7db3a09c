//! Looking inside a store, checking it, and cutting a damaged log: what the `annals` command
//! line tool (`info`, `verify`, `rebuild-index`, `repair`) is built on.

use crate::log::recovery::Truncation;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{Store, open::store_path};
use crate::error::{Error, Result};
use crate::index::sidecar_path;
use crate::log::Layout;
use crate::log::recovery;
use crate::storage::{FileSystem, OpenMode, StdFs};
use crate::values::{Direction, Position};

/// What a store has done since it was opened; see [`Store::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Appends and transactions committed.
    pub commits: u64,
    /// Events written by them.
    pub events: u64,
    /// Write-and-sync rounds: with concurrent appenders, one round commits several appends
    /// (group commit), so this is at most `commits`.
    pub groups: u64,
}

/// What happened when the store was opened.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// How far the index sidecar covered the log (what was replayed started there).
    pub index_covered: Position,
    /// Why the index sidecar was rebuilt from the log, if it was.
    pub index_rebuilt: Option<String>,
    /// Commits read from the log to bring the index up to date.
    pub commits_replayed: u64,
    /// The tail that was dropped, if any: why, how many bytes, and where they were saved.
    /// (For a read-only open: what an open for writing would drop; nothing was changed.)
    pub truncated: Option<Truncation>,
    /// Bytes of the log's tail that no frame proved durable, written again and synced before
    /// anything could build on them (see the recovery rule).
    pub rewritten: u64,
    /// What an index rebuild that was told to accept a loss found missing, if anything.
    pub lost: Option<Lost>,
    /// A scavenge or an erasure that was cut off, and what the open did about it (wrote its
    /// announced gaps again, finished the erasure). For a read-only open: what an open for
    /// writing would do.
    pub maintenance: Option<String>,
}

/// Acknowledged events missing from a log whose index was rebuilt with
/// [`StoreBuilder::accept_loss`](crate::store::StoreBuilder::accept_loss): the log ended before what the old index covered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lost {
    /// How far the old index covered the log.
    pub index_covered: u64,
    /// Where the log ended instead.
    pub log_end: u64,
    /// Events the old index counted that the log no longer holds.
    pub events: u64,
    /// Each stream that lost events: (name, events left, events the old index counted).
    pub streams: Vec<(String, u64, u64)>,
    /// All of it in words.
    pub description: String,
}

/// What [`Store::info`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreInfo {
    /// The store file.
    pub path: PathBuf,
    /// Format version of the file.
    pub format_version: u32,
    /// The store's random id (also recorded in its index sidecar).
    pub store_id: uuid::Uuid,
    /// When the store was created.
    pub created_at: SystemTime,
    /// Size of the store file in bytes (space is prepared ahead of use, a chunk at a time: the
    /// first 256 KiB, then doubling the log, up to whole segments).
    pub file_size: u64,
    /// Size of the index sidecar in bytes (0 if it is missing).
    pub index_size: u64,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// Segments the file reaches into (the last one possibly prepared only in part).
    pub segments: u64,
    /// Events in the log, the engine's own `$` streams included.
    pub events: u64,
    /// Of those, events of `$` streams (checkpoints, outbox progress, snapshots, relays).
    pub system_events: u64,
    /// Streams, `$` streams included.
    pub streams: u64,
    /// The log's end: where the next append goes.
    pub end: Position,
    /// How far the index sidecar covered the log when the store was opened (the rest was
    /// replayed from the log).
    pub index_covered: Position,
    /// Commits replayed from the log at open.
    pub commits_replayed: u64,
    /// Why the sidecar was rebuilt at open, if it was.
    pub index_rebuilt: Option<String>,
    /// Files beside the store holding bytes that recovery dropped (`NAME.annals.dropped-POS`)
    /// or `annals repair` removed (`NAME.annals.removed-POS`), with their sizes.
    pub saved_tails: Vec<(PathBuf, u64)>,
    /// What a [`scavenge`](Store::scavenge) would remove and give back now (a dry run).
    pub reclaimable: super::ScavengeReport,
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Events read and checked.
    pub events: u64,
    /// Streams seen.
    pub streams: u64,
    /// Bytes of log read.
    pub bytes: u64,
    /// The first problem: where, and what. `None` when the store is sound.
    pub problem: Option<(Position, String)>,
    /// Gaps passed: frames removed by a scavenge or an erasure (checked like every frame:
    /// header checksum and position).
    pub gaps: u64,
    /// Bytes those gaps cover.
    pub gap_bytes: u64,
}

impl VerifyReport {
    /// Whether nothing was wrong.
    pub fn is_clean(&self) -> bool {
        self.problem.is_none()
    }
}

/// What [`Store::truncate_log`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TruncateReport {
    /// Where the log now ends.
    pub at: Position,
    /// Bytes removed (written bytes after `at`, trailing zeros of preallocated space excluded).
    pub removed: u64,
    /// Where the removed bytes were saved (`None` if there were none).
    pub saved_to: Option<PathBuf>,
}

impl Store {
    /// Counts what the store holds (a scan of the whole log) and reports its layout.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// store.append("a-1", ExpectedVersion::Any, [NewEvent::new("E", "x"), NewEvent::new("E", "y")])?;
    /// store.append("b-1", ExpectedVersion::Any, [NewEvent::new("E", "z")])?;
    /// let info = store.info()?;
    /// assert_eq!((info.events, info.streams, info.format_version), (3, 2, 2));
    /// assert_eq!(info.end, store.end_position());
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn info(&self) -> Result<StoreInfo> {
        let engine = &self.engine;
        let mut streams: HashMap<String, ()> = HashMap::new();
        let (mut events, mut system_events) = (0, 0);
        for e in self.read_log(Position::START, Direction::Forwards, usize::MAX)? {
            let e = e?;
            events += 1;
            if e.stream().starts_with('$') {
                system_events += 1;
            }
            if !streams.contains_key(e.stream()) {
                streams.insert(e.stream().to_owned(), ());
            }
        }
        // What a scavenge would give back (a dry run: nothing is written).
        let reclaimable = engine.scavenge(super::ScavengeOptions {
            dry_run: true,
            ..Default::default()
        })?;
        let file_size = engine.file.len()?;
        let index_size = std::fs::metadata(sidecar_path(&engine.path)).map_or(0, |m| m.len());
        let segment_size = engine.layout.segment_size;
        Ok(StoreInfo {
            path: engine.path.clone(),
            format_version: engine.header.format_version,
            store_id: uuid::Uuid::from_bytes(engine.header.store_id),
            created_at: SystemTime::UNIX_EPOCH
                + std::time::Duration::from_nanos(engine.header.created_at),
            file_size,
            index_size,
            segment_size,
            segments: file_size
                .saturating_sub(Layout::FIRST)
                .div_ceil(segment_size),
            events,
            system_events,
            streams: streams.len() as u64,
            end: self.end_position(),
            index_covered: engine.recovery.index_covered,
            commits_replayed: engine.recovery.commits_replayed,
            index_rebuilt: engine.recovery.index_rebuilt.clone(),
            saved_tails: saved_tails(&engine.path),
            reclaimable,
        })
    }

    /// Reads every frame of the log and checks it: checksum and recorded position (every read
    /// does), stream versions without gaps or repeats, and the index against the log (each
    /// event found at its position by stream and version, and by id). `progress` is called now
    /// and then with (bytes read, bytes in all).
    ///
    /// Damage is not an `Err`: it is the report's [`problem`](VerifyReport::problem), with the
    /// position of the first bad frame, and [`events`](VerifyReport::events) counts the events
    /// before it that passed every check. `Err` is for failing to read at all.
    ///
    /// On a store opened with [`Store::open_read_only`] this changes nothing on disk.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// store.append("a-1", ExpectedVersion::Any, [NewEvent::new("E", "x")])?;
    /// let report = store.verify(&mut |_, _| {})?;
    /// assert!(report.is_clean());
    /// assert_eq!(report.events, 1);
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
        let end = self.end_position().as_u64();
        let first = Layout::FIRST;
        let total = end.saturating_sub(first);
        let mut report = VerifyReport {
            events: 0,
            streams: 0,
            bytes: 0,
            problem: None,
            gaps: 0,
            gap_bytes: 0,
        };
        let mut versions: HashMap<String, u64> = HashMap::new();
        progress(0, total);
        let mut events = self.read_log(Position::START, Direction::Forwards, usize::MAX)?;
        for e in events.by_ref() {
            let e = match e {
                Ok(e) => e,
                Err(Error::Corrupt { position, reason }) => {
                    report.problem = Some((Position::new(position), reason));
                    break;
                }
                Err(e) => return Err(e),
            };
            let position = e.position();
            if position.as_u64() >= end {
                // Committed while verifying (by this store's appenders, or by the writer a
                // read-only open follows): the next verification's.
                break;
            }
            // A stream's first readable version need not be 0 (deleted, truncated, superseded
            // or scavenged versions before it); from there versions count up by one, except in
            // a stream with a maximum age (an event may expire before one older in version).
            let expected = versions.get(e.stream()).copied().unwrap_or(e.version());
            let aged = self
                .engine
                .lifecycle
                .peek(e.stream(), |m| m.max_age_secs.is_some())
                .unwrap_or(false);
            if e.version() != expected && !(aged && e.version() > expected) {
                report.problem = Some((
                    position,
                    format!(
                        "`{}` version {} where {expected} was due",
                        e.stream(),
                        e.version()
                    ),
                ));
                break;
            }
            if let Some(problem) = self.check_indexed(&e)? {
                report.problem = Some((position, problem));
                break;
            }
            versions.insert(e.stream().to_owned(), e.version() + 1);
            report.events += 1;
            report.bytes = e.next_position().as_u64().saturating_sub(first);
            if report.events.is_multiple_of(4096) {
                progress(report.bytes, total);
            }
        }
        (report.gaps, report.gap_bytes) = events.gaps_passed();
        drop(events);
        report.streams = versions.len() as u64;
        if report.problem.is_none() {
            for (stream, count) in &versions {
                let indexed = self.engine.index.stream_info(stream)?.count;
                // A stream may have grown since `end`: its next event must then lie past it.
                let grew = indexed > *count
                    && self
                        .read_stream(stream, *count, Direction::Forwards, 1)?
                        .next()
                        .transpose()?
                        .is_some_and(|e| e.position().as_u64() >= end);
                if indexed != *count && !grew {
                    report.problem = Some((
                        self.end_position(),
                        format!("the index has {indexed} events for `{stream}`, the log {count}"),
                    ));
                    break;
                }
            }
        }
        progress(report.bytes, total);
        Ok(report)
    }

    /// Checks that the index finds `e` where the log has it; the problem if not.
    fn check_indexed(&self, e: &crate::event::RecordedEvent) -> Result<Option<String>> {
        let by_stream = self
            .read_stream(e.stream(), e.version(), Direction::Forwards, 1)?
            .next()
            .transpose()?;
        match by_stream {
            Some(found) if found.position() == e.position() => {}
            Some(found) => {
                return Ok(Some(format!(
                    "the index puts `{}` version {} at {}",
                    e.stream(),
                    e.version(),
                    found.position().as_u64()
                )));
            }
            None => {
                return Ok(Some(format!(
                    "the index does not know `{}` version {}",
                    e.stream(),
                    e.version()
                )));
            }
        }
        match self.engine.locate_id(e.id().as_u128())? {
            Some(at) if at == e.position().as_u64() => Ok(None),
            Some(at) => Ok(Some(format!("the id index puts event {} at {at}", e.id()))),
            None => Ok(Some(format!("the id index does not know event {}", e.id()))),
        }
    }

    /// Cuts the log of the (closed) store at `path` at byte position `at`: the written bytes
    /// from `at` on are first saved beside the store (`NAME.annals.removed-AT`, synced), then
    /// zeroed; the index sidecar is removed (the next open rebuilds it). For a store that
    /// [`open`](Store::open) refuses as [`Error::Corrupt`](crate::error::Error::Corrupt) at `at`: cutting there keeps every
    /// commit before it. Commits that `at` splits are dropped whole by the next open.
    ///
    /// Only on explicit request: this removes events.
    pub fn truncate_log(path: impl AsRef<Path>, at: Position) -> Result<TruncateReport> {
        truncate_log_on(Arc::new(StdFs), path.as_ref(), at)
    }
}

pub(crate) fn truncate_log_on(
    fs: Arc<dyn FileSystem>,
    path: &Path,
    at: Position,
) -> Result<TruncateReport> {
    let path = store_path(path);
    let file = fs.open(&path, OpenMode::Existing)?;
    if !file.try_lock()? {
        return Err(Error::Locked { path });
    }
    // A foreign file or a newer format is refused before anything is touched.
    super::open::read_header(&*file, &path)?;
    let end = recovery::written_end(&file, at.as_u64())?;
    let removed = end - at.as_u64();
    let mut saved_to = None;
    if removed > 0 {
        // The removed bytes are saved, synced and named in the folder before they are zeroed.
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".removed-{}", at.as_u64()));
        let saved = path.with_file_name(name);
        let out = fs.open(&saved, OpenMode::CreateNew)?;
        let mut buf = vec![0u8; COPY_CHUNK.min(removed) as usize];
        let mut offset = at.as_u64();
        while offset < end {
            let n = (end - offset).min(COPY_CHUNK) as usize;
            file.read_exact_at(&mut buf[..n], offset)?;
            out.write_all_at(&buf[..n], offset - at.as_u64())?;
            offset += n as u64;
        }
        out.sync_all()?;
        fs.sync_dir(crate::storage::parent_dir(&saved))?;
        saved_to = Some(saved);
        recovery::cut(&file, at.as_u64(), end)?;
    }
    let sidecar = sidecar_path(&path);
    match fs.remove_file(&sidecar) {
        Ok(()) => fs.sync_dir(crate::storage::parent_dir(&path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(TruncateReport {
        at,
        removed,
        saved_to,
    })
}

/// The files beside the store at `path` that hold dropped or removed log bytes.
fn saved_tails(path: &Path) -> Vec<(PathBuf, u64)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let prefixes = [format!("{name}.dropped-"), format!("{name}.removed-")];
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, u64)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            prefixes.iter().any(|p| n.starts_with(p))
        })
        .map(|e| (e.path(), e.metadata().map_or(0, |m| m.len())))
        .collect();
    found.sort();
    found
}

/// Bytes copied at a time when saving what a cut removes.
const COPY_CHUNK: u64 = 1 << 20;

impl Store {
    /// Counters of what the store has done since it was opened.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// store.append("a", ExpectedVersion::Any, [NewEvent::new("E", "1"), NewEvent::new("E", "2")])?;
    /// let stats = store.stats();
    /// assert_eq!((stats.commits, stats.events, stats.groups), (1, 2, 1));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn stats(&self) -> StoreStats {
        let c = &self.engine.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            groups: c.groups.load(Ordering::Relaxed),
        }
    }

    /// What recovery did when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.engine.recovery
    }
}
