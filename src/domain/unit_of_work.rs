//! The unit of work (the `messagebus` library's `AbstractUnitOfWork`): everything one command
//! changes, with the aggregates it loaded or created, committed in one atomic append or not at
//! all.

use std::any::Any;
use std::collections::{HashMap, VecDeque};

use super::DomainError;
use super::aggregate::Aggregate;
use super::event_store::{EventStore, Part};
use super::repository::Repository;
use crate::typed::Events;
use crate::{AppendResult, Result};

/// A recorded event on its way to listeners, without its aggregate's event type.
pub(super) trait AnyEvent: Send {
    fn name(&self) -> &'static str;
    fn inner(&self) -> &(dyn Any + Send);
}

impl<E: Events> AnyEvent for E {
    fn name(&self) -> &'static str {
        self.meta().name
    }

    fn inner(&self) -> &(dyn Any + Send) {
        Events::inner(self)
    }
}

/// What a tracked aggregate recorded: the part that saves it, and its events for listeners.
type Drained = (Part, Vec<Box<dyn AnyEvent>>);

/// An aggregate loaded or created by a unit of work, without its type.
trait Tracked<S: EventStore>: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    /// Takes what was recorded: the part that saves it, and the events for listeners.
    fn drain(&mut self, store: &S) -> Result<Option<Drained>>;
    fn saved(&mut self, version: u64);
}

struct TrackedAggregate<A>(A);

impl<A: Aggregate, S: EventStore> Tracked<S> for TrackedAggregate<A> {
    fn as_any(&mut self) -> &mut dyn Any {
        &mut self.0
    }

    fn drain(&mut self, store: &S) -> Result<Option<Drained>> {
        let Some((part, changes, _)) = Repository::<A, S>::unregistered(store).part(&mut self.0)?
        else {
            return Ok(None);
        };
        let events = changes
            .into_iter()
            .map(|e| Box::new(e) as Box<dyn AnyEvent>)
            .collect();
        Ok(Some((part, events)))
    }

    fn saved(&mut self, version: u64) {
        self.0.recorder_mut().saved(version);
    }
}

/// The event type of a [`UnitOfWork::claim_unique`] claim (specified in `src/log/records.rs`).
pub use crate::records::UNIQUE_CLAIMED;

/// Everything one piece of work changes, committed together or not at all.
pub struct UnitOfWork<'s, S: EventStore> {
    store: &'s S,
    tracked: Vec<Box<dyn Tracked<S> + 's>>,
    by_stream: HashMap<String, usize>,
    /// Parts drained from aggregates (and added directly), in order.
    parts: Vec<(Option<usize>, Part)>,
    /// Drained events not yet handed to listeners.
    pub(super) undispatched: VecDeque<Box<dyn AnyEvent>>,
    /// Commands queued by handlers and listeners.
    pub(super) queued: VecDeque<Box<dyn Any + Send>>,
}

impl<'s, S: EventStore> UnitOfWork<'s, S> {
    /// An empty unit of work over `store`.
    pub fn new(store: &'s S) -> Self {
        UnitOfWork {
            store,
            tracked: Vec::new(),
            by_stream: HashMap::new(),
            parts: Vec::new(),
            undispatched: VecDeque::new(),
            queued: VecDeque::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &'s S {
        self.store
    }

    fn tracked<A: Aggregate>(&mut self, id: &str) -> Option<&mut A> {
        let i = *self.by_stream.get(&A::stream_name(id))?;
        self.tracked[i].as_any().downcast_mut::<A>()
    }

    fn track<A: Aggregate>(&mut self, aggregate: A) -> &mut A {
        self.store.register_events::<A::Event>();
        let i = self.tracked.len();
        self.by_stream.insert(A::stream_name(aggregate.id()), i);
        self.tracked.push(Box::new(TrackedAggregate(aggregate)));
        self.tracked[i]
            .as_any()
            .downcast_mut::<A>()
            .expect("just tracked")
    }

    /// The aggregate `id`, loaded on first use and kept for the rest of the unit of work;
    /// [`DomainError::NotFound`] if it has no events.
    pub fn get<A: Aggregate>(&mut self, id: &str) -> std::result::Result<&mut A, DomainError> {
        if self.tracked::<A>(id).is_some() {
            return Ok(self.tracked::<A>(id).expect("checked"));
        }
        let aggregate = Repository::<A, S>::unregistered(self.store).get(id)?;
        Ok(self.track(aggregate))
    }

    /// A new aggregate `id`; saving it expects its stream not to exist.
    pub fn create<A: Aggregate>(&mut self, id: &str) -> &mut A {
        self.track(Repository::<A, S>::new_aggregate(id))
    }

    /// The aggregate `id` if it exists, else a new one.
    pub fn get_or_create<A: Aggregate>(&mut self, id: &str) -> Result<&mut A> {
        if self.tracked::<A>(id).is_some() {
            return Ok(self.tracked::<A>(id).expect("checked"));
        }
        let aggregate = match Repository::<A, S>::unregistered(self.store).load(id)? {
            Some(a) => a,
            None => Repository::<A, S>::new_aggregate(id),
        };
        Ok(self.track(aggregate))
    }

    /// Queues a command; the bus handles it, in this unit of work, after the current handler or
    /// listener.
    pub fn dispatch<C: Send + 'static>(&mut self, command: C) {
        self.queued.push_back(Box::new(command));
    }

