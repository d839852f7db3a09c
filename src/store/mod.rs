//! The [`Store`]: open, append, read, close.

mod background;
pub(crate) mod catch_up;
pub(crate) mod codec;
mod commit;
pub(crate) mod maintenance;
pub(crate) mod open;
pub(crate) mod options;
pub mod outbox;
mod read;
pub(crate) mod subscriptions;
pub(crate) mod typed;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::log::sync::LogSync;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::index::{Frozen, Index, PosIndex};
use crate::log::Layout;
use crate::log::format::FileHeader;
use crate::log::reader::LogReader;
use crate::log::recovery::Truncation;
use crate::storage::StorageFile;
use crate::values::{Direction, ExpectedVersion, Position};
use crate::event::{AppendResult, NewEvent, RecordedEvent};
use background::Background;
use commit::{Committer, Part, Poison};
use crate::names::{check_event_type, check_stream_name};
use options::Durability;
pub use options::StoreBuilder;

pub use read::{AllEvents, IndexedEvents, StreamEvents};

/// An annals store: one append-only log file plus its derived index.
///
/// A `Store` is `Send + Sync`: share it between threads by reference or in an `Arc`. Appends
/// from many threads are committed in groups (one write and one sync per group). Dropping the
/// store closes it; [`Store::close`] does the same and reports errors.
///
/// ```
/// use annals::{Direction, ExpectedVersion, NewEvent, Position, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("shop"))?;
/// let r = store.append(
///     "cart-7",
///     ExpectedVersion::NoStream,
///     [NewEvent::new("ItemAdded", "apple"), NewEvent::new("ItemAdded", "pear")],
/// )?;
/// assert_eq!(r.version, Some(1));
/// store.append("cart-7", r.next_expected(), [NewEvent::new("CheckedOut", "")])?;
///
/// let items: Vec<_> = store
///     .read_stream("cart-7", 0, Direction::Forwards, usize::MAX)?
///     .map(|e| e.map(|e| e.event_type().to_owned()))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(items, ["ItemAdded", "ItemAdded", "CheckedOut"]);
///
/// let newest = store.read_all(Position::END, Direction::Backwards, 1)?.next().unwrap()?;
/// assert_eq!(newest.event_type(), "CheckedOut");
/// # Ok::<(), annals::Error>(())
/// ```
pub struct Store {
    engine: Arc<Engine>,
    background: Mutex<Background>,
}

/// State shared by the store and its commit path.
pub(crate) struct Engine {
    path: PathBuf,
    header: FileHeader,
    layout: Layout,
    file: Arc<dyn StorageFile>,
    pub(crate) reader: LogReader,
    pub(crate) index: Arc<Index>,
    committer: Committer,
    pub(crate) poison: Arc<Poison>,
    /// Every sync of the log goes through it.
    pub(crate) sync: Arc<LogSync>,
    pub(crate) durability: Durability,
    max_event_size: u64,
    /// Opened with [`Store::open_read_only`]: nothing is ever written.
    pub(crate) read_only: bool,
    flusher: Mutex<background::Flusher>,
    recovery: RecoveryReport,
    pub(crate) counters: Counters,
    codec: codec::Codec,
    upcasters: parking_lot::RwLock<typed::Upcasters>,
    registry: parking_lot::RwLock<typed::Registry>,
    pub(crate) subscribers: subscriptions::Subscribers,
    /// Signalled after each published group, for waiting readers.
    appended: (Mutex<()>, parking_lot::Condvar),
    appended_waiters: std::sync::atomic::AtomicUsize,
    /// The sidecar still says "closed cleanly" (the store was opened clean and nothing was
    /// written since): the first write must clear that first.
    pub(crate) marked_clean: std::sync::atomic::AtomicBool,
}

/// Activity counters since the store was opened.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub events: AtomicU64,
    pub groups: AtomicU64,
}

/// What a store has done since it was opened; see [`Store::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Appends and transactions committed.
    pub commits: u64,
    /// Events written by them.
    pub events: u64,
    /// Write-and-sync rounds: with concurrent appenders, one round commits several appends
    /// (group commit), so this is at most `commits`.
    pub groups: u64,
}

