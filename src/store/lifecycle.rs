//! Deleting streams and keeping them short: stream metadata (retention, soft delete,
//! tombstones), **the rule of what reads still return**, and the store operations that set it.
//!
//! # The readability rule
//!
//! An event of stream `S` at version `v` with timestamp `t` is readable unless:
//!
//! - `S` is tombstoned (deleted for good);
//! - `v < truncate_before` of `S`'s metadata (a soft delete sets it to the stream's count);
//! - `v < count - max_count` (only the newest `max_count` are kept);
//! - `t` is more than `max_age` before now;
//! - `S` is a stream whose newest record supersedes the older ones (checkpoints, outbox
//!   progress, snapshots, stream metadata; see [`records::supersedes`]) and `v` is not the
//!   newest version;
//! - `S` is `$snapshot-T` and the snapshot covers only deleted events of `T`.
//!
//! Every read applies it at once (stream, whole-log, category and event-type reads, and so
//! catch-up subscriptions and the outbox); a scavenge removes from the file what it makes
//! unreadable (see `src/store/scavenge.rs`).
//!
//! # Existence
//!
//! A stream *exists* for expected-version checks when it has events at or after its
//! `truncate_before`: a soft-deleted stream does not exist, so `ExpectedVersion::NoStream`
//! appends to it again, and its versions continue after the last deleted one. Appending to (or
//! deleting again) a tombstoned stream fails with [`Error::StreamDeleted`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use super::{Engine, IndexedEvents, Store};
use crate::error::{Error, Result};
use crate::event::NewEvent;
use crate::index::Index;
use crate::index::PosIndex;
use crate::log::format::EventRef;
use crate::log::records::{self, MetadataRecord};
use crate::names::check_stream_name;
use crate::values::{ExpectedVersion, Position};

/// A stream's metadata: how long its events are kept, and the application's own JSON.
///
/// ```
/// use annals::{ExpectedVersion, NewEvent, Store, StreamMetadata};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("s"))?;
/// for i in 0..5 {
///     store.append("sensor-1", ExpectedVersion::Any, [NewEvent::new("Read", i.to_string())])?;
/// }
/// let meta = StreamMetadata { max_count: Some(2), ..Default::default() };
/// store.set_stream_metadata("sensor-1", ExpectedVersion::NoStream, meta)?;
/// let kept: Vec<u64> = store
///     .read_stream("sensor-1", 0, annals::Direction::Forwards, usize::MAX)?
///     .map(|e| e.map(|e| e.version()))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(kept, [3, 4]);
/// # Ok::<(), annals::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamMetadata {
    /// Versions below this are no longer readable.
    pub truncate_before: Option<u64>,
    /// Only the newest this many events are readable.
    pub max_count: Option<u64>,
    /// Events older than this are no longer readable (kept in whole seconds, rounded up).
    pub max_age: Option<Duration>,
    /// The application's own JSON.
    pub custom: Option<serde_json::Value>,
    /// Set by [`Store::delete_stream`]: versions below this were deleted (read only; kept when
    /// the metadata is set again).
    pub deleted_before: Option<u64>,
    /// Set by [`Store::tombstone_stream`]: deleted for good (read only).
    pub tombstoned: bool,
}

impl StreamMetadata {
    fn from_record(r: &MetadataRecord) -> StreamMetadata {
        StreamMetadata {
            truncate_before: r.truncate_before,
            max_count: r.max_count,
            max_age: r.max_age_secs.map(Duration::from_secs),
            custom: r.custom.clone(),
            deleted_before: r.deleted_before,
            tombstoned: r.tombstoned,
        }
    }
}

/// What the engine knows of every stream that has metadata.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    map: RwLock<HashMap<Box<str>, MetadataRecord>>,
    /// Whether any stream has metadata (reads skip the map otherwise).
    any: AtomicBool,
}

