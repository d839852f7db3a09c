//! The commit path: group commit over the one log writer.
//!
//! Every append (or transaction) becomes a [`Request`] in a queue. The first thread to find no
//! leader becomes the leader: it takes every queued request, checks each one's expected
//! versions (against the index and the requests before it in the group), stages the accepted
//! ones into frames, writes them with one positioned write, syncs once, records them in the
//! index, and hands each request its result. Requests that arrive meanwhile queue up and form
//! the next group, so concurrent appenders share syncs.
//!
//! A failed write or sync poisons the store: that group and every later request fail with
//! [`Error::Poisoned`](crate::error::Error::Poisoned) until the store is reopened, and recovery decides from the disk what
//! was written. So does a panic inside the leader (a bug): its group fails, and no thread is
//! left waiting for a leader that is gone. A request that is refused (wrong expected version,
//! too large, disk full at a segment start) fails alone and writes nothing.
//!
//! Versions and positions are computed with checked arithmetic: a hostile expected version
//! (`u64::MAX`) or a damaged count is an error, never an overflow.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::Engine;
use crate::error::{Error, Result};
use crate::event::{AppendResult, NewEvent};
use crate::index::{Committed, PartIds, PartIndex, StreamInfo};
use crate::log::records::MetadataRecord;
pub(crate) use crate::log::sync::Poison;
use crate::log::writer::{LogWriter, ReserveError};
use crate::store::options::Durability;
use crate::values::ExpectedVersion;

/// One stream's part of a request.
pub(crate) struct Part {
    pub stream: Arc<str>,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    /// Sum of the frame lengths of `events`.
    pub frames_len: u64,
}

/// What a committed request gets back: its results, and its ticket for running subscription
/// callbacks in log order (none if it wrote nothing or nothing is subscribed).
pub(crate) struct Outcome {
    pub results: Vec<AppendResult>,
    pub ticket: Option<u64>,
}

/// An append or transaction waiting for its group.
pub(crate) struct Request {
    parts: Vec<Part>,
    /// Made from inside a subscription callback: the ticket of the outermost append.
    root: Option<u64>,
    state: Mutex<State>,
    wake: Condvar,
}

enum State {
    Waiting,
    /// The previous leader handed leadership to this request's thread.
    Lead,
    Done(Result<Outcome>),
}

impl Request {
    fn finish(&self, result: Result<Outcome>) {
        *self.state.lock() = State::Done(result);
        self.wake.notify_one();
    }

    /// Finishes the request unless it already is (a leader's own request may be in `Lead`).
    fn finish_if_waiting(&self, result: impl FnOnce() -> Result<Outcome>) {
        let mut state = self.state.lock();
        if !matches!(*state, State::Done(_)) {
            *state = State::Done(result());
            drop(state);
            self.wake.notify_one();
        }
    }

    fn lead(&self) {
        *self.state.lock() = State::Lead;
        self.wake.notify_one();
    }
}

#[derive(Default)]
struct Queue {
    pending: Vec<Arc<Request>>,
    leading: bool,
    /// Whether the leader is waiting for its group to fill up.
    gathering: bool,
    /// Size of the last group (the leader waits briefly for as many requests).
    last_group: usize,
}

/// Longest a leader waits for its group to fill up before syncing.
const GATHER_WAIT: Duration = Duration::from_micros(100);

/// How long of [`GATHER_WAIT`] a leader spins before it sleeps.
const GATHER_SPIN: Duration = Duration::from_micros(40);

/// The queue and the writer.
pub(crate) struct Committer {
    queue: Mutex<Queue>,
    /// Length of `queue.pending`, readable without the lock (for the spinning leader).
    queued: std::sync::atomic::AtomicUsize,
    arrived: Condvar,
    writer: Mutex<LogWriter>,
}

impl Committer {
    pub fn new(writer: LogWriter) -> Committer {
        Committer {
            queue: Mutex::new(Queue::default()),
            queued: std::sync::atomic::AtomicUsize::new(0),
            arrived: Condvar::new(),
            writer: Mutex::new(writer),
        }
    }

