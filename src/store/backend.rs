//! The surface both backends share ([`Backend`]): the file [`Store`] and the PostgreSQL
//! `PgStore` (feature `postgres`) offer these operations with the same semantics, so code
//! written against the trait (the [outbox](crate::outbox), a [`Follower`], an export or an
//! import, a test suite) runs unchanged on either.
//!
//! Reads return owned events, at most `limit` per call: page on from the last event seen
//! (its [`next_position`](RecordedEvent::next_position), or its version + 1 in a stream).

use std::sync::Arc;
use std::time::Duration;

use super::Store;
use super::subscriptions::{BoxError, Filter};
use crate::error::{Error, Result};
use crate::event::{AppendResult, NewEvent, RecordedEvent};
use crate::log::records;
use crate::values::{Direction, ExpectedVersion, Position, SubscriptionId};

/// One stream's part of an atomic multi-stream append ([`Backend::transaction`]).
#[derive(Debug, Clone)]
pub struct Part {
    /// The stream.
    pub stream: String,
    /// What its version must be.
    pub expected: ExpectedVersion,
    /// What to append.
    pub events: Vec<NewEvent>,
}

impl Part {
    /// A part appending `events` to `stream` if its version is `expected`.
    pub fn new(
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Part {
        Part {
            stream: stream.into(),
            expected,
            events: events.into_iter().collect(),
        }
    }
}

/// A synchronous subscription's callback (see [`Backend::add_subscription`]).
pub type SubscriptionCallback =
    dyn Fn(&RecordedEvent) -> std::result::Result<(), BoxError> + Send + Sync;

/// What the file store and the PostgreSQL store both offer, with the same semantics.
///
/// ```
/// use annals::backend::{Backend, Part};
/// use annals::{Direction, ExpectedVersion, NewEvent, Position, Store};
///
/// fn place_order(events: &dyn Backend, id: u32) -> annals::Result<()> {
///     events.transaction(vec![
///         Part::new(format!("order-{id}"), ExpectedVersion::NoStream, [NewEvent::new("Placed", "{}")]),
///         Part::new("stock-1", ExpectedVersion::Any, [NewEvent::new("Reserved", "{}")]),
///     ])?;
///     Ok(())
/// }
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("shop"))?;
/// place_order(&store, 7)?;
/// let all = store.read_all_page(Position::START, Direction::Forwards, 10)?;
/// assert_eq!(all.len(), 2);
/// # Ok::<(), annals::Error>(())
/// ```
pub trait Backend: Send + Sync {
    /// Appends `events` to `stream` if its version is `expected` (see [`Store::append`]: the
    /// same rules, idempotent re-appends by event id included). `$` streams are refused.
    fn append_to_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult>;

