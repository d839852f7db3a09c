//! The recovery rule, applied when a store is opened.
//!
//! Recovery reads frames forward from the position the index sidecar covers (the first frame of
//! the log when there is no usable sidecar), handing every complete commit to the caller so it
//! can index it. The end of the log is the end of the last frame that completes a commit.
//!
//! Where the scan stops (zeros, a frame that fails a check, a broken link to the previous
//! frame, a commit cut off), recovery asks whether those bytes were ever acknowledged:
//!
//! - every 8-byte boundary from the end of the last complete commit to the end of the file is
//!   probed for a valid frame; a valid frame whose `durable` field lies beyond the end of the
//!   last complete commit proves that the bad bytes had been synced: that is **corruption**,
//!   and `open` fails with [`Error::Corrupt`] naming the position, changing nothing;
//! - otherwise the bytes are a **torn tail** that no caller was ever told was written: they are
//!   zeroed, segments after the end are cut off, the file is synced, and a warning is logged.
//!
//! Before scanning, the frame the sidecar says is the last one it covers must end exactly where
//! the sidecar says: a sidecar that does not match the log is reported, never used to cut it.
//!
//! (A bad frame in the very last commit that was synced, with nothing written after it, cannot be
//! told from a torn write: that is the limit of any log. A clean close records the end in the
//! sidecar, which closes that gap.)

use std::sync::Arc;

use bytes::Bytes;

use super::Layout;
use super::format::{Body, EventRef, FRAME_ALIGN, POSITION_FIELD};
use super::reader::{Cursor, LogReader};
use crate::error::{Error, Result};
use crate::storage::StorageFile;

/// Where the scan starts: a frame boundary the caller trusts, and the frame before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanStart {
    pub position: u64,
    pub last_frame: Option<u64>,
    /// The store was closed cleanly at `position` and not written since: if nothing follows
    /// `position`, nothing after it was ever written, and the probe can be skipped.
    pub clean: bool,
}

/// An event frame of a complete commit, as handed to the caller.
pub(crate) struct RecoveredEvent {
    pub position: u64,
    /// The frame's bytes (read its fields with [`super::format::EventRef`]).
    pub bytes: Bytes,
}

/// What recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Where the next frame goes.
    pub end: u64,
    /// The last frame of the log.
    pub last_frame: Option<u64>,
    /// End of the space reserved in the file (a segment boundary at or after `end`).
    pub allocated_end: u64,
    /// Number of complete commits scanned.
    pub commits: u64,
    /// The torn tail that was dropped, if any.
    pub truncated: Option<Truncation>,
}

/// A dropped torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The new end of the log.
    pub at: u64,
    /// Where the scan stopped.
    pub stopped_at: u64,
    /// Why it stopped there.
    pub reason: String,
}

