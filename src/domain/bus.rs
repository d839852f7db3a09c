//! The message bus and the unit of work (the `messagebus` library's `MessageBus` and
//! `AbstractUnitOfWork`).
//!
//! A command has exactly one handler; an event type any number of listeners; both are
//! registered explicitly. [`MessageBus::handle`] runs a command's handler in a
//! [`UnitOfWork`]; the events that handler records on the aggregates it loaded or created are
//! collected and handed to their listeners, which may record more events (handed on in turn) or
//! queue more commands (handled in turn), until nothing is left. [`UnitOfWork::commit`] then
//! appends every new event of every touched stream in one atomic append, each stream with the
//! version it was loaded at as its expected version, and lets the store publish; dropping the
//! unit of work instead (or [`UnitOfWork::rollback`]) discards everything.

use std::any::{Any, TypeId};
use std::collections::{HashMap, VecDeque};

use super::DomainError;
use super::aggregate::Aggregate;
use super::event_store::{EventStore, Part};
use super::repository::Repository;
use crate::{AppendResult, BoxError, Error, EventType, Events, Result};

/// A recorded event on its way to listeners, without its aggregate's event type.
trait AnyEvent: Send {
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

/// The most events and commands one [`MessageBus::settle`] hands on (a bound on listener loops).
pub const MAX_SETTLE_STEPS: usize = 100_000;

/// The event type of a [`UnitOfWork::claim_unique`] claim (specified in [`crate::records`]).
pub use crate::records::UNIQUE_CLAIMED;

/// Everything one piece of work changes, committed together or not at all.
pub struct UnitOfWork<'s, S: EventStore> {
    store: &'s S,
    tracked: Vec<Box<dyn Tracked<S> + 's>>,
    by_stream: HashMap<String, usize>,
    /// Parts drained from aggregates (and added directly), in order.
    parts: Vec<(Option<usize>, Part)>,
    /// Drained events not yet handed to listeners.
    undispatched: VecDeque<Box<dyn AnyEvent>>,
    /// Commands queued by handlers and listeners.
    queued: VecDeque<Box<dyn Any + Send>>,
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
    /// conflict ([`BusError::is_conflict`]), and handling its command again gives the rejection.
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
    fn drain(&mut self) -> Result<()> {
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
    /// An error means nothing was saved, except [`Error::Publish`] from a
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

/// Why the bus could not handle a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// No handler is registered for this command type.
    #[error("no handler for command `{0}`")]
    NoHandler(String),
    /// A second handler was registered for a command type.
    #[error("command `{0}` already has a handler")]
    DuplicateHandler(&'static str),
    /// A handler or listener failed.
    #[error("{0}")]
    Handler(BoxError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

impl BusError {
    /// A handler's refusal: `error` becomes [`BusError::Handler`] (and can be found again with
    /// [`rejection`](Self::rejection)).
    pub fn rejected(error: impl Into<BoxError>) -> Self {
        BusError::from(error.into())
    }

    /// The handler's error, if it is a `T` (a rejection returned as
    /// `DomainError::Rejected(T)`, or passed to [`rejected`](Self::rejected)).
    pub fn rejection<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            BusError::Handler(e) => e.downcast_ref::<T>(),
            _ => None,
        }
    }

    /// Whether the store refused the commit because another writer changed a stream first:
    /// handling the command again (in a new unit of work) may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, BusError::Store(Error::WrongExpectedVersion { .. }))
    }
}

impl From<BoxError> for BusError {
    fn from(e: BoxError) -> Self {
        let e = match e.downcast::<BusError>() {
            Ok(e) => return *e,
            Err(e) => e,
        };
        match e.downcast::<Error>() {
            Ok(e) => BusError::Store(*e),
            Err(e) => BusError::Handler(e),
        }
    }
}

impl From<std::convert::Infallible> for BusError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl<E: Into<BoxError>> From<DomainError<E>> for BusError {
    fn from(e: DomainError<E>) -> Self {
        match e {
            DomainError::Store(e) => BusError::Store(e),
            other => BusError::Handler(other.into_box()),
        }
    }
}

type Handler<S> = Box<
    dyn for<'s> Fn(
            Box<dyn Any + Send>,
            &mut UnitOfWork<'s, S>,
        ) -> std::result::Result<Box<dyn Any + Send>, BusError>
        + Send
        + Sync,
