//! Synchronous subscriptions within the process: after an append made through a `PgStore`
//! (or a clone of it) commits, each new event its filter matches is handed to every
//! subscription's callback before the append returns, in the global order.
//!
//! Appends of this process that have subscribers to serve commit one at a time (a mutex held
//! around the commit only) and take a ticket in commit order; their callbacks run in ticket
//! order, so callbacks see this process's commits in position order, and a callback may wait
//! for another thread's append to commit (not to return: that append's callbacks come after
//! the current one's). An append made from a callback commits at once; its events are handed
//! out after the current event's, before the outermost append returns (as in the file
//! store). Events appended by other
//! processes are not handed to this process's callbacks: follow the global order with a
//! [`Follower`](crate::backend::Follower) for those.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::backend::SubscriptionCallback;
use crate::error::{Error, Result, SubscriberFailure};
use crate::event::{AppendResult, RecordedEvent};
use crate::store::subscriptions::{FailureHandler, panic_message, report_failures};
use crate::subscriptions::{Filter, SubscriptionId};

struct Subscriber {
    id: SubscriptionId,
    name: String,
    filter: Filter,
    callback: Arc<SubscriptionCallback>,
}

/// Events committed by appends made from a callback this thread is running, waiting for their
/// turn, and the store (its [`Subscribers`]' address) whose callback it is.
type Nested = Option<(usize, VecDeque<RecordedEvent>)>;

thread_local! {
    /// `None` outside callbacks.
    static NESTED: RefCell<Nested> = const { RefCell::new(None) };
}

/// The dispatch order: tickets handed out in commit order, served one at a time.
#[derive(Default)]
struct Order {
    next_ticket: u64,
    serving: u64,
}

/// The registered subscriptions of one store (shared by its clones).
#[derive(Default)]
pub(super) struct Subscribers {
    list: RwLock<Arc<Vec<Arc<Subscriber>>>>,
    next_id: AtomicU64,
    /// Held around the commit (and the ticket) of an append with callbacks to run.
    commit: Mutex<()>,
    order: Mutex<Order>,
    turn: Condvar,
    on_failure: RwLock<Option<Arc<FailureHandler>>>,
}

impl Subscribers {
    pub fn add(
        &self,
        name: &str,
        filter: Filter,
        callback: Arc<SubscriptionCallback>,
    ) -> SubscriptionId {
        let id = SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut list = self.list.write();
        let mut next = (**list).clone();
        next.push(Arc::new(Subscriber {
            id,
            name: name.to_owned(),
            filter,
            callback,
        }));
        *list = Arc::new(next);
        id
    }

    pub fn remove(&self, id: SubscriptionId) -> bool {
        let mut list = self.list.write();
        let before = list.len();
        let next: Vec<_> = list.iter().filter(|s| s.id != id).cloned().collect();
        let removed = next.len() != before;
        *list = Arc::new(next);
        removed
    }

    pub fn any(&self) -> bool {
        !self.list.read().is_empty()
    }

    pub fn set_failure_handler(&self, handler: Arc<FailureHandler>) {
        *self.on_failure.write() = Some(handler);
    }

    /// This store's key in [`NESTED`].
    fn key(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Whether this thread is running a callback of this store (an append made now is
    /// nested).
    pub fn nested(&self) -> bool {
        NESTED.with(|n| n.borrow().as_ref().is_some_and(|(k, _)| *k == self.key()))
    }

    /// Queues a nested append's events behind the current one's.
    pub fn queue_nested(&self, events: Vec<RecordedEvent>) {
        NESTED.with(|n| {
            if let Some((k, q)) = n.borrow_mut().as_mut()
                && *k == self.key()
            {
                q.extend(events);
            }
        });
    }

    /// Commits with `commit` (one at a time) and hands the new events to every matching
    /// subscription in commit order: see the [module](self).
    pub fn commit_and_dispatch(
        &self,
        commit: impl FnOnce() -> Result<(Vec<AppendResult>, Vec<RecordedEvent>)>,
    ) -> Result<Vec<AppendResult>> {
        let (mut results, events, ticket) = {
            let _one_at_a_time = self.commit.lock();
            let (results, events) = commit()?;
            let mut order = self.order.lock();
            let ticket = order.next_ticket;
            order.next_ticket += 1;
            (results, events, ticket)
        };
        let mut order = self.order.lock();
        while order.serving != ticket {
            self.turn.wait(&mut order);
        }
        drop(order);
        // Served even if something below unwinds: later tickets must not wait forever.
        struct Served<'a>(&'a Subscribers);
        impl Drop for Served<'_> {
            fn drop(&mut self) {
                self.0.order.lock().serving += 1;
                self.0.turn.notify_all();
            }
        }
        let _served = Served(self);
        self.dispatch(events, &mut results);
        Ok(results)
    }

    /// Hands `events` (and those of appends the callbacks make) to every matching
    /// subscription, in order; the failures go into the results of the parts that wrote the
    /// events, and to the failure handler.
    fn dispatch(&self, events: Vec<RecordedEvent>, results: &mut [AppendResult]) {
        let list = self.list.read().clone();
        let mut queue: VecDeque<RecordedEvent> = events.into();
        let was = NESTED.with(|n| n.borrow_mut().replace((self.key(), VecDeque::new())));
        let mut failures = Vec::new();
        while let Some(event) = queue.pop_front() {
            for s in list.iter().filter(|s| s.filter.matches(&event)) {
                if let Err(error) = run(s, &event) {
                    failures.push(SubscriberFailure {
                        subscription: s.name.clone(),
                        subscription_id: s.id,
                        position: event.position(),
                        error,
                    });
                }
            }
            let nested: Vec<_> = NESTED.with(|n| {
                n.borrow_mut()
                    .as_mut()
                    .map(|(_, q)| q.drain(..).collect())
                    .unwrap_or_default()
            });
            // Events of appends made from this event's callbacks come next.
            for e in nested.into_iter().rev() {
                queue.push_front(e);
            }
        }
        NESTED.with(|n| *n.borrow_mut() = was);
        self.report(&failures);
        for failure in failures {
            let at = results
                .iter()
                .position(|r| (r.first_position..=r.last_position).contains(&failure.position))
                .unwrap_or(results.len().saturating_sub(1));
            if let Some(r) = results.get_mut(at) {
                r.subscriber_failures.push(failure);
            }
        }
    }

    /// Runs subscription `id`'s callback on `event` again.
    pub fn redeliver(&self, failure: &SubscriberFailure, event: &RecordedEvent) -> Result<()> {
        let list = self.list.read().clone();
        let Some(s) = list.iter().find(|s| s.id == failure.subscription_id) else {
            return Err(Error::InvalidArgument(format!(
                "subscription `{}` is no longer registered",
                failure.subscription
            )));
        };
        run(s, event).map_err(|error| {
            Error::SubscriberFailed(SubscriberFailure {
                error,
                ..failure.clone()
            })
        })
    }

    fn report(&self, failures: &[SubscriberFailure]) {
        report_failures(self.on_failure.read().clone(), failures);
    }
}

/// Runs one callback on one event, catching a panic.
fn run(s: &Subscriber, event: &RecordedEvent) -> std::result::Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| (s.callback)(event))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!("panicked: {}", panic_message(&panic))),
    }
}