    pub fn writer(&self) -> &Mutex<LogWriter> {
        &self.writer
    }

    /// Commits `parts` as one atomic unit, sharing the write and sync with concurrent callers.
    pub fn commit(&self, engine: &Engine, parts: Vec<Part>) -> Result<Outcome> {
        engine.poison.check()?;
        let request = Arc::new(Request {
            parts,
            root: super::subscriptions::nested_root(),
            state: Mutex::new(State::Waiting),
            wake: Condvar::new(),
        });
        let lead_now = {
            let mut queue = self.queue.lock();
            queue.pending.push(request.clone());
            self.queued.store(queue.pending.len(), Ordering::Release);
            // Wake a gathering leader only once its group is full (one wake-up, not one per
            // arrival); otherwise it wakes at its deadline.
            if queue.gathering && queue.pending.len() >= queue.last_group {
                self.arrived.notify_one();
            }
            !std::mem::replace(&mut queue.leading, true)
        };
        if !lead_now {
            let mut state = request.state.lock();
            while matches!(*state, State::Waiting) {
                request.wake.wait(&mut state);
            }
            if let State::Done(_) = &*state {
                let State::Done(result) = std::mem::replace(&mut *state, State::Waiting) else {
                    unreachable!()
                };
                return result;
            }
        }
        // This thread leads: its own request is pending, so it is in the group it commits.
        let group = self.gather(engine);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.lead(engine, &group))) {
            let err = engine.poison.fail(format!(
                "the commit leader panicked ({}); the group it was committing failed",
                super::subscriptions::panic_message(&panic)
            ));
            for r in &group {
                r.finish_if_waiting(|| Err(clone_poison(&err)));
            }
        }
        {
            let mut queue = self.queue.lock();
            match queue.pending.first() {
                Some(next) => next.lead(),
                None => queue.leading = false,
            }
        }
        let mut state = request.state.lock();
        match std::mem::replace(&mut *state, State::Waiting) {
            State::Done(result) => result,
            _ => unreachable!("the leader's own request is in its group"),
        }
    }

    /// Takes the pending requests as a group. With synced appends, first waits briefly for as
    /// many requests as the last group had: appenders that were just woken need a moment to
    /// come back, and one sync for all of them beats one sync each.
    fn gather(&self, engine: &Engine) -> Vec<Arc<Request>> {
        let mut queue = self.queue.lock();
        if engine.durability == Durability::Immediate && queue.pending.len() < queue.last_group {
            let deadline = Instant::now() + GATHER_WAIT;
            // Spin first: the others are on their way back, and a sleeping leader would need
            // waking (slow on virtual machines); then sleep until the deadline.
            let target = queue.last_group;
            drop(queue);
            let spin_until = Instant::now() + GATHER_SPIN;
            while self.queued.load(Ordering::Acquire) < target && Instant::now() < spin_until {
                std::hint::spin_loop();
            }
            queue = self.queue.lock();
            queue.gathering = true;
            while queue.pending.len() < queue.last_group {
                if self.arrived.wait_until(&mut queue, deadline).timed_out() {
                    break;
                }
            }
            queue.gathering = false;
        }
        let group = std::mem::take(&mut queue.pending);
        self.queued.store(0, Ordering::Release);
        queue.last_group = group.len();
        group
    }

    /// Commits one group; on failure (the store is then poisoned) every request of the group
    /// still waiting fails with the poison, in one place.
    fn lead(&self, engine: &Engine, group: &[Arc<Request>]) {
        let mut writer = self.writer.lock();
        match self.commit_group(engine, &mut writer, group) {
            Ok((done, wrote)) => {
                // Hand out the results, wake readers and flush the index without the writer.
                drop(writer);
                for (request, outcome) in done {
                    request.finish(Ok(outcome));
                }
                if wrote {
                    engine.notify_appended();
                    engine.after_commit();
                }
            }
            Err(e) => {
                drop(writer);
                let err = clone_poison(&e);
                for r in group {
                    r.finish_if_waiting(|| Err(clone_poison(&err)));
                }
            }
        }
    }

    /// Stages, writes and indexes a group. A request that is refused is finished here with its
    /// error; the others' outcomes are returned (with whether anything was written). An `Err`
    /// means the store is poisoned and the rest of the group must fail.
    #[allow(clippy::type_complexity)]
    fn commit_group<'g>(
        &self,
        engine: &Engine,
        writer: &mut LogWriter,
        group: &'g [Arc<Request>],
    ) -> Result<(Vec<(&'g Arc<Request>, Outcome)>, bool)> {
        engine.poison.check()?;
        let mut overlay = Overlay::default();
        let mut accepted: Vec<(&Arc<Request>, Vec<AppendResult>, bool)> = Vec::new();
        let mut index_parts: Vec<PartIndex> = Vec::new();
        for request in group {
            match stage(writer, engine, &mut overlay, &request.parts) {
                Ok((results, parts)) => {
                    accepted.push((request, results, !parts.is_empty()));
                    index_parts.extend(parts);
                }
                Err(StageError::Refused(e)) => request.finish(Err(e)),
                // The writer's syncer poisoned the store.
                Err(StageError::Fatal(e)) => return Err(e),
            }
        }
        if index_parts.is_empty() {
            // Nothing new to write (every accepted request was a retry of stored events, or
            // appended no events).
            let done = accepted
                .into_iter()
                .map(|(r, results, _)| {
                    (
                        r,
                        Outcome {
                            results,
                            ticket: None,
                        },
                    )
                })
                .collect();
            return Ok((done, false));
        }
        // Recovery skips probing past the end of a store closed cleanly: before the first write
        // after such an open, the sidecar must durably stop saying so.
        if engine.marked_clean.load(Ordering::Acquire) {
            engine.index.set_clean(false).map_err(|e| {
                engine
                    .poison
                    .fail(format!("clearing the clean-close mark failed: {e}"))
            })?;
            engine.marked_clean.store(false, Ordering::Release);
        }
        writer.write_staged(engine.durability == Durability::Immediate)?;
        let committed = Committed {
            end: writer.end(),
            last_frame: writer.last_frame(),
        };
        if let Err(e) = engine.index.apply(&index_parts, committed) {
            // The group is in the log; reopening replays it into a sound index.
            engine.poison.set(format!("index update failed: {e}"));
        }
        for (stream, record) in overlay.metadata.drain() {
            // Versions below a deletion are gone: the stream's next version is after them.
            if let Some(deleted_before) = record.deleted_before
                && let Err(e) = engine.index.raise_count(&stream, deleted_before)
            {
                engine.poison.set(format!("index update failed: {e}"));
            }
            engine.lifecycle.set(&stream, record);
        }
        let events: u64 = index_parts.iter().map(|p| u64::from(p.add.run.count)).sum();
        engine.counters.groups.fetch_add(1, Ordering::Relaxed);
        engine
            .counters
            .commits
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        engine.counters.events.fetch_add(events, Ordering::Relaxed);
        let subscribed = engine.subscribers.any();
        let done = accepted
            .into_iter()
            .map(|(request, results, wrote)| {
                // Tickets are handed out here, under the writer, in log order.
                let ticket = (subscribed && wrote)
                    .then(|| engine.subscribers.ticket(&results, request.root));
                (request, Outcome { results, ticket })
            })
            .collect();
        Ok((done, true))
    }
}

