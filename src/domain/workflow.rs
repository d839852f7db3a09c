//! Workflows (process managers) and the command relay that runs what they dispatch.
//!
//! A workflow is an ordinary [`Aggregate`](super::Aggregate) whose listeners call
//! [`dispatch`](super::Aggregate::dispatch): the command is stored as an event of type
//! [`COMMAND_EVENT_TYPE`] in the workflow's own stream, in the same atomic append as the
//! workflow's events. A crash therefore cannot lose a command (it is in the log as soon as the
//! workflow's decision is) nor invent one (it is not, if the decision was not).
//!
//! A [`CommandRelay`] hands each stored command to its handler exactly once. Its progress is a
//! stream of its own (`$relay-NAME`); each handled command adds a marker to it, appended in
//! the *same* atomic append as everything the handler changed, with the marker stream's
//! version as the expected version. So a handled command's effects and the record that it was
//! handled exist together or not at all: a crash before the commit means the command is
//! handled again on the next run (nothing of the first attempt was kept); a crash after means
//! it is not. Two relays with the same name cannot both handle a command: the second commit
//! fails on the marker stream and is discarded.

use serde::Deserialize;

use super::COMMAND_EVENT_TYPE;
use super::bus::{BusError, MessageBus};
use super::event_store::{EventStore, Part};
use super::unit_of_work::UnitOfWork;
use crate::{Error, ExpectedVersion, NewEvent, Position, RecordedEvent, Result};

/// One entry of a relay's progress stream (specified in `src/log/records.rs`).
use crate::records::RelayMarker as Marker;
pub use crate::records::{COMMAND_FAILED, COMMAND_HANDLED};

/// A dispatched command as stored in the log.
#[derive(Debug, Deserialize)]
struct StoredCommand {
    command: String,
    body: String,
}

/// A command whose handler failed (it is recorded in the relay's stream and not retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayFailure {
    /// Where the command is in the log.
    pub position: Position,
    /// The stream of the workflow that dispatched it.
    pub stream: String,
    /// The command's name.
    pub command: String,
    /// What went wrong.
    pub error: String,
}

/// What one [`CommandRelay::run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Commands handled and committed.
    pub handled: usize,
    /// Commands whose handler failed.
    pub failed: Vec<RelayFailure>,
}

