//! Loading and saving aggregates, with optional snapshots (the reviewed code's
//! `EventSourcingRepository`, `event_sourcery`'s `Repository` and its `aggregate(stream_id)`
//! context manager).

use std::marker::PhantomData;

use super::aggregate::{Aggregate, Dispatched, Snapshot};
use super::event_store::{EventStore, Part};
use super::{COMMAND_EVENT_TYPE, CommandContext, DomainError};
use crate::{AppendResult, Error, ExpectedVersion, NewEvent, Result};

/// What [`Repository::part`] takes off an aggregate: the part of the append that saves it, and
/// the events and commands it holds (to put back if the append fails).
pub(crate) type Taken<A> = (Part, Vec<<A as Aggregate>::Event>, Vec<Dispatched>);

/// How snapshots of `A` are taken and read (built where `A: Snapshot` is known).
struct Snapshotting<A> {
    every: u64,
    schema: u32,
    encode: fn(&A) -> std::result::Result<Vec<u8>, String>,
    decode: fn(&[u8]) -> Option<A>,
}

/// Loads and saves aggregates of type `A` in an [`EventStore`].
///
/// ```
/// # use annals::domain::{Aggregate, Recorder};
/// # use annals::events;
/// # use annals::typed::EventType;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # struct Added { n: u32 }
/// # impl EventType for Added { const NAME: &'static str = "Added"; }
/// # #[derive(Debug, Default)]
/// # struct Counter { total: u32, recorder: Recorder<Added> }
/// # impl Aggregate for Counter {
/// #     const CATEGORY: &'static str = "counter";
/// #     type Event = Added;
/// #     fn apply(&mut self, e: &Added) { self.total += e.n; }
/// #     fn recorder(&self) -> &Recorder<Added> { &self.recorder }
/// #     fn recorder_mut(&mut self) -> &mut Recorder<Added> { &mut self.recorder }
/// # }
/// use annals::Store;
/// use annals::domain::{DomainError, Repository};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("s"))?;
/// let counters = Repository::<Counter, _>::new(&store);
/// counters.create("c1", |c| -> Result<(), DomainError> { c.record(Added { n: 2 }); Ok(()) })?;
/// counters.update("c1", |c| -> Result<(), DomainError> { c.record(Added { n: 3 }); Ok(()) })?;
/// let c = counters.get("c1")?;
/// assert_eq!((c.total, c.version()), (5, Some(1)));
/// assert_eq!(store.stream_version("counter-c1")?, Some(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Repository<'s, A, S> {
    store: &'s S,
    snapshots: Option<Snapshotting<A>>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<'s, A: Aggregate, S: EventStore> Repository<'s, A, S> {
    /// A repository over `store`, without snapshots.
    pub fn new(store: &'s S) -> Self {
        store.register_events::<A::Event>();
        Self::unregistered(store)
    }

    /// A repository over `store` that does not register `A`'s events (already done).
    pub(crate) fn unregistered(store: &'s S) -> Self {
        Repository {
            store,
            snapshots: None,
            _aggregate: PhantomData,
        }
    }

    /// Takes a snapshot every `every` events, and loads from the latest one.
    pub fn with_snapshots(mut self, every: u64) -> Self
    where
        A: Snapshot,
    {
        self.snapshots = Some(Snapshotting {
            every: every.max(1),
            schema: A::SNAPSHOT_VERSION,
            encode: |a| {
                bincode::serde::encode_to_vec(a, bincode::config::standard())
                    .map_err(|e| e.to_string())
            },
            decode: |bytes| {
                let (a, used) =
                    bincode::serde::decode_from_slice(bytes, bincode::config::standard()).ok()?;
                (used == bytes.len()).then_some(a)
            },
        });
        self
    }

    /// The store.
    pub fn store(&self) -> &'s S {
        self.store
    }

    /// The aggregate with id `id` (from its latest usable snapshot and later events), or
    /// `None` if it has no events.
    pub fn load(&self, id: &str) -> Result<Option<A>> {
        let stream = A::stream_name(id);
        let mut aggregate = A::default();
        let mut version = None;
        if let Some(snap) = &self.snapshots
            && let Some((at, schema, bytes)) = self.store.load_snapshot(&stream)?
            && schema == snap.schema
            && let Some(state) = (snap.decode)(&bytes)
        {
            aggregate = state;
            version = Some(at);
        }
        let from = version.map_or(0, |v| v + 1);
        let store = self.store;
        store.read_stream(&stream, from, &mut |e| {
            version = Some(e.version());
            if e.event_type() != COMMAND_EVENT_TYPE {
                aggregate.apply(&store.decode::<A::Event>(e)?);
            }
            Ok(())
        })?;
        if version.is_none() {
            return Ok(None);
        }
        aggregate.recorder_mut().start(id, version);
        Ok(Some(aggregate))
    }

    /// Deletes the aggregate with id `id` (a soft delete of its stream, see
    /// [`crate::Store::delete_stream`]): it loads as `None` afterwards, and creating it again
    /// starts a new history whose versions continue. `expected` is the version the caller
    /// last saw (`ExpectedVersion::Any` to delete whatever it is).
    ///
    /// ```
    /// # use annals::domain::{Aggregate, Recorder};
    /// # use annals::typed::EventType;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    /// # struct Added { n: u32 }
    /// # impl EventType for Added { const NAME: &'static str = "Added"; }
    /// # #[derive(Debug, Default)]
    /// # struct Counter { total: u32, recorder: Recorder<Added> }
    /// # impl Aggregate for Counter {
    /// #     const CATEGORY: &'static str = "counter";
    /// #     type Event = Added;
    /// #     fn apply(&mut self, e: &Added) { self.total += e.n; }
    /// #     fn recorder(&self) -> &Recorder<Added> { &self.recorder }
    /// #     fn recorder_mut(&mut self) -> &mut Recorder<Added> { &mut self.recorder }
    /// # }
    /// use annals::domain::{DomainError, Repository};
    /// use annals::{ExpectedVersion, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// let counters = Repository::<Counter, _>::new(&store);
    /// counters.create("c1", |c| -> Result<(), DomainError> { c.record(Added { n: 2 }); Ok(()) })?;
    /// counters.delete("c1", ExpectedVersion::Exact(0))?;
    /// assert!(counters.load("c1")?.is_none());
    /// counters.create("c1", |c| -> Result<(), DomainError> { c.record(Added { n: 5 }); Ok(()) })?;
    /// let c = counters.get("c1")?;
    /// assert_eq!((c.total, c.version()), (5, Some(1)), "a new history, versions continuing");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn delete(&self, id: &str, expected: crate::ExpectedVersion) -> Result<()> {
        self.store.delete_stream(&A::stream_name(id), expected)
    }

    /// The aggregate with id `id`; [`DomainError::NotFound`] if it has no events.
    pub fn get(&self, id: &str) -> std::result::Result<A, DomainError> {
        self.load(id)?.ok_or_else(|| DomainError::NotFound {
            stream: A::stream_name(id),
        })
    }

    /// A new aggregate with id `id` (nothing stored yet).
    pub fn new_aggregate(id: &str) -> A {
        let mut aggregate = A::default();
        aggregate.recorder_mut().start(id, None);
        aggregate
    }

    /// The events and commands recorded on `aggregate`, as the part of an append that saves them
    /// at the version it was loaded at. Takes them off the aggregate.
    pub(crate) fn part(&self, aggregate: &mut A) -> Result<Option<Taken<A>>> {
        let (changes, dispatched) = aggregate.recorder_mut().take();
        if changes.is_empty() && dispatched.is_empty() {
            return Ok(None);
        }
        let encoded: Result<Vec<NewEvent>> = changes
            .iter()
            .map(|change| self.store.new_event(change))
            .chain(dispatched.iter().map(command_event))
            .collect();
        let mut events = match encoded {
            Ok(events) => events,
            Err(e) => {
                aggregate.recorder_mut().put_back(changes, dispatched);
                return Err(e);
            }
        };
        CommandContext::apply_current(&mut events);
        let part = Part {
            stream: A::stream_name(aggregate.id()),
            expected: aggregate
                .version()
                .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact),
            events,
        };
        Ok(Some((part, changes, dispatched)))
    }

    /// Saves what was recorded on `aggregate` with the version it was loaded at as the expected
    /// version; `None` if nothing was recorded. On failure the recorded events stay on it.
    pub fn save(&self, aggregate: &mut A) -> Result<Option<AppendResult>> {
        let Some((part, changes, dispatched)) = self.part(aggregate)? else {
            return Ok(None);
        };
        let before = aggregate.version();
        match self.store.append(vec![part]) {
            Ok(mut results) => {
                let result = results.pop().expect("one part, one result");
                // The part had events, so the stream has a version.
                let version = result.version.unwrap_or_default();
                aggregate.recorder_mut().saved(version);
                self.store.committed()?;
                self.snapshot_if_due(aggregate, before, version);
                Ok(Some(result))
            }
            Err(e) => {
                aggregate.recorder_mut().put_back(changes, dispatched);
                Err(e)
            }
        }
    }

    /// Takes a snapshot if `before..=after` crossed a multiple of the snapshot interval.
    pub(crate) fn snapshot_if_due(&self, aggregate: &A, before: Option<u64>, after: u64) {
        let Some(snap) = &self.snapshots else { return };
        let (was, now) = (before.map_or(0, |v| v + 1), after + 1);
        if now / snap.every == was / snap.every {
            return;
        }
        let stream = A::stream_name(aggregate.id());
        // A snapshot is an optimisation: failing to take one loses nothing.
        let taken = (snap.encode)(aggregate)
            .map_err(|reason| Error::Encode {
                event_type: "Snapshot".into(),
                reason,
            })
            .and_then(|state| self.store.save_snapshot(&stream, after, snap.schema, state));
        if let Err(e) = taken {
            tracing::warn!(stream = %stream, error = %e, "annals: could not take a snapshot");
        }
    }

    /// Creates the aggregate `id`: runs `command` on a new one and saves what it recorded
    /// (expecting no stream). Returns the command's result.
    pub fn create<R, E>(
        &self,
        id: &str,
        command: impl FnOnce(&mut A) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, DomainError<E>> {
        let mut aggregate = Self::new_aggregate(id);
        let r = command(&mut aggregate).map_err(DomainError::Rejected)?;
        self.save(&mut aggregate)?;
        Ok(r)
    }

    /// Loads the aggregate `id`, runs `command` on it, and saves what it recorded (expecting the
    /// version it was loaded at). Returns the command's result.
    pub fn update<R, E>(
        &self,
        id: &str,
        command: impl FnOnce(&mut A) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, DomainError<E>> {
        let mut aggregate = self.get(id).map_err(DomainError::widen)?;
        let r = command(&mut aggregate).map_err(DomainError::Rejected)?;
        self.save(&mut aggregate)?;
        Ok(r)
    }

    /// Works on the aggregate `id`, existing or new (the `with repository.aggregate(stream_id)`
    /// block of `event_sourcery`): loads it (or starts a new one), runs `command`, and saves
    /// what it recorded. Returns the command's result.
    pub fn aggregate<R, E>(
        &self,
        id: &str,
        command: impl FnOnce(&mut A) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, DomainError<E>> {
        let mut aggregate = match self.load(id)? {
            Some(a) => a,
            None => Self::new_aggregate(id),
        };
        let r = command(&mut aggregate).map_err(DomainError::Rejected)?;
        self.save(&mut aggregate)?;
        Ok(r)
    }

    /// Like [`update`](Self::update), but when another writer got there first (the expected
    /// version no longer matches) reloads and runs `command` again, up to `attempts` times in
    /// all.
    ///
    /// Only [`Error::WrongExpectedVersion`] is retried. A save whose event ids are already
    /// stored elsewhere fails with [`Error::DuplicateEventId`] and is **not** retried: that is a
    /// stale writer re-sending events it already wrote (KurrentDB would treat the append as
    /// idempotent and succeed). Give each attempt fresh ids (`record` does, with UUIDv7) and
    /// this cannot happen; if you set ids yourself, reload and decide instead of retrying.
    pub fn update_retrying<R, E>(
        &self,
        id: &str,
        attempts: usize,
        mut command: impl FnMut(&mut A) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, DomainError<E>> {
        let mut left = attempts.max(1);
        loop {
            left -= 1;
            let mut aggregate = self.get(id).map_err(DomainError::widen)?;
            let r = command(&mut aggregate).map_err(DomainError::Rejected)?;
            match self.save(&mut aggregate) {
                Ok(_) => return Ok(r),
                Err(Error::WrongExpectedVersion { .. }) if left > 0 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The stored form of a dispatched command: an event of the workflow's stream.
pub(crate) fn command_event(d: &Dispatched) -> Result<NewEvent> {
    NewEvent::json(
        COMMAND_EVENT_TYPE,
        &serde_json::json!({ "command": d.command, "body": d.body }),
    )
}
