//! The [`Store`]: open, append, read, close.

pub mod backend;
mod background;
pub(crate) mod catch_up;
pub(crate) mod codec;
mod commit;
mod engine;
mod erase;
pub(crate) mod lifecycle;
pub(crate) mod maintenance;
pub(crate) mod open;
pub(crate) mod options;
pub mod outbox;
mod processor;
mod read;
mod replay;
mod scavenge;
mod snapshots;
pub(crate) mod subscriptions;
mod transaction;
pub(crate) mod typed;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::error::Result;
use crate::event::{AppendResult, NewEvent};
use crate::index::PosIndex;
use crate::names::check_stream_name;
use crate::values::{Direction, ExpectedVersion, Position};
use background::Background;
pub use options::StoreBuilder;

pub(crate) use engine::{Counters, Engine};
pub use erase::ErasureReport;
pub use lifecycle::StreamMetadata;
pub use maintenance::{Lost, RecoveryReport, StoreStats};
pub use read::{AllEvents, IndexedEvents, StreamEvents};
pub use scavenge::{ScavengeOptions, ScavengeReport};
pub use transaction::Transaction;

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

impl Store {
    /// Opens the store at `path` (`.annals` is appended if the name lacks it), creating it if
    /// it does not exist, with default options. See [`Store::builder`] for the options.
    ///
    /// Fails with [`Error::Locked`](crate::error::Error::Locked) if the store is open elsewhere, [`Error::NotAStore`](crate::error::Error::NotAStore) for a
    /// foreign file, [`Error::UnsupportedVersion`](crate::error::Error::UnsupportedVersion) for a newer format, and [`Error::Corrupt`](crate::error::Error::Corrupt)
    /// when acknowledged data fails its checks; none of these changes anything on disk.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        StoreBuilder::default().open(path)
    }

    /// Opens the store at `path` read-only: see [`StoreBuilder::read_only`](crate::store::StoreBuilder::read_only).
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
    /// Returns after the events are durable (with the default [`Durability::Immediate`](crate::store::options::Durability::Immediate)). A
    /// version mismatch is [`Error::WrongExpectedVersion`](crate::error::Error::WrongExpectedVersion) and writes nothing. Stream names
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
        let part = self
            .engine
            .part(stream, expected, events.into_iter().collect())?;
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
        let part = self.engine.part(stream, expected, events)?;
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
        Transaction::new(self)
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
        self.engine.refresh()?;
        StreamEvents::new(&self.engine, stream, from, direction, limit)
    }

    /// Reads the whole log from `from` (inclusive; [`Position::START`] or [`Position::END`]
    /// work in either direction), at most `limit` events. Only events acknowledged when the
    /// read starts are returned. The engine's own records (`$` streams: checkpoints, outbox
    /// progress) are left out; [`read_log`](Self::read_log) includes them. Narrow it with
    /// [`AllEvents::matching`] (a filter) and [`AllEvents::until`] (an end).
    ///
    /// **`from` is inclusive in both directions.** KurrentDB differs on backward reads: there
    /// the event at the given position is left out. To go on forwards after an event you
    /// handled, start at its [`next_position`](crate::RecordedEvent::next_position); to go on
    /// backwards before an event `e`, read backwards from `e.position()` and skip the first
    /// (or start at `Position::new(e.position().as_u64() - 1)`, which reads from the event
    /// before it).
    pub fn read_all(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<AllEvents<'_>> {
        self.engine.refresh()?;
        AllEvents::new(&self.engine, from, direction, limit, false)
    }

    /// Like [`read_all`](Self::read_all), including the events of the engine's own `$` streams.
    pub fn read_log(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<AllEvents<'_>> {
        self.engine.refresh()?;
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
        self.engine.refresh()?;
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
        self.engine.refresh()?;
        IndexedEvents::new(&self.engine, PosIndex::EventType, event_type, from, limit)
    }

    /// Reads the events of a category backwards: those at or before position `from`
    /// (inclusive; [`Position::END`] for the newest), newest first, at most `limit`. Uses the
    /// index like [`read_category`](Self::read_category); each run of consecutive frames of
    /// the category is walked forwards once before its events are returned newest first.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Position, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("shop"))?;
    /// for s in ["order-1", "cart-9", "order-2", "order-3"] {
    ///     store.append(s, ExpectedVersion::Any, [NewEvent::new("E", "{}")])?;
    /// }
    /// let newest: Vec<_> = store
    ///     .read_category_backwards("order", Position::END, 2)?
    ///     .map(|e| e.map(|e| e.stream().to_owned()))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(newest, ["order-3", "order-2"]);
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn read_category_backwards(
        &self,
        category: &str,
        from: Position,
        limit: usize,
    ) -> Result<IndexedEvents<'_>> {
        self.engine.refresh()?;
        IndexedEvents::backwards(&self.engine, PosIndex::Category, category, from, limit)
    }

    /// Reads the events of one event type backwards: those at or before position `from`
    /// (inclusive), newest first, at most `limit`; see
    /// [`read_category_backwards`](Self::read_category_backwards).
    pub fn read_event_type_backwards(
        &self,
        event_type: &str,
        from: Position,
        limit: usize,
    ) -> Result<IndexedEvents<'_>> {
        self.engine.refresh()?;
        IndexedEvents::backwards(&self.engine, PosIndex::EventType, event_type, from, limit)
    }

    /// The version of the stream's last event, or `None` if the stream does not exist.
    pub fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        check_stream_name(stream, true)?;
        self.engine.refresh()?;
        let count = self.engine.index.stream_info(stream)?.count;
        let meta = self.engine.lifecycle.get(stream);
        Ok(lifecycle::visible_version(count, meta.as_ref()))
    }

    /// Where the next event will go: every acknowledged event is before this position. (On a
    /// read-only open that follows a writer: the end of what the writer has made durable, as
    /// far as this handle has read; a failure to look further is left to the next read.)
    pub fn end_position(&self) -> Position {
        let _ = self.engine.refresh();
        Position::new(self.engine.index.committed().end)
    }

    /// Whether this is a read-only open that follows a writer (one held the store when it
    /// opened): see [`StoreBuilder::read_only`].
    pub fn follows_writer(&self) -> bool {
        self.engine.live.is_some()
    }

    /// The store file's path.
    pub fn path(&self) -> &Path {
        &self.engine.path
    }

    /// The store's id (recorded in its header).
    pub fn store_id(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.engine.header.store_id)
    }

    /// The format version of the store's file (1 for stores made before frame keys, 2 since).
    pub fn format_version(&self) -> u32 {
        self.engine.header.format_version
    }

    /// The segment size chosen when the store was created.
    pub fn segment_size(&self) -> u64 {
        self.engine.layout.segment_size
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
        self.engine.flush_sidecar()
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
        self.engine.index.set_prepared_end(writer.prepared_end());
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
