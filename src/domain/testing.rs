//! Given/when/then for aggregates and for the message bus, on a real annals store in a
//! temporary folder (removed when the test's value is dropped).
//!
//! ```
//! use annals::domain::testing::AggregateTest;
//! use annals::domain::{Aggregate, Recorder};
//! use annals::events;
//! use annals::typed::EventType;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct TurnedOn;
//! impl EventType for TurnedOn { const NAME: &'static str = "TurnedOn"; }
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct TurnedOff;
//! impl EventType for TurnedOff { const NAME: &'static str = "TurnedOff"; }
//! events! { #[derive(Debug, Clone, PartialEq)] enum LightEvent { On(TurnedOn), Off(TurnedOff) } }
//!
//! #[derive(Debug, Default)]
//! struct LightSwitch { shines: bool, recorder: Recorder<LightEvent> }
//! impl Aggregate for LightSwitch {
//!     const CATEGORY: &'static str = "light_switch";
//!     type Event = LightEvent;
//!     fn apply(&mut self, e: &LightEvent) { self.shines = matches!(e, LightEvent::On(_)); }
//!     fn recorder(&self) -> &Recorder<LightEvent> { &self.recorder }
//!     fn recorder_mut(&mut self) -> &mut Recorder<LightEvent> { &mut self.recorder }
//! }
//! impl LightSwitch {
//!     fn turn_off(&mut self) -> Result<(), &'static str> {
//!         if !self.shines { return Err("already off"); }
//!         self.record(TurnedOff);
//!         Ok(())
//!     }
//! }
//!
//! let mut test = AggregateTest::<LightSwitch>::new("kitchen")?;
//! test.given([TurnedOn])?.when(LightSwitch::turn_off).then([TurnedOff]);
//! test.when(LightSwitch::turn_off).then_rejected("already off");
//! # Ok::<(), annals::Error>(())
//! ```

use std::fmt::Debug;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use super::bus::{BusError, MessageBus};
use super::event_store::{EventStore, Part, PublishingStore};
use super::repository::Repository;
use super::transport::InMemoryTransport;
use super::workflow::{CommandRelay, RelayReport};
use super::{Aggregate, DomainError};
use crate::outbox::Envelope;
use crate::{Direction, ExpectedVersion, Position, RecordedEvent, Result, Store, StoreBuilder};

/// An annals store in a temporary folder, removed on drop. Derefs to the [`Store`].
///
/// ```
/// use annals::domain::testing::TempStore;
/// use annals::{ExpectedVersion, NewEvent};
///
/// let mut store = TempStore::new()?;
/// store.append("s", ExpectedVersion::NoStream, [NewEvent::new("E", "x")])?;
/// store.reopen()?;
/// assert_eq!(store.stream_version("s")?, Some(0));
/// # Ok::<(), annals::Error>(())
/// ```
pub struct TempStore {
    // Field order: the store closes before its folder is removed.
    store: Option<Store>,
    path: PathBuf,
    builder: fn() -> StoreBuilder,
    _dir: tempfile::TempDir,
}

impl TempStore {
    /// A new store with the default options.
    pub fn new() -> Result<Self> {
        Self::with(Store::builder)
    }

    /// A new store with the options `builder` returns (used again by [`reopen`](Self::reopen)).
    pub fn with(builder: fn() -> StoreBuilder) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("annals-test-").tempdir()?;
        let path = dir.path().join("store");
        let store = builder().open(&path)?;
        Ok(TempStore {
            store: Some(store),
            path,
            builder,
            _dir: dir,
        })
    }

    /// Where the store is (without the `.annals` extension).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the store and opens it again (recovery runs as after any restart).
    pub fn reopen(&mut self) -> Result<()> {
        if let Some(store) = self.store.take() {
            store.close()?;
        }
        self.store = Some((self.builder)().open(&self.path)?);
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        self.store
            .as_ref()
            .expect("a TempStore is open except inside reopen")
    }
}

impl Deref for TempStore {
    type Target = Store;

    fn deref(&self) -> &Store {
        self.store()
    }
}

/// Given/when/then for one aggregate on a real store; see the [module docs](self).
pub struct AggregateTest<A: Aggregate> {
    store: TempStore,
    id: String,
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// A test of the aggregate `id`, in a new temporary store.
    pub fn new(id: &str) -> Result<Self> {
        Ok(AggregateTest {
            store: TempStore::new()?,
            id: id.to_owned(),
            _aggregate: std::marker::PhantomData,
        })
    }

    /// The store.
    pub fn store(&self) -> &TempStore {
        &self.store
    }

    /// Appends `events` to the aggregate's history.
    pub fn given<E: Into<A::Event>>(
        &mut self,
        events: impl IntoIterator<Item = E>,
    ) -> Result<&mut Self> {
        self.store.register_events::<A::Event>();
        self.store.register_events::<A::Event>();
        let events = events
            .into_iter()
            .map(|e| self.store.new_event(&e.into()))
            .collect::<Result<Vec<_>>>()?;
        if !events.is_empty() {
            self.store
                .append(&A::stream_name(&self.id), ExpectedVersion::Any, events)?;
        }
        Ok(self)
    }

