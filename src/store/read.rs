//! Read iterators. Both take a snapshot of what is acknowledged when they start and never
//! return anything newer; neither blocks the writer.
//!
//! Every frame is checked right after it is read (checksum, position), and a frame found
//! through the index must be the event the index promised (stream and version), so a stale or
//! damaged index can never make a read return the wrong event.

use std::collections::VecDeque;

use super::Engine;
use crate::error::{Error, Result};
use crate::event::{EventView, RecordedEvent};
use crate::index::PosIndex;
use crate::index::memtable::{PosRun, Run};
use crate::log::Layout;
use crate::log::format::{Body, EventRef, FRAME_ALIGN};
use crate::log::reader::{Cursor, Found};
use crate::names::category_of;
use crate::values::{Direction, Position};

/// How many index runs a stream read fetches at a time.
const RUN_BATCH: usize = 256;

/// Events of one stream; see [`crate::store::Store::read_stream`].
pub struct StreamEvents<'a> {
    engine: &'a Engine,
    stream: String,
    backwards: bool,
    /// The next version to return, `None` once done.
    next: Option<u64>,
    remaining: usize,
    /// The stream's event count when the read started.
    count: u64,
    /// The committed end when the read started.
    limit: u64,
    runs: VecDeque<Run>,
    /// The run holding `next` and the position of `next`'s frame, when known.
    at: Option<(Run, u64)>,
    cursor: Cursor,
    /// The first readable version (see `lifecycle`).
    first: u64,
}

impl<'a> StreamEvents<'a> {
    pub(super) fn new(
        engine: &'a Engine,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Self> {
        let backwards = direction == Direction::Backwards;
        let snapshot = engine
            .index
            .stream_snapshot(stream, from, backwards, RUN_BATCH)?;
        // Versions before `first` are deleted, truncated or superseded (see `lifecycle`).
        let first = engine.lifecycle.first_readable(stream, snapshot.count);
        let next = match (snapshot.count, backwards) {
            (0, _) => None,
            (count, false) => Some(from.max(first)).filter(|v| *v < count),
            (count, true) => Some(from.min(count - 1)).filter(|v| *v >= first),
        };
        let snapshot = match next {
            // The runs fetched hold `from`; fetch those holding the first readable version.
            Some(v) if v != from => engine
                .index
                .stream_snapshot(stream, v, backwards, RUN_BATCH)?,
            _ => snapshot,
        };
        Ok(StreamEvents {
            engine,
            stream: stream.to_owned(),
            backwards,
            next: if limit == 0 { None } else { next },
            remaining: limit,
            count: snapshot.count,
            limit: snapshot.committed.end,
            runs: snapshot.runs.into(),
            at: None,
            cursor: Cursor::default(),
            first,
        })
    }

