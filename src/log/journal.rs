//! The maintenance journal: how a scavenge or an erasure rewrites frames **below** the end of
//! the log without ever leaving a frame half-written. **This module is its specification.**
//!
//! Turning frames into a gap (see "Gap body" in `src/log/format.rs`) overwrites the header of
//! the first frame and zeroes (or punches out) the rest. A write may tear at any byte, and a
//! torn header in the middle of the log would read as damage. So every rewrite is announced
//! first: the full list of gaps about to be written (their header fields) goes durably into a
//! journal slot in the file's header block; only then are the gaps written and the file
//! synced. An open for writing finds the newest valid slot and writes its gaps again before
//! recovery reads a frame. Writing a gap again is harmless: gaps are only made of frames no read
//! returns, and those never come back.
//!
//! # Slots (in the 4096-byte header block, after the file header)
//!
//! Two slots, at bytes 1024 and 2560, 1536 bytes each. Intent number `n` goes to slot
//! `n % 2`, so a torn write leaves the other slot (the intent before, already carried out)
//! valid.
//!
//! | offset | size | field    | meaning                                             |
//! |-------:|-----:|----------|-----------------------------------------------------|
//! | 0      | 8    | magic    | `annalsJ1`                                          |
//! | 8      | 8    | sequence | intent number, from 1                               |
//! | 16     | 4    | body_len | bytes of body                                       |
//! | 20     | 4    | crc      | CRC-32 of bytes 0..20 followed by the body          |
//! | 24     | ..   | body     | below                                               |
//!
//! Body: `kind` (1 byte: 0 = nothing pending, 1 = gaps, 2 = gaps of an erasure), then for
//! kind 2 the erasure (16-byte id of its record, 8-byte version it erases below, 2-byte stream
//! name length, the name), then a 2-byte count of gaps and the gaps, 33 bytes each: `start`
//! (8), `len` (4), `durable` (8), `prev` (4), `flags` (1: bit 0 commit end), `last_inner` (8).
//!
//! An erasure's intent also says which stream it erases: after writing its gaps again, the
//! open finishes the erasure (every frame of the stream below the version, if the erasure's
//! record is in the log) before the store is handed out.

use std::io;

use super::format::{FrameLink, GAP_HEADER_LEN, HEADER_LEN, encode_gap};
use crate::storage::StorageFile;

/// Where the two slots start.
pub const SLOTS: [u64; 2] = [1024, 2560];
/// Length of a slot.
pub const SLOT_LEN: usize = 1536;
const MAGIC: [u8; 8] = *b"annalsJ1";
const SLOT_HEADER: usize = 24;
const GAP_LEN: usize = 33;
/// Longest stream name (as in the frame format).
const MAX_NAME: usize = super::format::MAX_STREAM_NAME_LEN;

// The slots fit in the header block, after the file header.
const _: () = {
    assert!(SLOTS[0] as usize >= HEADER_LEN);
    assert!(SLOTS[0] as usize + SLOT_LEN <= SLOTS[1] as usize);
    assert!(SLOTS[1] + SLOT_LEN as u64 <= super::format::HEADER_BLOCK);
    // An erasure of the longest name still has room for gaps.
    assert!(SLOT_HEADER + 1 + 16 + 8 + 2 + MAX_NAME + 2 + 8 * GAP_LEN <= SLOT_LEN);
};

/// One gap to write: the header fields of the frame that replaces `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapSpec {
    /// Position of the first removed frame.
    pub start: u64,
    /// Bytes removed.
    pub len: u32,
    /// The first removed frame's `durable` field.
    pub durable: u64,
    /// The first removed frame's `prev` field.
    pub prev: u32,
    /// Whether the last removed frame ended its commit.
    pub commit_end: bool,
    /// Position of the last removed frame.
    pub last_inner: u64,
}

impl GapSpec {
    /// End of the gap.
    pub fn end(&self) -> u64 {
        self.start + u64::from(self.len)
    }
}

/// The erasure an intent belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// Id of the erasure's record (`annals.StreamErased`).
    pub record_id: u128,
    /// Events below this version are erased.
    pub before: u64,
    /// The stream.
    pub stream: String,
}