>;
type Listener<S> = Box<
    dyn for<'s> Fn(&(dyn Any + Send), &mut UnitOfWork<'s, S>) -> std::result::Result<(), BusError>
        + Send
        + Sync,
>;
type Decoder = fn(&str) -> std::result::Result<Box<dyn Any + Send>, String>;

/// Routes commands to their one handler and events to their listeners, inside a
/// [`UnitOfWork`].
///
/// A command has exactly one handler; an event type any number of listeners; both are
/// registered explicitly. [`MessageBus::handle`] runs a command's handler in a
/// [`UnitOfWork`]; the events that handler records on the aggregates it loaded or created are
/// collected and handed to their listeners, which may record more events (handed on in turn) or
/// queue more commands (handled in turn), until nothing is left. [`UnitOfWork::commit`] then
/// appends every new event of every touched stream in one atomic append, each stream with the
/// version it was loaded at as its expected version, and lets the store publish; dropping the
/// unit of work instead (or [`UnitOfWork::rollback`]) discards everything.
pub struct MessageBus<S: EventStore> {
    handlers: HashMap<TypeId, (&'static str, Handler<S>)>,
    listeners: HashMap<&'static str, Vec<Listener<S>>>,
    named: HashMap<&'static str, Decoder>,
}

impl<S: EventStore> Default for MessageBus<S> {
    fn default() -> Self {
        MessageBus {
            handlers: HashMap::new(),
            listeners: HashMap::new(),
            named: HashMap::new(),
        }
    }
}

impl<S: EventStore> MessageBus<S> {
    /// A bus with no handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the handler of command type `C`, replying `R`. A command type has one handler.
    pub fn handle_with<C, R, E>(
        &mut self,
        handler: impl for<'s> Fn(C, &mut UnitOfWork<'s, S>) -> std::result::Result<R, E>
        + Send
        + Sync
        + 'static,
    ) -> std::result::Result<&mut Self, BusError>
    where
        C: Send + 'static,
        R: Send + 'static,
        E: Into<BusError>,
    {
        let name = std::any::type_name::<C>();
        if self.handlers.contains_key(&TypeId::of::<C>()) {
            return Err(BusError::DuplicateHandler(name));
        }
        let handler: Handler<S> = Box::new(move |command, uow| {
            let command = *command.downcast::<C>().expect("routed by type");
            let reply = handler(command, uow).map_err(Into::into)?;
            Ok(Box::new(reply))
        });
        self.handlers.insert(TypeId::of::<C>(), (name, handler));
        Ok(self)
    }

