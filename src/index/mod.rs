//! The index: for every stream its current version, and for every version the position of its
//! frame (recorded as *runs*: consecutive versions in consecutive frames); the positions of each
//! category's and each event type's frames (also as runs of consecutive frames); and the
//! position of every event id: one by one, or, for a part whose ids increase and lie above
//! every stored id (time-ordered ids such as UUIDv7), as one span found again by reading its
//! frames. An append whose ids all lie above every stored id needs no duplicate search.
//!
//! Three layers, newest first: the *active* memtable (commits since the last freeze), a *frozen*
//! memtable being written to the sidecar, and the redb [sidecar]. A lookup asks them in that
//! order. Flushing freezes the active table, writes it together with the log position it
//! covers in one redb transaction, then drops it; readers take the memtables and begin their
//! redb read under one read lock, so every entry is always in a layer they see.
//!
//! The index also holds the log's committed end (what readers may see), updated under the same
//! lock as the stream counts so the two always agree.

pub(crate) mod memtable;
pub(crate) mod sidecar;

use std::path::Path;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::error::Result;
use crate::log::recovery::ScanStart;
use crate::names::category_of;
use memtable::{IdSpan, MemStream, MemTable, PosRun, PosRunAdd, Run, RunAdd};
use sidecar::{Sidecar, SidecarMeta};

pub(crate) use sidecar::{SidecarMode, sidecar_path};

/// The end of the log readers may see, and its last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Committed {
    pub end: u64,
    pub last_frame: Option<u64>,
}

/// What the index knows of a stream: its internal id (`None`: never seen) and event count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StreamInfo {
    pub id: Option<u64>,
    pub count: u64,
}

/// One stream's part of a commit, as the index records it.
#[derive(Debug, Clone)]
pub(crate) struct PartIndex {
    pub stream: Arc<str>,
    pub before: StreamInfo,
    pub add: RunAdd,
    /// The part's frames by event type, as runs of consecutive frames.
    pub types: Vec<(std::borrow::Cow<'static, str>, PosRunAdd)>,
    /// The events' ids (big-endian integers).
    pub ids: PartIds,
}

/// How a part's event ids are recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PartIds {
    /// Strictly increasing and above every id stored before the part: one [`IdSpan`].
    Span { first: u128, last: u128 },
    /// Each id with its frame's position.
    Each(Vec<(u128, u64)>),
}

impl PartIds {
    /// The largest id.
    pub fn max(&self) -> Option<u128> {
        match self {
            PartIds::Span { last, .. } => Some(*last),
            PartIds::Each(ids) => ids.iter().map(|(id, _)| *id).max(),
        }
    }
}

/// Where the index says an event id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdHit {
    /// At this position.
    At(u64),
    /// If stored at all, among this span's frames.
    InSpan(IdSpan),
}

