//! [`InMemoryEventStore`]: events in memory, with annals' checks, for tests of domain code.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::{EventStore, Part};
use crate::typed::{Codec, Events, Upcasters};
use crate::{AppendResult, Error, NewEvent, Position, RecordedEvent, Result};

#[derive(Default)]
struct Memory {
    streams: HashMap<String, Vec<RecordedEvent>>,
    log: Vec<RecordedEvent>,
    snapshots: HashMap<String, (u64, u32, bytes::Bytes)>,
    /// Deleted streams: versions below this are gone.
    deleted: HashMap<String, u64>,
}

/// An event store in memory, with the same checks as annals (expected versions, atomic
/// multi-stream appends): for tests of domain code.
#[derive(Default)]
pub struct InMemoryEventStore {
    memory: Mutex<Memory>,
    codec: Codec,
    upcasters: Upcasters,
}

impl Memory {
    /// Where the next event goes.
    /// A stream's version for expected-version checks (`None`: no stream, or deleted).
    fn version(&self, stream: &str) -> Option<u64> {
        let len = self.streams.get(stream).map_or(0, |s| s.len() as u64);
        let deleted = self.deleted.get(stream).copied().unwrap_or(0);
        (len > deleted).then(|| len - 1)
    }

    /// Whether the event is readable (not deleted).
    fn readable(&self, e: &RecordedEvent) -> bool {
        self.deleted
            .get(e.stream())
            .is_none_or(|before| e.version() >= *before)
    }

    fn end(&self) -> Position {
        self.log
            .last()
            .map_or(Position::START, RecordedEvent::next_position)
    }
}

impl InMemoryEventStore {
    /// An empty store encoding typed events with `codec` and upcasting with `upcasters`.
    pub fn new(codec: Codec, upcasters: Upcasters) -> Self {
        InMemoryEventStore {
            memory: Mutex::default(),
            codec,
            upcasters,
        }
    }

    /// Every event, in order.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.memory.lock().log.clone()
    }
}

impl EventStore for InMemoryEventStore {
    fn append(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
        let mut memory = self.memory.lock();
        // Check every part (each seeing the ones before it) before changing anything.
        let mut versions: HashMap<&str, Option<u64>> = HashMap::new();
        for p in &parts {
            let current = *versions
                .entry(&p.stream)
                .or_insert_with(|| memory.version(&p.stream));
            if !p.expected.matches(current) {
                return Err(Error::WrongExpectedVersion {
                    stream: p.stream.clone(),
                    expected: p.expected,
                    actual: current,
                });
            }
            let count = memory.streams.get(&p.stream).map_or(0, |s| s.len() as u64);
            let after = current.map_or(count, |v| v + 1) + p.events.len() as u64;
            versions.insert(&p.stream, after.checked_sub(1));
        }
        let mut results = Vec::with_capacity(parts.len());
        for p in parts {
            let mut first = None;
            let mut last = memory.end();
            for e in &p.events {
                let version = memory.streams.get(&p.stream).map_or(0, |s| s.len() as u64);
                // Events follow one another as in a log: each starts where the last ends.
                let position = memory.end();
                let recorded = RecordedEvent::detached(&p.stream, version, position, e)?;
                memory.log.push(recorded.clone());
                memory
                    .streams
                    .entry(p.stream.clone())
                    .or_default()
                    .push(recorded);
                first.get_or_insert(position);
                last = position;
            }
            let version = memory
                .streams
                .get(&p.stream)
                .and_then(|s| (s.len() as u64).checked_sub(1));
            let mut result = AppendResult::nothing(version, last);
            result.first_position = first.unwrap_or(last);
            results.push(result);
        }
        Ok(results)
    }

    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<()>,
    ) -> Result<()> {
        let (events, deleted) = {
            let memory = self.memory.lock();
            let events = memory.streams.get(stream).cloned().unwrap_or_default();
            (events, memory.deleted.get(stream).copied().unwrap_or(0))
        };
        events
            .iter()
            .skip(from.max(deleted) as usize)
            .try_for_each(visit)
    }

    fn read_event_type(
        &self,
        event_type: &str,
        from: Position,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<bool>,
    ) -> Result<()> {
        let log: Vec<RecordedEvent> = {
            let memory = self.memory.lock();
            memory
                .log
                .iter()
                .filter(|e| memory.readable(e))
                .cloned()
                .collect()
        };
        for e in log
            .iter()
            .filter(|e| e.position() >= from && e.event_type() == event_type)
        {
            if !visit(e)? {
                break;
            }
        }
        Ok(())
    }

    fn last_event(&self, stream: &str) -> Result<Option<RecordedEvent>> {
        let memory = self.memory.lock();
        Ok(memory
            .streams
            .get(stream)
            .and_then(|s| s.last().cloned())
            .filter(|e| memory.readable(e)))
    }

    fn delete_stream(&self, stream: &str, expected: crate::ExpectedVersion) -> Result<()> {
        let mut memory = self.memory.lock();
        let current = memory.version(stream);
        if !expected.matches(current) {
            return Err(Error::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected,
                actual: current,
            });
        }
        let count = memory.streams.get(stream).map_or(0, |s| s.len() as u64);
        memory.deleted.insert(stream.to_owned(), count);
        memory.snapshots.remove(stream);
        Ok(())
    }

    fn new_event<E: Events>(&self, event: &E) -> Result<NewEvent> {
        crate::typed::new_event(event, self.codec)
    }

    fn decode<E: Events>(&self, event: &RecordedEvent) -> Result<E> {
        crate::typed::decode_with(&self.upcasters, event)
    }

    fn save_snapshot(&self, stream: &str, version: u64, schema: u32, state: Vec<u8>) -> Result<()> {
        self.memory
            .lock()
            .snapshots
            .insert(stream.to_owned(), (version, schema, state.into()));
        Ok(())
    }

    fn load_snapshot(&self, stream: &str) -> Result<Option<(u64, u32, bytes::Bytes)>> {
        Ok(self.memory.lock().snapshots.get(stream).cloned())
    }
}
