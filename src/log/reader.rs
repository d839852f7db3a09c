//! Reading checked frames at positions: the mmap reader.
//!
//! When the file system can map files, each segment is mapped read-only once, and readers get
//! *views*: the first `len` bytes of a segment's map, where `len` never reaches past the log's
//! committed end when the view is made. Frames are sliced out of views without copying.
//! Elsewhere (in-memory file systems, and recovery, which may rewrite the unacknowledged tail),
//! frames are read with positioned reads into a chunk that grows while reads stay sequential.
//!
//! This module holds the crate's only `unsafe` block: turning a view into a byte slice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use memmap2::MmapRaw;
use parking_lot::RwLock;

use super::Layout;
use super::format::{
    Body, FRAME_HEADER_LEN, Frame, FrameError, GAP_HEADER_LEN, decode_frame, peek_gap, peek_len,
};
use crate::error::{Error, Result};
use crate::storage::StorageFile;

const FIRST_CHUNK: usize = 8 * 1024;
const MAX_CHUNK: usize = 1024 * 1024;

/// Reads frames of one log file. Engine by all readers.
#[derive(Debug)]
pub(crate) struct LogReader {
    file: Arc<dyn StorageFile>,
    layout: Layout,
    maps: RwLock<Vec<Option<Arc<MmapRaw>>>>,
    can_map: AtomicBool,
    /// Gaps found so far (start -> end).
    gaps: parking_lot::Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Odd while frames below the end are being rewritten into gaps; bumped twice per
    /// rewrite (a sequence lock: see [`stable_since`](Self::stable_since)).
    rewrites: std::sync::atomic::AtomicU64,
}

/// What is at a position: a checked frame, or a place inside removed frames (a gap).
#[derive(Debug)]
pub(crate) enum Found {
    /// A frame starts here (an event or a seal).
    Frame(Bytes, Frame),
    /// The position lies in the gap `[start, end)`; the gap's header frame is `header`.
    Gap { end: u64, header: Frame },
}

/// The first `len` bytes of a segment's map.
struct View {
    map: Arc<MmapRaw>,
    len: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        assert!(self.len <= self.map.len());
        // SAFETY: the pointer is valid for `len` bytes: the map is alive (we hold an `Arc` to
        // it) and covers a segment, `len` is within it (asserted), and those `len` bytes lie
        // below the log's committed end, which is inside the file (a map may reach past the
        // file's end, into a segment not yet prepared whole, but no view does). The bytes do
        // not change while this slice lives: a view only ever covers bytes below the log's
        // committed end at the time it was made; the writer only writes beyond it; recovery
        // (which may rewrite a torn tail) reads without maps and finishes before any view
        // exists; and a scavenge or an erasure, the only writers below the end, first takes the
        // segment's map out of use and waits until every view and event made from it is gone
        // (`retire_maps`, `wait_released`) — an erasure that has waited 30 seconds goes on, and
        // the bytes of the erased events an application still holds then read as zeros. The store's exclusive lock keeps
        // other annals handles from writing the file; a foreign process that ignores the lock
        // and truncates the file can still make reads fault (SIGBUS), the documented limit of
        // every mmap-based reader.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }
}

/// Per-reader state: the view of the segment being read, or a read buffer.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    /// (segment start, view of the segment's first bytes)
    view: Option<(u64, Bytes)>,
    start: u64,
    data: Bytes,
    next_len: usize,
}

impl Cursor {
    fn covers(&self, position: u64, len: u64) -> bool {
        position >= self.start && position + len <= self.start + self.data.len() as u64
    }

    fn fill(
        &mut self,
        file: &dyn StorageFile,
        position: u64,
        end: u64,
        at_least: u64,
    ) -> Result<()> {
        let sequential = position == self.start + self.data.len() as u64 && !self.data.is_empty();
        self.next_len = if sequential {
            (self.next_len * 2).min(MAX_CHUNK)
        } else {
            FIRST_CHUNK
        };
        // Bounded by the segment's end: never more than one segment is allocated here.
        let len = (self.next_len as u64).max(at_least).min(end - position) as usize;
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, position)?;
        self.start = position;
        self.data = Bytes::from(buf);
        Ok(())
    }

    fn bytes(&self, position: u64, end: u64) -> &[u8] {
        let from = (position - self.start) as usize;
        let to = ((end - self.start) as usize).min(self.data.len());
        &self.data[from..to]
    }
}