impl PartIndex {
    /// The index entries of one stream's consecutive frames: their event types and ids, given
    /// each frame's position (`end` is just after the last frame). `above` is the largest id
    /// stored (or staged) before this part: ids that are strictly increasing and above it are
    /// recorded as one span.
    pub fn new(
        stream: Arc<str>,
        before: StreamInfo,
        frames: impl ExactSizeIterator<Item = (u64, std::borrow::Cow<'static, str>, u128)>,
        end: u64,
        above: Option<u128>,
    ) -> PartIndex {
        let count = frames.len();
        let mut types: Vec<(std::borrow::Cow<'static, str>, PosRunAdd)> = Vec::with_capacity(1);
        let mut ids = Vec::with_capacity(count);
        let mut first_position = None;
        for (position, event_type, id) in frames {
            first_position.get_or_insert(position);
            ids.push((id, position));
            match types.last_mut() {
                Some((t, run)) if *t == event_type => {
                    run.count += 1;
                }
                _ => {
                    if let Some((_, run)) = types.last_mut() {
                        run.end = position;
                    }
                    types.push((
                        event_type,
                        PosRunAdd {
                            position,
                            count: 1,
                            end,
                        },
                    ));
                }
            }
        }
        let first = first_position.expect("a part has at least one event");
        let increasing = ids.windows(2).all(|w| w[0].0 < w[1].0);
        let ids = match (ids.first(), ids.last()) {
            (Some(&(lo, _)), Some(&(hi, _))) if increasing && above.is_none_or(|a| lo > a) => {
                PartIds::Span {
                    first: lo,
                    last: hi,
                }
            }
            _ => PartIds::Each(ids),
        };
        PartIndex {
            stream,
            before,
            add: RunAdd {
                run: Run {
                    first_version: before.count,
                    position: first,
                    count: u32::try_from(count).expect("a part fits in a segment"),
                },
                end,
            },
            types,
            ids,
        }
    }
}

/// What the by-category and by-type indexes are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PosIndex {
    Category,
    EventType,
}

/// A stream's runs around a version, with the stream's count and the log's committed end at the
/// moment they were read.
#[derive(Debug, Clone)]
pub(crate) struct StreamSnapshot {
    pub count: u64,
    pub runs: Vec<Run>,
    pub committed: Committed,
}

struct Layers {
    active: MemTable,
    frozen: Option<Arc<Frozen>>,
    next_stream_id: u64,
    committed: Committed,
    /// The `covered` position the sidecar holds.
    sidecar_covered: u64,
    /// The largest event id in the sidecar: a larger id cannot be there.
    sidecar_max_id: Option<u128>,
    /// The largest event id stored (in any layer).
    max_id: Option<u128>,
}

/// A memtable on its way to the sidecar, and the metadata it brings the sidecar to.
pub(crate) struct Frozen {
    table: MemTable,
    meta: SidecarMeta,
}

pub(crate) struct Index {
    sidecar: Sidecar,
    layers: RwLock<Layers>,
    flushing: Mutex<bool>,
    flushed: Condvar,
    threshold: u64,
}

impl Index {
    /// Opens (or rebuilds) the sidecar. Returns the index, where recovery must start scanning,
    /// and why the sidecar was rebuilt, if it was.
    pub fn open(
        fs: &Arc<dyn crate::storage::FileSystem>,
        path: &Path,
        store_id: [u8; 16],
        segment_size: u64,
        cache_size: usize,
        threshold: u64,
        mode: SidecarMode,
    ) -> Result<(Index, ScanStart, Option<String>)> {
        let (sidecar, meta, rebuilt) =
            Sidecar::open(fs, path, store_id, segment_size, cache_size, mode)?;
        let sidecar_max_id = sidecar.max_id()?;
        let start = ScanStart {
            position: meta.covered,
            last_frame: meta.last_frame,
            clean: meta.clean,
            prepared: meta.prepared,
        };
        let index = Index {
            sidecar,
            layers: RwLock::new(Layers {
                active: MemTable::default(),
                frozen: None,
                next_stream_id: meta.next_stream_id,
                committed: Committed {
                    end: meta.covered,
                    last_frame: meta.last_frame,
                },
                sidecar_covered: meta.covered,
                sidecar_max_id,
                max_id: sidecar_max_id,
            }),
            flushing: Mutex::new(false),
            flushed: Condvar::new(),
            threshold: threshold.max(1),
        };
        Ok((index, start, rebuilt))
    }

    pub fn committed(&self) -> Committed {
        self.layers.read().committed
    }

    /// Current id and count of a stream.
    pub fn stream_info(&self, name: &str) -> Result<StreamInfo> {
        let layers = self.layers.read();
        for table in layers.tables() {
            if let Some(s) = table.streams.get(name) {
                return Ok(StreamInfo {
                    id: Some(s.id),
                    count: s.count,
                });
            }
        }
        let txn = self.sidecar.begin_read()?;
        drop(layers);
        Ok(match self.sidecar.stream(&txn, name)? {
            Some((id, count)) => StreamInfo {
                id: Some(id),
                count,
            },
            None => StreamInfo::default(),
        })
    }

