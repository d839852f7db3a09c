//! The redb sidecar `NAME.annals.index`: the flushed part of the index.
//!
//! Tables:
//!
//! - `meta`: `index_version`, `store_id` (must equal the log's), `covered` (every frame before
//!   this log position is indexed), `last_frame` (the frame just before `covered`; 0 for none),
//!   `next_stream_id`, `clean` (1 only between a clean close and the first write to the log after
//!   it, which clears it durably before writing: nothing was written after `covered`),
//!   `prepared` (written with `clean`: how far the log was prepared at that close; 0 unknown);
//! - `streams`: stream name → (internal id, event count);
//! - `runs`: (stream id, first version) → (position of the first frame, event count);
//! - `categories`, `types`: (name, position of a run's first frame) → frames in the run;
//! - `ids`: event id (big-endian integer) → position, for ids not recorded in a span;
//! - `id_spans`: first id → (last id, position of the first frame, frames): the ids of one
//!   commit part that increase and lie above every id stored before them (time-ordered ids),
//!   recorded as one entry and found again by reading the span's frames.
//!
//! The sidecar is derived from the log: a missing, foreign, outdated or unreadable one is
//! deleted and rebuilt, and so is one whose metadata is out of range (everything read from it
//! is checked before it is used).
//!
//! A store opened read-only opens its sidecar read-only (redb changes nothing then); when that
//! sidecar cannot be used, the index is built in a throwaway database in memory instead.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
};

use super::IdHit;
use super::PosIndex;
use super::memtable::{IdSpan, MemTable, PosRun, Run};
use crate::error::Result;
use crate::log::Layout;
use crate::storage::{FileSystem, OpenMode, RedbBackend, is_not_found, parent_dir as parent};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const STREAMS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("streams");
const RUNS: TableDefinition<(u64, u64), (u64, u32)> = TableDefinition::new("runs");
const CATEGORIES: TableDefinition<(&str, u64), u32> = TableDefinition::new("categories");
const TYPES: TableDefinition<(&str, u64), u32> = TableDefinition::new("types");
const IDS: TableDefinition<u128, u64> = TableDefinition::new("ids");
/// First id → (last id, position of the first frame, frames): see [`IdSpan`].
const ID_SPANS: TableDefinition<u128, (u128, u64, u32)> = TableDefinition::new("id_spans");

fn pos_table(index: PosIndex) -> TableDefinition<'static, (&'static str, u64), u32> {
    match index {
        PosIndex::Category => CATEGORIES,
        PosIndex::EventType => TYPES,
    }
}

type RunEntry<'a> = std::result::Result<
    (
        redb::AccessGuard<'a, (u64, u64)>,
        redb::AccessGuard<'a, (u64, u32)>,
    ),
    redb::StorageError,
>;

/// Bumped whenever the sidecar's tables change meaning; an older sidecar is rebuilt.
const INDEX_VERSION: u64 = 3;

/// What the sidecar's `meta` table says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SidecarMeta {
    pub covered: u64,
    pub last_frame: Option<u64>,
    pub next_stream_id: u64,
    /// The store was closed cleanly at `covered` and its log not written since.
    pub clean: bool,
    /// How far the log was prepared at that clean close (meaningful only with `clean`).
    pub prepared: Option<u64>,
}

impl SidecarMeta {
    pub fn empty() -> SidecarMeta {
        SidecarMeta {
            covered: Layout::FIRST,
            last_frame: None,
            next_stream_id: 1,
            clean: false,
            prepared: None,
        }
    }
}

/// Whether the sidecar may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SidecarMode {
    /// Open or rebuild the sidecar file.
    Write,
    /// Open the sidecar file read-only, or build a throwaway one in memory.
    ReadOnly,
}

