//! The on-disk format of an annals store file. **This module is the specification**: no other
//! module knows a byte offset of the layout.
//!
//! # Overview
//!
//! A store is one file, `NAME.annals`. It starts with a 4096-byte header block, followed by
//! segments of a fixed size (chosen when the store is created, recorded in the header):
//!
//! ```text
//! 0        4096            4096 + S          4096 + 2S
//! | header | segment 0      | segment 1       | segment 2 ...
//! ```
//!
//! Segment `i` covers bytes `[4096 + i·S, 4096 + (i+1)·S)`. The file need not reach the end
//! of its last segment: space is prepared (reserved with `fallocate`, zero-filled, synced) a
//! chunk at a time ahead of the log's end, and always reaches at least a seal's length past it
//! (see the writer, `src/log/writer.rs`); reserved but unwritten bytes, and bytes past a
//! file's end, read as zero. The file's length is 4096 plus a multiple of 4096.
//!
//! Records ("frames") are laid end to end inside a segment, each starting at a multiple of 8,
//! and never straddle two segments. A **position** is the byte offset of a frame in the file;
//! positions are `u64` and strictly increase in log order.
//!
//! All integers are little-endian. Checksums are CRC-32 (ISO-HDLC, as computed by
//! `crc32fast`).
//!
//! # File header (bytes 0..64 of the header block; the rest of the block is zero)
//!
//! | offset | size | field          | meaning                                              |
//! |-------:|-----:|----------------|------------------------------------------------------|
//! | 0      | 8    | magic          | `89 61 6E 6E 61 6C 73 0A` (`\x89annals\n`)            |
//! | 8      | 4    | format_version | 2 (1: stores made before frame keys; read and written as they are) |
//! | 12     | 4    | header_len     | 64                                                   |
//! | 16     | 16   | store_id       | random UUID, also recorded in the index sidecar      |
//! | 32     | 8    | segment_size   | S: multiple of 4096, 64 KiB ..= 1 GiB                |
//! | 40     | 8    | created_at     | creation time, nanoseconds since the Unix epoch      |
//! | 48     | 8    | frame_key      | random, non-zero (version 2); zero in version 1       |
//! | 56     | 4    | reserved       | zero                                                 |
//! | 60     | 4    | crc            | CRC-32 of bytes 0..60                                |
//!
//! A reader checks the magic first (otherwise: not a store), then the version (a newer one is
//! refused before anything else is interpreted), then the checksum and the field ranges.
//!
//! **The frame key.** A frame's `position` field holds its position XOR the store's
//! `frame_key`. The key is chosen at random when the store is created and never leaves the
//! file through the API, so a caller who chooses payload bytes cannot make them pass for a
//! frame: a forged header inside a payload would have to guess 64 random bits (recovery's probe
//! and every read check the field). Version 1 stores have the key 0, so their frames hold
//! plain positions.
//!
//! # What we assume of the disk
//!
//! - A write that returned may be lost, torn at any byte, or reach the disk only in part (any
//!   subset of its 512-byte sectors, in any order) until a sync that covers it returns.
//! - After `fdatasync` (or a write with `RWF_DSYNC`) returns, the data written before it is
//!   durable, and so is the file's length. After `fsync` of a directory, its entries are.
//! - A failed sync may have lost what it was to make durable, while reads still return it from
//!   the page cache; a later sync may succeed without writing it (Linux). Nothing is trusted
//!   after a failed sync: the store is poisoned, and the next open writes the unproven tail
//!   again before anything can build on it.
//! - Reserved space (`fallocate`) reads as zeros; so do the bytes past a file's end after it
//!   grows. A frame never decodes from zeros.
//! - Bytes that were synced do not change by themselves, but may: every read checks the
//!   checksum, and damage is reported, never repaired silently.
//! - The file is not written by anything but annals while annals holds its lock.
//!
//! # Version history
//!
//! - **1** (annals 0.1, first stores): header, segments, frames as below with plain positions.
//! - **2** (this build): the header gains `frame_key` (bytes 48..56, reserved in version 1),
//!   and every frame's position field is stored under it. Version 1 stores are read and
//!   written as version 1 (key 0); new stores are version 2. A version 1 build refuses a
//!   version 2 file as a newer format.
//!
//! # Frame
//!
//! Every frame starts with a 32-byte header; its total length is a multiple of 8, and every byte
//! of it after the `crc` field, padding included, is covered by the checksum. The frame's own
//! position is inside the checksummed bytes, so stale or misplaced bytes cannot pass for a frame.
//! A zero `len` (a zeroed region) is never a valid frame: it marks the end of written data.
//!
//! | offset | size | field    | meaning                                                       |
//! |-------:|-----:|----------|---------------------------------------------------------------|
//! | 0      | 4    | crc      | CRC-32 of bytes `4..len` of the frame                          |
//! | 4      | 4    | len      | total frame length in bytes, multiple of 8, ≥ 40               |
//! | 8      | 8    | position | byte offset of this frame in the file, XOR the frame key        |
//! | 16     | 8    | durable  | end of the log known durable when this frame was written (≤ position) |
//! | 24     | 4    | prev     | distance back to the previous frame's start; 0 for the first frame |
//! | 28     | 1    | kind     | 1 = event, 2 = seal, 3 = gap                                  |
//! | 29     | 1    | flags    | bit 0: commit end; for events also bits 1–3 (below); others 0 |
//! | 30     | 2    | reserved | zero                                                          |
//! | 32     | ..   | body     | by kind, then zero padding up to `len`                        |
//!
//! **Commits.** One append (or multi-stream transaction) is one *commit*: one or more frames,
//! contiguous in one segment, the last of which has the *commit end* flag. After a crash either
//! the whole commit is in the log or none of it is.
//!
//! **Event body** (kind 1):
//!
//! | offset | size | field          | meaning                                              |
//! |-------:|-----:|----------------|------------------------------------------------------|
//! | 0      | 8    | version        | the event's version in its stream, from 0             |
//! | 8      | 8    | timestamp      | creation time, nanoseconds since the Unix epoch        |
//! | 16     | 16   | event_id       | UUID                                                 |
//! | 32     | 2    | stream_len     | 1 ..= 1024                                           |
//! | 34     | 2    | type_len       | 1 ..= 256                                            |
//! | 36     | 4    | schema_version | of the event type                                    |
//! | 40     | 4    | metadata_len   | user metadata bytes                                  |
//! | 44     | 4    | payload_len    | payload bytes                                        |
//! | 48     | 16   | correlation_id | only if flag bit 1 is set                            |
//! | ..     | 16   | causation_id   | only if flag bit 2 is set                            |
//! | ..     | ..   | stream, event type (UTF-8), metadata, payload, in this order          |
//!
//! Flag bit 3 marks an event to be published (delivered by the outbox). Flag bits 4–5 say how
//! the payload is encoded: 0 opaque bytes, 1 bincode 2 (standard configuration), 2 JSON; 3 is
//! invalid.
//!
//! **Seal body** (kind 2): 8 bytes, the position where the log continues (the start of the next
//! segment). A seal is a commit of its own; it is the last frame of a segment, and the writer
//! keeps room for it (40 bytes) at the end of every segment.
//!
//! **Gap body** (kind 3): 8 bytes, the position of the last frame the gap replaced. A gap is
//! what a scavenge or an erasure leaves of frames no read can return any more (see
//! `src/log/journal.rs` for how they are written crash-safely): one or more frames `[a, b)` of
//! one segment, replaced by a gap frame at `a` whose `len` is `b - a`. Unlike every other
//! frame, its checksum covers only bytes `4..40` (header and body): the bytes after them, up to
//! `len`, are zeros or a punched hole. Its `prev` and `durable` fields are those of the first
//! frame it replaced; its commit-end flag is that of the last one; the frame after it links back
//! to the last frame it replaced (the body), so the chain of frames stays checkable. Positions
//! inside a gap are no frame: a reader that lands there (through an index entry of a removed
//! event) finds the gap by walking its segment's frames from the segment's start.
//!
//! # The engine's own records
//!
//! Checkpoints, outbox progress, snapshots, relay markers and unique claims are ordinary event
//! frames in streams whose names start with `$`; their streams, types and payloads are
//! specified in [`super::records`].
//!
//! # Recovery rule
//!
//! Recovery reads frames forward from the position the index sidecar covers. The end of the log
//! is the end of the last frame that completes a commit. A file of a length annals never writes,
//! or whose data runs into its end, was cut or altered from outside: that is corruption. When
//! the scan meets a frame that fails a check (or zeros) it asks whether that place was ever
//! acknowledged: it was if the index covers it, or if any valid frame *after* it (probed at
//! every 8-byte boundary to the end of the file, under the frame key) claims a `durable` end
//! beyond it. Acknowledged bad bytes are corruption (`open` fails, naming the position);
//! otherwise they are a torn, unacknowledged tail, which is saved beside the store, zeroed and
//! dropped. What no frame proves durable is written again before the file is synced. The
//! rule, and the one ambiguity it leaves (damage inside the last group of commits that was
//! synced, when nothing after it survives), are stated in full in `src/log/recovery.rs`.