/// Hands the commands workflows dispatched to their handlers, exactly once.
///
/// A workflow is an ordinary [`Aggregate`](super::Aggregate) whose listeners call
/// [`dispatch`](super::Aggregate::dispatch): the command is stored as an event of type
/// [`COMMAND_EVENT_TYPE`] in the workflow's own stream, in the same atomic append as the
/// workflow's events. A crash therefore cannot lose a command (it is in the log as soon as the
/// workflow's decision is) nor invent one (it is not, if the decision was not).
///
/// A [`CommandRelay`] hands each stored command to its handler exactly once. Its progress is a
/// stream of its own (`$relay-NAME`); each handled command adds a marker to it, appended in
/// the *same* atomic append as everything the handler changed, with the marker stream's
/// version as the expected version. So a handled command's effects and the record that it was
/// handled exist together or not at all: a crash before the commit means the command is
/// handled again on the next run (nothing of the first attempt was kept); a crash after means
/// it is not. Two relays with the same name cannot both handle a command: the second commit
/// fails on the marker stream and is discarded.
///
/// ```
/// use annals::Store;
/// use annals::domain::{Aggregate, Command, CommandRelay, MessageBus, Recorder, UnitOfWork};
/// use annals::events;
/// use annals::typed::EventType;
/// use serde::{Deserialize, Serialize};
///
/// // The workflow: when an order is placed, ask for it to be shipped.
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct OrderPlaced { order: String }
/// impl EventType for OrderPlaced { const NAME: &'static str = "OrderPlaced"; }
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct ShippingRequested { order: String }
/// impl EventType for ShippingRequested { const NAME: &'static str = "ShippingRequested"; }
/// events! { #[derive(Debug, Clone)] enum OrderEvent { Placed(OrderPlaced) } }
/// events! { #[derive(Debug, Clone)] enum FlowEvent { Requested(ShippingRequested) } }
///
/// #[derive(Debug, Serialize, Deserialize)]
/// struct Ship { order: String }
/// impl Command for Ship { const NAME: &'static str = "Ship"; }
///
/// #[derive(Default)]
/// struct Order { recorder: Recorder<OrderEvent> }
/// impl Aggregate for Order {
///     const CATEGORY: &'static str = "order";
///     type Event = OrderEvent;
///     fn apply(&mut self, _: &OrderEvent) {}
///     fn recorder(&self) -> &Recorder<OrderEvent> { &self.recorder }
///     fn recorder_mut(&mut self) -> &mut Recorder<OrderEvent> { &mut self.recorder }
/// }
/// #[derive(Default)]
/// struct Shipping { requested: bool, recorder: Recorder<FlowEvent> }
/// impl Aggregate for Shipping {
///     const CATEGORY: &'static str = "shipping";
///     type Event = FlowEvent;
///     fn apply(&mut self, _: &FlowEvent) { self.requested = true; }
///     fn recorder(&self) -> &Recorder<FlowEvent> { &self.recorder }
///     fn recorder_mut(&mut self) -> &mut Recorder<FlowEvent> { &mut self.recorder }
/// }
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("shop"))?;
/// let mut bus = MessageBus::<Store>::new();
/// bus.listen(|e: &OrderPlaced, uow: &mut UnitOfWork<'_, Store>| -> annals::Result<()> {
///     let flow = uow.get_or_create::<Shipping>(&e.order)?;
///     if !flow.requested {
///         flow.record(ShippingRequested { order: e.order.clone() });
///         flow.dispatch(&Ship { order: e.order.clone() })?;
///     }
///     Ok(())
/// });
/// bus.handle_command(|c: Ship, _: &mut UnitOfWork<'_, Store>| -> annals::Result<String> {
///     Ok(format!("shipped {}", c.order))
/// })?;
///
/// let mut uow = UnitOfWork::new(&store);
/// uow.create::<Order>("o1").record(OrderPlaced { order: "o1".into() });
/// bus.settle(&mut uow)?;
/// uow.commit()?;
///
/// let relay = CommandRelay::new("shipping")?;
/// assert_eq!(relay.run(&bus, &store)?.handled, 1);
/// assert_eq!(relay.run(&bus, &store)?.handled, 0, "exactly once");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct CommandRelay {
    stream: String,
    attempts: usize,
}

impl CommandRelay {
    /// A relay whose progress is kept in the stream `$relay-NAME`.
    pub fn new(name: &str) -> Result<Self> {
        if name.is_empty() || name.len() > 200 {
            return Err(Error::InvalidArgument(format!(
                "a relay name is 1 to 200 bytes, not {} bytes",
                name.len()
            )));
        }
        Ok(CommandRelay {
            stream: crate::records::relay_stream(name),
            attempts: 5,
        })
    }

    /// How many times a command whose commit conflicts with another writer is handled again
    /// (on freshly loaded aggregates) before it is recorded as failed. Default 5.
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The relay's progress stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Handles every stored command not yet handled, in log order, each in its own unit of
    /// work; returns what it did. A store error stops the run (the command stays pending).
    pub fn run<S: EventStore>(&self, bus: &MessageBus<S>, store: &S) -> Result<RelayReport> {
        let mut report = RelayReport::default();
        while self.step(bus, store, &mut report)? {}
        Ok(report)
    }

    /// Where the relay stands: the expected version of its stream and where to look next.
    fn progress<S: EventStore>(&self, store: &S) -> Result<(ExpectedVersion, Position)> {
        let Some(last) = store.last_event(&self.stream)? else {
            return Ok((ExpectedVersion::NoStream, Position::START));
        };
        let marker: Marker = serde_json::from_slice(last.payload()).map_err(|e| Error::Decode {
            position: last.position().as_u64(),
            event_type: last.event_type().to_owned(),
            reason: format!("not a relay marker: {e}"),
        })?;
        Ok((
            ExpectedVersion::Exact(last.version()),
            Position::new(marker.next),
        ))
    }

