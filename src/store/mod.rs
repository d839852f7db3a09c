//! The [`Store`]: open, append, read, close.

mod commit;
pub(crate) mod names;
pub(crate) mod options;
mod read;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::index::{Committed, Index, PartIndex, StreamInfo, parent, sidecar_path};
use crate::index::{Frozen, memtable::Run, memtable::RunAdd};
use crate::log::Layout;
use crate::log::format::{
    EventRecord, EventRef, FileHeader, HEADER_BLOCK, HEADER_LEN, HeaderError,
};
use crate::log::reader::LogReader;
use crate::log::recovery::{RecoveredEvent, ScanStart, Truncation, recover};
use crate::log::writer::LogWriter;
use crate::storage::{FileSystem, OpenMode, StorageFile, is_not_found};
use crate::types::{AppendResult, Direction, ExpectedVersion, NewEvent, Position};
use commit::{Committer, Part, Poison};
use names::{check_event_type, check_stream_name};
use options::Durability;
pub use options::StoreBuilder;
pub use read::{AllEvents, StreamEvents};

/// An annals store: one append-only log file plus its derived index.
///
/// A `Store` is `Send + Sync`: share it between threads by reference or in an `Arc`. Appends
/// from many threads are committed in groups (one write and one sync per group). Dropping the
/// store closes it; [`Store::close`] does the same and reports errors.
///
/// ```
/// use annals::{Direction, ExpectedVersion, NewEvent, Position, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("shop"))?;
/// let r = store.append(
///     "cart-7",
///     ExpectedVersion::NoStream,
///     [NewEvent::new("ItemAdded", "apple"), NewEvent::new("ItemAdded", "pear")],
/// )?;
/// assert_eq!(r.version, 1);
/// store.append("cart-7", r.next_expected(), [NewEvent::new("CheckedOut", "")])?;
///
/// let items: Vec<_> = store
///     .read_stream("cart-7", 0, Direction::Forwards, usize::MAX)?
///     .map(|e| e.map(|e| e.event_type().to_owned()))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(items, ["ItemAdded", "ItemAdded", "CheckedOut"]);
///
/// let newest = store.read_all(Position::END, Direction::Backwards, 1)?.next().unwrap()?;
/// assert_eq!(newest.event_type(), "CheckedOut");
/// # Ok::<(), annals::Error>(())
/// ```
pub struct Store {
    shared: Arc<Shared>,
    background: Mutex<Background>,
}

#[derive(Default)]
struct Background {
    flusher: Option<JoinHandle<()>>,
    syncer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    closed: bool,
}

/// State shared by the store and its commit path.
pub(crate) struct Shared {
    path: PathBuf,
    header: FileHeader,
    layout: Layout,
    file: Arc<dyn StorageFile>,
    pub(crate) reader: LogReader,
    pub(crate) index: Arc<Index>,
    committer: Committer,
    pub(crate) poison: Arc<Poison>,
    pub(crate) durability: Durability,
    max_event_size: u64,
    durable: Arc<AtomicU64>,
    flush_jobs: Mutex<Option<mpsc::Sender<Arc<Frozen>>>>,
    recovery: RecoveryReport,
    pub(crate) counters: Counters,
}

/// Activity counters since the store was opened.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub events: AtomicU64,
    pub groups: AtomicU64,
}

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
    /// Why the index sidecar was rebuilt from the log, if it was.
    pub index_rebuilt: Option<String>,
    /// Commits read from the log to bring the index up to date.
    pub commits_replayed: u64,
    /// The torn, unacknowledged tail that was dropped, if any.
    pub truncated: Option<Truncation>,
}