use std::ops::Range;

/// File magic: `\x89annals\n`.
pub const MAGIC: [u8; 8] = *b"\x89annals\n";
/// The format version this build writes (it also reads and writes [`FORMAT_VERSION_1`] stores).
pub const FORMAT_VERSION: u32 = 2;
/// The first format version: no frame key (positions are stored as they are).
pub const FORMAT_VERSION_1: u32 = 1;
/// Size of the header block; the first segment starts here.
pub const HEADER_BLOCK: u64 = 4096;
/// Bytes of the header block that carry fields (the rest is zero).
pub const HEADER_LEN: usize = 64;
/// Offset of the position field in a frame header (recovery's probe looks for frames by it).
pub const POSITION_FIELD: usize = 8;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 32;
/// Frames start at multiples of this.
pub const FRAME_ALIGN: u64 = 8;
/// Fixed part of an event body.
pub const EVENT_FIXED_LEN: usize = 48;
/// Total length of a seal frame; the writer keeps this much room at the end of each segment.
pub const SEAL_FRAME_LEN: u64 = 40;
/// Smallest segment size.
pub const MIN_SEGMENT_SIZE: u64 = 64 * 1024;
/// Largest segment size (frame lengths and back-distances are `u32`).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// Segment sizes are multiples of this (so segments can be mapped).
pub const SEGMENT_ALIGN: u64 = 4096;
/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_LEN: usize = 1024;
/// Longest event type name, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 256;

/// Where each field of the file header starts (see the table above).
mod header_at {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const HEADER_LEN: usize = 12;
    pub const STORE_ID: usize = 16;
    pub const SEGMENT_SIZE: usize = 32;
    pub const CREATED_AT: usize = 40;
    pub const FRAME_KEY: usize = 48;
    pub const RESERVED: usize = 56;
    pub const CRC: usize = 60;
}

/// Where each field of a frame header starts (see the table above).
mod frame_at {
    pub const CRC: usize = 0;
    pub const LEN: usize = 4;
    pub const POSITION: usize = 8;
    pub const DURABLE: usize = 16;
    pub const PREV: usize = 24;
    pub const KIND: usize = 28;
    pub const FLAGS: usize = 29;
    pub const RESERVED: usize = 30;
    /// Where the body starts.
    pub const BODY: usize = 32;
}

/// Where each fixed field of an event body starts, from the start of the frame.
mod event_at {
    use super::frame_at::BODY;
    pub const VERSION: usize = BODY;
    pub const TIMESTAMP: usize = BODY + 8;
    pub const EVENT_ID: usize = BODY + 16;
    pub const STREAM_LEN: usize = BODY + 32;
    pub const TYPE_LEN: usize = BODY + 34;
    pub const SCHEMA_VERSION: usize = BODY + 36;
    pub const METADATA_LEN: usize = BODY + 40;
    pub const PAYLOAD_LEN: usize = BODY + 44;
    /// Where the optional ids (then the variable fields) start.
    pub const IDS: usize = BODY + 48;
}