    /// Handles the next pending command; `false` when there is none.
    fn step<S: EventStore>(
        &self,
        bus: &MessageBus<S>,
        store: &S,
        report: &mut RelayReport,
    ) -> Result<bool> {
        let (expected, from) = self.progress(store)?;
        let mut next: Option<RecordedEvent> = None;
        store.read_event_type(COMMAND_EVENT_TYPE, from, &mut |e| {
            next = Some(e.clone());
            Ok(false)
        })?;
        let Some(source) = next else { return Ok(false) };
        let stored: std::result::Result<StoredCommand, _> =
            serde_json::from_slice(source.payload());
        let (name, error) = match stored {
            Err(e) => (String::from("?"), format!("undecodable command: {e}")),
            Ok(c) => match self.handle(bus, store, &c, &source, expected)? {
                Handled::Committed => {
                    report.handled += 1;
                    return Ok(true);
                }
                // Another relay moved on first: look again.
                Handled::Overtaken => return Ok(true),
                Handled::Failed(error) => (c.command, error),
            },
        };
        let marker = marker_event(COMMAND_FAILED, &source, &name, Some(&error))?;
        match store.append(vec![Part {
            stream: self.stream.clone(),
            expected,
            events: vec![marker],
        }]) {
            Ok(_) => {}
            Err(Error::WrongExpectedVersion { .. }) => return Ok(true),
            Err(e) => return Err(e),
        }
        tracing::warn!(command = %name, position = %source.position().as_u64(), error = %error, "annals: a relayed command failed");
        report.failed.push(RelayFailure {
            position: source.position(),
            stream: source.stream().to_owned(),
            command: name,
            error,
        });
        Ok(true)
    }

    /// Runs `command`'s handler and commits its effects with the marker, retrying conflicts.
    fn handle<S: EventStore>(
        &self,
        bus: &MessageBus<S>,
        store: &S,
        command: &StoredCommand,
        source: &RecordedEvent,
        expected: ExpectedVersion,
    ) -> Result<Handled> {
        let mut conflicts = 0;
        loop {
            let mut uow = UnitOfWork::new(store);
            // What the command causes carries its conversation, and the command as its cause.
            let _context = super::CommandContext::following(source).enter();
            let result = match bus.handle_named(&command.command, &command.body, &mut uow) {
                Ok(()) => {
                    uow.append(Part {
                        stream: self.stream.clone(),
                        expected,
                        events: vec![marker_event(
                            COMMAND_HANDLED,
                            source,
                            &command.command,
                            None,
                        )?],
                    });
                    uow.commit().map(drop).map_err(BusError::Store)
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(Handled::Committed),
                Err(BusError::Store(Error::WrongExpectedVersion { stream, .. }))
                    if stream == self.stream =>
                {
                    return Ok(Handled::Overtaken);
                }
                Err(BusError::Store(e @ Error::WrongExpectedVersion { .. })) => {
                    // Whichever stream the store named, a relay that moved on makes ours stale.
                    if self.progress(store)?.0 != expected {
                        return Ok(Handled::Overtaken);
                    }
                    conflicts += 1;
                    if conflicts >= self.attempts {
                        return Ok(Handled::Failed(e.to_string()));
                    }
                }
                Err(BusError::Store(e)) => return Err(e),
                Err(e) => return Ok(Handled::Failed(e.to_string())),
            }
        }
    }
}

enum Handled {
    Committed,
    Overtaken,
    Failed(String),
}

fn marker_event(
    kind: &'static str,
    source: &RecordedEvent,
    command: &str,
    error: Option<&str>,
) -> Result<NewEvent> {
    let marker = Marker {
        next: source.next_position().as_u64(),
        source: source.position().as_u64(),
        command: command.to_owned(),
        error: error.map(str::to_owned),
    };
    NewEvent::json(kind, &marker)
}