impl Store {
    /// Opens the store at `path` (`.annals` is appended if the name lacks it), creating it if
    /// it does not exist, with default options. See [`Store::builder`] for the options.
    ///
    /// Fails with [`Error::Locked`] if the store is open elsewhere, [`Error::NotAStore`] for a
    /// foreign file, [`Error::UnsupportedVersion`] for a newer format, and [`Error::Corrupt`]
    /// when acknowledged data fails its checks; none of these changes anything on disk.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        StoreBuilder::default().open(path)
    }

    /// Options for opening a store.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    pub(crate) fn open_with(options: StoreBuilder, path: &Path) -> Result<Store> {
        let fs = options.fs.clone();
        let path = store_path(path);
        let (file, created) = match fs.open(&path, OpenMode::Existing) {
            Ok(f) => (f, false),
            Err(e) if is_not_found(&e) && options.create => {
                create(&*fs, &path, options.segment_size)?
            }
            Err(e) => return Err(e.into()),
        };
        if !file.try_lock()? {
            return Err(Error::Locked { path });
        }
        let header = read_header(&*file, &path)?;
        let layout = Layout {
            segment_size: header.segment_size,
        };
        let (index, start, index_rebuilt) = Index::open(
            &fs,
            &sidecar_path(&path),
            header.store_id,
            options.index_cache_bytes,
            options.index_flush_events,
        )?;
        if let Some(reason) = &index_rebuilt {
            tracing::info!(path = %path.display(), reason = %reason, "annals: rebuilding the index sidecar from the log");
        }
        // A store this open created holds nothing but zeros after its header.
        let scan = ScanStart {
            clean: start.clean || (created && start.position == Layout::FIRST),
            ..start
        };
        let recovered = recover(&file, layout, scan, |events| replay(&index, events))?;
        let committed = Committed {
            end: recovered.end,
            last_frame: recovered.last_frame,
        };
        index.apply(&[], committed)?;
        if start.clean {
            // From now on, appends may follow the covered position.
            index.set_clean(false)?;
        }
        let mut writer = LogWriter::new(
            file.clone(),
            layout,
            recovered.end,
            recovered.last_frame,
            recovered.allocated_end,
        );
        writer.prepare_next();
        let durable = writer.durable().clone();
        let index = Arc::new(index);
        let shared = Arc::new(Shared {
            reader: LogReader::new(file.clone(), layout, true),
            committer: Committer::new(writer),
            path,
            header,
            layout,
            file,
            index,
            poison: Arc::new(Poison::default()),
            durability: options.durability,
            max_event_size: options.max_event_size,
            durable,
            flush_jobs: Mutex::new(None),
            recovery: RecoveryReport {
                index_rebuilt,
                commits_replayed: recovered.commits,
                truncated: recovered.truncated,
            },
            counters: Counters::default(),
        });
        let mut background = Background::default();
        let (tx, rx) = mpsc::channel::<Arc<Frozen>>();
        *shared.flush_jobs.lock() = Some(tx);
        let flusher = FlushContext::new(&shared);
        background.flusher = Some(spawn("annals-index-flush", move || {
            for job in rx {
                flusher.flush(job);
            }
        })?);
        if let Durability::Periodic(interval) = options.durability {
            let (stop, stopped) = mpsc::channel::<()>();
            let ctx = FlushContext::new(&shared);
            let handle = spawn("annals-sync", move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    if !ctx.sync_log() {
                        break;
                    }
                }
            })?;
            background.syncer = Some((stop, handle));
        }
        Ok(Store {
            shared,
            background: Mutex::new(background),
        })
    }

    /// Appends `events` to `stream` if its version matches `expected`; all or nothing.
    ///
    /// Returns after the events are durable (with the default [`Durability::Immediate`]). A
    /// version mismatch is [`Error::WrongExpectedVersion`] and writes nothing. Stream names
    /// starting with `$` are reserved.
    pub fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Result<AppendResult> {
        check_stream_name(stream, false)?;
        let part = self.part(stream, expected, events.into_iter().collect())?;
        let mut results = self.shared.committer.commit(&self.shared, vec![part])?;
        Ok(results.pop().expect("one result per part"))
    }

    /// Starts an atomic multi-stream append: every part's expected version is checked and all
    /// parts are written as one unit, or none is.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("bank"))?;
    /// let results = store
    ///     .transaction()
    ///     .append("account-a", ExpectedVersion::NoStream, [NewEvent::new("Debited", "10")])
    ///     .append("account-b", ExpectedVersion::NoStream, [NewEvent::new("Credited", "10")])
    ///     .commit()?;
    /// assert_eq!(results.len(), 2);
    /// assert_eq!(store.stream_version("account-b")?, Some(0));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn transaction(&self) -> Transaction<'_> {
        Transaction {
            store: self,
            parts: Vec::new(),
        }
    }

    fn part(&self, stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> Result<Part> {
        if events.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "no events to append to `{stream}`"
            )));
        }
        let mut frames_len = 0u64;
        let mut checked: Option<&str> = None;
        for e in &events {
            if checked != Some(&*e.event_type) {
                check_event_type(&e.event_type)?;
                checked = Some(&e.event_type);
            }
            let size = (e.payload.len() + e.metadata.len()) as u64;
            if size > self.shared.max_event_size {
                return Err(Error::TooLarge {
                    what: "event payload and metadata",
                    size,
                    limit: self.shared.max_event_size,
                });
            }
            let record = EventRecord {
                stream,
                version: 0,
                timestamp: 0,
                id: [0; 16],
                event_type: &e.event_type,
                schema_version: 0,
                correlation_id: e.correlation_id.map(|_| [0; 16]),
                causation_id: e.causation_id.map(|_| [0; 16]),
                publish: false,
                metadata: &e.metadata,
                payload: &e.payload,
            };
            frames_len += record.frame_len().ok_or(Error::TooLarge {
                what: "event frame",
                size,
                limit: u64::from(u32::MAX),
            })?;
        }
        let limit = self.shared.layout.max_commit_len();
        if frames_len > limit {
            return Err(Error::TooLarge {
                what: "commit (encoded)",
                size: frames_len,
                limit,
            });
        }
        Ok(Part {
            stream: Arc::from(stream),
            expected,
            events,
            frames_len,
        })
    }

    /// Reads a stream from version `from`, forwards or backwards, at most `limit` events.
    /// Backwards, a `from` beyond the last version starts at the last one (use `u64::MAX`).
    /// A stream that does not exist reads as empty.
    pub fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamEvents<'_>> {
        check_stream_name(stream, true)?;
        StreamEvents::new(&self.shared, stream, from, direction, limit)
    }

    /// Reads the whole log from `from` (inclusive; [`Position::START`] or [`Position::END`]
    /// work in either direction), at most `limit` events. Only events acknowledged when the
    /// read starts are returned.
    pub fn read_all(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<AllEvents<'_>> {
        AllEvents::new(&self.shared, from, direction, limit)
    }

    /// The version of the stream's last event, or `None` if the stream does not exist.
    pub fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        check_stream_name(stream, true)?;
        Ok(self.shared.index.stream_info(stream)?.count.checked_sub(1))
    }

    /// Where the next event will go: every acknowledged event is before this position.
    pub fn end_position(&self) -> Position {
        Position::new(self.shared.index.committed().end)
    }

    /// The store file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The store's id (recorded in its header).
    pub fn store_id(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.shared.header.store_id)
    }

    /// The segment size chosen when the store was created.
    pub fn segment_size(&self) -> u64 {
        self.shared.layout.segment_size
    }

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
        let c = &self.shared.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            groups: c.groups.load(Ordering::Relaxed),
        }
    }

    /// What recovery did when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.shared.recovery
    }

    /// Writes the in-memory part of the index to the sidecar now (it is otherwise flushed in
    /// large batches, and on close).
    pub fn flush_index(&self) -> Result<()> {
        self.shared.poison.check()?;
        let _writer = self.shared.committer.writer().lock();
        self.shared.sync_unsynced()?;
        while let Some(job) = self.shared.index.freeze(true) {
            self.shared.index.write_frozen(job)?;
        }
        Ok(())
    }

    /// Flushes the index, syncs, and closes the store, reporting any error.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        let mut bg = self.background.lock();
        if bg.closed {
            return Ok(());
        }
        bg.closed = true;
        if let Some((stop, handle)) = bg.syncer.take() {
            let _ = stop.send(());
            let _ = handle.join();
        }
        self.shared.flush_jobs.lock().take();
        if let Some(handle) = bg.flusher.take() {
            let _ = handle.join();
        }
        let mut writer = self.shared.committer.writer().lock();
        writer.quiesce();
        self.shared.poison.check()?;
        self.shared.sync_unsynced()?;
        while let Some(job) = self.shared.index.freeze(true) {
            self.shared.index.write_frozen(job)?;
        }
        self.shared.index.set_clean(true)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "annals: closing the store failed");
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .field("end", &self.shared.index.committed().end)
            .finish_non_exhaustive()
    }
}

