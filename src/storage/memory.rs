//! Files in memory, for fast tests: every change is durable at once.

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::{FaultFs, FileSystem, OpenMode, StorageFile};

/// A file system in memory. Clones share the same files; they live as long as a clone does.
///
/// ```
/// use annals::storage::MemoryFs;
/// use annals::{ExpectedVersion, NewEvent, Store};
///
/// let fs = MemoryFs::new();
/// let store = Store::builder().file_system(fs.clone()).open("/mem/demo")?;
/// store.append("s", ExpectedVersion::Any, [NewEvent::new("E", "x")])?;
/// drop(store);
/// let again = Store::builder().file_system(fs).open("/mem/demo")?;
/// assert_eq!(again.stream_version("s")?, Some(0));
/// # Ok::<(), annals::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MemoryFs(FaultFs);

impl MemoryFs {
    /// An empty file system.
    pub fn new() -> MemoryFs {
        MemoryFs(FaultFs::untracked())
    }
}

impl Default for MemoryFs {
    fn default() -> Self {
        MemoryFs::new()
    }
}

impl FileSystem for MemoryFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        self.0.open(path, mode)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.0.exists(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.0.remove_file(path)
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.rename_no_replace(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.sync_dir(dir)
    }
}
