//! [`SinkholeEventStore`]: stores nothing, publishes every committed published event.

use parking_lot::Mutex;

use super::{EventStore, Part};
use crate::domain::transport::Transport;
use crate::outbox::Envelope;
use crate::typed::{Codec, Events, Upcasters};
use crate::{AppendResult, Error, NewEvent, Position, RecordedEvent, Result};

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
        crate::typed::new_event(event, Codec::Json)
    }

    fn decode<E: Events>(&self, event: &RecordedEvent) -> Result<E> {
        crate::typed::decode_with(&Upcasters::default(), event)
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
