//! The message bus (the `messagebus` library's `MessageBus`); its unit of work is in
//! [`super::unit_of_work`].
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
use std::collections::HashMap;

use super::DomainError;
use super::unit_of_work::UnitOfWork;

use super::event_store::EventStore;
use crate::typed::EventType;
use crate::{BoxError, Error};

/// The most events and commands one [`MessageBus::settle`] hands on (a bound on listener loops).
pub const MAX_SETTLE_STEPS: usize = 100_000;

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