impl LogReader {
    /// A reader over `file`; with `map`, segments are read through maps when the file system
    /// can map (never during recovery).
    pub fn new(file: Arc<dyn StorageFile>, layout: Layout, map: bool) -> LogReader {
        LogReader {
            file,
            layout,
            maps: RwLock::new(Vec::new()),
            can_map: AtomicBool::new(map),
            gaps: parking_lot::Mutex::new(Default::default()),
            rewrites: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Where the rewrite sequence stands: take it before reading a frame and check it with
    /// [`stable_since`](Self::stable_since) after looking at the frame's fields.
    pub fn rewrite_epoch(&self) -> u64 {
        self.rewrites.load(Ordering::Acquire)
    }

    /// Whether no rewrite ran (or began) since `epoch` was taken: the bytes read in between
    /// were not changing under the reader.
    pub fn stable_since(&self, epoch: u64) -> bool {
        std::sync::atomic::fence(Ordering::Acquire);
        epoch.is_multiple_of(2) && self.rewrites.load(Ordering::Relaxed) == epoch
    }

    /// Runs `rewrite` (writes into frames below the end) inside the rewrite sequence.
    pub fn rewriting<T>(&self, rewrite: impl FnOnce() -> T) -> T {
        self.rewrites.fetch_add(1, Ordering::AcqRel);
        let result = rewrite();
        self.rewrites.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// Takes the maps of `segments` out of use: later reads map them again. Returns the old
    /// maps, for [`wait_released`](Self::wait_released).
    pub fn retire_maps(&self, segments: &[u64]) -> Vec<Arc<MmapRaw>> {
        let mut maps = self.maps.write();
        segments
            .iter()
            .filter_map(|s| maps.get_mut(*s as usize).and_then(Option::take))
            .collect()
    }

    /// Waits until nothing made from `maps` is alive any more (no reader's view, no event's
    /// bytes), or `timeout` passes; returns whether they were released.
    pub fn wait_released(maps: &[Arc<MmapRaw>], timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if maps.iter().all(|m| Arc::strong_count(m) == 1) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Records gaps made by this process (a scavenge or an erasure), before they are written.
    pub fn learn_gap(&self, start: u64, end: u64) {
        let mut gaps = self.gaps.lock();
        // A new gap may swallow older ones.
        let inside: Vec<u64> = gaps.range(start..end).map(|(s, _)| *s).collect();
        for s in inside {
            gaps.remove(&s);
        }
        gaps.insert(start, end);
    }

    /// What is at `position`: a frame, or the gap it lies in. A position that is neither (bytes
    /// that are no frame, outside every gap) is corruption.
    pub fn resolve(&self, position: u64, limit: u64, cursor: &mut Cursor) -> Result<Found> {
        match self.try_read(position, limit, cursor)? {
            Ok((_, header)) if matches!(header.body, Body::Gap { .. }) => Ok(Found::Gap {
                end: header.next(),
                header,
            }),
            Ok((bytes, frame)) => Ok(Found::Frame(bytes, frame)),
            Err(e) => match self.gap_around(position, limit)? {
                Some((_, end, header)) => Ok(Found::Gap { end, header }),
                None => Err(Error::corrupt(position, e.to_string())),
            },
        }
    }

    /// The gap holding `position`, if there is one: from the gaps known, else by walking the
    /// frames of `position`'s segment from its start (and remembering the gaps met).
    fn gap_around(&self, position: u64, limit: u64) -> Result<Option<(u64, u64, Frame)>> {
        let segment = self.layout.segment_of(position);
        let header = |start: u64| -> Result<Option<Frame>> {
            Ok(self
                .try_read(start, limit, &mut Cursor::default())?
                .ok()
                .map(|(_, f)| f)
                .filter(|f| matches!(f.body, Body::Gap { .. })))
        };
        let known = |gaps: &std::collections::BTreeMap<u64, u64>| {
            gaps.range(..=position)
                .next_back()
                .filter(|(_, end)| position < **end)
                .map(|(s, e)| (*s, *e))
        };
        let hit = known(&self.gaps.lock());
        if let Some((start, end)) = hit
            && let Some(f) = header(start)?
            && f.next() == end
        {
            return Ok(Some((start, end, f)));
        }
        // Unknown, or known wrongly (a later scavenge merged gaps, or another process made
        // new ones): walk the segment again.
        // Walk the segment's chain of frames (every frame and gap header is intact).
        let mut at = self.layout.segment_start(segment);
        let mut cursor = Cursor::default();
        let mut found = Vec::new();
        let mut result = None;
        while at < limit.min(self.layout.segment_end(at)) {
            let Ok((_, f)) = self.try_read(at, limit, &mut cursor)? else {
                break;
            };
            let next = f.next();
            if let Body::Gap { .. } = f.body {
                found.push((at, next));
                if (at..next).contains(&position) {
                    result = Some((at, next, f));
                }
            }
            if matches!(f.body, Body::Seal { .. }) || next <= at {
                break;
            }
            at = next;
        }
        let mut gaps = self.gaps.lock();
        let (from, to) = (
            self.layout.segment_start(segment),
            self.layout.segment_start(segment + 1),
        );
        let stale: Vec<u64> = gaps.range(from..to).map(|(s, _)| *s).collect();
        for s in stale {
            gaps.remove(&s);
        }
        gaps.extend(found);
        Ok(result)
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    fn segment_map(&self, segment: u64) -> Result<Option<Arc<MmapRaw>>> {
        let index = segment as usize;
        if let Some(Some(map)) = self.maps.read().get(index) {
            return Ok(Some(map.clone()));
        }
        let start = self.layout.segment_start(segment);
        let Some(map) = self.file.map(start, self.layout.segment_size as usize)? else {
            self.can_map.store(false, Ordering::Relaxed);
            return Ok(None);
        };
        let mut maps = self.maps.write();
        if maps.len() <= index {
            maps.resize(index + 1, None);
        }
        Ok(Some(
            maps[index].get_or_insert_with(|| Arc::new(map)).clone(),
        ))
    }

    /// Makes the cursor's view cover `position`'s segment up to `limit` (or its end), if maps
    /// are in use; returns the view and the segment's start.
    fn view<'c>(
        &self,
        position: u64,
        limit: u64,
        cursor: &'c mut Cursor,
    ) -> Result<Option<(&'c Bytes, u64)>> {
        if !self.can_map.load(Ordering::Relaxed) {
            return Ok(None);
        }
        // Fast path: the cursor's view already covers the position (no division).
        let size = self.layout.segment_size;
        let covered = cursor.view.as_ref().is_some_and(|(seg_start, view)| {
            (*seg_start..seg_start + size).contains(&position)
                && view.len() as u64 >= limit.min(seg_start + size) - seg_start
        });
        if !covered {
            self.remap(position, limit, cursor)?;
        }
        Ok(cursor.view.as_ref().map(|(start, v)| (v, *start)))
    }

    fn remap(&self, position: u64, limit: u64, cursor: &mut Cursor) -> Result<()> {
        let segment = self.layout.segment_of(position);
        let seg_start = self.layout.segment_start(segment);
        let need = (limit.min(seg_start + self.layout.segment_size) - seg_start) as usize;
        cursor.view = self
            .segment_map(segment)?
            .map(|map| (seg_start, Bytes::from_owner(View { map, len: need })));
        Ok(())
    }

    /// Reads and checks the frame at `position`. `limit` is the end of the data the caller may
    /// see (the committed end); the frame must end at or before it and inside its segment.
    /// Returns the frame's exact bytes and its decoded form.
    pub fn read(&self, position: u64, limit: u64, cursor: &mut Cursor) -> Result<(Bytes, Frame)> {
        if position >= limit {
            return Err(Error::corrupt(position, "read past the end of the log"));
        }
        self.try_read(position, limit, cursor)?
            .map_err(|e| Error::corrupt(position, e.to_string()))
    }

    /// Like [`read`](Self::read), but a frame that fails its checks is returned as the inner
    /// error (only I/O errors are outer errors). Recovery needs to tell them apart.
    pub fn try_read(
        &self,
        position: u64,
        limit: u64,
        cursor: &mut Cursor,
    ) -> Result<Result<(Bytes, Frame), FrameError>> {
        if position >= limit {
            return Ok(Err(FrameError::Truncated));
        }
        if position < Layout::FIRST {
            return Ok(Err(FrameError::BadPosition(position)));
        }
        if let Some((view, seg_start)) = self.view(position, limit, cursor)? {
            // The view ends at `limit` or at the segment's end, whichever comes first.
            let from = (position - seg_start) as usize;
            return Ok(decode_frame(&view[from..], position, self.layout.key)
                .and_then(|frame| self.in_segment(position, frame))
                .map(|frame| (view.slice(from..from + checked_len(&frame)), frame)));
        }
        let end = limit.min(self.layout.segment_end(position));
        let header = FRAME_HEADER_LEN as u64;
        if !cursor.covers(position, header.min(end - position)) {
            cursor.fill(&*self.file, position, end, header)?;
        }
        let head = cursor.bytes(position, end).get(..FRAME_HEADER_LEN);
        let want = if head.is_some_and(peek_gap) {
            GAP_HEADER_LEN
        } else {
            head.and_then(peek_len).map_or(0, u64::from)
        };
        if want <= end - position && !cursor.covers(position, want) {
            cursor.fill(&*self.file, position, end, want)?;
        }
        let from = (position - cursor.start) as usize;
        Ok(
            decode_frame(cursor.bytes(position, end), position, self.layout.key)
                .and_then(|frame| self.in_segment(position, frame))
                .map(|frame| (cursor.data.slice(from..from + checked_len(&frame)), frame)),
        )
    }

    /// A gap's length is checked here: its bytes past the header are not read.
    #[inline]
    fn in_segment(&self, position: u64, frame: Frame) -> std::result::Result<Frame, FrameError> {
        match frame.body {
            Body::Gap { .. }
                if position + u64::from(frame.len) > self.layout.usable_end(position) =>
            {
                Err(FrameError::BadLength(frame.len))
            }
            _ => Ok(frame),
        }
    }

    /// Reads and checks the frame at `position` like [`read`](Self::read), without handing out
    /// its bytes: get them from the cursor with [`frame_bytes`](Self::frame_bytes), borrowed.
    #[inline]
    pub fn check(&self, position: u64, limit: u64, cursor: &mut Cursor) -> Result<Frame> {
        if position >= limit {
            return Err(Error::corrupt(position, "read past the end of the log"));
        }
        let checked = if let Some((view, seg_start)) = self.view(position, limit, cursor)? {
            decode_frame(
                &view[(position - seg_start) as usize..],
                position,
                self.layout.key,
            )
            .and_then(|frame| self.in_segment(position, frame))
        } else {
            self.try_read(position, limit, cursor)?
                .map(|(_, frame)| frame)
        };
        checked.map_err(|e| Error::corrupt(position, e.to_string()))
    }

    /// The bytes of the frame at `position`, `len` long, that [`check`](Self::check) just
    /// checked with this cursor.
    pub fn frame_bytes<'c>(&self, cursor: &'c Cursor, position: u64, len: u32) -> &'c [u8] {
        let len = len as usize;
        if let Some((seg_start, view)) = &cursor.view
            && position >= *seg_start
            && ((position - seg_start) as usize + len) <= view.len()
        {
            let from = (position - seg_start) as usize;
            return &view[from..from + len];
        }
        let from = (position - cursor.start) as usize;
        &cursor.data[from..from + len]
    }

    /// The same bytes as [`frame_bytes`](Self::frame_bytes), shared (no copy).
    pub fn frame_shared(&self, cursor: &Cursor, position: u64, len: u32) -> Bytes {
        let len = len as usize;
        if let Some((seg_start, view)) = &cursor.view
            && position >= *seg_start
            && ((position - seg_start) as usize + len) <= view.len()
        {
            let from = (position - seg_start) as usize;
            return view.slice(from..from + len);
        }
        let from = (position - cursor.start) as usize;
        cursor.data.slice(from..from + len)
    }

    pub fn file(&self) -> &Arc<dyn StorageFile> {
        &self.file
    }
}

/// How many bytes of a checked frame are its own: all of them, or a gap's header and body.
fn checked_len(frame: &Frame) -> usize {
    match frame.body {
        Body::Gap { .. } => GAP_HEADER_LEN as usize,
        _ => frame.len as usize,
    }
}
