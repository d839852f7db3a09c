//! Event-sourced aggregates: state rebuilt by applying events, and command methods that record
//! new ones (the `EventSource` / `Aggregate` of the reviewed code, `event_sourcery`'s
//! `Aggregate` with `_apply` and `_event`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::typed::Events;

/// A command: a request to change something, handled by exactly one handler. Commands that
/// workflows dispatch are stored in the log, so they need a name and serde.
pub trait Command: Serialize + DeserializeOwned + Send + 'static {
    /// The command's name, stored with it: keep it stable.
    const NAME: &'static str;
}

/// A command a workflow dispatched, waiting to be saved with its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// [`Command::NAME`].
    pub command: &'static str,
    /// The command as JSON.
    pub body: String,
}

/// What an aggregate carries for the repository: its id, the version it was loaded at, the
/// events recorded since, and the commands dispatched since (workflows). Embed one in the
/// aggregate (with `#[serde(skip)]` if the aggregate is snapshotted).
#[derive(Debug, Clone, PartialEq)]
pub struct Recorder<E> {
    id: String,
    version: Option<u64>,
    changes: Vec<E>,
    dispatched: Vec<Dispatched>,
}

impl<E> Default for Recorder<E> {
    fn default() -> Self {
        Recorder {
            id: String::new(),
            version: None,
            changes: Vec::new(),
            dispatched: Vec::new(),
        }
    }
}

impl<E> Recorder<E> {
    /// The aggregate's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The version of the last stored event (`None`: nothing stored yet).
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// Events recorded and not yet saved.
    pub fn changes(&self) -> &[E] {
        &self.changes
    }

    /// Commands dispatched and not yet saved.
    pub fn dispatched(&self) -> &[Dispatched] {
        &self.dispatched
    }

    pub(crate) fn start(&mut self, id: &str, version: Option<u64>) {
        self.id = id.to_owned();
        self.version = version;
    }

    pub(crate) fn saved(&mut self, version: u64) {
        self.version = Some(version);
    }

    pub(crate) fn take(&mut self) -> (Vec<E>, Vec<Dispatched>) {
        (
            std::mem::take(&mut self.changes),
            std::mem::take(&mut self.dispatched),
        )
    }

    pub(crate) fn put_back(&mut self, changes: Vec<E>, dispatched: Vec<Dispatched>) {
        self.changes.splice(0..0, changes);
        self.dispatched.splice(0..0, dispatched);
    }
}

/// An event-sourced aggregate.
///
/// ```
/// use annals::domain::{Aggregate, Recorder};
/// use annals::events;
/// use annals::typed::EventType;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct TurnedOn;
/// impl EventType for TurnedOn { const NAME: &'static str = "TurnedOn"; }
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// struct TurnedOff;
/// impl EventType for TurnedOff { const NAME: &'static str = "TurnedOff"; }
/// events! {
///     #[derive(Debug, Clone, PartialEq)]
///     enum LightEvent { On(TurnedOn), Off(TurnedOff) }
/// }
///
/// #[derive(Debug, Default)]
/// struct LightSwitch { shines: bool, recorder: Recorder<LightEvent> }
///
/// impl Aggregate for LightSwitch {
///     const CATEGORY: &'static str = "light_switch";
///     type Event = LightEvent;
///     fn apply(&mut self, event: &LightEvent) {
///         self.shines = matches!(event, LightEvent::On(_));
///     }
///     fn recorder(&self) -> &Recorder<LightEvent> { &self.recorder }
///     fn recorder_mut(&mut self) -> &mut Recorder<LightEvent> { &mut self.recorder }
/// }
///
/// impl LightSwitch {
///     fn turn_on(&mut self) -> Result<(), &'static str> {
///         if self.shines { return Err("already on"); }
///         self.record(TurnedOn);
///         Ok(())
///     }
/// }
///
/// let mut switch = LightSwitch::from_history("kitchen", [LightEvent::Off(TurnedOff)]);
/// assert_eq!(switch.version(), Some(0));
/// switch.turn_on().unwrap();
/// assert!(switch.shines);
/// assert_eq!(switch.recorder().changes(), [LightEvent::On(TurnedOn)]);
/// assert_eq!(switch.turn_on(), Err("already on"));
/// ```
pub trait Aggregate: Default + Send + 'static {
    /// The category of its streams: an aggregate with id `ID` lives in stream `CATEGORY-ID`.
    const CATEGORY: &'static str;
    /// Its events.
    type Event: Events + Clone;

    /// Evolves the state by one event (never fails: the event happened).
    fn apply(&mut self, event: &Self::Event);

    /// The embedded [`Recorder`].
    fn recorder(&self) -> &Recorder<Self::Event>;

    /// The embedded [`Recorder`], mutably.
    fn recorder_mut(&mut self) -> &mut Recorder<Self::Event>;

    /// The aggregate's id.
    fn id(&self) -> &str {
        self.recorder().id()
    }

    /// The version of its last stored event (`None`: a new aggregate).
    fn version(&self) -> Option<u64> {
        self.recorder().version()
    }

    /// Records a new event: applies it and keeps it to be saved.
    fn record(&mut self, event: impl Into<Self::Event>)
    where
        Self: Sized,
    {
        let event = event.into();
        self.apply(&event);
        self.recorder_mut().changes.push(event);
    }

    /// Dispatches a command (workflows): it is saved with the aggregate's events, atomically,
    /// and handed to its handler exactly once by a [`CommandRelay`](crate::domain::CommandRelay).
    fn dispatch<C: Command>(&mut self, command: &C) -> crate::Result<()>
    where
        Self: Sized,
    {
        let body = crate::typed::to_json_string(command).map_err(|e| crate::Error::Encode {
            event_type: C::NAME.into(),
            reason: e.to_string(),
        })?;
        self.recorder_mut().dispatched.push(Dispatched {
            command: C::NAME,
            body,
        });
        Ok(())
    }

    /// The stream of the aggregate with id `id`.
    fn stream_name(id: &str) -> String {
        format!("{}-{id}", Self::CATEGORY)
    }

    /// Rebuilds an aggregate from its history (versions 0, 1, …).
    fn from_history(id: &str, events: impl IntoIterator<Item = Self::Event>) -> Self
    where
        Self: Sized,
    {
        let mut aggregate = Self::default();
        let mut version = None;
        for event in events {
            aggregate.apply(&event);
            version = Some(version.map_or(0, |v: u64| v + 1));
        }
        aggregate.recorder_mut().start(id, version);
        aggregate
    }
}

/// An aggregate whose state can be snapshotted: loading then starts from the latest snapshot
/// and applies only later events. Raise `SNAPSHOT_VERSION` when the state's shape changes: older
/// snapshots are then ignored (as are snapshots that no longer decode).
pub trait Snapshot: Aggregate + Serialize + DeserializeOwned {
    /// The version of the snapshot encoding.
    const SNAPSHOT_VERSION: u32 = 1;
}
