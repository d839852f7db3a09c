//! Opening a store: create it if asked, lock it, check its header, open (or rebuild) the index,
//! run recovery, and start the writer and the background threads. A read-only open takes a
//! shared lock, changes nothing on disk, and starts no writer; when a writer holds the store,
//! it takes no lock and follows the durable end the writer publishes in the live file
//! ([`crate::log::live`]), with an index of its own built by reading the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::background::Background;
use super::commit::{Committer, Poison};
use super::engine::Live;
use super::replay::IndexReplay;
use super::{Counters, Engine, RecoveryReport, Store, StoreBuilder};
use crate::error::{Error, Result};
use crate::index::sidecar::Sidecar;
use crate::index::{Committed, Index, SidecarMode, sidecar_path};
use crate::log::Layout;
use crate::log::format::{EventRef, FileHeader, HEADER_BLOCK, HEADER_LEN, HeaderError};
use crate::log::live::{Bounded, LiveEnd, Publisher};
use crate::log::reader::LogReader;
use crate::log::recovery::{Mode, Recovered, RecoveredEvent, Replay, ScanStart, follow, recover};
use crate::log::sync::LogSync;
use crate::log::writer::LogWriter;
use crate::storage::parent_dir as parent;
use crate::storage::{FileSystem, OpenMode, StorageFile, is_not_found};

impl Store {
    pub(crate) fn open_with(options: StoreBuilder, path: &Path) -> Result<Store> {
        let fs = options.fs.clone();
        let path = store_path(path);
        let read_only = options.read_only;
        let mode = if read_only {
            OpenMode::ReadOnly
        } else {
            OpenMode::Existing
        };
        let (file, created) = match fs.open(&path, mode) {
            Ok(f) => (f, false),
            Err(e) if is_not_found(&e) && options.create && !read_only => {
                create(&*fs, &path, options.segment_size, options.format_version)?
            }
            Err(e) => return Err(Error::io_at(&path, e)),
        };
        let locked = lock(&*file, read_only).map_err(|e| Error::io_at(&path, e))?;
        if !locked && !read_only {
            return Err(Error::Locked { path });
        }
        let header = read_header(&*file, &path)?;
        // Read-only while a writer holds the store: follow what it makes durable.
        let live = if locked {
            None
        } else {
            match LiveEnd::open(&*fs, &path, header.store_id, LIVE_WAIT)? {
                Some(end) => {
                    let durable = end.read()?;
                    Some(Live {
                        view: Arc::new(Bounded::new(file.clone(), durable)),
                        end,
                        refreshing: Mutex::new(()),
                    })
                }
                None => return Err(Error::Locked { path }),
            }
        };
        let file: Arc<dyn StorageFile> = match &live {
            Some(live) => live.view.clone(),
            None => file,
        };
        let layout = Layout {
            segment_size: header.segment_size,
            key: header.frame_key,
        };
        // A scavenge or erasure cut off: its announced gaps are written again before anything
        // reads a frame (see `src/log/journal.rs`).
        let (journal_seq, cut_off_erasure, maintenance) = if read_only {
            (0, None, super::scavenge::pending(&*file))
        } else {
            super::scavenge::redo(&file, &path, layout.key)?
        };
        let sidecar = sidecar_path(&path);
        let lost = if options.rebuild_index && !read_only {
            rebuild_check(&fs, &file, &sidecar, &header, layout, options.accept_loss)?
        } else {
            None
        };
        let sidecar_mode = if read_only {
            SidecarMode::ReadOnly
        } else {
            SidecarMode::Write
        };
        // A live reader cannot share the writer's sidecar: it builds its own, in memory.
        let private: Arc<dyn FileSystem> = Arc::new(crate::storage::MemoryFs::new());
        let (index_fs, index_path, index_mode) = match &live {
            Some(_) => (
                &private,
                Path::new("/live.annals.index"),
                SidecarMode::Write,
            ),
            None => (&fs, sidecar.as_path(), sidecar_mode),
        };
        let (index, start, index_rebuilt) = Index::open(
            index_fs,
            index_path,
            header.store_id,
            header.segment_size,
            options.index_cache_bytes,
            options.index_flush_events,
            index_mode,
        )?;
        let index_rebuilt = index_rebuilt.filter(|_| live.is_none());
        if let Some(reason) = &index_rebuilt {
            tracing::info!(path = %path.display(), reason = %reason, "annals: rebuilding the index sidecar from the log");
        }
        // A store this open created holds nothing but zeros after its header.
        let scan = ScanStart {
            clean: start.clean || (created && start.position == Layout::FIRST),
            ..start
        };
        let recovery_mode = if read_only {
            Mode::Inspect {
                accept_loss: options.accept_loss,
            }
        } else {
            Mode::Repair {
                fs: &*fs,
                path: &path,
                accept_loss: options.accept_loss,
            }
        };
        let mut replay = IndexReplay {
            index: &index,
            gaps: false,
        };
        let recovered = match &live {
            None => recover(&file, layout, scan, recovery_mode, &mut replay)?,
            Some(_) => {
                let (end, last_frame, commits) =
                    follow(&file, layout, ScanStart::BEGINNING, &mut replay)?;
                Recovered {
                    end,
                    last_frame,
                    prepared_end: end,
                    commits,
                    truncated: None,
                    rewritten: 0,
                }
            }
        };
        if read_only && live.is_none() && recovered.rewritten > 0 {
            // A writer died without syncing all it wrote: what this open shows must survive a
            // power cut too, so the bytes it read are synced first (this changes no byte).
            file.sync_data().map_err(|e| Error::io_at(&path, e))?;
        }
        let committed = Committed {
            end: recovered.end,
            last_frame: recovered.last_frame,
        };
        index.apply(&[], committed)?;
        let poison = Arc::new(Poison::default());
        let sync = Arc::new(LogSync::new(file.clone(), recovered.end, poison.clone()));
        // A store opened clean stays marked clean in the sidecar until its first write: the
        // committer clears the mark durably before writing anything to the log (reopening a
        // store only to read it then writes nothing).
        let mut writer = LogWriter::new(
            file.clone(),
            layout,
            recovered.end,
            recovered.last_frame,
            recovered.prepared_end,
            sync.clone(),
        );
        if !read_only {
            writer.prepare_next();
            // Read-only opens elsewhere follow the durable end from now on.
            match Publisher::open(&*fs, &path, header.store_id, recovered.end) {
                Ok(publisher) => sync.set_live(publisher),
                Err(e) => tracing::warn!(error = %e,
                    "annals: no live file; read-only opens cannot follow this writer"),
            }
        }
        let index = Arc::new(index);
        let engine = Arc::new(Engine {
            reader: LogReader::new(file.clone(), layout, true),
            committer: Committer::new(writer),
            path,
            header,
            layout,
            file,
            index,
            poison,
            sync,
            durability: options.durability,
            max_event_size: options.max_event_size,
            read_only,
            live,
            flusher: Mutex::new(Default::default()),
            recovery: RecoveryReport {
                index_covered: crate::values::Position::new(start.position),
                index_rebuilt,
                commits_replayed: recovered.commits,
                truncated: recovered.truncated,
                rewritten: recovered.rewritten,
                lost,
                maintenance,
            },
            counters: Counters::default(),
            codec: options.codec,
            upcasters: parking_lot::RwLock::new(options.upcasters.clone()),
            registry: parking_lot::RwLock::new(options.registry.clone()),
            subscribers: Default::default(),
            appended: Default::default(),
            appended_waiters: Default::default(),
            marked_clean: std::sync::atomic::AtomicBool::new(start.clean),
            lifecycle: Default::default(),
            maintenance: Mutex::new(journal_seq),
        });
        super::lifecycle::Lifecycle::load_from(&engine, crate::log::Layout::FIRST)?;
        let background = if read_only {
            Background::default()
        } else {
            Background::start(&engine)?
        };
        let store = Store {
            engine,
            background: Mutex::new(background),
        };
        if let Some(erasure) = cut_off_erasure {
            store.finish_erasure(erasure)?;
        }
        Ok(store)
    }
}

