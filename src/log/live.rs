//! The live file `NAME.annals.live`: how the writer tells read-only opens (in its own process
//! or in others) where the **durable** log ends, so that they can read the store while it is
//! being written and never see a byte that a power cut could still take away.
//!
//! # Format (48 bytes, little-endian)
//!
//! | offset | length | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `annalsLV` |
//! | 8 | 4 | version, 1 |
//! | 12 | 16 | the store id (as in the log's header) |
//! | 28 | 4 | CRC-32 of bytes 0..28 |
//! | 32 | 8 | durable end: every log byte before it was synced |
//! | 40 | 8 | the bitwise complement of the durable end |
//!
//! # Rules
//!
//! - The writer creates the file if it is missing, else opens it: it is **never replaced or
//!   removed**, so a reader that holds it open sees every later writer's values. At open, after
//!   recovery made the log durable, the writer writes the header and the durable end; after
//!   each sync that moves the durable end (one at a time, under the sync lock) it writes the
//!   16 bytes at 32 again. It never syncs this file: its values hold for this boot's page
//!   cache, and a value is written only once the log bytes it names are durable.
//! - A reader reads the 16 bytes at 32 and uses the value only when the complement matches
//!   (a write in progress is read again). It reads the log only up to that end, through
//!   `Bounded`, which shows zeros past it: commits being written, unsynced commits (a
//!   writer with `Durability::NoSync` publishes when it syncs or closes) and torn frames stay
//!   out of sight.
//! - A header that does not match (another store's file, another version, a bad checksum) is
//!   refused with an error naming the file; a writer that has not written it yet is waited
//!   for briefly by the open.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::storage::{FileSystem, OpenMode, StorageFile, is_not_found};

/// Magic of the live file.
pub const MAGIC: [u8; 8] = *b"annalsLV";
/// Version of the live file's layout.
pub const VERSION: u32 = 1;
/// Length of the live file.
pub const LEN: usize = 48;
/// Where the durable end (and its complement) are.
const END_AT: u64 = 32;

/// The live file of the store at `store_path`.
pub(crate) fn live_path(store_path: &Path) -> PathBuf {
    let mut s = store_path.as_os_str().to_owned();
    s.push(".live");
    PathBuf::from(s)
}

/// The header: magic, version, store id, checksum.
pub fn encode_header(store_id: [u8; 16]) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..28].copy_from_slice(&store_id);
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The durable end and its complement.
pub fn encode_end(end: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&end.to_le_bytes());
    b[8..].copy_from_slice(&(!end).to_le_bytes());
    b
}

/// Why a live file's header was refused.
fn check_header(h: &[u8], store_id: [u8; 16]) -> std::result::Result<(), String> {
    if h.len() < 32 || h[..8] != MAGIC {
        return Err("not an annals live file (no magic)".into());
    }
    let crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&h[..28]) {
        return Err("its header fails its checksum".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!(
            "live file version {version} (this build reads {VERSION})"
        ));
    }
    if h[12..28] != store_id {
        return Err("it belongs to another store".into());
    }
    Ok(())
}

/// The durable end in `b` (16 bytes), if its complement matches.
pub fn decode_end(b: &[u8]) -> Option<u64> {
    let end = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let not = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    (end == !not).then_some(end)
}

/// The writer's side: publishes the durable end.
#[derive(Debug)]
pub(crate) struct Publisher {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    published: AtomicU64,
    failed: AtomicBool,
}

impl Publisher {
    /// Creates or opens the live file and publishes `durable`.
    pub fn open(
        fs: &dyn FileSystem,
        store_path: &Path,
        store_id: [u8; 16],
        durable: u64,
    ) -> Result<Publisher> {
        let path = live_path(store_path);
        let file = match fs.open(&path, OpenMode::Existing) {
            Err(e) if is_not_found(&e) => match fs.open(&path, OpenMode::CreateNew) {
                // Another writer cannot race us (we hold the store's lock); a reader never
                // creates it.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    fs.open(&path, OpenMode::Existing)
                }
                other => other,
            },
            other => other,
        }
        .map_err(|e| Error::io_at(&path, e))?;
        let mut bytes = [0u8; LEN];
        bytes[..32].copy_from_slice(&encode_header(store_id));
        bytes[32..].copy_from_slice(&encode_end(durable));
        file.write_all_at(&bytes, 0)
            .map_err(|e| Error::io_at(&path, e))?;
        Ok(Publisher {
            file,
            path,
            published: AtomicU64::new(durable),
            failed: AtomicBool::new(false),
        })
    }

    /// Publishes a new durable end (callers hold the sync lock: one at a time). A failure is
    /// reported as a warning (once until a write succeeds again) and tried again at the next
    /// sync: readers meanwhile stay at the last end they saw (they lag, never lead), and the
    /// store itself goes on.
    pub fn publish(&self, durable: u64) {
        if durable <= self.published.load(Ordering::Acquire) {
            return;
        }
        match self.file.write_all_at(&encode_end(durable), END_AT) {
            Ok(()) => {
                self.published.store(durable, Ordering::Release);
                self.failed.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %self.path.display(), error = %e,
                        "annals: cannot update the live file; read-only opens that follow this store will not see new commits until it can");
                }
            }
        }
    }
}