pub(crate) struct Sidecar {
    db: Db,
    /// How far the log is prepared, recorded with every clean mark (0: unknown).
    prepared: std::sync::atomic::AtomicU64,
    /// Set when redb failed a consistency check on this file: it is removed when closed, so
    /// the next open rebuilds it.
    damaged: std::sync::atomic::AtomicBool,
    /// The file (`None`: read-only or in memory, never removed).
    file: Option<(Arc<dyn FileSystem>, PathBuf)>,
    /// Engine with the redb backend: set, nothing more is written (see [`Sidecar::abandon`]).
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

enum Db {
    Write(Database),
    Read(ReadOnlyDatabase),
    Closed,
}

impl Db {
    fn begin_read(&self) -> Result<ReadTransaction> {
        match self {
            Db::Write(db) => Ok(db.begin_read()?),
            Db::Read(db) => Ok(db.begin_read()?),
            Db::Closed => Err(crate::error::Error::Index("the sidecar is closed".into())),
        }
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction> {
        match self {
            Db::Write(db) => Ok(db.begin_write()?),
            Db::Read(_) | Db::Closed => Err(crate::error::Error::Index(
                "the sidecar is open read-only".into(),
            )),
        }
    }
}

impl Sidecar {
    fn new(
        db: Db,
        file: Option<(Arc<dyn FileSystem>, PathBuf)>,
        frozen: Arc<std::sync::atomic::AtomicBool>,
    ) -> Sidecar {
        Sidecar {
            db,
            prepared: std::sync::atomic::AtomicU64::new(0),
            damaged: std::sync::atomic::AtomicBool::new(false),
            file,
            frozen,
        }
    }

    /// Stops every write to the sidecar's file, redb's own bookkeeping when it is dropped
    /// included, as a killed process would (for crash tests).
    pub fn abandon(&self) {
        self.frozen
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Runs a read or write of the sidecar, turning a panic inside redb (it may panic on a file
    /// whose pages were lost, as a failed `fsync` on Linux can leave it) into an error: the
    /// library never panics on what it reads from disk. The sidecar is then marked damaged,
    /// and removed when closed, so the next open rebuilds it.
    fn guard<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(value)) => Ok(value),
            // An intact database does not fail to read: whatever failed (a missing table, a
            // page that fails its checksum, an I/O error) is damage, rebuilt at the next open.
            Ok(Err(e)) => {
                self.damaged
                    .store(true, std::sync::atomic::Ordering::Release);
                Err(crate::error::Error::Index(format!(
                    "the index sidecar is damaged ({e}); it is removed when the store closes, \
                     and the next open rebuilds it from the log"
                )))
            }
            Err(_) => {
                self.damaged
                    .store(true, std::sync::atomic::Ordering::Release);
                Err(crate::error::Error::Index(
                    "the index sidecar is damaged (its database failed a consistency check); it \
                     is removed when the store closes, and the next open rebuilds it from the log"
                        .into(),
                ))
            }
        }
    }
}

impl Sidecar {
    /// Removes the sidecar's file now (its name; the open database goes on serving reads): a
    /// write to it failed, and on Linux a failed sync can leave pages that a later open would
    /// read from the page cache and a later commit would build on, though they never reach the
    /// disk. The next open rebuilds the sidecar from the log instead.
    pub fn discard(&self) {
        self.damaged
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some((fs, path)) = &self.file {
            let removed = match fs.remove_file(path) {
                Err(e) if crate::storage::is_not_found(&e) => Ok(()),
                other => other.and_then(|()| fs.sync_dir(parent(path))),
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "annals: could not remove a failed index sidecar");
            }
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if !self.damaged.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        drop(std::mem::replace(&mut self.db, Db::Closed));
        self.discard();
    }
}

/// A redb builder with the sidecar's settings. In fuzz builds (`--cfg fuzzing`, which redb
/// also sees) its pages and regions are small, so that a fuzzer opening a store thousands of
/// times a second does not copy a megabyte of empty database each time.
fn builder(cache_size: usize) -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(cache_size);
    #[cfg(fuzzing)]
    {
        b.set_page_size(512);
        b.set_region_size(64 * 1024);
    }
    b
}

/// The highest stream id a sidecar may hand out (far beyond any real count; keeps `+ 1` safe).
const MAX_STREAM_ID: u64 = 1 << 62;

/// Checks the metadata read from a sidecar against the log's layout; why it cannot be used.
fn check_meta(meta: &SidecarMeta, segment_size: u64) -> std::result::Result<(), String> {
    let covered = meta.covered;
    if covered < Layout::FIRST || !covered.is_multiple_of(8) {
        return Err(format!("covers an impossible position ({covered})"));
    }
    match meta.last_frame {
        None if covered != Layout::FIRST => {
            return Err(format!("covers {covered} but records no last frame"));
        }
        Some(last)
            if last < Layout::FIRST
                || last >= covered
                || !last.is_multiple_of(8)
                || covered - last > segment_size =>
        {
            return Err(format!(
                "records an impossible last frame ({last}) before {covered}"
            ));
        }
        _ => {}
    }
    if meta.next_stream_id == 0 || meta.next_stream_id > MAX_STREAM_ID {
        return Err(format!(
            "records an impossible next stream id ({})",
            meta.next_stream_id
        ));
    }
    Ok(())
}