/// How long a read-only open waits for the live file of a writer that holds the store's lock
/// but has not written it yet (it is still recovering the log).
const LIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes the store's lock (shared for a read-only open). A lock held by a handle that is
/// closing (another thread's store being dropped, or a child process forked by another thread
/// that still holds a copy of the handle until it executes its program) is waited for briefly:
/// up to about 100 ms, then the store counts as open elsewhere.
fn lock(file: &dyn StorageFile, shared: bool) -> std::io::Result<bool> {
    let mut wait = std::time::Duration::from_micros(200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
    loop {
        let locked = if shared {
            file.try_lock_shared()?
        } else {
            file.try_lock()?
        };
        if locked || std::time::Instant::now() >= deadline {
            return Ok(locked);
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(std::time::Duration::from_millis(20));
    }
}

/// `PATH.annals`, unless `path` already ends in `.annals`.
pub(crate) fn store_path(path: &Path) -> PathBuf {
    if path.extension().is_some_and(|e| e == "annals") {
        return path.to_owned();
    }
    let mut s = path.as_os_str().to_owned();
    s.push(".annals");
    PathBuf::from(s)
}

/// Creates a store file: written and synced under a temporary name, then linked into place
/// without replacing anything (a concurrent creator wins cleanly), then the directory is synced.
/// Returns the file and whether this call created it.
fn create(
    fs: &dyn FileSystem,
    path: &Path,
    segment_size: u64,
    format_version: u32,
) -> Result<(Arc<dyn StorageFile>, bool)> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".creating-{}", uuid::Uuid::new_v4().simple()));
    let tmp = PathBuf::from(tmp);
    let file = fs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| Error::io_at(&tmp, e))?;
    let frame_key = match format_version {
        crate::log::format::FORMAT_VERSION_1 => 0,
        // Random and never zero (zero would mean "no key").
        _ => (uuid::Uuid::new_v4().as_u128() as u64) | 1,
    };
    let header = FileHeader {
        format_version,
        store_id: uuid::Uuid::new_v4().into_bytes(),
        segment_size,
        created_at: crate::event::nanos_since_epoch(std::time::SystemTime::now()),
        frame_key,
    };
    // The header block and segment 0's first chunk, prepared (written zeros, synced) like
    // every chunk the writer prepares later (see `crate::log::writer`).
    let layout = crate::log::Layout {
        segment_size,
        key: frame_key,
    };
    let first_chunk =
        crate::log::writer::chunk_end(layout, HEADER_BLOCK, HEADER_BLOCK, HEADER_BLOCK);
    let mut block = vec![0u8; first_chunk as usize];
    block[..HEADER_LEN].copy_from_slice(&header.encode());
    let written = file
        .write_all_at(&block, 0)
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "creating the store takes {} bytes (its header and first chunk): {e}",
                    block.len()
                ),
            )
        });
    drop(file);
    let linked = written.and_then(|()| fs.rename_no_replace(&tmp, path));
    let _ = fs.remove_file(&tmp);
    let created = match linked {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(Error::io_at(path, e)),
    };
    fs.sync_dir(parent(path))
        .map_err(|e| Error::io_at(parent(path), e))?;
    let file = fs
        .open(path, OpenMode::Existing)
        .map_err(|e| Error::io_at(path, e))?;
    Ok((file, created))
}

