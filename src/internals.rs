//! The log floor without the store around it, for fuzz targets and tests (feature
//! `internals`; not a stable API). A [`LogFile`] writes commits the way the store does (same
//! writer, same frames, same syncs) and [`recover`] runs the open-time recovery over a file,
//! both without the index sidecar or background threads, so a fuzzer can run them tens of
//! thousands of times a second.
//!
//! ```
//! use annals::internals::{LogFile, recover};
//! use annals::storage::MemoryFs;
//! use std::path::Path;
//!
//! let fs = MemoryFs::new();
//! let path = Path::new("/l/log.annals");
//! let mut log = LogFile::create(&fs, path, 64 * 1024, 7)?;
//! let (first, end) = log.append(&[("s", 0, b"hello"), ("s", 1, b"world")])?;
//! assert_eq!(first, 4096);
//! drop(log);
//! let found = recover(&fs, path, true, false)?;
//! assert_eq!((found.end, found.commits.len()), (end, 1));
//! assert!(found.truncated.is_none());
//! # Ok::<(), annals::Error>(())
//! ```

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::log::Layout;
use crate::log::format::{EventRecord, FileHeader, HEADER_BLOCK, HEADER_LEN};
use crate::log::recovery::{self, Mode, RecoveredEvent, Replay, ScanStart};
use crate::log::sync::{LogSync, Poison};
use crate::log::writer::LogWriter;
use crate::storage::{FileSystem, OpenMode, StorageFile};

pub use crate::log::recovery::Truncation;

/// A log file written commit by commit, as the store writes it (every commit durable).
pub struct LogFile {
    writer: LogWriter,
    file: Arc<dyn StorageFile>,
}

impl LogFile {
    /// Creates a log file at `path` (format version 2 with frame key `key`, or version 1 for
    /// key 0) with segments of `segment_size` bytes.
    pub fn create(
        fs: &dyn FileSystem,
        path: &Path,
        segment_size: u64,
        key: u64,
    ) -> Result<LogFile> {
        crate::log::format::check_segment_size(segment_size).map_err(Error::InvalidArgument)?;
        let file = fs.open(path, OpenMode::CreateNew)?;
        let header = FileHeader {
            format_version: if key == 0 {
                crate::log::format::FORMAT_VERSION_1
            } else {
                crate::log::format::FORMAT_VERSION
            },
            store_id: [1; 16],
            segment_size,
            created_at: 0,
            frame_key: key,
        };
        let mut block = vec![0u8; HEADER_BLOCK as usize];
        block[..HEADER_LEN].copy_from_slice(&header.encode());
        file.write_all_at(&block, 0)?;
        file.allocate(HEADER_BLOCK, segment_size)?;
        file.sync_all()?;
        let layout = Layout { segment_size, key };
        let sync = Arc::new(LogSync::new(
            file.clone(),
            Layout::FIRST,
            Arc::new(Poison::default()),
        ));
        let writer = LogWriter::new(
            file.clone(),
            layout,
            Layout::FIRST,
            None,
            HEADER_BLOCK + segment_size,
            sync,
        );
        Ok(LogFile { writer, file })
    }

    /// Appends one commit of events `(stream, version, payload)` and makes it durable.
    /// Returns the position of its first frame and where the log ends after it.
    pub fn append(&mut self, events: &[(&str, u64, &[u8])]) -> Result<(u64, u64)> {
        let mut positions = Vec::new();
        let end = self.append_at(events, &mut positions)?;
        Ok((positions[0], end))
    }

    /// Like [`append`](Self::append), pushing the position of every frame onto `positions`;
    /// returns where the log ends after the commit.
    pub fn append_at(
        &mut self,
        events: &[(&str, u64, &[u8])],
        positions: &mut Vec<u64>,
    ) -> Result<u64> {
        if events.is_empty() {
            return Err(Error::InvalidArgument("a commit has events".into()));
        }
        let new_events: Vec<crate::NewEvent> = events
            .iter()
            .map(|(_, _, payload)| crate::NewEvent::new("E", payload.to_vec()))
            .collect();
        let records: Vec<EventRecord<'_>> = events
            .iter()
            .zip(&new_events)
            .map(|((stream, version, _), e)| e.record(stream, *version))
            .collect();
        for r in &records {
            crate::names::check_stream_name(r.stream, true)?;
        }
        let total = records
            .iter()
            .map(|r| {
                r.frame_len()
                    .ok_or(Error::InvalidArgument("too large".into()))
            })
            .sum::<Result<u64>>()?;
        self.writer.reserve(total).map_err(|e| match e {
            crate::log::writer::ReserveError::Refused(e)
            | crate::log::writer::ReserveError::Fatal(e) => e,
        })?;
        let staged = self
            .writer
            .stage_frames(records.into_iter(), true, positions);
        self.writer.write_staged(true)?;
        Ok(staged.end)
    }

