//! The engine behind a [`Store`](super::Store): the open file, the reader, the index, the
//! commit path and what the background threads share, with the operations that need all of
//! them together (committing parts, waking readers, handing index flushes on).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::commit::{Committer, Part, Poison};
use super::options::Durability;
use super::replay::IndexReplay;
use super::{RecoveryReport, background, codec, subscriptions, typed};
use crate::error::{Error, Result};
use crate::event::{AppendResult, NewEvent};
use crate::index::Committed;
use crate::index::{Frozen, Index};
use crate::log::Layout;
use crate::log::format::FileHeader;
use crate::log::live::{Bounded, LiveEnd};
use crate::log::reader::{Found, LogReader};
use crate::log::recovery::{ScanStart, follow};
use crate::log::sync::LogSync;
use crate::names::check_event_type;
use crate::storage::StorageFile;
use crate::values::{ExpectedVersion, Position};

/// State shared by the store, its commit path, its readers and its background threads.
pub(crate) struct Engine {
    pub(crate) path: PathBuf,
    pub(crate) header: FileHeader,
    pub(crate) layout: Layout,
    pub(crate) file: Arc<dyn StorageFile>,
    pub(crate) reader: LogReader,
    pub(crate) index: Arc<Index>,
    pub(crate) committer: Committer,
    pub(crate) poison: Arc<Poison>,
    /// Every sync of the log goes through it.
    pub(crate) sync: Arc<LogSync>,
    pub(crate) durability: Durability,
    pub(crate) max_event_size: u64,
    /// Opened with [`Store::open_read_only`]: nothing is ever written.
    pub(crate) read_only: bool,
    /// Opened read-only while a writer held the store: what follows the writer.
    pub(crate) live: Option<Live>,
    pub(crate) flusher: Mutex<background::Flusher>,
    pub(crate) recovery: RecoveryReport,
    pub(crate) counters: Counters,
    pub(crate) codec: codec::Codec,
    pub(crate) upcasters: parking_lot::RwLock<typed::Upcasters>,
    pub(crate) registry: parking_lot::RwLock<typed::Registry>,
    pub(crate) subscribers: subscriptions::Subscribers,
    /// Signalled after each published group, for waiting readers.
    pub(crate) appended: (Mutex<()>, parking_lot::Condvar),
    pub(crate) appended_waiters: std::sync::atomic::AtomicUsize,
    /// The sidecar still says "closed cleanly" (the store was opened clean and nothing was
    /// written since): the first write must clear that first.
    pub(crate) marked_clean: std::sync::atomic::AtomicBool,
    /// Stream metadata: what reads still return.
    pub(crate) lifecycle: super::lifecycle::Lifecycle,
    /// One scavenge or erasure at a time; holds the number of the last journal intent.
    pub(crate) maintenance: Mutex<u64>,
}

/// A read-only open that follows a writer: its view of the log (zeros past the published
/// durable end) and where the writer publishes that end.
pub(crate) struct Live {
    pub(crate) view: Arc<Bounded>,
    pub(crate) end: LiveEnd,
    /// One refresh at a time.
    pub(crate) refreshing: Mutex<()>,
}

/// Activity counters since the store was opened.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub events: AtomicU64,
    pub groups: AtomicU64,
}

impl Engine {
    /// The position of the stored event with this id, if there is one: where the index puts
    /// it, or found by reading the frames of the span the index names. An event stays stored
    /// while its frame is in the log, readable or not (a retry of an append whose events were
    /// deleted since is still recognised); once a scavenge or an erasure removed the frame, the
    /// id is forgotten.
    pub(crate) fn locate_id(&self, id: u128) -> Result<Option<u64>> {
        loop {
            // Taken again if frames were rewritten into gaps while it looked (a scavenge).
            let epoch = self.reader.rewrite_epoch();
            let found = self.locate_id_once(id);
            if self.reader.stable_since(epoch) {
                return found;
            }
            std::thread::yield_now();
        }
    }