/// Nanoseconds since the Unix epoch.
fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Lifecycle {
    /// The metadata of `stream`, if it has any.
    pub(crate) fn get(&self, stream: &str) -> Option<MetadataRecord> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.map.read().get(stream).cloned()
    }

    /// Looks at the metadata of `stream`, if it has any, without copying it.
    pub(crate) fn peek<T>(&self, stream: &str, f: impl FnOnce(&MetadataRecord) -> T) -> Option<T> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.map.read().get(stream).map(f)
    }

    /// Takes in a metadata record (`meta_stream` is its `$meta-` stream); anything else is
    /// ignored. A record that does not decode is warned about and ignored.
    pub(crate) fn learn(&self, meta_stream: &str, position: u64, payload: &[u8]) {
        let Some(stream) = records::metadata_of(meta_stream) else {
            return;
        };
        match serde_json::from_slice::<MetadataRecord>(payload) {
            Ok(record) => self.set(stream, record),
            // Written by a build that checks records before committing them, so this is
            // damage the checksums did not catch, or a newer build's record: reads go on as if
            // the stream had no metadata, and say so.
            Err(e) => tracing::warn!(position, stream, error = %e,
                "annals: a stream metadata record does not decode; it is ignored"),
        }
    }

    pub(crate) fn set(&self, stream: &str, record: MetadataRecord) {
        self.map.write().insert(stream.into(), record);
        self.any.store(true, Ordering::Release);
    }

    /// The first version of a stream of `count` events that reads may return, by the rules
    /// that need no event's timestamp (`count` when none).
    pub(crate) fn first_readable(&self, stream: &str, count: u64) -> u64 {
        if records::supersedes(stream) {
            return count.saturating_sub(1);
        }
        match self.get(stream) {
            None => 0,
            Some(m) => first_by(&m, count),
        }
    }

    /// Whether reads may return this event (see the module's rule).
    /// Whether any stream has metadata.
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn readable(&self, index: &Index, e: &EventRef<'_>) -> bool {
        // The common case first: no metadata anywhere and not an engine record.
        let system = e.stream_bytes().first() == Some(&b'$');
        if !system && !self.any.load(Ordering::Relaxed) {
            return true;
        }
        self.readable_slow(index, e)
    }

    fn readable_slow(&self, index: &Index, e: &EventRef<'_>) -> bool {
        let stream = e.stream();
        if records::supersedes(stream) {
            let count = index.stream_info(stream).map_or(0, |i| i.count);
            if e.version().saturating_add(1) < count {
                return false;
            }
            // A snapshot of events that were deleted since is no state of anything.
            if let Some(of) = stream.strip_prefix("$snapshot-")
                && let Some(m) = self.get(of)
                && (m.deleted_before.is_some() || m.tombstoned)
            {
                let covers = records::decode_snapshot_version(e.frame_slice(e.metadata_range()));
                return !m.tombstoned && covers.is_some_and(|v| v >= m.deleted_before.unwrap_or(0));
            }
            return true;
        }
        if !self.any.load(Ordering::Acquire) {
            return true;
        }
        let map = self.map.read();
        let Some(m) = map.get(stream) else {
            return true;
        };
        if m.tombstoned || e.version() < m.floor() {
            return false;
        }
        if let Some(age) = m.max_age_secs
            && e.timestamp() < now_nanos().saturating_sub(age.saturating_mul(1_000_000_000))
        {
            return false;
        }
        if let Some(max) = m.max_count {
            drop(map);
            let count = index.stream_info(stream).map_or(0, |i| i.count);
            return e.version() >= count.saturating_sub(max);
        }
        true
    }

    /// Loads the metadata records at or after `from` (all of them at open; a read-only open
    /// that follows a writer loads what each refresh brought).
    pub(crate) fn load_from(engine: &Engine, from: u64) -> Result<()> {
        let records = IndexedEvents::new(
            engine,
            PosIndex::Category,
            "$meta",
            Position::new(from),
            usize::MAX,
        )?;
        for e in records {
            let e = e?;
            engine
                .lifecycle
                .learn(e.stream(), e.position().as_u64(), e.payload());
            // Versions continue after a deletion even where the deleted events are gone.
            if let Some(stream) = records::metadata_of(e.stream())
                && let Some(deleted_before) =
                    engine.lifecycle.get(stream).and_then(|m| m.deleted_before)
            {
                engine.index.raise_count(stream, deleted_before)?;
            }
        }
        Ok(())
    }
}

