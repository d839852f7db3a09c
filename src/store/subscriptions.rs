//! Synchronous subscriptions: callbacks that run after an append is durable and before
//! `append` returns.
//!
//! **Order.** When the group commit publishes a group, each request that wrote events gets a
//! *ticket* in log order, and its commit joins a queue in that order. One thread at a time (an
//! appending thread waiting for its own ticket) takes the *dispatcher's turn* and runs the
//! callbacks for queued commits, strictly in ticket order; so every subscriber sees every
//! event in global log order, whichever thread appended it, and callbacks may run on another
//! appending thread than the one whose append wrote the event.
//!
//! **Nesting.** An append made from inside a callback is committed at once and returns at once,
//! *before* its own events' callbacks run: its commit joins the queue behind everything before
//! it in the log, and is dispatched after the current event has been handed to every
//! subscriber. The outermost append returns only once the commits its callbacks made (and
//! theirs, transitively) have been dispatched too.
//!
//! **Failures.** A callback that returns an error or panics does not undo or lose the append,
//! and the other callbacks still run. Its failure is reported in the
//! [`AppendResult::subscriber_failures`](crate::event::AppendResult::subscriber_failures) of the
//! outermost append, and to the store's failure handler
//! ([`Store::on_subscriber_failure`](crate::store::Store::on_subscriber_failure); by default a
//! `tracing` warning); [`Store::redeliver`](crate::store::Store::redeliver) runs the callback on the
//! event again.

use crate::error::{Error, Result};
use crate::values::Direction;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, RwLock};

use super::Engine;
use crate::error::SubscriberFailure;
use crate::event::{AppendResult, RecordedEvent};
use crate::log::format::Body;
use crate::log::reader::Cursor;
use crate::names::category_of;
use crate::values::{Position, SubscriptionId};

/// The error a callback, publisher or projection returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which events a subscription, a catch-up subscription or a filtered read receives.
///
/// The engine's own `$` streams never pass. Filters combine: [`AnyOf`](Filter::AnyOf) passes an
/// event that any of its filters passes (once, however many pass it),
/// [`AllOf`](Filter::AllOf) one that all pass, [`Except`](Filter::Except) one that the first
/// passes and the second does not.
///
/// ```
/// use annals::subscriptions::Filter;
///
/// let orders_not_drafts = Filter::StreamPrefix("order-".into())
///     .except(Filter::EventTypePrefix("Draft".into()));
/// assert!(orders_not_drafts.passes("order-7", "OrderPlaced"));
/// assert!(!orders_not_drafts.passes("order-7", "DraftSaved"));
/// assert!(!orders_not_drafts.passes("cart-7", "OrderPlaced"));
/// assert!(!Filter::All.passes("$checkpoint-x", "Checkpoint"));
///
/// let either = Filter::Stream("cart-1".into()).or(Filter::EventTypes(vec!["Paid".into()]));
/// assert!(either.passes("cart-1", "ItemAdded") && either.passes("order-2", "Paid"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every event (except the engine's own `$` streams).
    All,
    /// Events of streams in this category (the stream-name prefix before the first `-`).
    Category(String),
    /// Events of this type.
    EventType(String),
    /// Events of any of these types.
    EventTypes(Vec<String>),
    /// Events of this one stream.
    Stream(String),
    /// Events of any of these streams.
    Streams(Vec<String>),
    /// Events of streams whose name starts with this prefix.
    StreamPrefix(String),
    /// Events whose type starts with this prefix.
    EventTypePrefix(String),
    /// Events any of these filters passes (each once).
    AnyOf(Vec<Filter>),
    /// Events every one of these filters passes.
    AllOf(Vec<Filter>),
    /// Events the first filter passes and the second does not.
    Except(Box<Filter>, Box<Filter>),
}