    /// Finds the run holding `version` and the position of its frame. When `version` was
    /// removed from the file (a scavenge), the first version after it that is still there, and
    /// that version.
    fn locate(&mut self, version: u64) -> Result<(Run, u64, u64)> {
        let mut version = version;
        loop {
            while let Some(run) = self.runs.front() {
                if run.contains(version) {
                    break;
                }
                self.runs.pop_front();
            }
            if let Some(run) = self.runs.front().copied() {
                // Walk from the run's first frame to the wanted version (over removed frames).
                let mut position = run.position;
                let mut passed_gap = false;
                loop {
                    match self
                        .engine
                        .reader
                        .resolve(position, self.limit, &mut self.cursor)?
                    {
                        Found::Gap { end, .. } => {
                            passed_gap = true;
                            position = end;
                        }
                        Found::Frame(bytes, frame) if frame.body == Body::Event => {
                            let e = EventRef::new(&bytes);
                            let same = e.stream_bytes() == self.stream.as_bytes();
                            if same && e.version() >= version && run.contains(e.version()) {
                                return Ok((run, position, e.version()));
                            }
                            if same && e.version() < version {
                                position += u64::from(frame.len);
                                continue;
                            }
                            if !passed_gap {
                                // The owned read names what is wrong.
                                return Err(self
                                    .read_event(position, version)
                                    .err()
                                    .unwrap_or_else(|| {
                                        Error::corrupt(position, "the index and the log disagree")
                                    }));
                            }
                            // The rest of the run was removed: go on with the next run.
                            version = run.end_version();
                            self.runs.pop_front();
                            break;
                        }
                        Found::Frame(..) => {
                            if !passed_gap {
                                return Err(Error::corrupt(
                                    position,
                                    "the index points at a seal, not an event",
                                ));
                            }
                            version = run.end_version();
                            self.runs.pop_front();
                            break;
                        }
                    }
                    if position >= self.limit {
                        version = run.end_version();
                        self.runs.pop_front();
                        break;
                    }
                }
                if version >= self.count {
                    return Ok((run, self.limit, version));
                }
                continue;
            }
            let snapshot = self.engine.index.stream_snapshot(
                &self.stream,
                version,
                self.backwards,
                RUN_BATCH,
            )?;
            if !snapshot.runs.iter().any(|r| r.contains(version)) {
                return Err(Error::Index(format!(
                    "no index entry for version {version} of stream `{}`",
                    self.stream
                )));
            }
            self.runs = snapshot.runs.into();
        }
    }

    /// Reads the frame at `position`, which must be event `version` of this stream. Returns the
    /// event and the distance back to the frame before it.
    fn read_event(&mut self, position: u64, version: u64) -> Result<RecordedEvent> {
        let (bytes, frame) = self
            .engine
            .reader
            .read(position, self.limit, &mut self.cursor)?;
        if frame.body != Body::Event {
            return Err(Error::corrupt(
                position,
                "the index points at a seal, not an event",
            ));
        }
        let event = RecordedEvent::new(bytes, position).with_prev(frame.link.prev);
        if !event.is_in(&self.stream) || event.version() != version {
            return Err(Error::corrupt(
                position,
                format!(
                    "the index points at version {} of `{}`, not version {version} of `{}`",
                    event.version(),
                    event.stream(),
                    self.stream
                ),
            ));
        }
        Ok(event)
    }

    fn step(&mut self) -> Result<Option<RecordedEvent>> {
        let Some((position, len, prev)) = self.step_view()? else {
            return Ok(None);
        };
        let bytes = self.engine.reader.frame_shared(&self.cursor, position, len);
        Ok(Some(RecordedEvent::new(bytes, position).with_prev(prev)))
    }
}