fn clone_poison(e: &Error) -> Error {
    match e {
        Error::Poisoned { cause } => Error::Poisoned {
            cause: cause.clone(),
        },
        other => Error::Poisoned {
            cause: other.to_string(),
        },
    }
}

enum StageError {
    Refused(Error),
    Fatal(Error),
}

/// What the requests before the current one in a group have staged.
#[derive(Default)]
struct Overlay {
    streams: HashMap<Arc<str>, StreamInfo>,
    /// Event id → (stream, version, position) of events staged in this group, for parts whose
    /// ids are not a span.
    ids: HashMap<u128, (Arc<str>, u64, u64)>,
    /// Parts staged in this group whose ids are a span (see [`crate::index::PartIds`]).
    spans: Vec<OverlaySpan>,
    /// The largest id staged in this group.
    max_id: Option<u128>,
    /// Stream metadata staged in this group (by the stream it is about).
    metadata: HashMap<Box<str>, MetadataRecord>,
}

/// A part staged in this group whose ids are strictly increasing and above every id before it.
struct OverlaySpan {
    stream: Arc<str>,
    first_version: u64,
    ids: Vec<u128>,
    positions: Vec<u64>,
}

impl Overlay {
    /// A stream's metadata as this group sees it.
    fn meta(&self, engine: &Engine, stream: &str) -> Option<MetadataRecord> {
        match self.metadata.get(stream) {
            Some(m) => Some(m.clone()),
            None => engine.lifecycle.get(stream),
        }
    }