// How the constants relate, checked when the crate compiles.
const _: () = {
    assert!(header_at::CRC + 4 == HEADER_LEN);
    assert!(header_at::RESERVED + 4 == header_at::CRC);
    assert!(HEADER_LEN <= HEADER_BLOCK as usize);
    assert!(HEADER_BLOCK.is_multiple_of(SEGMENT_ALIGN));
    assert!(frame_at::POSITION == POSITION_FIELD);
    assert!(frame_at::BODY == FRAME_HEADER_LEN);
    assert!(frame_at::RESERVED + 2 == FRAME_HEADER_LEN);
    assert!(event_at::IDS - frame_at::BODY == EVENT_FIXED_LEN);
    assert!(SEAL_FRAME_LEN as usize == FRAME_HEADER_LEN + 8);
    assert!(SEAL_FRAME_LEN.is_multiple_of(FRAME_ALIGN));
    assert!(FRAME_HEADER_LEN.is_multiple_of(FRAME_ALIGN as usize));
    assert!(MIN_SEGMENT_SIZE.is_multiple_of(SEGMENT_ALIGN));
    assert!(MAX_SEGMENT_SIZE.is_multiple_of(SEGMENT_ALIGN));
    assert!(SEGMENT_ALIGN.is_multiple_of(FRAME_ALIGN));
    // Frame lengths and back-links are u32: a segment fits.
    assert!(MAX_SEGMENT_SIZE <= u32::MAX as u64);
    // Name lengths are u16 fields.
    assert!(MAX_STREAM_NAME_LEN <= u16::MAX as usize);
    assert!(MAX_EVENT_TYPE_LEN <= u16::MAX as usize);
    // The largest possible header and names fit in the smallest segment with room for a seal.
    assert!(
        (FRAME_HEADER_LEN + EVENT_FIXED_LEN + 32 + MAX_STREAM_NAME_LEN + MAX_EVENT_TYPE_LEN) as u64
            + SEAL_FRAME_LEN
            <= MIN_SEGMENT_SIZE
    );
};

const KIND_EVENT: u8 = 1;
const KIND_SEAL: u8 = 2;
const KIND_GAP: u8 = 3;
/// Length of the part of a gap frame that is written and checksummed (header and body).
pub const GAP_HEADER_LEN: u64 = 40;
const FLAG_COMMIT_END: u8 = 1;
const FLAG_CORRELATION: u8 = 1 << 1;
const FLAG_CAUSATION: u8 = 1 << 2;
const FLAG_PUBLISH: u8 = 1 << 3;
/// Bits 4–5 of an event's flags: how its payload is encoded.
const ENCODING_SHIFT: u8 = 4;
const ENCODING_MASK: u8 = 0b11 << ENCODING_SHIFT;
const EVENT_FLAGS: u8 =
    FLAG_COMMIT_END | FLAG_CORRELATION | FLAG_CAUSATION | FLAG_PUBLISH | ENCODING_MASK;

/// How an event's payload is encoded (flag bits 4–5). The engine stores it and never looks
/// inside the payload; the typed layer uses it to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PayloadEncoding {
    /// Opaque bytes (0).
    #[default]
    Raw,
    /// bincode 2, standard configuration (1).
    Bincode,
    /// JSON (2).
    Json,
}

impl PayloadEncoding {
    fn bits(self) -> u8 {
        (match self {
            PayloadEncoding::Raw => 0,
            PayloadEncoding::Bincode => 1,
            PayloadEncoding::Json => 2,
        }) << ENCODING_SHIFT
    }

    fn from_flags(flags: u8) -> Option<PayloadEncoding> {
        match (flags & ENCODING_MASK) >> ENCODING_SHIFT {
            0 => Some(PayloadEncoding::Raw),
            1 => Some(PayloadEncoding::Bincode),
            2 => Some(PayloadEncoding::Json),
            _ => None,
        }
    }
}
const MIN_FRAME_LEN: usize = FRAME_HEADER_LEN + 8;

/// CRC-32 of `bytes`. (`crc32fast::hash` detects the CPU's features on every call; cloning a
/// hasher made once skips that, which matters for frames of a few hundred bytes.)
#[inline]
fn crc32(bytes: &[u8]) -> u32 {
    static TEMPLATE: std::sync::OnceLock<crc32fast::Hasher> = std::sync::OnceLock::new();
    let mut h = TEMPLATE.get_or_init(crc32fast::Hasher::new).clone();
    h.update(bytes);
    h.finalize()
}

/// Rounds up to the frame alignment.
pub const fn align(n: u64) -> u64 {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn id_at(b: &[u8], at: usize) -> [u8; 16] {
    b[at..at + 16].try_into().expect("16 bytes")
}

// ---------------------------------------------------------------------------------------------
// File header

/// The fields of the file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Format version (always [`FORMAT_VERSION`] when written by this build).
    pub format_version: u32,
    /// Random id of the store, also recorded in the index sidecar.
    pub store_id: [u8; 16],
    /// Segment size in bytes.
    pub segment_size: u64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_at: u64,
    /// The key frame positions are stored under (0 in format version 1; see the module docs).
    pub frame_key: u64,
}

/// Why a file header was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The magic is wrong (or the file is too short): not an annals store.
    NotAStore(String),
    /// A newer format version.
    UnsupportedVersion(u32),
    /// The magic is right but the header fails its checksum or a range check.
    Corrupt(String),
}