pub(crate) fn read_header(file: &dyn StorageFile, path: &Path) -> Result<FileHeader> {
    let len = file
        .len()
        .map_err(|e| Error::io_at(path, e))?
        .min(HEADER_LEN as u64) as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io_at(path, e))?;
    FileHeader::decode(&buf).map_err(|e| match e {
        HeaderError::NotAStore(reason) => Error::NotAStore {
            path: path.to_owned(),
            reason,
        },
        HeaderError::UnsupportedVersion(found) => Error::UnsupportedVersion {
            found,
            supported: crate::log::format::FORMAT_VERSION,
        },
        HeaderError::Corrupt(reason) => Error::corrupt(0, reason),
    })
}

/// Before the sidecar is rebuilt: finds where the log ends (reading it without the sidecar,
/// changing nothing) and refuses, unless told to accept the loss, when that is before what the
/// old sidecar covered. Then removes the old sidecar. Returns what was lost, if anything.
fn rebuild_check(
    fs: &Arc<dyn FileSystem>,
    file: &Arc<dyn StorageFile>,
    sidecar: &Path,
    header: &FileHeader,
    layout: Layout,
    accept_loss: bool,
) -> Result<Option<crate::store::Lost>> {
    let old = Sidecar::peek(fs, sidecar, header.store_id, header.segment_size);
    let mut lost = None;
    if let Some((old_sidecar, meta)) = &old {
        // Where an open that accepts any loss would end the log.
        let mut counts = Counts::default();
        let inspect = Mode::Inspect { accept_loss: true };
        let log_end = recover(file, layout, ScanStart::BEGINNING, inspect, &mut counts)?.end;
        if log_end < meta.covered {
            let old_counts = old_sidecar.stream_counts()?;
            let mut missing: Vec<(String, u64, u64)> = old_counts
                .into_iter()
                .filter_map(|(stream, had)| {
                    let has = counts.streams.get(&stream).copied().unwrap_or(0);
                    (has < had).then_some((stream, has, had))
                })
                .collect();
            missing.sort();
            let events: u64 = missing.iter().map(|(_, has, had)| had - has).sum();
            let description = describe_loss(meta.covered, log_end, events, &missing);
            if !accept_loss {
                return Err(Error::corrupt(
                    log_end,
                    format!(
                        "{description}. Restore the log from a backup; to rebuild the index \
                         anyway and accept the loss, run `annals rebuild-index --accept-loss`"
                    ),
                ));
            }
            tracing::warn!(%description, "annals: rebuilding the index of a log that lost acknowledged events, as asked");
            lost = Some(crate::store::Lost {
                index_covered: meta.covered,
                log_end,
                events,
                streams: missing,
                description,
            });
        }
    }
    drop(old);
    match fs.remove_file(sidecar) {
        Ok(()) => fs.sync_dir(parent(sidecar))?,
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(Error::io_at(sidecar, e)),
    }
    Ok(lost)
}

fn describe_loss(
    covered: u64,
    log_end: u64,
    events: u64,
    missing: &[(String, u64, u64)],
) -> String {
    let mut s = format!(
        "the log ends at {log_end}, before position {covered} that its old index covered: \
         {events} acknowledged event(s) are missing"
    );
    for (stream, has, had) in missing.iter().take(10) {
        s.push_str(&format!("; `{stream}` has {has} of {had}"));
    }
    if missing.len() > 10 {
        s.push_str(&format!("; and {} more streams", missing.len() - 10));
    }
    s
}

/// Counts events per stream while recovery scans (for [`rebuild_check`]).
#[derive(Default)]
struct Counts {
    streams: std::collections::HashMap<String, u64>,
}

impl Replay for Counts {
    fn commit(&mut self, events: &[RecoveredEvent]) -> Result<()> {
        for e in events {
            *self
                .streams
                .entry(EventRef::new(&e.bytes).stream().to_owned())
                .or_default() += 1;
        }
        Ok(())
    }
}