/// What happened when the store was opened.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// How far the index sidecar covered the log (what was replayed started there).
    pub index_covered: Position,
    /// Why the index sidecar was rebuilt from the log, if it was.
    pub index_rebuilt: Option<String>,
    /// Commits read from the log to bring the index up to date.
    pub commits_replayed: u64,
    /// The tail that was dropped, if any: why, how many bytes, and where they were saved.
    /// (For a read-only open: what an open for writing would drop; nothing was changed.)
    pub truncated: Option<Truncation>,
    /// Bytes of the log's tail that no frame proved durable, written again and synced before
    /// anything could build on them (see the recovery rule).
    pub rewritten: u64,
    /// What an index rebuild that was told to accept a loss found missing, if anything.
    pub lost: Option<Lost>,
}

/// Acknowledged events missing from a log whose index was rebuilt with
/// [`StoreBuilder::accept_loss`]: the log ended before what the old index covered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lost {
    /// How far the old index covered the log.
    pub index_covered: u64,
    /// Where the log ended instead.
    pub log_end: u64,
    /// Events the old index counted that the log no longer holds.
    pub events: u64,
    /// Each stream that lost events: (name, events left, events the old index counted).
    pub streams: Vec<(String, u64, u64)>,
    /// All of it in words.
    pub description: String,
}

