//! The log: one file of fixed-size segments holding checksummed frames.
//!
//! - `format`: the byte layout (the specification);
//! - `reader`: reading frames at positions (mapped sealed segments, chunked positioned reads
//!   elsewhere);
//! - `writer`: staging commits, sealing and starting segments, writing and syncing;
//! - `records`: the engine's own records (the `$` streams), specified;
//! - `journal`: the maintenance journal in the header block, which makes rewriting frames
//!   into gaps (scavenge, erasure) crash-safe;
//! - `live`: the live file, where the writer publishes the durable end for read-only opens;
//! - `recovery`: the open-time scan that finds the end of the log and tells a torn tail from
//!   corruption.

pub mod format;
pub(crate) mod journal;
pub mod live;
pub(crate) mod reader;
pub mod records;
pub(crate) mod recovery;
pub(crate) mod sync;
pub(crate) mod writer;

use format::{HEADER_BLOCK, SEAL_FRAME_LEN};

/// Where segments are, for one segment size, and the store's frame key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub segment_size: u64,
    /// The key frame positions are stored under (see [`format`]).
    pub key: u64,
}

impl Layout {
    /// Position of the first frame of the log.
    pub const FIRST: u64 = HEADER_BLOCK;

    /// The segment holding `position` (segment 0 for positions in the header block).
    pub fn segment_of(&self, position: u64) -> u64 {
        position.saturating_sub(HEADER_BLOCK) / self.segment_size
    }

    /// Where segment `segment` starts (saturating: no segment lies past `u64::MAX`).
    pub fn segment_start(&self, segment: u64) -> u64 {
        segment
            .saturating_mul(self.segment_size)
            .saturating_add(HEADER_BLOCK)
    }

    /// End (exclusive) of the segment holding `position`.
    pub fn segment_end(&self, position: u64) -> u64 {
        self.segment_start(self.segment_of(position) + 1)
    }

    /// End of the space event frames may use in the segment holding `position` (room for a
    /// seal is kept after it).
    pub fn usable_end(&self, position: u64) -> u64 {
        self.segment_end(position) - SEAL_FRAME_LEN
    }

    /// Largest commit (sum of frame lengths) that fits in one segment.
    pub fn max_commit_len(&self) -> u64 {
        self.segment_size - SEAL_FRAME_LEN
    }
}
