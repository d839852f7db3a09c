//! The recovery rule, applied when a store is opened. Three steps, each its own function:
//! [`scan`] reads frames, [`judge`] decides what the bytes after the last complete commit are,
//! and [`repair`] carries that decision out (only when opening for writing).
//!
//! # Scan
//!
//! Recovery reads frames forward from the position the index sidecar covers (the first frame of
//! the log when there is no usable sidecar), handing every complete commit to the caller so it
//! can index it. The end of the log is the end of the last frame that completes a commit.
//! Before scanning, the frame the sidecar says is the last one it covers must end exactly where
//! the sidecar says, inside the file: a sidecar that does not match the log is reported, never
//! used to cut it, and no message advises a step that would silently accept a loss.
//!
//! # Judge
//!
//! The scan stops at zeros, at a frame that fails a check, at a broken link to the previous
//! frame, or at a commit cut off. Then, in this order:
//!
//! 1. **A log the engine never writes is damage.** The engine sets the file's length only to the
//!    header block plus a multiple of 4096, makes an allocation durable before it writes into
//!    it, allocates the next segment durably before it seals one, and keeps room for a seal
//!    (40 bytes) after every frame. So a file of another length, a frame or header cut off by
//!    the end of the file, data running into the last 40 bytes of the file, and a seal whose
//!    next segment is missing all mean the file was cut or altered from outside: `open` fails
//!    with [`Error::Corrupt`] naming the expected and the actual length. (Only an explicit
//!    `accept_loss` treats such a tail as dropped, and says what was lost.)
//! 2. **Acknowledged bytes are never dropped.** Every frame records the end of the log known
//!    durable when it was written. Every 8-byte boundary from the end of the last complete
//!    commit to the end of the file is probed for a valid frame; one whose `durable` field lies
//!    beyond that end proves the bad bytes had been synced, hence acknowledged: that is
//!    **corruption**, and `open` fails with [`Error::Corrupt`] naming the position, changing
//!    nothing.
//! 3. Otherwise the bytes are a **torn tail** no caller was told was written: they are dropped.
//!
//! # What remains ambiguous
//!
//! A frame's `durable` field is the durable end when its group (the commits one leader writes
//! and syncs together) was staged, that is, the start of its group. So damage inside the *last
//! group that was synced* cannot be told from a torn write when no frame of a later group
//! survives: that group's commits are dropped, intact commits after the damaged byte included.
//! With one appending thread a group is one commit. With [`Durability::Periodic`] or `NoSync`
//! the window is everything written since the last sync, which those modes never promised was
//! durable. Nothing else is ambiguous:
//!
//! - a seal is synced on its own before anything is written into the next segment, so the
//!   commit that opened a segment never depends on it;
//! - a clean close records the end in the sidecar, and the index sidecar covers only bytes
//!   that were synced: both close the window;
//! - payload bytes cannot pass for a frame in the probe: a frame's position field is stored
//!   under the store's random 64-bit frame key, which never leaves the file (see
//!   [`super::format`]); a payload would have to guess it.
//!
//! # Repair
//!
//! What recovery drops is never destroyed: every non-zero byte from the new end to the end of
//! the file is first saved beside the store, as `NAME.annals.dropped-POSITION` (synced, its
//! name synced in the directory), then zeroed; segments after the end are cut off. The drop is
//! reported in the recovery report, in a `tracing` warning, and by `annals info`.
//!
//! Then the bytes that no frame proves durable (from the largest `durable` claim read, or the
//! sidecar's position, to the new end) are **written again** before the file is synced. On
//! Linux a failed `fdatasync` marks the failed pages clean and leaves them readable: a new open
//! (in this or another process) would read them, and a sync would "succeed" without writing
//! them. Writing them again makes them dirty, so the sync really writes them (or fails, and the
//! open fails). Only then may a new frame claim them durable; the index sidecar is written
//! during a replay only after the same has been done for what it covers.
//!
//! [`Durability::Periodic`]: crate::store::options::Durability::Periodic

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::Layout;
use super::format::{Body, EventRef, FRAME_ALIGN, FRAME_HEADER_LEN, FrameError, POSITION_FIELD};
use super::format::{SEAL_FRAME_LEN, SEGMENT_ALIGN};
use super::reader::{Cursor, LogReader};
use crate::error::{Error, Result};
use crate::storage::{FileSystem, OpenMode, StorageFile};

/// Where the scan starts: a frame boundary the caller trusts, and the frame before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanStart {
    pub position: u64,
    pub last_frame: Option<u64>,
    /// The store was closed cleanly at `position` and not written since: if nothing follows
    /// `position`, nothing after it was ever written, and the probe can be skipped.
    pub clean: bool,
    /// How far the log was prepared when it was closed cleanly (see
    /// [`super::writer::prepared_after_open`]); trusted only when `clean` holds.
    pub prepared: Option<u64>,
}

impl ScanStart {
    /// A scan of the whole log.
    pub const BEGINNING: ScanStart = ScanStart {
        position: Layout::FIRST,
        last_frame: None,
        clean: false,
        prepared: None,
    };
}

/// An event frame of a complete commit, as handed to the caller.
pub(crate) struct RecoveredEvent {
    pub position: u64,
    /// The frame's bytes (read its fields with [`super::format::EventRef`]).
    pub bytes: Bytes,
}