    /// Loads the aggregate (or starts a new one if it has no history), runs `command` on it and
    /// saves what it recorded; the outcome holds the command's result and the events it added.
    pub fn when<R, E>(
        &mut self,
        command: impl FnOnce(&mut A) -> std::result::Result<R, E>,
    ) -> AggregateOutcome<A, R, E> {
        let stream = A::stream_name(&self.id);
        let before = self
            .store
            .stream_version(&stream)
            .ok()
            .flatten()
            .map_or(0, |v| v + 1);
        let result = Repository::<A, Store>::new(&self.store).aggregate(&self.id, command);
        let events = self
            .store
            .read_stream(&stream, before, Direction::Forwards, usize::MAX)
            .and_then(|events| {
                events
                    .map(|e| e.and_then(|e| self.store.decode::<A::Event>(&e)))
                    .collect::<Result<Vec<_>>>()
            });
        AggregateOutcome { result, events }
    }

    /// The aggregate as the store has it now.
    pub fn aggregate(&self) -> Result<Option<A>> {
        Repository::<A, Store>::new(&self.store).load(&self.id)
    }
}

/// What a command did to an aggregate in an [`AggregateTest`].
#[derive(Debug)]
pub struct AggregateOutcome<A: Aggregate, R, E> {
    /// The command's result (or why saving failed).
    pub result: std::result::Result<R, DomainError<E>>,
    /// The events it added to the stream.
    pub events: Result<Vec<A::Event>>,
}

impl<A: Aggregate, R: Debug, E: Debug> AggregateOutcome<A, R, E>
where
    A::Event: PartialEq + Debug,
{
    /// Asserts that the command succeeded and added exactly `expected`; returns its result.
    #[track_caller]
    pub fn then<X: Into<A::Event>>(self, expected: impl IntoIterator<Item = X>) -> R {
        let expected: Vec<A::Event> = expected.into_iter().map(Into::into).collect();
        let events = self.events.expect("reading the new events back");
        match self.result {
            Ok(r) => {
                assert_eq!(events, expected, "the events the command added");
                r
            }
            Err(e) => panic!("expected the command to succeed with {expected:?}, it failed: {e:?}"),
        }
    }

    /// Asserts that the command was rejected with `expected` and added nothing.
    #[track_caller]
    pub fn then_rejected(self, expected: E)
    where
        E: PartialEq,
    {
        match self.result {
            Err(DomainError::Rejected(e)) => assert_eq!(e, expected, "the rejection"),
            Ok(r) => {
                panic!("expected the rejection {expected:?}, the command succeeded with {r:?}")
            }
            Err(e) => panic!("expected the rejection {expected:?}, got {e:?}"),
        }
        let events = self.events.expect("reading the new events back");
        assert!(
            events.is_empty(),
            "a rejected command added events: {events:?}"
        );
    }
}

/// The store a [`BusTest`] runs on: annals in a temporary folder, publishing through an
/// in-memory transport.
pub type TestStore = PublishingStore<InMemoryTransport>;

/// Given/when/then for the message bus: commands handled and committed on a real store, with
/// the new events and the published envelopes to check.
///
/// ```
/// use annals::domain::testing::{BusOutcome, BusTest, TestStore};
/// use annals::domain::{Aggregate, Recorder, UnitOfWork};
/// use annals::events;
/// use annals::typed::EventType;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct Opened { owner: String }
/// impl EventType for Opened {
///     const NAME: &'static str = "account_opened";
///     const PUBLISHED: bool = true;
/// }
/// events! { #[derive(Debug, Clone, PartialEq)] enum AccountEvent { Opened(Opened) } }
/// #[derive(Default)]
/// struct Account { recorder: Recorder<AccountEvent> }
/// impl Aggregate for Account {
///     const CATEGORY: &'static str = "account";
///     type Event = AccountEvent;
///     fn apply(&mut self, _: &AccountEvent) {}
///     fn recorder(&self) -> &Recorder<AccountEvent> { &self.recorder }
///     fn recorder_mut(&mut self) -> &mut Recorder<AccountEvent> { &mut self.recorder }
/// }
/// struct Open { id: String, owner: String }
///
/// let mut test = BusTest::new()?;
/// test.bus_mut().handle_with(|c: Open, uow: &mut UnitOfWork<'_, TestStore>| -> annals::Result<()> {
///     uow.create::<Account>(&c.id).record(Opened { owner: c.owner });
///     Ok(())
/// })?;
/// let outcome: BusOutcome<()> = test.when(Open { id: "a1".into(), owner: "ada".into() });
/// outcome.result.as_ref().unwrap();
/// assert_eq!(outcome.event_types(), ["account_opened"]);
/// assert_eq!(outcome.published[0].message_type, "account_opened_v1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BusTest {
    store: TestStore,
    transport: InMemoryTransport,
    bus: MessageBus<TestStore>,
    _dir: tempfile::TempDir,
}

