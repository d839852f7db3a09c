//! In-memory files that remember what was synced, for crash and fault tests.
//!
//! Every change (a write, a length change, a created or removed directory entry) is first
//! *pending*; `sync_data` on a file makes that file's pending data changes durable, and
//! `sync_dir` makes the pending entry changes of that directory durable. [`FaultFs::crash`]
//! returns the file system as a machine would find it after a power cut: the durable state plus
//! the pending changes its [`CrashPolicy`] lets through (none, all, a prefix, a prefix with the
//! next write torn at a byte, a random subset with torn writes, or single 512-byte sectors in
//! any order). [`FaultFs::restart`] returns it as a new process finds it after the old one
//! died while the machine kept running: everything written is still visible, nothing more is
//! durable than before.
//!
//! [`FaultFs::fail_at`] makes the N-th fallible operation (counted from 0 over writes, syncs,
//! length changes, allocations, creates and removes) return an error, once or from then on.
//!
//! **A failed sync behaves as on Linux.** When `fdatasync` fails, the kernel reports the error
//! once and marks the dirty pages clean: their data stays readable from the page cache, but it
//! will never reach the disk unless it is written again, and the next sync "succeeds". So a
//! failing `sync_data` here drops the file's pending data changes from what a crash can keep
//! while leaving them visible to reads (in this process and after [`restart`](FaultFs::restart));
//! a later sync succeeds without making them durable.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{FileSystem, OpenMode, StorageFile};

/// Which pending (unsynced) changes survive a simulated crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Only what was synced survives.
    DropUnsynced,
    /// Everything written survives (a process crash: the OS still had it all).
    KeepAll,
    /// The first `ops` pending changes survive, in order.
    KeepFirst {
        /// How many pending changes survive.
        ops: usize,
    },
    /// The first `ops` pending changes survive, and the next one, if it is a write, survives
    /// only for its first `bytes` bytes.
    TearAt {
        /// How many pending changes survive whole.
        ops: usize,
        /// How many bytes of the next write survive.
        bytes: usize,
    },
    /// Each pending change independently survives, vanishes, or (for writes) is torn, decided
    /// by a generator seeded with `seed`: out-of-order write-back.
    Random {
        /// Seed of the decision sequence.
        seed: u64,
    },
    /// Every 512-byte sector of every pending write independently reaches the disk or not, and
    /// every other pending change survives or not, decided by a generator seeded with `seed`:
    /// a disk that persists sectors in any order.
    Sectors {
        /// Seed of the decision sequence.
        seed: u64,
    },
}

/// The unit in which [`CrashPolicy::Sectors`] persists writes.
pub const SECTOR: usize = 512;

/// Whether an injected failure happens once or from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Only the chosen operation fails.
    Once,
    /// The chosen operation and every later one fail (a dead disk).
    Always,
}

/// A fault-injecting in-memory file system: it forgets what was not synced at a
/// [`crash`](FaultFs::crash) (as the policy says) and fails the N-th operation on request
/// ([`fail_at`](FaultFs::fail_at)).
///
/// ```
/// use annals::storage::{CrashPolicy, FaultFs, FileSystem, OpenMode};
/// use std::path::Path;
///
/// let fs = FaultFs::new();
/// let f = fs.open(Path::new("/d/log"), OpenMode::CreateNew)?;
/// fs.sync_dir(Path::new("/d"))?;
/// f.write_all_at(b"synced", 0)?;
/// f.sync_data()?;
/// f.write_all_at(b"lost", 6)?;
/// let after = fs.crash(CrashPolicy::DropUnsynced);
/// let g = after.open(Path::new("/d/log"), OpenMode::Existing)?;
/// assert_eq!(g.len()?, 6);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct FaultFs {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    op_count: AtomicU64,
    sync_count: AtomicU64,
    next_handle: AtomicU64,
    /// False for [`super::MemoryFs`]: changes are durable at once and nothing is tracked.
    untracked: bool,
}