impl FileHeader {
    /// Encodes the header's 64 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        use header_at as at;
        let put = |b: &mut [u8; HEADER_LEN], at: usize, v: &[u8]| {
            b[at..at + v.len()].copy_from_slice(v);
        };
        put(&mut b, at::MAGIC, &MAGIC);
        put(&mut b, at::VERSION, &self.format_version.to_le_bytes());
        put(&mut b, at::HEADER_LEN, &(HEADER_LEN as u32).to_le_bytes());
        put(&mut b, at::STORE_ID, &self.store_id);
        put(&mut b, at::SEGMENT_SIZE, &self.segment_size.to_le_bytes());
        put(&mut b, at::CREATED_AT, &self.created_at.to_le_bytes());
        put(&mut b, at::FRAME_KEY, &self.frame_key.to_le_bytes());
        let crc = crc32(&b[..at::CRC]);
        put(&mut b, at::CRC, &crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header from the first bytes of a file (at most 64 are looked at).
    pub fn decode(b: &[u8]) -> Result<FileHeader, HeaderError> {
        use header_at as at;
        if b.len() < MAGIC.len() || b[at::MAGIC..at::MAGIC + MAGIC.len()] != MAGIC {
            return Err(HeaderError::NotAStore(
                "the file does not start with the annals magic".into(),
            ));
        }
        if b.len() < HEADER_LEN {
            return Err(HeaderError::Corrupt(format!(
                "the header is cut short at {} bytes",
                b.len()
            )));
        }
        let format_version = u32_at(b, at::VERSION);
        if format_version > FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(format_version));
        }
        let crc = u32_at(b, at::CRC);
        if crc32(&b[..at::CRC]) != crc {
            return Err(HeaderError::Corrupt("header checksum mismatch".into()));
        }
        if format_version < FORMAT_VERSION_1 {
            return Err(HeaderError::Corrupt(format!(
                "format version {format_version} does not exist"
            )));
        }
        let frame_key = u64_at(b, at::FRAME_KEY);
        let key_ok = (format_version == FORMAT_VERSION_1) == (frame_key == 0);
        let reserved = &b[at::RESERVED..at::CRC];
        if u32_at(b, at::HEADER_LEN) as usize != HEADER_LEN
            || reserved.iter().any(|&x| x != 0)
            || !key_ok
        {
            return Err(HeaderError::Corrupt("unexpected header layout".into()));
        }
        let segment_size = u64_at(b, at::SEGMENT_SIZE);
        check_segment_size(segment_size).map_err(HeaderError::Corrupt)?;
        Ok(FileHeader {
            format_version,
            store_id: id_at(b, at::STORE_ID),
            segment_size,
            created_at: u64_at(b, at::CREATED_AT),
            frame_key,
        })
    }
}

/// Checks that a segment size is within bounds and aligned.
pub fn check_segment_size(size: u64) -> Result<(), String> {
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size) || !size.is_multiple_of(SEGMENT_ALIGN)
    {
        return Err(format!(
            "segment size {size} must be a multiple of {SEGMENT_ALIGN} between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Frames

/// An event as the writer encodes it.
#[derive(Debug, Clone, Copy)]
pub struct EventRecord<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// Version of the event in its stream.
    pub version: u64,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// Event id.
    pub id: [u8; 16],
    /// Event type name.
    pub event_type: &'a str,
    /// Schema version of the event type.
    pub schema_version: u32,
    /// Correlation id.
    pub correlation_id: Option<[u8; 16]>,
    /// Causation id.
    pub causation_id: Option<[u8; 16]>,
    /// Whether the outbox should publish it.
    pub publish: bool,
    /// How the payload is encoded.
    pub encoding: PayloadEncoding,
    /// User metadata.
    pub metadata: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
}

/// Where a frame sits and what it links to: the header fields a writer chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLink {
    /// The frame's position.
    pub position: u64,
    /// Durable end of the log when written.
    pub durable: u64,
    /// Distance back to the previous frame (0 for the first frame of the log).
    pub prev: u32,
    /// Whether this frame ends its commit.
    pub commit_end: bool,
}

impl EventRecord<'_> {
    /// The frame length this event encodes to (a multiple of 8), or `None` if it does not fit
    /// the `u32` length field.
    pub fn frame_len(&self) -> Option<u64> {
        let ids = 16 * (self.correlation_id.is_some() as u64 + self.causation_id.is_some() as u64);
        let raw = (FRAME_HEADER_LEN + EVENT_FIXED_LEN) as u64
            + ids
            + self.stream.len() as u64
            + self.event_type.len() as u64
            + self.metadata.len() as u64
            + self.payload.len() as u64;
        let len = align(raw);
        (len <= u64::from(u32::MAX)).then_some(len)
    }
}

