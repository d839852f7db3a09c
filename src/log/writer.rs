//! Staging commits into frames, sealing full segments, writing and syncing.
//!
//! The writer is used by one thread at a time (the group-commit leader). A group of commits is
//! *staged* into one buffer (usually one contiguous region; two when a segment fills up), then
//! written with one positioned write per region, then synced once.
//!
//! Before a segment is sealed the next one is allocated and its size made durable, so a seal in
//! the log always points at space that exists.
//!
//! On file systems that ask for it ([`StorageFile::zero_fill_ahead`]), the segment after the
//! current one is prepared in the background: allocated, filled with written zeros and synced.
//! Syncing data written over zeros costs no file-system metadata (a write into freshly
//! allocated space must also record that the space now holds data), which makes large durable
//! commits markedly faster. The writer never writes into a segment before its preparation has
//! finished.

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
    /// The background preparation of the next segment, if one is under way or finished.
    prepared: Option<Preparation>,
}

#[derive(Debug)]
struct Preparation {
    segment: u64,
    done: std::thread::JoinHandle<io::Result<()>>,
}

/// Allocates, zero-fills and syncs `[start, start + len)`.
fn zero_fill(file: &dyn StorageFile, start: u64, len: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    file.allocate(start, len)?;
    let zeros = vec![0u8; CHUNK as usize];
    let mut at = start;
    while at < start + len {
        let n = (start + len - at).min(CHUNK);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    file.sync_all()
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
            prepared: None,
        }
    }

    /// Starts preparing the segment after the current one in the background, if the file
    /// system wants it, the current segment is half full, and the next one is not allocated.
    pub fn prepare_next(&mut self) {
        if self.prepared.is_some() || !self.file.zero_fill_ahead() {
            return;
        }
        let next = self.layout.segment_of(self.end) + 1;
        let start = self.layout.segment_start(next);
        let half_full = start - self.end <= self.layout.segment_size / 2;
        if !half_full || self.allocated_end > start {
            return;
        }
        let file = self.file.clone();
        let len = self.layout.segment_size;
        let spawned = std::thread::Builder::new()
            .name("annals-prepare".into())
            .spawn(move || zero_fill(&*file, start, len));
        if let Ok(done) = spawned {
            self.prepared = Some(Preparation {
                segment: next,
                done,
            });
        }
    }

    /// Waits for a background preparation to finish; records the space if it succeeded.
    fn finish_preparation(&mut self) {
        if let Some(p) = self.prepared.take()
            && let Ok(Ok(())) = p.done.join()
        {
            let end = self.layout.segment_start(p.segment + 1);
            self.allocated_end = self.allocated_end.max(end);
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
        self.finish_preparation();
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

    /// Stages consecutive frames (one stream's part of a commit), pushing each frame's position
    /// onto `positions`. The last frame gets the commit end flag if `ends_commit`. [`reserve`](Self::reserve) must have made room for the whole
    /// commit first.
    pub fn stage_frames<'a>(
        &mut self,
        events: impl ExactSizeIterator<Item = EventRecord<'a>>,
        ends_commit: bool,
        positions: &mut Vec<u64>,
    ) -> Staged {
        let count = events.len();
        assert!(count > 0, "a part has at least one event");
        let first = self.end;
        for (i, event) in events.enumerate() {
            let link = self.link(ends_commit && i + 1 == count);
            positions.push(self.end);
            self.stage(|buf| encode_event(buf, link, &event));
        }
        assert!(
            self.end <= self.layout.usable_end(first),
            "commit overran its segment"
        );
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

    /// Writes everything staged, one positioned write per region; with `durable`, each write
    /// is durable when this returns.
    pub fn write_staged(&mut self, durable: bool) -> io::Result<()> {
        let result = self
            .regions
            .iter()
            .filter(|(_, r)| !r.is_empty())
            .try_for_each(|(pos, r)| {
                let bytes = &self.buf[r.clone()];
                if durable {
                    self.file.write_all_at_durable(bytes, *pos)
                } else {
                    self.file.write_all_at(bytes, *pos)
                }
            });
        self.buf.clear();
        self.regions.clear();
        if result.is_ok() {
            self.prepare_next();
        }
        result
    }

    /// Waits for background work (call before the store is closed).
    pub fn quiesce(&mut self) {
        self.finish_preparation();
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // A preparation must not write into the file once the store is closed.
        self.finish_preparation();
    }
}