/// What a slot says is (or was last) being done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// For an erasure's gaps, the erasure.
    pub erasure: Option<Erasure>,
    /// The gaps (empty: nothing pending).
    pub gaps: Vec<GapSpec>,
}

impl Intent {
    /// How many gaps fit in one intent (with this erasure).
    pub fn capacity(erasure: Option<&Erasure>) -> usize {
        let fixed = SLOT_HEADER + 1 + 2 + erasure.map_or(0, |e| 16 + 8 + 2 + e.stream.len());
        (SLOT_LEN - fixed) / GAP_LEN
    }

    fn encode(&self, sequence: u64) -> Vec<u8> {
        assert!(self.gaps.len() <= Self::capacity(self.erasure.as_ref()));
        let mut body = Vec::new();
        match &self.erasure {
            None => body.push(if self.gaps.is_empty() { 0 } else { 1 }),
            Some(e) => {
                assert!(!e.stream.is_empty() && e.stream.len() <= MAX_NAME);
                body.push(2);
                body.extend_from_slice(&e.record_id.to_le_bytes());
                body.extend_from_slice(&e.before.to_le_bytes());
                body.extend_from_slice(&(e.stream.len() as u16).to_le_bytes());
                body.extend_from_slice(e.stream.as_bytes());
            }
        }
        body.extend_from_slice(&(self.gaps.len() as u16).to_le_bytes());
        for g in &self.gaps {
            body.extend_from_slice(&g.start.to_le_bytes());
            body.extend_from_slice(&g.len.to_le_bytes());
            body.extend_from_slice(&g.durable.to_le_bytes());
            body.extend_from_slice(&g.prev.to_le_bytes());
            body.push(u8::from(g.commit_end));
            body.extend_from_slice(&g.last_inner.to_le_bytes());
        }
        let mut slot = Vec::with_capacity(SLOT_LEN);
        slot.extend_from_slice(&MAGIC);
        slot.extend_from_slice(&sequence.to_le_bytes());
        slot.extend_from_slice(&(body.len() as u32).to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&slot[..20]);
        h.update(&body);
        slot.extend_from_slice(&h.finalize().to_le_bytes());
        slot.extend_from_slice(&body);
        assert!(slot.len() <= SLOT_LEN);
        slot.resize(SLOT_LEN, 0);
        slot
    }

    /// Decodes a slot: `None` unless it is a valid, checksummed intent.
    fn decode(slot: &[u8]) -> Option<(u64, Intent)> {
        if slot.len() < SLOT_HEADER || slot[..8] != MAGIC {
            return None;
        }
        let sequence = u64::from_le_bytes(slot[8..16].try_into().ok()?);
        let body_len = u32::from_le_bytes(slot[16..20].try_into().ok()?) as usize;
        let body = slot.get(SLOT_HEADER..SLOT_HEADER.checked_add(body_len)?)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&slot[..20]);
        h.update(body);
        if h.finalize() != u32::from_le_bytes(slot[20..24].try_into().ok()?) {
            return None;
        }
        let mut r = Fields(body);
        let kind = r.take(1)?[0];
        let erasure = match kind {
            0 | 1 => None,
            2 => {
                let record_id = u128::from_le_bytes(r.take(16)?.try_into().ok()?);
                let before = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
                let len = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
                let stream = std::str::from_utf8(r.take(len)?).ok()?.to_owned();
                Some(Erasure {
                    record_id,
                    before,
                    stream,
                })
            }
            _ => return None,
        };
        let n = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
        let mut gaps = Vec::with_capacity(n.min(SLOT_LEN / GAP_LEN));
        for _ in 0..n {
            let g = r.take(GAP_LEN)?;
            let spec = GapSpec {
                start: u64::from_le_bytes(g[0..8].try_into().ok()?),
                len: u32::from_le_bytes(g[8..12].try_into().ok()?),
                durable: u64::from_le_bytes(g[12..20].try_into().ok()?),
                prev: u32::from_le_bytes(g[20..24].try_into().ok()?),
                commit_end: g[24] & 1 != 0,
                last_inner: u64::from_le_bytes(g[25..33].try_into().ok()?),
            };
            // Right after reading: the fields a gap header needs are in range.
            let sound = u64::from(spec.len) >= GAP_HEADER_LEN
                && spec.start.is_multiple_of(8)
                && u64::from(spec.len).is_multiple_of(8)
                && spec.durable <= spec.start
                && (spec.start..spec.end()).contains(&spec.last_inner);
            if !sound {
                return None;
            }
            gaps.push(spec);
        }
        Some((sequence, Intent { erasure, gaps }))
    }
}

struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
}

/// The newest valid intent in the file, with its sequence number.
pub fn read(file: &dyn StorageFile) -> io::Result<Option<(u64, Intent)>> {
    let mut newest: Option<(u64, Intent)> = None;
    for at in SLOTS {
        let mut slot = vec![0u8; SLOT_LEN];
        match file.read_exact_at(&mut slot, at) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(e),
        }
        if let Some((seq, intent)) = Intent::decode(&slot)
            && newest.as_ref().is_none_or(|(n, _)| seq > *n)
        {
            newest = Some((seq, intent));
        }
    }
    Ok(newest)
}

/// Writes intent number `sequence` durably (into slot `sequence % 2`).
pub fn write(file: &dyn StorageFile, sequence: u64, intent: &Intent) -> io::Result<()> {
    let slot = intent.encode(sequence);
    file.write_all_at_durable(&slot, SLOTS[(sequence % 2) as usize])
}

/// Writes the gaps: each header, then zeros over the rest (whole 4096-byte blocks are punched
/// out, giving their space back), then syncs. Returns the bytes punched.
pub fn write_gaps(file: &dyn StorageFile, key: u64, gaps: &[GapSpec]) -> io::Result<u64> {
    let mut punched = 0;
    let mut header = Vec::with_capacity(GAP_HEADER_LEN as usize);
    for g in gaps {
        header.clear();
        let link = FrameLink {
            position: g.start,
            durable: g.durable,
            prev: g.prev,
            commit_end: g.commit_end,
        };
        encode_gap(&mut header, link, key, g.len, g.last_inner);
        // Right before writing: the header says what the intent says.
        assert_eq!(header.len() as u64, GAP_HEADER_LEN);
        file.write_all_at(&header, g.start)?;
        let (from, to) = (g.start + GAP_HEADER_LEN, g.end());
        let (hole_from, hole_to) = (from.next_multiple_of(BLOCK), to / BLOCK * BLOCK);
        if hole_from < hole_to {
            crate::storage::write_zeros(file, from, hole_from)?;
            file.punch_hole(hole_from, hole_to - hole_from)?;
            punched += hole_to - hole_from;
            crate::storage::write_zeros(file, hole_to, to)?;
        } else {
            crate::storage::write_zeros(file, from, to)?;
        }
    }
    file.sync_data()?;
    Ok(punched)
}

/// The unit of space a file system gives back.
pub const BLOCK: u64 = 4096;