/// What recovery hands complete commits to (the index).
pub(crate) trait Replay {
    /// One complete commit, in log order.
    fn commit(&mut self, events: &[RecoveredEvent]) -> Result<()>;
    /// Whether the caller wants to write what it gathered (to bound its memory); recovery
    /// first makes the log durable up to the last commit it handed over.
    fn wants_flush(&self) -> bool {
        false
    }
    /// Writes what was gathered.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// The scan passed a gap (removed frames): versions of a stream may jump from here on.
    fn gap(&mut self) {}
}

/// Whether recovery may change the file.
pub(crate) enum Mode<'a> {
    /// Opening for writing: carry out the decision.
    Repair {
        fs: &'a dyn FileSystem,
        /// The store file (dropped bytes are saved beside it).
        path: &'a Path,
        /// Treat a log cut or altered from outside as a dropped tail instead of refusing it.
        accept_loss: bool,
    },
    /// Looking only: judge, change nothing (`accept_loss` as for `Repair`, to find where an
    /// open that accepts a loss would end the log).
    Inspect { accept_loss: bool },
}

/// What recovery found and did (or, inspecting, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Where the next frame goes.
    pub end: u64,
    /// The last frame of the log.
    pub last_frame: Option<u64>,
    /// How far the log counts as prepared for the writer (see
    /// [`super::writer::prepared_after_open`]).
    pub prepared_end: u64,
    /// Number of complete commits scanned.
    pub commits: u64,
    /// The tail that was (or would be) dropped, if any.
    pub truncated: Option<Truncation>,
    /// Bytes no frame proved durable, written again before the sync (or that would be).
    pub rewritten: u64,
}

/// A dropped tail: what the log lost at open, and where its bytes are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The new end of the log.
    pub at: u64,
    /// Where the scan stopped.
    pub stopped_at: u64,
    /// Why it stopped there.
    pub reason: String,
    /// Non-zero bytes from `at` to the end of the file that were dropped.
    pub dropped_bytes: u64,
    /// Valid frames found among the dropped bytes (of commits that were cut short, or written
    /// in the same group after the bad bytes).
    pub intact_frames: u64,
    /// Where the dropped bytes were saved (`None` when there were none, or when only
    /// inspecting).
    pub saved_to: Option<PathBuf>,
}

/// Why the scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// Zeros, with room after them: where an unwritten log ends.
    Zeros,
    /// A frame that fails a check, or a broken chain.
    Bad(String),
    /// The data runs into the end of the file: a cut the engine never makes.
    CutOff(String),
}

/// What [`scan`] found.
#[derive(Debug)]
pub(crate) struct Scanned {
    end: u64,
    last_frame: Option<u64>,
    commits: u64,
    stopped_at: u64,
    stop: Stop,
    /// The largest `durable` claim of a valid frame read (the start position if none).
    proven: u64,
    /// Whether frames of an incomplete commit were read before the stop.
    pending: bool,
}

/// The judgment on the bytes after the scan's end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Nothing but zeros follows.
    Clean,
    /// Bytes that were never acknowledged follow: drop them.
    Torn {
        reason: String,
        last_nonzero: u64,
        intact_frames: u64,
    },
}

/// Runs recovery over `file`; see the [module docs](self).
pub(crate) fn recover(
    file: &Arc<dyn StorageFile>,
    layout: Layout,
    start: ScanStart,
    mode: Mode<'_>,
    replay: &mut dyn Replay,
) -> Result<Recovered> {
    let mut file_len = file.len()?;
    let accept_loss = matches!(
        mode,
        Mode::Repair {
            accept_loss: true,
            ..
        } | Mode::Inspect { accept_loss: true }
    );
    check_length(file_len, layout, accept_loss)?;
    if file_len < Layout::FIRST {
        // Only when accepting a loss: even the header block was cut; it holds only zeros
        // after the header, so it is put back as zeros.
        if let Mode::Repair { .. } = mode {
            file.set_len(Layout::FIRST)?;
        }
        file_len = Layout::FIRST;
    }
    let reader = LogReader::new(file.clone(), layout, false);
    check_start(&reader, start, file_len)?;
    let mut durable = Durable {
        file: matches!(mode, Mode::Repair { .. }).then_some(file),
        proven: start.position,
        rewritten: 0,
    };
    let scanned = scan(&reader, layout, start, file_len, replay, &mut durable)?;
    let verdict = judge(&reader, layout, start, &scanned, file_len, accept_loss)?;
    durable.proven = durable.proven.max(scanned.proven).min(scanned.end);
    let truncated = match &verdict {
        Verdict::Clean => None,
        Verdict::Torn {
            reason,
            last_nonzero,
            intact_frames,
        } => Some(Truncation {
            at: scanned.end,
            stopped_at: scanned.stopped_at,
            reason: reason.clone(),
            dropped_bytes: last_nonzero.saturating_sub(scanned.end),
            intact_frames: *intact_frames,
            saved_to: None,
        }),
    };
    let mut recovered = Recovered {
        end: scanned.end,
        last_frame: scanned.last_frame,
        // Set below, once the file's final length is known.
        prepared_end: scanned.end,
        commits: scanned.commits,
        truncated,
        rewritten: durable.rewritten + (scanned.end - durable.proven),
    };
    match mode {
        Mode::Inspect { .. } => {}
        Mode::Repair { fs, path, .. } => {
            repair(file, layout, fs, path, &mut recovered, &mut durable)?;
        }
    }
    let clean = matches!(verdict, Verdict::Clean) && start.clean;
    let len_now = match mode {
        Mode::Inspect { .. } => file_len,
        Mode::Repair { .. } => file.len()?,
    };
    recovered.prepared_end = super::writer::prepared_after_open(
        recovered.end,
        len_now,
        start.prepared.filter(|_| clean),
    );
    Ok(recovered)
}