/// The reader's side: reads the durable end the writer published.
#[derive(Debug)]
pub(crate) struct LiveEnd {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    store_id: [u8; 16],
}

impl LiveEnd {
    /// Opens the live file of the store at `store_path`, waiting up to `wait` for a writer that
    /// has locked the store but not written it yet. `Ok(None)` when there is none by then.
    pub fn open(
        fs: &dyn FileSystem,
        store_path: &Path,
        store_id: [u8; 16],
        wait: std::time::Duration,
    ) -> Result<Option<LiveEnd>> {
        let path = live_path(store_path);
        let deadline = std::time::Instant::now() + wait;
        loop {
            let why = match fs.open(&path, OpenMode::ReadOnly) {
                Ok(file) => {
                    let live = LiveEnd {
                        file,
                        path: path.clone(),
                        store_id,
                    };
                    match live.header_problem(store_id)? {
                        None => return Ok(Some(live)),
                        Some(why) => Some(why),
                    }
                }
                Err(e) if is_not_found(&e) => None,
                Err(e) => return Err(Error::io_at(&path, e)),
            };
            if std::time::Instant::now() >= deadline {
                return match why {
                    None => Ok(None),
                    Some(why) => Err(Error::NotAStore {
                        path,
                        reason: format!(
                            "{why}; the store's writer publishes its durable end there"
                        ),
                    }),
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn header_problem(&self, store_id: [u8; 16]) -> Result<Option<String>> {
        let mut h = [0u8; 32];
        match self.file.read_exact_at(&mut h, 0) {
            Ok(()) => Ok(check_header(&h, store_id).err()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Ok(Some("it is shorter than its header".into()))
            }
            Err(e) => Err(Error::io_at(&self.path, e)),
        }
    }

    /// The durable end the writer published last. The header is checked again each time: a
    /// store replaced at the same path is refused, never followed.
    pub fn read(&self) -> Result<u64> {
        let mut b = [0u8; LEN];
        for _ in 0..1000 {
            self.file
                .read_exact_at(&mut b, 0)
                .map_err(|e| Error::io_at(&self.path, e))?;
            if let Err(why) = check_header(&b[..32], self.store_id) {
                return Err(Error::NotAStore {
                    path: self.path.clone(),
                    reason: format!("{why}: the store was replaced since this read-only open"),
                });
            }
            if let Some(end) = decode_end(&b[32..]) {
                return Ok(end);
            }
            std::thread::yield_now();
        }
        Err(Error::NotAStore {
            path: self.path.clone(),
            reason: "its durable end and the end's complement never agree".into(),
        })
    }
}

/// A read-only view of the log that reads zeros from `limit` on: what a reader of a log that
/// another handle writes may look at. Every change fails.
#[derive(Debug)]
pub(crate) struct Bounded {
    inner: Arc<dyn StorageFile>,
    limit: AtomicU64,
}

impl Bounded {
    pub fn new(inner: Arc<dyn StorageFile>, limit: u64) -> Bounded {
        Bounded {
            inner,
            limit: AtomicU64::new(limit),
        }
    }

    /// Moves the limit (only forwards).
    pub fn raise(&self, limit: u64) {
        self.limit.fetch_max(limit, Ordering::AcqRel);
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "a read-only view of a log another handle writes",
    )
}

impl StorageFile for Bounded {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)?;
        let limit = self.limit();
        if offset.saturating_add(buf.len() as u64) > limit {
            let from = limit.saturating_sub(offset) as usize;
            buf[from..].fill(0);
        }
        Ok(())
    }

    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn sync_data(&self) -> io::Result<()> {
        Err(read_only())
    }

    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn allocate(&self, _: u64, _: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn try_lock(&self) -> io::Result<bool> {
        self.inner.try_lock()
    }

    fn try_lock_shared(&self) -> io::Result<bool> {
        self.inner.try_lock_shared()
    }

    fn unlock(&self) -> io::Result<()> {
        self.inner.unlock()
    }

    /// Maps the real bytes: callers read mapped frames only before the limit.
    fn map(&self, offset: u64, len: usize) -> io::Result<Option<memmap2::MmapRaw>> {
        self.inner.map(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryFs;

    const ID: [u8; 16] = [7; 16];

    #[test]
    fn header_and_end_round_trip_and_flipped_bytes_are_refused() {
        let h = encode_header(ID);
        assert_eq!(check_header(&h, ID), Ok(()));
        assert!(
            check_header(&h, [8; 16])
                .unwrap_err()
                .contains("another store")
        );
        for i in 0..32 {
            let mut bad = h;
            bad[i] ^= 0x10;
            assert!(check_header(&bad, ID).is_err(), "byte {i}");
        }
        for end in [0, 4096, u64::MAX] {
            assert_eq!(decode_end(&encode_end(end)), Some(end));
        }
        let e = encode_end(4096);
        for i in 0..16 {
            let mut bad = e;
            bad[i] ^= 1;
            assert_eq!(decode_end(&bad), None, "byte {i}");
        }
        assert_eq!(decode_end(&e[..8]), None);
    }

    #[test]
    fn a_reader_sees_what_the_writer_publishes_and_only_forwards() {
        let fs = MemoryFs::new();
        let store = Path::new("/s.annals");
        assert!(
            LiveEnd::open(&fs, store, ID, std::time::Duration::ZERO)
                .unwrap()
                .is_none()
        );
        let p = Publisher::open(&fs, store, ID, 4096).unwrap();
        let r = LiveEnd::open(&fs, store, ID, std::time::Duration::ZERO)
            .unwrap()
            .unwrap();
        assert_eq!(r.read().unwrap(), 4096);
        p.publish(8192);
        assert_eq!(r.read().unwrap(), 8192);
        p.publish(5000);
        assert_eq!(r.read().unwrap(), 8192, "never backwards");
        // The next writer opens the same file in place: the reader keeps following.
        drop(p);
        let p = Publisher::open(&fs, store, ID, 8192).unwrap();
        p.publish(12288);
        assert_eq!(r.read().unwrap(), 12288);
        // Another store's live file is refused, naming it.
        let e = LiveEnd::open(&fs, store, [9; 16], std::time::Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("/s.annals.live"), "{e}");
        assert!(e.to_string().contains("another store"), "{e}");
    }

    #[test]
    fn a_torn_end_is_never_used() {
        let fs = MemoryFs::new();
        let store = Path::new("/s.annals");
        let _p = Publisher::open(&fs, store, ID, 4096).unwrap();
        let raw = fs.open(&live_path(store), OpenMode::Existing).unwrap();
        raw.write_all_at(&8192u64.to_le_bytes(), END_AT).unwrap();
        let r = LiveEnd::open(&fs, store, ID, std::time::Duration::ZERO)
            .unwrap()
            .unwrap();
        assert!(r.read().is_err(), "the complement still names 4096");
    }

    #[test]
    fn the_bounded_view_reads_zeros_past_its_limit_and_changes_nothing() {
        let fs = MemoryFs::new();
        let f = fs.open(Path::new("/f"), OpenMode::CreateNew).unwrap();
        f.write_all_at(&[1u8; 64], 0).unwrap();
        let v = Bounded::new(f, 10);
        let mut buf = [9u8; 20];
        v.read_exact_at(&mut buf, 5).unwrap();
        assert_eq!(&buf[..5], &[1; 5]);
        assert_eq!(&buf[5..], &[0; 15]);
        v.raise(30);
        v.raise(20);
        assert_eq!(v.limit(), 30);
        v.read_exact_at(&mut buf, 5).unwrap();
        assert_eq!(buf, [1; 20]);
        assert!(v.write_all_at(b"x", 0).is_err());
        assert!(v.set_len(0).is_err());
        assert!(v.sync_data().is_err());
        assert!(v.allocate(0, 100).is_err());
        assert_eq!(v.len().unwrap(), 64);
    }
}