impl StreamEvents<'_> {
    /// The next event, borrowed in place instead of owned (see [`EventView`]): the same events
    /// in the same order as [`Iterator::next`], without a reference count or a copy for each.
    /// After an error the read is done.
    pub fn next_ref(&mut self) -> Option<Result<EventView<'_>>> {
        match self.step_view() {
            Ok(Some((position, len, prev))) => {
                let bytes = self.engine.reader.frame_bytes(&self.cursor, position, len);
                Some(Ok(EventView::new(bytes, position, prev)))
            }
            Ok(None) => None,
            Err(e) => {
                self.next = None;
                Some(Err(e))
            }
        }
    }

    /// Like `step`, leaving the checked frame in the cursor: its position, length and the
    /// distance back to the frame before it.
    fn step_view(&mut self) -> Result<Option<(u64, u32, u32)>> {
        loop {
            let Some(version) = self.next else {
                return Ok(None);
            };
            let (run, position, version) = match self.at.take() {
                Some((run, position)) => (run, position, version),
                None => {
                    let (run, position, found) = self.locate(version)?;
                    if found >= self.count || (self.backwards && found != version) {
                        // Removed from the file: nothing more to read this way.
                        self.next = None;
                        return Ok(None);
                    }
                    (run, position, found)
                }
            };
            // Frames may be rewritten into gaps while they are looked at (a scavenge): then
            // the look is taken again.
            let epoch = self.engine.reader.rewrite_epoch();
            let checked = self
                .engine
                .reader
                .check(position, self.limit, &mut self.cursor);
            let frame = match checked {
                Ok(frame) if frame.body == Body::Event => frame,
                _ if !self.engine.reader.stable_since(epoch) => {
                    self.at = Some((run, position));
                    std::thread::yield_now();
                    continue;
                }
                _ => {
                    // A removed frame (the step before knew no better): find it again.
                    let (run, position, found) = self.locate(version)?;
                    if found >= self.count || (self.backwards && found != version) {
                        self.next = None;
                        return Ok(None);
                    }
                    self.at = Some((run, position));
                    self.next = Some(found);
                    continue;
                }
            };
            let bytes = self
                .engine
                .reader
                .frame_bytes(&self.cursor, position, frame.len);
            let event = EventRef::new(bytes);
            let sound =
                event.stream_bytes() == self.stream.as_bytes() && event.version() == version;
            let readable = sound && self.engine.lifecycle.readable(&self.engine.index, &event);
            if !self.engine.reader.stable_since(epoch) {
                self.at = Some((run, position));
                std::thread::yield_now();
                continue;
            }
            if !sound {
                // The owned read names what is wrong.
                return Err(self.read_event(position, version).err().unwrap_or_else(|| {
                    Error::corrupt(position, "the index and the log disagree")
                }));
            }
            let next_position = position + u64::from(frame.len);
            if self.backwards {
                self.next = version.checked_sub(1).filter(|v| *v >= self.first);
                if self.next.is_some_and(|v| run.contains(v)) {
                    self.at = Some((run, position - u64::from(frame.link.prev)));
                }
            } else {
                self.next = Some(version + 1).filter(|v| *v < self.count);
                if self.next.is_some_and(|v| run.contains(v)) {
                    self.at = Some((run, next_position));
                }
            }
            if !readable {
                // Expired by age, or deleted since the read began.
                continue;
            }
            self.remaining -= 1;
            if self.remaining == 0 {
                self.next = None;
            }
            return Ok(Some((position, frame.len, frame.link.prev)));
        }
    }
}

impl Iterator for StreamEvents<'_> {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        let step = self.step();
        fuse(step, &mut self.next)
    }
}

/// Turns a step into an iterator item; after an error the iterator is done.
fn fuse<T>(
    step: Result<Option<RecordedEvent>>,
    next: &mut Option<T>,
) -> Option<Result<RecordedEvent>> {
    let item = step.transpose();
    if let Some(Err(_)) = item {
        *next = None;
    }
    item
}

/// Events of the whole log in position order; see [`crate::store::Store::read_all`].
pub struct AllEvents<'a> {
    engine: &'a Engine,
    backwards: bool,
    /// Whether events of `$` streams (the engine's own records) are returned.
    include_system: bool,
    /// Position of the next frame to look at, `None` once done.
    next: Option<u64>,
    remaining: usize,
    limit: u64,
    cursor: Cursor,
    /// Only events this filter passes are returned (see [`AllEvents::matching`]).
    filter: Option<crate::store::subscriptions::Filter>,
    /// Where the read stops (see [`AllEvents::until`]).
    stop: Option<u64>,
    /// Gaps passed (removed frames) and the bytes they cover.
    gaps: (u64, u64),
}

