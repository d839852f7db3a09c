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
    /// Set while redb opens the database (cleared by [`RedbBackend::opened`]).
    opening: Arc<AtomicBool>,
    /// Whether anything beyond redb's header was written since the last sync.
    body_dirty: AtomicBool,
}

/// The bytes at the start of a redb file that hold its header (redb's header is 320 bytes; its
/// pages start at a page boundary, 512 bytes at the least).
const REDB_HEADER_BYTES: usize = 512;

impl RedbBackend {
    /// A backend over `file`. While `opening` is set, a sync that would make only redb's
    /// header durable is left to the next sync (see [`redb::StorageBackend::sync_data`] below).
    pub(crate) fn new(
        file: Arc<dyn StorageFile>,
        frozen: Arc<AtomicBool>,
        opening: Arc<AtomicBool>,
    ) -> RedbBackend {
        RedbBackend {
            file,
            frozen,
            opening,
            body_dirty: AtomicBool::new(false),
        }
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
        self.body_dirty.store(true, Ordering::Release);
        self.file.set_len(len)
    }

    /// Opening a database for writing, redb sets the "recovery required" flag in its header
    /// and syncs it, which costs every open of a store a disk round trip. While the database
    /// opens, a sync after which only the header was written is left to the next sync: until
    /// then nothing but the header has changed, so a crash leaves either the old header (the
    /// old, consistent database) or the new one (which makes redb check the file): both sound.
    /// The first commit's sync makes the header durable before that commit's pages count. A
    /// sync after redb repaired the file (pages written) is always carried out.
    fn sync_data(&self) -> Result<(), io::Error> {
        self.writable()?;
        if self.opening.load(Ordering::Acquire) && !self.body_dirty.load(Ordering::Acquire) {
            return Ok(());
        }
        self.body_dirty.store(false, Ordering::Release);
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.writable()?;
        if offset != 0 || data.len() > REDB_HEADER_BYTES {
            self.body_dirty.store(true, Ordering::Release);
        }
        self.file.write_all_at(data, offset)
    }
}