/// An atomic multi-stream append under construction; see [`Store::transaction`].
#[must_use = "a transaction does nothing until committed"]
pub struct Transaction<'a> {
    store: &'a Store,
    parts: Vec<Result<Part>>,
}

impl Transaction<'_> {
    /// Adds events for one stream, to be checked against `expected` at commit. The same stream
    /// may appear in several parts; each part's check sees the parts before it.
    pub fn append(
        mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Self {
        let part = check_stream_name(stream, false).and_then(|()| {
            self.store
                .part(stream, expected, events.into_iter().collect())
        });
        self.parts.push(part);
        self
    }

    /// Checks every part and writes them all as one commit, or nothing. Returns one result per
    /// part, in order.
    pub fn commit(self) -> Result<Vec<AppendResult>> {
        let parts = self.parts.into_iter().collect::<Result<Vec<_>>>()?;
        if parts.is_empty() {
            return Err(Error::InvalidArgument("empty transaction".into()));
        }
        let total: u64 = parts.iter().map(|p| p.frames_len).sum();
        let limit = self.store.shared.layout.max_commit_len();
        if total > limit {
            return Err(Error::TooLarge {
                what: "transaction (encoded)",
                size: total,
                limit,
            });
        }
        self.store
            .shared
            .committer
            .commit(&self.store.shared, parts)
    }
}

