//! Lets redb keep the index sidecar in a [`StorageFile`], so the sidecar goes through the same
//! (possibly fault-injecting) file system as the log.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::StorageFile;

/// A redb storage backend over one [`StorageFile`]. The store's own exclusive lock on the log
/// file guards the sidecar, so this backend takes no locks of its own.
pub(crate) struct RedbBackend {
    file: Arc<dyn StorageFile>,
    /// Set when the store is abandoned (as a killed process would leave it): from then on
    /// nothing is written, not even redb's own bookkeeping when the database is dropped.
    frozen: Arc<AtomicBool>,
}

impl RedbBackend {
    pub(crate) fn new(file: Arc<dyn StorageFile>, frozen: Arc<AtomicBool>) -> RedbBackend {
        RedbBackend { file, frozen }
    }

    fn writable(&self) -> Result<(), io::Error> {
        if self.frozen.load(Ordering::Acquire) {
            return Err(io::Error::other("the store was abandoned"));
        }
        Ok(())
    }
}

impl fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedbBackend({:?})", self.file)
    }
}

impl redb::StorageBackend for RedbBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.writable()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.writable()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.writable()?;
        self.file.write_all_at(data, offset)
    }
}