impl AllEvents<'_> {
    /// Returns only the events `filter` passes; `limit` counts those. Events are filtered in
    /// place, before they are copied out, so a filter that passes few events costs about as
    /// much as reading the log with [`next_ref`](Self::next_ref).
    ///
    /// ```
    /// use annals::{Direction, ExpectedVersion, NewEvent, Position, Store};
    /// use annals::subscriptions::Filter;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// for (stream, kind) in [("order-1", "Placed"), ("cart-1", "Added"), ("order-2", "Paid")] {
    ///     store.append(stream, ExpectedVersion::Any, [NewEvent::new(kind, "{}")])?;
    /// }
    /// let orders: Vec<String> = store
    ///     .read_all(Position::END, Direction::Backwards, usize::MAX)?
    ///     .matching(Filter::StreamPrefix("order-".into()))
    ///     .map(|e| e.map(|e| e.stream().to_owned()))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(orders, ["order-2", "order-1"]);
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn matching(mut self, filter: crate::store::subscriptions::Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Stops the read at `stop`: forwards, it returns only events before `stop`; backwards,
    /// only events at or after it. With the start position, a read covers `[from, stop)`
    /// forwards and `[stop, from]` backwards (the start is inclusive in both directions).
    ///
    /// ```
    /// use annals::{Direction, ExpectedVersion, NewEvent, Position, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// let r: Vec<_> = (0..5)
    ///     .map(|i| store.append("s", ExpectedVersion::Any, [NewEvent::new("E", i.to_string())]))
    ///     .collect::<Result<_, _>>()?;
    /// let (second, fourth) = (r[1].first_position, r[3].first_position);
    /// let forwards = store.read_all(second, Direction::Forwards, usize::MAX)?.until(fourth).count();
    /// assert_eq!(forwards, 2, "versions 1 and 2");
    /// let backwards = store.read_all(fourth, Direction::Backwards, usize::MAX)?.until(second).count();
    /// assert_eq!(backwards, 3, "versions 3, 2 and 1");
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn until(mut self, stop: Position) -> Self {
        self.stop = Some(stop.as_u64());
        self
    }
}

impl<'a> AllEvents<'a> {
    pub(super) fn new(
        engine: &'a Engine,
        from: Position,
        direction: Direction,
        limit: usize,
        include_system: bool,
    ) -> Result<Self> {
        let committed = engine.index.committed();
        let backwards = direction == Direction::Backwards;
        let mut this = AllEvents {
            engine,
            backwards,
            include_system,
            next: None,
            remaining: limit,
            limit: committed.end,
            cursor: Cursor::default(),
            filter: None,
            stop: None,
            gaps: (0, 0),
        };
        if limit == 0 {
            return Ok(this);
        }
        let from = from.as_u64();
        this.next = if backwards {
            match committed.last_frame {
                // Nothing is at or before a position before the first frame.
                _ if from < Layout::FIRST => None,
                None => None,
                Some(last) if from >= committed.end || from >= last => Some(last),
                Some(_) => Some(this.frame_at_or_before(from)?),
            }
        } else if from.max(Layout::FIRST) >= committed.end {
            None
        } else {
            Some(this.frame_at_or_after(from.max(Layout::FIRST))?)
        };
        Ok(this)
    }

    /// The end of the log this read sees (it returns nothing at or after it).
    pub(crate) fn end(&self) -> Position {
        Position::new(self.limit)
    }

    /// How many gaps (frames a scavenge or an erasure removed) this read has passed, and the
    /// bytes they cover.
    pub fn gaps_passed(&self) -> (u64, u64) {
        self.gaps
    }