    fn locate_id_once(&self, id: u128) -> Result<Option<u64>> {
        let limit = self.index.committed().end;
        let mut cursor = crate::log::reader::Cursor::default();
        let span = match self.index.find_id(id)? {
            None => return Ok(None),
            Some(crate::index::IdHit::At(position)) => {
                return Ok(match self.reader.resolve(position, limit, &mut cursor)? {
                    Found::Gap { .. } => None,
                    // A frame that is not this event: the caller reports the mismatch.
                    Found::Frame(..) => Some(position),
                });
            }
            Some(crate::index::IdHit::InSpan(span)) => span,
        };
        let mut at = span.position;
        let mut left = span.count;
        let mut passed_gap = false;
        while left > 0 && at < limit {
            let (bytes, frame) = match self.reader.resolve(at, limit, &mut cursor)? {
                Found::Gap { end, .. } => {
                    passed_gap = true;
                    at = end;
                    continue;
                }
                Found::Frame(bytes, frame) => (bytes, frame),
            };
            if frame.body != crate::log::format::Body::Event {
                if passed_gap {
                    // The rest of the span was removed.
                    return Ok(None);
                }
                return Err(Error::corrupt(
                    at,
                    "the index names a span of events holding a seal",
                ));
            }
            let found = u128::from_be_bytes(crate::log::format::EventRef::new(&bytes).event_id());
            if found == id {
                return Ok(Some(at));
            }
            if found > id {
                // A span's ids increase: past `id`, it is not there.
                return Ok(None);
            }
            at += u64::from(frame.len);
            left -= 1;
        }
        Ok(None)
    }

