//! The small event-store interface the domain floor is written against, and its backends:
//! the annals [`Store`] itself, [`PublishingStore`] (annals plus an outbox to a transport),
//! [`InMemoryEventStore`] for tests, and [`SinkholeEventStore`] (stores nothing, publishes
//! only, as in the `messagebus` library).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::transport::{EventstreamPublisher, Transport};
use crate::outbox::{Envelope, Outbox, OutboxOptions};
use crate::{
    AppendResult, Codec, Direction, Error, Events, ExpectedVersion, NewEvent, Position,
    RecordedEvent, Result, Store, Upcasters,
};

/// One stream's part of an atomic append.
#[derive(Debug, Clone)]
pub struct Part {
    /// The stream.
    pub stream: String,
    /// What its version must be.
    pub expected: ExpectedVersion,
    /// What to append.
    pub events: Vec<NewEvent>,
}

/// What the domain floor needs of an event store.
pub trait EventStore: Send + Sync {
    /// Appends every part with its expected version, all or nothing. Streams whose names start
    /// with `$` are the domain floor's own records (command relays).
    fn append(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>>;

    /// Visits the events of `stream` from version `from`, in order.
    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<()>,
    ) -> Result<()>;

    /// Visits events of type `event_type` at or after `from`, in log order.
    fn read_event_type(
        &self,
        event_type: &str,
        from: Position,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<bool>,
    ) -> Result<()>;

    /// The last event of `stream`, if it has one.
    fn last_event(&self, stream: &str) -> Result<Option<RecordedEvent>>;

    /// The [`NewEvent`] for a typed event, encoded as this store encodes.
    fn new_event<E: Events>(&self, event: &E) -> Result<NewEvent>;

    /// Decodes (and upcasts) a recorded event.
    fn decode<E: Events>(&self, event: &RecordedEvent) -> Result<E>;

    /// Makes the event types of `E` known to the store, if they are not yet (so its outbox can
    /// publish their JSON form whatever codec stored them). The repository and the unit of
    /// work call it each time they meet an aggregate type: keep it cheap after the first call.
    fn register_events<E: Events>(&self) {}

    /// Stores a snapshot of `stream` at `version`. Stores that cannot keep snapshots drop it.
    fn save_snapshot(&self, stream: &str, version: u64, schema: u32, state: Vec<u8>) -> Result<()> {
        let _ = (stream, version, schema, state);
        Ok(())
    }

    /// The latest snapshot of `stream`: (version, schema, state).
    fn load_snapshot(&self, stream: &str) -> Result<Option<(u64, u32, bytes::Bytes)>> {
        let _ = stream;
        Ok(None)
    }

    /// Called after a unit of work committed: a store with an outbox publishes here. An error
    /// means the events were saved but not published (only [`SinkholeEventStore`], which keeps
    /// nothing to retry from, returns one).
    fn committed(&self) -> Result<()> {
        Ok(())
    }
}

impl EventStore for Store {
    fn append(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
        let mut tx = self.transaction();
        for p in parts {
            tx = if p.stream.starts_with('$') {
                tx.append_reserved(&p.stream, p.expected, p.events)
            } else {
                tx.append(&p.stream, p.expected, p.events)
            };
        }
        tx.commit()
    }

    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<()>,
    ) -> Result<()> {
        for e in Store::read_stream(self, stream, from, Direction::Forwards, usize::MAX)? {
            visit(&e?)?;
        }
        Ok(())
    }

    fn read_event_type(
        &self,
        event_type: &str,
        from: Position,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<bool>,
    ) -> Result<()> {
        for e in Store::read_event_type(self, event_type, from, usize::MAX)? {
            if !visit(&e?)? {
                break;
            }
        }
        Ok(())
    }

    fn last_event(&self, stream: &str) -> Result<Option<RecordedEvent>> {
        Store::read_stream(self, stream, u64::MAX, Direction::Backwards, 1)?
            .next()
            .transpose()
    }

    fn new_event<E: Events>(&self, event: &E) -> Result<NewEvent> {
        Store::new_event(self, event)
    }

    fn decode<E: Events>(&self, event: &RecordedEvent) -> Result<E> {
        Store::decode(self, event)
    }

    fn register_events<E: Events>(&self) {
        self.ensure_registered::<E>()
    }

    fn save_snapshot(&self, stream: &str, version: u64, schema: u32, state: Vec<u8>) -> Result<()> {
        Store::save_snapshot(self, stream, version, schema, state).map(drop)
    }

    fn load_snapshot(&self, stream: &str) -> Result<Option<(u64, u32, bytes::Bytes)>> {
        Store::load_snapshot(self, stream)
    }
}