/// Reads the complete commits from `start` of a log that another handle writes, through a
/// view that shows zeros past the end that writer made durable ([`super::live::Bounded`]),
/// handing them to `replay`; changes nothing. Returns where the log ends, its last frame and
/// the number of commits read. Everything before the zeros was made durable by the writer, so
/// a frame that fails a check there is corruption, never a torn tail.
pub(crate) fn follow(
    file: &Arc<dyn StorageFile>,
    layout: Layout,
    start: ScanStart,
    replay: &mut dyn Replay,
) -> Result<(u64, Option<u64>, u64)> {
    let file_len = file.len()?;
    let reader = LogReader::new(file.clone(), layout, false);
    check_start(&reader, start, file_len)?;
    let mut durable = Durable {
        file: None,
        proven: start.position,
        rewritten: 0,
    };
    let s = scan(&reader, layout, start, file_len, replay, &mut durable)?;
    match s.stop {
        Stop::Zeros if !s.pending => Ok((s.end, s.last_frame, s.commits)),
        Stop::Zeros => Err(Error::corrupt(
            s.end,
            "a commit runs past the end its writer made durable",
        )),
        Stop::Bad(reason) | Stop::CutOff(reason) => Err(Error::corrupt(
            s.stopped_at,
            format!("{reason} (before the end the writer made durable)"),
        )),
    }
}

/// Checks that the file has a length the engine writes; see rule 1 of the module docs.
fn check_length(file_len: u64, layout: Layout, accept_loss: bool) -> Result<()> {
    let past_header = file_len.checked_sub(Layout::FIRST);
    if accept_loss || past_header.is_some_and(|n| n.is_multiple_of(SEGMENT_ALIGN)) {
        return Ok(());
    }
    let expected = match past_header {
        None => Layout::FIRST + layout.segment_size,
        Some(n) => Layout::FIRST + n.next_multiple_of(SEGMENT_ALIGN),
    };
    Err(Error::corrupt(
        file_len,
        format!(
            "the log file is {file_len} bytes long, where a length of the form 4096 + a \
             multiple of 4096 (here at least {expected}) was expected: it was cut short or \
             extended by something other than annals. Restore it from a backup; `annals \
             rebuild-index --accept-loss` opens it anyway and reports what was lost"
        ),
    ))
}

/// Checks that the frame the caller says precedes `start` ends exactly at `start`.
fn check_start(reader: &LogReader, start: ScanStart, file_len: u64) -> Result<()> {
    let mismatch = |why: String| {
        Error::corrupt(
            start.position,
            format!(
                "the index sidecar does not match the log: {why}. Either the log lost data or \
                 was replaced by another copy, or the sidecar was damaged; `annals verify` \
                 checks the log, and `annals rebuild-index` rebuilds the sidecar from it (it \
                 refuses if the log ends before what the sidecar covered)"
            ),
        )
    };
    if !start.position.is_multiple_of(FRAME_ALIGN) || start.position < Layout::FIRST {
        return Err(mismatch(format!("it covers up to {}", start.position)));
    }
    if start.position > file_len {
        return Err(Error::corrupt(
            file_len,
            format!(
                "the log file is {file_len} bytes long, but its index covered it up to {}: \
                 acknowledged events are missing (the log was cut short, or replaced by an \
                 older copy). Restore it from a backup; `annals rebuild-index --accept-loss` \
                 opens it anyway and reports what was lost",
                start.position
            ),
        ));
    }
    let Some(last) = start.last_frame else {
        return if start.position == Layout::FIRST {
            Ok(())
        } else {
            Err(mismatch("it records no last frame".into()))
        };
    };
    if last < Layout::FIRST || last >= start.position {
        return Err(mismatch(format!("its last frame {last} is out of range")));
    }
    let (_, frame) = reader
        .try_read(last, file_len, &mut Cursor::default())?
        .map_err(|e| mismatch(format!("at its last frame {last}: {e}")))?;
    let ends_at = frame.next();
    if ends_at != start.position {
        return Err(mismatch(format!(
            "its last frame at {last} ends at {ends_at}, not at {}",
            start.position
        )));
    }
    Ok(())
}

/// Makes log bytes durable during recovery: writes again what no frame proves durable, then
/// syncs (see "Repair" in the module docs). Inspecting, it does nothing.
struct Durable<'a> {
    file: Option<&'a Arc<dyn StorageFile>>,
    /// Every byte before this is known durable.
    proven: u64,
    rewritten: u64,
}

impl Durable<'_> {
    /// Makes `[proven, to)` durable; `sync_all` also makes length changes durable.
    fn make_durable(&mut self, to: u64, all: bool) -> Result<()> {
        let Some(file) = self.file else {
            return Ok(());
        };
        let mut buf = vec![0u8; CHUNK.min(to.saturating_sub(self.proven)) as usize];
        let mut at = self.proven;
        while at < to {
            let n = (to - at).min(CHUNK) as usize;
            file.read_exact_at(&mut buf[..n], at)?;
            file.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        self.rewritten += to.saturating_sub(self.proven);
        if all {
            file.sync_all()?;
        } else {
            file.sync_data()?;
        }
        self.proven = self.proven.max(to);
        Ok(())
    }
}