    /// Where an event staged in this group is: (stream, version, position).
    fn find(&self, id: u128) -> Option<(Arc<str>, u64, u64)> {
        if let Some(found) = self.ids.get(&id) {
            return Some(found.clone());
        }
        self.spans.iter().find_map(|span| {
            let k = span.ids.binary_search(&id).ok()?;
            Some((
                span.stream.clone(),
                span.first_version + k as u64,
                span.positions[k],
            ))
        })
    }
}

/// Whether the request's ids are strictly increasing, part after part, and all above `above`:
/// then none of them is stored or staged, and none repeats (time-ordered ids, the common case,
/// need no lookup).
fn all_above(parts: &[Part], above: Option<u128>) -> bool {
    let mut last = above;
    for e in parts.iter().flat_map(|p| &p.events) {
        let id = e.id.as_u128();
        if last.is_some_and(|l| id <= l) {
            return false;
        }
        last = Some(id);
    }
    true
}

/// Where an already-stored event is.
struct Stored {
    stream: String,
    version: u64,
    position: u64,
}

/// Looks for the request's event ids among stored events (and those staged earlier in the
/// group). Returns, per part, where each of its events already is, or `None` if no event of the
/// request is stored; a request with only some of its events stored, or with an id twice, is
/// refused.
fn find_stored(
    engine: &Engine,
    overlay: &Overlay,
    parts: &[Part],
) -> Result<Option<Vec<Vec<Stored>>>> {
    if all_above(parts, engine.index.max_id().max(overlay.max_id)) {
        return Ok(None);
    }
    let mut found: Vec<Vec<Stored>> = Vec::with_capacity(parts.len());
    let mut seen = std::collections::HashSet::new();
    let (mut any, mut all) = (false, true);
    let mut first_found = None;
    let mut cursor = crate::log::reader::Cursor::default();
    let limit = engine.index.committed().end;
    for part in parts {
        let mut stored = Vec::new();
        for e in &part.events {
            let id = e.id.as_u128();
            if !seen.insert(id) {
                return Err(Error::DuplicateEventId {
                    id: e.id,
                    detail: "appears twice in one append".into(),
                });
            }
            let at = match overlay.find(id) {
                Some((stream, version, position)) => Some(Stored {
                    stream: stream.to_string(),
                    version,
                    position,
                }),
                None => match engine.locate_id(id)? {
                    Some(position) => {
                        let (bytes, _) = engine.reader.read(position, limit, &mut cursor)?;
                        let stored = crate::log::format::EventRef::new(&bytes);
                        Some(Stored {
                            stream: stored.stream().to_owned(),
                            version: stored.version(),
                            position,
                        })
                    }
                    None => None,
                },
            };
            match at {
                Some(at) => {
                    any = true;
                    first_found.get_or_insert((e.id, at.stream.clone(), at.version));
                    stored.push(at);
                }
                None => all = false,
            }
        }
        found.push(stored);
    }
    match (any, all) {
        (false, _) => Ok(None),
        (true, true) => Ok(Some(found)),
        (true, false) => {
            let (id, stream, version) = first_found.expect("found one");
            Err(Error::DuplicateEventId {
                id,
                detail: format!(
                    "already stored as version {version} of `{stream}`, and other events of this append are not"
                ),
            })
        }
    }
}