    /// Whether a frame of the log provably starts exactly at `position` (a position from a
    /// caller is checked, never trusted: bytes inside a payload may look like a frame). An
    /// event frame does if the id index puts its id there; a seal, if the frame before it does
    /// and ends where the seal starts. When this says no, the callers walk the segment's
    /// frames from its start to find out.
    fn is_frame(&mut self, position: u64) -> Result<bool> {
        if !position.is_multiple_of(FRAME_ALIGN) {
            return Ok(false);
        }
        let found = self
            .engine
            .reader
            .try_read(position, self.limit, &mut self.cursor)?;
        let Ok((bytes, frame)) = found else {
            return Ok(false);
        };
        let event_at = |this: &mut Self, at: u64, bytes: &[u8]| -> Result<bool> {
            let id = u128::from_be_bytes(EventRef::new(bytes).event_id());
            Ok(this.engine.locate_id(id)? == Some(at))
        };
        let genuine = match frame.body {
            Body::Event => event_at(self, position, &bytes)?,
            // A gap's header is checked whole (its position is stored under the frame key).
            Body::Gap { .. } => true,
            Body::Seal { .. } => {
                let prev = u64::from(frame.link.prev);
                let before = position.checked_sub(prev).filter(|_| prev != 0);
                match before.map(|at| {
                    (
                        at,
                        self.engine
                            .reader
                            .try_read(at, self.limit, &mut Cursor::default()),
                    )
                }) {
                    Some((at, read)) => match read? {
                        Ok((b, f)) => {
                            f.body == Body::Event
                                && at + u64::from(f.len) == position
                                && event_at(self, at, &b)?
                        }
                        Err(_) => false,
                    },
                    None => false,
                }
            }
        };
        Ok(genuine)
    }

    /// Walks the frames of `position`'s segment from its start; returns the start of the
    /// frame holding `position` and the start of the one after it.
    fn walk_to(&mut self, position: u64) -> Result<(u64, u64)> {
        let layout = self.engine.reader.layout();
        let mut at = layout.segment_start(layout.segment_of(position));
        loop {
            let (_, frame) = self.engine.reader.read(at, self.limit, &mut self.cursor)?;
            let next = frame.next();
            if next > position || next >= self.limit {
                return Ok((at, next));
            }
            at = next;
        }
    }

    fn frame_at_or_after(&mut self, position: u64) -> Result<u64> {
        if self.is_frame(position)? {
            return Ok(position);
        }
        let (at, next) = self.walk_to(position)?;
        Ok(if at == position { at } else { next })
    }

    fn frame_at_or_before(&mut self, position: u64) -> Result<u64> {
        if self.is_frame(position)? {
            return Ok(position);
        }
        Ok(self.walk_to(position)?.0)
    }

    fn step(&mut self) -> Result<Option<RecordedEvent>> {
        let Some((position, frame)) = self.advance()? else {
            return Ok(None);
        };
        let bytes = self
            .engine
            .reader
            .frame_shared(&self.cursor, position, frame.len);
        Ok(Some(
            RecordedEvent::new(bytes, position).with_prev(frame.link.prev),
        ))
    }
}

impl AllEvents<'_> {
    /// The next event, borrowed in place instead of owned (see [`EventView`]): the same events
    /// in the same order as [`Iterator::next`], without a reference count or a copy for each.
    /// After an error the read is done.
    pub fn next_ref(&mut self) -> Option<Result<EventView<'_>>> {
        self.step_ref().transpose()
    }

    fn step_ref(&mut self) -> Result<Option<EventView<'_>>> {
        let Some((position, frame)) = self.advance()? else {
            return Ok(None);
        };
        let bytes = self
            .engine
            .reader
            .frame_bytes(&self.cursor, position, frame.len);
        Ok(Some(EventView::new(bytes, position, frame.link.prev)))
    }

    /// Moves to the next event this read returns and checks its frame, which stays in the
    /// cursor: its position and decoded form. After an error the read is done.
    fn advance(&mut self) -> Result<Option<(u64, crate::log::format::Frame)>> {
        loop {
            let Some(position) = self.next else {
                return Ok(None);
            };
            let stopped = self.stop.is_some_and(|stop| {
                if self.backwards {
                    position < stop
                } else {
                    position >= stop
                }
            });
            if position >= self.limit || stopped {
                self.next = None;
                return Ok(None);
            }
            let reader = &self.engine.reader;
            // Frames may be rewritten into gaps while they are looked at (a scavenge): then
            // the look is taken again.
            let (at, epoch) = (position, reader.rewrite_epoch());
            let frame = match reader.check(position, self.limit, &mut self.cursor) {
                Ok(frame) => frame,
                // Inside removed frames (a backwards step from the frame after a gap).
                Err(e) => match reader.resolve(position, self.limit, &mut self.cursor) {
                    Ok(crate::log::reader::Found::Gap { header, .. }) => header,
                    _ if !reader.stable_since(epoch) => {
                        std::thread::yield_now();
                        continue;
                    }
                    _ => {
                        self.next = None;
                        return Err(e);
                    }
                },
            };
            let position = frame.link.position;
            let wanted = frame.body == Body::Event && {
                let event = EventRef::new(reader.frame_bytes(&self.cursor, position, frame.len));
                let system = event.is_system();
                (match &self.filter {
                    Some(filter) => filter.passes(event.stream(), event.event_type()),
                    None => self.include_system || !system,
                }) && ((!system && !self.engine.lifecycle.any())
                    || self.engine.lifecycle.readable(&self.engine.index, &event))
            };
            if !reader.stable_since(epoch) {
                self.next = Some(at);
                std::thread::yield_now();
                continue;
            }
            if let Body::Gap { .. } = frame.body {
                self.gaps.0 += 1;
                self.gaps.1 += u64::from(frame.len);
            }
            self.next = if self.backwards {
                position
                    .checked_sub(u64::from(frame.link.prev))
                    .filter(|_| frame.link.prev != 0)
            } else {
                Some(frame.next())
            };
            if wanted {
                self.remaining -= 1;
                if self.remaining == 0 {
                    self.next = None;
                }
                return Ok(Some((position, frame)));
            }
        }
    }
}