const CHUNK: u64 = 1 << 20;

/// Reads frames from `start`, handing complete commits to `replay`; see "Scan".
fn scan(
    reader: &LogReader,
    layout: Layout,
    start: ScanStart,
    file_len: u64,
    replay: &mut dyn Replay,
    durable: &mut Durable<'_>,
) -> Result<Scanned> {
    let mut cursor = Cursor::default();
    let mut pos = start.position;
    let mut last = start.last_frame;
    let mut s = Scanned {
        end: pos,
        last_frame: last,
        commits: 0,
        stopped_at: pos,
        stop: Stop::Zeros,
        proven: start.position,
        pending: false,
    };
    // The frame after a gap links back to the last frame the gap replaced.
    if let Some(l) = last
        && let Ok((_, f)) = reader.try_read(l, file_len, &mut cursor)?
    {
        last = Some(f.chain_last());
    }
    let mut pending: Vec<RecoveredEvent> = Vec::new();
    let stop = loop {
        if pos + SEAL_FRAME_LEN > file_len {
            // Every frame has room for a seal after it (zeros, or the next frame).
            break Stop::CutOff(format!(
                "the log file ends at {file_len}, {} bytes after position {pos} where the log \
                 goes on, where annals always keeps at least {SEAL_FRAME_LEN}",
                file_len.saturating_sub(pos)
            ));
        }
        let (bytes, frame) = match reader.try_read(pos, file_len, &mut cursor)? {
            Ok(found) => found,
            Err(FrameError::Empty) => break Stop::Zeros,
            Err(e) => match cut_off(reader, layout, pos, file_len)? {
                Some(cut) => break cut,
                None => break Stop::Bad(e.to_string()),
            },
        };

        // Right after reading: the frame is where the chain says.
        let expected_prev = last.map_or(0, |l| pos - l);
        if u64::from(frame.link.prev) != expected_prev {
            break Stop::Bad(format!(
                "frame links back {} bytes, expected {expected_prev}",
                frame.link.prev
            ));
        }
        s.proven = s.proven.max(frame.link.durable);
        match frame.body {
            Body::Event => {
                if pos + u64::from(frame.len) > layout.usable_end(pos) {
                    break Stop::Bad("event frame in the space kept for the seal".to_owned());
                }
                if let Err(e) = EventRef::new(&bytes).check_names() {
                    break Stop::Bad(e.to_string());
                }
                pending.push(RecoveredEvent {
                    position: pos,
                    bytes,
                });
                last = Some(pos);
                pos += u64::from(frame.len);
                if frame.link.commit_end {
                    replay.commit(&pending)?;
                    pending.clear();
                    s.commits += 1;
                    (s.end, s.last_frame) = (pos, last);
                    if replay.wants_flush() {
                        // The sidecar never covers bytes that are not durable.
                        durable.proven = durable.proven.max(s.proven);
                        durable.make_durable(s.end, false)?;
                        replay.flush()?;
                    }
                }
            }
            Body::Gap { last_inner } => {
                // Removed frames (scavenged or erased): nothing to index; the chain goes on
                // from the last frame the gap replaced.
                if pos + u64::from(frame.len) > layout.usable_end(pos) {
                    break Stop::Bad("gap frame in the space kept for the seal".to_owned());
                }
                replay.gap();
                last = Some(last_inner);
                pos += u64::from(frame.len);
                if frame.link.commit_end {
                    if !pending.is_empty() {
                        replay.commit(&pending)?;
                        pending.clear();
                    }
                    s.commits += 1;
                    (s.end, s.last_frame) = (pos, Some(frame.link.position));
                }
            }
            Body::Seal { next } => {
                if !pending.is_empty() || next != layout.segment_end(pos) {
                    break Stop::Bad("seal in the middle of a commit or pointing elsewhere".into());
                }
                last = Some(pos);
                pos = next;
                s.commits += 1;
                (s.end, s.last_frame) = (pos, last);
            }
        }
    };
    s.pending = !pending.is_empty();
    s.stopped_at = pos;
    s.stop = stop;
    Ok(s)
}

/// Whether the bytes at `pos`, which are not a valid frame, are one cut off by the end of the
/// file (see rule 1).
fn cut_off(reader: &LogReader, layout: Layout, pos: u64, file_len: u64) -> Result<Option<Stop>> {
    let room = file_len - pos;
    let mut header = [0u8; FRAME_HEADER_LEN];
    let n = header.len().min(room as usize);
    reader.file().read_exact_at(&mut header[..n], pos)?;
    if header[..n].iter().all(|&b| b == 0) {
        return Ok((room < SEAL_FRAME_LEN).then(|| {
            Stop::CutOff(format!(
                "the log file ends at {file_len}, {room} bytes after the end of the log at \
                 {pos}, where annals always keeps at least {SEAL_FRAME_LEN}"
            ))
        }));
    }
    if n < FRAME_HEADER_LEN {
        return Ok(Some(Stop::CutOff(format!(
            "the log file ends at {file_len}, inside the frame header at {pos}"
        ))));
    }
    let len = u64::from(u32::from_le_bytes(
        header[4..8].try_into().expect("4 bytes"),
    ));
    let plausible = len >= SEAL_FRAME_LEN && len.is_multiple_of(FRAME_ALIGN);
    if plausible && len <= layout.segment_end(pos) - pos && pos + len + SEAL_FRAME_LEN > file_len {
        return Ok(Some(Stop::CutOff(format!(
            "the log file ends at {file_len}, but the frame at {pos} is {len} bytes long \
             (with room for a seal after it, at least {} bytes were expected)",
            pos + len + SEAL_FRAME_LEN
        ))));
    }
    Ok(None)
}

