//! The store's background threads: the index flusher (writes frozen memtables to the sidecar)
//! and, with [`Durability::Periodic`](crate::store::options::Durability::Periodic), the syncer. They hold only what they need, never the
//! store itself, so they cannot keep it open.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::Engine;
use super::commit::Poison;
use crate::error::Result;
use crate::index::{Frozen, Index};
use crate::log::sync::LogSync;
use crate::store::options::Durability;

/// The running background threads (the flusher is started by the first flush job: a store
/// opened only to read starts no thread).
#[derive(Default)]
pub(super) struct Background {
    syncer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    pub closed: bool,
}

/// The index flusher thread, once started.
#[derive(Default)]
pub(crate) enum Flusher {
    /// Not started yet.
    #[default]
    Idle,
    /// Running: jobs go through the channel.
    Running(mpsc::Sender<Arc<Frozen>>, JoinHandle<()>),
    /// The store is closing: jobs are written by the caller.
    Closed,
}

impl Flusher {
    /// Hands `job` to the flusher thread, starting it if needed; gives it back if there is no
    /// thread to take it (the store is closing, or no thread could be started).
    pub fn send(&mut self, engine: &Engine, job: Arc<Frozen>) -> Option<Arc<Frozen>> {
        if let Flusher::Idle = self {
            let (tx, rx) = mpsc::channel::<Arc<Frozen>>();
            let ctx = FlushContext::new(engine);
            match spawn("annals-index-flush", move || {
                for job in rx {
                    ctx.flush(job);
                }
            }) {
                Ok(handle) => *self = Flusher::Running(tx, handle),
                Err(_) => return Some(job),
            }
        }
        match self {
            Flusher::Running(tx, _) => tx.send(job).err().map(|e| e.0),
            _ => Some(job),
        }
    }
}

impl Background {
    /// Starts the syncer, for periodic durability.
    pub fn start(engine: &Arc<Engine>) -> Result<Background> {
        let mut background = Background::default();
        if let Durability::Periodic(interval) = engine.durability {
            let (stop, stopped) = mpsc::channel::<()>();
            let ctx = FlushContext::new(engine);
            let handle = spawn("annals-sync", move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    if !ctx.sync_log() {
                        break;
                    }
                }
            })?;
            background.syncer = Some((stop, handle));
        }
        Ok(background)
    }

    /// Stops the threads and waits for them (the flusher finishes its queued jobs first).
    pub fn stop(&mut self, engine: &Engine) {
        if let Some((stop, handle)) = self.syncer.take() {
            let _ = stop.send(());
            let _ = handle.join();
        }
        let flusher = std::mem::replace(&mut *engine.flusher.lock(), Flusher::Closed);
        if let Flusher::Running(tx, handle) = flusher {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// What the background threads need (never the whole store, so they cannot keep it open).
struct FlushContext {
    index: Arc<Index>,
    sync: Arc<LogSync>,
    poison: Arc<Poison>,
    sync_first: bool,
}

impl FlushContext {
    fn new(engine: &Engine) -> FlushContext {
        FlushContext {
            index: engine.index.clone(),
            sync: engine.sync.clone(),
            poison: engine.poison.clone(),
            sync_first: engine.durability != Durability::Immediate,
        }
    }

    /// Syncs the log; false if that fails or the store is poisoned (the syncer poisons it).
    fn sync_log(&self) -> bool {
        self.sync.sync(self.index.committed().end, false).is_ok()
    }

    fn flush(&self, job: Arc<Frozen>) {
        // The sidecar must never cover log bytes that are not durable: with appends that are
        // not synced as they are made, sync first. The sync refuses once the store is poisoned
        // (by a failure anywhere: a later sync would "succeed" without writing what failed).
        if (self.sync_first && !self.sync_log()) || self.poison.is_set() {
            self.index.release_frozen();
            return;
        }
        if let Err(e) = self.index.write_frozen(job) {
            self.poison
                .set(format!("writing the index sidecar failed: {e}"));
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    Ok(std::thread::Builder::new().name(name.into()).spawn(f)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NewEvent;
    use crate::storage::{FaultFs, FaultMode};
    use crate::store::Store;
    use crate::values::ExpectedVersion;

    #[test]
    fn the_background_flusher_never_writes_after_a_failed_sync() {
        let fs = FaultFs::new();
        let store = Store::builder()
            .file_system(fs.clone())
            .segment_size(64 * 1024)
            .durability(Durability::Periodic(std::time::Duration::from_secs(3600)))
            .index_flush_events(1_000_000)
            .open("/b/s")
            .unwrap();
        for i in 0..5u8 {
            store
                .append("s", ExpectedVersion::Any, [NewEvent::new("E", vec![i])])
                .unwrap();
        }
        // Another thread's sync failed (on Linux its pages are now clean and lost) ...
        fs.fail_at(fs.op_count(), FaultMode::Once, std::io::ErrorKind::Other);
        assert!(store.engine.sync.sync(0, false).is_err());
        // ... so a flush job must not sync again (it would "succeed") and cover the lost bytes.
        let job = store.engine.index.freeze(true, false).expect("a job");
        let ops = fs.op_count();
        FlushContext::new(&store.engine).flush(job);
        assert_eq!(
            fs.op_count(),
            ops,
            "the flusher wrote or synced after the failure"
        );
        // Nothing waits for that job any more.
        store.engine.index.wait_if_over(0);
    }
}
