//! Staging commits into frames, sealing full segments, writing and syncing.
//!
//! The writer is used by one thread at a time (the group-commit leader). A group of commits is
//! *staged* into one buffer of consecutive frames, then written with one positioned write (and,
//! for durable appends, synced by the same call).
//!
//! **Segment changes.** When a commit does not fit in the current segment, the next segment's
//! space is allocated and that allocation made durable first; then the seal is staged, and
//! everything staged so far (earlier commits of the group and the seal) is written and synced
//! *before* anything is staged in the new segment. So every frame of the new segment records a
//! durable end at or past the seal, and damage to a seal can never be taken for a torn write
//! (which would silently drop the acknowledged commit that opened the next segment); and a seal
//! never points at space that a crash could take away. This costs one sync per segment.
//!
//! **Preparation.** The writer only writes into *prepared* space: allocated in the file, that
//! allocation made durable, and (on file systems that ask for it,
//! [`StorageFile::zero_fill_ahead`]) filled with written zeros and synced. Syncing data written
//! over zeros costs the file system no metadata, where a write into space that was only
//! reserved must also record that the space now holds data, which makes durable commits
//! markedly slower. The log grows in chunks ([`chunk_end`]): the first is [`FIRST_CHUNK`], each
//! next one makes the file twice the log, up to the end of the segment; so a new store takes a
//! few hundred KiB, a store keeps within about twice its contents, and a large store prepares
//! whole segments. The next chunk is prepared in the background once the room left is less than
//! half the log (at most half a segment); a commit that finds no prepared room waits for that
//! preparation, or prepares its chunk itself. The preparation syncs through the log's [`LogSync`], so a failure it meets
//! poisons the store like any other.
//!
//! A crash can cut a preparation short, leaving space that is allocated but not zero-filled.
//! So after an unclean shutdown only the log's last 4 KiB block counts as prepared
//! ([`prepared_after_open`]) and the rest is prepared again; a clean close records how far the
//! log was prepared, and the next open trusts that.

use std::sync::Arc;

use super::Layout;
use super::format::{
    EventRecord, FrameLink, SEAL_FRAME_LEN, SEGMENT_ALIGN, encode_event, encode_seal,
};
use super::sync::LogSync;
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
    /// End of the prepared space (see the module docs): frames are written only before it.
    prepared_end: u64,
    sync: Arc<LogSync>,
    /// Staged frames, to be written at `buf_at`.
    buf: Vec<u8>,
    buf_at: u64,
    /// The background preparation of the next segment, if one is under way or finished.
    prepared: Option<Preparation>,
}

#[derive(Debug)]
struct Preparation {
    /// End of the space being prepared.
    end: u64,
    done: std::thread::JoinHandle<Result<(), ReserveError>>,
}

/// The first chunk of a new log.
pub(crate) const FIRST_CHUNK: u64 = 256 * 1024;

/// Where the chunk that starts at `from` ends, for a log that ends at `end`: the file reaches
/// twice the log (at least [`FIRST_CHUNK`] past `from`), at least `need`, ends on a 4 KiB
/// boundary and stays within `from`'s segment (a chunk that starts at a segment boundary lies
/// in the segment that starts there).
pub(crate) fn chunk_end(layout: Layout, from: u64, need: u64, end: u64) -> u64 {
    let double = Layout::FIRST.saturating_add(end.saturating_sub(Layout::FIRST).saturating_mul(2));
    double
        .max(from.saturating_add(FIRST_CHUNK))
        .max(need)
        .next_multiple_of(SEGMENT_ALIGN)
        .min(layout.segment_end(from))
}

/// How far a log ending at `end` counts as prepared when it is opened: what a clean close
/// recorded (`recorded`, if it covers `end` and the file holds it), else only the 4 KiB block
/// that holds the end (a crash may have cut a preparation short after it).
pub(crate) fn prepared_after_open(end: u64, file_len: u64, recorded: Option<u64>) -> u64 {
    let block = end.next_multiple_of(SEGMENT_ALIGN);
    match recorded {
        Some(p) if p >= block && p <= file_len && p.is_multiple_of(SEGMENT_ALIGN) => p,
        _ => block.min(file_len).max(end),
    }
}

