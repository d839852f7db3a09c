//! Catch-up subscriptions: a named reader that goes through history and then follows live
//! appends, keeping a durable checkpoint in the log (stream `$checkpoint-NAME`), so that after a
//! restart it resumes where it was (at least once: events after the last checkpoint are
//! delivered again). And projections (read models) run on one in the background
//! ([`Store::run_projection`]).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::Store;
use super::subscriptions::{BoxError, Filter};
use crate::error::{Error, Result};
use crate::event::{NewEvent, RecordedEvent};
use crate::names::check_stream_name;
use crate::values::{Direction, ExpectedVersion, Position};

/// Where a catch-up subscription without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpStart {
    /// With the first event of the log.
    Beginning,
    /// After the last event acknowledged now.
    Now,
    /// At this position (inclusive: the event at `position` is the first handed out; to
    /// resume after an event, start at its [`next_position`](crate::RecordedEvent::next_position)).
    At(Position),
    /// At the first event, in log order, whose timestamp is at or after this time (see
    /// [`Store::position_at_time`]).
    Time(std::time::SystemTime),
}

use crate::log::records;

/// The stream holding a subscription's checkpoints.
fn checkpoint_stream(name: &str) -> Result<String> {
    let stream = records::checkpoint_stream(name);
    check_stream_name(&stream, true).map_err(|_| {
        Error::InvalidArgument(format!("{name:?} is not a usable subscription name"))
    })?;
    Ok(stream)
}

/// A catch-up subscription; see [`Store::catch_up`].
pub struct CatchUp<'s> {
    store: &'s Store,
    name: String,
    stream: String,
    filter: Filter,
    /// Where the next read starts: every event before it has been handed out.
    next: Position,
    /// The position of the last durable checkpoint.
    checkpointed: Option<Position>,
    /// The version of the last checkpoint record, if any.
    checkpoint_version: Option<u64>,
}

impl Store {
    /// Opens the catch-up subscription `name`: from its last checkpoint if it has one,
    /// otherwise from `start`.
    ///
    /// **Positions are inclusive**: from [`CatchUpStart::At`]`(p)` the event at `p` is the first
    /// handed out. KurrentDB's subscriptions from a position leave that event out; to resume
    /// after an event you handled, start at its
    /// [`next_position`](crate::RecordedEvent::next_position) (checkpoints record exactly that). [`poll`](CatchUp::poll) hands out the events `filter` passes, in
    /// log order, history first and then live appends, without gaps;
    /// [`checkpoint`](CatchUp::checkpoint) records progress durably.
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    /// use annals::subscriptions::{Filter, CatchUpStart};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// store.append("order-1", ExpectedVersion::Any, [NewEvent::new("Placed", "1")])?;
    ///
    /// let mut sub = store.catch_up("mailer", CatchUpStart::Beginning, Filter::All)?;
    /// assert_eq!(sub.poll(10)?.len(), 1);
    /// sub.checkpoint()?;
    /// store.append("order-2", ExpectedVersion::Any, [NewEvent::new("Placed", "2")])?;
    /// drop(sub);
    ///
    /// // Reopened, it resumes after its checkpoint.
    /// let mut sub = store.catch_up("mailer", CatchUpStart::Beginning, Filter::All)?;
    /// let next = sub.poll(10)?;
    /// assert_eq!(next.len(), 1);
    /// assert_eq!(next[0].stream(), "order-2");
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn catch_up(&self, name: &str, start: CatchUpStart, filter: Filter) -> Result<CatchUp<'_>> {
        let stream = checkpoint_stream(name)?;
        let last = self
            .read_stream(&stream, u64::MAX, Direction::Backwards, 1)?
            .next()
            .transpose()?;
        let checkpoint_version = last.as_ref().map(RecordedEvent::version);
        let checkpointed = last.map(|e| decode_checkpoint(&e)).transpose()?;
        let next = match (checkpointed, start) {
            (Some(p), _) => p,
            (None, CatchUpStart::Beginning) => Position::START,
            (None, CatchUpStart::Now) => self.end_position(),
            (None, CatchUpStart::At(p)) => p,
            (None, CatchUpStart::Time(t)) => self.position_at_time(t)?,
        };
        Ok(CatchUp {
            store: self,
            name: name.to_owned(),
            stream,
            filter,
            next,
            checkpointed,
            checkpoint_version,
        })
    }
}

