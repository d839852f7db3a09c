//! [`PublishingStore`]: an annals store whose outbox publishes after every commit.

use std::sync::Arc;

use parking_lot::Mutex;

use super::AnnalsBacked;
use crate::domain::transport::{EventstreamPublisher, Transport};
use crate::outbox::{Outbox, OutboxOptions};
use crate::{Result, Store};

/// An annals store whose published events go, after every committed unit of work, through its
/// outbox to a [`Transport`]: at least once, in order, even across crashes (what a crash
/// interrupts is delivered by the next commit, or by [`PublishingStore::publish`]).
pub struct PublishingStore<T: Transport + 'static> {
    store: Arc<Store>,
    outbox: Mutex<Outbox<Arc<Store>, EventstreamPublisher<T>>>,
}

impl<T: Transport + 'static> PublishingStore<T> {
    /// Wraps `store`; its outbox `name` publishes through `transport`.
    pub fn new(store: Arc<Store>, name: &str, transport: T) -> Result<Self> {
        let outbox = Outbox::new(
            store.clone(),
            name,
            EventstreamPublisher::new(transport),
            OutboxOptions::default(),
        )?;
        Ok(PublishingStore {
            store,
            outbox: Mutex::new(outbox),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs the outbox until it has caught up (or the transport fails: the outbox retries with
    /// backoff on later runs, and parks what keeps failing); returns how many events it
    /// delivered.
    pub fn publish(&self) -> Result<usize> {
        let mut outbox = self.outbox.lock();
        let mut delivered = 0;
        loop {
            let report = outbox.run_once()?;
            delivered += report.delivered;
            if report.caught_up
                || report.last_error.is_some()
                || report.delivered + report.parked == 0
            {
                return Ok(delivered);
            }
        }
    }

    /// Runs `f` on the transport.
    pub fn with_transport<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(self.outbox.lock().publisher().transport())
    }
}

impl<T: Transport + 'static> AnnalsBacked for PublishingStore<T> {
    fn store(&self) -> &Store {
        &self.store
    }

    fn after_commit(&self) -> Result<()> {
        // The events are durable: what this run cannot deliver, a later one will.
        if let Err(e) = self.publish() {
            tracing::warn!(error = %e, "annals: publishing after a commit failed; the outbox will retry");
        }
        Ok(())
    }
}