    /// Records a commit's parts and moves the committed end. Called by the one writer, after the
    /// commit is durable. Fails only if the sidecar cannot be read to find a stream's id.
    pub fn apply(&self, parts: &[PartIndex], committed: Committed) -> Result<()> {
        let mut layers = self.layers.write();
        let layers = &mut *layers;
        for part in parts {
            let stream = match layers.active.streams.get_mut(&part.stream) {
                Some(s) => s,
                None => {
                    // A stream the writer saw as new may have been given an id by an earlier
                    // commit since (and flushed); only a stream no layer knows gets a new id.
                    let known = part.before.id.or_else(|| {
                        let frozen = layers.frozen.as_ref()?.table.streams.get(&part.stream)?;
                        Some(frozen.id)
                    });
                    let known = match known {
                        Some(id) => Some(id),
                        None => self.sidecar_id(&part.stream)?,
                    };
                    let id = match known {
                        Some(id) => id,
                        None => {
                            let id = layers.next_stream_id;
                            layers.next_stream_id = id.checked_add(1).ok_or_else(|| {
                                crate::error::Error::Index("stream ids are exhausted".into())
                            })?;
                            id
                        }
                    };
                    layers
                        .active
                        .streams
                        .entry(part.stream.clone())
                        .or_insert(MemStream {
                            id,
                            count: part.before.count,
                            runs: Vec::new(),
                            runs_end: 0,
                        })
                }
            };
            MemTable::add_run(stream, part.add);
            let table = &mut layers.active;
            table.events += u64::from(part.add.run.count);
            let category = PosRunAdd {
                position: part.add.run.position,
                count: part.add.run.count,
                end: part.add.end,
            };
            MemTable::add_pos_run(&mut table.categories, category_of(&part.stream), category);
            for (event_type, run) in &part.types {
                MemTable::add_pos_run(&mut table.types, event_type, *run);
            }
            match &part.ids {
                PartIds::Span { first, last } => {
                    assert!(
                        layers.max_id.is_none_or(|m| *first > m),
                        "an id span lies above every stored id"
                    );
                    table.id_spans.insert(
                        *first,
                        IdSpan {
                            last: *last,
                            position: part.add.run.position,
                            count: part.add.run.count,
                        },
                    );
                }
                PartIds::Each(ids) => table.ids.extend(ids.iter().copied()),
            }
            layers.max_id = layers.max_id.max(part.ids.max());
        }
        layers.committed = committed;
        Ok(())
    }

    /// Raises a stream's count to at least `count`: after a rebuild, the versions a deletion
    /// covered and a scavenge removed with their frames are known only from the stream's
    /// metadata, and versions must go on after them.
    pub fn raise_count(&self, name: &str, count: u64) -> Result<()> {
        let info = self.stream_info(name)?;
        if info.count >= count {
            return Ok(());
        }
        let mut layers = self.layers.write();
        let id = match info.id {
            Some(id) => id,
            None => {
                let id = layers.next_stream_id;
                layers.next_stream_id = id
                    .checked_add(1)
                    .ok_or_else(|| crate::error::Error::Index("stream ids are exhausted".into()))?;
                id
            }
        };
        let stream = layers
            .active
            .streams
            .entry(Arc::from(name))
            .or_insert(MemStream {
                id,
                count: info.count,
                runs: Vec::new(),
                runs_end: 0,
            });
        stream.count = stream.count.max(count);
        Ok(())
    }

    /// The sidecar's id for a stream, if it has one.
    fn sidecar_id(&self, name: &str) -> Result<Option<u64>> {
        let txn = self.sidecar.begin_read()?;
        Ok(self.sidecar.stream(&txn, name)?.map(|(id, _)| id))
    }

    /// Up to `max` runs of a stream from version `from` (forwards or backwards), with the
    /// stream's count and the committed end, all as of one moment.
    pub fn stream_snapshot(
        &self,
        name: &str,
        from: u64,
        backwards: bool,
        max: usize,
    ) -> Result<StreamSnapshot> {
        let layers = self.layers.read();
        let mut runs = Vec::new();
        let mut known: Option<(u64, u64)> = None;
        for table in layers.tables() {
            if let Some(s) = table.streams.get(name) {
                known.get_or_insert((s.id, s.count));
                runs.extend(select(&s.runs, from, backwards, max));
            }
        }
        let committed = layers.committed;
        let txn = self.sidecar.begin_read()?;
        drop(layers);
        let (id, count) = match known {
            Some(k) => k,
            None => match self.sidecar.stream(&txn, name)? {
                Some(k) => k,
                None => {
                    return Ok(StreamSnapshot {
                        count: 0,
                        runs,
                        committed,
                    });
                }
            },
        };
        runs.extend(self.sidecar.runs(&txn, id, from, backwards, max)?);
        runs.sort_unstable_by_key(|r| r.first_version);
        runs.dedup_by_key(|r| r.first_version);
        if backwards {
            runs.reverse();
        }
        runs.truncate(max);
        Ok(StreamSnapshot {
            count,
            runs,
            committed,
        })
    }

