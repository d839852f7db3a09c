//! Scavenging: giving back the space of events no read returns any more (see the readability
//! rule in `lifecycle`), and of engine records something newer superseded.
//!
//! **How.** A scavenge walks the log's sealed segments (the segment being written is left alone)
//! and finds every run of consecutive frames that are all unreadable. Each run becomes one *gap*
//! frame (`src/log/format.rs`): its header is rewritten, the rest zeroed, and the whole 4096-byte
//! blocks inside it are punched out of the file, which gives their space back (`du` drops) while
//! the file keeps its length. **Surviving frames never move**: every position stays valid, so
//! every checkpoint does too. Gaps are written a journal slot at a time (`src/log/journal.rs`):
//! a crash at any point leaves either the old frames or the gaps, never a half-written header.
//!
//! **Kept on purpose.** The newest event of a stream that is not deleted stays on disk even when
//! it is expired (by age or truncation): if the index is ever rebuilt from the log, it is what
//! tells the stream's version, so versions go on after it. (A deleted stream's version is in its
//! metadata.) Events in the segment being written wait for the next scavenge after it is sealed.
//!
//! **While the store is open.** Appends and reads go on: a scavenge writes only below the end of
//! the log, in frames no read returns, and tells the store's readers about each gap before it
//! writes it. One scavenge or erasure runs at a time.

use std::collections::HashSet;
use std::sync::Arc;

use super::Engine;
use crate::error::{Error, Result};
use crate::log::format::{Body, EventRef};
use crate::log::journal::{self, GapSpec, Intent};
use crate::log::reader::Cursor;
use crate::log::records;
use crate::values::Position;

/// What a scavenge removed (or, for a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScavengeReport {
    /// Whether this was a dry run (nothing was written).
    pub dry_run: bool,
    /// Event frames removed: deleted, truncated, expired or superseded events.
    pub events: u64,
    /// Of those, the engine's own records (older checkpoints, outbox progress, snapshots,
    /// metadata).
    pub records: u64,
    /// Bytes of the removed frames.
    pub bytes_removed: u64,
    /// Bytes given back to the file system (whole blocks punched out): what `du` drops by.
    pub bytes_freed: u64,
    /// Gap frames written.
    pub gaps: u64,
    /// Segments left alone because events read from them were still held by the application
    /// after waiting (10 seconds unless [`ScavengeOptions::busy_wait`] says otherwise); the
    /// next scavenge takes them.
    pub segments_busy: u64,
    /// The scavenge looked at the log before this position (the start of the segment being
    /// written).
    pub up_to: Position,
}

/// How a scavenge runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScavengeOptions {
    /// Only measure what would be removed and freed; write nothing.
    pub dry_run: bool,
    /// How long to wait, per segment, for events the application still holds from it (read
    /// before the scavenge: their bytes are mapped from the file) before leaving the segment
    /// for the next scavenge. Default 10 seconds.
    pub busy_wait: std::time::Duration,
}

impl Default for ScavengeOptions {
    fn default() -> Self {
        ScavengeOptions {
            dry_run: false,
            busy_wait: BUSY_WAIT,
        }
    }
}

/// How long a scavenge waits for the events an application still holds from a segment
/// before leaving that segment for the next scavenge.
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A run of unreadable frames being gathered.
struct Run {
    spec: GapSpec,
    /// Frames in it that are not gaps yet.
    fresh: u64,
    /// Gaps already in it.
    old_gaps: u64,
}

impl Engine {
    /// Runs a scavenge, or with `dry_run` only measures what it would remove. One segment at a
    /// time: its unreadable runs are found, its map is taken out of use and every event read
    /// from it before is waited for (see [`BUSY_WAIT`]), then its gaps are written.
    pub(crate) fn scavenge(&self, options: ScavengeOptions) -> Result<ScavengeReport> {
        let ScavengeOptions { dry_run, busy_wait } = options;
        if self.read_only && !dry_run {
            return Err(Error::ReadOnly {
                path: self.path.clone(),
            });
        }
        let mut seq = self.maintenance.lock();
        self.poison.check()?;
        let committed = self.index.committed();
        let up_to = self
            .layout
            .segment_start(self.layout.segment_of(committed.end));
        let mut report = ScavengeReport {
            dry_run,
            up_to: Position::new(up_to),
            ..Default::default()
        };
        let mut aged = HashSet::new();
        if !dry_run {
            // What decides which frames are unreadable (deletions, newer checkpoints, appends)
            // is durable before any frame changes; the sidecar covers the log past every frame
            // this scavenge may change (so an open never starts its scan inside a gap).
            self.sync_unsynced()?;
            self.flush_sidecar()?;
        }
        let mut at = crate::log::Layout::FIRST;
        while at < up_to {
            let segment = self.layout.segment_of(at);
            let mut found = ScavengeReport::default();
            let (gaps, next) = self.segment_gaps(at, committed.end, &mut found, &mut aged)?;
            at = next;
            if gaps.is_empty() {
                continue;
            }
            if !dry_run {
                let old = self.reader.retire_maps(&[segment]);
                if !crate::log::reader::LogReader::wait_released(&old, busy_wait) {
                    // Events of this segment are still held: left for the next scavenge.
                    report.segments_busy += 1;
                    continue;
                }
                for chunk in gaps.chunks(Intent::capacity(None)) {
                    self.write_intent(&mut seq, None, chunk)?;
                }
            }
            report.events += found.events;
            report.records += found.records;
            report.bytes_removed += found.bytes_removed;
            report.bytes_freed += found.bytes_freed;
            report.gaps += found.gaps;
        }
        if !dry_run && report.gaps > 0 {
            self.finish_intents(&mut seq)?;
            tracing::info!(
                path = %self.path.display(),
                events = report.events,
                bytes_freed = report.bytes_freed,
                "annals: scavenged"
            );
        }
        Ok(report)
    }