#[derive(Default)]
struct State {
    /// The namespace as the running program sees it.
    names: HashMap<PathBuf, NodeId>,
    /// The namespace as a crash would leave it, before pending entry changes.
    durable_names: HashMap<PathBuf, NodeId>,
    nodes: HashMap<NodeId, Node>,
    pending: Vec<Pending>,
    fault: Option<Fault>,
    /// Total bytes the files may occupy; growing past it fails with `StorageFull`.
    capacity: Option<u64>,
    next_node: NodeId,
}

type NodeId = u64;

#[derive(Default, Clone)]
struct Node {
    current: Vec<u8>,
    durable: Vec<u8>,
    locked_by: Option<u64>,
    /// Handles holding a shared lock.
    shared_by: Vec<u64>,
}

#[derive(Clone)]
enum Pending {
    Write {
        node: NodeId,
        offset: u64,
        data: Vec<u8>,
    },
    SetLen {
        node: NodeId,
        len: u64,
    },
    Create {
        path: PathBuf,
        node: NodeId,
    },
    Remove {
        path: PathBuf,
    },
}

#[derive(Clone, Copy)]
struct Fault {
    at: u64,
    mode: FaultMode,
    kind: io::ErrorKind,
}

impl State {
    fn used(&self) -> u64 {
        let live: std::collections::HashSet<_> = self.names.values().collect();
        live.iter()
            .map(|id| self.nodes[id].current.len() as u64)
            .sum()
    }
}

impl fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("FaultFs")
            .field("files", &state.names.keys().collect::<Vec<_>>())
            .field("pending", &state.pending.len())
            .field("ops", &self.op_count())
            .finish()
    }
}

impl FaultFs {
    /// An empty file system.
    pub fn new() -> FaultFs {
        FaultFs::default()
    }

    pub(super) fn untracked() -> FaultFs {
        FaultFs {
            inner: Arc::new(Inner {
                untracked: true,
                ..Inner::default()
            }),
        }
    }

    /// How many fallible operations have run so far.
    pub fn op_count(&self) -> u64 {
        self.inner.op_count.load(Ordering::SeqCst)
    }

    /// How many syncs (of files and folders, failed ones included) have run so far.
    pub fn sync_count(&self) -> u64 {
        self.inner.sync_count.load(Ordering::SeqCst)
    }

    /// Number of changes not yet made durable by a sync.
    pub fn pending_count(&self) -> usize {
        self.inner.state.lock().pending.len()
    }

    /// Makes operation number `at` (counted by [`op_count`](Self::op_count)) fail with an
    /// error of `kind`, once or from then on.
    pub fn fail_at(&self, at: u64, mode: FaultMode, kind: io::ErrorKind) {
        self.inner.state.lock().fault = Some(Fault { at, mode, kind });
    }

    /// Removes any injected failure.
    pub fn clear_faults(&self) {
        self.inner.state.lock().fault = None;
    }