    pub(crate) fn part(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Part> {
        let mut frames_len = 0u64;
        let mut checked: Option<&str> = None;
        for e in &events {
            if checked != Some(&*e.event_type) {
                check_event_type(&e.event_type)?;
                checked = Some(&e.event_type);
            }
            let size = (e.payload.len() + e.metadata.len()) as u64;
            if size > self.max_event_size {
                return Err(Error::TooLarge {
                    what: "event payload and metadata",
                    size,
                    limit: self.max_event_size,
                });
            }
            let record = e.record(stream, 0);
            frames_len += record.frame_len().ok_or_else(|| Error::TooLarge {
                what: "event frame",
                size,
                limit: u64::from(u32::MAX),
            })?;
        }
        let limit = self.layout.max_commit_len();
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

    /// Commits parts (group commit), then runs the synchronous subscriptions for them (see
    /// [`subscriptions`]).
    pub(crate) fn commit(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
        if self.read_only {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        let outcome = self.committer.commit(self, parts)?;
        let mut results = outcome.results;
        let Some(ticket) = outcome.ticket else {
            return Ok(results);
        };
        if subscriptions::nested_root().is_some() {
            // Made from a callback: its callbacks run after the current event's, in log order.
            return Ok(results);
        }
        for failure in self.subscribers.wait_dispatched(self, ticket) {
            let position = failure.position;
            let at = results
                .iter()
                .position(|r| (r.first_position..=r.last_position).contains(&position))
                .unwrap_or(results.len() - 1);
            results[at].subscriber_failures.push(failure);
        }
        Ok(results)
    }

    /// For a read-only open that follows a writer: indexes the commits the writer made durable
    /// since the last refresh. Does nothing otherwise.
    pub(crate) fn refresh(&self) -> Result<()> {
        let Some(live) = &self.live else {
            return Ok(());
        };
        let durable = live.end.read()?;
        let seen = self.index.committed().end;
        if durable < seen {
            // Only a log cut or replaced from outside goes back (recovery never drops bytes
            // that were published durable).
            return Err(Error::corrupt(
                durable,
                format!(
                    "the store's writer now says its log ends at {durable}, before the {seen} \
                     this read-only open has read: the log was cut or replaced since it opened; \
                     open it again"
                ),
            ));
        }
        if durable == seen {
            return Ok(());
        }
        let _one = live.refreshing.lock();
        let committed = self.index.committed();
        if durable <= committed.end {
            return Ok(());
        }
        live.view.raise(durable);
        let start = ScanStart {
            position: committed.end,
            last_frame: committed.last_frame,
            clean: false,
            prepared: None,
        };
        let file: Arc<dyn StorageFile> = live.view.clone();
        let mut replay = IndexReplay {
            index: &self.index,
            gaps: false,
        };
        let (end, last_frame, _) = follow(&file, self.layout, start, &mut replay)?;
        self.index.apply(&[], Committed { end, last_frame })?;
        super::lifecycle::Lifecycle::load_from(self, committed.end)
    }

    /// Where the log ends (every acknowledged event is before it).
    pub(crate) fn end(&self) -> Position {
        Position::new(self.index.committed().end)
    }

    /// Wakes readers waiting for new events (catch-up subscriptions).
    pub(crate) fn notify_appended(&self) {
        if self.appended_waiters.load(Ordering::Acquire) > 0 {
            let _guard = self.appended.0.lock();
            self.appended.1.notify_all();
        }
    }

    /// Waits until the committed end is past `position`, or `timeout` passes; returns whether it
    /// is.
    pub(crate) fn wait_past(&self, position: u64, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        if self.live.is_some() {
            // Another handle writes: look at what it published, every few milliseconds.
            loop {
                if self.refresh().is_err() {
                    return false;
                }
                let now = std::time::Instant::now();
                if self.index.committed().end > position || now >= deadline {
                    return self.index.committed().end > position;
                }
                std::thread::sleep((deadline - now).min(std::time::Duration::from_millis(5)));
            }
        }
        self.appended_waiters.fetch_add(1, Ordering::AcqRel);
        let mut guard = self.appended.0.lock();
        let past = loop {
            if self.index.committed().end > position {
                break true;
            }
            if self.appended.1.wait_until(&mut guard, deadline).timed_out() {
                break self.index.committed().end > position;
            }
        };
        drop(guard);
        self.appended_waiters.fetch_sub(1, Ordering::AcqRel);
        past
    }

    /// Hands a full memtable to the flusher, with back-pressure if it falls behind.
    pub(crate) fn after_commit(&self) {
        if let Some(job) = self.index.freeze(false, false) {
            let unsent = self.flusher.lock().send(self, job);
            if let Some(job) = unsent {
                let _ = self.write_frozen(job);
            }
        }
        self.index.wait_if_over(4 * self.index.threshold());
    }

    /// Writes a frozen memtable to the sidecar, unless the store is poisoned; a failure
    /// poisons it (redb cannot go on after a failed write; a reopen rebuilds what is missing
    /// from the log).
    pub(crate) fn write_frozen(&self, job: Arc<Frozen>) -> Result<()> {
        if let Err(e) = self.poison.check() {
            self.index.release_frozen();
            return Err(e);
        }
        self.index.write_frozen(job).map_err(|e| {
            self.poison
                .fail(format!("writing the index sidecar failed: {e}"))
        })
    }

    /// Syncs the log and writes everything indexed to the sidecar (under the writer, so that
    /// it covers the log's end).
    pub(crate) fn flush_sidecar(&self) -> Result<()> {
        self.poison.check()?;
        let _writer = self.committer.writer().lock();
        self.sync_unsynced()?;
        while let Some(job) = self.index.freeze(true, false) {
            self.write_frozen(job)?;
        }
        Ok(())
    }

    /// Syncs the log if appends are not synced as they are made.
    pub(crate) fn sync_unsynced(&self) -> Result<()> {
        if self.durability != Durability::Immediate {
            self.sync.sync(self.index.committed().end, false)?;
        }
        Ok(())
    }
}
