//! The log: one file of fixed-size segments holding checksummed frames.
//!
//! - `format`: the byte layout (the specification);
//! - `reader`: reading frames at positions (mapped sealed segments, chunked positioned reads
//!   elsewhere);
//! - `writer`: staging commits, sealing and starting segments, writing and syncing;
//! - `recovery`: the open-time scan that finds the end of the log and tells a torn tail from
//!   corruption.

pub mod format;
pub(crate) mod reader;
pub(crate) mod recovery;
pub(crate) mod writer;

use format::{HEADER_BLOCK, SEAL_FRAME_LEN};

/// Where segments are, for one segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub segment_size: u64,
}

impl Layout {
    /// Position of the first frame of the log.
    pub const FIRST: u64 = HEADER_BLOCK;

    pub fn segment_of(&self, position: u64) -> u64 {
        debug_assert!(position >= HEADER_BLOCK);
        (position - HEADER_BLOCK) / self.segment_size
    }

    pub fn segment_start(&self, segment: u64) -> u64 {
        HEADER_BLOCK + segment * self.segment_size
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