impl Store {
    /// Opens the store at `path` (`.annals` is appended if the name lacks it), creating it if
    /// it does not exist, with default options. See [`Store::builder`] for the options.
    ///
    /// Fails with [`Error::Locked`] if the store is open elsewhere, [`Error::NotAStore`] for a
    /// foreign file, [`Error::UnsupportedVersion`] for a newer format, and [`Error::Corrupt`]
    /// when acknowledged data fails its checks; none of these changes anything on disk.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        StoreBuilder::default().open(path)
    }

    /// Opens the store at `path` read-only: see [`StoreBuilder::read_only`].
    ///
    /// ```
    /// use annals::{Error, ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("shop");
    /// Store::open(&path)?.append("cart-1", ExpectedVersion::Any, [NewEvent::new("Added", "x")])?;
    /// let store = Store::open_read_only(&path)?;
    /// assert_eq!(store.stream_version("cart-1")?, Some(0));
    /// assert!(matches!(
    ///     store.append("cart-1", ExpectedVersion::Any, [NewEvent::new("Added", "y")]),
    ///     Err(Error::ReadOnly { .. })
    /// ));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store> {
        StoreBuilder::default().read_only(true).open(path)
    }

    /// Options for opening a store.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    /// Appends `events` to `stream` if its version matches `expected`; all or nothing.
    ///
    /// Returns after the events are durable (with the default [`Durability::Immediate`]). A
    /// version mismatch is [`Error::WrongExpectedVersion`] and writes nothing. Stream names
    /// starting with `$` are reserved.
    ///
    /// An append of no events is a successful no-op: the expected version is checked, nothing
    /// is written, and the result reports the stream's current version.
    ///
    /// When synchronous subscribers fail on the new events, the append still returns `Ok`
    /// (the events are durable); the failures are in
    /// [`AppendResult::subscriber_failures`]. Never retry an append because of them.
    pub fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Result<AppendResult> {
        check_stream_name(stream, false)?;
        let part = self.part(stream, expected, events.into_iter().collect())?;
        let mut results = self.engine.commit(vec![part])?;
        Ok(results.pop().expect("one result per part"))
    }

    /// Appends to one of the engine's own `$` streams (checkpoints, outbox progress).
    pub(crate) fn append_system(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        check_stream_name(stream, true)?;
        let part = self.part(stream, expected, events)?;
        let mut results = self.engine.commit(vec![part])?;
        Ok(results.pop().expect("one result per part"))
    }

    /// Starts an atomic multi-stream append: every part's expected version is checked and all
    /// parts are written as one unit, or none is.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("bank"))?;
    /// let results = store
    ///     .transaction()
    ///     .append("account-a", ExpectedVersion::NoStream, [NewEvent::new("Debited", "10")])
    ///     .append("account-b", ExpectedVersion::NoStream, [NewEvent::new("Credited", "10")])
    ///     .commit()?;
    /// assert_eq!(results.len(), 2);
    /// assert_eq!(store.stream_version("account-b")?, Some(0));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn transaction(&self) -> Transaction<'_> {
        Transaction {
            store: self,
            parts: Vec::new(),
        }
    }

    fn part(&self, stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> Result<Part> {
        let mut frames_len = 0u64;
        let mut checked: Option<&str> = None;
        for e in &events {
            if checked != Some(&*e.event_type) {
                check_event_type(&e.event_type)?;
                checked = Some(&e.event_type);
            }
            let size = (e.payload.len() + e.metadata.len()) as u64;
            if size > self.engine.max_event_size {
                return Err(Error::TooLarge {
                    what: "event payload and metadata",
                    size,
                    limit: self.engine.max_event_size,
                });
            }
            let record = e.record(stream, 0);
            frames_len += record.frame_len().ok_or(Error::TooLarge {
                what: "event frame",
                size,
                limit: u64::from(u32::MAX),
            })?;
        }
        let limit = self.engine.layout.max_commit_len();
        if frames_len > limit {
            return Err(Error::TooLarge {
                what: "commit (encoded)",
                size: frames_len,
                limit,
            });
        }
        Ok(Part {
            stream: Arc::from(stream),
            expected,
            events,
            frames_len,
        })
    }

    /// Reads a stream from version `from`, forwards or backwards, at most `limit` events.
    /// Backwards, a `from` beyond the last version starts at the last one (use `u64::MAX`).
    /// A stream that does not exist reads as empty.
    pub fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamEvents<'_>> {
        check_stream_name(stream, true)?;
        StreamEvents::new(&self.engine, stream, from, direction, limit)
    }

    /// Reads the whole log from `from` (inclusive; [`Position::START`] or [`Position::END`]
    /// work in either direction), at most `limit` events. Only events acknowledged when the
    /// read starts are returned. The engine's own records (`$` streams: checkpoints, outbox
    /// progress) are left out; [`read_log`](Self::read_log) includes them.
    pub fn read_all(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<AllEvents<'_>> {
        AllEvents::new(&self.engine, from, direction, limit, false)
    }

    /// Like [`read_all`](Self::read_all), including the events of the engine's own `$` streams.
    pub fn read_log(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<AllEvents<'_>> {
        AllEvents::new(&self.engine, from, direction, limit, true)
    }

    /// Reads the events of a category (streams named `CATEGORY` or `CATEGORY-…`) in log order,
    /// from position `from` (inclusive), at most `limit`. Uses an index: it does not scan the
    /// log for other streams' events.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Position, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("shop"))?;
    /// store.append("order-1", ExpectedVersion::Any, [NewEvent::new("Placed", "1")])?;
    /// store.append("cart-9", ExpectedVersion::Any, [NewEvent::new("ItemAdded", "x")])?;
    /// store.append("order-2", ExpectedVersion::Any, [NewEvent::new("Placed", "2")])?;
    /// let orders: Vec<_> = store
    ///     .read_category("order", Position::START, usize::MAX)?
    ///     .map(|e| e.map(|e| e.stream().to_owned()))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(orders, ["order-1", "order-2"]);
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn read_category(
        &self,
        category: &str,
        from: Position,
        limit: usize,
    ) -> Result<IndexedEvents<'_>> {
        IndexedEvents::new(&self.engine, PosIndex::Category, category, from, limit)
    }

    /// Reads the events of one event type in log order, from position `from` (inclusive), at
    /// most `limit`. Uses an index: a rare type is found without scanning the log.
    pub fn read_event_type(
        &self,
        event_type: &str,
        from: Position,
        limit: usize,
    ) -> Result<IndexedEvents<'_>> {
        IndexedEvents::new(&self.engine, PosIndex::EventType, event_type, from, limit)
    }

    /// The version of the stream's last event, or `None` if the stream does not exist.
    pub fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        check_stream_name(stream, true)?;
        Ok(self.engine.index.stream_info(stream)?.count.checked_sub(1))
    }

    /// Where the next event will go: every acknowledged event is before this position.
    pub fn end_position(&self) -> Position {
        Position::new(self.engine.index.committed().end)
    }

    /// The store file's path.
    pub fn path(&self) -> &Path {
        &self.engine.path
    }

    /// The store's id (recorded in its header).
    pub fn store_id(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.engine.header.store_id)
    }

    /// The segment size chosen when the store was created.
    pub fn segment_size(&self) -> u64 {
        self.engine.layout.segment_size
    }

    /// The codec typed events are written with.
    pub fn codec(&self) -> codec::Codec {
        self.engine.codec
    }

    /// Registers an upcaster: events of type `event_type` stored at schema version
    /// `from_version` are decoded as `Old`, passed through `upcast`, and read on as version
    /// `from_version + 1`, on every typed read path. Chains of upcasters take old events all
    /// the way to the current version.
    ///
    /// ```
    /// use annals::{EventType, ExpectedVersion, NewEvent, PayloadEncoding, Store};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct RenamedV1 { name: String }
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// struct Renamed { first: String, last: String }
    /// impl EventType for Renamed {
    ///     const NAME: &'static str = "Renamed";
    ///     const SCHEMA_VERSION: u32 = 2;
    /// }
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("people"))?;
    /// // An event written by an older program, at schema version 1:
    /// let old = serde_json::to_vec(&RenamedV1 { name: "Ada Lovelace".into() }).unwrap();
    /// let mut e = NewEvent::new("Renamed", old);
    /// e.encoding = PayloadEncoding::Json;
    /// store.append("person-1", ExpectedVersion::Any, [e])?;
    ///
    /// store.register_upcaster("Renamed", 1, |v1: RenamedV1| {
    ///     let (first, last) = v1.name.split_once(' ').unwrap_or((&v1.name, ""));
    ///     Renamed { first: first.into(), last: last.into() }
    /// });
    /// let read = store.read_stream_as::<Renamed>("person-1", 0, annals::Direction::Forwards, 1)?
    ///     .next().unwrap()?;
    /// assert_eq!(read.event, Renamed { first: "Ada".into(), last: "Lovelace".into() });
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn register_upcaster<Old, New>(
        &self,
        event_type: &str,
        from_version: u32,
        upcast: impl Fn(Old) -> New + Send + Sync + 'static,
    ) where
        Old: serde::de::DeserializeOwned,
        New: serde::Serialize,
    {
        self.engine
            .upcasters
            .write()
            .register(event_type, from_version, upcast);
    }

    /// Stores a snapshot of the state of `stream` at `version` (in the log, in the reserved
    /// stream `$snapshot-STREAM`): `state` is its encoding, `schema` the version of that
    /// encoding. Snapshots are an optimisation for the domain floor, never a source of truth.
    pub fn save_snapshot(
        &self,
        stream: &str,
        version: u64,
        schema: u32,
        state: Vec<u8>,
    ) -> Result<AppendResult> {
        let event = NewEvent::new("Snapshot", state)
            .with_schema_version(schema)
            .with_metadata(version.to_le_bytes().to_vec());
        self.append_system(
            &format!("$snapshot-{stream}"),
            ExpectedVersion::Any,
            vec![event],
        )
    }

    /// The latest snapshot of `stream`: (version it covers, schema, state), if any.
    pub fn load_snapshot(&self, stream: &str) -> Result<Option<(u64, u32, bytes::Bytes)>> {
        let Some(e) = self
            .read_stream(
                &format!("$snapshot-{stream}"),
                u64::MAX,
                Direction::Backwards,
                1,
            )?
            .next()
            .transpose()?
        else {
            return Ok(None);
        };
        let Ok(version) = <[u8; 8]>::try_from(e.metadata()) else {
            return Ok(None);
        };
        Ok(Some((
            u64::from_le_bytes(version),
            e.schema_version(),
            e.payload_bytes(),
        )))
    }

    /// Registers the event types of `E` with the store, so that their events have a JSON form
    /// ([`to_json`](Self::to_json)): the outbox publishes it, whatever codec stored them.
    pub fn register_events<E: typed::Events>(&self) {
        self.engine.registry.write().register::<E>();
    }

    /// Registers the event types of `E` unless they all are already: what the domain floor
    /// calls for every repository and every aggregate a unit of work touches, so a read lock
    /// is all it costs after the first time.
    pub(crate) fn ensure_registered<E: typed::Events>(&self) {
        if !self.engine.registry.read().knows::<E>() {
            self.register_events::<E>();
        }
    }

    /// The JSON form of an event and the schema version it is at: through its registered type
    /// if it has one (upcast to the current version), else its payload if that is JSON.
    pub fn to_json(&self, event: &RecordedEvent) -> Result<(String, u32)> {
        self.engine
            .registry
            .read()
            .to_json(&self.engine.upcasters.read(), event)
    }

    /// The [`NewEvent`] for a typed event, encoded with the store's codec, with its type's
    /// name, schema version and published flag; add tracing ids or metadata before appending.
    pub fn new_event<E: typed::Events>(&self, event: &E) -> Result<NewEvent> {
        typed::new_event(event, self.engine.codec)
    }

    /// Appends typed events (see [`append`](Self::append)).
    ///
    /// ```
    /// use annals::{EventType, ExpectedVersion, Store};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// struct Deposited { cents: u64 }
    /// impl EventType for Deposited {
    ///     const NAME: &'static str = "Deposited";
    /// }
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("bank"))?;
    /// store.append_events("account-1", ExpectedVersion::NoStream, [Deposited { cents: 500 }])?;
    /// let e = store.read_stream_as::<Deposited>("account-1", 0, annals::Direction::Forwards, 1)?
    ///     .next().unwrap()?;
    /// assert_eq!((e.event.cents, e.version(), e.event_type()), (500, 0, "Deposited"));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn append_events<E: typed::Events>(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = E>,
    ) -> Result<AppendResult> {
        let events = events
            .into_iter()
            .map(|e| self.new_event(&e))
            .collect::<Result<Vec<_>>>()?;
        self.append(stream, expected, events)
    }

    /// The upcasters registered so far (a copy).
    pub fn upcasters(&self) -> typed::Upcasters {
        self.engine.upcasters.read().clone()
    }

    /// Decodes a recorded event as one of `E`'s types, upcast to the type's current schema
    /// version. An event of another type or a payload that does not decode is
    /// [`Error::Decode`], naming the position.
    pub fn decode<E: typed::Events>(&self, event: &RecordedEvent) -> Result<E> {
        typed::decode(&self.engine.upcasters.read(), event)
    }

    /// Reads a stream as typed events (see [`read_stream`](Self::read_stream)); an event of a
    /// type not in `E` is an error.
    pub fn read_stream_as<E: typed::Events>(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<typed::TypedEvents<'_, StreamEvents<'_>, E>> {
        Ok(self.typed(self.read_stream(stream, from, direction, limit)?, false))
    }

    /// Reads the whole log as typed events (see [`read_all`](Self::read_all)), passing over
    /// events of types not in `E`.
    pub fn read_all_as<E: typed::Events>(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<typed::TypedEvents<'_, AllEvents<'_>, E>> {
        Ok(self.typed(self.read_all(from, direction, limit)?, true))
    }

    /// Decodes any iterator of records as typed events: with `skip_others`, records of types
    /// not in `E` are passed over, otherwise they are errors.
    pub fn typed<I, E>(&self, records: I, skip_others: bool) -> typed::TypedEvents<'_, I, E>
    where
        I: Iterator<Item = Result<RecordedEvent>>,
        E: typed::Events,
    {
        typed::TypedEvents {
            inner: records,
            upcasters: &self.engine.upcasters,
            skip_others,
            _events: std::marker::PhantomData,
        }
    }

    /// Registers a synchronous subscription: `callback` runs for every event `filter` passes,
    /// after the event is durable and before the `append` that wrote it returns, in global log
    /// order (on one of the appending threads: callbacks of concurrent appends run one after
    /// the other, in log order).
    ///
    /// A callback may append: its append returns at once, and its events are handed to every
    /// subscriber after the current event, in log order, before the outermost append returns.
    /// A callback must not wait for an append made on another thread (that append waits for
    /// its turn, which comes after the callback's).
    ///
    /// A callback that fails or panics does not undo the append or stop the other callbacks:
    /// the append still returns `Ok`, with the failure in its
    /// [`subscriber_failures`](AppendResult::subscriber_failures); the failure also goes to the
    /// [failure handler](Self::on_subscriber_failure), and [`redeliver`](Self::redeliver) runs
    /// the callback on the event again.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use annals::{ExpectedVersion, Filter, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("users"))?;
    /// let sent = Arc::new(Mutex::new(Vec::new()));
    /// let outbox = sent.clone();
    /// store.subscribe("welcome-mail", Filter::EventType("UserRegistered".into()), move |e| {
    ///     outbox.lock().unwrap().push(String::from_utf8_lossy(e.payload()).into_owned());
    ///     Ok(())
    /// });
    /// store.append("user-1", ExpectedVersion::NoStream, [NewEvent::new("UserRegistered", "test@example.com")])?;
    /// assert_eq!(*sent.lock().unwrap(), ["test@example.com"]);
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn subscribe(
        &self,
        name: &str,
        filter: subscriptions::Filter,
        callback: impl Fn(&RecordedEvent) -> std::result::Result<(), subscriptions::BoxError>
        + Send
        + Sync
        + 'static,
    ) -> crate::SubscriptionId {
        let callback: Arc<subscriptions::Callback> =
            Arc::new(move |_: &Engine, e: &RecordedEvent| callback(e));
        self.engine
            .subscribers
            .add(name.to_owned(), filter, callback)
    }

    /// Registers a synchronous subscription to the event types of `E`, decoded (and upcast):
    /// see [`subscribe`](Self::subscribe).
    pub fn subscribe_to<E: typed::Events>(
        &self,
        name: &str,
        callback: impl Fn(&typed::TypedEvent<E>) -> std::result::Result<(), subscriptions::BoxError>
        + Send
        + Sync
        + 'static,
    ) -> crate::SubscriptionId {
        let filter = subscriptions::Filter::EventTypes(
            E::types().iter().map(|m| m.name.to_owned()).collect(),
        );
        let callback: Arc<subscriptions::Callback> =
            Arc::new(move |engine: &Engine, record: &RecordedEvent| {
                let event = typed::decode::<E>(&engine.upcasters.read(), record)?;
                callback(&typed::TypedEvent {
                    event,
                    record: record.clone(),
                })
            });
        self.engine
            .subscribers
            .add(name.to_owned(), filter, callback)
    }

    /// Removes a synchronous subscription; false if it was not registered.
    pub fn unsubscribe(&self, id: crate::SubscriptionId) -> bool {
        self.engine.subscribers.remove(id)
    }

    /// Sets what is told of every failed subscription callback (besides the append's
    /// [`subscriber_failures`](AppendResult::subscriber_failures)), for failures of appends made
    /// from callbacks too. By default each failure is logged as a `tracing` warning.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use annals::{ExpectedVersion, Filter, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// let failed = Arc::new(Mutex::new(Vec::new()));
    /// let seen = failed.clone();
    /// store.on_subscriber_failure(move |f| seen.lock().unwrap().push(f.clone()));
    /// store.subscribe("flaky", Filter::All, |_| Err("mail server down".into()));
    /// let r = store.append("user-1", ExpectedVersion::Any, [NewEvent::new("Registered", "x")])?;
    /// assert_eq!(r.subscriber_failures.len(), 1);
    /// assert_eq!(failed.lock().unwrap()[0], r.subscriber_failures[0]);
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn on_subscriber_failure(
        &self,
        handler: impl Fn(&crate::SubscriberFailure) + Send + Sync + 'static,
    ) {
        self.engine
            .subscribers
            .set_failure_handler(Arc::new(handler));
    }

    /// Runs a failed subscription callback again on the event it failed on (read back from
    /// the log), on this thread. `Ok` once it succeeds; [`Error::SubscriberFailed`] if it fails
    /// again; [`Error::InvalidArgument`] if the subscription was removed.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use annals::{ExpectedVersion, Filter, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// let up = Arc::new(AtomicBool::new(false));
    /// let server = up.clone();
    /// store.subscribe("mailer", Filter::All, move |_| {
    ///     if server.load(Ordering::SeqCst) { Ok(()) } else { Err("down".into()) }
    /// });
    /// let r = store.append("user-1", ExpectedVersion::Any, [NewEvent::new("Registered", "x")])?;
    /// let failure = &r.subscriber_failures[0];
    /// assert!(store.redeliver(failure).is_err());
    /// up.store(true, Ordering::SeqCst);
    /// store.redeliver(failure)?;
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn redeliver(&self, failure: &crate::SubscriberFailure) -> Result<()> {
        let event = self
            .read_log(failure.position, Direction::Forwards, 1)?
            .next()
            .transpose()?
            .filter(|e| e.position() == failure.position)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("no event at position {}", failure.position))
            })?;
        match self
            .engine
            .subscribers
            .redeliver(&self.engine, failure.subscription_id, &event)
        {
            None => Err(Error::InvalidArgument(format!(
                "subscription `{}` is no longer registered",
                failure.subscription
            ))),
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(Error::SubscriberFailed(crate::SubscriberFailure {
                error,
                ..failure.clone()
            })),
        }
    }

    /// Counters of what the store has done since it was opened.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// store.append("a", ExpectedVersion::Any, [NewEvent::new("E", "1"), NewEvent::new("E", "2")])?;
    /// let stats = store.stats();
    /// assert_eq!((stats.commits, stats.events, stats.groups), (1, 2, 1));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn stats(&self) -> StoreStats {
        let c = &self.engine.counters;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            groups: c.groups.load(Ordering::Relaxed),
        }
    }

    /// What recovery did when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.engine.recovery
    }

    /// Writes the in-memory part of the index to the sidecar now (it is otherwise flushed in
    /// large batches, and on close).
    ///
    /// A failure poisons the store (the sidecar's database cannot go on after a failed
    /// write): this and every later call, and every append, fail until the store is reopened,
    /// which rebuilds what the sidecar lacks from the log.
    pub fn flush_index(&self) -> Result<()> {
        if self.engine.read_only {
            return Ok(());
        }
        self.engine.poison.check()?;
        let _writer = self.engine.committer.writer().lock();
        self.engine.sync_unsynced()?;
        while let Some(job) = self.engine.index.freeze(true, false) {
            self.engine.write_frozen(job)?;
        }
        Ok(())
    }

    /// Flushes the index, syncs, and closes the store, reporting any error.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    /// Drops the store the way a killed process leaves it: background threads stop, and
    /// nothing more is written or synced (no index flush, no clean-close mark). For crash
    /// tests.
    #[doc(hidden)]
    pub fn abandon(self) {
        let mut bg = self.background.lock();
        self.engine.poison.set("the store was abandoned");
        self.engine.index.abandon();
        bg.stop(&self.engine);
        bg.closed = true;
        drop(bg);
        self.engine.committer.writer().lock().quiesce();
    }

    fn shutdown(&self) -> Result<()> {
        let mut bg = self.background.lock();
        if bg.closed {
            return Ok(());
        }
        bg.closed = true;
        bg.stop(&self.engine);
        if self.engine.read_only {
            return Ok(());
        }
        let mut writer = self.engine.committer.writer().lock();
        writer.quiesce();
        self.engine.poison.check()?;
        self.engine.sync_unsynced()?;
        // The last flush also records the clean close (one sidecar commit, not two).
        let mut flushed = false;
        while let Some(job) = self.engine.index.freeze(true, true) {
            self.engine.write_frozen(job)?;
            flushed = true;
        }
        if flushed || self.engine.marked_clean.load(Ordering::Acquire) {
            // Marked by the flush, or opened clean and nothing written since.
            return Ok(());
        }
        self.engine.index.set_clean(true)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "annals: closing the store failed");
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.engine.path)
            .field("end", &self.engine.index.committed().end)
            .finish_non_exhaustive()
    }
}

