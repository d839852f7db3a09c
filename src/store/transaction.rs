//! Atomic multi-stream appends.

use super::Store;
use super::commit::Part;
use crate::error::Error;
use crate::error::Result;
use crate::event::{AppendResult, NewEvent};
use crate::names::check_stream_name;
use crate::values::ExpectedVersion;

/// An atomic multi-stream append under construction; see [`Store::transaction`].
#[must_use = "a transaction does nothing until committed"]
pub struct Transaction<'a> {
    store: &'a Store,
    parts: Vec<Result<Part>>,
}

impl<'a> Transaction<'a> {
    /// The store this transaction commits to.
    pub(crate) fn store(&self) -> &'a Store {
        self.store
    }

    /// An empty transaction on `store`.
    pub(super) fn new(store: &'a Store) -> Transaction<'a> {
        Transaction {
            store,
            parts: Vec::new(),
        }
    }
}

impl Transaction<'_> {
    /// Adds events for one stream, to be checked against `expected` at commit. The same stream
    /// may appear in several parts; each part's check sees the parts before it.
    pub fn append(
        mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Self {
        let part = check_stream_name(stream, false).and_then(|()| {
            self.store
                .engine
                .part(stream, expected, events.into_iter().collect())
        });
        self.parts.push(part);
        self
    }

    /// Adds events for one of the `$` streams reserved for the layers built on the store (the
    /// domain floor keeps its command-relay records there). Applications should not write them.
    pub fn append_reserved(
        mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Self {
        let part = check_stream_name(stream, true).and_then(|()| {
            self.store
                .engine
                .part(stream, expected, events.into_iter().collect())
        });
        self.parts.push(part);
        self
    }

    /// Checks every part and writes them all as one commit, or nothing. Returns one result per
    /// part, in order. Parts with no events are only checked; a transaction with no parts is a
    /// no-op.
    pub fn commit(self) -> Result<Vec<AppendResult>> {
        let parts = self.parts.into_iter().collect::<Result<Vec<_>>>()?;
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let total: u64 = parts.iter().map(|p| p.frames_len).sum();
        let limit = self.store.engine.layout.max_commit_len();
        if total > limit {
            return Err(Error::TooLarge {
                what: "transaction (encoded)",
                size: total,
                limit,
            });
        }
        self.store.engine.commit(parts)
    }
}