impl Shared {
    /// Hands a full memtable to the flusher, with back-pressure if it falls behind.
    fn after_commit(&self) {
        if let Some(job) = self.index.freeze(false) {
            match &*self.flush_jobs.lock() {
                Some(tx) => {
                    let _ = tx.send(job);
                }
                None => {
                    if let Err(e) = self.index.write_frozen(job) {
                        self.poison.set(format!("index flush failed: {e}"));
                    }
                }
            }
        }
        self.index.wait_if_over(4 * self.index.threshold());
    }

    /// Syncs the log if appends are not synced as they are made.
    fn sync_unsynced(&self) -> Result<()> {
        if self.durability != Durability::Immediate {
            let end = self.index.committed().end;
            if let Err(e) = self.file.sync_data() {
                self.poison.set(format!("fdatasync failed: {e}"));
                return Err(e.into());
            }
            self.durable.fetch_max(end, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// What the background threads need (never the whole store, so they cannot keep it open).
struct FlushContext {
    index: Arc<Index>,
    file: Arc<dyn StorageFile>,
    durable: Arc<AtomicU64>,
    poison: Arc<Poison>,
    sync_first: bool,
}

impl FlushContext {
    fn new(shared: &Shared) -> FlushContext {
        FlushContext {
            index: shared.index.clone(),
            file: shared.file.clone(),
            durable: shared.durable.clone(),
            poison: shared.poison.clone(),
            sync_first: shared.durability != Durability::Immediate,
        }
    }

    /// Syncs the log; false (and the store poisoned) if that fails.
    fn sync_log(&self) -> bool {
        let end = self.index.committed().end;
        match self.file.sync_data() {
            Ok(()) => {
                self.durable.fetch_max(end, Ordering::AcqRel);
                true
            }
            Err(e) => {
                self.poison.set(format!("fdatasync failed: {e}"));
                false
            }
        }
    }

    fn flush(&self, job: Arc<Frozen>) {
        // The sidecar must never cover log bytes that are not durable.
        if self.sync_first && !self.sync_log() {
            return;
        }
        if let Err(e) = self.index.write_frozen(job) {
            self.poison.set(format!("index flush failed: {e}"));
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    Ok(std::thread::Builder::new().name(name.into()).spawn(f)?)
}

/// `PATH.annals`, unless `path` already ends in `.annals`.
fn store_path(path: &Path) -> PathBuf {
    if path.extension().is_some_and(|e| e == "annals") {
        return path.to_owned();
    }
    let mut s = path.as_os_str().to_owned();
    s.push(".annals");
    PathBuf::from(s)
}

/// Creates a store file: written and synced under a temporary name, then linked into place
/// without replacing anything (a concurrent creator wins cleanly), then the directory is synced.
/// Returns the file and whether this call created it.
fn create(
    fs: &dyn FileSystem,
    path: &Path,
    segment_size: u64,
) -> Result<(Arc<dyn StorageFile>, bool)> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".creating-{}", uuid::Uuid::new_v4().simple()));
    let tmp = PathBuf::from(tmp);
    let file = fs.open(&tmp, OpenMode::CreateNew)?;
    let header = FileHeader {
        format_version: crate::log::format::FORMAT_VERSION,
        store_id: uuid::Uuid::new_v4().into_bytes(),
        segment_size,
        created_at: crate::types::nanos_since_epoch(std::time::SystemTime::now()),
    };
    let mut block = vec![0u8; HEADER_BLOCK as usize];
    block[..HEADER_LEN].copy_from_slice(&header.encode());
    let written = file
        .write_all_at(&block, 0)
        .and_then(|()| file.allocate(HEADER_BLOCK, segment_size))
        .and_then(|()| file.sync_all());
    drop(file);
    let linked = written.and_then(|()| fs.rename_no_replace(&tmp, path));
    let _ = fs.remove_file(&tmp);
    let created = match linked {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e.into()),
    };
    fs.sync_dir(parent(path))?;
    Ok((fs.open(path, OpenMode::Existing)?, created))
}

fn read_header(file: &dyn StorageFile, path: &Path) -> Result<FileHeader> {
    let len = file.len()?.min(HEADER_LEN as u64) as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    FileHeader::decode(&buf).map_err(|e| match e {
        HeaderError::NotAStore(reason) => Error::NotAStore {
            path: path.to_owned(),
            reason,
        },
        HeaderError::UnsupportedVersion(found) => Error::UnsupportedVersion {
            found,
            supported: crate::log::format::FORMAT_VERSION,
        },
        HeaderError::Corrupt(reason) => Error::corrupt(0, reason),
    })
}

/// Indexes one recovered commit, checking that its versions follow the index's.
fn replay(index: &Index, events: &[RecoveredEvent]) -> Result<()> {
    let last = events.last().expect("a commit has frames");
    let committed = Committed {
        end: last.position + last.bytes.len() as u64,
        last_frame: Some(last.position),
    };
    let view = |i: usize| EventRef::new(&events[i].bytes);
    let mut i = 0;
    while i < events.len() {
        let stream = view(i).stream();
        let mut j = i + 1;
        while j < events.len() && view(j).stream() == stream {
            j += 1;
        }
        let before: StreamInfo = index.stream_info(stream)?;
        for (k, e) in events[i..j].iter().enumerate() {
            let expected = before.count + k as u64;
            let version = EventRef::new(&e.bytes).version();
            if version != expected {
                return Err(Error::corrupt(
                    e.position,
                    format!(
                        "event of stream `{stream}` has version {version} where the index expects {expected}"
                    ),
                ));
            }
        }
        let part = PartIndex {
            stream: Arc::from(stream),
            before,
            add: RunAdd {
                run: Run {
                    first_version: before.count,
                    position: events[i].position,
                    count: (j - i) as u32,
                },
                end: events[j - 1].position + events[j - 1].bytes.len() as u64,
            },
        };
        index.apply(&[part], committed)?;
        i = j;
    }
    if let Some(job) = index.freeze(false) {
        index.write_frozen(job)?;
    }
    Ok(())
}