    /// Registers the handler of a [`Command`](super::Command) (one that workflows may dispatch:
    /// it can be read back from the log by name).
    pub fn handle_command<C, R, E>(
        &mut self,
        handler: impl for<'s> Fn(C, &mut UnitOfWork<'s, S>) -> std::result::Result<R, E>
        + Send
        + Sync
        + 'static,
    ) -> std::result::Result<&mut Self, BusError>
    where
        C: super::Command,
        R: Send + 'static,
        E: Into<BusError>,
    {
        self.handle_with(handler)?;
        self.named.insert(C::NAME, |body| {
            serde_json::from_str::<C>(body)
                .map(|c| Box::new(c) as Box<dyn Any + Send>)
                .map_err(|e| e.to_string())
        });
        Ok(self)
    }

    /// Registers a listener for events of type `E` (any number per type, run in the order
    /// registered).
    pub fn listen<E, X>(
        &mut self,
        listener: impl for<'s> Fn(&E, &mut UnitOfWork<'s, S>) -> std::result::Result<(), X>
        + Send
        + Sync
        + 'static,
    ) -> &mut Self
    where
        E: EventType,
        X: Into<BusError>,
    {
        let listener: Listener<S> = Box::new(move |event, uow| {
            let event = event.downcast_ref::<E>().expect("routed by type name");
            listener(event, uow).map_err(Into::into)
        });
        self.listeners.entry(E::NAME).or_default().push(listener);
        self
    }

    /// Handles `command` in `uow`: its handler, then the listeners of every event recorded, and
    /// the commands queued, until nothing is left. Returns the handler's reply; the caller
    /// commits (or drops) the unit of work.
    pub fn handle<C, R>(
        &self,
        command: C,
        uow: &mut UnitOfWork<'_, S>,
    ) -> std::result::Result<R, BusError>
    where
        C: Send + 'static,
        R: 'static,
    {
        let reply = self.run(Box::new(command), std::any::type_name::<C>(), uow)?;
        self.settle(uow)?;
        reply.downcast::<R>().map(|r| *r).map_err(|_| {
            BusError::Handler(
                format!(
                    "the handler of {} does not reply {}",
                    std::any::type_name::<C>(),
                    std::any::type_name::<R>()
                )
                .into(),
            )
        })
    }

    /// Handles `command` in a new unit of work over `store` and commits it (which publishes,
    /// if the store publishes). Returns the handler's reply; on any error nothing is saved.
    pub fn execute<C, R>(&self, command: C, store: &S) -> std::result::Result<R, BusError>
    where
        C: Send + 'static,
        R: 'static,
    {
        let mut uow = UnitOfWork::new(store);
        let reply = self.handle(command, &mut uow)?;
        uow.commit()?;
        Ok(reply)
    }

    /// Handles a command read back from the log by name (the command relay).
    pub(crate) fn handle_named(
        &self,
        name: &str,
        body: &str,
        uow: &mut UnitOfWork<'_, S>,
    ) -> std::result::Result<(), BusError> {
        let decode = self
            .named
            .get(name)
            .ok_or_else(|| BusError::NoHandler(name.to_owned()))?;
        let command =
            decode(body).map_err(|e| BusError::Handler(format!("command `{name}`: {e}").into()))?;
        self.run(command, name, uow)?;
        self.settle(uow)
    }

    fn run(
        &self,
        command: Box<dyn Any + Send>,
        name: &str,
        uow: &mut UnitOfWork<'_, S>,
    ) -> std::result::Result<Box<dyn Any + Send>, BusError> {
        let (_, handler) = self
            .handlers
            .get(&(*command).type_id())
            .ok_or_else(|| BusError::NoHandler(name.to_owned()))?;
        handler(command, uow)
    }

    /// Hands the events recorded in `uow` to their listeners and runs the queued commands,
    /// until none are left (what [`handle`](Self::handle) does after the handler; call it
    /// after recording events on aggregates of a unit of work directly).
    ///
    /// At most [`MAX_SETTLE_STEPS`] events and commands are handed on per call: more is taken
    /// for a loop (a listener recording the event it listens to) and is an error.
    pub fn settle(&self, uow: &mut UnitOfWork<'_, S>) -> std::result::Result<(), BusError> {
        for _ in 0..MAX_SETTLE_STEPS {
            uow.drain()?;
            if let Some(event) = uow.undispatched.pop_front() {
                for listener in self.listeners.get(event.name()).into_iter().flatten() {
                    listener(event.inner(), uow)?;
                }
                continue;
            }
            if let Some(command) = uow.queued.pop_front() {
                self.run(command, "(queued)", uow)?;
                continue;
            }
            return Ok(());
        }
        Err(BusError::Handler(
            format!(
                "a unit of work handed on more than {MAX_SETTLE_STEPS} events and commands: \
                 a listener loop?"
            )
            .into(),
        ))
    }
}
