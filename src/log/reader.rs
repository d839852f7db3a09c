//! Reading checked frames at positions.
//!
//! Sealed segments (complete, never written again) are mapped into memory when the file system
//! can map, and frames are sliced out of the map without copying. The growing segment (and
//! everything, on file systems that cannot map) is read with positioned reads through a
//! [`Cursor`]: a chunk that grows while reads stay sequential, so scanning costs one read per
//! chunk and a random lookup reads only a few KiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use super::Layout;
use super::format::{FRAME_HEADER_LEN, Frame, FrameError, decode_frame, peek_len};
use crate::error::{Error, Result};
use crate::storage::StorageFile;

const FIRST_CHUNK: usize = 8 * 1024;
const MAX_CHUNK: usize = 1024 * 1024;

/// Reads frames of one log file. Shared by all readers and the writer.
#[derive(Debug)]
pub(crate) struct LogReader {
    file: Arc<dyn StorageFile>,
    layout: Layout,
    /// Segments with an index below this are sealed.
    sealed: AtomicU64,
    maps: RwLock<Vec<Option<Bytes>>>,
    can_map: AtomicBool,
}

/// Per-reader read buffer for unmapped segments.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    start: u64,
    data: Bytes,
    next_len: usize,
}

impl Cursor {
    fn covers(&self, position: u64, len: u64) -> bool {
        position >= self.start && position + len <= self.start + self.data.len() as u64
    }

    fn fill(&mut self, file: &dyn StorageFile, position: u64, end: u64, at_least: u64) -> Result<()> {
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

    fn slice(&self, position: u64, end: u64) -> Bytes {
        let from = (position - self.start) as usize;
        let to = ((end - self.start) as usize).min(self.data.len());
        self.data.slice(from..to)
    }
}

impl LogReader {
    pub fn new(file: Arc<dyn StorageFile>, layout: Layout, sealed: u64) -> LogReader {
        LogReader {
            file,
            layout,
            sealed: AtomicU64::new(sealed),
            maps: RwLock::new(Vec::new()),
            can_map: AtomicBool::new(true),
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Records that every segment below `count` is sealed (call once the seal is durable).
    pub fn set_sealed(&self, count: u64) {
        self.sealed.fetch_max(count, Ordering::Release);
    }

    fn mapped(&self, segment: u64) -> Result<Option<Bytes>> {
        if segment >= self.sealed.load(Ordering::Acquire) || !self.can_map.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let index = segment as usize;
        if let Some(Some(map)) = self.maps.read().get(index) {
            return Ok(Some(map.clone()));
        }
        let start = self.layout.segment_start(segment);
        let map = match self.file.map(start, self.layout.segment_size as usize)? {
            Some(map) => map,
            None => {
                self.can_map.store(false, Ordering::Relaxed);
                return Ok(None);
            }
        };
        let mut maps = self.maps.write();
        if maps.len() <= index {
            maps.resize(index + 1, None);
        }
        Ok(Some(maps[index].get_or_insert(map).clone()))
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
        let seg_end = self.layout.segment_end(position);
        let end = limit.min(seg_end);
        if position >= end {
            return Ok(Err(FrameError::Truncated));
        }
        let bytes = match self.mapped(self.layout.segment_of(position))? {
            Some(map) => {
                let seg_start = seg_end - self.layout.segment_size;
                map.slice((position - seg_start) as usize..(end - seg_start) as usize)
            }
            None => {
                let header = FRAME_HEADER_LEN as u64;
                if !cursor.covers(position, header.min(end - position)) {
                    cursor.fill(&*self.file, position, end, header)?;
                }
                let want = cursor
                    .slice(position, end)
                    .get(..FRAME_HEADER_LEN)
                    .and_then(peek_len)
                    .map_or(0, u64::from);
                if want <= end - position && !cursor.covers(position, want) {
                    cursor.fill(&*self.file, position, end, want)?;
                }
                cursor.slice(position, end)
            }
        };
        Ok(decode_frame(&bytes, position).map(|frame| (bytes.slice(..frame.len as usize), frame)))
    }

    pub fn file(&self) -> &Arc<dyn StorageFile> {
        &self.file
    }
}
