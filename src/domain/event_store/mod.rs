//! The small event-store interface the domain floor is written against ([`EventStore`]), and
//! its backends, one file each: the annals [`Store`] itself and anything built on one
//! ([`AnnalsBacked`], here), the PostgreSQL `PgStore` (feature `postgres`, through its
//! public API), [`PublishingStore`] (annals plus an outbox to a transport),
//! [`InMemoryEventStore`] for tests, and [`SinkholeEventStore`] (stores nothing, publishes
//! only, as in the `messagebus` library).

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod publishing;
mod sinkhole;

pub use memory::InMemoryEventStore;
pub use publishing::PublishingStore;
pub use sinkhole::SinkholeEventStore;

use crate::typed::Events;
use crate::{
    AppendResult, Direction, ExpectedVersion, NewEvent, Position, RecordedEvent, Result, Store,
};

/// One stream's part of an atomic append (the same as the backends').
pub use crate::backend::Part;

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

    /// Deletes a stream (soft delete, see [`Store::delete_stream`]): it reads as empty and
    /// starts again on the next append, its versions continuing. Stores that cannot delete
    /// refuse with [`crate::Error::InvalidArgument`].
    fn delete_stream(&self, stream: &str, expected: ExpectedVersion) -> Result<()> {
        let _ = expected;
        Err(crate::Error::InvalidArgument(format!(
            "this event store cannot delete streams (`{stream}`)"
        )))
    }

    /// Called after a unit of work committed: a store with an outbox publishes here. An error
    /// means the events were saved but not published (only [`SinkholeEventStore`], which keeps
    /// nothing to retry from, returns one).
    fn committed(&self) -> Result<()> {
        Ok(())
    }
}

/// An event store that keeps its events in an annals [`Store`], with something to do after
/// each committed unit of work: implement these two methods and the type is an [`EventStore`]
/// (the [`Store`] itself is one, doing nothing after commits; [`PublishingStore`] publishes).
pub trait AnnalsBacked: Send + Sync {
    /// The store that holds the events.
    fn store(&self) -> &Store;

    /// What to do after a unit of work committed (see [`EventStore::committed`]).
    fn after_commit(&self) -> Result<()> {
        Ok(())
    }
}

impl AnnalsBacked for Store {
    fn store(&self) -> &Store {
        self
    }
}

impl<T: AnnalsBacked> EventStore for T {
    fn append(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
        crate::Backend::transaction(self.store(), parts)
    }

    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<()>,
    ) -> Result<()> {
        for e in Store::read_stream(self.store(), stream, from, Direction::Forwards, usize::MAX)? {
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
        for e in Store::read_event_type(self.store(), event_type, from, usize::MAX)? {
            if !visit(&e?)? {
                break;
            }
        }
        Ok(())
    }

    fn last_event(&self, stream: &str) -> Result<Option<RecordedEvent>> {
        Store::read_stream(self.store(), stream, u64::MAX, Direction::Backwards, 1)?
            .next()
            .transpose()
    }

    fn new_event<E: Events>(&self, event: &E) -> Result<NewEvent> {
        Store::new_event(self.store(), event)
    }

    fn decode<E: Events>(&self, event: &RecordedEvent) -> Result<E> {
        Store::decode(self.store(), event)
    }

    fn register_events<E: Events>(&self) {
        self.store().ensure_registered::<E>()
    }

    fn save_snapshot(&self, stream: &str, version: u64, schema: u32, state: Vec<u8>) -> Result<()> {
        Store::save_snapshot(self.store(), stream, version, schema, state).map(drop)
    }

    fn load_snapshot(&self, stream: &str) -> Result<Option<(u64, u32, bytes::Bytes)>> {
        Store::load_snapshot(self.store(), stream)
    }

    fn delete_stream(&self, stream: &str, expected: ExpectedVersion) -> Result<()> {
        Store::delete_stream(self.store(), stream, expected).map(drop)
    }

    fn committed(&self) -> Result<()> {
        self.after_commit()
    }
}