impl Store {
    /// The position of the first event, in log order, whose timestamp is at or after `time`
    /// (the end of the log if there is none): where a read or a catch-up subscription "from
    /// a point in time" starts. Timestamps are the events' own (`NewEvent::timestamp`, set by
    /// the caller or at creation), so this reads the log from its start, in place (tens of
    /// millions of events a second), and does not assume they increase.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use annals::{ExpectedVersion, NewEvent, Position, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// let noon = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    /// for h in 0..4u64 {
    ///     let e = NewEvent::new("Tick", h.to_string()).with_timestamp(noon + Duration::from_secs(3600 * h));
    ///     store.append("clock", ExpectedVersion::Any, [e])?;
    /// }
    /// let at = store.position_at_time(noon + Duration::from_secs(5000))?;
    /// let first = store.read_all(at, annals::Direction::Forwards, 1)?.next().unwrap()?;
    /// assert_eq!(first.payload(), b"2");
    /// assert_eq!(store.position_at_time(noon + Duration::from_secs(99_999))?, store.end_position());
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn position_at_time(&self, time: std::time::SystemTime) -> Result<Position> {
        let nanos = crate::event::nanos_since_epoch(time);
        let mut events = self.read_all(Position::START, Direction::Forwards, usize::MAX)?;
        while let Some(e) = events.next_ref() {
            let e = e?;
            if e.timestamp_nanos() >= nanos {
                return Ok(e.position());
            }
        }
        Ok(events.end())
    }
}

/// The record of a checkpoint at `position`.
fn checkpoint_event(position: Position) -> NewEvent {
    NewEvent::new(
        records::CHECKPOINT,
        records::encode_position(position.as_u64()).to_vec(),
    )
}

fn decode_checkpoint(e: &RecordedEvent) -> Result<Position> {
    let position = records::decode_position(e.payload()).ok_or_else(|| Error::Decode {
        position: e.position().as_u64(),
        event_type: e.event_type().to_owned(),
        reason: format!("a checkpoint holds {} bytes", records::POSITION_LEN),
    })?;
    Ok(Position::new(position))
}

impl CatchUp<'_> {
    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the next [`poll`](Self::poll) starts: every event before it has been handed out.
    pub fn position(&self) -> Position {
        self.next
    }

    /// Moves the subscription: the next [`poll`](Self::poll) starts at `position` (the
    /// checkpoint does not move until the next [`checkpoint`](Self::checkpoint)).
    pub fn seek(&mut self, position: Position) {
        self.next = position;
    }

    /// The position recorded by the last durable checkpoint, if any.
    pub fn checkpointed(&self) -> Option<Position> {
        self.checkpointed
    }

    /// The next events (at most `max`) that pass the filter, in log order; empty when it has
    /// caught up. Does not wait; see [`wait`](Self::wait).
    pub fn poll(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        // Filtered in place: only the events that pass are copied out.
        let mut events = self
            .store
            .read_log(self.next, Direction::Forwards, max)?
            .matching(self.filter.clone());
        for event in events.by_ref() {
            let event = event?;
            self.next = event.next_position();
            out.push(event);
        }
        if out.len() < max {
            // Scanned to the end the read saw (past any trailing seal, too).
            self.next = self.next.max(events.end());
        }
        Ok(out)
    }

    /// Blocks until events past [`position`](Self::position) are acknowledged, or `timeout`
    /// passes; returns whether there are.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.store.engine.wait_past(self.next.as_u64(), timeout)
    }

    /// Durably records [`position`](Self::position) as this subscription's checkpoint.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.checkpoint_at(self.next)
    }

    /// Durably records `position` as this subscription's checkpoint (where it resumes after a
    /// restart): use it to checkpoint in the middle of a batch.
    pub fn checkpoint_at(&mut self, position: Position) -> Result<()> {
        if self.checkpointed == Some(position) {
            return Ok(());
        }
        let event = checkpoint_event(position);
        let r = self
            .store
            .append_system(&self.stream, ExpectedVersion::Any, vec![event])?;
        self.checkpointed = Some(position);
        self.checkpoint_version = r.version;
        Ok(())
    }

    /// **Exactly-once processing**: commits `tx` (the events this subscription's handler
    /// writes for the events it was handed) and the checkpoint `position` as one atomic
    /// append. After a crash either both are in the log or neither is: the events before
    /// `position` are processed once, never twice, never skipped. Pass
    /// [`position`](Self::position) after handling a whole [`poll`](Self::poll), or an event's
    /// [`next_position`](RecordedEvent::next_position) after handling it alone.
    ///
    /// The checkpoint is written expecting the version of the last checkpoint this handle
    /// saw: if another handle of the same subscription checkpointed meanwhile, nothing is
    /// written and the error is [`Error::WrongExpectedVersion`](crate::Error::WrongExpectedVersion)
    /// (two processors of one subscription would otherwise both process the same events).
    ///
    /// ```
    /// use annals::{ExpectedVersion, NewEvent, Store};
    /// use annals::subscriptions::{CatchUpStart, Filter};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path().join("s"))?;
    /// store.append("order-1", ExpectedVersion::Any, [NewEvent::new("OrderPlaced", "1")])?;
    ///
    /// let mut sub = store.catch_up("invoicer", CatchUpStart::Beginning, Filter::Category("order".into()))?;
    /// let mut tx = store.transaction();
    /// for order in sub.poll(100)? {
    ///     tx = tx.append("invoices", ExpectedVersion::Any, [NewEvent::new("Invoiced", order.id().to_string())]);
    /// }
    /// sub.commit_with(tx, sub.position())?;
    /// drop(sub);
    ///
    /// let mut again = store.catch_up("invoicer", CatchUpStart::Beginning, Filter::Category("order".into()))?;
    /// assert!(again.poll(100)?.is_empty(), "processed once");
    /// assert_eq!(store.stream_version("invoices")?, Some(0));
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn commit_with(
        &mut self,
        tx: super::Transaction<'_>,
        position: Position,
    ) -> Result<Vec<crate::event::AppendResult>> {
        if !std::ptr::eq(tx.store(), self.store) {
            return Err(Error::InvalidArgument(
                "the transaction belongs to another store".into(),
            ));
        }
        let expected = match self.checkpoint_version {
            None => ExpectedVersion::NoStream,
            Some(v) => ExpectedVersion::Exact(v),
        };
        let event = checkpoint_event(position);
        let mut results = tx
            .append_reserved(&self.stream, expected, [event])
            .commit()?;
        let checkpoint = results.pop().expect("the checkpoint's part");
        self.checkpointed = Some(position);
        self.checkpoint_version = checkpoint.version;
        Ok(results)
    }
}

