//! Snapshots of streams, kept in the log as the engine's own records (see
//! [`crate::log::records`]): an optimisation for the domain floor, never a source of truth.

use super::Store;
use super::backend::Backend;
use crate::error::Result;
use crate::event::AppendResult;

impl Store {
    /// Stores a snapshot of the state of `stream` at `version` (in the log, in the reserved
    /// stream `$snapshot-STREAM`): `state` is its encoding, `schema` the version of that
    /// encoding. Snapshots are an optimisation for the domain floor, never a source of truth.
    pub fn save_snapshot(
        &self,
        stream: &str,
        version: u64,
        schema: u32,
        state: Vec<u8>,
    ) -> Result<AppendResult> {
        Backend::store_snapshot(self, stream, version, schema, state)
    }

    /// The latest snapshot of `stream`: (version it covers, schema, state), if any.
    pub fn load_snapshot(&self, stream: &str) -> Result<Option<(u64, u32, bytes::Bytes)>> {
        Backend::latest_snapshot(self, stream)
    }
}
