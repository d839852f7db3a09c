//! The domain floor: what an application developer touches every day.
//!
//! - [`Aggregate`]: state rebuilt from its events, command methods that [`record`] new ones.
//! - [`Repository`]: load, create and update aggregates with optimistic concurrency, with
//!   opt-in retries and opt-in [snapshots](Snapshot).
//! - [`MessageBus`] and [`UnitOfWork`]: one handler per command, any number of listeners per
//!   event, everything a command causes committed in one atomic append (or nothing).
//! - Publishing: published events reach a [`Transport`] through the store's outbox
//!   ([`PublishingStore`]) or straight away ([`SinkholeEventStore`]).
//! - [`CommandContext`]: correlation and causation ids (and user metadata) set once per
//!   command and carried by every event it causes.
//! - Workflows: aggregates that [`dispatch`] commands; the commands are saved with the
//!   workflow's events and handed to their handler exactly once by a [`CommandRelay`].
//! - `testing` (feature `testing`): given/when/then for aggregates and for the bus, on a real store in a
//!   temporary folder.
//!
//! Everything is written against the small [`EventStore`] trait, implemented by the annals
//! [`Store`](crate::Store), by [`PublishingStore`], by [`InMemoryEventStore`] and by
//! [`SinkholeEventStore`].
//!
//! ```
//! use annals::domain::{Aggregate, DomainError, Recorder, Repository};
//! use annals::{Store, events};
//! use annals::typed::EventType;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct TurnedOn;
//! impl EventType for TurnedOn { const NAME: &'static str = "TurnedOn"; }
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct TurnedOff;
//! impl EventType for TurnedOff { const NAME: &'static str = "TurnedOff"; }
//! events! {
//!     #[derive(Debug, Clone, PartialEq)]
//!     enum LightEvent { On(TurnedOn), Off(TurnedOff) }
//! }
//!
//! #[derive(Debug, PartialEq, thiserror::Error)]
//! enum SwitchError {
//!     #[error("the light is already on")]
//!     AlreadyOn,
//! }
//!
//! #[derive(Debug, Default)]
//! struct LightSwitch { shines: bool, recorder: Recorder<LightEvent> }
//!
//! impl Aggregate for LightSwitch {
//!     const CATEGORY: &'static str = "light_switch";
//!     type Event = LightEvent;
//!     fn apply(&mut self, event: &LightEvent) { self.shines = matches!(event, LightEvent::On(_)); }
//!     fn recorder(&self) -> &Recorder<LightEvent> { &self.recorder }
//!     fn recorder_mut(&mut self) -> &mut Recorder<LightEvent> { &mut self.recorder }
//! }
//!
//! impl LightSwitch {
//!     fn turn_on(&mut self) -> Result<(), SwitchError> {
//!         if self.shines { return Err(SwitchError::AlreadyOn); }
//!         self.record(TurnedOn);
//!         Ok(())
//!     }
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path().join("switches"))?;
//! let switches = Repository::<LightSwitch, _>::new(&store);
//! switches.create("kitchen", LightSwitch::turn_on)?;
//! let again = switches.update("kitchen", LightSwitch::turn_on);
//! assert!(matches!(again, Err(DomainError::Rejected(SwitchError::AlreadyOn))));
//! assert_eq!(store.stream_version("light_switch-kitchen")?, Some(0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`record`]: Aggregate::record
//! [`dispatch`]: Aggregate::dispatch

mod aggregate;
mod bus;
mod context;
mod event_store;
#[cfg(feature = "testing")]
pub mod testing;
mod transport;
mod unit_of_work;
mod workflow;

use std::convert::Infallible;

pub use aggregate::{Aggregate, Command, Dispatched, Recorder, Snapshot};
pub use bus::{BusError, MAX_SETTLE_STEPS, MessageBus};
pub use context::{CommandContext, ContextGuard};
pub use event_store::{
    AnnalsBacked, EventStore, InMemoryEventStore, Part, PublishingStore, SinkholeEventStore,
};
pub use repository::Repository;
pub use transport::{EventstreamPublisher, InMemoryTransport, Transport};
pub use unit_of_work::{UNIQUE_CLAIMED, UnitOfWork};
pub use workflow::{COMMAND_FAILED, COMMAND_HANDLED, CommandRelay, RelayFailure, RelayReport};

mod repository;

use crate::{BoxError, Error};

/// The event type under which a dispatched command is stored in its workflow's stream
/// (specified in `src/log/records.rs`).
pub use crate::records::COMMAND_DISPATCHED as COMMAND_EVENT_TYPE;

/// Why a domain operation did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError<E = Infallible> {
    /// The command refused: the aggregate's rules said no (the `E` its command method
    /// returned). Nothing was saved.
    #[error("rejected: {0}")]
    Rejected(E),
    /// The aggregate has no events.
    #[error("`{stream}` does not exist")]
    NotFound {
        /// Its stream.
        stream: String,
    },
    /// The store failed (or the expected version no longer matched:
    /// [`Error::WrongExpectedVersion`]).
    #[error(transparent)]
    Store(#[from] Error),
}

impl<E> DomainError<E> {
    /// The store's error, if that is what this is.
    pub fn store_error(&self) -> Option<&Error> {
        match self {
            DomainError::Store(e) => Some(e),
            _ => None,
        }
    }

    /// Whether another writer changed the aggregate first (the expected version no longer
    /// matched): loading it again and retrying may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, DomainError::Store(Error::WrongExpectedVersion { .. }))
    }

    /// This error with the rejection mapped by `f`.
    pub fn map_rejected<F>(self, f: impl FnOnce(E) -> F) -> DomainError<F> {
        match self {
            DomainError::Rejected(e) => DomainError::Rejected(f(e)),
            DomainError::NotFound { stream } => DomainError::NotFound { stream },
            DomainError::Store(e) => DomainError::Store(e),
        }
    }
}

impl DomainError<Infallible> {
    /// This error as a `DomainError<E>` for any `E` (it holds no rejection).
    pub fn widen<E>(self) -> DomainError<E> {
        self.map_rejected(|never| match never {})
    }
}

impl<E: Into<BoxError>> DomainError<E> {
    /// This error boxed: a rejection as its own error value (so it can be downcast), anything
    /// else as the `DomainError` itself.
    pub fn into_box(self) -> BoxError {
        match self {
            DomainError::Rejected(e) => e.into(),
            DomainError::NotFound { stream } => {
                Box::new(DomainError::<Infallible>::NotFound { stream })
            }
            DomainError::Store(e) => Box::new(e),
        }
    }
}
