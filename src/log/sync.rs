//! Making the log durable, and never again after a failure.
//!
//! Every sync of the log file goes through one [`LogSync`]: syncs run one at a time, and each
//! checks the store's [`Poison`] first. On Linux a failed `fdatasync` is reported once: the
//! failed pages are marked clean and the *next* sync succeeds without writing them. So the
//! first failure poisons the store under the same lock, and no later sync, from any thread, can
//! report success for bytes that may never reach the disk (the background index flusher
//! included: it syncs the log before the sidecar may cover it, and must not write the sidecar
//! after a failure it did not see itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::storage::StorageFile;

/// The first write or sync failure; once set, the store refuses appends (and every further
/// write or sync) until reopened.
#[derive(Debug, Default)]
pub(crate) struct Poison {
    poisoned: AtomicBool,
    cause: Mutex<Option<String>>,
}

impl Poison {
    /// Records the first failure (later ones are ignored: the first is the cause).
    pub fn set(&self, cause: impl std::fmt::Display) {
        let mut c = self.cause.lock();
        if c.is_none() {
            tracing::error!(%cause, "annals: store poisoned; reopen it");
            *c = Some(cause.to_string());
        }
        self.poisoned.store(true, Ordering::Release);
    }

    /// `Err(Error::Poisoned)` once a failure was recorded.
    pub fn check(&self) -> Result<()> {
        if !self.is_set() {
            return Ok(());
        }
        Err(Error::Poisoned {
            cause: self.cause.lock().clone().unwrap_or_default(),
        })
    }

    /// Whether a failure was recorded.
    pub fn is_set(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Sets the poison from `cause` and returns the error every later request gets.
    pub fn fail(&self, cause: impl std::fmt::Display) -> Error {
        self.set(cause);
        self.check().expect_err("just poisoned")
    }
}

/// The one way to make log bytes durable; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct LogSync {
    file: Arc<dyn StorageFile>,
    lock: Mutex<()>,
    /// End of the log known durable (every byte before it was synced, by a sync that
    /// succeeded before any failure).
    durable: AtomicU64,
    poison: Arc<Poison>,
    /// Where the durable end is published for read-only opens (see [`super::live`]).
    live: std::sync::OnceLock<super::live::Publisher>,
}

impl LogSync {
    /// `durable` is where the log is known durable now (recovery made it so).
    pub fn new(file: Arc<dyn StorageFile>, durable: u64, poison: Arc<Poison>) -> LogSync {
        LogSync {
            file,
            lock: Mutex::new(()),
            durable: AtomicU64::new(durable),
            poison,
            live: std::sync::OnceLock::new(),
        }
    }

    /// End of the log known durable.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Publishes every new durable end through `live` from now on.
    pub fn set_live(&self, live: super::live::Publisher) {
        let _one_at_a_time = self.lock.lock();
        live.publish(self.durable());
        let _ = self.live.set(live);
    }

    /// Moves the durable end (under the lock) and publishes it.
    fn advance(&self, end: u64) {
        let durable = self.durable.fetch_max(end, Ordering::AcqRel).max(end);
        if let Some(live) = self.live.get() {
            live.publish(durable);
        }
    }

    pub fn poison(&self) -> &Arc<Poison> {
        &self.poison
    }

    /// Syncs the file (`all`: metadata too, for a changed length); on success everything
    /// written before `end` is durable. Fails without syncing once the store is poisoned; a
    /// failure poisons it.
    pub fn sync(&self, end: u64, all: bool) -> Result<()> {
        let _one_at_a_time = self.lock.lock();
        self.poison.check()?;
        let synced = if all {
            self.file.sync_all()
        } else {
            self.file.sync_data()
        };
        match synced {
            Ok(()) => {
                self.advance(end);
                Ok(())
            }
            Err(e) => Err(self.poison.fail(format!(
                "syncing the log failed: {e}; the bytes it held may never reach the disk"
            ))),
        }
    }

    /// Writes `bytes` at `offset` and makes them durable in one call; on success the log is
    /// durable up to `end` (at least `offset + bytes.len()`: more when the rest up to `end` is
    /// space the log skips, as after a seal).
    pub fn write_durable(&self, bytes: &[u8], offset: u64, end: u64) -> Result<()> {
        assert!(end >= offset + bytes.len() as u64);
        let _one_at_a_time = self.lock.lock();
        self.poison.check()?;
        // A write-and-sync of one range (`RWF_DSYNC`) makes only that range durable: when
        // bytes before it were written without a sync (`Durability::Periodic`, `NoSync`), the
        // whole file is synced instead, or `end` would be claimed durable over them.
        let written = if self.durable() < offset {
            self.file
                .write_all_at(bytes, offset)
                .and_then(|()| self.file.sync_data())
        } else {
            self.file.write_all_at_durable(bytes, offset)
        };
        match written {
            Ok(()) => {
                self.advance(end);
                Ok(())
            }
            Err(e) => Err(self
                .poison
                .fail(format!("durable write at {offset} failed: {e}"))),
        }
    }

