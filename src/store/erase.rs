//! Erasure: making a stream's events unrecoverable from the file (personal data, GDPR), not
//! only unreadable through the API.
//!
//! **Order of steps**, each durable before the next:
//! 1. the journal announces the erasure (stream, version it erases below, id of its record);
//! 2. one commit deletes the stream (its metadata, with the stream's expected version) and
//!    records the erasure (`$erased-STREAM`, `annals.StreamErased`: how many events and bytes;
//!    the time is the record's timestamp);
//! 3. every frame of the stream below that version becomes a gap of its own (header rewritten,
//!    payload and metadata zeroed, whole blocks punched out), a journal slot at a time;
//! 4. the journal says nothing is pending.
//!
//! **After a crash**, the next open writes the announced gaps again and, if the erasure's record
//! is in the log, finishes the erasure before the store is handed out: an acknowledged erasure
//! always completes. If the record is not in the log, the commit never happened and no frame was
//! touched: every event is intact.
//!
//! The index sidecar holds no payloads (only names, versions, positions and ids), so nothing
//! of an erased payload remains there.

use super::{Engine, Store};
use crate::error::{Error, Result};
use crate::event::NewEvent;
use crate::log::format::{Body, EventRef};
use crate::log::journal::{Erasure, GapSpec, Intent};
use crate::log::reader::{Cursor, Found};
use crate::log::records::{self, ErasureRecord, MetadataRecord};
use crate::names::check_stream_name;
use crate::values::{ExpectedVersion, Position};

/// How long an erasure waits for the events an application still holds from the segments it
/// rewrites before it goes on anyway (their bytes then read as zeros).
pub const ERASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureReport {
    /// Event frames overwritten.
    pub events: u64,
    /// Bytes of those frames (all overwritten: zeroed or punched out).
    pub bytes: u64,
    /// Bytes given back to the file system (whole blocks punched out).
    pub bytes_freed: u64,
    /// Events below this version of the stream were erased.
    pub before_version: u64,
    /// Where the erasure's record is.
    pub record: Position,
}

impl Engine {
    /// The frames of `stream` below version `before` still in the file: (position, length,
    /// durable, prev, commit end).
    fn frames_of(&self, stream: &str, before: u64) -> Result<Vec<GapSpec>> {
        let limit = self.index.committed().end;
        let mut cursor = Cursor::default();
        let mut found = Vec::new();
        let mut from = 0;
        while from < before {
            let snapshot = self.index.stream_snapshot(stream, from, false, 256)?;
            let Some(last) = snapshot.runs.last().copied() else {
                break;
            };
            for run in &snapshot.runs {
                let mut at = run.position;
                let mut passed_gap = false;
                let mut left = run.count;
                while left > 0 && at < limit {
                    match self.reader.resolve(at, limit, &mut cursor)? {
                        Found::Gap { end, .. } => {
                            passed_gap = true;
                            at = end;
                        }
                        Found::Frame(bytes, frame) => {
                            let e = EventRef::new(&bytes);
                            let ours = frame.body == Body::Event && e.stream() == stream;
                            if !ours {
                                if passed_gap {
                                    break;
                                }
                                return Err(Error::corrupt(
                                    at,
                                    format!("the index lists this frame under `{stream}`"),
                                ));
                            }
                            if e.version() < before {
                                found.push(GapSpec {
                                    start: at,
                                    len: frame.len,
                                    durable: frame.link.durable,
                                    prev: frame.link.prev,
                                    commit_end: frame.link.commit_end,
                                    last_inner: at,
                                });
                            }
                            at = frame.next();
                            left -= 1;
                        }
                    }
                }
            }
            from = last.end_version();
        }
        found.sort_unstable_by_key(|g| g.start);
        found.dedup_by_key(|g| g.start);
        Ok(found)
    }

    /// Turns the frames of the erasure's stream below its version into gaps, a journal slot at
    /// a time, then records that nothing is pending. Returns (frames, bytes, bytes freed).
    pub(crate) fn erase_frames(&self, seq: &mut u64, erasure: &Erasure) -> Result<(u64, u64, u64)> {
        let frames = self.frames_of(&erasure.stream, erasure.before)?;
        let bytes = frames.iter().map(|g| u64::from(g.len)).sum();
        let mut segments: Vec<u64> = frames
            .iter()
            .map(|g| self.layout.segment_of(g.start))
            .collect();
        segments.dedup();
        let old = self.reader.retire_maps(&segments);
        if !crate::log::reader::LogReader::wait_released(&old, ERASE_WAIT) {
            tracing::warn!(path = %self.path.display(), stream = %erasure.stream,
                "annals: events being erased are still held by the application; erasing anyway");
        }
        let mut freed = 0;
        for chunk in frames.chunks(Intent::capacity(Some(erasure))) {
            freed += self.write_intent(seq, Some(erasure), chunk)?;
        }
        self.finish_intents(seq)?;
        Ok((frames.len() as u64, bytes, freed))
    }
}

