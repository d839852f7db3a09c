//! Snapshots of streams, kept in the log as the engine's own records (see
//! [`crate::log::records`]): an optimisation for the domain floor, never a source of truth.

use super::Store;
use super::backend::{Backend, Part};
use crate::error::Result;
use crate::event::{AppendResult, NewEvent};
use crate::log::records;
use crate::values::ExpectedVersion;

/// Appends a snapshot record to `$snapshot-STREAM` on any backend.
pub(crate) fn save<B: Backend + ?Sized>(
    store: &B,
    stream: &str,
    version: u64,
    schema: u32,
    state: Vec<u8>,
) -> Result<AppendResult> {
    let event = NewEvent::new(records::SNAPSHOT, state)
        .with_schema_version(schema)
        .with_metadata(records::encode_snapshot_version(version).to_vec());
    let mut r = store.transaction(vec![Part::new(
        records::snapshot_stream(stream),
        ExpectedVersion::Any,
        [event],
    )])?;
    Ok(r.pop().expect("one result per part"))
}

/// The newest snapshot record of `stream` on any backend.
pub(crate) fn load<B: Backend + ?Sized>(
    store: &B,
    stream: &str,
) -> Result<Option<(u64, u32, bytes::Bytes)>> {
    let Some(e) = store.last_of(&records::snapshot_stream(stream))? else {
        return Ok(None);
    };
    let Some(version) = records::decode_snapshot_version(e.metadata()) else {
        return Ok(None);
    };
    Ok(Some((version, e.schema_version(), e.payload_bytes())))
}

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
        save(self, stream, version, schema, state)
    }

    /// The latest snapshot of `stream`: (version it covers, schema, state), if any.
    pub fn load_snapshot(&self, stream: &str) -> Result<Option<(u64, u32, bytes::Bytes)>> {
        load(self, stream)
    }
}