/// Prepares `[start, end)`: allocates it, fills it with written zeros if the file system asks
/// for it, and syncs. A failed allocation or write (a full disk) refuses the commit that needed
/// the space; nothing of the log changed. A failed sync poisons the store.
fn prepare(
    file: &dyn StorageFile,
    sync: &LogSync,
    start: u64,
    end: u64,
) -> Result<(), ReserveError> {
    const CHUNK: u64 = 1 << 20;
    assert!(start.is_multiple_of(SEGMENT_ALIGN) && end.is_multiple_of(SEGMENT_ALIGN));
    sync.poison().check().map_err(ReserveError::Fatal)?;
    let refused = |e: std::io::Error| ReserveError::Refused(e.into());
    file.allocate(start, end - start).map_err(refused)?;
    if file.zero_fill_ahead() {
        let zeros = vec![0u8; CHUNK.min(end - start) as usize];
        let mut at = start;
        while at < end {
            let n = (end - at).min(CHUNK);
            file.write_all_at(&zeros[..n as usize], at)
                .map_err(refused)?;
            at += n;
        }
    }
    // Through the log's syncer: on Linux this sync may be the one that reports a failed
    // write-back of the log's own pages.
    sync.sync(0, true).map_err(ReserveError::Fatal)
}

/// Why [`LogWriter::reserve`] failed.
#[derive(Debug)]
pub(crate) enum ReserveError {
    /// The commit cannot be written (too large, no space); nothing changed.
    Refused(Error),
    /// A write or sync failed: the store is poisoned.
    Fatal(Error),
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
        prepared_end: u64,
        sync: Arc<LogSync>,
    ) -> LogWriter {
        assert!(end >= Layout::FIRST && end <= prepared_end);
        LogWriter {
            file,
            layout,
            end,
            last_frame,
            prepared_end,
            sync,
            buf: Vec::with_capacity(1 << 16),
            buf_at: end,
            prepared: None,
        }
    }

    /// Starts preparing the next chunk in the background, if the file system wants it, none is
    /// under way, and the prepared room left is less than half the log (at most half a
    /// segment).
    pub fn prepare_next(&mut self) {
        if self.prepared.is_some() || !self.file.zero_fill_ahead() {
            return;
        }
        let left = self.prepared_end - self.end;
        let half_log = (self.end - Layout::FIRST).max(FIRST_CHUNK) / 2;
        if left >= half_log.min(self.layout.segment_size / 2) {
            return;
        }
        let start = self.prepared_end;
        let end = chunk_end(self.layout, start, start, self.end);
        let (file, sync) = (self.file.clone(), self.sync.clone());
        let spawned = std::thread::Builder::new()
            .name("annals-prepare".into())
            .spawn(move || prepare(&*file, &sync, start, end));
        if let Ok(done) = spawned {
            self.prepared = Some(Preparation { end, done });
        }
    }

    /// Waits for a background preparation to finish; records the space if it succeeded.
    fn finish_preparation(&mut self) {
        if let Some(p) = self.prepared.take()
            && let Ok(Ok(())) = p.done.join()
        {
            self.prepared_end = self.prepared_end.max(p.end);
        }
    }

    /// Makes sure `[end, need)` is prepared: waits for the background preparation, then
    /// prepares the chunk that covers `need` if it still is not.
    fn prepare_to(&mut self, need: u64) -> Result<(), ReserveError> {
        if need <= self.prepared_end {
            return Ok(());
        }
        self.finish_preparation();
        if need <= self.prepared_end {
            return Ok(());
        }
        let start = self.prepared_end;
        let end = chunk_end(self.layout, start, need, self.end);
        prepare(&*self.file, &self.sync, start, end)?;
        self.prepared_end = end;
        Ok(())
    }

    /// How far the log is prepared, once background work is done (what a clean close records).
    pub fn prepared_end(&mut self) -> u64 {
        self.finish_preparation();
        self.prepared_end
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn last_frame(&self) -> Option<u64> {
        self.last_frame
    }

    fn link(&self, commit_end: bool) -> FrameLink {
        let position = self.end;
        let prev = self.last_frame.map_or(0, |last| position - last);
        assert!(
            prev <= self.layout.segment_size,
            "a frame links back within a segment"
        );
        FrameLink {
            position,
            durable: self.sync.durable().min(position),
            prev: prev as u32,
            commit_end,
        }
    }

    /// Makes room for a commit of `len` bytes (the sum of its frame lengths): seals the current
    /// segment and moves to the next one if it does not fit (see the module docs). Nothing of
    /// the commit is staged on error.
    pub fn reserve(&mut self, len: u64) -> Result<(), ReserveError> {
        if len > self.layout.max_commit_len() {
            return Err(ReserveError::Refused(Error::TooLarge {
                what: "commit",
                size: len,
                limit: self.layout.max_commit_len(),
            }));
        }
        // The prepared space always reaches past the end by room for a seal: the log never
        // ends the file (recovery reads a file that does as cut short from outside).
        if self.end + len <= self.layout.usable_end(self.end) {
            return self.prepare_to(self.end + len + SEAL_FRAME_LEN);
        }
        let segment = self.layout.segment_of(self.end);
        let next = self.layout.segment_start(segment + 1);
        self.finish_preparation();
        if self.prepared_end < next {
            // The rest of this segment holds only the seal: reserved, not zero-filled. Nothing
            // is written yet, so a failed allocation (a full disk) is an ordinary error.
            self.file
                .allocate(self.prepared_end, next - self.prepared_end)
                .map_err(|e| ReserveError::Refused(e.into()))?;
            self.prepared_end = next;
        }
        // The next segment's first chunk (and the allocation above) is durable before a seal
        // points at it. (A failed sync is fatal: what it left on disk is for recovery to judge.)
        self.prepare_to(next + len + SEAL_FRAME_LEN)?;
        debug_assert!(self.end + SEAL_FRAME_LEN <= next);
        let link = self.link(true);
        let key = self.layout.key;
        self.stage(|buf| encode_seal(buf, link, key, next));
        // The seal (and whatever the group staged before it) is durable before anything is
        // staged in the new segment: the new segment's frames record it so.
        let write = self.sync.write_durable(&self.buf, self.buf_at, next);
        self.buf.clear();
        write.map_err(ReserveError::Fatal)?;
        self.end = next;
        self.buf_at = next;
        Ok(())
    }

    /// Stages consecutive frames (one stream's part of a commit), pushing each frame's position
    /// onto `positions`. The last frame gets the commit end flag if `ends_commit`.
    /// [`reserve`](Self::reserve) must have made room for the whole commit first.
    pub fn stage_frames<'a>(
        &mut self,
        events: impl ExactSizeIterator<Item = EventRecord<'a>>,
        ends_commit: bool,
        positions: &mut Vec<u64>,
    ) -> Staged {
        let count = events.len();
        assert!(count > 0, "a part has at least one event");
        let first = self.end;
        let key = self.layout.key;
        for (i, event) in events.enumerate() {
            let link = self.link(ends_commit && i + 1 == count);
            positions.push(self.end);
            self.stage(|buf| encode_event(buf, link, key, &event));
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
        let len = encode(&mut self.buf);
        // Right before writing: the staged bytes end exactly where the log's end says, inside
        // reserved space.
        assert_eq!(self.buf_at + self.buf.len() as u64, self.end + len);
        assert!(
            self.end + len <= self.prepared_end,
            "frame beyond the prepared space"
        );
        self.last_frame = Some(self.end);
        self.end += len;
    }

    /// Writes everything staged with one positioned write; with `durable`, the same call makes
    /// it durable. A failure poisons the store.
    pub fn write_staged(&mut self, durable: bool) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = if durable {
            self.sync.write_durable(&self.buf, self.buf_at, self.end)
        } else {
            self.sync.write(&self.buf, self.buf_at)
        };
        self.buf.clear();
        self.buf_at = self.end;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::{Body, FileHeader, HEADER_LEN, PayloadEncoding, decode_frame};
    use crate::log::sync::Poison;
    use crate::storage::{CrashPolicy, FaultFs, FaultMode, FileSystem, OpenMode};
    use std::path::Path;

    const SEG: u64 = 64 * 1024;
    const KEY: u64 = 99;

    fn setup(fs: &FaultFs) -> (Arc<dyn StorageFile>, LogWriter, Arc<LogSync>) {
        let file = fs.open(Path::new("/w/log"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(Path::new("/w")).unwrap();
        let header = FileHeader {
            format_version: crate::log::format::FORMAT_VERSION,
            store_id: [1; 16],
            segment_size: SEG,
            created_at: 0,
            frame_key: KEY,
        };
        let mut block = vec![0u8; 4096];
        block[..HEADER_LEN].copy_from_slice(&header.encode());
        file.write_all_at(&block, 0).unwrap();
        file.allocate(4096, SEG).unwrap();
        file.sync_all().unwrap();
        let sync = Arc::new(LogSync::new(
            file.clone(),
            Layout::FIRST,
            Arc::new(Poison::default()),
        ));
        let layout = Layout {
            segment_size: SEG,
            key: KEY,
        };
        let w = LogWriter::new(
            file.clone(),
            layout,
            Layout::FIRST,
            None,
            4096 + SEG,
            sync.clone(),
        );
        (file, w, sync)
    }

    fn record(payload: &[u8]) -> EventRecord<'_> {
        EventRecord {
            stream: "s",
            version: 0,
            timestamp: 0,
            id: [7; 16],
            event_type: "E",
            schema_version: 0,
            correlation_id: None,
            causation_id: None,
            publish: false,
            encoding: PayloadEncoding::Raw,
            metadata: b"",
            payload,
        }
    }

    fn append(w: &mut LogWriter, payload: &[u8]) -> Staged {
        let r = record(payload);
        w.reserve(r.frame_len().unwrap()).unwrap();
        let staged = w.stage_frames([r].into_iter(), true, &mut Vec::new());
        w.write_staged(true).unwrap();
        staged
    }

    fn frame_at(file: &Arc<dyn StorageFile>, at: u64) -> crate::log::format::Frame {
        let mut buf = vec![0u8; 8192];
        let n = (file.len().unwrap() - at).min(8192) as usize;
        file.read_exact_at(&mut buf[..n], at).unwrap();
        decode_frame(&buf[..n], at, KEY).unwrap()
    }

    #[test]
    fn frames_chain_and_record_the_durable_end_before_their_group() {
        let fs = FaultFs::new();
        let (file, mut w, sync) = setup(&fs);
        let a = append(&mut w, b"a");
        let b = append(&mut w, b"b");
        assert_eq!(sync.durable(), b.end);
        let fa = frame_at(&file, a.first);
        let fb = frame_at(&file, b.first);
        assert_eq!((fa.link.prev, fa.link.durable), (0, Layout::FIRST));
        assert_eq!(fb.link.prev as u64, b.first - a.first);
        assert_eq!(
            fb.link.durable, a.end,
            "B claims what was durable before it"
        );
        assert!(fa.link.commit_end && fb.link.commit_end);
    }

    #[test]
    fn a_seal_is_durable_before_anything_lands_in_the_next_segment() {
        let fs = FaultFs::new();
        let (file, mut w, _) = setup(&fs);
        let payload = vec![1u8; 3000];
        let mut last = append(&mut w, &payload);
        while last.first < 4096 + SEG {
            last = append(&mut w, &payload);
        }
        let next = 4096 + SEG;
        assert_eq!(
            last.first, next,
            "the commit that did not fit opens the next segment"
        );
        let f = frame_at(&file, last.first);
        assert!(f.link.durable >= next, "it records the seal durable");
        // The seal is on disk even if nothing written after it survives.
        // The first frame of the new segment links back to the seal.
        let seal = last.first - u64::from(f.link.prev);
        assert!(seal < next);
        let crashed = fs.crash(CrashPolicy::DropUnsynced);
        let g = crashed
            .open(Path::new("/w/log"), OpenMode::Existing)
            .unwrap();
        let mut buf = vec![0u8; 64];
        g.read_exact_at(&mut buf, seal).unwrap();
        assert_eq!(
            decode_frame(&buf, seal, KEY).unwrap().body,
            Body::Seal { next }
        );
    }

    #[test]
    fn a_commit_larger_than_a_segment_is_refused_before_anything_is_staged() {
        let fs = FaultFs::new();
        let (_, mut w, _) = setup(&fs);
        let end = w.end();
        assert!(matches!(
            w.reserve(SEG),
            Err(ReserveError::Refused(Error::TooLarge { .. }))
        ));
        assert_eq!(w.end(), end);
        assert!(
            w.write_staged(true).is_ok(),
            "nothing staged, nothing written"
        );
    }

    #[test]
    fn a_failed_durable_write_poisons_and_moves_nothing() {
        let fs = FaultFs::new();
        let (_, mut w, sync) = setup(&fs);
        let a = append(&mut w, b"a");
        let r = record(b"b");
        w.reserve(r.frame_len().unwrap()).unwrap();
        w.stage_frames([r].into_iter(), true, &mut Vec::new());
        fs.fail_at(
            fs.op_count() + 1,
            FaultMode::Once,
            std::io::ErrorKind::Other,
        );
        assert!(w.write_staged(true).is_err());
        assert!(sync.poison().is_set());
        assert_eq!(sync.durable(), a.end);
    }

    #[test]
    fn chunks_start_small_double_the_log_and_stay_in_their_segment() {
        let layout = Layout {
            segment_size: 64 << 20,
            key: KEY,
        };
        let first = chunk_end(layout, Layout::FIRST, Layout::FIRST, Layout::FIRST);
        assert_eq!(first, Layout::FIRST + FIRST_CHUNK);
        // A log of 10 MiB: the file reaches twice it.
        let end = Layout::FIRST + (10 << 20);
        let next = chunk_end(layout, end + 4096, end, end);
        assert_eq!(next, Layout::FIRST + (20 << 20));
        // A commit that needs more gets it, on a 4 KiB boundary.
        let need = Layout::FIRST + (30 << 20) + 5;
        assert_eq!(
            chunk_end(layout, next, need, end),
            need.next_multiple_of(4096)
        );
        // Never past the segment; a chunk at a boundary lies in the next segment.
        let seg_end = layout.segment_end(Layout::FIRST);
        assert_eq!(chunk_end(layout, next, need, 1 << 40), seg_end);
        assert_eq!(
            chunk_end(layout, seg_end, seg_end, seg_end - 100),
            seg_end + (64 << 20)
        );
        assert_eq!(
            chunk_end(layout, seg_end, seg_end, Layout::FIRST + 100),
            seg_end + FIRST_CHUNK
        );
    }

    #[test]
    fn after_an_unclean_shutdown_only_the_last_block_counts_as_prepared() {
        let end = Layout::FIRST + 10_000;
        let block = end.next_multiple_of(4096);
        let len = Layout::FIRST + (1 << 20);
        assert_eq!(prepared_after_open(end, len, None), block);
        // What a clean close recorded is trusted when the file holds it and it covers the end.
        assert_eq!(prepared_after_open(end, len, Some(len)), len);
        assert_eq!(prepared_after_open(end, len, Some(len + 4096)), block);
        assert_eq!(prepared_after_open(end, len, Some(block - 4096)), block);
        assert_eq!(prepared_after_open(end, len, Some(len - 1)), block);
        assert_eq!(prepared_after_open(end, len, Some(u64::MAX)), block);
    }

    #[test]
    fn a_writer_prepares_room_before_writing_and_keeps_room_for_a_seal() {
        let fs = FaultFs::new();
        let (file, _, sync) = setup(&fs);
        // Opened after an unclean shutdown: only the first block counts as prepared.
        let layout = Layout {
            segment_size: SEG,
            key: KEY,
        };
        file.set_len(Layout::FIRST + 4096).unwrap();
        file.sync_all().unwrap();
        let mut w = LogWriter::new(
            file.clone(),
            layout,
            Layout::FIRST,
            None,
            Layout::FIRST + 4096,
            sync,
        );
        let syncs = fs.sync_count();
        let staged = append(&mut w, &[9u8; 6000]);
        assert!(
            fs.sync_count() >= syncs + 2,
            "the room was prepared (synced) before the commit was written and synced"
        );
        let len = file.len().unwrap();
        assert!(len >= staged.end + SEAL_FRAME_LEN, "{len} {}", staged.end);
        assert!(len.is_multiple_of(4096));
        assert_eq!(frame_at(&file, staged.first).link.position, staged.first);
    }
}