/// How a projection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionOptions {
    /// Checkpoint after this many events (default 1,000).
    pub checkpoint_every: usize,
    /// Checkpoint at least this often while events flow (default 1 s).
    pub checkpoint_interval: Duration,
    /// Events read per poll (default 1,000).
    pub batch: usize,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_secs(1),
            batch: 1_000,
        }
    }
}

struct Progress {
    /// Every event before this has been applied (or did not pass the filter).
    processed: Position,
    failed: Option<String>,
    stopped: bool,
}

pub(super) struct Projection<P> {
    projection: Mutex<P>,
    progress: Mutex<Progress>,
    moved: Condvar,
    stop: std::sync::atomic::AtomicBool,
}

impl<P> Projection<P> {
    /// Every event before `to` is handled.
    pub(super) fn advance(&self, to: Position) {
        self.progress.lock().processed = to;
        self.moved.notify_all();
    }

    /// Whether the handle asked the runner to stop.
    pub(super) fn stopping(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A projection running in the background; see [`Store::run_projection`].
pub struct ProjectionHandle<P> {
    state: Arc<Projection<P>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Store {
    /// Runs `projection` in a background thread on the catch-up subscription `name`: it applies
    /// every event `filter` passes, in log order, history first then live, checkpointing as
    /// `options` say, until stopped. Use [`ProjectionHandle::wait_for`] to read your own writes.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use annals::{ExpectedVersion, NewEvent, Store};
    /// use annals::subscriptions::{Filter, ProjectionOptions, CatchUpStart};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Arc::new(Store::open(dir.path().join("s"))?);
    /// let orders = store.run_projection(
    ///     "order-count",
    ///     CatchUpStart::Beginning,
    ///     Filter::Category("order".into()),
    ///     0u64,
    ///     |count, _event, _store| {
    ///         *count += 1;
    ///         Ok(())
    ///     },
    ///     ProjectionOptions::default(),
    /// )?;
    /// let r = store.append("order-1", ExpectedVersion::Any, [NewEvent::new("Placed", "1")])?;
    /// assert!(orders.wait_for(r.last_position, Duration::from_secs(5))?);
    /// assert_eq!(orders.with(|count| *count), 1);
    /// assert_eq!(orders.stop()?, 1);
    /// # Ok::<(), annals::Error>(())
    /// ```
    pub fn run_projection<P, F>(
        self: &Arc<Self>,
        name: &str,
        start: CatchUpStart,
        filter: Filter,
        state: P,
        apply: F,
        options: ProjectionOptions,
    ) -> Result<ProjectionHandle<P>>
    where
        P: Send + 'static,
        F: FnMut(&mut P, &RecordedEvent, &Store) -> std::result::Result<(), BoxError>
            + Send
            + 'static,
    {
        // The start is resolved once ("now" is now, not when the thread starts).
        let processed = self.catch_up(name, start, filter.clone())?.position();
        let start = CatchUpStart::At(processed);
        self.spawn_runner(
            name,
            "projection",
            state,
            processed,
            move |store, ctx, name| run(store, ctx, name, start, filter, apply, options),
        )
    }

    /// Runs `body` in a thread named for `name` with a fresh [`Projection`] around `state`,
    /// recording how it ended; shared by projections and processors.
    pub(super) fn spawn_runner<P, B>(
        self: &Arc<Self>,
        name: &str,
        kind: &str,
        state: P,
        processed: Position,
        body: B,
    ) -> Result<ProjectionHandle<P>>
    where
        P: Send + 'static,
        B: FnOnce(&Store, &Projection<P>, &str) -> Result<()> + Send + 'static,
    {
        let projection_state = Arc::new(Projection {
            projection: Mutex::new(state),
            progress: Mutex::new(Progress {
                processed,
                failed: None,
                stopped: false,
            }),
            moved: Condvar::new(),
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        let (store, ctx, name) = (self.clone(), projection_state.clone(), name.to_owned());
        let thread = std::thread::Builder::new()
            .name(format!("annals-{kind}-{name}"))
            .spawn(move || {
                let result = body(&store, &ctx, &name);
                let mut progress = ctx.progress.lock();
                progress.stopped = true;
                if let Err(e) = &result {
                    progress.failed = Some(e.to_string());
                }
                ctx.moved.notify_all();
                result
            })?;
        Ok(ProjectionHandle {
            state: projection_state,
            thread: Some(thread),
        })
    }
}

fn run<P, F>(
    store: &Store,
    ctx: &Projection<P>,
    name: &str,
    start: CatchUpStart,
    filter: Filter,
    mut apply: F,
    options: ProjectionOptions,
) -> Result<()>
where
    F: FnMut(&mut P, &RecordedEvent, &Store) -> std::result::Result<(), BoxError>,
{
    let mut sub = store.catch_up(name, start, filter)?;
    let mut since_checkpoint = 0usize;
    let mut last_checkpoint = Instant::now();
    let advance = |to: Position| ctx.advance(to);
    while !ctx.stopping() {
        let batch = sub.poll(options.batch.max(1))?;
        for event in &batch {
            apply(&mut ctx.projection.lock(), event, store).map_err(|e| Error::Projection {
                name: name.to_owned(),
                position: event.position().as_u64(),
                reason: e.to_string(),
            })?;
            since_checkpoint += 1;
            advance(event.next_position());
            if since_checkpoint >= options.checkpoint_every {
                sub.checkpoint_at(event.next_position())?;
                since_checkpoint = 0;
                last_checkpoint = Instant::now();
            }
        }
        // Everything scanned is processed, matching or not.
        advance(sub.position());
        if since_checkpoint > 0 && last_checkpoint.elapsed() >= options.checkpoint_interval {
            sub.checkpoint()?;
            since_checkpoint = 0;
            last_checkpoint = Instant::now();
        }
        if batch.is_empty() {
            sub.wait(Duration::from_millis(50));
        }
    }
    sub.checkpoint()
}

impl<P> ProjectionHandle<P> {
    /// Blocks until every event before `position`, and the one at it, is applied (read your
    /// own writes: pass the `last_position` of an append), or `timeout` passes; returns whether
    /// it was. Fails if the projection stopped on an error.
    pub fn wait_for(&self, position: Position, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut progress = self.state.progress.lock();
        loop {
            if let Some(e) = &progress.failed {
                return Err(Error::Projection {
                    name: String::new(),
                    position: progress.processed.as_u64(),
                    reason: e.clone(),
                });
            }
            if progress.processed > position {
                return Ok(true);
            }
            if progress.stopped
                || self
                    .state
                    .moved
                    .wait_until(&mut progress, deadline)
                    .timed_out()
            {
                return Ok(progress.processed > position);
            }
        }
    }

    /// Every event before this position has been applied.
    pub fn position(&self) -> Position {
        self.state.progress.lock().processed
    }

    /// Runs `f` on the projection's state (the read model).
    pub fn with<R>(&self, f: impl FnOnce(&P) -> R) -> R {
        f(&self.state.projection.lock())
    }

    /// Stops the projection, checkpoints, and returns its state.
    pub fn stop(mut self) -> Result<P> {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Release);
        let thread = self.thread.take().expect("joined once");
        let result = thread
            .join()
            .map_err(|_| Error::InvalidArgument("the projection thread panicked".into()))?;
        result?;
        let projection_state = self.state.clone();
        drop(self);
        match Arc::try_unwrap(projection_state) {
            Ok(projection_state) => Ok(projection_state.projection.into_inner()),
            Err(_) => unreachable!("the thread is joined and the handle dropped"),
        }
    }
}

impl<P> Drop for ProjectionHandle<P> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.state
                .stop
                .store(true, std::sync::atomic::Ordering::Release);
            let _ = thread.join();
        }
    }
}
