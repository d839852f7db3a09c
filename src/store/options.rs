//! Options for opening a store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::log::format::{MAX_SEGMENT_SIZE, check_segment_size};
use crate::storage::{FileSystem, StdFs};
use crate::store::Store;
use crate::store::codec::Codec;
use crate::store::typed::{Registry, Upcasters};

/// When an append's data reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `append` returns only after the data is `fdatasync`ed. Concurrent appends share one sync
    /// (group commit). The default.
    Immediate,
    /// `append` returns once the data is written to the operating system; a background thread
    /// syncs every interval. A power cut can lose up to one interval of acknowledged appends (a
    /// process crash loses nothing).
    Periodic(Duration),
    /// `append` never syncs; the data is synced when the index is flushed and on close. A power
    /// cut can lose any append since then (a process crash loses nothing).
    NoSync,
}

/// Options for [`Store`]: create with [`Store::builder`].
///
/// ```
/// use annals::{Durability, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::builder()
///     .durability(Durability::Immediate)
///     .segment_size(8 << 20)
///     .max_event_size(1 << 20)
///     .index_flush_events(50_000)
///     .open(dir.path().join("orders"))?;
/// assert_eq!(store.segment_size(), 8 << 20);
/// # Ok::<(), annals::Error>(())
/// ```
#[derive(Clone)]
pub struct StoreBuilder {
    pub(crate) durability: Durability,
    pub(crate) segment_size: u64,
    pub(crate) max_event_size: u64,
    pub(crate) index_flush_events: u64,
    pub(crate) index_cache_bytes: usize,
    pub(crate) create: bool,
    pub(crate) rebuild_index: bool,
    pub(crate) read_only: bool,
    pub(crate) accept_loss: bool,
    pub(crate) format_version: u32,
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) codec: Codec,
    pub(crate) upcasters: Upcasters,
    pub(crate) registry: Registry,
}

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// Default maximum event size (payload plus metadata): 4 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: u64 = 4 << 20;
/// Default number of events between index flushes.
pub const DEFAULT_INDEX_FLUSH_EVENTS: u64 = 100_000;

impl std::fmt::Debug for StoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBuilder")
            .field("durability", &self.durability)
            .field("segment_size", &self.segment_size)
            .field("max_event_size", &self.max_event_size)
            .field("index_flush_events", &self.index_flush_events)
            .field("codec", &self.codec)
            .field("fs", &self.fs)
            .finish_non_exhaustive()
    }
}

impl Default for StoreBuilder {
    fn default() -> Self {
        StoreBuilder {
            durability: Durability::Immediate,
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            index_flush_events: DEFAULT_INDEX_FLUSH_EVENTS,
            index_cache_bytes: 32 << 20,
            create: true,
            rebuild_index: false,
            read_only: false,
            accept_loss: false,
            format_version: crate::log::format::FORMAT_VERSION,
            fs: Arc::new(StdFs),
            codec: Codec::default(),
            upcasters: Upcasters::default(),
            registry: Registry::default(),
        }
    }
}

impl StoreBuilder {
    /// When appends reach the disk (default [`Durability::Immediate`](crate::store::options::Durability::Immediate)).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Segment size for a store created by this open (an existing store keeps its own):
    /// a multiple of 4096 from 64 KiB to 1 GiB; default 64 MiB. A commit must fit in a segment.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Largest payload plus metadata of one event; default 4 MiB. Larger events are refused
    /// with [`Error::TooLarge`](crate::error::Error::TooLarge).
    pub fn max_event_size(mut self, bytes: u64) -> Self {
        self.max_event_size = bytes;
        self
    }

    /// How many events the in-memory part of the index holds before it is flushed to the
    /// sidecar; default 100,000. Larger is faster, smaller uses less memory and replays less on
    /// open after a crash.
    pub fn index_flush_events(mut self, events: u64) -> Self {
        self.index_flush_events = events;
        self
    }

    /// Memory redb may use to cache the sidecar; default 32 MiB.
    pub fn index_cache_bytes(mut self, bytes: usize) -> Self {
        self.index_cache_bytes = bytes;
        self
    }

    /// Discards the index sidecar at open (after taking the store's lock) and rebuilds it from
    /// the log. Default: no (a sidecar that is missing, foreign or damaged is rebuilt anyway).
    pub fn rebuild_index(mut self, rebuild: bool) -> Self {
        self.rebuild_index = rebuild;
        self
    }