    /// Writes `bytes` at `offset` without syncing; a failure poisons the store.
    pub fn write(&self, bytes: &[u8], offset: u64) -> Result<()> {
        self.poison.check()?;
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| self.poison.fail(format!("write at {offset} failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{CrashPolicy, FaultFs, FaultMode, FileSystem, OpenMode};
    use std::path::Path;

    fn file(fs: &FaultFs) -> Arc<dyn StorageFile> {
        let f = fs.open(Path::new("/d/log"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f
    }

    #[test]
    fn a_failed_sync_poisons_and_no_later_sync_succeeds() {
        let fs = FaultFs::new();
        let f = file(&fs);
        let sync = LogSync::new(f.clone(), 0, Arc::new(Poison::default()));
        sync.write(b"first", 0).unwrap();
        sync.sync(5, false).unwrap();
        assert_eq!(sync.durable(), 5);
        sync.write(b"second", 5).unwrap();
        fs.fail_at(fs.op_count(), FaultMode::Once, std::io::ErrorKind::Other);
        assert!(matches!(sync.sync(11, false), Err(Error::Poisoned { .. })));
        // The file system would let the next sync "succeed" (Linux reports a failure once) ...
        assert!(f.sync_data().is_ok());
        // ... but nothing goes through the log's syncer any more, and nothing more is durable.
        assert!(matches!(sync.sync(11, false), Err(Error::Poisoned { .. })));
        assert!(sync.write(b"x", 11).is_err());
        assert_eq!(sync.durable(), 5);
        let after = fs.crash(CrashPolicy::KeepAll);
        let g = after.open(Path::new("/d/log"), OpenMode::Existing).unwrap();
        assert_eq!(
            g.len().unwrap(),
            5,
            "the failed sync's bytes never reached the disk"
        );
    }

    /// A file that records which kind of durable write it was asked for.
    #[derive(Debug)]
    struct Recording {
        inner: Arc<dyn StorageFile>,
        calls: parking_lot::Mutex<Vec<&'static str>>,
    }

    impl StorageFile for Recording {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.inner.read_exact_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.calls.lock().push("write");
            self.inner.write_all_at(buf, offset)
        }
        fn write_all_at_durable(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            // Like `RWF_DSYNC`: only this range.
            self.calls.lock().push("write-range-durable");
            self.inner.write_all_at(buf, offset)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.calls.lock().push("sync");
            self.inner.sync_data()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)
        }
        fn allocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.inner.allocate(offset, len)
        }
        fn try_lock(&self) -> std::io::Result<bool> {
            self.inner.try_lock()
        }
        fn try_lock_shared(&self) -> std::io::Result<bool> {
            self.inner.try_lock_shared()
        }
        fn unlock(&self) -> std::io::Result<()> {
            self.inner.unlock()
        }
        fn map(&self, offset: u64, len: usize) -> std::io::Result<Option<memmap2::MmapRaw>> {
            self.inner.map(offset, len)
        }
    }

    #[test]
    fn a_durable_write_after_unsynced_bytes_syncs_the_whole_file() {
        let fs = FaultFs::new();
        let rec = Arc::new(Recording {
            inner: file(&fs),
            calls: Default::default(),
        });
        let sync = LogSync::new(rec.clone(), 0, Arc::new(Poison::default()));
        // Durable so far: the range write alone is enough.
        sync.write_durable(b"seal", 0, 4).unwrap();
        assert_eq!(*rec.calls.lock(), ["write-range-durable"]);
        // Bytes written without a sync (a `Periodic` group), then a seal: the seal's range
        // alone would leave them behind its durable end.
        rec.calls.lock().clear();
        sync.write(b"group", 4).unwrap();
        sync.write_durable(b"seal", 9, 16).unwrap();
        assert_eq!(*rec.calls.lock(), ["write", "write", "sync"]);
        assert_eq!(sync.durable(), 16);
    }

    #[test]
    fn a_durable_write_moves_the_durable_end() {
        let fs = FaultFs::new();
        let sync = LogSync::new(file(&fs), 0, Arc::new(Poison::default()));
        sync.write_durable(b"abcdefgh", 0, 8).unwrap();
        assert_eq!(sync.durable(), 8);
        fs.fail_at(fs.op_count(), FaultMode::Always, std::io::ErrorKind::Other);
        assert!(sync.write_durable(b"ijkl", 8, 12).is_err());
        assert!(sync.poison().is_set());
        assert_eq!(sync.durable(), 8);
    }
}
