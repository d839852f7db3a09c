//! Staging commits into frames, sealing full segments, writing and syncing.
//!
//! The writer is used by one thread at a time (the group-commit leader). A group of commits is
//! *staged* into one buffer (usually one contiguous region; two when a segment fills up), then
//! written with one positioned write per region, then synced once.
//!
//! Before a segment is sealed the next one is allocated and its size made durable, so a seal in
//! the log always points at space that exists.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Layout;
use super::format::{EventRecord, FrameLink, encode_event, encode_seal};
use crate::error::{Error, Result};

use crate::storage::StorageFile;

/// State of the log end as the writer sees it.
#[derive(Debug)]
pub(crate) struct LogWriter {
    file: Arc<dyn StorageFile>,
    layout: Layout,
    /// Where the next frame goes.
    end: u64,
    /// Position of the last frame staged or written.
    last_frame: Option<u64>,
    /// End of the space reserved in the file.
    allocated_end: u64,
    /// End of the data known durable; shared with a background syncer.
    durable: Arc<AtomicU64>,
    buf: Vec<u8>,
    /// Regions of `buf` to write: (file position, range in `buf`).
    regions: Vec<(u64, Range<usize>)>,
}

/// Why [`LogWriter::reserve`] failed.
#[derive(Debug)]
pub(crate) enum ReserveError {
    /// The commit cannot be written (too large, no space); nothing changed.
    Refused(Error),
    /// A sync failed: the writer must be poisoned.
    Fatal(io::Error),
}

/// Where a staged commit's frames went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Staged {
    /// Position of the first frame.
    pub first: u64,
    /// Position of the last frame.
    pub last: u64,
    /// Position just after the last frame.
    pub end: u64,
}

impl LogWriter {
    pub fn new(
        file: Arc<dyn StorageFile>,
        layout: Layout,
        end: u64,
        last_frame: Option<u64>,
        allocated_end: u64,
    ) -> LogWriter {
        LogWriter {
            file,
            layout,
            end,
            last_frame,
            allocated_end,
            durable: Arc::new(AtomicU64::new(end)),
            buf: Vec::with_capacity(1 << 16),
            regions: Vec::new(),
        }
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn last_frame(&self) -> Option<u64> {
        self.last_frame
    }

    pub fn durable(&self) -> &Arc<AtomicU64> {
        &self.durable
    }

    fn link(&self, commit_end: bool) -> FrameLink {
        let position = self.end;
        FrameLink {
            position,
            durable: self.durable.load(Ordering::Acquire).min(position),
            prev: self.last_frame.map_or(0, |last| (position - last) as u32),
            commit_end,
        }
    }

    /// Makes room for a commit of `len` bytes (the sum of its frame lengths): seals the current
    /// segment and moves to the next one if it does not fit. Nothing is staged on error.
    pub fn reserve(&mut self, len: u64) -> Result<(), ReserveError> {
        if len > self.layout.max_commit_len() {
            return Err(ReserveError::Refused(Error::TooLarge {
                what: "commit",
                size: len,
                limit: self.layout.max_commit_len(),
            }));
        }
        if self.end + len <= self.layout.usable_end(self.end) {
            return Ok(());
        }
        let segment = self.layout.segment_of(self.end);
        let next = self.layout.segment_start(segment + 1);
        let next_end = next + self.layout.segment_size;
        if self.allocated_end < next_end {
            // Nothing is written yet: a failed allocation (a full disk) is an ordinary error.
            self.file
                .allocate(next, self.layout.segment_size)
                .map_err(|e| ReserveError::Refused(e.into()))?;
            // A failed sync is not: what it left on disk is for recovery to judge.
            self.file.sync_all().map_err(ReserveError::Fatal)?;
            self.allocated_end = next_end;
        }
        let link = self.link(true);
        self.stage(|buf| encode_seal(buf, link, next));
        self.regions.push((next, self.buf.len()..self.buf.len()));
        self.end = next;
        Ok(())
    }

    /// Stages consecutive frames (one stream's part of a commit). The last frame gets the commit
    /// end flag if `ends_commit`. [`reserve`](Self::reserve) must have made room for the whole
    /// commit first.
    pub fn stage_frames<'a>(
        &mut self,
        events: impl ExactSizeIterator<Item = EventRecord<'a>>,
        ends_commit: bool,
    ) -> Staged {
        let count = events.len();
        assert!(count > 0, "a part has at least one event");
        let first = self.end;
        for (i, event) in events.enumerate() {
            let link = self.link(ends_commit && i + 1 == count);
            self.stage(|buf| encode_event(buf, link, &event));
        }
        assert!(self.end <= self.layout.usable_end(first), "commit overran its segment");
        Staged {
            first,
            last: self.last_frame.expect("staged at least one frame"),
            end: self.end,
        }
    }

    fn stage(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> u64) {
        if self.regions.is_empty() {
            self.regions.push((self.end, 0..0));
        }
        let len = encode(&mut self.buf);
        let region = self.regions.last_mut().expect("a region");
        region.1.end = self.buf.len();
        debug_assert_eq!(region.0 + (region.1.len() as u64), self.end + len);
        self.last_frame = Some(self.end);
        self.end += len;
    }

    /// Writes everything staged, one positioned write per region.
    pub fn write_staged(&mut self) -> io::Result<()> {
        let result = self
            .regions
            .iter()
            .filter(|(_, r)| !r.is_empty())
            .try_for_each(|(pos, r)| self.file.write_all_at(&self.buf[r.clone()], *pos));
        self.buf.clear();
        self.regions.clear();
        result
    }

    /// `fdatasync`s the file; everything written so far becomes durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.durable.fetch_max(self.end, Ordering::AcqRel);
        Ok(())
    }
}