    /// The gaps to write in the segment starting at `at` (a frame), counted into `report`, and
    /// where the next segment starts.
    fn segment_gaps(
        &self,
        mut at: u64,
        limit: u64,
        report: &mut ScavengeReport,
        aged: &mut HashSet<String>,
    ) -> Result<(Vec<GapSpec>, u64)> {
        let mut gaps = Vec::new();
        let mut run: Option<Run> = None;
        let mut cursor = Cursor::default();
        let segment_end = self.layout.segment_end(at);
        while at < segment_end && at < limit {
            let (bytes, frame) = self.reader.read(at, limit, &mut cursor)?;
            let dead = match frame.body {
                Body::Seal { .. } => None,
                Body::Gap { .. } => Some(false),
                Body::Event => {
                    let e = EventRef::new(&bytes);
                    self.removable(&e, aged)?.then_some(true)
                }
            };
            match dead {
                Some(fresh) => {
                    let r = run.get_or_insert(Run {
                        spec: GapSpec {
                            start: at,
                            len: 0,
                            durable: frame.link.durable,
                            prev: frame.link.prev,
                            commit_end: false,
                            last_inner: at,
                        },
                        fresh: 0,
                        old_gaps: 0,
                    });
                    r.spec.len = u32::try_from(frame.next() - r.spec.start)
                        .expect("a gap stays inside one segment");
                    r.spec.commit_end = frame.link.commit_end;
                    r.spec.last_inner = frame.chain_last();
                    if fresh {
                        r.fresh += 1;
                        report.events += 1;
                        report.bytes_removed += u64::from(frame.len);
                        if EventRef::new(&bytes).is_system() {
                            report.records += 1;
                        }
                    } else {
                        r.old_gaps += 1;
                    }
                }
                None => {
                    if let Some(r) = run.take() {
                        self.close_run(r, &mut gaps, report);
                    }
                }
            }
            at = frame.next();
        }
        if let Some(r) = run.take() {
            self.close_run(r, &mut gaps, report);
        }
        Ok((gaps, at.max(segment_end)))
    }

    /// Whether a scavenge may remove this event: no read returns it, and removing it leaves
    /// every stream's surviving events a run without holes (what a scavenge removes of a stream
    /// is always a prefix of it) whose newest event stays unless the stream was deleted
    /// (see the module's notes). `aged` holds the streams with a maximum age of which a
    /// readable event was seen in this walk: their later expired events stay for now.
    fn removable(&self, e: &EventRef<'_>, aged: &mut HashSet<String>) -> Result<bool> {
        let stream = e.stream();
        if self.lifecycle.readable(&self.index, e) {
            if self
                .lifecycle
                .peek(stream, |m| m.max_age_secs.is_some())
                .unwrap_or(false)
            {
                aged.insert(stream.to_owned());
            }
            return Ok(false);
        }
        if records::supersedes(stream) {
            return Ok(true);
        }
        let Some(m) = self.lifecycle.get(stream) else {
            return Ok(false);
        };
        if m.tombstoned || m.deleted_before.is_some_and(|d| e.version() < d) {
            return Ok(true);
        }
        let count = self.index.stream_info(stream)?.count;
        if e.version().saturating_add(1) >= count {
            return Ok(false);
        }
        if e.version() < super::lifecycle::first_by(&m, count) {
            return Ok(true);
        }
        // Expired by age alone (timestamps need not follow versions).
        Ok(!aged.contains(stream))
    }

    fn close_run(&self, r: Run, pending: &mut Vec<GapSpec>, report: &mut ScavengeReport) {
        // A single gap already there changes nothing; anything else is written.
        if r.fresh == 0 && r.old_gaps <= 1 {
            return;
        }
        report.gaps += 1;
        report.bytes_freed += journal::reclaimable(r.spec.start, r.spec.end());
        pending.push(r.spec);
    }