/// An annals store whose published events go, after every committed unit of work, through its
/// outbox to a [`Transport`]: at least once, in order, even across crashes (what a crash
/// interrupts is delivered by the next commit, or by [`PublishingStore::publish`]).
pub struct PublishingStore<T: Transport + 'static> {
    store: Arc<Store>,
    outbox: Mutex<Outbox<Arc<Store>, EventstreamPublisher<T>>>,
}

impl<T: Transport + 'static> PublishingStore<T> {
    /// Wraps `store`; its outbox `name` publishes through `transport`.
    pub fn new(store: Arc<Store>, name: &str, transport: T) -> Result<Self> {
        let outbox = Outbox::new(
            store.clone(),
            name,
            EventstreamPublisher::new(transport),
            OutboxOptions::default(),
        )?;
        Ok(PublishingStore {
            store,
            outbox: Mutex::new(outbox),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs the outbox until it has caught up (or the transport fails: the outbox retries with
    /// backoff on later runs, and parks what keeps failing); returns how many events it
    /// delivered.
    pub fn publish(&self) -> Result<usize> {
        let mut outbox = self.outbox.lock();
        let mut delivered = 0;
        loop {
            let report = outbox.run_once()?;
            delivered += report.delivered;
            if report.caught_up
                || report.last_error.is_some()
                || report.delivered + report.parked == 0
            {
                return Ok(delivered);
            }
        }
    }

    /// Runs `f` on the transport.
    pub fn with_transport<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(self.outbox.lock().publisher().transport())
    }
}

impl<T: Transport + 'static> EventStore for PublishingStore<T> {
    fn append(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
        EventStore::append(&*self.store, parts)
    }

    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<()>,
    ) -> Result<()> {
        EventStore::read_stream(&*self.store, stream, from, visit)
    }

    fn read_event_type(
        &self,
        event_type: &str,
        from: Position,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<bool>,
    ) -> Result<()> {
        EventStore::read_event_type(&*self.store, event_type, from, visit)
    }

    fn last_event(&self, stream: &str) -> Result<Option<RecordedEvent>> {
        EventStore::last_event(&*self.store, stream)
    }

    fn new_event<E: Events>(&self, event: &E) -> Result<NewEvent> {
        self.store.new_event(event)
    }

    fn decode<E: Events>(&self, event: &RecordedEvent) -> Result<E> {
        self.store.decode(event)
    }

    fn register_events<E: Events>(&self) {
        self.store.ensure_registered::<E>()
    }

    fn save_snapshot(&self, stream: &str, version: u64, schema: u32, state: Vec<u8>) -> Result<()> {
        EventStore::save_snapshot(&*self.store, stream, version, schema, state)
    }

    fn load_snapshot(&self, stream: &str) -> Result<Option<(u64, u32, bytes::Bytes)>> {
        EventStore::load_snapshot(&*self.store, stream)
    }

    fn committed(&self) -> Result<()> {
        // The events are durable: what this run cannot deliver, a later one will.
        if let Err(e) = self.publish() {
            tracing::warn!(error = %e, "annals: publishing after a commit failed; the outbox will retry");
        }
        Ok(())
    }
}

#[derive(Default)]
struct Memory {
    streams: HashMap<String, Vec<RecordedEvent>>,
    log: Vec<RecordedEvent>,
    snapshots: HashMap<String, (u64, u32, bytes::Bytes)>,
}