/// Decides what the bytes after the scan's end are; see "Judge".
fn judge(
    reader: &LogReader,
    layout: Layout,
    start: ScanStart,
    s: &Scanned,
    file_len: u64,
    accept_loss: bool,
) -> Result<Verdict> {
    let reason = match &s.stop {
        Stop::Zeros => "no frame (zeroed bytes)".to_owned(),
        Stop::Bad(reason) => reason.clone(),
        Stop::CutOff(reason) if accept_loss => reason.clone(),
        Stop::CutOff(reason) => {
            return Err(Error::corrupt(
                s.stopped_at,
                format!(
                    "{reason}: the file was cut short or altered by something other than \
                     annals, and acknowledged events may be missing. Restore it from a backup; \
                     `annals rebuild-index --accept-loss` opens it anyway and reports what was \
                     lost"
                ),
            ));
        }
    };
    let clean_close =
        start.clean && s.stop == Stop::Zeros && s.stopped_at == start.position && !s.pending;
    if clean_close {
        return Ok(Verdict::Clean);
    }
    let probe = probe(reader, layout, s.end, file_len)?;
    let mut reason = reason;
    if let Some((claim_at, durable)) = probe.claim {
        let acknowledged = format!(
            "{reason}; the frame at {claim_at} records that the log was durable up to \
             {durable}, so these bytes had been acknowledged"
        );
        if !accept_loss {
            return Err(Error::corrupt(s.stopped_at, acknowledged));
        }
        reason = format!("{acknowledged} (dropped: the loss was accepted)");
    }
    // A cut accepted as a loss is always reported, even when no byte is left to drop.
    if probe.last_nonzero <= s.end && !matches!(s.stop, Stop::CutOff(_)) {
        return Ok(Verdict::Clean);
    }
    Ok(Verdict::Torn {
        reason,
        last_nonzero: probe.last_nonzero,
        intact_frames: probe.intact_frames,
    })
}

struct Probe {
    /// A valid frame claiming a durable end beyond the scan's end: (its position, the claim).
    claim: Option<(u64, u64)>,
    /// End of the last non-zero 8-byte word after the scan's end.
    last_nonzero: u64,
    /// Valid frames found.
    intact_frames: u64,
}

const PROBE_CHUNK: u64 = 1 << 20;

/// Zeros to compare blocks of the probed region with.
static ZERO_BLOCK: [u8; 4096] = [0; 4096];

/// Probes every 8-byte boundary from `from` to `file_len`; see the module docs.
fn probe(reader: &LogReader, layout: Layout, from: u64, file_len: u64) -> Result<Probe> {
    let mut result = Probe {
        claim: None,
        last_nonzero: from,
        intact_frames: 0,
    };
    let mut cursor = Cursor::default();
    let mut chunk_start = from;
    let mut buf = Vec::new();
    while chunk_start < file_len {
        let len = PROBE_CHUNK.min(file_len - chunk_start) & !(FRAME_ALIGN - 1);
        if len == 0 {
            break;
        }
        buf.resize(len as usize, 0);
        reader.file().read_exact_at(&mut buf, chunk_start)?;
        // Most of what follows the end of a log is zeros: skip zero blocks with one compare.
        let nonzero_blocks = buf
            .chunks(ZERO_BLOCK.len())
            .enumerate()
            .filter(|(_, block)| *block != &ZERO_BLOCK[..block.len()]);
        let words = nonzero_blocks.flat_map(|(b, block)| {
            block
                .chunks_exact(8)
                .enumerate()
                .map(move |(k, word)| (b * ZERO_BLOCK.len() / 8 + k, word))
        });
        for (k, word) in words {
            let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            if w == 0 {
                continue;
            }
            let q = chunk_start + 8 * k as u64;
            result.last_nonzero = result.last_nonzero.max(q + 8);
            // A frame at `at` holds `at` (under the key) in its position field: test that
            // cheaply first.
            let at = q.wrapping_sub(POSITION_FIELD as u64);
            if w ^ layout.key == at
                && at >= from
                && let Ok((_, frame)) = reader.try_read(at, file_len, &mut cursor)?
            {
                result.intact_frames += 1;
                if frame.link.durable > from && result.claim.is_none() {
                    result.claim = Some((at, frame.link.durable));
                }
            }
        }
        if chunk_start + len >= file_len {
            break;
        }
        // Overlap by one word, so a frame start in the last word pairs with its position field.
        chunk_start += (len - FRAME_ALIGN).max(FRAME_ALIGN);
    }
    // A file of a length annals never writes (accepted as a loss) may end in a partial word.
    let tail = file_len % FRAME_ALIGN;
    if tail != 0 && file_len - tail >= from {
        let mut last = [0u8; FRAME_ALIGN as usize];
        reader
            .file()
            .read_exact_at(&mut last[..tail as usize], file_len - tail)?;
        if last.iter().any(|&b| b != 0) {
            result.last_nonzero = result.last_nonzero.max(file_len);
        }
    }
    Ok(result)
}