/// Runs recovery over `file`; see the [module docs](self).
pub(crate) fn recover(
    file: &Arc<dyn StorageFile>,
    layout: Layout,
    start: ScanStart,
    mut on_commit: impl FnMut(&[RecoveredEvent]) -> Result<()>,
) -> Result<Recovered> {
    let file_len = file.len()?;
    let reader = LogReader::new(file.clone(), layout, false);
    let mut cursor = Cursor::default();
    check_start(&reader, start, file_len, &mut cursor)?;

    let mut pos = start.position;
    let mut last = start.last_frame;
    let (mut valid_end, mut valid_last) = (pos, last);
    let mut commits = 0;
    let mut pending: Vec<RecoveredEvent> = Vec::new();
    let mut at_zeros = false;
    let (stopped_at, reason) = loop {
        if pos >= file_len {
            at_zeros = true;
            break (pos, "end of file".to_owned());
        }
        let (bytes, frame) = match reader.try_read(pos, file_len, &mut cursor)? {
            Ok(found) => found,
            Err(e) => {
                at_zeros = e == super::format::FrameError::Empty;
                break (pos, e.to_string());
            }
        };
        let expected_prev = last.map_or(0, |l| pos - l);
        if u64::from(frame.link.prev) != expected_prev {
            break (
                pos,
                format!(
                    "frame links back {} bytes, expected {expected_prev}",
                    frame.link.prev
                ),
            );
        }
        match frame.body {
            Body::Event => {
                if pos + u64::from(frame.len) > layout.usable_end(pos) {
                    break (pos, "event frame in the space kept for the seal".to_owned());
                }
                if let Err(e) = EventRef::new(&bytes).check_names() {
                    break (pos, e.to_string());
                }
                pending.push(RecoveredEvent {
                    position: pos,
                    bytes,
                });
                last = Some(pos);
                pos += u64::from(frame.len);
                if frame.link.commit_end {
                    on_commit(&pending)?;
                    pending.clear();
                    commits += 1;
                    (valid_end, valid_last) = (pos, last);
                }
            }
            Body::Seal { next } => {
                if !pending.is_empty() || next != layout.segment_end(pos) {
                    break (
                        pos,
                        "seal in the middle of a commit or pointing elsewhere".to_owned(),
                    );
                }
                last = Some(pos);
                pos = next;
                commits += 1;
                (valid_end, valid_last) = (pos, last);
            }
        }
    };
    let pending_empty = pending.is_empty();
    drop(pending);

    let clean_end = start.clean && at_zeros && stopped_at == start.position && pending_empty;
    let probe = if clean_end {
        Probe {
            claim: None,
            nonzero_end: valid_end,
            nonzero_beyond: false,
        }
    } else {
        probe(&reader, layout, valid_end, file_len)?
    };
    if let Some((claim_at, durable)) = probe.claim {
        return Err(Error::corrupt(
            stopped_at,
            format!(
                "{reason}; the frame at {claim_at} records that the log was durable up to {durable}, \
                 so these bytes had been acknowledged"
            ),
        ));
    }

    let seg_end = layout.segment_end(valid_end);
    let mut truncated = None;
    if probe.nonzero_end > valid_end || probe.nonzero_beyond {
        zero(file, valid_end, probe.nonzero_end.min(seg_end))?;
        if probe.nonzero_beyond {
            file.set_len(seg_end)?;
        }
        tracing::warn!(
            at = valid_end,
            stopped_at,
            reason = %reason,
            "annals: dropped a torn, unacknowledged tail"
        );
        truncated = Some(Truncation {
            at: valid_end,
            stopped_at,
            reason,
        });
    }
    let mut allocated_end = file.len()?;
    if allocated_end < seg_end {
        let seg_start = seg_end - layout.segment_size;
        file.allocate(seg_start, layout.segment_size)?;
        allocated_end = seg_end;
    }
    // What was read back (perhaps only from the page cache, after a process crash) is made
    // durable before any new frame can claim it is.
    file.sync_all()?;
    Ok(Recovered {
        end: valid_end,
        last_frame: valid_last,
        allocated_end: allocated_end - (allocated_end - Layout::FIRST) % layout.segment_size,
        commits,
        truncated,
    })
}

/// Checks that the frame the caller says precedes `start` ends exactly at `start`.
fn check_start(
    reader: &LogReader,
    start: ScanStart,
    file_len: u64,
    cursor: &mut Cursor,
) -> Result<()> {
    let mismatch = |why: String| {
        Error::corrupt(
            start.position,
            format!(
                "the index sidecar does not match the log ({why}); if the log is intact, delete the \
                 .index file to rebuild it"
            ),
        )
    };
    if !start.position.is_multiple_of(FRAME_ALIGN) || start.position < Layout::FIRST {
        return Err(mismatch("misaligned position".into()));
    }
    let Some(last) = start.last_frame else {
        return if start.position == Layout::FIRST {
            Ok(())
        } else {
            Err(mismatch("no last frame recorded".into()))
        };
    };
    if start.position > file_len {
        return Err(mismatch(format!("the log is only {file_len} bytes long")));
    }
    let (_, frame) = reader
        .try_read(last, file_len, cursor)?
        .map_err(|e| mismatch(format!("its last frame at {last}: {e}")))?;
    let ends_at = match frame.body {
        Body::Seal { next } => next,
        Body::Event => last + u64::from(frame.len),
    };
    if ends_at != start.position {
        return Err(mismatch(format!(
            "its last frame at {last} ends at {ends_at}"
        )));
    }
    Ok(())
}