/// A failure to create the sidecar at `path`: an I/O error keeps its kind (a full disk stays
/// `StorageFull`) and names the file.
fn creation_error(path: &Path, e: redb::Error) -> crate::error::Error {
    match e {
        redb::Error::Io(io) => crate::error::Error::io_at(
            path,
            std::io::Error::new(io.kind(), format!("creating the index sidecar: {io}")),
        ),
        other => crate::error::Error::Index(format!(
            "creating the index sidecar {}: {other}",
            path.display()
        )),
    }
}

/// Why an existing sidecar was not used.
pub(crate) type RebuildReason = String;

impl Sidecar {
    /// Opens the sidecar at `path`, or creates an empty one (returning why) if it is missing or
    /// unusable (read-only: an empty one in memory).
    pub fn open(
        fs: &Arc<dyn FileSystem>,
        path: &Path,
        store_id: [u8; 16],
        segment_size: u64,
        cache_size: usize,
        mode: SidecarMode,
    ) -> Result<(Sidecar, SidecarMeta, Option<RebuildReason>)> {
        let reason = match Self::open_existing(fs, path, store_id, segment_size, cache_size, mode) {
            Ok(Ok((sidecar, meta))) => return Ok((sidecar, meta, None)),
            Ok(Err(reason)) => reason,
            Err(e) => format!("unreadable: {e}"),
        };
        let builder = builder(cache_size);
        let frozen: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let named = |e: std::io::Error| crate::error::Error::io_at(path, e);
        let db = match mode {
            SidecarMode::Write => {
                if fs.exists(path).map_err(named)? {
                    fs.remove_file(path).map_err(named)?;
                }
                let file = fs.open(path, OpenMode::CreateNew).map_err(named)?;
                fs.sync_dir(parent(path)).map_err(named)?;
                builder
                    .create_with_backend(RedbBackend::new(file, frozen.clone(), Arc::default()))
                    .map_err(|e| creation_error(path, e.into()))?
            }
            SidecarMode::ReadOnly => {
                builder.create_with_backend(redb::backends::InMemoryBackend::new())?
            }
        };
        let file = (mode == SidecarMode::Write).then(|| (fs.clone(), path.to_owned()));
        let sidecar = Sidecar::new(Db::Write(db), file, frozen);
        let meta = SidecarMeta::empty();
        let create_tables = || -> std::result::Result<(), redb::Error> {
            let txn = sidecar.db.begin_write().map_err(|e| match e {
                crate::error::Error::Index(m) => redb::Error::Corrupted(m),
                other => redb::Error::Corrupted(other.to_string()),
            })?;
            {
                txn.open_table(STREAMS)?;
                txn.open_table(RUNS)?;
                txn.open_table(CATEGORIES)?;
                txn.open_table(TYPES)?;
                txn.open_table(IDS)?;
                txn.open_table(ID_SPANS)?;
                let mut t = txn.open_table(META)?;
                t.insert("index_version", &INDEX_VERSION.to_le_bytes()[..])?;
                t.insert("store_id", &store_id[..])?;
                write_meta(&mut t, &meta).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
            }
            txn.commit()?;
            Ok(())
        };
        create_tables().map_err(|e| creation_error(path, e))?;
        Ok((sidecar, meta, Some(reason)))
    }

    /// Reads the metadata of the sidecar at `path` without changing anything, if it exists
    /// and is readable.
    pub fn peek(
        fs: &Arc<dyn FileSystem>,
        path: &Path,
        store_id: [u8; 16],
        segment_size: u64,
    ) -> Option<(Sidecar, SidecarMeta)> {
        Self::open_existing(
            fs,
            path,
            store_id,
            segment_size,
            1 << 20,
            SidecarMode::ReadOnly,
        )
        .ok()?
        .ok()
    }