/// A stream's state as the current request sees it: after the parts before it in the request
/// (`after`), the requests before it in the group (`overlay`), else as indexed.
fn current(
    engine: &Engine,
    overlay: &Overlay,
    after: &[(Arc<str>, StreamInfo)],
    stream: &Arc<str>,
) -> Result<StreamInfo> {
    let known = after
        .iter()
        .rev()
        .find(|(s, _)| s == stream)
        .map(|(_, info)| *info)
        .or_else(|| overlay.streams.get(stream).copied());
    match known {
        Some(info) => Ok(info),
        None => engine.index.stream_info(stream),
    }
}

/// The version a stream of `count` events is at (`None`: no stream).
fn version_of(count: u64) -> Option<u64> {
    count.checked_sub(1)
}

/// A stream's count after `n` more events, or the error that refuses them.
fn count_after(stream: &str, count: u64, n: usize) -> Result<u64> {
    count.checked_add(n as u64).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "stream `{stream}` cannot take {n} more events: its version would pass u64::MAX"
        ))
    })
}

/// Checks a part's expected version against the stream's state (a deleted stream does not
/// exist; see `lifecycle`), and refuses any part on a tombstoned stream.
fn check_expected(part: &Part, info: StreamInfo, meta: Option<&MetadataRecord>) -> Result<()> {
    if meta.is_some_and(|m| m.tombstoned) {
        return Err(Error::StreamDeleted {
            stream: part.stream.to_string(),
        });
    }
    let actual = super::lifecycle::visible_version(info.count, meta);
    if part.expected.matches(actual) {
        Ok(())
    } else {
        Err(Error::WrongExpectedVersion {
            stream: part.stream.to_string(),
            expected: part.expected,
            actual,
        })
    }
}

/// If every event of the request is already stored exactly where this append would have put
/// it, the results of that earlier append; otherwise the error that refuses it. (Parts with no
/// events are checked against the streams' current versions.)
fn already_appended(
    engine: &Engine,
    overlay: &Overlay,
    parts: &[Part],
    found: Vec<Vec<Stored>>,
) -> Result<Vec<AppendResult>> {
    let mut results = Vec::with_capacity(parts.len());
    for (part, stored) in parts.iter().zip(found) {
        let (Some(first), Some(last)) = (stored.first(), stored.last()) else {
            let info = current(engine, overlay, &[], &part.stream)?;
            check_expected(part, info, overlay.meta(engine, &part.stream).as_ref())?;
            results.push(AppendResult::nothing(version_of(info.count), engine.end()));
            continue;
        };
        // A stream's first event is at version 0, or where it was made to start (its
        // deleted versions end there): a retry of either first append is recognised.
        let start = || {
            overlay
                .meta(engine, &part.stream)
                .and_then(|m| m.deleted_before)
                .unwrap_or(0)
        };
        let in_place = stored.iter().enumerate().all(|(k, s)| {
            s.stream == *part.stream && first.version.checked_add(k as u64) == Some(s.version)
        }) && match part.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => first.version == 0 || first.version == start(),
            ExpectedVersion::StreamExists => first.version > 0 && first.version != start(),
            ExpectedVersion::Exact(v) => v.checked_add(1) == Some(first.version),
        };
        if !in_place {
            return Err(Error::DuplicateEventId {
                id: part.events[0].id,
                detail: format!(
                    "already stored as version {} of `{}`, not where this append ({} {}) puts it",
                    first.version, first.stream, part.stream, part.expected
                ),
            });
        }
        results.push(AppendResult::new(
            last.version,
            crate::values::Position::new(first.position),
            crate::values::Position::new(last.position),
        ));
    }
    Ok(results)
}