    /// Adds a raw part to the commit (guards such as "this name is taken" streams).
    pub fn append(&mut self, part: Part) {
        self.parts.push((None, part));
    }

    /// Claims `value` as unique within `scope` (an ISBN among books, an e-mail among users):
    /// the claim is committed with the rest of the unit of work, in the stream
    /// `$unique-SCOPE-VALUE`. If it is already claimed, returns `DomainError::Rejected(taken())`.
    /// Two units of work claiming the same value at once: the second commit fails with a
    /// conflict ([`BusError::is_conflict`](super::BusError::is_conflict)), and handling its command again gives the rejection.
    pub fn claim_unique<E>(
        &mut self,
        scope: &str,
        value: &str,
        taken: impl FnOnce() -> E,
    ) -> std::result::Result<(), DomainError<E>> {
        let stream = crate::records::unique_stream(scope, value);
        let claimed_here = self.parts.iter().any(|(_, p)| p.stream == stream);
        if claimed_here || self.store.last_event(&stream)?.is_some() {
            return Err(DomainError::Rejected(taken()));
        }
        let claim = crate::NewEvent::json(
            UNIQUE_CLAIMED,
            &crate::records::UniqueClaim {
                scope: scope.to_owned(),
                value: value.to_owned(),
            },
        )?;
        self.parts.push((
            None,
            Part {
                stream,
                expected: crate::ExpectedVersion::NoStream,
                events: vec![claim],
            },
        ));
        Ok(())
    }

    /// Moves what the tracked aggregates recorded into the commit and the listeners' queue.
    pub(super) fn drain(&mut self) -> Result<()> {
        for (i, t) in self.tracked.iter_mut().enumerate() {
            if let Some((part, events)) = t.drain(self.store)? {
                self.parts.push((Some(i), part));
                self.undispatched.extend(events);
            }
        }
        Ok(())
    }

    /// Appends everything recorded, atomically, each stream expecting the version it was
    /// loaded at; then lets the store publish. Returns one result per stream.
    ///
    /// An error means nothing was saved, except [`Error::Publish`](crate::Error::Publish) from a
    /// [`SinkholeEventStore`](super::SinkholeEventStore): the transport refused what was
    /// committed.
    pub fn commit(mut self) -> Result<Vec<AppendResult>> {
        self.drain()?;
        // One part per stream: the events of later drains follow those of earlier ones.
        let mut merged: Vec<(Option<usize>, Part)> = Vec::new();
        for (owner, part) in std::mem::take(&mut self.parts) {
            match merged
                .iter_mut()
                .find(|(o, p)| owner.is_some() && *o == owner && p.stream == part.stream)
            {
                Some((_, p)) => p.events.extend(part.events),
                None => merged.push((owner, part)),
            }
        }
        if merged.is_empty() {
            return Ok(Vec::new());
        }
        let owners: Vec<Option<usize>> = merged.iter().map(|(o, _)| *o).collect();
        let results = self
            .store
            .append(merged.into_iter().map(|(_, p)| p).collect())?;
        for (owner, result) in owners.iter().zip(&results) {
            if let (Some(i), Some(version)) = (owner, result.version) {
                self.tracked[*i].saved(version);
            }
        }
        self.store.committed()?;
        Ok(results)
    }

    /// Discards everything (what dropping the unit of work does too).
    pub fn rollback(self) {}
}
