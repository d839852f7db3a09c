//! Exactly-once processors: a catch-up subscription whose handler writes events, committed
//! together with the subscription's checkpoint in one atomic append (eventsourcing's
//! "tracking records"). See [`Store::run_processor`] and [`CatchUp::commit_with`].
//!
//! [`CatchUp::commit_with`]: super::catch_up::CatchUp::commit_with

use std::sync::Arc;
use std::time::Duration;

use super::Store;
use super::catch_up::{CatchUpStart, ProjectionHandle, ProjectionOptions};
use super::subscriptions::{BoxError, Filter};
use super::transaction::Transaction;
use crate::error::{Error, Result};
use crate::event::RecordedEvent;

impl Store {
    /// Runs an **exactly-once processor** in a background thread on the catch-up
    /// subscription `name`: for each poll of at most `options.batch` events that `filter`
    /// passes (history first, then live), `handle` adds what it writes for each event to one
    /// transaction, and the transaction is committed with the subscription's checkpoint in
    /// one atomic append ([`CatchUp::commit_with`]). A crash (even `kill -9`, even a power
    /// cut) leaves either an event's effects and the checkpoint past it, or neither: no event
    /// is processed twice, none is skipped.
    ///
    /// An error from `handle`, or a commit that fails (a version conflict in what it
    /// writes), stops the processor before anything of that batch is written; the error is
    /// reported by [`ProjectionHandle::stop`] and [`ProjectionHandle::wait_for`], and a new
    /// run starts again at the first event of that batch. `checkpoint_every` and
    /// `checkpoint_interval` of `options` do not apply: every batch is checkpointed.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use annals::{ExpectedVersion, NewEvent, Store};
    /// use annals::subscriptions::{CatchUpStart, Filter, ProjectionOptions};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Arc::new(Store::open(dir.path().join("s"))?);
    /// let invoicer = store.run_processor(
    ///     "invoicer",
    ///     CatchUpStart::Beginning,
    ///     Filter::Category("order".into()),
    ///     |order, tx| {
    ///         let invoice = NewEvent::new("Invoiced", order.id().to_string());
    ///         Ok(tx.append(&format!("invoice-{}", order.stream()), ExpectedVersion::NoStream, [invoice]))
    ///     },
    ///     ProjectionOptions::default(),
    /// )?;
    /// let r = store.append("order-1", ExpectedVersion::Any, [NewEvent::new("Placed", "1")])?;
    /// assert!(invoicer.wait_for(r.last_position, Duration::from_secs(5))?);
    /// assert_eq!(store.stream_version("invoice-order-1")?, Some(0));
    /// invoicer.stop()?;
    /// # Ok::<(), annals::Error>(())
    /// ```
    ///
    /// [`CatchUp::commit_with`]: crate::subscriptions::CatchUp::commit_with
    pub fn run_processor<F>(
        self: &Arc<Self>,
        name: &str,
        start: CatchUpStart,
        filter: Filter,
        handle: F,
        options: ProjectionOptions,
    ) -> Result<ProjectionHandle<()>>
    where
        F: for<'s> FnMut(
                &RecordedEvent,
                Transaction<'s>,
            ) -> std::result::Result<Transaction<'s>, BoxError>
            + Send
            + 'static,
    {
        // The start is resolved once ("now" is now, not when the thread starts).
        let processed = self.catch_up(name, start, filter.clone())?.position();
        self.spawn_runner(name, "processor", (), processed, move |store, ctx, name| {
            let mut handle = handle;
            let mut sub = store.catch_up(name, CatchUpStart::At(processed), filter)?;
            let mut batch_size = options.batch.max(1);
            while !ctx.stopping() {
                let from = sub.position();
                let batch = sub.poll(batch_size)?;
                if batch.is_empty() {
                    ctx.advance(sub.position());
                    sub.wait(Duration::from_millis(50));
                    continue;
                }
                let mut tx = store.transaction();
                for event in &batch {
                    tx = handle(event, tx).map_err(|e| Error::Projection {
                        name: name.to_owned(),
                        position: event.position().as_u64(),
                        reason: e.to_string(),
                    })?;
                }
                let to = sub.position();
                match sub.commit_with(tx, to) {
                    Ok(_) => ctx.advance(to),
                    // What a whole batch writes may not fit in one commit: fewer events at a
                    // time, down to one, before giving up.
                    Err(Error::TooLarge { .. }) if batch.len() > 1 => {
                        sub.seek(from);
                        batch_size = batch.len() / 2;
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }
}