    /// Opens the store read-only: nothing on disk changes (not the log, not the index
    /// sidecar), appends fail with [`Error::ReadOnly`](crate::error::Error::ReadOnly), and the store is never created. What
    /// an open for writing would do to a damaged tail is reported in
    /// [`Store::recovery_report`] instead of done. See [`Store::open_read_only`].
    ///
    /// # Two kinds of read-only open
    ///
    /// **No writer holds the store**: the open takes a shared lock (other read-only opens may
    /// share it; an open for writing fails with `Locked` until the last one closes), uses the
    /// index sidecar, and sees the log as it is: every complete commit.
    ///
    /// **A writer holds it** (in this process or another): the open takes no lock and never
    /// blocks the writer. [`Store::follows_writer`] says so. Its guarantees:
    ///
    /// - It sees **only commits the writer has made durable**: the writer publishes the end of
    ///   the synced log after each sync (in `NAME.annals.live`, see the format docs), and this
    ///   open reads the log only up to that end. A byte a power cut could still take away is
    ///   never returned. With [`Durability::Immediate`] (the default) every acknowledged commit is
    ///   durable, so it sees each one, usually before the append returns; with
    ///   [`Durability::Periodic`] commits appear at each periodic sync, with
    ///   [`Durability::NoSync`] only when the writer syncs (closing, flushing the index).
    /// - Each read (and [`Store::end_position`]) sees every commit durable when it starts, and
    ///   no part of a commit: commits appear whole, in log order, never out of order. Versions
    ///   and positions never go back. Catch-up subscriptions on it follow new commits
    ///   (their `wait` looks every 5 ms).
    /// - It builds an index of its own, in memory, by reading the log once when it opens
    ///   (the writer's sidecar stays the writer's): the open costs one pass over the log, and
    ///   memory grows with the number of streams and events.
    /// - It survives the writer closing and a new writer opening the store: the new writer
    ///   publishes through the same file.
    /// - Checkpoints cannot be written through it (appends fail with `ReadOnly`).
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("shop");
    /// let writer = Store::open(&path)?;
    /// writer.append("cart-1", ExpectedVersion::Any, [NewEvent::new("Added", "x")])?;
    ///
    /// let reader = Store::open_read_only(&path)?;
    /// assert!(reader.follows_writer());
    /// assert_eq!(reader.stream_version("cart-1")?, Some(0));
    /// writer.append("cart-1", ExpectedVersion::Any, [NewEvent::new("Added", "y")])?;
    /// assert_eq!(reader.stream_version("cart-1")?, Some(1), "acknowledged, so durable, so seen");
    /// # Ok::<(), annals::Error>(())
    /// ```
    ///
    /// [`Durability::Immediate`]: crate::Durability::Immediate
    /// [`Durability::Periodic`]: crate::Durability::Periodic
    /// [`Durability::NoSync`]: crate::Durability::NoSync
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// **Accepts the loss of acknowledged events** instead of refusing to open: a log cut short
    /// or altered from outside, or damage that later frames prove was acknowledged, is dropped
    /// like a torn tail (its bytes saved beside the store and reported in
    /// [`Store::recovery_report`]). With [`rebuild_index`](Self::rebuild_index), a log that ends
    /// before what the old index covered is accepted too, and what was lost is reported. Use
    /// it only after deciding that restoring a backup is not possible.
    pub fn accept_loss(mut self, accept: bool) -> Self {
        self.accept_loss = accept;
        self
    }

    /// Creates new stores in format version 1 (no frame key), as earlier releases did: for
    /// tests of the upgrade path.
    #[doc(hidden)]
    pub fn create_format_version_1(mut self) -> Self {
        self.format_version = crate::log::format::FORMAT_VERSION_1;
        self
    }

    /// Whether a missing store is created (default) or reported as `NotFound`.
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// The codec typed events are written with (default: JSON; [`Codec::Bincode`] is more
    /// compact and faster, see `annals bench`). Every event records its encoding, so a store
    /// holds events of both codecs and reads each right.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Registers an upcaster: events of type `event_type` stored at schema version
    /// `from_version` are decoded as `Old`, passed through `upcast`, and read on as version
    /// `from_version + 1`. Same as [`Store::register_upcaster`], before opening.
    pub fn upcaster<Old, New>(
        mut self,
        event_type: &str,
        from_version: u32,
        upcast: impl Fn(Old) -> New + Send + Sync + 'static,
    ) -> Self
    where
        Old: serde::de::DeserializeOwned,
        New: serde::Serialize,
    {
        self.upcasters.register(event_type, from_version, upcast);
        self
    }

    /// Registers the event types of `E`; same as [`Store::register_events`], before opening.
    pub fn register_events<E: crate::store::typed::Events>(mut self) -> Self {
        self.registry.register::<E>();
        self
    }

    /// The file system to use (default: the real one). See [`crate::storage`].
    pub fn file_system(mut self, fs: impl FileSystem) -> Self {
        self.fs = Arc::new(fs);
        self
    }

    /// The file system to use, shared.
    pub fn shared_file_system(mut self, fs: Arc<dyn FileSystem>) -> Self {
        self.fs = fs;
        self
    }

    /// Opens (or creates) the store `PATH.annals` (the `.annals` suffix is added if missing).
    pub fn open(self, path: impl AsRef<Path>) -> Result<Store> {
        self.validate()?;
        Store::open_with(self, path.as_ref())
    }

    fn validate(&self) -> Result<()> {
        check_segment_size(self.segment_size).map_err(Error::InvalidArgument)?;
        if self.max_event_size == 0 || self.max_event_size > MAX_SEGMENT_SIZE {
            return Err(Error::InvalidArgument(format!(
                "max event size {} must be between 1 and {MAX_SEGMENT_SIZE}",
                self.max_event_size
            )));
        }
        if self.index_flush_events == 0 {
            return Err(Error::InvalidArgument(
                "index flush interval must be at least 1 event".into(),
            ));
        }
        if let Durability::Periodic(d) = self.durability
            && d.is_zero()
        {
            return Err(Error::InvalidArgument(
                "periodic sync interval must not be zero".into(),
            ));
        }
        Ok(())
    }
}