struct Probe {
    /// A valid frame claiming a durable end beyond the scan's end: (its position, the claim).
    claim: Option<(u64, u64)>,
    /// End of the last non-zero 8-byte word between the scan's end and the end of its segment.
    nonzero_end: u64,
    /// Whether any byte after that segment is non-zero (later segments hold only zeros when
    /// they were prepared ahead and never used).
    nonzero_beyond: bool,
}

const PROBE_CHUNK: u64 = 1 << 20;

/// Probes every 8-byte boundary from `from` to `file_len`; see the module docs.
fn probe(reader: &LogReader, layout: Layout, from: u64, file_len: u64) -> Result<Probe> {
    let mut result = Probe {
        claim: None,
        nonzero_end: from,
        nonzero_beyond: false,
    };
    let mut cursor = Cursor::default();
    let seg_end = layout.segment_end(from);
    let mut chunk_start = from;
    let mut buf = Vec::new();
    while chunk_start + FRAME_ALIGN < file_len {
        let len = PROBE_CHUNK.min(file_len - chunk_start) & !(FRAME_ALIGN - 1);
        buf.resize(len as usize, 0);
        reader.file().read_exact_at(&mut buf, chunk_start)?;
        for (k, word) in buf.chunks_exact(8).enumerate() {
            let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if w == 0 {
                continue;
            }
            let q = chunk_start + 8 * k as u64;
            if q < seg_end {
                result.nonzero_end = result.nonzero_end.max(q + 8);
            } else {
                result.nonzero_beyond = true;
            }
            // A frame at `at` holds `at` in its position field: test that cheaply first.
            let at = q.wrapping_sub(POSITION_FIELD as u64);
            if w == at
                && at >= from
                && let Ok((_, frame)) = reader.try_read(at, file_len, &mut cursor)?
                && frame.link.durable > from
            {
                result.claim = Some((at, frame.link.durable));
                return Ok(result);
            }
        }
        // Overlap by one word, so a frame start in the last word pairs with its position field.
        chunk_start += (len - FRAME_ALIGN).max(FRAME_ALIGN);
    }
    Ok(result)
}

/// Writes zeros over `[from, to)`.
fn zero(file: &Arc<dyn StorageFile>, from: u64, to: u64) -> Result<()> {
    let zeros = vec![0u8; PROBE_CHUNK as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(PROBE_CHUNK);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Where the written bytes from `at` on end (the end of the last non-zero byte: preallocated
/// space holds zeros), for cutting the log at `at` on explicit request (repair): the caller
/// saves `at..end`, then [`cut`]s. `at` must be 8-aligned, past the header and within the file.
pub(crate) fn written_end(file: &Arc<dyn StorageFile>, at: u64) -> Result<u64> {
    let len = file.len()?;
    if at < Layout::FIRST || at > len || !at.is_multiple_of(FRAME_ALIGN) {
        return Err(Error::InvalidArgument(format!(
            "cannot cut the log at {at}: a cut is a multiple of {FRAME_ALIGN} between {} and \
             the file's size {len}",
            Layout::FIRST
        )));
    }
    let mut buf = vec![0u8; PROBE_CHUNK as usize];
    let mut end = at;
    let mut offset = at;
    while offset < len {
        let n = (len - offset).min(PROBE_CHUNK) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            end = offset + i as u64 + 1;
        }
        offset += n as u64;
    }
    Ok(end)
}

/// Cuts the log at `at`: zeroes `at..end` and syncs, so the next open finds the log's end at
/// `at` by the rule above (a commit that `at` splits is an unfinished tail, dropped whole).
pub(crate) fn cut(file: &Arc<dyn StorageFile>, at: u64, end: u64) -> Result<()> {
    zero(file, at, end)?;
    Ok(file.sync_all()?)
}
