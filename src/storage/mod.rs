//! File I/O behind a small trait, so tests can swap the disk.
//!
//! Everything annals reads or writes (the log and its index sidecar) goes through a
//! [`FileSystem`]. Three implementations ship with the crate:
//!
//! - [`StdFs`]: real files (positioned I/O, `fdatasync`, `fallocate`, `flock`, read-only mmap);
//! - [`MemoryFs`]: files in memory, for fast tests;
//! - [`FaultFs`]: in-memory files that remember which writes were synced, so a test can
//!   simulate a crash (drop unsynced writes, tear the last one at any byte, lose an unsynced
//!   directory entry) and fail the N-th operation once or from then on.
//!
//! ```
//! use annals::storage::{FileSystem, MemoryFs, OpenMode};
//! use std::path::Path;
//!
//! let fs = MemoryFs::new();
//! let file = fs.open(Path::new("/a"), OpenMode::CreateNew)?;
//! file.set_len(8)?;
//! file.write_all_at(b"hi", 2)?;
//! let mut buf = [0u8; 4];
//! file.read_exact_at(&mut buf, 1)?;
//! assert_eq!(&buf, b"\0hi\0");
//! # Ok::<(), std::io::Error>(())
//! ```

mod fault;
mod memory;
mod redb_backend;
mod std_fs;

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use fault::{CrashPolicy, FaultFs, FaultMode};
pub use memory::MemoryFs;
pub(crate) use redb_backend::RedbBackend;
pub use std_fs::StdFs;

/// How [`FileSystem::open`] treats an existing or missing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file; fail with `NotFound` if it is missing.
    Existing,
    /// Create a new empty file; fail with `AlreadyExists` if it exists.
    CreateNew,
    /// Open an existing file for reading only: every change fails (`PermissionDenied`).
    ReadOnly,
}

/// A file system: opens files and makes directory changes durable.
pub trait FileSystem: Send + Sync + Debug + 'static {
    /// Opens a file for reading and writing.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Whether a file exists at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Gives the file at `from` the name `to`, failing with `AlreadyExists` (and changing
    /// nothing) if `to` exists.
    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (created, removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file. All offsets are absolute; there is no cursor.
pub trait StorageFile: Send + Sync + Debug {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Fills `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` and makes it durable, like
    /// [`write_all_at`](Self::write_all_at) followed by [`sync_data`](Self::sync_data) (which
    /// is what it does by default; real files use one `pwritev2(RWF_DSYNC)` instead).
    fn write_all_at_durable(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)?;
        self.sync_data()
    }
    /// Makes written data (and the length) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes data and all metadata durable: `fsync`.
    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }
    /// Sets the length; new bytes read as zero.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves disk space for `[offset, offset + len)` (growing the file if needed) so that
    /// later writes there do not fail for lack of space. New bytes read as zero.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Gives the space of `[offset, offset + len)` back to the file system (both multiples of
    /// 4096): the bytes read as zeros afterwards and the file keeps its length. Real files punch
    /// a hole (`fallocate(PUNCH_HOLE)`); the default writes zeros. Durable after the next
    /// [`sync_data`](Self::sync_data).
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        write_zeros(self, offset, offset.saturating_add(len))
    }
    /// Whether the log should fill the segment after the current one with written (and synced)
    /// zeros in the background: on real file systems, syncing data written over zeros is much
    /// cheaper than syncing data written into freshly allocated space. Default: no.
    fn zero_fill_ahead(&self) -> bool {
        false
    }
    /// Takes an exclusive lock for this handle; `Ok(false)` if another handle holds a lock.
    fn try_lock(&self) -> io::Result<bool>;
    /// Takes a shared lock for this handle; `Ok(false)` if another handle holds an exclusive
    /// one.
    fn try_lock_shared(&self) -> io::Result<bool>;
    /// Releases this handle's lock, if it holds one.
    fn unlock(&self) -> io::Result<()>;
    /// A read-only map of `[offset, offset + len)`, or `None` if this file system cannot map
    /// files (readers then use [`read_exact_at`](Self::read_exact_at)). The range must lie
    /// inside the file. The map holds no lock on the file.
    fn map(&self, offset: u64, len: usize) -> io::Result<Option<memmap2::MmapRaw>>;
}

/// Writes zeros over `[from, to)` of `file` (64 KiB at a time).
pub(crate) fn write_zeros<F: StorageFile + ?Sized>(file: &F, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 65536] = [0; 65536];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The directory holding `path`, for syncing its entries (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Whether the error is the "not found" kind.
pub(crate) fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}