    /// The largest event id stored.
    pub fn max_id(&self) -> Option<u128> {
        self.layers.read().max_id
    }

    /// Where the event with this id is, if the index knows it: an exact position, or the one
    /// span whose range holds the id (then the id is stored there or nowhere: ids recorded one
    /// by one are looked up first, in every layer).
    pub fn find_id(&self, id: u128) -> Result<Option<IdHit>> {
        let layers = self.layers.read();
        if layers.max_id.is_none_or(|max| id > max) {
            return Ok(None);
        }
        let mut span = None;
        for table in layers.tables() {
            if let Some(&position) = table.ids.get(&id) {
                return Ok(Some(IdHit::At(position)));
            }
            span = span.or_else(|| table.span_around(id));
        }
        if layers.sidecar_max_id.is_none_or(|max| id > max) {
            return Ok(span.map(IdHit::InSpan));
        }
        let txn = self.sidecar.begin_read()?;
        drop(layers);
        Ok(match self.sidecar.find_id(&txn, id)? {
            Some(IdHit::At(position)) => Some(IdHit::At(position)),
            stored => span.map(IdHit::InSpan).or(stored),
        })
    }

    /// Up to `max` runs of a category or event type that hold positions at or after `from`, in
    /// position order, and the committed end as of the same moment.
    pub fn pos_snapshot(
        &self,
        index: PosIndex,
        name: &str,
        from: u64,
        max: usize,
    ) -> Result<(Vec<PosRun>, Committed)> {
        let layers = self.layers.read();
        let mut runs = Vec::new();
        // Each layer gives its runs in order, at most `max` past `from`; where a layer held
        // more, nothing past its last given run may be returned (another layer's later runs
        // would skip the ones it did not give).
        let mut frontier = u64::MAX;
        for table in layers.tables() {
            let map = match index {
                PosIndex::Category => &table.categories,
                PosIndex::EventType => &table.types,
            };
            if let Some(r) = map.get(name) {
                // The run before the first one at or after `from` may hold `from`.
                let at = r
                    .runs
                    .partition_point(|run| run.position < from)
                    .saturating_sub(1);
                let given = &r.runs[at..r.runs.len().min(at + max + 1)];
                if at + given.len() < r.runs.len() {
                    frontier = frontier.min(given.last().map_or(0, |g| g.position));
                }
                runs.extend_from_slice(given);
            }
        }
        let committed = layers.committed;
        let txn = self.sidecar.begin_read()?;
        drop(layers);
        let (stored, more) = self.sidecar.pos_runs(&txn, index, name, from, max)?;
        if more {
            frontier = frontier.min(stored.last().map_or(0, |g| g.position));
        }
        runs.extend(stored);
        runs.sort_unstable_by_key(|r| r.position);
        runs.dedup_by_key(|r| r.position);
        runs.retain(|r| r.position <= frontier);
        Ok((runs, committed))
    }

    /// Events in the active memtable.
    pub fn active_events(&self) -> u64 {
        self.layers.read().active.events
    }

    /// Whether the active memtable has reached the flush threshold and can be flushed.
    pub fn flush_due(&self) -> bool {
        self.sidecar.writable() && self.active_events() >= self.threshold
    }