    /// The file.
    pub fn file(&self) -> &Arc<dyn StorageFile> {
        &self.file
    }
}

/// What [`recover`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Where the log ends.
    pub end: u64,
    /// Every complete commit: each event's position and its frame's bytes.
    pub commits: Vec<Vec<(u64, bytes::Bytes)>>,
    /// The tail that was (or would be) dropped.
    pub truncated: Option<Truncation>,
    /// Bytes written again (or that would be) because no frame proved them durable.
    pub rewritten: u64,
}

struct Collect(Vec<Vec<(u64, bytes::Bytes)>>);

impl Replay for Collect {
    fn commit(&mut self, events: &[RecoveredEvent]) -> Result<()> {
        self.0.push(
            events
                .iter()
                .map(|e| (e.position, e.bytes.clone()))
                .collect(),
        );
        Ok(())
    }
}

/// Runs the open-time recovery over the log file at `path` from its first frame: with
/// `repair`, as an open for writing does (dropping a torn tail, saving it beside the file);
/// otherwise only judging. `accept_loss` as [`crate::StoreBuilder::accept_loss`].
pub fn recover(
    fs: &dyn FileSystem,
    path: &Path,
    repair: bool,
    accept_loss: bool,
) -> Result<Recovery> {
    let file = fs.open(
        path,
        if repair {
            OpenMode::Existing
        } else {
            OpenMode::ReadOnly
        },
    )?;
    let header = crate::store::open::read_header(&*file, path)?;
    let layout = Layout {
        segment_size: header.segment_size,
        key: header.frame_key,
    };
    let mode = if repair {
        Mode::Repair {
            fs,
            path,
            accept_loss,
        }
    } else {
        Mode::Inspect { accept_loss }
    };
    let mut commits = Collect(Vec::new());
    let r = recovery::recover(&file, layout, ScanStart::BEGINNING, mode, &mut commits)?;
    Ok(Recovery {
        end: r.end,
        commits: commits.0,
        truncated: r.truncated,
        rewritten: r.rewritten,
    })
}

/// Reads the log at `path` the way a read-only open that follows a writer does: only up to
/// `limit` (the durable end a writer published; past it the file reads as zeros), changing
/// nothing. Every frame before the zeros must be sound: a bad one is an error, never a tail to
/// drop.
///
/// ```
/// use annals::internals::{LogFile, follow, recover};
/// use annals::storage::MemoryFs;
/// use std::path::Path;
///
/// let fs = MemoryFs::new();
/// let path = Path::new("/l/log.annals");
/// let mut log = LogFile::create(&fs, path, 64 * 1024, 7)?;
/// let (_, first_end) = log.append(&[("s", 0, b"hello")])?;
/// let (_, end) = log.append(&[("s", 1, b"world")])?;
/// drop(log);
/// assert_eq!(follow(&fs, path, first_end)?.commits.len(), 1, "what lies past the limit is not read");
/// assert_eq!(follow(&fs, path, end)?.commits, recover(&fs, path, false, false)?.commits);
/// # Ok::<(), annals::Error>(())
/// ```
pub fn follow(fs: &dyn FileSystem, path: &Path, limit: u64) -> Result<Recovery> {
    let file = fs.open(path, OpenMode::ReadOnly)?;
    let header = crate::store::open::read_header(&*file, path)?;
    let layout = Layout {
        segment_size: header.segment_size,
        key: header.frame_key,
    };
    let view: Arc<dyn StorageFile> = Arc::new(crate::log::live::Bounded::new(file, limit));
    let mut commits = Collect(Vec::new());
    let (end, _, _) = recovery::follow(&view, layout, ScanStart::BEGINNING, &mut commits)?;
    Ok(Recovery {
        end,
        commits: commits.0,
        truncated: None,
        rewritten: 0,
    })
}