impl Filter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.passes(event.stream(), event.event_type())
    }

    /// Whether an event of `stream` with type `event_type` passes.
    pub fn passes(&self, stream: &str, event_type: &str) -> bool {
        !stream.starts_with('$') && self.admits(stream, event_type)
    }

    fn admits(&self, stream: &str, event_type: &str) -> bool {
        match self {
            Filter::All => true,
            Filter::Category(c) => category_of(stream) == c,
            Filter::EventType(t) => event_type == t,
            Filter::EventTypes(ts) => ts.iter().any(|t| t == event_type),
            Filter::Stream(s) => stream == s,
            Filter::Streams(ss) => ss.iter().any(|s| s == stream),
            Filter::StreamPrefix(p) => stream.starts_with(p.as_str()),
            Filter::EventTypePrefix(p) => event_type.starts_with(p.as_str()),
            Filter::AnyOf(fs) => fs.iter().any(|f| f.admits(stream, event_type)),
            Filter::AllOf(fs) => fs.iter().all(|f| f.admits(stream, event_type)),
            Filter::Except(keep, drop) => {
                keep.admits(stream, event_type) && !drop.admits(stream, event_type)
            }
        }
    }

    /// This filter or `other`.
    pub fn or(self, other: Filter) -> Filter {
        match self {
            Filter::AnyOf(mut fs) => {
                fs.push(other);
                Filter::AnyOf(fs)
            }
            f => Filter::AnyOf(vec![f, other]),
        }
    }

    /// This filter and `other`.
    pub fn and(self, other: Filter) -> Filter {
        match self {
            Filter::AllOf(mut fs) => {
                fs.push(other);
                Filter::AllOf(fs)
            }
            f => Filter::AllOf(vec![f, other]),
        }
    }

    /// This filter, except what `other` passes.
    pub fn except(self, other: Filter) -> Filter {
        Filter::Except(Box::new(self), Box::new(other))
    }
}

pub(crate) type Callback = dyn Fn(&Engine, &RecordedEvent) -> Result<(), BoxError> + Send + Sync;

/// What is told of every failure (besides the append's result).
pub(crate) type FailureHandler = dyn Fn(&SubscriberFailure) + Send + Sync;

struct Subscriber {
    id: SubscriptionId,
    name: String,
    filter: Filter,
    callback: Arc<Callback>,
}

thread_local! {
    /// The ticket of the outermost append whose callbacks this thread is running (appends made
    /// now are nested under it).
    static DISPATCHING: Cell<Option<u64>> = const { Cell::new(None) };
}

/// If the current thread is inside a subscription callback, the ticket of the outermost append
/// it serves.
pub(crate) fn nested_root() -> Option<u64> {
    DISPATCHING.with(Cell::get)
}

/// A commit waiting for its callbacks.
struct Entry {
    /// The outermost append it belongs to (itself, unless made from a callback).
    root: u64,
    first: Position,
    last: Position,
}

#[derive(Default)]
struct Order {
    /// The next ticket to hand out (by the group-commit leader, in log order).
    next_ticket: u64,
    /// Commits whose callbacks have not run yet, in ticket order.
    queue: VecDeque<Entry>,
    /// Whether a thread has the dispatcher's turn.
    dispatching: bool,
    /// Per outermost append: commits not dispatched yet, and the failures so far.
    roots: HashMap<u64, Root>,
}

#[derive(Default)]
struct Root {
    pending: usize,
    failures: Vec<SubscriberFailure>,
}

/// The registered subscriptions and the dispatch order.
#[derive(Default)]
pub(crate) struct Subscribers {
    list: RwLock<Arc<Vec<Subscriber>>>,
    next_id: AtomicU64,
    order: Mutex<Order>,
    turn: Condvar,
    on_failure: RwLock<Option<Arc<FailureHandler>>>,
}

impl Subscribers {
    pub fn add(&self, name: String, filter: Filter, callback: Arc<Callback>) -> SubscriptionId {
        let id = SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut list = self.list.write();
        let mut next: Vec<Subscriber> = list.iter().map(Subscriber::clone_ref).collect();
        next.push(Subscriber {
            id,
            name,
            filter,
            callback,
        });
        *list = Arc::new(next);
        id
    }

    pub fn remove(&self, id: SubscriptionId) -> bool {
        let mut list = self.list.write();
        let before = list.len();
        let next: Vec<Subscriber> = list
            .iter()
            .filter(|s| s.id != id)
            .map(Subscriber::clone_ref)
            .collect();
        let removed = next.len() != before;
        *list = Arc::new(next);
        removed
    }