    /// Limits the total size of all files (`None`: unlimited). A write or length change that
    /// would grow the files past it fails with `StorageFull`, as on a full disk.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.inner.state.lock().capacity = bytes;
    }

    /// Total size of all files.
    pub fn used_bytes(&self) -> u64 {
        let state = self.inner.state.lock();
        state.used()
    }

    /// The file system as a new process finds it after this one died while the machine kept
    /// running (`kill -9`): every change is still visible, the durable state and the pending
    /// changes are as they were (so a later [`crash`](Self::crash) still loses what was never
    /// synced, and what a failed sync dropped). No locks are held, no faults are armed, and the
    /// operation count starts again at 0; this file system is left as it was.
    pub fn restart(&self) -> FaultFs {
        let state = self.inner.state.lock();
        let nodes = state
            .nodes
            .iter()
            .map(|(id, n)| {
                (
                    *id,
                    Node {
                        locked_by: None,
                        shared_by: Vec::new(),
                        ..n.clone()
                    },
                )
            })
            .collect();
        let fresh = State {
            names: state.names.clone(),
            durable_names: state.durable_names.clone(),
            nodes,
            pending: state.pending.clone(),
            fault: None,
            capacity: state.capacity,
            next_node: state.next_node,
        };
        FaultFs {
            inner: Arc::new(Inner {
                state: Mutex::new(fresh),
                ..Inner::default()
            }),
        }
    }

    /// The file system as found after a power cut now: durable state plus the pending changes
    /// `policy` lets through. The result is a fresh file system (no locks held, no faults,
    /// nothing pending); this one is left as it was.
    pub fn crash(&self, policy: CrashPolicy) -> FaultFs {
        let state = self.inner.state.lock();
        let mut names = state.durable_names.clone();
        let mut contents: HashMap<NodeId, Vec<u8>> = state
            .nodes
            .iter()
            .map(|(id, n)| (*id, n.durable.clone()))
            .collect();
        let mut rng = SplitMix(match policy {
            CrashPolicy::Random { seed } | CrashPolicy::Sectors { seed } => seed,
            _ => 0,
        });
        for (i, op) in state.pending.iter().enumerate() {
            if let (CrashPolicy::Sectors { .. }, Pending::Write { node, offset, data }) =
                (policy, op)
            {
                // Each sector of the write (at absolute 512-byte boundaries) on its own.
                let end = offset + data.len() as u64;
                let mut at = *offset;
                while at < end {
                    let sector_end = ((at / SECTOR as u64) + 1) * SECTOR as u64;
                    let to = sector_end.min(end);
                    if rng.next().is_multiple_of(2) {
                        let part = &data[(at - offset) as usize..(to - offset) as usize];
                        write_into(contents.entry(*node).or_default(), at, part);
                    }
                    at = to;
                }
                continue;
            }
            let keep = match policy {
                CrashPolicy::DropUnsynced => Keep::No,
                CrashPolicy::KeepAll => Keep::Whole,
                CrashPolicy::KeepFirst { ops } => {
                    if i < ops {
                        Keep::Whole
                    } else {
                        Keep::No
                    }
                }
                CrashPolicy::TearAt { ops, bytes } => match i.cmp(&ops) {
                    std::cmp::Ordering::Less => Keep::Whole,
                    std::cmp::Ordering::Equal => Keep::Prefix(bytes),
                    std::cmp::Ordering::Greater => Keep::No,
                },
                CrashPolicy::Random { .. } => match rng.next() % 4 {
                    0 => Keep::No,
                    1 => Keep::Prefix(rng.next() as usize),
                    _ => Keep::Whole,
                },
                CrashPolicy::Sectors { .. } => {
                    if rng.next().is_multiple_of(4) {
                        Keep::No
                    } else {
                        Keep::Whole
                    }
                }
            };
            apply(op, keep, &mut names, &mut contents);
        }
        let mut fresh = State::default();
        let mut remap = HashMap::new();
        for (path, old) in names {
            let id = *remap.entry(old).or_insert_with(|| {
                fresh.next_node += 1;
                fresh.next_node
            });
            let data = contents.get(&old).cloned().unwrap_or_default();
            fresh.nodes.entry(id).or_insert_with(|| Node {
                current: data.clone(),
                durable: data,
                locked_by: None,
                shared_by: Vec::new(),
            });
            fresh.names.insert(path.clone(), id);
            fresh.durable_names.insert(path, id);
        }
        FaultFs {
            inner: Arc::new(Inner {
                state: Mutex::new(fresh),
                ..Inner::default()
            }),
        }
    }

    /// Counts an operation and decides whether it fails.
    fn tick(&self, state: &mut State) -> io::Result<()> {
        let n = self.inner.op_count.fetch_add(1, Ordering::SeqCst);
        if let Some(fault) = state.fault {
            let hit = match fault.mode {
                FaultMode::Once => n == fault.at,
                FaultMode::Always => n >= fault.at,
            };
            if hit {
                return Err(io::Error::new(
                    fault.kind,
                    format!("injected fault at operation {n}"),
                ));
            }
        }
        Ok(())
    }

    fn handle(&self, node: NodeId, read_only: bool) -> Arc<dyn StorageFile> {
        Arc::new(FaultFile {
            fs: self.clone(),
            node,
            handle: self.inner.next_handle.fetch_add(1, Ordering::SeqCst),
            read_only,
        })
    }
}