/// Appends the frame of one event to `buf`. Returns its length.
///
/// The caller has checked names and sizes (see [`EventRecord::frame_len`]); this is asserted.
pub fn encode_event(buf: &mut Vec<u8>, link: FrameLink, key: u64, e: &EventRecord<'_>) -> u64 {
    let len = e
        .frame_len()
        .expect("event frame length checked by the caller");
    assert!(!e.stream.is_empty() && e.stream.len() <= MAX_STREAM_NAME_LEN);
    assert!(!e.event_type.is_empty() && e.event_type.len() <= MAX_EVENT_TYPE_LEN);
    assert!(link.durable <= link.position && link.position.is_multiple_of(FRAME_ALIGN));
    let start = buf.len();
    let mut flags = 0;
    if link.commit_end {
        flags |= FLAG_COMMIT_END;
    }
    if e.correlation_id.is_some() {
        flags |= FLAG_CORRELATION;
    }
    if e.causation_id.is_some() {
        flags |= FLAG_CAUSATION;
    }
    if e.publish {
        flags |= FLAG_PUBLISH;
    }
    flags |= e.encoding.bits();
    put_header(buf, len as u32, link, key, KIND_EVENT, flags);
    buf.extend_from_slice(&e.version.to_le_bytes());
    buf.extend_from_slice(&e.timestamp.to_le_bytes());
    buf.extend_from_slice(&e.id);
    buf.extend_from_slice(&(e.stream.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(e.event_type.len() as u16).to_le_bytes());
    buf.extend_from_slice(&e.schema_version.to_le_bytes());
    buf.extend_from_slice(&(e.metadata.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
    // Right before the variable fields: the fixed part ends where the layout says.
    assert_eq!(buf.len() - start, event_at::IDS);
    for id in [e.correlation_id, e.causation_id].into_iter().flatten() {
        buf.extend_from_slice(&id);
    }
    buf.extend_from_slice(e.stream.as_bytes());
    buf.extend_from_slice(e.event_type.as_bytes());
    buf.extend_from_slice(e.metadata);
    buf.extend_from_slice(e.payload);
    finish_frame(buf, start, len)
}

/// Appends a seal frame to `buf`: the segment ends here and the log continues at `next`.
pub fn encode_seal(buf: &mut Vec<u8>, link: FrameLink, key: u64, next: u64) -> u64 {
    assert!(link.commit_end && next > link.position);
    assert!(link.durable <= link.position && link.position.is_multiple_of(FRAME_ALIGN));
    let start = buf.len();
    put_header(
        buf,
        SEAL_FRAME_LEN as u32,
        link,
        key,
        KIND_SEAL,
        FLAG_COMMIT_END,
    );
    buf.extend_from_slice(&next.to_le_bytes());
    finish_frame(buf, start, SEAL_FRAME_LEN)
}

fn put_header(buf: &mut Vec<u8>, len: u32, link: FrameLink, key: u64, kind: u8, flags: u8) {
    buf.extend_from_slice(&[0; 4]); // crc, filled in by finish_frame
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&(link.position ^ key).to_le_bytes());
    buf.extend_from_slice(&link.durable.to_le_bytes());
    buf.extend_from_slice(&link.prev.to_le_bytes());
    buf.extend_from_slice(&[kind, flags, 0, 0]);
    debug_assert_eq!(
        u64::from_le_bytes(
            buf[buf.len() - FRAME_HEADER_LEN + frame_at::POSITION..][..8]
                .try_into()
                .expect("8 bytes")
        ),
        link.position ^ key
    );
}

fn finish_frame(buf: &mut Vec<u8>, start: usize, len: u64) -> u64 {
    let end = start + len as usize;
    assert!(buf.len() <= end, "frame body longer than its length");
    buf.resize(end, 0);
    let crc = crc32(&buf[start + 4..end]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    len
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The header is all zeros: the end of written data.
    Empty,
    /// Fewer bytes than a frame header remain before the segment's end.
    Truncated,
    /// The length field is out of range or runs past the segment's end.
    BadLength(u32),
    /// The checksum does not match.
    BadChecksum,
    /// The frame says it belongs somewhere else.
    BadPosition(u64),
    /// A field is out of range or the body's lengths do not add up.
    BadLayout(&'static str),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Empty => write!(f, "no frame (zeroed bytes)"),
            FrameError::Truncated => write!(f, "frame header cut off by the segment end"),
            FrameError::BadLength(l) => write!(f, "frame length {l} out of range"),
            FrameError::BadChecksum => write!(f, "frame checksum mismatch"),
            FrameError::BadPosition(p) => write!(f, "frame claims position {p}"),
            FrameError::BadLayout(what) => write!(f, "bad frame layout: {what}"),
        }
    }
}

/// A checked frame: its header fields and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Total length (a multiple of 8).
    pub len: u32,
    /// The header fields the writer chose.
    pub link: FrameLink,
    /// The body.
    pub body: Body,
}

/// The body of a checked frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// An event; read its fields with [`EventRef`].
    Event,
    /// A seal: the log continues at this position.
    Seal {
        /// Start of the next segment.
        next: u64,
    },
    /// A gap: removed frames; the log continues at the frame's end.
    Gap {
        /// Position of the last frame the gap replaced.
        last_inner: u64,
    },
}

impl Frame {
    /// Where the frame after this one starts.
    pub fn next(&self) -> u64 {
        match self.body {
            Body::Seal { next } => next,
            Body::Event | Body::Gap { .. } => self.link.position + u64::from(self.len),
        }
    }

    /// The position the frame after this one links back to: the frame itself, or for a gap,
    /// the last frame it replaced.
    pub fn chain_last(&self) -> u64 {
        match self.body {
            Body::Gap { last_inner } => last_inner,
            _ => self.link.position,
        }
    }
}