    /// Whether any subscription is registered.
    pub fn any(&self) -> bool {
        !self.list.read().is_empty()
    }

    /// Sets what is told of every failure.
    pub fn set_failure_handler(&self, handler: Arc<FailureHandler>) {
        *self.on_failure.write() = Some(handler);
    }

    /// Queues a commit for its callbacks and hands out its ticket (called by the group-commit
    /// leader, in log order). `root` is the outermost append's ticket for an append made from
    /// a callback.
    pub fn ticket(&self, results: &[AppendResult], root: Option<u64>) -> u64 {
        let mut order = self.order.lock();
        let ticket = order.next_ticket;
        order.next_ticket += 1;
        let root = root.unwrap_or(ticket);
        order.roots.entry(root).or_default().pending += 1;
        order.queue.push_back(Entry {
            root,
            first: results
                .first()
                .map_or(Position::START, |r| r.first_position),
            last: results.last().map_or(Position::START, |r| r.last_position),
        });
        ticket
    }

    /// Waits until the callbacks of the outermost append `ticket` (and of every append its
    /// callbacks made) have run, taking the dispatcher's turn when nobody has it; returns the
    /// failures.
    pub fn wait_dispatched(&self, engine: &Engine, ticket: u64) -> Vec<SubscriberFailure> {
        let mut order = self.order.lock();
        loop {
            if order.roots.get(&ticket).is_none_or(|r| r.pending == 0) {
                return order
                    .roots
                    .remove(&ticket)
                    .map(|r| r.failures)
                    .unwrap_or_default();
            }
            if order.dispatching {
                self.turn.wait(&mut order);
                continue;
            }
            order.dispatching = true;
            // Dispatch in ticket order until this append is done (others take over the rest).
            while order.roots.get(&ticket).is_some_and(|r| r.pending > 0) {
                let Some(entry) = order.queue.pop_front() else {
                    break;
                };
                drop(order);
                let failures = self.dispatch(engine, &entry);
                order = self.order.lock();
                let root = order.roots.entry(entry.root).or_default();
                root.pending -= 1;
                root.failures.extend(failures);
                self.turn.notify_all();
            }
            order.dispatching = false;
            self.turn.notify_all();
            if order.queue.is_empty() && order.roots.get(&ticket).is_some_and(|r| r.pending > 0) {
                // Cannot happen (a pending commit is queued or being dispatched); never spin.
                debug_assert!(false, "a pending commit is missing from the dispatch queue");
                self.turn
                    .wait_for(&mut order, std::time::Duration::from_millis(10));
            }
        }
    }

    /// Runs the callbacks for one queued commit (never panics).
    fn dispatch(&self, engine: &Engine, entry: &Entry) -> Vec<SubscriberFailure> {
        let list = self.list.read().clone();
        if list.is_empty() {
            return Vec::new();
        }
        let mut failures = Vec::new();
        let events = match commit_events(engine, entry.first, entry.last) {
            Ok(events) => events,
            Err(e) => {
                // Nothing to hand a callback: the commit could not be read back.
                failures.extend(list.iter().map(|s| SubscriberFailure {
                    subscription: s.name.clone(),
                    subscription_id: s.id,
                    position: entry.first,
                    error: format!("the commit could not be read back: {e}"),
                }));
                self.report(&failures);
                return failures;
            }
        };
        let was = DISPATCHING.with(|d| d.replace(Some(entry.root)));
        for event in &events {
            for s in list.iter().filter(|s| s.filter.matches(event)) {
                if let Err(error) = run(s, engine, event) {
                    failures.push(SubscriberFailure {
                        subscription: s.name.clone(),
                        subscription_id: s.id,
                        position: event.position(),
                        error,
                    });
                }
            }
        }
        DISPATCHING.with(|d| d.set(was));
        self.report(&failures);
        failures
    }

    /// Tells the failure handler (or the log) of each failure.
    fn report(&self, failures: &[SubscriberFailure]) {
        report_failures(self.on_failure.read().clone(), failures);
    }