/// Checks a request's expected versions and stages its frames, or recognises a retry of an
/// append that is already stored (then nothing is staged). On success the overlay holds the
/// streams' new states; on refusal nothing changed. Parts with no events are only checked.
fn stage(
    writer: &mut LogWriter,
    engine: &Engine,
    overlay: &mut Overlay,
    parts: &[Part],
) -> Result<(Vec<AppendResult>, Vec<PartIndex>), StageError> {
    let refused = StageError::Refused;
    if let Some(found) = find_stored(engine, overlay, parts).map_err(refused)? {
        let results = already_appended(engine, overlay, parts, found).map_err(refused)?;
        return Ok((results, Vec::new()));
    }
    let mut before: Vec<StreamInfo> = Vec::with_capacity(parts.len());
    let mut after: Vec<(Arc<str>, StreamInfo)> = Vec::with_capacity(parts.len());
    for part in parts {
        let info = current(engine, overlay, &after, &part.stream).map_err(refused)?;
        check_expected(part, info, overlay.meta(engine, &part.stream).as_ref()).map_err(refused)?;
        let count = count_after(&part.stream, info.count, part.events.len()).map_err(refused)?;
        before.push(info);
        after.push((part.stream.clone(), StreamInfo { id: info.id, count }));
    }
    let total: u64 = parts.iter().map(|p| p.frames_len).sum();
    if total > 0 {
        writer.reserve(total).map_err(|e| match e {
            ReserveError::Refused(e) => StageError::Refused(e),
            ReserveError::Fatal(e) => StageError::Fatal(e),
        })?;
    }
    // The commit end flag goes on the last frame of the last part that has events.
    let last_written = parts.iter().rposition(|p| !p.events.is_empty());
    let mut results = Vec::with_capacity(parts.len());
    let mut index_parts = Vec::with_capacity(parts.len());
    let mut positions = Vec::new();
    for (i, (part, info)) in parts.iter().zip(&before).enumerate() {
        if part.events.is_empty() {
            // Nothing to write: the version it was checked at, and where the log ends.
            let version = version_of(info.count);
            results.push(AppendResult::nothing(
                version,
                crate::values::Position::new(writer.end()),
            ));
            continue;
        }
        let stream: &str = &part.stream;
        // Checked above: `info.count + events` fits.
        let records = part
            .events
            .iter()
            .enumerate()
            .map(|(k, e)| e.record(stream, info.count + k as u64));
        positions.clear();
        let staged = writer.stage_frames(records, Some(i) == last_written, &mut positions);
        let count = part.events.len() as u64;
        results.push(AppendResult::new(
            info.count + count - 1,
            crate::values::Position::new(staged.first),
            crate::values::Position::new(staged.last),
        ));
        let frames = part
            .events
            .iter()
            .zip(&positions)
            .map(|(e, p)| (*p, e.event_type.clone(), e.id.as_u128()));
        let above = engine.index.max_id().max(overlay.max_id);
        let index = PartIndex::new(part.stream.clone(), *info, frames, staged.end, above);
        match &index.ids {
            PartIds::Span { .. } => overlay.spans.push(OverlaySpan {
                stream: part.stream.clone(),
                first_version: info.count,
                ids: part.events.iter().map(|e| e.id.as_u128()).collect(),
                positions: positions.clone(),
            }),
            PartIds::Each(_) => {
                for (k, (e, position)) in part.events.iter().zip(&positions).enumerate() {
                    let version = info.count + k as u64;
                    overlay
                        .ids
                        .insert(e.id.as_u128(), (part.stream.clone(), version, *position));
                }
            }
        }
        overlay.max_id = overlay.max_id.max(index.ids.max());
        index_parts.push(index);
    }
    overlay.streams.extend(after);
    for part in parts {
        if let (Some(stream), Some(last)) = (
            crate::log::records::metadata_of(&part.stream),
            part.events.last(),
        ) && let Ok(record) = serde_json::from_slice::<MetadataRecord>(&last.payload)
        {
            overlay.metadata.insert(stream.into(), record);
        }
    }
    Ok((results, index_parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FaultFs, FaultMode};
    use crate::store::Store;
    use crate::store::StoreBuilder;

    fn part(stream: &str, expected: ExpectedVersion, n: usize) -> Part {
        Part {
            stream: Arc::from(stream),
            expected,
            events: (0..n).map(|_| NewEvent::new("E", "x")).collect(),
            frames_len: 0,
        }
    }

    #[test]
    fn versions_are_checked_without_overflow() {
        let at = |count| StreamInfo { id: Some(1), count };
        assert!(
            check_expected(&part("s", ExpectedVersion::Exact(u64::MAX), 1), at(0), None).is_err()
        );
        assert!(
            check_expected(
                &part("s", ExpectedVersion::Exact(u64::MAX), 1),
                at(u64::MAX),
                None
            )
            .is_err()
        );
        assert!(check_expected(&part("s", ExpectedVersion::NoStream, 1), at(0), None).is_ok());
        assert!(check_expected(&part("s", ExpectedVersion::Exact(4), 1), at(5), None).is_ok());
        // A soft-deleted stream does not exist; a tombstoned one refuses everything.
        let deleted = MetadataRecord {
            deleted_before: Some(5),
            ..Default::default()
        };
        assert!(
            check_expected(
                &part("s", ExpectedVersion::NoStream, 1),
                at(5),
                Some(&deleted)
            )
            .is_ok()
        );
        assert!(
            check_expected(
                &part("s", ExpectedVersion::Exact(4), 1),
                at(5),
                Some(&deleted)
            )
            .is_err()
        );
        assert!(
            check_expected(
                &part("s", ExpectedVersion::Exact(5), 1),
                at(6),
                Some(&deleted)
            )
            .is_ok()
        );
        let tombstoned = MetadataRecord {
            tombstoned: true,
            ..deleted
        };
        assert!(matches!(
            check_expected(
                &part("s", ExpectedVersion::Any, 1),
                at(5),
                Some(&tombstoned)
            ),
            Err(Error::StreamDeleted { .. })
        ));
        assert!(count_after("s", u64::MAX, 1).is_err());
        assert!(count_after("s", u64::MAX - 2, 2).is_ok());
        assert_eq!(version_of(0), None);
        assert_eq!(version_of(3), Some(2));
    }

    fn open(fs: &FaultFs) -> Store {
        StoreBuilder::default()
            .file_system(fs.clone())
            .segment_size(64 * 1024)
            .open("/c/s")
            .unwrap()
    }

    #[test]
    fn a_failing_disk_fails_every_waiting_request_and_hangs_no_thread() {
        for cut in (3u64..90).step_by(3) {
            let fs = FaultFs::new();
            let store = Arc::new(open(&fs));
            fs.fail_at(
                fs.op_count() + cut,
                FaultMode::Always,
                std::io::ErrorKind::Other,
            );
            let threads: Vec<_> = (0..6)
                .map(|t| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        (0..20)
                            .map(|i| {
                                store
                                    .append(
                                        &format!("t-{t}"),
                                        ExpectedVersion::Any,
                                        [NewEvent::new("E", vec![i as u8; 300])],
                                    )
                                    .is_ok()
                            })
                            .collect::<Vec<bool>>()
                    })
                })
                .collect();
            let mut failed = false;
            for t in threads {
                let oks = t.join().expect("no appending thread panics");
                // Once the store is poisoned, nothing succeeds any more.
                if let Some(first_err) = oks.iter().position(|ok| !ok) {
                    assert!(oks[first_err..].iter().all(|ok| !ok), "cut {cut}: {oks:?}");
                    failed = true;
                }
            }
            // (A late cut may fall after the last append: then nothing failed.)
            assert_eq!(store.engine.poison.is_set(), failed, "cut {cut}");
        }
    }

    #[test]
    fn an_append_of_no_events_writes_nothing() {
        let fs = FaultFs::new();
        let store = open(&fs);
        let end = store.end_position();
        let ops = fs.op_count();
        let r = store.append("s", ExpectedVersion::NoStream, []).unwrap();
        assert_eq!(
            (r.version, store.end_position(), fs.op_count()),
            (None, end, ops)
        );
    }
}