    /// Freezes the active memtable if it has reached the flush threshold (or, with `force`, if
    /// it holds anything or the committed end moved) and no other flush is under way. The caller
    /// must pass the result to [`write_frozen`](Self::write_frozen). A table whose write failed
    /// is handed out again first (it must reach the sidecar before anything newer). Nothing is
    /// frozen when the sidecar is read-only.
    ///
    /// With `clean`, the table's metadata marks the store closed cleanly at the position it
    /// covers (the last flush of a close: one sidecar commit instead of two).
    pub fn freeze(&self, force: bool, clean: bool) -> Option<Arc<Frozen>> {
        if !self.sidecar.writable() {
            return None;
        }
        let mut flushing = self.flushing.lock();
        if *flushing {
            return None;
        }
        let mut layers = self.layers.write();
        if let Some(frozen) = &layers.frozen {
            *flushing = true;
            return Some(frozen.clone());
        }
        let due = layers.active.events >= self.threshold;
        let moved = layers.committed.end != layers.sidecar_covered;
        if !due && !(force && (!layers.active.streams.is_empty() || moved)) {
            return None;
        }
        let frozen = Arc::new(Frozen {
            table: std::mem::take(&mut layers.active),
            meta: SidecarMeta {
                covered: layers.committed.end,
                last_frame: layers.committed.last_frame,
                next_stream_id: layers.next_stream_id,
                clean,
                // Filled in by the sidecar when it writes the mark.
                prepared: None,
            },
        });
        layers.frozen = Some(frozen.clone());
        *flushing = true;
        Some(frozen)
    }

    /// Writes a frozen memtable to the sidecar, then drops it from memory.
    ///
    /// A failed write discards the sidecar's file ([`Sidecar::discard`]): the caller poisons
    /// the store, and the next open rebuilds the index from the log.
    pub fn write_frozen(&self, frozen: Arc<Frozen>) -> Result<()> {
        let result = self.sidecar.write(&frozen.table, &frozen.meta);
        if result.is_err() {
            self.sidecar.discard();
        }
        let mut flushing = self.flushing.lock();
        if result.is_ok() {
            let mut layers = self.layers.write();
            layers.frozen = None;
            layers.sidecar_covered = frozen.meta.covered;
            let frozen_max = frozen.table.ids.keys().max().copied();
            let span_max = frozen.table.id_spans.values().map(|s| s.last).max();
            layers.sidecar_max_id = layers.sidecar_max_id.max(frozen_max).max(span_max);
        }
        *flushing = false;
        self.flushed.notify_all();
        result
    }

    /// Stops every write to the sidecar (see [`Sidecar::abandon`]).
    pub fn abandon(&self) {
        self.sidecar.abandon();
    }

    /// Gives up writing a frozen memtable for now (the store is poisoned): it stays in memory
    /// (readers still see it) and nobody waits for its flush any more.
    pub fn release_frozen(&self) {
        let mut flushing = self.flushing.lock();
        *flushing = false;
        self.flushed.notify_all();
    }

    /// Records in the sidecar that the store is closed cleanly at the position it covers (call
    /// after the last flush), or, before the first write after such a close, that it no longer is.
    pub fn set_clean(&self, clean: bool) -> Result<()> {
        let result = self.sidecar.set_clean(clean);
        if result.is_err() {
            self.sidecar.discard();
        }
        result
    }

    /// Records how far the log is prepared, for the clean mark of the close.
    pub fn set_prepared_end(&self, end: u64) {
        self.sidecar.set_prepared_end(end);
    }

    /// Blocks while a flush is under way and the active memtable has grown past `limit` events
    /// (back-pressure that bounds memory).
    pub fn wait_if_over(&self, limit: u64) {
        let mut flushing = self.flushing.lock();
        while *flushing && self.active_events() > limit {
            self.flushed.wait(&mut flushing);
        }
    }

    /// The flush threshold.
    pub fn threshold(&self) -> u64 {
        self.threshold
    }
}

/// The runs of a memtable stream that a read from `from` needs, at most `max`.
fn select(runs: &[Run], from: u64, backwards: bool, max: usize) -> impl Iterator<Item = Run> + '_ {
    let (slice, rev) = if backwards {
        (
            &runs[..runs.partition_point(|r| r.first_version <= from)],
            true,
        )
    } else {
        (
            &runs[runs.partition_point(|r| r.end_version() <= from)..],
            false,
        )
    };
    let take = max.min(slice.len());
    let picked = if rev {
        &slice[slice.len() - take..]
    } else {
        &slice[..take]
    };
    picked.iter().copied()
}

impl Layers {
    /// The memtables, newest first.
    fn tables(&self) -> impl Iterator<Item = &MemTable> {
        std::iter::once(&self.active).chain(self.frozen.as_deref().map(|f| &f.table))
    }
}