    /// Runs subscription `id`'s callback on `event` again; the error if it fails again.
    pub fn redeliver(
        &self,
        engine: &Engine,
        id: SubscriptionId,
        event: &RecordedEvent,
    ) -> Option<Result<(), String>> {
        let list = self.list.read().clone();
        let s = list.iter().find(|s| s.id == id)?;
        let was = DISPATCHING.with(|d| d.replace(None));
        let outcome = run(s, engine, event);
        DISPATCHING.with(|d| d.set(was));
        Some(outcome)
    }
}

/// Tells `handler` (or, without one, the log) of each failure; a panicking handler is logged.
pub(crate) fn report_failures(
    handler: Option<Arc<FailureHandler>>,
    failures: &[SubscriberFailure],
) {
    for f in failures {
        match &handler {
            Some(h) => {
                if catch_unwind(AssertUnwindSafe(|| h(f))).is_err() {
                    tracing::error!(failure = %f, "annals: the subscriber failure handler panicked");
                }
            }
            None => tracing::warn!(
                subscription = %f.subscription,
                position = f.position.as_u64(),
                error = %f.error,
                "annals: a subscription callback failed; the event is durable (redeliver runs it again)"
            ),
        }
    }
}

/// Runs one callback on one event, catching a panic.
fn run(s: &Subscriber, engine: &Engine, event: &RecordedEvent) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| (s.callback)(engine, event))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!("panicked: {}", panic_message(&panic))),
    }
}

impl Subscriber {
    fn clone_ref(&self) -> Subscriber {
        Subscriber {
            id: self.id,
            name: self.name.clone(),
            filter: self.filter.clone(),
            callback: self.callback.clone(),
        }
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The events one commit wrote: its frames are contiguous, from `first` to `last`.
fn commit_events(
    engine: &Engine,
    first: Position,
    last: Position,
) -> crate::error::Result<Vec<RecordedEvent>> {
    let limit = engine.index.committed().end;
    let mut cursor = Cursor::default();
    let mut events = Vec::new();
    let mut at = first.as_u64();
    while at <= last.as_u64() {
        let (bytes, frame) = engine.reader.read(at, limit, &mut cursor)?;
        let next = match frame.body {
            Body::Seal { .. } | Body::Gap { .. } => frame.next(),
            Body::Event => {
                events.push(RecordedEvent::new(bytes.clone(), at).with_prev(frame.link.prev));
                at + bytes.len() as u64
            }
        };
        at = next;
    }
    Ok(events)
}

impl super::Store {
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
    /// use annals::{ExpectedVersion, NewEvent, Store};
    /// use annals::subscriptions::Filter;
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
        filter: Filter,
        callback: impl Fn(&RecordedEvent) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    ) -> crate::values::SubscriptionId {
        let callback: Arc<Callback> = Arc::new(move |_: &Engine, e: &RecordedEvent| callback(e));
        self.engine
            .subscribers
            .add(name.to_owned(), filter, callback)
    }

    /// Removes a synchronous subscription; false if it was not registered.
    pub fn unsubscribe(&self, id: crate::values::SubscriptionId) -> bool {
        self.engine.subscribers.remove(id)
    }

    /// Sets what is told of every failed subscription callback (besides the append's
    /// [`subscriber_failures`](AppendResult::subscriber_failures)), for failures of appends made
    /// from callbacks too. By default each failure is logged as a `tracing` warning.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use annals::{ExpectedVersion, NewEvent, Store};
    /// use annals::subscriptions::Filter;
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
        handler: impl Fn(&crate::error::SubscriberFailure) + Send + Sync + 'static,
    ) {
        self.engine
            .subscribers
            .set_failure_handler(Arc::new(handler));
    }

    /// Runs a failed subscription callback again on the event it failed on (read back from
    /// the log), on this thread. `Ok` once it succeeds; [`Error::SubscriberFailed`](crate::error::Error::SubscriberFailed) if it fails
    /// again; [`Error::InvalidArgument`](crate::error::Error::InvalidArgument) if the subscription was removed.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use annals::{ExpectedVersion, NewEvent, Store};
    /// use annals::subscriptions::Filter;
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
    pub fn redeliver(&self, failure: &crate::error::SubscriberFailure) -> Result<()> {
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
            Some(Err(error)) => Err(Error::SubscriberFailed(crate::error::SubscriberFailure {
                error,
                ..failure.clone()
            })),
        }
    }
}