/// An atomic multi-stream append under construction; see [`Store::transaction`].
#[must_use = "a transaction does nothing until committed"]
pub struct Transaction<'a> {
    store: &'a Store,
    parts: Vec<Result<Part>>,
}

impl Transaction<'_> {
    /// Adds events for one stream, to be checked against `expected` at commit. The same stream
    /// may appear in several parts; each part's check sees the parts before it.
    pub fn append(
        mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Self {
        let part = check_stream_name(stream, false).and_then(|()| {
            self.store
                .part(stream, expected, events.into_iter().collect())
        });
        self.parts.push(part);
        self
    }

    /// Adds events for one of the `$` streams reserved for the layers built on the store (the
    /// domain floor keeps its command-relay records there). Applications should not write them.
    pub fn append_reserved(
        mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Self {
        let part = check_stream_name(stream, true).and_then(|()| {
            self.store
                .part(stream, expected, events.into_iter().collect())
        });
        self.parts.push(part);
        self
    }

    /// Checks every part and writes them all as one commit, or nothing. Returns one result per
    /// part, in order. Parts with no events are only checked; a transaction with no parts is a
    /// no-op.
    pub fn commit(self) -> Result<Vec<AppendResult>> {
        let parts = self.parts.into_iter().collect::<Result<Vec<_>>>()?;
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let total: u64 = parts.iter().map(|p| p.frames_len).sum();
        let limit = self.store.engine.layout.max_commit_len();
        if total > limit {
            return Err(Error::TooLarge {
                what: "transaction (encoded)",
                size: total,
                limit,
            });
        }
        self.store.engine.commit(parts)
    }
}

impl Engine {
    /// Commits parts (group commit), then runs the synchronous subscriptions for them (see
    /// [`subscriptions`]).
    pub(crate) fn commit(&self, parts: Vec<Part>) -> Result<Vec<AppendResult>> {
        if self.read_only {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        let outcome = self.committer.commit(self, parts)?;
        let mut results = outcome.results;
        let Some(ticket) = outcome.ticket else {
            return Ok(results);
        };
        if subscriptions::nested_root().is_some() {
            // Made from a callback: its callbacks run after the current event's, in log order.
            return Ok(results);
        }
        for failure in self.subscribers.wait_dispatched(self, ticket) {
            let position = failure.position;
            let at = results
                .iter()
                .position(|r| (r.first_position..=r.last_position).contains(&position))
                .unwrap_or(results.len() - 1);
            results[at].subscriber_failures.push(failure);
        }
        Ok(results)
    }

    /// Where the log ends (every acknowledged event is before it).
    pub(crate) fn end(&self) -> Position {
        Position::new(self.index.committed().end)
    }

    /// Wakes readers waiting for new events (catch-up subscriptions).
    pub(crate) fn notify_appended(&self) {
        if self.appended_waiters.load(Ordering::Acquire) > 0 {
            let _guard = self.appended.0.lock();
            self.appended.1.notify_all();
        }
    }

    /// Waits until the committed end is past `position`, or `timeout` passes; returns whether it
    /// is.
    pub(crate) fn wait_past(&self, position: u64, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        self.appended_waiters.fetch_add(1, Ordering::AcqRel);
        let mut guard = self.appended.0.lock();
        let past = loop {
            if self.index.committed().end > position {
                break true;
            }
            if self.appended.1.wait_until(&mut guard, deadline).timed_out() {
                break self.index.committed().end > position;
            }
        };
        drop(guard);
        self.appended_waiters.fetch_sub(1, Ordering::AcqRel);
        past
    }

    /// Hands a full memtable to the flusher, with back-pressure if it falls behind.
    fn after_commit(&self) {
        if let Some(job) = self.index.freeze(false, false) {
            let unsent = self.flusher.lock().send(self, job);
            if let Some(job) = unsent {
                let _ = self.write_frozen(job);
            }
        }
        self.index.wait_if_over(4 * self.index.threshold());
    }

    /// Writes a frozen memtable to the sidecar, unless the store is poisoned; a failure
    /// poisons it (redb cannot go on after a failed write; a reopen rebuilds what is missing
    /// from the log).
    pub(crate) fn write_frozen(&self, job: Arc<Frozen>) -> Result<()> {
        if let Err(e) = self.poison.check() {
            self.index.release_frozen();
            return Err(e);
        }
        self.index.write_frozen(job).map_err(|e| {
            self.poison
                .fail(format!("writing the index sidecar failed: {e}"))
        })
    }

    /// Syncs the log if appends are not synced as they are made.
    fn sync_unsynced(&self) -> Result<()> {
        if self.durability != Durability::Immediate {
            self.sync.sync(self.index.committed().end, false)?;
        }
        Ok(())
    }
}