enum Keep {
    No,
    Whole,
    Prefix(usize),
}

fn apply(
    op: &Pending,
    keep: Keep,
    names: &mut HashMap<PathBuf, NodeId>,
    contents: &mut HashMap<NodeId, Vec<u8>>,
) {
    if matches!(keep, Keep::No) {
        return;
    }
    match op {
        Pending::Write { node, offset, data } => {
            let n = match keep {
                Keep::Prefix(b) => b % (data.len() + 1),
                _ => data.len(),
            };
            write_into(contents.entry(*node).or_default(), *offset, &data[..n]);
        }
        Pending::SetLen { node, len } => {
            contents.entry(*node).or_default().resize(*len as usize, 0);
        }
        Pending::Create { path, node } => {
            names.insert(path.clone(), *node);
        }
        Pending::Remove { path } => {
            names.remove(path);
        }
    }
}

fn write_into(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[start..end].copy_from_slice(data);
}

/// A small deterministic generator (SplitMix64) for [`CrashPolicy::Random`].
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl FileSystem for FaultFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = self.inner.state.lock();
        match (mode, state.names.get(path).copied()) {
            (OpenMode::Existing, Some(node)) => Ok(self.handle(node, false)),
            (OpenMode::ReadOnly, Some(node)) => Ok(self.handle(node, true)),
            (OpenMode::Existing | OpenMode::ReadOnly, None) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", path.display()),
            )),
            (OpenMode::CreateNew, Some(_)) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            )),
            (OpenMode::CreateNew, None) => {
                self.tick(&mut state)?;
                state.next_node += 1;
                let node = state.next_node;
                state.nodes.insert(node, Node::default());
                state.names.insert(path.to_owned(), node);
                if self.inner.untracked {
                    state.durable_names.insert(path.to_owned(), node);
                } else {
                    state.pending.push(Pending::Create {
                        path: path.to_owned(),
                        node,
                    });
                }
                Ok(self.handle(node, false))
            }
        }
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        Ok(self.inner.state.lock().names.contains_key(path))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.inner.state.lock();
        if !state.names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", path.display()),
            ));
        }
        self.tick(&mut state)?;
        state.names.remove(path);
        if self.inner.untracked {
            state.durable_names.remove(path);
        } else {
            state.pending.push(Pending::Remove {
                path: path.to_owned(),
            });
        }
        Ok(())
    }

    fn rename_no_replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.inner.state.lock();
        if state.names.contains_key(to) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", to.display()),
            ));
        }
        let Some(&node) = state.names.get(from) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", from.display()),
            ));
        };
        self.tick(&mut state)?;
        state.names.remove(from);
        state.names.insert(to.to_owned(), node);
        if self.inner.untracked {
            state.durable_names.remove(from);
            state.durable_names.insert(to.to_owned(), node);
        } else {
            state.pending.push(Pending::Create {
                path: to.to_owned(),
                node,
            });
            state.pending.push(Pending::Remove {
                path: from.to_owned(),
            });
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_count.fetch_add(1, Ordering::SeqCst);
        let mut state = self.inner.state.lock();
        self.tick(&mut state)?;
        let State {
            pending,
            durable_names,
            ..
        } = &mut *state;
        pending.retain(|op| match op {
            Pending::Create { path, node } if path.parent() == Some(dir) => {
                durable_names.insert(path.clone(), *node);
                false
            }
            Pending::Remove { path } if path.parent() == Some(dir) => {
                durable_names.remove(path);
                false
            }
            _ => true,
        });
        Ok(())
    }
}

struct FaultFile {
    fs: FaultFs,
    node: NodeId,
    handle: u64,
    read_only: bool,
}

impl fmt::Debug for FaultFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultFile(node {})", self.node)
    }
}