/// Carries out the judgment; see "Repair".
fn repair(
    file: &Arc<dyn StorageFile>,
    layout: Layout,
    fs: &dyn FileSystem,
    path: &Path,
    recovered: &mut Recovered,
    durable: &mut Durable<'_>,
) -> Result<()> {
    let end = recovered.end;
    let seg_end = layout.segment_end(end);
    // Whether repair changed the file (a cut tail, a length): then it is synced whole.
    let mut changed = recovered.truncated.is_some();
    if let Some(t) = &mut recovered.truncated {
        let last_nonzero = t.at + t.dropped_bytes;
        if t.dropped_bytes > 0 {
            t.saved_to = Some(save(fs, path, file, t.at, last_nonzero)?);
        }
        zero(file, end, last_nonzero.min(seg_end))?;
        if last_nonzero > seg_end {
            file.set_len(seg_end)?;
        }
        tracing::warn!(
            path = %path.display(),
            at = t.at,
            stopped_at = t.stopped_at,
            reason = %t.reason,
            dropped_bytes = t.dropped_bytes,
            intact_frames = t.intact_frames,
            saved_to = ?t.saved_to,
            "annals: dropped an unacknowledged tail of the log; its bytes are saved beside the store"
        );
    }
    let len = file.len()?;
    // Room for a seal after the end (the log never ends the file: see rule 1), to the end of
    // that 4 KiB block (a seal always fits in the end's segment).
    let block = (end + SEAL_FRAME_LEN).next_multiple_of(SEGMENT_ALIGN);
    if len < block || !(len - Layout::FIRST).is_multiple_of(SEGMENT_ALIGN) {
        // The file holds that block whole and ends on a block boundary (also after a tail cut
        // from outside was accepted as lost). The writer prepares what follows before it
        // writes there.
        let to = len.max(block).next_multiple_of(SEGMENT_ALIGN);
        file.allocate(len.min(to), to - len.min(to))?;
        changed = true;
    }
    // After a clean close nothing is unproven and nothing changed: the close's own sync made
    // the log durable, and a sync here would cost every open a disk round trip for nothing.
    if changed || end > durable.proven {
        durable.make_durable(end, true)?;
    }
    recovered.rewritten = durable.rewritten;
    Ok(())
}

/// Saves `[from, to)` of the log beside the store as `NAME.annals.dropped-FROM` (synced, and
/// its directory entry too) and returns its path. An identical copy saved by an earlier,
/// interrupted recovery is reused.
fn save(
    fs: &dyn FileSystem,
    path: &Path,
    file: &Arc<dyn StorageFile>,
    from: u64,
    to: u64,
) -> Result<PathBuf> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let dir = crate::storage::parent_dir(path);
    let mut buf = vec![0u8; CHUNK.min(to - from) as usize];
    for n in 1..=100u32 {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        let target = dir.join(format!("{name}.dropped-{from}{suffix}"));
        if fs.exists(&target)? {
            if same_bytes(fs, &target, file, from, to)? {
                return Ok(target);
            }
            continue;
        }
        let tmp = dir.join(format!("{name}.dropping-{}", uuid::Uuid::new_v4().simple()));
        let out = fs.open(&tmp, OpenMode::CreateNew)?;
        let mut at = from;
        while at < to {
            let n = (to - at).min(CHUNK) as usize;
            file.read_exact_at(&mut buf[..n], at)?;
            out.write_all_at(&buf[..n], at - from)?;
            at += n as u64;
        }
        out.sync_all()?;
        drop(out);
        match fs.rename_no_replace(&tmp, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = fs.remove_file(&tmp);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        fs.sync_dir(dir)?;
        return Ok(target);
    }
    Err(Error::InvalidArgument(format!(
        "too many saved copies of dropped bytes beside {}",
        path.display()
    )))
}