impl Iterator for AllEvents<'_> {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        let step = self.step();
        fuse(step, &mut self.next)
    }
}

/// How many index runs a category or type read fetches at a time.
const POS_BATCH: usize = 256;

/// Events of one category or one event type in log order; see
/// [`crate::store::Store::read_category`] and [`crate::store::Store::read_event_type`].
pub struct IndexedEvents<'a> {
    engine: &'a Engine,
    index: PosIndex,
    name: String,
    /// Events before this position are skipped.
    from: u64,
    remaining: usize,
    limit: u64,
    runs: VecDeque<PosRun>,
    /// Start of the last run taken from `runs` (later refills skip it and those before).
    taken_through: Option<u64>,
    /// The frame to read next and how many frames of its run are left.
    at: Option<(u64, u32)>,
    done: bool,
    cursor: Cursor,
    /// Set for a backwards read.
    back: Option<Back>,
    /// The run being read passed removed frames: a frame not listed here ends it.
    passed_gap: bool,
}

/// What a category or type read finds at a position of a run.
enum Look {
    /// Removed frames, up to this position.
    Gap(u64),
    /// A frame after removed ones that is not listed: the run's frames after the gap are gone.
    RunEnded,
    /// A listed event, and whether reads may return it.
    Event(RecordedEvent, bool),
}

/// A backwards read by category or type: the index's runs at or before the start, read from
/// the newest; each run's frames are found by walking it forwards once.
struct Back {
    /// The start (inclusive): nothing after it is returned.
    upto: u64,
    /// Runs still to read, in position order (taken from the end).
    runs: Vec<PosRun>,
    /// Frames of the current run still to return, in position order (taken from the end).
    positions: Vec<u64>,
    /// Where the run read before this one starts: a run that passed removed frames ends
    /// before it (its frames there were returned already).
    later_run: u64,
}

impl<'a> IndexedEvents<'a> {
    pub(super) fn new(
        engine: &'a Engine,
        index: PosIndex,
        name: &str,
        from: Position,
        limit: usize,
    ) -> Result<Self> {
        let from = from.as_u64().max(Layout::FIRST);
        let (runs, committed) = engine.index.pos_snapshot(index, name, from, POS_BATCH)?;
        Ok(IndexedEvents {
            engine,
            index,
            name: name.to_owned(),
            from,
            remaining: limit,
            limit: committed.end,
            runs: runs.into(),
            taken_through: None,
            at: None,
            done: limit == 0,
            cursor: Cursor::default(),
            back: None,
            passed_gap: false,
        })
    }