impl FaultFile {
    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the file is open read-only",
            ));
        }
        Ok(())
    }

    fn with_node<T>(&self, f: impl FnOnce(&mut Node) -> T) -> T {
        let mut state = self.fs.inner.state.lock();
        let node = state
            .nodes
            .get_mut(&self.node)
            .expect("node of an open handle");
        f(node)
    }

    /// Runs a fallible change: counts it, may fail it, applies it now and records it pending.
    fn change(&self, op: Change<'_>) -> io::Result<()> {
        self.writable()?;
        let mut state = self.fs.inner.state.lock();
        self.fs.tick(&mut state)?;
        if let Some(capacity) = state.capacity {
            let len = state.nodes[&self.node].current.len() as u64;
            let new_len = match op {
                Change::Write { offset, data } => len.max(offset + data.len() as u64),
                Change::SetLen(len) => len,
            };
            if new_len > len && state.used() + (new_len - len) > capacity {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on device",
                ));
            }
        }
        let node = state
            .nodes
            .get_mut(&self.node)
            .expect("node of an open handle");
        match op {
            Change::Write { offset, data } => write_into(&mut node.current, offset, data),
            Change::SetLen(len) => node.current.resize(len as usize, 0),
        }
        // Untracked files (those of `MemoryFs`) keep only what is visible: everything is
        // durable at once, and they never crash.
        if !self.fs.inner.untracked {
            let pending = match op {
                Change::Write { offset, data } => Pending::Write {
                    node: self.node,
                    offset,
                    data: data.to_vec(),
                },
                Change::SetLen(len) => Pending::SetLen {
                    node: self.node,
                    len,
                },
            };
            state.pending.push(pending);
        }
        Ok(())
    }
}

/// A change to one file, borrowed (copied only when it must be remembered as pending).
#[derive(Clone, Copy)]
enum Change<'a> {
    Write { offset: u64, data: &'a [u8] },
    SetLen(u64),
}

impl StorageFile for FaultFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.with_node(|n| n.current.len() as u64))
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with_node(|n| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            match start.checked_add(buf.len()) {
                Some(end) if end <= n.current.len() => {
                    buf.copy_from_slice(&n.current[start..end]);
                    Ok(())
                }
                _ => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                )),
            }
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.change(Change::Write { offset, data: buf })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.inner.sync_count.fetch_add(1, Ordering::SeqCst);
        let mut state = self.fs.inner.state.lock();
        if let Err(e) = self.fs.tick(&mut state) {
            // Linux: the failed write-back's pages are marked clean. Their data stays readable
            // but no later sync will write it: it is no longer pending, and not durable.
            let node = self.node;
            state.pending.retain(|op| match op {
                Pending::Write { node: id, .. } | Pending::SetLen { node: id, .. } => *id != node,
                _ => true,
            });
            return Err(e);
        }
        let State { pending, nodes, .. } = &mut *state;
        let node = nodes.get_mut(&self.node).expect("node of an open handle");
        pending.retain(|op| match op {
            Pending::Write {
                node: id,
                offset,
                data,
            } if *id == self.node => {
                write_into(&mut node.durable, *offset, data);
                false
            }
            Pending::SetLen { node: id, len } if *id == self.node => {
                node.durable.resize(*len as usize, 0);
                false
            }
            _ => true,
        });
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(Change::SetLen(len))
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable()?;
        let end = offset.saturating_add(len);
        if self.len()? >= end {
            let mut state = self.fs.inner.state.lock();
            return self.fs.tick(&mut state);
        }
        self.set_len(end)
    }

    fn try_lock(&self) -> io::Result<bool> {
        self.with_node(|n| {
            let others_share = n.shared_by.iter().any(|&h| h != self.handle);
            match n.locked_by {
                Some(h) if h != self.handle => Ok(false),
                _ if others_share => Ok(false),
                _ => {
                    n.locked_by = Some(self.handle);
                    Ok(true)
                }
            }
        })
    }

    fn try_lock_shared(&self) -> io::Result<bool> {
        self.with_node(|n| match n.locked_by {
            Some(h) if h != self.handle => Ok(false),
            _ => {
                if !n.shared_by.contains(&self.handle) {
                    n.shared_by.push(self.handle);
                }
                Ok(true)
            }
        })
    }

    fn unlock(&self) -> io::Result<()> {
        self.with_node(|n| {
            if n.locked_by == Some(self.handle) {
                n.locked_by = None;
            }
            n.shared_by.retain(|&h| h != self.handle);
        });
        Ok(())
    }

    fn map(&self, _offset: u64, _len: usize) -> io::Result<Option<memmap2::MmapRaw>> {
        Ok(None)
    }
}