/// Whether the file at `saved` holds exactly `[from, to)` of the log.
fn same_bytes(
    fs: &dyn FileSystem,
    saved: &Path,
    file: &Arc<dyn StorageFile>,
    from: u64,
    to: u64,
) -> Result<bool> {
    let copy = fs.open(saved, OpenMode::ReadOnly)?;
    if copy.len()? != to - from {
        return Ok(false);
    }
    let mut a = vec![0u8; CHUNK.min(to - from) as usize];
    let mut b = a.clone();
    let mut at = from;
    while at < to {
        let n = (to - at).min(CHUNK) as usize;
        file.read_exact_at(&mut a[..n], at)?;
        copy.read_exact_at(&mut b[..n], at - from)?;
        if a[..n] != b[..n] {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Writes zeros over `[from, to)`.
fn zero(file: &Arc<dyn StorageFile>, from: u64, to: u64) -> Result<()> {
    let zeros = vec![0u8; PROBE_CHUNK.min(to.saturating_sub(from)) as usize];
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::{EventRecord, FileHeader, FrameLink, HEADER_LEN, encode_event};
    use crate::log::sync::{LogSync, Poison};
    use crate::log::writer::LogWriter;
    use crate::storage::{CrashPolicy, FaultFs, FaultMode, MemoryFs};

    const SEG: u64 = 64 * 1024;
    const KEY: u64 = 0x0123_4567_89AB_CDEF;
    const PATH: &str = "/r/log.annals";

    fn layout() -> Layout {
        Layout {
            segment_size: SEG,
            key: KEY,
        }
    }

    /// A log file with a header and one segment, and a writer at its start.
    fn new_log(fs: &dyn FileSystem) -> (Arc<dyn StorageFile>, LogWriter) {
        let file = fs.open(Path::new(PATH), OpenMode::CreateNew).unwrap();
        fs.sync_dir(Path::new("/r")).unwrap();
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
        let writer = LogWriter::new(
            file.clone(),
            layout(),
            Layout::FIRST,
            None,
            4096 + SEG,
            sync,
        );
        (file, writer)
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
            encoding: crate::log::format::PayloadEncoding::Raw,
            metadata: b"",
            payload,
        }
    }

    /// Appends one commit of `n` events with `size`-byte payloads; returns (first, end).
    fn commit(w: &mut LogWriter, n: usize, size: usize) -> (u64, u64) {
        let payload = vec![0xAB; size];
        let records: Vec<_> = (0..n).map(|_| record(&payload)).collect();
        let total: u64 = records.iter().map(|r| r.frame_len().unwrap()).sum();
        w.reserve(total).unwrap();
        let staged = w.stage_frames(records.into_iter(), true, &mut Vec::new());
        w.write_staged(true).unwrap();
        (staged.first, staged.end)
    }

    #[derive(Default)]
    struct Count(Vec<Vec<u64>>);
    impl Replay for Count {
        fn commit(&mut self, events: &[RecoveredEvent]) -> Result<()> {
            self.0.push(events.iter().map(|e| e.position).collect());
            Ok(())
        }
    }

    fn reader(file: &Arc<dyn StorageFile>) -> LogReader {
        LogReader::new(file.clone(), layout(), false)
    }

    fn scan_all(file: &Arc<dyn StorageFile>) -> (Scanned, Count) {
        let mut count = Count::default();
        let mut durable = Durable {
            file: None,
            proven: Layout::FIRST,
            rewritten: 0,
        };
        let len = file.len().unwrap();
        let s = scan(
            &reader(file),
            layout(),
            ScanStart::BEGINNING,
            len,
            &mut count,
            &mut durable,
        )
        .unwrap();
        (s, count)
    }

    fn flip(file: &Arc<dyn StorageFile>, at: u64) {
        let mut b = [0u8];
        file.read_exact_at(&mut b, at).unwrap();
        file.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    }

    #[test]
    fn scan_hands_over_whole_commits_and_stops_at_zeros() {
        let fs = MemoryFs::new();
        let (file, mut w) = new_log(&fs);
        let (a, _) = commit(&mut w, 1, 10);
        let (b, end) = commit(&mut w, 3, 10);
        let (s, count) = scan_all(&file);
        assert_eq!(s.stop, Stop::Zeros);
        assert_eq!(
            (s.end, s.stopped_at, s.commits, s.pending),
            (end, end, 2, false)
        );
        assert_eq!(count.0.len(), 2);
        assert_eq!((count.0[0][0], count.0[1][0], count.0[1].len()), (a, b, 3));
        // The second commit's frames record that the first was durable.
        assert_eq!(s.proven, b);
    }

    #[test]
    fn scan_stops_at_a_damaged_frame_and_keeps_the_commits_before_it() {
        let fs = MemoryFs::new();
        let (file, mut w) = new_log(&fs);
        let (_, a_end) = commit(&mut w, 1, 10);
        let (b, _) = commit(&mut w, 2, 10);
        flip(&file, b + 40);
        let (s, count) = scan_all(&file);
        assert!(
            matches!(s.stop, Stop::Bad(ref r) if r.contains("checksum")),
            "{:?}",
            s.stop
        );
        assert_eq!((s.end, s.stopped_at, count.0.len()), (a_end, b, 1));
    }

    #[test]
    fn scan_reports_a_file_cut_inside_a_frame() {
        let fs = MemoryFs::new();
        let (file, mut w) = new_log(&fs);
        let (_, a_end) = commit(&mut w, 1, 3000);
        file.set_len(a_end - 100).unwrap();
        let (s, _) = scan_all(&file);
        assert!(matches!(s.stop, Stop::CutOff(_)), "{:?}", s.stop);
        assert_eq!(s.end, Layout::FIRST);
    }

    #[test]
    fn judge_tells_zeros_torn_bytes_and_acknowledged_damage_apart() {
        let fs = MemoryFs::new();
        let (file, mut w) = new_log(&fs);
        let (_, a_end) = commit(&mut w, 1, 10);
        let (b, b_end) = commit(&mut w, 1, 10);
        let judged = |file: &Arc<dyn StorageFile>| {
            let (s, _) = scan_all(file);
            let len = file.len().unwrap();
            judge(
                &reader(file),
                layout(),
                ScanStart::BEGINNING,
                &s,
                len,
                false,
            )
        };
        assert_eq!(judged(&file).unwrap(), Verdict::Clean);
        // Damage to the last commit: nothing after it claims it, a torn write it may be.
        flip(&file, b + 40);
        match judged(&file).unwrap() {
            Verdict::Torn { last_nonzero, .. } => assert_eq!(last_nonzero, b_end),
            v => panic!("{v:?}"),
        }
        flip(&file, b + 40);
        // A later commit claims B durable: damage to B is corruption.
        commit(&mut w, 1, 10);
        flip(&file, b + 40);
        assert!(matches!(judged(&file), Err(Error::Corrupt { position, .. }) if position == b));
        assert!(a_end <= b);
    }

    #[test]
    fn the_probe_takes_no_payload_bytes_for_a_frame() {
        // A payload holding frames that claim to be durable, placed where they would be valid
        // frames, under `forger_key`; the frame holding them is then damaged (a torn write).
        let probe_with = |forger_key: u64| {
            let fs = MemoryFs::new();
            let (file, mut w) = new_log(&fs);
            commit(&mut w, 1, 10);
            let b = w.end();
            let payload_at = b + 32 + 48 + 2; // header, fixed part, stream "s", type "E"
            let mut payload = vec![0u8; 2000];
            let mut k = ((8 - payload_at % 8) % 8) as usize;
            while k + 200 < payload.len() {
                let p = payload_at + k as u64;
                let mut forged = Vec::new();
                let link = FrameLink {
                    position: p,
                    durable: p,
                    prev: 8,
                    commit_end: true,
                };
                encode_event(&mut forged, link, forger_key, &record(b"x"));
                payload[k..k + forged.len()].copy_from_slice(&forged);
                k += 200;
            }
            let records = vec![record(&payload)];
            w.reserve(records[0].frame_len().unwrap()).unwrap();
            w.stage_frames(records.into_iter(), true, &mut Vec::new());
            w.write_staged(true).unwrap();
            flip(&file, b + 8);
            let (s, _) = scan_all(&file);
            assert_eq!(s.end, b);
            probe(&reader(&file), layout(), s.end, file.len().unwrap()).unwrap()
        };
        // Plain positions (what a caller who does not know the key can write): ignored.
        assert_eq!(probe_with(0).claim, None, "a forged frame was believed");
        // Only someone who read the key from the file could forge one.
        assert!(probe_with(KEY).claim.is_some());
    }

    #[test]
    fn repair_saves_what_it_drops_and_makes_the_tail_durable() {
        let fs = FaultFs::new();
        let (file, mut w) = new_log(&fs);
        commit(&mut w, 1, 10);
        let (b, b_end) = commit(&mut w, 2, 100);
        // B's sync fails as on Linux: its bytes stay readable, not durable.
        file.write_all_at(b"torn tail", b_end).unwrap();
        fs.fail_at(fs.op_count(), FaultMode::Once, std::io::ErrorKind::Other);
        assert!(file.sync_data().is_err());
        let restarted = fs.restart();
        let file = restarted.open(Path::new(PATH), OpenMode::Existing).unwrap();
        let mut count = Count::default();
        let mode = Mode::Repair {
            fs: &restarted,
            path: Path::new(PATH),
            accept_loss: false,
        };
        let r = recover(&file, layout(), ScanStart::BEGINNING, mode, &mut count).unwrap();
        assert_eq!((r.end, count.0.len()), (b_end, 2));
        let t = r.truncated.expect("the torn tail is reported");
        assert_eq!((t.at, t.dropped_bytes), (b_end, 16));
        let saved = restarted
            .open(t.saved_to.as_deref().unwrap(), OpenMode::ReadOnly)
            .unwrap();
        let mut kept = vec![0u8; 9];
        saved.read_exact_at(&mut kept, 0).unwrap();
        assert_eq!(&kept, b"torn tail");
        assert!(
            r.rewritten >= b_end - b,
            "B was written again ({})",
            r.rewritten
        );
        // B survives a power cut now, and the tail is gone.
        let after = restarted.crash(CrashPolicy::DropUnsynced);
        let file = after.open(Path::new(PATH), OpenMode::ReadOnly).unwrap();
        let (s, count) = scan_all(&file);
        assert_eq!((s.end, count.0.len(), s.stop), (b_end, 2, Stop::Zeros));
    }

    #[test]
    fn a_repaired_log_always_leaves_room_for_a_seal_after_its_end() {
        // A header-only file (accepted as a loss), and logs ending on a 4 KiB boundary: after
        // repair, the file reaches at least a seal past the end, so the next open needs no
        // loss accepted (found by the recovery fuzzer).
        for cut in [Layout::FIRST, Layout::FIRST + 4096] {
            let fs = MemoryFs::new();
            let (file, mut w) = new_log(&fs);
            while w.end() < cut {
                commit(&mut w, 1, 8);
            }
            let end = w.end();
            file.set_len(end.next_multiple_of(8)).unwrap();
            let repair = |accept_loss| {
                let mut count = Count::default();
                let mode = Mode::Repair {
                    fs: &fs,
                    path: Path::new(PATH),
                    accept_loss,
                };
                recover(&file, layout(), ScanStart::BEGINNING, mode, &mut count)
            };
            let first = repair(true).unwrap();
            let len = file.len().unwrap();
            assert!(len >= first.end + SEAL_FRAME_LEN, "{len} {}", first.end);
            assert!((len - Layout::FIRST).is_multiple_of(SEGMENT_ALIGN));
            let again = repair(false).expect("no loss to accept the second time");
            assert_eq!(again.end, first.end);
            assert!(again.truncated.is_none());
        }
    }
}