    /// Appends every part, all or nothing, each checked against its expected version (a part
    /// sees the parts before it). `$` streams are allowed here: they are the records of the
    /// layers built on the store (checkpoints, outbox progress, command relays).
    fn transaction(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>>;

    /// Up to `limit` events of `stream` from version `from`, forwards or backwards (backwards
    /// from `u64::MAX` starts at the last one).
    fn read_stream_page(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Up to `limit` events of the global order from `from` (inclusive), without the engine's
    /// `$` records.
    fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Like [`read_all_page`](Self::read_all_page), with the engine's `$` records.
    fn read_log_page(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Up to `limit` events of a category (streams `CATEGORY` and `CATEGORY-…`) from `from`.
    fn read_category_page(
        &self,
        category: &str,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Up to `limit` events of one type from `from`.
    fn read_event_type_page(
        &self,
        event_type: &str,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// The version of the stream's last event, `None` if it has none.
    fn current_version(&self, stream: &str) -> Result<Option<u64>>;

    /// Where the next event will go: every committed event is before it.
    fn next_position(&self) -> Result<Position>;

    /// Registers a synchronous subscription: after each append made through this handle (or
    /// a clone of it), `callback` is handed each new event `filter` matches, in log order,
    /// before the append returns; its failures are in the append's
    /// [`subscriber_failures`](AppendResult::subscriber_failures).
    fn add_subscription(
        &self,
        name: &str,
        filter: Filter,
        callback: Arc<SubscriptionCallback>,
    ) -> SubscriptionId;

    /// Removes a synchronous subscription; false if it was not registered.
    fn remove_subscription(&self, id: SubscriptionId) -> bool;

    /// The JSON form of an event and its schema version (what the outbox publishes).
    fn event_json(&self, event: &RecordedEvent) -> Result<(String, u32)>;

    /// Whether events of type `name` have a JSON form even when bincode-encoded (their type
    /// is registered).
    fn knows_type(&self, name: &str) -> bool;

    /// Waits until an event at or after `position` may be there, or `timeout` passed (a hint
    /// for loops that follow the log; it may return early).
    fn wait_past(&self, position: Position, timeout: Duration);

    /// The newest event of `stream`, if it has one.
    fn last_of(&self, stream: &str) -> Result<Option<RecordedEvent>> {
        Ok(self
            .read_stream_page(stream, u64::MAX, Direction::Backwards, 1)?
            .pop())
    }

    /// The checkpoint of the catch-up subscription `name` (the position it resumes at), the
    /// same record [`Store::catch_up`] keeps.
    fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        let stream = records::checkpoint_stream(name);
        crate::names::check_stream_name(&stream, true)?;
        self.last_of(&stream)?
            .map(|e| {
                records::decode_position(e.payload())
                    .map(Position::new)
                    .ok_or_else(|| Error::Decode {
                        position: e.position().as_u64(),
                        event_type: records::CHECKPOINT.into(),
                        reason: format!("a checkpoint holds {} bytes", records::POSITION_LEN),
                    })
            })
            .transpose()
    }

    /// Stores a snapshot of the state of `stream` at `version` (the record
    /// [`Store::save_snapshot`] keeps): `state` is its encoding, `schema` the version of
    /// that encoding. An optimisation for the domain floor, never a source of truth.
    fn store_snapshot(
        &self,
        stream: &str,
        version: u64,
        schema: u32,
        state: Vec<u8>,
    ) -> Result<AppendResult> {
        let event = NewEvent::new(records::SNAPSHOT, state)
            .with_schema_version(schema)
            .with_metadata(records::encode_snapshot_version(version).to_vec());
        let mut r = self.transaction(vec![Part::new(
            records::snapshot_stream(stream),
            ExpectedVersion::Any,
            [event],
        )])?;
        Ok(r.pop().expect("one result per part"))
    }

    /// The latest snapshot of `stream`: (the version it covers, schema, state), if any.
    fn latest_snapshot(&self, stream: &str) -> Result<Option<(u64, u32, bytes::Bytes)>> {
        let Some(e) = self.last_of(&records::snapshot_stream(stream))? else {
            return Ok(None);
        };
        Ok(records::decode_snapshot_version(e.metadata())
            .map(|version| (version, e.schema_version(), e.payload_bytes())))
    }

    /// Registers a synchronous subscription with a closure (see
    /// [`add_subscription`](Self::add_subscription)).
    fn subscribe(
        &self,
        name: &str,
        filter: Filter,
        callback: impl Fn(&RecordedEvent) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    ) -> SubscriptionId
    where
        Self: Sized,
    {
        self.add_subscription(name, filter, Arc::new(callback))
    }

    /// Durably records `position` as the checkpoint of the catch-up subscription `name`.
    fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        let event = NewEvent::new(
            records::CHECKPOINT,
            records::encode_position(position.as_u64()).to_vec(),
        );
        self.transaction(vec![Part::new(
            records::checkpoint_stream(name),
            ExpectedVersion::Any,
            [event],
        )])
        .map(drop)
    }
}

fn collect(events: impl Iterator<Item = Result<RecordedEvent>>) -> Result<Vec<RecordedEvent>> {
    events.collect()
}

impl Backend for Store {
    fn append_to_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.append(stream, expected, events)
    }

    fn transaction(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
        let mut tx = Store::transaction(self);
        for p in parts {
            tx = if p.stream.starts_with(records::RESERVED_PREFIX) {
                tx.append_reserved(&p.stream, p.expected, p.events)
            } else {
                tx.append(&p.stream, p.expected, p.events)
            };
        }
        tx.commit()
    }

    fn read_stream_page(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        collect(self.read_stream(stream, from, direction, limit)?)
    }

    fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        collect(self.read_all(from, direction, limit)?)
    }

    fn read_log_page(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        collect(self.read_log(from, direction, limit)?)
    }

    fn read_category_page(
        &self,
        category: &str,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        match direction {
            Direction::Forwards => collect(self.read_category(category, from, limit)?),
            Direction::Backwards => collect(self.read_category_backwards(category, from, limit)?),
        }
    }

    fn read_event_type_page(
        &self,
        event_type: &str,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        match direction {
            Direction::Forwards => collect(self.read_event_type(event_type, from, limit)?),
            Direction::Backwards => {
                collect(self.read_event_type_backwards(event_type, from, limit)?)
            }
        }
    }

    fn current_version(&self, stream: &str) -> Result<Option<u64>> {
        self.stream_version(stream)
    }

    fn next_position(&self) -> Result<Position> {
        Ok(self.end_position())
    }

    fn add_subscription(
        &self,
        name: &str,
        filter: Filter,
        callback: Arc<SubscriptionCallback>,
    ) -> SubscriptionId {
        self.subscribe(name, filter, move |e| callback(e))
    }

    fn remove_subscription(&self, id: SubscriptionId) -> bool {
        self.unsubscribe(id)
    }

    fn event_json(&self, event: &RecordedEvent) -> Result<(String, u32)> {
        self.to_json(event)
    }

    fn knows_type(&self, name: &str) -> bool {
        self.engine.registry.read().knows_name(name)
    }

    fn wait_past(&self, position: Position, timeout: Duration) {
        self.engine.wait_past(position.as_u64(), timeout);
    }
}

/// A [`Backend`] behind a reference or an [`Arc`] is one too (so a [`Follower`] can borrow
/// its store or share it).
macro_rules! forward_backend {
    ($($ty:ty),*) => {$(
        impl<B: Backend + ?Sized> Backend for $ty {
            fn append_to_stream(&self, stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> Result<AppendResult> {
                (**self).append_to_stream(stream, expected, events)
            }
            fn transaction(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
                (**self).transaction(parts)
            }
            fn read_stream_page(&self, stream: &str, from: u64, direction: Direction, limit: usize) -> Result<Vec<RecordedEvent>> {
                (**self).read_stream_page(stream, from, direction, limit)
            }
            fn read_all_page(&self, from: Position, direction: Direction, limit: usize) -> Result<Vec<RecordedEvent>> {
                (**self).read_all_page(from, direction, limit)
            }
            fn read_log_page(&self, from: Position, direction: Direction, limit: usize) -> Result<Vec<RecordedEvent>> {
                (**self).read_log_page(from, direction, limit)
            }
            fn read_category_page(&self, category: &str, from: Position, direction: Direction, limit: usize) -> Result<Vec<RecordedEvent>> {
                (**self).read_category_page(category, from, direction, limit)
            }
            fn read_event_type_page(&self, event_type: &str, from: Position, direction: Direction, limit: usize) -> Result<Vec<RecordedEvent>> {
                (**self).read_event_type_page(event_type, from, direction, limit)
            }
            fn current_version(&self, stream: &str) -> Result<Option<u64>> {
                (**self).current_version(stream)
            }
            fn next_position(&self) -> Result<Position> {
                (**self).next_position()
            }
            fn add_subscription(&self, name: &str, filter: Filter, callback: Arc<SubscriptionCallback>) -> SubscriptionId {
                (**self).add_subscription(name, filter, callback)
            }
            fn remove_subscription(&self, id: SubscriptionId) -> bool {
                (**self).remove_subscription(id)
            }
            fn event_json(&self, event: &RecordedEvent) -> Result<(String, u32)> {
                (**self).event_json(event)
            }
            fn knows_type(&self, name: &str) -> bool {
                (**self).knows_type(name)
            }
            fn wait_past(&self, position: Position, timeout: Duration) {
                (**self).wait_past(position, timeout)
            }
        }
    )*};
}

forward_backend!(&B, Arc<B>, Box<B>);

/// A catch-up subscription on any [`Backend`]: follows the global order (without the engine's
/// `$` records) from its checkpoint, handing out the events its filter matches. Its
/// checkpoint is the same record [`Store::catch_up`] keeps, so the two resume each other.
/// After a crash it resumes at its last checkpoint: events after it are handed out again (at
/// least once).
///
/// ```
/// use annals::backend::Follower;
/// use annals::subscriptions::Filter;
/// use annals::{ExpectedVersion, NewEvent, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("s"))?;
/// store.append("order-1", ExpectedVersion::Any, [NewEvent::new("Placed", "{}")])?;
/// let mut mailer = Follower::new(&store, "mailer", Filter::All)?;
/// assert_eq!(mailer.poll(100)?.len(), 1);
/// mailer.checkpoint()?;
/// let mut again = Follower::new(&store, "mailer", Filter::All)?;
/// assert!(again.poll(100)?.is_empty());
/// # Ok::<(), annals::Error>(())
/// ```
#[derive(Debug)]
pub struct Follower<B: Backend> {
    store: B,
    name: String,
    filter: Filter,
    next: Position,
    checkpointed: Option<Position>,
    /// Whether events were passed since the last checkpoint.
    unsaved: bool,
}

impl<B: Backend> Follower<B> {
    /// The subscription `name`, resuming at its checkpoint (the start of the log if it has
    /// none), handing out the events `filter` matches.
    pub fn new(store: B, name: &str, filter: Filter) -> Result<Follower<B>> {
        let checkpointed = store.load_checkpoint(name)?;
        Ok(Follower {
            store,
            name: name.to_owned(),
            filter,
            next: checkpointed.unwrap_or(Position::START),
            checkpointed,
            unsaved: false,
        })
    }

    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the next poll starts: every event before it has been handed out (or filtered
    /// away).
    pub fn position(&self) -> Position {
        self.next
    }

    /// The last checkpoint recorded, if any.
    pub fn checkpointed(&self) -> Option<Position> {
        self.checkpointed
    }

    /// Up to `max` matching events after the last one handed out, in the global order. The
    /// engine's `$` records are passed over (so a caught-up follower is at the end of the
    /// log, past its own checkpoint record).
    pub fn poll(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        let page = max.clamp(1, 10_000);
        while out.len() < max {
            let events = self
                .store
                .read_log_page(self.next, Direction::Forwards, page)?;
            let full = events.len() == page;
            let Some(last) = events.last() else {
                break;
            };
            let mut next = last.next_position();
            for e in events {
                if out.len() == max {
                    next = e.position();
                    break;
                }
                if !e.stream().starts_with(records::RESERVED_PREFIX) {
                    self.unsaved = true;
                    if self.filter.matches(&e) {
                        out.push(e);
                    }
                }
            }
            self.next = next;
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// Waits up to `timeout` for events past [`position`](Self::position) (it may return
    /// early); then [`poll`](Self::poll).
    pub fn wait(&self, timeout: Duration) {
        self.store.wait_past(self.next, timeout);
    }

    /// Durably records [`position`](Self::position) as the checkpoint. Writes nothing when
    /// no event was passed since the last one (only `$` records, its own among them).
    pub fn checkpoint(&mut self) -> Result<()> {
        if !self.unsaved || self.checkpointed == Some(self.next) {
            return Ok(());
        }
        self.store.save_checkpoint(&self.name, self.next)?;
        self.checkpointed = Some(self.next);
        self.unsaved = false;
        Ok(())
    }

    /// Runs a projection: hands every matching event not yet handled to `apply` (with
    /// `state`), in batches of up to `batch`, and checkpoints after each batch; returns how
    /// many events it handled once it is caught up. An error from `apply` stops it before the
    /// failing batch's checkpoint (that batch is handed out again next time).
    pub fn project<T>(
        &mut self,
        state: &mut T,
        batch: usize,
        mut apply: impl FnMut(&mut T, &RecordedEvent) -> Result<()>,
    ) -> Result<u64> {
        let mut handled = 0u64;
        loop {
            let start = self.next;
            let events = self.poll(batch.max(1))?;
            for e in &events {
                if let Err(error) = apply(state, e) {
                    self.next = start;
                    return Err(error);
                }
            }
            handled += events.len() as u64;
            self.checkpoint()?;
            if events.len() < batch.max(1) {
                return Ok(handled);
            }
        }
    }
}