/// Appends a gap frame to `buf` (its first [`GAP_HEADER_LEN`] bytes: the rest of the gap is
/// zeros): `len` bytes from `link.position` are removed frames, the last of which is at
/// `last_inner`.
pub fn encode_gap(buf: &mut Vec<u8>, link: FrameLink, key: u64, len: u32, last_inner: u64) {
    assert!(u64::from(len) >= GAP_HEADER_LEN && u64::from(len).is_multiple_of(FRAME_ALIGN));
    assert!(link.position <= last_inner && last_inner < link.position + u64::from(len));
    assert!(link.durable <= link.position && link.position.is_multiple_of(FRAME_ALIGN));
    let start = buf.len();
    let flags = if link.commit_end { FLAG_COMMIT_END } else { 0 };
    put_header(buf, len, link, key, KIND_GAP, flags);
    buf.extend_from_slice(&last_inner.to_le_bytes());
    let crc = crc32(&buf[start + 4..start + GAP_HEADER_LEN as usize]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Whether the frame header at the start of `bytes` says it is a gap (unchecked: enough to read
/// only its first [`GAP_HEADER_LEN`] bytes).
pub fn peek_gap(bytes: &[u8]) -> bool {
    bytes.get(frame_at::KIND) == Some(&KIND_GAP)
}

/// The fields of a checked event frame, read in place. Made from the bytes of a frame that
/// passed [`decode_frame`] as an event; every accessor stays in bounds (and never panics) even
/// if handed other bytes.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a>(&'a [u8]);

impl<'a> EventRef<'a> {
    /// A view of an event frame's bytes.
    pub fn new(frame: &'a [u8]) -> EventRef<'a> {
        EventRef(frame)
    }

    #[inline]
    fn u16(&self, at: usize) -> u16 {
        self.0
            .get(at..at + 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
    }

    #[inline]
    fn u32(&self, at: usize) -> u32 {
        self.0
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    }

    #[inline]
    fn u64(&self, at: usize) -> u64 {
        self.0
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }

    #[inline]
    fn id(&self, at: usize) -> [u8; 16] {
        self.0
            .get(at..at + 16)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 16])
    }

    #[inline]
    fn flags(&self) -> u8 {
        self.0.get(frame_at::FLAGS).copied().unwrap_or(0)
    }

    /// Version in its stream.
    #[inline]
    pub fn version(&self) -> u64 {
        self.u64(event_at::VERSION)
    }

    /// Nanoseconds since the Unix epoch.
    #[inline]
    pub fn timestamp(&self) -> u64 {
        self.u64(event_at::TIMESTAMP)
    }

    /// Event id.
    #[inline]
    pub fn event_id(&self) -> [u8; 16] {
        self.id(event_at::EVENT_ID)
    }

    /// Schema version of the event type.
    #[inline]
    pub fn schema_version(&self) -> u32 {
        self.u32(event_at::SCHEMA_VERSION)
    }

    /// Correlation id.
    #[inline]
    pub fn correlation_id(&self) -> Option<[u8; 16]> {
        (self.flags() & FLAG_CORRELATION != 0).then(|| self.id(event_at::IDS))
    }

    /// Causation id.
    #[inline]
    pub fn causation_id(&self) -> Option<[u8; 16]> {
        let at = event_at::IDS + 16 * usize::from(self.flags() & FLAG_CORRELATION != 0);
        (self.flags() & FLAG_CAUSATION != 0).then(|| self.id(at))
    }

    /// Whether the outbox publishes it.
    #[inline]
    pub fn publish(&self) -> bool {
        self.flags() & FLAG_PUBLISH != 0
    }

    /// How the payload is encoded.
    #[inline]
    pub fn encoding(&self) -> PayloadEncoding {
        PayloadEncoding::from_flags(self.flags()).unwrap_or_default()
    }

    /// Ranges of stream, type, metadata and payload bytes within the frame.
    #[inline]
    fn ranges(&self) -> [Range<usize>; 4] {
        let flags = self.flags();
        let ids = 16
            * (usize::from(flags & FLAG_CORRELATION != 0)
                + usize::from(flags & FLAG_CAUSATION != 0));
        let lens = [
            usize::from(self.u16(event_at::STREAM_LEN)),
            usize::from(self.u16(event_at::TYPE_LEN)),
            self.u32(event_at::METADATA_LEN) as usize,
            self.u32(event_at::PAYLOAD_LEN) as usize,
        ];
        let mut at = event_at::IDS + ids;
        lens.map(|n| {
            let r = at..at.saturating_add(n);
            at = r.end;
            r
        })
    }

    /// Checks that both names are UTF-8 (the writer only writes `&str`, and the checksum keeps
    /// them as written; recovery and verification check anyway, and the name accessors return
    /// `""` rather than invalid text).
    #[inline]
    pub fn check_names(&self) -> Result<(), FrameError> {
        let [stream, event_type, ..] = self.ranges();
        let ok = |r: Range<usize>| {
            self.0
                .get(r)
                .is_some_and(|b| std::str::from_utf8(b).is_ok())
        };
        if !ok(stream) {
            return Err(FrameError::BadLayout("stream name is not UTF-8"));
        }
        if !ok(event_type) {
            return Err(FrameError::BadLayout("event type is not UTF-8"));
        }
        Ok(())
    }

    #[inline]
    fn text(&self, r: Range<usize>) -> &'a str {
        self.0
            .get(r)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// Whether the event belongs to one of the engine's own `$` streams.
    #[inline]
    pub fn is_system(&self) -> bool {
        self.stream_bytes().first() == Some(&b'$')
    }

    /// Stream name, as bytes (no UTF-8 check).
    #[inline]
    pub fn stream_bytes(&self) -> &'a [u8] {
        let [r, ..] = self.ranges();
        self.0.get(r).unwrap_or_default()
    }

    /// Stream name.
    #[inline]
    pub fn stream(&self) -> &'a str {
        let [r, ..] = self.ranges();
        self.text(r)
    }

    /// Event type name.
    #[inline]
    pub fn event_type(&self) -> &'a str {
        let [_, r, ..] = self.ranges();
        self.text(r)
    }

    /// The event's fields as the writer takes them: decoding then encoding gives the same
    /// frame back (what the frame decoder's fuzz target checks).
    #[cfg(any(test, feature = "internals"))]
    pub fn to_record(&self) -> EventRecord<'a> {
        let bytes = self.0;
        EventRecord {
            stream: self.stream(),
            version: self.version(),
            timestamp: self.timestamp(),
            id: self.event_id(),
            event_type: self.event_type(),
            schema_version: self.schema_version(),
            correlation_id: self.correlation_id(),
            causation_id: self.causation_id(),
            publish: self.publish(),
            encoding: self.encoding(),
            metadata: &bytes[self.metadata_range()],
            payload: &bytes[self.payload_range()],
        }
    }

    /// Where the metadata is in the frame.
    #[inline]
    pub fn metadata_range(&self) -> Range<usize> {
        let [_, _, r, _] = self.ranges();
        if r.end <= self.0.len() { r } else { 0..0 }
    }

    /// Bytes of the frame (empty if the range is out of bounds).
    pub fn frame_slice(&self, range: Range<usize>) -> &'a [u8] {
        self.0.get(range).unwrap_or(&[])
    }

    /// Where the payload is in the frame.
    #[inline]
    pub fn payload_range(&self) -> Range<usize> {
        let [_, _, _, r] = self.ranges();
        if r.end <= self.0.len() { r } else { 0..0 }
    }
}

/// Reads the length field of the frame starting at `bytes`, unchecked: enough to know how many
/// bytes [`decode_frame`] will need. `None` if fewer than a header's bytes are given.
pub fn peek_len(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= FRAME_HEADER_LEN).then(|| u32_at(bytes, frame_at::LEN))
}