    /// A backwards read: the events of `name` at or before `from`, newest first.
    pub(super) fn backwards(
        engine: &'a Engine,
        index: PosIndex,
        name: &str,
        from: Position,
        limit: usize,
    ) -> Result<Self> {
        let mut this = Self::new(engine, index, name, Position::START, limit)?;
        let upto = from.as_u64().min(this.limit.saturating_sub(1));
        // Every run that starts at or before `upto`, from the index alone: the first batch is
        // the one the forward start took, with the committed end it holds to.
        let mut runs: Vec<PosRun> = Vec::new();
        let mut batch: Vec<PosRun> = std::mem::take(&mut this.runs).into();
        loop {
            let before = runs.len();
            for run in batch {
                if run.position > upto || run.position >= this.limit {
                    break;
                }
                if runs.last().is_none_or(|last| run.position > last.position) {
                    runs.push(run);
                }
            }
            match runs.last() {
                Some(last) if runs.len() > before => {
                    batch = engine
                        .index
                        .pos_snapshot(index, name, last.position + 1, POS_BATCH)?
                        .0;
                }
                _ => break,
            }
        }
        this.back = Some(Back {
            upto,
            runs,
            positions: Vec::new(),
            later_run: u64::MAX,
        });
        Ok(this)
    }

    fn step_back(&mut self) -> Result<Option<RecordedEvent>> {
        while !self.done {
            let back = self.back.as_mut().expect("a backwards read");
            if let Some(position) = back.positions.pop() {
                let epoch = self.engine.reader.rewrite_epoch();
                let looked = self.read_listed(position).map(|event| {
                    let readable = self
                        .engine
                        .lifecycle
                        .readable(&self.engine.index, &event.view());
                    (event, readable)
                });
                if !self.engine.reader.stable_since(epoch) {
                    let back = self.back.as_mut().expect("a backwards read");
                    back.positions.push(position);
                    std::thread::yield_now();
                    continue;
                }
                let (event, readable) = looked?;
                if !readable {
                    continue;
                }
                self.remaining -= 1;
                self.done = self.remaining == 0;
                return Ok(Some(event));
            }
            let Some(run) = back.runs.pop() else {
                self.done = true;
                break;
            };
            let upto = back.upto.min(back.later_run.saturating_sub(1));
            back.later_run = run.position;
            let positions = loop {
                let epoch = self.engine.reader.rewrite_epoch();
                let walked = self.run_positions(run, upto);
                if self.engine.reader.stable_since(epoch) {
                    break walked?;
                }
                std::thread::yield_now();
            };
            self.back.as_mut().expect("a backwards read").positions = positions;
        }
        Ok(None)
    }

    /// The positions of a run's frames that are still there, up to `upto`.
    fn run_positions(&mut self, run: PosRun, upto: u64) -> Result<Vec<u64>> {
        let mut at = run.position;
        let mut positions = Vec::new();
        let mut left = run.count;
        let mut passed_gap = false;
        while left > 0 && at <= upto && at < self.limit {
            match self
                .engine
                .reader
                .resolve(at, self.limit, &mut self.cursor)?
            {
                Found::Gap { end, .. } => {
                    passed_gap = true;
                    at = end;
                }
                Found::Frame(bytes, frame) => {
                    if passed_gap && !self.listed(&bytes, &frame) {
                        // The rest of the run was removed.
                        break;
                    }
                    positions.push(at);
                    at += u64::from(frame.len);
                    left -= 1;
                }
            }
        }
        Ok(positions)
    }

