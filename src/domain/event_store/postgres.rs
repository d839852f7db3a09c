//! The domain's [`EventStore`] on the PostgreSQL backend, through its public API only (the
//! [`Backend`] trait and the `PgStore`'s typed helpers).

use super::{EventStore, Part};
use crate::backend::Backend;
use crate::pg::PgStore;
use crate::typed::Events;
use crate::{AppendResult, Direction, NewEvent, Position, RecordedEvent, Result};

/// Events one read takes (what a visit holds in memory at once).
const PAGE: usize = 10_000;

impl EventStore for PgStore {
    fn append(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
        self.transaction(parts)
    }

    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<()>,
    ) -> Result<()> {
        let mut from = from;
        loop {
            let page = self.read_stream_page(stream, from, Direction::Forwards, PAGE)?;
            page.iter().try_for_each(&mut *visit)?;
            match page.last() {
                Some(last) if page.len() == PAGE => from = last.version() + 1,
                _ => return Ok(()),
            }
        }
    }

    fn read_event_type(
        &self,
        event_type: &str,
        from: Position,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<bool>,
    ) -> Result<()> {
        let mut from = from;
        loop {
            let page = self.read_event_type_page(event_type, from, Direction::Forwards, PAGE)?;
            for e in &page {
                if !visit(e)? {
                    return Ok(());
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => from = last.next_position(),
                _ => return Ok(()),
            }
        }
    }

    fn last_event(&self, stream: &str) -> Result<Option<RecordedEvent>> {
        self.last_of(stream)
    }

    fn new_event<E: Events>(&self, event: &E) -> Result<NewEvent> {
        PgStore::new_event(self, event)
    }

    fn decode<E: Events>(&self, event: &RecordedEvent) -> Result<E> {
        PgStore::decode(self, event)
    }

    fn register_events<E: Events>(&self) {
        PgStore::register_events::<E>(self)
    }

    fn save_snapshot(&self, stream: &str, version: u64, schema: u32, state: Vec<u8>) -> Result<()> {
        self.store_snapshot(stream, version, schema, state)
            .map(drop)
    }

    fn load_snapshot(&self, stream: &str) -> Result<Option<(u64, u32, bytes::Bytes)>> {
        self.latest_snapshot(stream)
    }
}