/// Decodes and checks the frame at the start of `bytes`, which must run at least to the end of
/// the frame's segment's usable space (or to the end of the frame, if that is known to be less).
/// `position` is where the bytes were read from, `key` the store's frame key.
pub fn decode_frame(bytes: &[u8], position: u64, key: u64) -> Result<Frame, FrameError> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let header = &bytes[..FRAME_HEADER_LEN];
    let len = u32_at(header, frame_at::LEN);
    if len == 0 && header.iter().all(|&b| b == 0) {
        return Err(FrameError::Empty);
    }
    let ulen = len as usize;
    let gap = header[frame_at::KIND] == KIND_GAP;
    // A gap's checked bytes are its first 40; the rest is zeros (maybe a hole), never read.
    let checked = if gap { GAP_HEADER_LEN as usize } else { ulen };
    if ulen < MIN_FRAME_LEN || !ulen.is_multiple_of(FRAME_ALIGN as usize) || checked > bytes.len() {
        return Err(FrameError::BadLength(len));
    }
    // The position is checked before the checksum: it is cheap, and it makes probing every
    // 8-byte boundary of garbage (recovery) cost a compare instead of a checksum each.
    let claimed = u64_at(header, frame_at::POSITION) ^ key;
    if claimed != position || !position.is_multiple_of(FRAME_ALIGN) {
        return Err(FrameError::BadPosition(claimed));
    }
    let frame = &bytes[..checked];
    if crc32(&frame[frame_at::LEN..]) != u32_at(header, frame_at::CRC) {
        return Err(FrameError::BadChecksum);
    }
    let link = FrameLink {
        position,
        durable: u64_at(header, frame_at::DURABLE),
        prev: u32_at(header, frame_at::PREV),
        commit_end: header[frame_at::FLAGS] & FLAG_COMMIT_END != 0,
    };
    if link.durable > position {
        return Err(FrameError::BadLayout("durable end beyond the frame"));
    }
    if u64::from(link.prev) > position {
        return Err(FrameError::BadLayout(
            "previous frame before the file start",
        ));
    }
    if header[frame_at::RESERVED..FRAME_HEADER_LEN] != [0, 0] {
        return Err(FrameError::BadLayout("reserved header bytes are not zero"));
    }
    let (kind, flags) = (header[frame_at::KIND], header[frame_at::FLAGS]);
    let body = match kind {
        KIND_EVENT => {
            if flags & !EVENT_FLAGS != 0 || PayloadEncoding::from_flags(flags).is_none() {
                return Err(FrameError::BadLayout("unknown event flags"));
            }
            check_event(frame)?;
            Body::Event
        }
        KIND_SEAL => {
            if flags != FLAG_COMMIT_END || ulen != SEAL_FRAME_LEN as usize {
                return Err(FrameError::BadLayout("malformed seal"));
            }
            let next = u64_at(frame, frame_at::BODY);
            if next <= position {
                return Err(FrameError::BadLayout("seal points backwards"));
            }
            Body::Seal { next }
        }
        KIND_GAP => {
            if flags & !FLAG_COMMIT_END != 0 {
                return Err(FrameError::BadLayout("unknown gap flags"));
            }
            let last_inner = u64_at(frame, frame_at::BODY);
            if last_inner < position || last_inner >= position + u64::from(len) {
                return Err(FrameError::BadLayout("gap's last frame outside the gap"));
            }
            Body::Gap { last_inner }
        }
        _ => return Err(FrameError::BadLayout("unknown frame kind")),
    };
    Ok(Frame { len, link, body })
}