    /// What is at `position` of a run being read.
    fn look(&mut self, position: u64) -> Result<Look> {
        let (bytes, frame) =
            match self
                .engine
                .reader
                .resolve(position, self.limit, &mut self.cursor)?
            {
                Found::Gap { end, .. } => return Ok(Look::Gap(end)),
                Found::Frame(bytes, frame) => (bytes, frame),
            };
        if self.passed_gap && !self.listed(&bytes, &frame) {
            // The rest of the run was removed.
            return Ok(Look::RunEnded);
        }
        let event = self.read_listed(position)?;
        let readable = self
            .engine
            .lifecycle
            .readable(&self.engine.index, &event.view());
        Ok(Look::Event(event, readable))
    }

    /// Whether a frame is an event this read's index lists it under.
    fn listed(&self, bytes: &[u8], frame: &crate::log::format::Frame) -> bool {
        frame.body == Body::Event && {
            let e = EventRef::new(bytes);
            let key = match self.index {
                PosIndex::Category => category_of(e.stream()),
                PosIndex::EventType => e.event_type(),
            };
            key == self.name
        }
    }

    /// Reads the frame at `position`, which the index lists under this read's name.
    fn read_listed(&mut self, position: u64) -> Result<RecordedEvent> {
        let (bytes, frame) = self
            .engine
            .reader
            .read(position, self.limit, &mut self.cursor)?;
        let Body::Event = frame.body else {
            return Err(Error::corrupt(
                position,
                "the index points at a seal, not an event",
            ));
        };
        let event = RecordedEvent::new(bytes, position).with_prev(frame.link.prev);
        let key = match self.index {
            PosIndex::Category => category_of(event.stream()),
            PosIndex::EventType => event.event_type(),
        };
        if key != self.name {
            return Err(Error::corrupt(
                position,
                format!(
                    "the index lists this frame under `{}`, but it is `{key}`",
                    self.name
                ),
            ));
        }
        Ok(event)
    }

    fn step(&mut self) -> Result<Option<RecordedEvent>> {
        if self.back.is_some() {
            return self.step_back();
        }
        while !self.done {
            let Some((position, left)) = self.at.take() else {
                if self.runs.is_empty() {
                    let (runs, _) = self
                        .engine
                        .index
                        .pos_snapshot(self.index, &self.name, self.from, POS_BATCH)?;
                    self.runs = runs.into();
                }
                let taken = self.taken_through;
                while self
                    .runs
                    .front()
                    .is_some_and(|r| taken.is_some_and(|t| r.position <= t))
                {
                    self.runs.pop_front();
                }
                match self.runs.pop_front() {
                    Some(run) if run.position < self.limit => {
                        self.taken_through = Some(run.position);
                        self.at = Some((run.position, run.count));
                        self.passed_gap = false;
                    }
                    _ => self.done = true,
                }
                continue;
            };
            // Frames may be rewritten into gaps while they are looked at (a scavenge): then
            // the look is taken again.
            let epoch = self.engine.reader.rewrite_epoch();
            let looked = self.look(position);
            if !self.engine.reader.stable_since(epoch) {
                self.at = Some((position, left));
                std::thread::yield_now();
                continue;
            }
            let (event, readable) = match looked? {
                Look::Gap(end) => {
                    // Removed frames: the run may go on after them.
                    if end < self.limit {
                        self.at = Some((end, left));
                        self.passed_gap = true;
                    }
                    continue;
                }
                Look::RunEnded => {
                    self.passed_gap = false;
                    continue;
                }
                Look::Event(event, readable) => (event, readable),
            };
            let next = event.next_position().as_u64();
            if left > 1 && next < self.limit {
                self.at = Some((next, left - 1));
            } else {
                self.passed_gap = false;
            }
            if position < self.from {
                continue;
            }
            self.from = next;
            if !readable {
                continue;
            }
            self.remaining -= 1;
            self.done = self.remaining == 0;
            return Ok(Some(event));
        }
        Ok(None)
    }
}

impl Iterator for IndexedEvents<'_> {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        let step = self.step();
        let item = step.transpose();
        if let Some(Err(_)) = item {
            self.done = true;
        }
        item
    }
}
