//! Opening a store: create it if asked, lock it, check its header, open (or rebuild) the index,
//! run recovery, and start the writer and the background threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::background::Background;
use super::commit::{Committer, Poison};
use super::{Counters, RecoveryReport, Shared, Store, StoreBuilder};
use crate::error::{Error, Result};
use crate::index::{Committed, Index, PartIndex, StreamInfo, parent, sidecar_path};
use crate::log::Layout;
use crate::log::format::{EventRef, FileHeader, HEADER_BLOCK, HEADER_LEN, HeaderError};
use crate::log::reader::LogReader;
use crate::log::recovery::{RecoveredEvent, ScanStart, recover};
use crate::log::writer::LogWriter;
use crate::storage::{FileSystem, OpenMode, StorageFile, is_not_found};

impl Store {
    pub(crate) fn open_with(options: StoreBuilder, path: &Path) -> Result<Store> {
        let fs = options.fs.clone();
        let path = store_path(path);
        let (file, created) = match fs.open(&path, OpenMode::Existing) {
            Ok(f) => (f, false),
            Err(e) if is_not_found(&e) && options.create => {
                create(&*fs, &path, options.segment_size)?
            }
            Err(e) => return Err(e.into()),
        };
        if !file.try_lock()? {
            return Err(Error::Locked { path });
        }
        let header = read_header(&*file, &path)?;
        if options.rebuild_index {
            match fs.remove_file(&sidecar_path(&path)) {
                Ok(()) => fs.sync_dir(crate::index::parent(&path))?,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let layout = Layout {
            segment_size: header.segment_size,
        };
        let (index, start, index_rebuilt) = Index::open(
            &fs,
            &sidecar_path(&path),
            header.store_id,
            options.index_cache_bytes,
            options.index_flush_events,
        )?;
        if let Some(reason) = &index_rebuilt {
            tracing::info!(path = %path.display(), reason = %reason, "annals: rebuilding the index sidecar from the log");
        }
        // A store this open created holds nothing but zeros after its header.
        let scan = ScanStart {
            clean: start.clean || (created && start.position == Layout::FIRST),
            ..start
        };
        let recovered = recover(&file, layout, scan, |events| replay(&index, events))?;
        let committed = Committed {
            end: recovered.end,
            last_frame: recovered.last_frame,
        };
        index.apply(&[], committed)?;
        // A store opened clean stays marked clean in the sidecar until its first write: the
        // committer clears the mark durably before writing anything to the log (reopening a
        // store only to read it then writes nothing).
        let mut writer = LogWriter::new(
            file.clone(),
            layout,
            recovered.end,
            recovered.last_frame,
            recovered.allocated_end,
        );
        writer.prepare_next();
        let durable = writer.durable().clone();
        let index = Arc::new(index);
        let shared = Arc::new(Shared {
            reader: LogReader::new(file.clone(), layout, true),
            committer: Committer::new(writer),
            path,
            header,
            layout,
            file,
            index,
            poison: Arc::new(Poison::default()),
            durability: options.durability,
            max_event_size: options.max_event_size,
            durable,
            flush_jobs: Mutex::new(None),
            recovery: RecoveryReport {
                index_covered: crate::Position::new(start.position),
                index_rebuilt,
                commits_replayed: recovered.commits,
                truncated: recovered.truncated,
            },
            counters: Counters::default(),
            codec: options.codec,
            upcasters: parking_lot::RwLock::new(options.upcasters.clone()),
            registry: parking_lot::RwLock::new(options.registry.clone()),
            subscribers: Default::default(),
            appended: Default::default(),
            appended_waiters: Default::default(),
            marked_clean: std::sync::atomic::AtomicBool::new(start.clean),
        });
        let background = Background::start(&shared)?;
        Ok(Store {
            shared,
            background: Mutex::new(background),
        })
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
) -> Result<(Arc<dyn StorageFile>, bool)> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".creating-{}", uuid::Uuid::new_v4().simple()));
    let tmp = PathBuf::from(tmp);
    let file = fs.open(&tmp, OpenMode::CreateNew)?;
    let header = FileHeader {
        format_version: crate::log::format::FORMAT_VERSION,
        store_id: uuid::Uuid::new_v4().into_bytes(),
        segment_size,
        created_at: crate::types::nanos_since_epoch(std::time::SystemTime::now()),
    };
    let mut block = vec![0u8; HEADER_BLOCK as usize];
    block[..HEADER_LEN].copy_from_slice(&header.encode());
    let written = file
        .write_all_at(&block, 0)
        .and_then(|()| file.allocate(HEADER_BLOCK, segment_size))
        .and_then(|()| file.sync_all());
    drop(file);
    let linked = written.and_then(|()| fs.rename_no_replace(&tmp, path));
    let _ = fs.remove_file(&tmp);
    let created = match linked {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e.into()),
    };
    fs.sync_dir(parent(path))?;
    Ok((fs.open(path, OpenMode::Existing)?, created))
}

pub(crate) fn read_header(file: &dyn StorageFile, path: &Path) -> Result<FileHeader> {
    let len = file.len()?.min(HEADER_LEN as u64) as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
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

/// Indexes one recovered commit, checking that its versions follow the index's.
fn replay(index: &Index, events: &[RecoveredEvent]) -> Result<()> {
    let last = events.last().expect("a commit has frames");
    let committed = Committed {
        end: last.position + last.bytes.len() as u64,
        last_frame: Some(last.position),
    };
    let view = |i: usize| EventRef::new(&events[i].bytes);
    let mut i = 0;
    while i < events.len() {
        let stream = view(i).stream();
        let mut j = i + 1;
        while j < events.len() && view(j).stream() == stream {
            j += 1;
        }
        let before: StreamInfo = index.stream_info(stream)?;
        for (k, e) in events[i..j].iter().enumerate() {
            let expected = before.count + k as u64;
            let version = EventRef::new(&e.bytes).version();
            if version != expected {
                return Err(Error::corrupt(
                    e.position,
                    format!(
                        "event of stream `{stream}` has version {version} where the index expects {expected}"
                    ),
                ));
            }
        }
        let frames = events[i..j].iter().map(|e| {
            let v = EventRef::new(&e.bytes);
            let id = u128::from_be_bytes(v.event_id());
            (
                e.position,
                std::borrow::Cow::Owned(v.event_type().to_owned()),
                id,
            )
        });
        let end = events[j - 1].position + events[j - 1].bytes.len() as u64;
        let part = PartIndex::new(Arc::from(stream), before, frames, end);
        index.apply(&[part], committed)?;
        i = j;
    }
    if let Some(job) = index.freeze(false) {
        index.write_frozen(job)?;
    }
    Ok(())
}