/// An event store in memory, with the same checks as annals (expected versions, atomic
/// multi-stream appends): for tests of domain code.
#[derive(Default)]
pub struct InMemoryEventStore {
    memory: Mutex<Memory>,
    codec: Codec,
    upcasters: Upcasters,
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
                .or_insert_with(|| memory.streams.get(&p.stream).map(|s| s.len() as u64 - 1));
            if !p.expected.matches(current) {
                return Err(Error::WrongExpectedVersion {
                    stream: p.stream.clone(),
                    expected: p.expected,
                    actual: current,
                });
            }
            versions.insert(
                &p.stream,
                Some(current.map_or(0, |v| v + 1) + p.events.len() as u64 - 1),
            );
        }
        let mut results = Vec::with_capacity(parts.len());
        for p in parts {
            let mut first = None;
            let mut last = Position::START;
            for e in &p.events {
                let version = memory.streams.get(&p.stream).map_or(0, |s| s.len() as u64);
                let position = Position::new(4096 + 8 * memory.log.len() as u64);
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
        let events = self
            .memory
            .lock()
            .streams
            .get(stream)
            .cloned()
            .unwrap_or_default();
        events.iter().skip(from as usize).try_for_each(visit)
    }

    fn read_event_type(
        &self,
        event_type: &str,
        from: Position,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<bool>,
    ) -> Result<()> {
        let log = self.memory.lock().log.clone();
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
        Ok(self
            .memory
            .lock()
            .streams
            .get(stream)
            .and_then(|s| s.last().cloned()))
    }

    fn new_event<E: Events>(&self, event: &E) -> Result<NewEvent> {
        crate::new_event(event, self.codec)
    }

    fn decode<E: Events>(&self, event: &RecordedEvent) -> Result<E> {
        crate::decode_with(&self.upcasters, event)
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

/// An event store that stores nothing and publishes only: every committed published event goes
/// straight to the transport (the `messagebus` library's sink-hole event store). Streams always
/// read as empty, so every aggregate looks new.
pub struct SinkholeEventStore<T: Transport> {
    transport: Mutex<T>,
    pending: Mutex<Vec<Envelope>>,
}

impl<T: Transport> SinkholeEventStore<T> {
    /// Publishes through `transport`.
    pub fn new(transport: T) -> Self {
        SinkholeEventStore {
            transport: Mutex::new(transport),
            pending: Mutex::default(),
        }
    }

    /// Runs `f` on the transport.
    pub fn with_transport<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.transport.lock())
    }
}

impl<T: Transport> EventStore for SinkholeEventStore<T> {
    fn append(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
        let mut pending = self.pending.lock();
        let mut results = Vec::with_capacity(parts.len());
        for p in parts {
            for (version, e) in p.events.iter().enumerate() {
                if !e.publish {
                    continue;
                }
                let recorded =
                    RecordedEvent::detached(&p.stream, version as u64, Position::START, e)?;
                let payload = String::from_utf8(e.payload.to_vec()).map_err(|_| Error::Encode {
                    event_type: e.event_type.to_string(),
                    reason: "the sink-hole store publishes JSON payloads only".into(),
                })?;
                pending.push(Envelope::new(&recorded, payload, e.schema_version));
            }
            let version = (p.events.len() as u64).checked_sub(1);
            results.push(AppendResult::nothing(version, Position::START));
        }
        Ok(results)
    }

    fn read_stream(
        &self,
        _: &str,
        _: u64,
        _: &mut dyn FnMut(&RecordedEvent) -> Result<()>,
    ) -> Result<()> {
        Ok(())
    }

    fn read_event_type(
        &self,
        _: &str,
        _: Position,
        _: &mut dyn FnMut(&RecordedEvent) -> Result<bool>,
    ) -> Result<()> {
        Ok(())
    }

    fn last_event(&self, _: &str) -> Result<Option<RecordedEvent>> {
        Ok(None)
    }

    fn new_event<E: Events>(&self, event: &E) -> Result<NewEvent> {
        crate::new_event(event, Codec::Json)
    }

    fn decode<E: Events>(&self, event: &RecordedEvent) -> Result<E> {
        crate::decode_with(&Upcasters::default(), event)
    }

    fn committed(&self) -> Result<()> {
        let envelopes = std::mem::take(&mut *self.pending.lock());
        let mut transport = self.transport.lock();
        for envelope in &envelopes {
            transport
                .send_message_serialized(envelope)
                .map_err(|e| Error::Publish(format!("{}: {e}", envelope.message_type)))?;
        }
        Ok(())
    }
}