/// The first readable version by truncation, deletion, count and tombstone.
pub(crate) fn first_by(m: &MetadataRecord, count: u64) -> u64 {
    if m.tombstoned {
        return count;
    }
    let by_count = m.max_count.map_or(0, |max| count.saturating_sub(max));
    m.floor().max(by_count).min(count)
}

/// The version a stream of `count` events is at for expected-version checks, given its
/// metadata: `None` when it has no event at or after its [`MetadataRecord::floor`].
pub(crate) fn visible_version(count: u64, meta: Option<&MetadataRecord>) -> Option<u64> {
    let floor = meta.map_or(0, MetadataRecord::floor);
    if count > floor { Some(count - 1) } else { None }
}

impl Store {
    /// Deletes a stream (soft delete): its events stop being readable at once (from the
    /// stream, the whole log, category and type reads, catch-up subscriptions and the outbox),
    /// the stream no longer exists for expected-version checks, and a later append starts it
    /// again with versions continuing after the last deleted one. A [`scavenge`](Self::scavenge)
    /// gives their space back. `expected` is checked against the stream, as for an append.
    /// Returns where the deletion was recorded.
    ///
    /// ```
    /// use annals::{Direction, ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// store.append("cart-1", ExpectedVersion::NoStream, [NewEvent::new("Added", "x")])?;
    /// store.delete_stream("cart-1", ExpectedVersion::Exact(0))?;
    /// assert_eq!(store.stream_version("cart-1")?, None);
    /// assert_eq!(store.read_stream("cart-1", 0, Direction::Forwards, 10)?.count(), 0);
    /// let again = store.append("cart-1", ExpectedVersion::NoStream, [NewEvent::new("Added", "y")])?;
    /// assert_eq!(again.version, Some(1), "versions continue after the deleted one");
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn delete_stream(&self, stream: &str, expected: ExpectedVersion) -> Result<Position> {
        self.delete_with(stream, expected, false)
    }