impl Store {
    /// Erases a stream: deletes it (like [`delete_stream`](Self::delete_stream)) and overwrites
    /// the payload and metadata bytes of every one of its events in the file, so they cannot be
    /// recovered from it, not only not read. Records the erasure in `$erased-STREAM` (the
    /// stream, when, how many events and bytes). Crash-safe: an erasure that returned is
    /// complete after any crash; one cut off either completes at the next open or leaves every
    /// event intact. Appending to the stream later starts it again (versions continue).
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("s");
    /// let store = Store::open(&path)?;
    /// store.append("user-1", ExpectedVersion::NoStream, [NewEvent::new("Named", "Ada Lovelace")])?;
    /// let report = store.erase_stream("user-1")?;
    /// assert_eq!(report.events, 1);
    /// store.close()?;
    /// let bytes = std::fs::read(path.with_extension("annals"))?;
    /// assert!(!bytes.windows(12).any(|w| w == b"Ada Lovelace"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn erase_stream(&self, stream: &str) -> Result<ErasureReport> {
        check_stream_name(stream, false)?;
        if self.engine.read_only {
            return Err(Error::ReadOnly {
                path: self.engine.path.clone(),
            });
        }
        let mut seq = self.engine.maintenance.lock();
        loop {
            let count = self.engine.index.stream_info(stream)?.count;
            let meta = self.engine.lifecycle.get(stream);
            let actual = super::lifecycle::visible_version(count, meta.as_ref());
            let pinned = actual.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            let frames = self.engine.frames_of(stream, count)?;
            let bytes: u64 = frames.iter().map(|g| u64::from(g.len)).sum();
            let record = ErasureRecord {
                stream: stream.to_owned(),
                before_version: count,
                events: frames.len() as u64,
                bytes,
            };
            let record = NewEvent::json(records::STREAM_ERASED, &record)?;
            let erasure = Erasure {
                record_id: record.id.as_u128(),
                before: count,
                stream: stream.to_owned(),
            };
            // 1. Announced before anything else.
            self.engine.write_intent(&mut seq, Some(&erasure), &[])?;
            // 2. Deleted and recorded in one commit, made durable before any frame changes.
            let meta_stream = records::metadata_stream(stream);
            let meta_expected = self.meta_version(&meta_stream)?;
            let mut metadata: MetadataRecord = meta.unwrap_or_default();
            metadata.deleted_before = Some(count);
            let tombstoned = metadata.tombstoned;
            let mut tx = self.transaction();
            if !tombstoned {
                // Pinned to the version read (a tombstoned stream takes no appends anyway).
                tx = tx.append(stream, pinned, []);
            }
            let committed = tx
                .append_reserved(
                    &meta_stream,
                    meta_expected,
                    vec![NewEvent::json(records::STREAM_METADATA, &metadata)?],
                )
                .append_reserved(
                    &records::erasure_stream(stream),
                    ExpectedVersion::Any,
                    vec![record],
                )
                .commit();
            let results = match committed {
                Ok(results) => results,
                // An append raced the erasure: look again.
                Err(Error::WrongExpectedVersion { .. }) => continue,
                Err(e) => {
                    self.engine.finish_intents(&mut seq)?;
                    return Err(e);
                }
            };
            self.engine.sync_unsynced()?;
            // 3. and 4.
            let (events, bytes, bytes_freed) = self.engine.erase_frames(&mut seq, &erasure)?;
            tracing::info!(path = %self.engine.path.display(), stream, events, bytes,
                "annals: erased a stream");
            return Ok(ErasureReport {
                events,
                bytes,
                bytes_freed,
                before_version: count,
                record: results[results.len() - 1].first_position,
            });
        }
    }

    /// Finishes an erasure the journal says was cut off (at open): if its record is in the
    /// log, every frame it covers becomes a gap; otherwise nothing happened to any event.
    pub(crate) fn finish_erasure(&self, erasure: Erasure) -> Result<()> {
        let mut seq = self.engine.maintenance.lock();
        if self.engine.locate_id(erasure.record_id)?.is_some() {
            let (events, ..) = self.engine.erase_frames(&mut seq, &erasure)?;
            tracing::warn!(path = %self.engine.path.display(), stream = %erasure.stream, events,
                "annals: finished an erasure that was cut off");
        } else {
            self.engine.finish_intents(&mut seq)?;
        }
        Ok(())
    }
}