/// Checks an event body: lengths in range and adding up to the frame, zero padding. (Whether
/// the names are UTF-8 is checked where they are read: [`EventRef::check_names`].)
fn check_event(frame: &[u8]) -> Result<(), FrameError> {
    if frame.len() < FRAME_HEADER_LEN + EVENT_FIXED_LEN {
        return Err(FrameError::BadLayout(
            "event body shorter than its fixed part",
        ));
    }
    let e = EventRef(frame);
    let [stream, event_type, _, payload] = e.ranges();
    if !(1..=MAX_STREAM_NAME_LEN).contains(&stream.len()) {
        return Err(FrameError::BadLayout("stream name length out of range"));
    }
    if !(1..=MAX_EVENT_TYPE_LEN).contains(&event_type.len()) {
        return Err(FrameError::BadLayout("event type length out of range"));
    }
    // Lengths come from disk: `ranges` adds them with saturation, so no sum wraps.
    if align(payload.end as u64) != frame.len() as u64 {
        return Err(FrameError::BadLayout(
            "event field lengths do not add up to the frame length",
        ));
    }
    // Padding: fewer than 8 bytes, all zero. Checked as the tail of one 8-byte word.
    let tail = frame.len() - payload.end;
    let last_word = u64_at(frame, frame.len() - 8);
    if tail > 0 && last_word >> (64 - 8 * tail) != 0 {
        return Err(FrameError::BadLayout("padding is not zero"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: u64 = 0x5EED_F00D_CAFE_0042;

    fn sample(payload: &[u8]) -> EventRecord<'_> {
        EventRecord {
            stream: "order-42",
            version: 7,
            timestamp: 1_700_000_000_123_456_789,
            id: [9; 16],
            event_type: "OrderPlaced",
            schema_version: 3,
            correlation_id: Some([1; 16]),
            causation_id: None,
            publish: true,
            encoding: PayloadEncoding::Json,
            metadata: b"{\"user\":1}",
            payload,
        }
    }

    fn link(position: u64) -> FrameLink {
        FrameLink {
            position,
            durable: position - 48,
            prev: 48,
            commit_end: true,
        }
    }

    #[test]
    fn header_round_trip() {
        let h = FileHeader {
            format_version: FORMAT_VERSION,
            store_id: [7; 16],
            segment_size: 1 << 20,
            created_at: 42,
            frame_key: KEY,
        };
        assert_eq!(FileHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn every_header_byte_change_is_detected() {
        let h = FileHeader {
            format_version: FORMAT_VERSION,
            store_id: [7; 16],
            segment_size: 1 << 20,
            created_at: 42,
            frame_key: KEY,
        };
        let good = h.encode();
        for i in 0..HEADER_LEN {
            for bit in 0..8 {
                let mut bad = good;
                bad[i] ^= 1 << bit;
                assert!(
                    FileHeader::decode(&bad).is_err(),
                    "byte {i} bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn foreign_and_newer_headers_are_told_apart() {
        assert!(matches!(
            FileHeader::decode(b"SQLite format 3\0 and more bytes to make it long enough......"),
            Err(HeaderError::NotAStore(_))
        ));
        let mut newer = FileHeader {
            format_version: FORMAT_VERSION,
            store_id: [0; 16],
            segment_size: 1 << 20,
            created_at: 0,
            frame_key: KEY,
        }
        .encode();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert_eq!(
            FileHeader::decode(&newer),
            Err(HeaderError::UnsupportedVersion(FORMAT_VERSION + 1))
        );
    }

    #[test]
    fn version_1_headers_have_no_key_and_version_2_headers_have_one() {
        let v1 = FileHeader {
            format_version: FORMAT_VERSION_1,
            store_id: [3; 16],
            segment_size: 1 << 20,
            created_at: 9,
            frame_key: 0,
        };
        assert_eq!(FileHeader::decode(&v1.encode()), Ok(v1));
        let keyed_v1 = FileHeader {
            frame_key: KEY,
            ..v1
        };
        assert!(matches!(
            FileHeader::decode(&keyed_v1.encode()),
            Err(HeaderError::Corrupt(_))
        ));
        let unkeyed_v2 = FileHeader {
            format_version: FORMAT_VERSION,
            ..v1
        };
        assert!(matches!(
            FileHeader::decode(&unkeyed_v2.encode()),
            Err(HeaderError::Corrupt(_))
        ));
        let v0 = FileHeader {
            format_version: 0,
            ..v1
        };
        assert!(matches!(
            FileHeader::decode(&v0.encode()),
            Err(HeaderError::Corrupt(_))
        ));
    }

    #[test]
    fn a_frame_reads_only_under_its_own_key() {
        let mut buf = vec![];
        encode_event(&mut buf, link(4096), KEY, &sample(b"p"));
        assert!(decode_frame(&buf, 4096, KEY).is_ok());
        assert!(matches!(
            decode_frame(&buf, 4096, 0),
            Err(FrameError::BadPosition(_))
        ));
        assert!(matches!(
            decode_frame(&buf, 4096, KEY ^ 1),
            Err(FrameError::BadPosition(_))
        ));
        // A version 1 frame (key 0) holds its plain position.
        let mut plain = vec![];
        encode_event(&mut plain, link(4096), 0, &sample(b"p"));
        assert_eq!(u64::from_le_bytes(plain[8..16].try_into().unwrap()), 4096);
        assert!(decode_frame(&plain, 4096, 0).is_ok());
        assert!(decode_frame(&plain, 4096, KEY).is_err());
    }

    #[test]
    fn event_round_trip() {
        let e = sample(b"hello world");
        let mut buf = vec![];
        let len = encode_event(&mut buf, link(4096), KEY, &e);
        assert_eq!(len as usize, buf.len());
        assert_eq!(len % FRAME_ALIGN, 0);
        assert_eq!(Some(len), e.frame_len());
        let frame = decode_frame(&buf, 4096, KEY).unwrap();
        assert_eq!(frame.link, link(4096));
        assert_eq!(frame.body, Body::Event);
        let ev = EventRef::new(&buf);
        let mut again = vec![];
        encode_event(&mut again, link(4096), KEY, &ev.to_record());
        assert_eq!(again, buf, "decoding then encoding gives the frame back");
        assert_eq!(ev.stream(), "order-42");
        assert_eq!(ev.event_type(), "OrderPlaced");
        assert_eq!(&buf[ev.payload_range()], b"hello world");
        assert_eq!(&buf[ev.metadata_range()], b"{\"user\":1}");
        assert_eq!(
            (
                ev.version(),
                ev.timestamp(),
                ev.event_id(),
                ev.schema_version()
            ),
            (7, 1_700_000_000_123_456_789, [9; 16], 3)
        );
        assert_eq!(
            (ev.correlation_id(), ev.causation_id(), ev.publish()),
            (Some([1; 16]), None, true)
        );
        let both = EventRecord {
            causation_id: Some([2; 16]),
            ..e
        };
        let mut buf = vec![];
        encode_event(&mut buf, link(4096), KEY, &both);
        assert!(decode_frame(&buf, 4096, KEY).is_ok());
        let ev = EventRef::new(&buf);
        assert_eq!(
            (ev.correlation_id(), ev.causation_id()),
            (Some([1; 16]), Some([2; 16]))
        );
        assert_eq!(&buf[ev.payload_range()], b"hello world");
    }

    #[test]
    fn seal_round_trip() {
        let mut buf = vec![];
        encode_seal(&mut buf, link(8192), KEY, 1 << 20);
        let frame = decode_frame(&buf, 8192, KEY).unwrap();
        assert_eq!(frame.body, Body::Seal { next: 1 << 20 });
        assert_eq!(frame.len as u64, SEAL_FRAME_LEN);
    }

    #[test]
    fn every_single_byte_change_of_a_frame_is_detected() {
        for payload in [&b""[..], b"x", b"0123456789abcdef0123"] {
            let mut buf = vec![];
            encode_event(&mut buf, link(4096), KEY, &sample(payload));
            let mut seal = vec![];
            encode_seal(&mut seal, link(8192), KEY, 1 << 20);
            for (frame, pos) in [(buf, 4096), (seal, 8192)] {
                for i in 0..frame.len() {
                    for delta in [1u8, 0x80, 0xff] {
                        let mut bad = frame.clone();
                        bad[i] = bad[i].wrapping_add(delta);
                        assert!(
                            decode_frame(&bad, pos, KEY).is_err(),
                            "change {delta:#x} at byte {i} of a {}-byte frame went unnoticed",
                            frame.len()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn frames_are_checked_against_where_they_were_read() {
        let mut buf = vec![];
        encode_event(&mut buf, link(4096), KEY, &sample(b"p"));
        assert_eq!(
            decode_frame(&buf, 4104, KEY),
            Err(FrameError::BadPosition(4096))
        );
        assert_eq!(
            decode_frame(&buf[..buf.len() - 8], 4096, KEY),
            Err(FrameError::BadLength(buf.len() as u32))
        );
        assert_eq!(decode_frame(&[0; 64], 4096, KEY), Err(FrameError::Empty));
        assert_eq!(
            decode_frame(&[0; 16], 4096, KEY),
            Err(FrameError::Truncated)
        );
    }

    #[test]
    fn a_huge_length_is_rejected_before_use() {
        let mut buf = vec![];
        encode_event(&mut buf, link(4096), KEY, &sample(b"p"));
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_frame(&buf, 4096, KEY),
            Err(FrameError::BadLength(u32::MAX))
        );
    }
}