    /// Deletes a stream for good (hard delete, a tombstone): like
    /// [`delete_stream`](Self::delete_stream), and the stream can never be appended to again
    /// ([`Error::StreamDeleted`]).
    ///
    /// ```
    /// use annals::{Error, ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// store.append("user-9", ExpectedVersion::NoStream, [NewEvent::new("Joined", "")])?;
    /// store.tombstone_stream("user-9", ExpectedVersion::Any)?;
    /// let again = store.append("user-9", ExpectedVersion::Any, [NewEvent::new("Joined", "")]);
    /// assert!(matches!(again, Err(Error::StreamDeleted { .. })));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn tombstone_stream(&self, stream: &str, expected: ExpectedVersion) -> Result<Position> {
        self.delete_with(stream, expected, true)
    }

    fn delete_with(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        tombstone: bool,
    ) -> Result<Position> {
        check_stream_name(stream, false)?;
        self.engine.refresh()?;
        let meta_stream = records::metadata_stream(stream);
        loop {
            let count = self.engine.index.stream_info(stream)?.count;
            let meta = self.engine.lifecycle.get(stream);
            if meta.as_ref().is_some_and(|m| m.tombstoned) {
                return Err(Error::StreamDeleted {
                    stream: stream.to_owned(),
                });
            }
            let actual = visible_version(count, meta.as_ref());
            if !expected.matches(actual) {
                return Err(Error::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    expected,
                    actual,
                });
            }
            // Pinned to what was read: a racing append makes the commit fail and the loop
            // look again (the deletion covers exactly the versions it saw).
            let pinned = actual.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            let meta_expected = self.meta_version(&meta_stream)?;
            let mut record = meta.unwrap_or_default();
            record.deleted_before = Some(count);
            record.tombstoned |= tombstone;
            let result = self
                .transaction()
                .append(stream, pinned, [])
                .append_reserved(
                    &meta_stream,
                    meta_expected,
                    vec![NewEvent::json(records::STREAM_METADATA, &record)?],
                )
                .commit();
            match result {
                Ok(results) => return Ok(results[1].first_position),
                Err(Error::WrongExpectedVersion { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes a stream that does not exist start at `version`: its next event gets that
    /// version, as if the versions before it had been deleted. For moving a store whose
    /// streams lost their oldest events (deleted, truncated, expired) into another store with
    /// every version kept (`annals import` does this). Does nothing when the stream already
    /// has `version` events or more; a stream that exists is refused.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// store.start_stream_at("order-9", 12)?;
    /// let r = store.append("order-9", ExpectedVersion::NoStream, [NewEvent::new("Placed", "")])?;
    /// assert_eq!(r.version, Some(12));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn start_stream_at(&self, stream: &str, version: u64) -> Result<()> {
        check_stream_name(stream, false)?;
        let count = self.engine.index.stream_info(stream)?.count;
        if count >= version {
            return Ok(());
        }
        let meta = self.engine.lifecycle.get(stream);
        if visible_version(count, meta.as_ref()).is_some() {
            return Err(Error::InvalidArgument(format!(
                "stream `{stream}` exists (at version {}): it cannot start at {version}",
                count - 1
            )));
        }
        let meta_stream = records::metadata_stream(stream);
        let mut record = meta.unwrap_or_default();
        record.deleted_before = Some(version);
        self.transaction()
            .append(stream, ExpectedVersion::NoStream, [])
            .append_reserved(
                &meta_stream,
                self.meta_version(&meta_stream)?,
                vec![NewEvent::json(records::STREAM_METADATA, &record)?],
            )
            .commit()
            .map(drop)
    }

    /// The expected version that pins the metadata stream to its current state.
    pub(super) fn meta_version(&self, meta_stream: &str) -> Result<ExpectedVersion> {
        let count = self.engine.index.stream_info(meta_stream)?.count;
        Ok(count
            .checked_sub(1)
            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact))
    }

    /// Sets a stream's metadata (retention and the application's JSON). `expected` is the
    /// expected version of the *metadata* (`NoStream` the first time; then the version
    /// [`stream_metadata`](Self::stream_metadata) reports). Reads honour it at once. A deleted
    /// stream stays deleted (its `deleted_before` and a tombstone stay). Waits while a scavenge
    /// runs. Returns the metadata's new version.
    pub fn set_stream_metadata(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        metadata: StreamMetadata,
    ) -> Result<u64> {
        check_stream_name(stream, false)?;
        // Not while a scavenge decides what is unreadable: metadata that keeps more must not
        // come between its decision and its writing.
        let _scavenges = self.engine.maintenance.lock();
        let meta_stream = records::metadata_stream(stream);
        loop {
            let old = self.engine.lifecycle.get(stream).unwrap_or_default();
            let record = MetadataRecord {
                truncate_before: metadata.truncate_before,
                max_count: metadata.max_count,
                max_age_secs: metadata
                    .max_age
                    .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
                // A deletion and a tombstone stay.
                tombstoned: old.tombstoned,
                deleted_before: old.deleted_before,
                custom: metadata.custom.clone(),
            };
            let event = NewEvent::json(records::STREAM_METADATA, &record)?;
            // What every open must read back (JSON nested deeper than the reader allows is
            // refused here, not at the next open).
            if let Err(e) = serde_json::from_slice::<MetadataRecord>(&event.payload) {
                return Err(Error::InvalidArgument(format!(
                    "the metadata of `{stream}` would not read back: {e}"
                )));
            }
            // `Any` is pinned to the version read, so a concurrent deletion is never undone.
            let pinned = match expected {
                ExpectedVersion::Any => self.meta_version(&meta_stream)?,
                other => other,
            };
            match self.append_system(&meta_stream, pinned, vec![event]) {
                Ok(r) => return Ok(r.version.expect("a metadata record was appended")),
                Err(Error::WrongExpectedVersion { .. }) if expected == ExpectedVersion::Any => {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A stream's metadata and its version, if it has any.
    pub fn stream_metadata(&self, stream: &str) -> Result<Option<(u64, StreamMetadata)>> {
        check_stream_name(stream, false)?;
        self.engine.refresh()?;
        let Some(record) = self.engine.lifecycle.get(stream) else {
            return Ok(None);
        };
        let count = self
            .engine
            .index
            .stream_info(&records::metadata_stream(stream))?
            .count;
        Ok(Some((
            count.saturating_sub(1),
            StreamMetadata::from_record(&record),
        )))
    }
}