    /// Announces gaps in the journal, tells the readers, then writes them. A failure poisons
    /// the store (the next open writes the announced gaps again).
    pub(crate) fn write_intent(
        &self,
        seq: &mut u64,
        erasure: Option<&journal::Erasure>,
        gaps: &[GapSpec],
    ) -> Result<u64> {
        self.poison.check()?;
        let fail = |e: std::io::Error| {
            self.poison
                .fail(format!("rewriting frames into gaps failed: {e}"))
        };
        *seq += 1;
        let intent = Intent {
            erasure: erasure.cloned(),
            gaps: gaps.to_vec(),
        };
        journal::write(&*self.file, *seq, &intent).map_err(fail)?;
        for g in gaps {
            self.reader.learn_gap(g.start, g.end());
        }
        self.reader
            .rewriting(|| journal::write_gaps(&*self.file, self.layout.key, gaps))
            .map_err(fail)
    }

    /// Records in the journal that nothing is pending.
    pub(crate) fn finish_intents(&self, seq: &mut u64) -> Result<()> {
        self.write_intent(seq, None, &[]).map(drop)
    }
}

impl super::Store {
    /// Gives back the disk space of every event no read can return any more (deleted,
    /// truncated, expired, superseded engine records) by turning them into gaps and punching
    /// whole blocks out of the file; surviving events never move, so every position and
    /// checkpoint stays valid. Runs while the store is used; crash-safe at every step. See
    /// [`scavenge_dry_run`](Self::scavenge_dry_run) to measure first.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::builder().segment_size(64 * 1024).open(dir.path().join("s"))?;
    /// for i in 0..400 {
    ///     let stream = format!("temp-{}", i / 100);
    ///     store.append(&stream, ExpectedVersion::Any, [NewEvent::new("E", vec![7u8; 500])])?;
    /// }
    /// store.delete_stream("temp-0", ExpectedVersion::Any)?;
    /// let report = store.scavenge()?;
    /// assert_eq!(report.events, 100);
    /// assert!(report.bytes_freed > 0);
    /// assert_eq!(store.scavenge_dry_run()?.events, 0, "nothing left to remove");
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn scavenge(&self) -> Result<ScavengeReport> {
        self.engine.scavenge(ScavengeOptions::default())
    }

    /// What [`scavenge`](Self::scavenge) would remove and give back, writing nothing.
    pub fn scavenge_dry_run(&self) -> Result<ScavengeReport> {
        self.engine.scavenge(ScavengeOptions {
            dry_run: true,
            ..Default::default()
        })
    }

    /// A scavenge with options: a dry run, and how long to wait for events the application
    /// still holds from a segment (read before the scavenge) before leaving that segment alone.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, ScavengeOptions, Store};
    /// use std::time::Duration;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// store.append("a", ExpectedVersion::Any, [NewEvent::new("E", "x")])?;
    /// let options = ScavengeOptions { dry_run: true, busy_wait: Duration::from_secs(1) };
    /// assert!(store.scavenge_with(options)?.dry_run);
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn scavenge_with(&self, options: ScavengeOptions) -> Result<ScavengeReport> {
        self.engine.scavenge(options)
    }
}

/// Carries out what the journal says was pending when the store was last open: writes its
/// gaps again. Returns the intent's number, for an erasure the erasure to finish, and what was
/// done, in words.
pub(crate) fn redo(
    file: &Arc<dyn crate::storage::StorageFile>,
    path: &std::path::Path,
    key: u64,
) -> Result<(u64, Option<journal::Erasure>, Option<String>)> {
    let Some((seq, intent)) = journal::read(&**file).map_err(|e| Error::io_at(path, e))? else {
        return Ok((0, None, None));
    };
    let Some(what) = describe(&intent) else {
        return Ok((seq, None, None));
    };
    tracing::warn!(path = %path.display(), what = %what,
        "annals: a scavenge or erasure was cut off; writing its gaps again");
    journal::write_gaps(&**file, key, &intent.gaps).map_err(|e| Error::io_at(path, e))?;
    if intent.erasure.is_none() {
        // Done: the next open has nothing to write again.
        let done = Intent {
            erasure: None,
            gaps: Vec::new(),
        };
        journal::write(&**file, seq + 1, &done).map_err(|e| Error::io_at(path, e))?;
        return Ok((seq + 1, None, Some(format!("{what}: written again"))));
    }
    Ok((
        seq,
        intent.erasure,
        Some(format!("{what}: written again, then finished")),
    ))
}

/// What an intent still pending would do, in words (`None`: nothing pending).
pub(crate) fn describe(intent: &Intent) -> Option<String> {
    if intent.gaps.is_empty() && intent.erasure.is_none() {
        return None;
    }
    let bytes: u64 = intent.gaps.iter().map(|g| u64::from(g.len)).sum();
    Some(match &intent.erasure {
        Some(e) => format!(
            "an erasure of `{}` below version {} was cut off ({} frames, {bytes} bytes, in \
             its last journal slot)",
            e.stream,
            e.before,
            intent.gaps.len()
        ),
        None => format!(
            "a scavenge was cut off ({} gaps over {bytes} bytes in its last journal slot)",
            intent.gaps.len()
        ),
    })
}

/// What the journal of a store opened read-only says an open for writing would redo.
pub(crate) fn pending(file: &dyn crate::storage::StorageFile) -> Option<String> {
    let (_, intent) = journal::read(file).ok()??;
    describe(&intent).map(|what| format!("{what}: an open for writing writes it again"))
}
