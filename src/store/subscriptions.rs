//! Synchronous subscriptions: callbacks that run after an append is durable, before `append`
//! returns, on the appending thread.
//!
//! Order across threads: when the group commit publishes a group, each request that wrote
//! events gets a *ticket* in log order; its thread runs the callbacks for its events only once
//! every lower ticket is done. So callbacks see all events in global log order, whichever thread
//! appended them. An append made from inside a callback gets no ticket (it would wait for the
//! callback that made it): its callbacks run at once, nested.
//!
//! A callback that returns an error or panics does not undo or lose the append, and the other
//! callbacks still run; the append reports [`crate::Error::SubscribersFailed`].

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, RwLock};

use super::Shared;
use crate::index::category_of;
use crate::log::format::Body;
use crate::log::reader::Cursor;
use crate::types::{AppendResult, Position, RecordedEvent};

/// The error a callback, publisher or projection returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which events a subscription receives.
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
}

impl Filter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        if event.stream().starts_with('$') {
            return false;
        }
        match self {
            Filter::All => true,
            Filter::Category(c) => category_of(event.stream()) == c,
            Filter::EventType(t) => event.event_type() == t,
            Filter::EventTypes(ts) => ts.iter().any(|t| t == event.event_type()),
        }
    }
}

/// Identifies a registered subscription (to unsubscribe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

/// A callback that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberFailure {
    /// The subscription's name.
    pub subscription: String,
    /// The event it was handed.
    pub position: Position,
    /// What it returned, or that it panicked and with what.
    pub error: String,
}

pub(crate) type Callback = dyn Fn(&Shared, &RecordedEvent) -> Result<(), BoxError> + Send + Sync;

struct Subscriber {
    id: SubscriptionId,
    name: String,
    filter: Filter,
    callback: Arc<Callback>,
}

thread_local! {
    /// Whether this thread is running callbacks (appends made now are nested).
    static DISPATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is inside a subscription callback.
pub(crate) fn nested() -> bool {
    DISPATCHING.with(Cell::get)
}

/// The registered subscriptions and the dispatch order.
#[derive(Default)]
pub(crate) struct Subscribers {
    list: RwLock<Arc<Vec<Subscriber>>>,
    next_id: AtomicU64,
    /// The next ticket to hand out (by the group-commit leader, in log order).
    next_ticket: AtomicU64,
    /// Tickets below this are done.
    done: Mutex<u64>,
    turn: Condvar,
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

    /// Hands out the next ticket (called by the group-commit leader, in log order).
    pub fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs the callbacks for the events of one commit: with a ticket, after every lower
    /// ticket is done (then marks it done, even if a callback panicked); without, at once.
    pub fn dispatch(
        &self,
        shared: &Shared,
        results: &[AppendResult],
        ticket: Option<u64>,
    ) -> Vec<SubscriberFailure> {
        let _turn = ticket.map(|t| self.wait_turn(t));
        let list = self.list.read().clone();
        if list.is_empty() {
            return Vec::new();
        }
        let mut failures = Vec::new();
        let events = match commit_events(shared, results) {
            Ok(events) => events,
            Err(e) => {
                failures.push(SubscriberFailure {
                    subscription: "(reading the commit back)".into(),
                    position: results
                        .first()
                        .map_or(Position::START, |r| r.first_position),
                    error: e.to_string(),
                });
                return failures;
            }
        };
        let was = DISPATCHING.with(|d| d.replace(true));
        for event in &events {
            for s in list.iter().filter(|s| s.filter.matches(event)) {
                let outcome = catch_unwind(AssertUnwindSafe(|| (s.callback)(shared, event)));
                let error = match outcome {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(panic) => format!("panicked: {}", panic_message(&panic)),
                };
                failures.push(SubscriberFailure {
                    subscription: s.name.clone(),
                    position: event.position(),
                    error,
                });
            }
        }
        DISPATCHING.with(|d| d.set(was));
        failures
    }

    fn wait_turn(&self, ticket: u64) -> TurnGuard<'_> {
        let mut done = self.done.lock();
        while *done != ticket {
            self.turn.wait(&mut done);
        }
        TurnGuard { subscribers: self }
    }
}

/// Marks the current ticket done when dropped (also when a callback panicked).
struct TurnGuard<'a> {
    subscribers: &'a Subscribers,
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        *self.subscribers.done.lock() += 1;
        self.subscribers.turn.notify_all();
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

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The events one commit wrote: its frames are contiguous, from the first part's first event
/// to the last part's last.
fn commit_events(shared: &Shared, results: &[AppendResult]) -> crate::Result<Vec<RecordedEvent>> {
    let (Some(first), Some(last)) = (results.first(), results.last()) else {
        return Ok(Vec::new());
    };
    let limit = shared.index.committed().end;
    let mut cursor = Cursor::default();
    let mut events = Vec::new();
    let mut at = first.first_position.as_u64();
    while at <= last.last_position.as_u64() {
        let (bytes, frame) = shared.reader.read(at, limit, &mut cursor)?;
        let next = match frame.body {
            Body::Seal { next } => next,
            Body::Event => {
                events.push(RecordedEvent::new(bytes.clone(), at).with_prev(frame.link.prev));
                at + bytes.len() as u64
            }
        };
        at = next;
    }
    Ok(events)
}
