//! Real files: positioned I/O, `fdatasync`, `fallocate`, `flock`, and read-only maps.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::{FileSystem, OpenMode, StorageFile};

/// The operating system's file system.
///
/// ```
/// use annals::storage::{FileSystem, OpenMode, StdFs};
///
/// let dir = tempfile::tempdir()?;
/// let file = StdFs.open(&dir.path().join("f"), OpenMode::CreateNew)?;
/// assert!(file.try_lock()?);
/// assert_eq!(file.len()?, 0);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl FileSystem for StdFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut options = OpenOptions::new();
        options.read(true).write(mode != OpenMode::ReadOnly);
        if mode == OpenMode::CreateNew {
            options.create_new(true);
        }
        let file = options.open(path)?;
        // Maps are made from a second, read-only handle on the same file: a map keeps its handle
        // alive, and events read from a map may outlive the store, which must not keep the
        // store's lock (held by `file`) with them.
        let map_source = File::open(path)?;
        Ok(Arc::new(StdFile { file, map_source }))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        // A hard link never replaces its target; then the old name goes.
        std::fs::hard_link(from, to)?;
        std::fs::remove_file(from)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

#[derive(Debug)]
struct StdFile {
    file: File,
    map_source: File,
}

impl StorageFile for StdFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn write_all_at_durable(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        use rustix::io::{Errno, ReadWriteFlags, pwritev2};
        // One system call that writes and syncs (the device can be asked for a forced-unit
        // access write instead of a write and a cache flush).
        while !buf.is_empty() {
            match pwritev2(
                &self.file,
                &[io::IoSlice::new(buf)],
                offset,
                ReadWriteFlags::DSYNC,
            ) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(Errno::INTR) => {}
                // Kernels before 4.7 and some file systems: write, then sync.
                Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                    self.file.write_all_at(buf, offset)?;
                    return self.file.sync_data();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), offset, len) {
            Ok(()) => Ok(()),
            // File systems without fallocate: grow the file sparsely instead.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => {
                let end = offset.saturating_add(len);
                if self.len()? < end {
                    self.file.set_len(end)?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, offset, len) {
            Ok(()) => Ok(()),
            // File systems that cannot punch holes: zeros, without giving space back.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => {
                super::write_zeros(self, offset, offset + len)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn zero_fill_ahead(&self) -> bool {
        true
    }

    fn try_lock(&self) -> io::Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn try_lock_shared(&self) -> io::Result<bool> {
        match self.file.try_lock_shared() {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn unlock(&self) -> io::Result<()> {
        self.file.unlock()
    }

    fn map(&self, offset: u64, len: usize) -> io::Result<Option<memmap2::MmapRaw>> {
        let map = memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_raw_read_only(&self.map_source)?;
        Ok(Some(map))
    }
}