impl Drop for FaultFile {
    fn drop(&mut self) {
        let mut state = self.fs.inner.state.lock();
        if let Some(node) = state.nodes.get_mut(&self.node) {
            if node.locked_by == Some(self.handle) {
                node.locked_by = None;
            }
            node.shared_by.retain(|&h| h != self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(fs: &FaultFs, path: &str) -> Arc<dyn StorageFile> {
        let f = fs.open(Path::new(path), OpenMode::CreateNew).unwrap();
        fs.sync_dir(Path::new(path).parent().unwrap()).unwrap();
        f
    }

    fn contents(fs: &FaultFs, path: &str) -> Option<Vec<u8>> {
        let f = fs.open(Path::new(path), OpenMode::Existing).ok()?;
        let mut buf = vec![0; f.len().unwrap() as usize];
        f.read_exact_at(&mut buf, 0).unwrap();
        Some(buf)
    }

    #[test]
    fn unsynced_writes_are_dropped_and_synced_ones_kept() {
        let fs = FaultFs::new();
        let f = file(&fs, "/d/a");
        f.write_all_at(b"one", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"two", 3).unwrap();
        assert_eq!(
            contents(&fs.crash(CrashPolicy::DropUnsynced), "/d/a").unwrap(),
            b"one"
        );
        assert_eq!(
            contents(&fs.crash(CrashPolicy::KeepAll), "/d/a").unwrap(),
            b"onetwo"
        );
        assert_eq!(
            contents(&fs.crash(CrashPolicy::TearAt { ops: 0, bytes: 2 }), "/d/a").unwrap(),
            b"onetw"
        );
    }

    #[test]
    fn unsynced_directory_entries_vanish() {
        let fs = FaultFs::new();
        let f = fs.open(Path::new("/d/new"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        assert!(contents(&fs.crash(CrashPolicy::DropUnsynced), "/d/new").is_none());
        fs.sync_dir(Path::new("/d")).unwrap();
        assert_eq!(
            contents(&fs.crash(CrashPolicy::DropUnsynced), "/d/new").unwrap(),
            b"x"
        );
    }

    #[test]
    fn nth_operation_fails_once_or_always() {
        let fs = FaultFs::new();
        let f = file(&fs, "/d/a");
        let base = fs.op_count();
        fs.fail_at(base + 1, FaultMode::Once, io::ErrorKind::Other);
        assert!(f.write_all_at(b"a", 0).is_ok());
        assert!(f.write_all_at(b"b", 1).is_err());
        assert!(f.write_all_at(b"c", 2).is_ok());
        fs.fail_at(fs.op_count(), FaultMode::Always, io::ErrorKind::StorageFull);
        let e = f.sync_data().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(f.write_all_at(b"d", 3).is_err());
    }

    #[test]
    fn locks_are_per_handle_and_released_on_drop() {
        let fs = FaultFs::new();
        let a = file(&fs, "/d/a");
        let b = fs.open(Path::new("/d/a"), OpenMode::Existing).unwrap();
        assert!(a.try_lock().unwrap());
        assert!(!b.try_lock().unwrap());
        drop(a);
        assert!(b.try_lock().unwrap());
    }

    #[test]
    fn random_policy_is_deterministic() {
        let fs = FaultFs::new();
        let f = file(&fs, "/d/a");
        for i in 0..20u8 {
            f.write_all_at(&[i + 1; 7], u64::from(i) * 7).unwrap();
        }
        let a = contents(&fs.crash(CrashPolicy::Random { seed: 7 }), "/d/a");
        let b = contents(&fs.crash(CrashPolicy::Random { seed: 7 }), "/d/a");
        assert_eq!(a, b);
        let all = contents(&fs.crash(CrashPolicy::KeepAll), "/d/a").unwrap();
        assert_ne!(
            a.unwrap(),
            all,
            "seed 7 drops or tears at least one of 20 writes"
        );
    }

    #[test]
    fn a_failed_sync_drops_its_data_from_the_disk_but_not_from_reads() {
        let fs = FaultFs::new();
        let f = file(&fs, "/d/a");
        f.write_all_at(b"kept", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"lost", 4).unwrap();
        fs.fail_at(fs.op_count(), FaultMode::Once, io::ErrorKind::Other);
        assert!(f.sync_data().is_err());
        // Still readable (the page cache), in this process and in a new one ...
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"keptlost");
        assert_eq!(contents(&fs.restart(), "/d/a").unwrap(), b"keptlost");
        // ... the next sync succeeds, but the failed bytes never reach the disk ...
        f.sync_data().unwrap();
        assert_eq!(
            contents(&fs.crash(CrashPolicy::KeepAll), "/d/a").unwrap(),
            b"kept"
        );
        assert_eq!(
            contents(&fs.restart().crash(CrashPolicy::KeepAll), "/d/a").unwrap(),
            b"kept"
        );
        // ... unless they are written again.
        f.write_all_at(b"lost", 4).unwrap();
        f.sync_data().unwrap();
        assert_eq!(
            contents(&fs.crash(CrashPolicy::DropUnsynced), "/d/a").unwrap(),
            b"keptlost"
        );
    }

    #[test]
    fn a_restart_keeps_what_is_visible_and_what_is_pending() {
        let fs = FaultFs::new();
        let f = file(&fs, "/d/a");
        f.write_all_at(b"synced", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"+cache", 6).unwrap();
        assert!(f.try_lock().unwrap());
        let after = fs.restart();
        let g = after.open(Path::new("/d/a"), OpenMode::Existing).unwrap();
        assert!(g.try_lock().unwrap(), "a dead process holds no lock");
        assert_eq!(contents(&after, "/d/a").unwrap(), b"synced+cache");
        assert_eq!(after.pending_count(), 1);
        assert_eq!(
            contents(&after.crash(CrashPolicy::DropUnsynced), "/d/a").unwrap(),
            b"synced"
        );
    }

    #[test]
    fn sectors_persist_independently_and_deterministically() {
        let fs = FaultFs::new();
        let f = file(&fs, "/d/a");
        f.set_len(8 * SECTOR as u64).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(&[0xFF; 8 * SECTOR], 0).unwrap();
        let mut mixed = false;
        for seed in 0..20 {
            let a = contents(&fs.crash(CrashPolicy::Sectors { seed }), "/d/a").unwrap();
            let b = contents(&fs.crash(CrashPolicy::Sectors { seed }), "/d/a").unwrap();
            assert_eq!(a, b);
            let sectors: Vec<bool> = a.chunks(SECTOR).map(|c| c[0] == 0xFF).collect();
            for (k, c) in a.chunks(SECTOR).enumerate() {
                assert!(
                    c.iter().all(|&x| x == c[0]),
                    "sector {k} is whole or absent"
                );
            }
            mixed |= sectors.windows(2).any(|w| !w[0] && w[1]);
        }
        assert!(
            mixed,
            "a later sector survives where an earlier one does not"
        );
    }

    #[test]
    fn read_only_handles_change_nothing() {
        let fs = FaultFs::new();
        let _ = file(&fs, "/d/a");
        let r = fs.open(Path::new("/d/a"), OpenMode::ReadOnly).unwrap();
        assert_eq!(
            r.write_all_at(b"x", 0).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        assert!(r.set_len(10).is_err());
        assert!(r.allocate(0, 10).is_err());
        assert!(r.try_lock_shared().unwrap());
        let w = fs.open(Path::new("/d/a"), OpenMode::Existing).unwrap();
        assert!(!w.try_lock().unwrap(), "a shared lock keeps writers out");
        r.unlock().unwrap();
        assert!(w.try_lock().unwrap());
        assert!(
            !r.try_lock_shared().unwrap(),
            "and a writer keeps readers out"
        );
    }
}