    /// `Ok(Err(reason))` when the sidecar exists but must be rebuilt.
    fn open_existing(
        fs: &Arc<dyn FileSystem>,
        path: &Path,
        store_id: [u8; 16],
        segment_size: u64,
        cache_size: usize,
        mode: SidecarMode,
    ) -> Result<std::result::Result<(Sidecar, SidecarMeta), RebuildReason>> {
        let open_mode = match mode {
            SidecarMode::Write => OpenMode::Existing,
            SidecarMode::ReadOnly => OpenMode::ReadOnly,
        };
        let file = match fs.open(path, open_mode) {
            Ok(f) => f,
            Err(e) if is_not_found(&e) => return Ok(Err("missing".into())),
            Err(e) => return Err(e.into()),
        };
        if file.is_empty()? {
            return Ok(Err("empty".into()));
        }
        // redb may panic on a file altered behind its back; the sidecar is derived, so any
        // failure to open it just means it is rebuilt.
        let frozen: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        // See `RedbBackend::sync_data`: opening defers a sync of redb's header alone.
        let opening = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let builder = builder(cache_size);
            match mode {
                SidecarMode::Write => builder
                    .create_with_backend(RedbBackend::new(file, frozen.clone(), opening.clone()))
                    .map(Db::Write),
                SidecarMode::ReadOnly => builder
                    .open_read_only_with_backend(RedbBackend::new(
                        file,
                        frozen.clone(),
                        Arc::default(),
                    ))
                    .map(Db::Read),
            }
        }));
        opening.store(false, std::sync::atomic::Ordering::Release);
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Ok(Err(format!("cannot be opened: {e}"))),
            Err(_) => return Ok(Err("cannot be opened: redb panicked".into())),
        };
        let read = catch_unwind(AssertUnwindSafe(|| -> Result<_> {
            let txn = db.begin_read()?;
            let t = match txn.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let get =
                |k: &str| -> Result<Option<Vec<u8>>> { Ok(t.get(k)?.map(|v| v.value().to_vec())) };
            // Every table must be there (a sidecar is created with all of them at once).
            txn.open_table(STREAMS)?;
            txn.open_table(CATEGORIES)?;
            txn.open_table(TYPES)?;
            txn.open_table(IDS)?;
            txn.open_table(ID_SPANS)?;
            let max_run_stream = txn.open_table(RUNS)?.last()?.map(|(k, _)| k.value().0);
            Ok(Some((
                (
                    get("index_version")?,
                    get("store_id")?,
                    get("covered")?,
                    get("last_frame")?,
                    get("next_stream_id")?,
                    get("clean")?,
                    get("prepared")?,
                ),
                max_run_stream,
            )))
        }));
        let Ok(Ok(Some(((version, id, covered, last, next, clean, prepared), max_run_stream)))) =
            read
        else {
            return Ok(Err("has no readable metadata".into()));
        };
        if version.as_deref().and_then(u64_of) != Some(INDEX_VERSION) {
            return Ok(Err("was written by another index version".into()));
        }
        if id.as_deref() != Some(&store_id[..]) {
            return Ok(Err("belongs to another store".into()));
        }
        let (Some(covered), Some(last), Some(next)) = (
            covered.as_deref().and_then(u64_of),
            last.as_deref().and_then(u64_of),
            next.as_deref().and_then(u64_of),
        ) else {
            return Ok(Err("has incomplete metadata".into()));
        };
        let meta = SidecarMeta {
            covered,
            last_frame: (last != 0).then_some(last),
            next_stream_id: next,
            clean: clean.as_deref().and_then(u64_of) == Some(1),
            prepared: prepared.as_deref().and_then(u64_of).filter(|&p| p != 0),
        };
        if let Err(why) = check_meta(&meta, segment_size) {
            return Ok(Err(why));
        }
        if max_run_stream.is_some_and(|id| id >= meta.next_stream_id) {
            return Ok(Err(format!(
                "holds stream id {} at or past its next stream id {}",
                max_run_stream.unwrap_or_default(),
                meta.next_stream_id
            )));
        }
        let mut db = db;
        if let Db::Write(database) = &mut db
            && !meta.clean
        {
            // After an unclean shutdown, check every page before trusting the file: on Linux a
            // sync that failed in an earlier process leaves pages readable that never reached
            // the disk, and a commit made on top of them points at garbage after a power cut.
            let checked = catch_unwind(AssertUnwindSafe(|| database.check_integrity()));
            match checked {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    return Ok(Err("was damaged (its database repaired itself)".into()));
                }
                Ok(Err(e)) => return Ok(Err(format!("failed its integrity check: {e}"))),
                Err(_) => return Ok(Err("failed its integrity check: redb panicked".into())),
            }
        }
        let file = matches!(db, Db::Write(_)).then(|| (fs.clone(), path.to_owned()));
        Ok(Ok((Sidecar::new(db, file, frozen), meta)))
    }

    /// Whether the sidecar can be written (a read-only open's own file cannot).
    pub fn writable(&self) -> bool {
        matches!(self.db, Db::Write(_))
    }

    /// Every stream and its event count (for reporting what a rebuild lost).
    pub fn stream_counts(&self) -> Result<Vec<(String, u64)>> {
        self.guard(|| {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(STREAMS)?;
            let mut out = Vec::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                out.push((k.value().to_owned(), v.value().1));
            }
            Ok(out)
        })
    }

    pub fn begin_read(&self) -> Result<ReadTransaction> {
        self.guard(|| self.db.begin_read())
    }

    /// (id, count) of a stream, if the sidecar knows it.
    pub fn stream(&self, txn: &ReadTransaction, name: &str) -> Result<Option<(u64, u64)>> {
        self.guard(|| {
            let t = txn.open_table(STREAMS)?;
            Ok(t.get(name)?.map(|v| v.value()))
        })
    }

    /// Up to `max` runs of stream `id`, starting with the one holding version `from` (or the
    /// first after it), in version order; or, `backwards`, from the one holding `from` down.
    pub fn runs(
        &self,
        txn: &ReadTransaction,
        id: u64,
        from: u64,
        backwards: bool,
        max: usize,
    ) -> Result<Vec<Run>> {
        self.guard(|| {
            let t = txn.open_table(RUNS)?;
            let run = |entry: RunEntry<'_>| -> Result<Run> {
                let (k, v) = entry?;
                let ((_, first_version), (position, count)) = (k.value(), v.value());
                Ok(Run {
                    first_version,
                    position,
                    count,
                })
            };
            let mut out = Vec::new();
            let mut upto = t.range((id, 0)..=(id, from))?;
            if backwards {
                for entry in upto.rev().take(max) {
                    out.push(run(entry)?);
                }
                return Ok(out);
            }
            if let Some(entry) = upto.next_back() {
                let r = run(entry)?;
                if r.contains(from) {
                    out.push(r);
                }
            }
            if from < u64::MAX {
                for entry in t
                    .range((id, from + 1)..=(id, u64::MAX))?
                    .take(max.saturating_sub(out.len()))
                {
                    out.push(run(entry)?);
                }
            }
            Ok(out)
        })
    }

    /// Records whether the store is closed cleanly at the sidecar's `covered` position.
    pub fn set_clean(&self, clean: bool) -> Result<()> {
        self.guard(|| {
            if !self.writable() {
                return Ok(());
            }
            let txn = self.db.begin_write()?;
            {
                let mut t = txn.open_table(META)?;
                t.insert("clean", &u64::from(clean).to_le_bytes()[..])?;
                if clean {
                    t.insert("prepared", &self.prepared_end().to_le_bytes()[..])?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// Records how far the log is prepared, for the next clean mark.
    pub fn set_prepared_end(&self, end: u64) {
        self.prepared
            .store(end, std::sync::atomic::Ordering::Release);
    }

    fn prepared_end(&self) -> u64 {
        self.prepared.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The largest event id stored.
    pub fn max_id(&self) -> Result<Option<u128>> {
        self.guard(|| {
            let txn = self.db.begin_read()?;
            let one = txn.open_table(IDS)?.last()?.map(|(k, _)| k.value());
            let span = txn.open_table(ID_SPANS)?.last()?.map(|(_, v)| v.value().0);
            Ok(one.max(span))
        })
    }

    /// Where an event id is: its position, or the span whose range holds it.
    pub fn find_id(&self, txn: &ReadTransaction, id: u128) -> Result<Option<IdHit>> {
        self.guard(|| {
            if let Some(position) = txn.open_table(IDS)?.get(id)? {
                return Ok(Some(IdHit::At(position.value())));
            }
            let spans = txn.open_table(ID_SPANS)?;
            let Some(entry) = spans.range(..=id)?.next_back() else {
                return Ok(None);
            };
            let (first, value) = entry?;
            let (first, (last, position, count)) = (first.value(), value.value());
            // Checked right after reading: a span is ordered, starts at a frame and holds one.
            if last < first || count == 0 || position < Layout::FIRST || !position.is_multiple_of(8)
            {
                return Err(crate::error::Error::Index(format!(
                    "impossible id span at {position} ({count} frames)"
                )));
            }
            Ok((id <= last).then_some(IdHit::InSpan(IdSpan {
                last,
                position,
                count,
            })))
        })
    }

    /// Runs of a category or type: the last one starting before `from` (it may hold `from`),
    /// then up to `max` starting at or after it; and whether there are more after those.
    pub fn pos_runs(
        &self,
        txn: &ReadTransaction,
        index: PosIndex,
        name: &str,
        from: u64,
        max: usize,
    ) -> Result<(Vec<PosRun>, bool)> {
        self.guard(|| {
            let t = txn.open_table(pos_table(index))?;
            let mut out = Vec::new();
            let run = |(k, v): (redb::AccessGuard<(&str, u64)>, redb::AccessGuard<u32>)| PosRun {
                position: k.value().1,
                count: v.value(),
            };
            if from > 0
                && let Some(entry) = t.range((name, 0)..(name, from))?.next_back()
            {
                out.push(run(entry?));
            }
            let mut rest = t.range((name, from)..=(name, u64::MAX))?;
            for entry in rest.by_ref().take(max) {
                out.push(run(entry?));
            }
            Ok((out, rest.next().is_some()))
        })
    }

    /// Writes a frozen memtable and the metadata it brings the sidecar to, in one transaction.
    pub fn write(&self, table: &MemTable, meta: &SidecarMeta) -> Result<()> {
        self.guard(|| {
            let mut streams: Vec<(&str, (u64, u64))> = table
                .streams
                .iter()
                .map(|(name, s)| (&**name, (s.id, s.count)))
                .collect();
            streams.sort_unstable();
            let mut runs: Vec<((u64, u64), (u64, u32))> = table
                .streams
                .values()
                .flat_map(|s| {
                    s.runs
                        .iter()
                        .map(|r| ((s.id, r.first_version), (r.position, r.count)))
                })
                .collect();
            runs.sort_unstable();
            let txn = self.db.begin_write()?;
            {
                let mut t = txn.open_table(STREAMS)?;
                for (name, value) in streams {
                    t.insert(name, value)?;
                }
                let mut t = txn.open_table(RUNS)?;
                for (key, value) in runs {
                    t.insert(key, value)?;
                }
                for (index, map) in [
                    (PosIndex::Category, &table.categories),
                    (PosIndex::EventType, &table.types),
                ] {
                    let mut t = txn.open_table(pos_table(index))?;
                    let mut entries: Vec<(&str, u64, u32)> = map
                        .iter()
                        .flat_map(|(name, r)| {
                            r.runs
                                .iter()
                                .map(move |run| (&**name, run.position, run.count))
                        })
                        .collect();
                    entries.sort_unstable();
                    for (name, position, count) in entries {
                        t.insert((name, position), count)?;
                    }
                }
                let mut ids: Vec<(u128, u64)> = table.ids.iter().map(|(k, v)| (*k, *v)).collect();
                ids.sort_unstable();
                let mut t = txn.open_table(IDS)?;
                for (id, position) in ids {
                    t.insert(id, position)?;
                }
                let mut t = txn.open_table(ID_SPANS)?;
                for (first, span) in &table.id_spans {
                    t.insert(*first, (span.last, span.position, span.count))?;
                }
                let meta = SidecarMeta {
                    prepared: Some(self.prepared_end()),
                    ..*meta
                };
                write_meta(&mut txn.open_table(META)?, &meta)?;
            }
            txn.commit()?;
            Ok(())
        })
    }
}

fn write_meta(t: &mut redb::Table<&str, &[u8]>, meta: &SidecarMeta) -> Result<()> {
    t.insert("clean", &u64::from(meta.clean).to_le_bytes()[..])?;
    if meta.clean {
        t.insert("prepared", &meta.prepared.unwrap_or(0).to_le_bytes()[..])?;
    }
    t.insert("covered", &meta.covered.to_le_bytes()[..])?;
    t.insert(
        "last_frame",
        &meta.last_frame.unwrap_or(0).to_le_bytes()[..],
    )?;
    t.insert("next_stream_id", &meta.next_stream_id.to_le_bytes()[..])?;
    Ok(())
}

fn u64_of(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// `NAME.annals.index` beside `NAME.annals`.
pub(crate) fn sidecar_path(log_path: &Path) -> PathBuf {
    let mut s = log_path.as_os_str().to_owned();
    s.push(".index");
    PathBuf::from(s)
}