/// The bytes of `[start, end)` that punching gives back (whole blocks after a gap's header).
pub fn reclaimable(start: u64, end: u64) -> u64 {
    let (from, to) = (
        (start + GAP_HEADER_LEN).next_multiple_of(BLOCK),
        end / BLOCK * BLOCK,
    );
    to.saturating_sub(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{CrashPolicy, FaultFs, FileSystem, MemoryFs, OpenMode};
    use std::path::Path;

    fn gap(start: u64, len: u32) -> GapSpec {
        GapSpec {
            start,
            len,
            durable: start - 8,
            prev: 96,
            commit_end: true,
            last_inner: start + u64::from(len) - 96,
        }
    }

    fn erasure() -> Erasure {
        Erasure {
            record_id: 7 << 64 | 9,
            before: 12,
            stream: "user-42".into(),
        }
    }

    #[test]
    fn intents_round_trip() {
        for intent in [
            Intent {
                erasure: None,
                gaps: vec![],
            },
            Intent {
                erasure: None,
                gaps: vec![gap(4096, 8192), gap(20480, 200)],
            },
            Intent {
                erasure: Some(erasure()),
                gaps: vec![gap(4096, 400)],
            },
        ] {
            let slot = intent.encode(5);
            assert_eq!(slot.len(), SLOT_LEN);
            assert_eq!(Intent::decode(&slot), Some((5, intent)));
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_in_the_used_part_is_refused() {
        let slot = Intent {
            erasure: Some(erasure()),
            gaps: vec![gap(4096, 8192)],
        }
        .encode(3);
        let used = SLOT_HEADER + 1 + 16 + 8 + 2 + 7 + 2 + GAP_LEN;
        for i in 0..used {
            let mut bad = slot.clone();
            bad[i] ^= 0x10;
            assert_eq!(Intent::decode(&bad), None, "byte {i}");
        }
        assert_eq!(Intent::decode(&[0u8; SLOT_LEN]), None);
    }

    #[test]
    fn the_capacity_is_what_fits() {
        let full = Intent {
            erasure: None,
            gaps: vec![gap(4096, 400); Intent::capacity(None)],
        };
        assert_eq!(Intent::decode(&full.encode(1)).unwrap().1, full);
        let long = Erasure {
            stream: "s".repeat(MAX_NAME),
            ..erasure()
        };
        let n = Intent::capacity(Some(&long));
        assert!(n >= 8, "{n}");
        let full = Intent {
            erasure: Some(long),
            gaps: vec![gap(4096, 400); n],
        };
        assert_eq!(Intent::decode(&full.encode(1)).unwrap().1, full);
    }

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_one_leaves_the_one_before() {
        let fs = FaultFs::new();
        let f = fs.open(Path::new("/j"), OpenMode::CreateNew).unwrap();
        f.set_len(4096).unwrap();
        assert_eq!(read(&*f).unwrap(), None);
        let first = Intent {
            erasure: None,
            gaps: vec![gap(8192, 400)],
        };
        write(&*f, 1, &first).unwrap();
        let second = Intent {
            erasure: None,
            gaps: vec![gap(16384, 800)],
        };
        write(&*f, 2, &second).unwrap();
        assert_eq!(read(&*f).unwrap(), Some((2, second.clone())));
        // A third intent torn in the middle (over the first): the second still stands.
        let torn = Intent {
            erasure: None,
            gaps: vec![gap(32768, 400); 3],
        }
        .encode(3);
        f.write_all_at(&torn[..60], SLOTS[1]).unwrap();
        let crashed = fs.crash(CrashPolicy::KeepAll);
        let g = crashed.open(Path::new("/j"), OpenMode::Existing).unwrap();
        assert_eq!(read(&*g).unwrap(), Some((2, second)));
    }

    #[test]
    fn gaps_are_written_zeroed_and_decode_as_gaps() {
        let fs = MemoryFs::new();
        let f = fs.open(Path::new("/g"), OpenMode::CreateNew).unwrap();
        f.write_all_at(&[0xAB; 20000], 4096).unwrap();
        let g = GapSpec {
            start: 4096,
            len: 16384,
            durable: 0,
            prev: 0,
            commit_end: true,
            last_inner: 4096 + 8000,
        };
        let punched = write_gaps(&*f, 77, &[g]).unwrap();
        assert_eq!(punched, reclaimable(4096, 4096 + 16384));
        assert_eq!(punched, 12288);
        let mut all = vec![0u8; 16384];
        f.read_exact_at(&mut all, 4096).unwrap();
        assert!(all[GAP_HEADER_LEN as usize..].iter().all(|&b| b == 0));
        let frame = super::super::format::decode_frame(&all, 4096, 77).unwrap();
        assert_eq!(frame.next(), 4096 + 16384);
        assert_eq!(frame.chain_last(), 4096 + 8000);
        // Outside the gap nothing changed.
        let mut after = vec![0u8; 4096 + 20000 - (4096 + 16384)];
        f.read_exact_at(&mut after, 4096 + 16384).unwrap();
        assert!(after.iter().all(|&b| b == 0xAB));
    }
}