impl BusTest {
    /// A bus with no handlers over a new temporary store.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("annals-test-").tempdir()?;
        let store = std::sync::Arc::new(Store::open(dir.path().join("store"))?);
        let transport = InMemoryTransport::default();
        let store = PublishingStore::new(store, "bus-test", transport.clone())?;
        Ok(BusTest {
            store,
            transport,
            bus: MessageBus::new(),
            _dir: dir,
        })
    }

    /// The bus, to register handlers and listeners.
    pub fn bus_mut(&mut self) -> &mut MessageBus<TestStore> {
        &mut self.bus
    }

    /// The bus.
    pub fn bus(&self) -> &MessageBus<TestStore> {
        &self.bus
    }

    /// The store.
    pub fn store(&self) -> &TestStore {
        &self.store
    }

    /// The transport (everything published so far).
    pub fn transport(&self) -> &InMemoryTransport {
        &self.transport
    }

    /// Appends `events` to the history of the aggregate `id` (they are not published).
    pub fn given<A: Aggregate, E: Into<A::Event>>(
        &mut self,
        id: &str,
        events: impl IntoIterator<Item = E>,
    ) -> Result<&mut Self> {
        self.store.register_events::<A::Event>();
        let events = events
            .into_iter()
            .map(|e| self.store.new_event(&e.into()))
            .collect::<Result<Vec<_>>>()?;
        self.store.append(vec![Part {
            stream: A::stream_name(id),
            expected: ExpectedVersion::Any,
            events,
        }])?;
        // History is not news: let the outbox pass over it.
        self.store.publish()?;
        self.transport.clear();
        Ok(self)
    }

    /// Handles `command` in a new unit of work and commits it; the outcome holds the handler's
    /// reply, the events appended and the envelopes published.
    pub fn when<C: Send + 'static, R: 'static>(&mut self, command: C) -> BusOutcome<R> {
        let from = self.store.store().end_position();
        let published_before = self.transport.events().len();
        let result = self.bus.execute(command, &self.store);
        self.outcome(result, from, published_before)
    }

    /// Runs the command relay `name` (the commands workflows dispatched); the outcome holds its
    /// report, the events its handlers appended and the envelopes published.
    pub fn relay(&mut self, name: &str) -> BusOutcome<RelayReport> {
        let from = self.store.store().end_position();
        let published_before = self.transport.events().len();
        let result = CommandRelay::new(name)
            .and_then(|relay| relay.run(&self.bus, &self.store))
            .map_err(BusError::Store);
        self.outcome(result, from, published_before)
    }

    fn outcome<R>(
        &self,
        result: std::result::Result<R, BusError>,
        from: Position,
        published_before: usize,
    ) -> BusOutcome<R> {
        let events = self
            .store
            .store()
            .read_all(from, Direction::Forwards, usize::MAX)
            .and_then(|events| events.collect::<Result<Vec<RecordedEvent>>>())
            .unwrap_or_else(|e| panic!("reading the new events back: {e}"));
        let published = self
            .transport
            .events()
            .split_off(published_before.min(self.transport.events().len()));
        BusOutcome {
            result,
            events,
            published,
        }
    }

    /// Decodes an event of an outcome as the aggregate's event type.
    pub fn decode<A: Aggregate>(&self, event: &RecordedEvent) -> Result<A::Event> {
        self.store.decode::<A::Event>(event)
    }
}

/// What handling a command did in a [`BusTest`].
#[derive(Debug)]
pub struct BusOutcome<R> {
    /// The handler's reply, or why nothing was committed.
    pub result: std::result::Result<R, BusError>,
    /// The events appended (outside the `$` streams), in log order.
    pub events: Vec<RecordedEvent>,
    /// The envelopes published, in order.
    pub published: Vec<Envelope>,
}

impl<R: Debug> BusOutcome<R> {
    /// The type names of the new events.
    pub fn event_types(&self) -> Vec<&str> {
        self.events.iter().map(RecordedEvent::event_type).collect()
    }

    /// Asserts that the command was rejected with a `T` and that nothing was appended or
    /// published; returns the rejection.
    #[track_caller]
    pub fn then_rejected<T: std::error::Error + 'static>(&self) -> &T {
        let Err(e) = &self.result else {
            panic!(
                "expected a rejection, the command succeeded with {:?}",
                self.result
            )
        };
        let rejection = e.rejection::<T>().unwrap_or_else(|| {
            panic!(
                "expected a rejection of type {}, got {e:?}",
                std::any::type_name::<T>()
            )
        });
        assert!(
            self.events.is_empty(),
            "a rejected command appended {:?}",
            self.event_types()
        );
        assert!(
            self.published.is_empty(),
            "a rejected command published {:?}",
            self.published
        );
        rejection
    }
}
