//! The store against a model, in the manner of redb's fuzzer: fuzzer-chosen sequences of
//! appends (with every kind of expected version, retries of stored events, no events),
//! multi-stream transactions, reads of streams and of the log in both directions, index
//! flushes, reopens, process kills, power cuts under every crash policy, and injected I/O
//! errors, on the fault-injecting file system. After every step the store agrees with a plain
//! in-memory model: what was acknowledged is there, what failed with an unknown outcome is
//! there whole or not at all, nothing else is, and every read returns what the model says.
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;

use annals::storage::{CrashPolicy, FaultFs, FaultMode};
use annals::{Direction, Error, ExpectedVersion, NewEvent, Position, Store};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Exp {
    Any,
    NoStream,
    Exists,
    Current,
    Wrong,
    Max,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Append {
        stream: u8,
        exp: Exp,
        sizes: Vec<u16>,
    },
    Retry {
        exp: Exp,
    },
    Transaction(Vec<(u8, Exp, u8)>),
    ReadStream {
        stream: u8,
        from: u8,
        backwards: bool,
        limit: u8,
    },
    ReadAll {
        from: u16,
        backwards: bool,
        limit: u8,
    },
    Flush,
    Reopen,
    Kill,
    Crash {
        policy: u8,
        seed: u16,
    },
    Fail {
        after: u8,
        always: bool,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    ops: Vec<Op>,
}

/// One event as the model knows it.
#[derive(Debug, Clone, PartialEq)]
struct Ev {
    id: Uuid,
    stream: String,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Model {
    /// Events of each stream, in version order (acknowledged, or resolved after a reopen).
    streams: BTreeMap<String, Vec<Ev>>,
    /// Commits whose outcome is unknown (an I/O failure): resolved at the next open.
    maybe: Vec<Vec<Ev>>,
    /// Events in log order.
    log: Vec<Ev>,
    /// The last append, for retries.
    last: Option<(String, Vec<NewEvent>)>,
}

impl Model {
    fn version(&self, stream: &str) -> Option<u64> {
        self.streams
            .get(stream)
            .and_then(|s| (s.len() as u64).checked_sub(1))
    }

    fn expected(&self, stream: &str, exp: Exp) -> ExpectedVersion {
        match exp {
            Exp::Any => ExpectedVersion::Any,
            Exp::NoStream => ExpectedVersion::NoStream,
            Exp::Exists => ExpectedVersion::StreamExists,
            Exp::Current => match self.version(stream) {
                Some(v) => ExpectedVersion::Exact(v),
                None => ExpectedVersion::NoStream,
            },
            Exp::Wrong => ExpectedVersion::Exact(self.version(stream).map_or(7, |v| v + 3)),
            Exp::Max => ExpectedVersion::Exact(u64::MAX),
        }
    }

    fn commit(&mut self, parts: &[(String, Vec<Ev>)]) {
        for (stream, events) in parts {
            self.streams
                .entry(stream.clone())
                .or_default()
                .extend(events.iter().cloned());
            self.log.extend(events.iter().cloned());
        }
    }
}

const PATH: &str = "/m/store";

fn open(fs: &FaultFs) -> annals::Result<Store> {
    Store::builder()
        .file_system(fs.clone())
        .segment_size(64 * 1024)
        .index_flush_events(5)
        .open(PATH)
}

/// Whether an error leaves the outcome of the request unknown (an I/O failure).
fn unknown(e: &Error) -> bool {
    !matches!(
        e,
        Error::WrongExpectedVersion { .. }
            | Error::DuplicateEventId { .. }
            | Error::TooLarge { .. }
            | Error::InvalidArgument(_)
            | Error::InvalidStreamName { .. }
    )
}

/// Opens the store after a crash or reopen and resolves the model against it.
fn reconcile(fs: &FaultFs, model: &mut Model) -> Option<Store> {
    let store = match open(fs) {
        Ok(s) => s,
        // Only an armed fault may stop an open.
        Err(e) => {
            assert!(unknown(&e), "open refused: {e}");
            return None;
        }
    };
    let log: Vec<annals::RecordedEvent> = store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .expect("read_all")
        .collect::<Result<_, _>>()
        .expect("read_all");
    let present: HashMap<Uuid, &annals::RecordedEvent> = log.iter().map(|e| (e.id(), e)).collect();
    assert_eq!(present.len(), log.len(), "an id twice in the log");
    for e in &model.log {
        assert!(present.contains_key(&e.id), "lost acknowledged event {e:?}");
    }
    let mut resolved = Vec::new();
    for commit in std::mem::take(&mut model.maybe) {
        let n = commit
            .iter()
            .filter(|e| present.contains_key(&e.id))
            .count();
        assert!(n == 0 || n == commit.len(), "a commit is partly there");
        if n > 0 {
            resolved.extend(commit);
        }
    }
    let known: HashMap<Uuid, &Ev> = model
        .log
        .iter()
        .chain(&resolved)
        .map(|e| (e.id, e))
        .collect();
    // Rebuild the model in log order from what is there.
    let mut fresh = Model::default();
    for e in &log {
        let ev = known
            .get(&e.id())
            .unwrap_or_else(|| panic!("phantom event {e:?}"));
        assert_eq!(
            (e.stream(), e.payload()),
            (ev.stream.as_str(), &ev.payload[..])
        );
        fresh
            .streams
            .entry(ev.stream.clone())
            .or_default()
            .push((*ev).clone());
        fresh.log.push((*ev).clone());
    }
    for (stream, events) in &fresh.streams {
        for (v, e) in events.iter().enumerate() {
            let got = present[&e.id];
            assert_eq!(got.version(), v as u64, "versions of {stream}");
        }
        assert_eq!(
            store.stream_version(stream).unwrap(),
            Some(events.len() as u64 - 1)
        );
    }
    fresh.last = model.last.take();
    *model = fresh;
    Some(store)
}

/// Large buffers (a segment, a read chunk) come and go every run: keep them on the heap
/// instead of mapping and unmapping them each time (page faults dominated the profile).
fn init_malloc() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: mallopt only tunes the allocator's thresholds; called once, before any use here.
    ONCE.call_once(|| unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    });
    // redb may panic on a sidecar that a failed write left damaged; annals catches those
    // panics around every call into redb (and rebuilds the sidecar). libFuzzer's hook would
    // abort on them anyway: let those through, and abort on every other panic as before.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_redb = info.location().is_some_and(|l| l.file().contains("/redb-"));
            if !in_redb {
                abort(info);
            }
        }));
    });
}

fuzz_target!(|input: Input| {
    init_malloc();
    let mut fs = FaultFs::new();
    let mut model = Model::default();
    let Some(mut store) = reconcile(&fs, &mut model) else {
        return;
    };
    let mut poisoned = false;
    // At most 32 steps and 6 opens per run: breadth over depth (an open after a crash checks
    // the whole index sidecar, and is the slow step).
    let mut opens = 0;
    for op in input.ops.into_iter().take(32) {
        if matches!(op, Op::Reopen | Op::Kill | Op::Crash { .. }) {
            opens += 1;
            if opens > 6 {
                break;
            }
        }
        // After a failure with an unknown outcome the model is exact again only after the
        // next open; until then only opens, kills and power cuts are run.
        if poisoned && !matches!(op, Op::Reopen | Op::Kill | Op::Crash { .. }) {
            continue;
        }
        match op {
            Op::Append { stream, exp, sizes } => {
                let stream = format!("s-{}", stream % 4);
                let events: Vec<NewEvent> = sizes
                    .iter()
                    .take(5)
                    .map(|&n| NewEvent::new("E", vec![n as u8; usize::from(n % 3000)]))
                    .collect();
                let expected = model.expected(&stream, exp);
                let evs: Vec<Ev> = events
                    .iter()
                    .map(|e| Ev {
                        id: e.id,
                        stream: stream.clone(),
                        payload: e.payload.to_vec(),
                    })
                    .collect();
                let should = expected.matches(model.version(&stream));
                model.last = Some((stream.clone(), events.clone()));
                match store.append(&stream, expected, events) {
                    Ok(r) => {
                        assert!(should, "accepted against the model");
                        model.commit(&[(stream.clone(), evs)]);
                        assert_eq!(r.version, model.version(&stream));
                    }
                    Err(e) if unknown(&e) => {
                        poisoned = true;
                        if !evs.is_empty() {
                            model.maybe.push(evs);
                        }
                    }
                    Err(Error::WrongExpectedVersion { actual, .. }) => {
                        assert!(!should);
                        assert_eq!(actual, model.version(&stream));
                    }
                    Err(e) => panic!("append: {e}"),
                }
            }
            Op::Retry { exp } => {
                let Some((stream, events)) = model.last.clone() else {
                    continue;
                };
                if events.is_empty() {
                    continue;
                }
                let stored = model
                    .streams
                    .get(&stream)
                    .and_then(|s| s.iter().position(|e| e.id == events[0].id));
                let expected = model.expected(&stream, exp);
                match store.append(&stream, expected, events.clone()) {
                    Ok(_) => {
                        // Either a retry of what is stored there, or a fresh append.
                        if stored.is_none() {
                            let evs: Vec<Ev> = events
                                .iter()
                                .map(|e| Ev {
                                    id: e.id,
                                    stream: stream.clone(),
                                    payload: e.payload.to_vec(),
                                })
                                .collect();
                            model.commit(&[(stream, evs)]);
                        }
                    }
                    Err(e) if unknown(&e) => {
                        poisoned = true;
                        if stored.is_none() {
                            model.maybe.push(
                                events
                                    .iter()
                                    .map(|e| Ev {
                                        id: e.id,
                                        stream: stream.clone(),
                                        payload: e.payload.to_vec(),
                                    })
                                    .collect(),
                            );
                        }
                    }
                    Err(_) => {}
                }
            }
            Op::Transaction(parts) => {
                let mut tx = store.transaction();
                let mut evs = Vec::new();
                let mut versions: HashMap<String, Option<u64>> = HashMap::new();
                let mut should = true;
                for (s, exp, n) in parts.iter().take(3) {
                    let stream = format!("s-{}", s % 4);
                    let current = *versions
                        .entry(stream.clone())
                        .or_insert_with(|| model.version(&stream));
                    let expected = match exp {
                        Exp::Current => match current {
                            Some(v) => ExpectedVersion::Exact(v),
                            None => ExpectedVersion::NoStream,
                        },
                        other => model.expected(&stream, *other),
                    };
                    should &= expected.matches(current);
                    let events: Vec<NewEvent> = (0..n % 3)
                        .map(|k| NewEvent::new("T", vec![k; 40]))
                        .collect();
                    let count = events.len() as u64;
                    if count > 0 {
                        versions.insert(
                            stream.clone(),
                            Some(current.map_or(count - 1, |v| v + count)),
                        );
                    }
                    evs.push((
                        stream.clone(),
                        events
                            .iter()
                            .map(|e| Ev {
                                id: e.id,
                                stream: stream.clone(),
                                payload: e.payload.to_vec(),
                            })
                            .collect::<Vec<_>>(),
                    ));
                    tx = tx.append(&stream, expected, events);
                }
                match tx.commit() {
                    Ok(_) => {
                        assert!(should, "transaction accepted against the model");
                        model.commit(&evs);
                    }
                    Err(e) if unknown(&e) => {
                        poisoned = true;
                        let all: Vec<Ev> = evs.into_iter().flat_map(|(_, e)| e).collect();
                        if !all.is_empty() {
                            model.maybe.push(all);
                        }
                    }
                    Err(Error::WrongExpectedVersion { .. }) => assert!(!should),
                    Err(e) => panic!("transaction: {e}"),
                }
            }
            Op::ReadStream {
                stream,
                from,
                backwards,
                limit,
            } => {
                if !model.maybe.is_empty() {
                    continue;
                }
                let stream = format!("s-{}", stream % 4);
                let dir = if backwards {
                    Direction::Backwards
                } else {
                    Direction::Forwards
                };
                let Ok(read) = store.read_stream(&stream, u64::from(from), dir, usize::from(limit))
                else {
                    continue;
                };
                let got: Vec<Uuid> = read.map(|e| e.unwrap().id()).collect();
                let events = model.streams.get(&stream).cloned().unwrap_or_default();
                let want: Vec<Uuid> = if backwards {
                    let top = (usize::from(from) + 1).min(events.len());
                    events[..top]
                        .iter()
                        .rev()
                        .take(usize::from(limit))
                        .map(|e| e.id)
                        .collect()
                } else {
                    events
                        .iter()
                        .skip(usize::from(from))
                        .take(usize::from(limit))
                        .map(|e| e.id)
                        .collect()
                };
                assert_eq!(got, want, "read_stream {stream} from {from}");
            }
            Op::ReadAll {
                from,
                backwards,
                limit,
            } => {
                if !model.maybe.is_empty() {
                    continue;
                }
                let dir = if backwards {
                    Direction::Backwards
                } else {
                    Direction::Forwards
                };
                // Any position, frame boundary or not: reads start at the frame at or after
                // it (forwards) or holding it (backwards), and never return anything else.
                let from = Position::new(u64::from(from) * 8);
                let Ok(read) = store.read_all(from, dir, usize::from(limit)) else {
                    continue;
                };
                let got: Vec<Uuid> = read.map(|e| e.unwrap().id()).collect();
                let log: Vec<(u64, Uuid)> = store
                    .read_all(Position::START, Direction::Forwards, usize::MAX)
                    .unwrap()
                    .map(|e| e.map(|e| (e.position().as_u64(), e.id())).unwrap())
                    .collect();
                assert_eq!(
                    log.iter().map(|e| e.1).collect::<Vec<_>>(),
                    model.log.iter().map(|e| e.id).collect::<Vec<_>>()
                );
                let want: Vec<Uuid> = if backwards {
                    log.iter()
                        .rev()
                        .filter(|(p, _)| *p <= from.as_u64())
                        .take(usize::from(limit))
                        .map(|e| e.1)
                        .collect()
                } else {
                    log.iter()
                        .filter(|(p, _)| *p >= from.as_u64())
                        .take(usize::from(limit))
                        .map(|e| e.1)
                        .collect()
                };
                assert_eq!(got, want, "read_all {dir:?} from {from}");
            }
            Op::Flush => {
                if store.flush_index().is_err() {
                    poisoned = true;
                }
            }
            Op::Reopen | Op::Kill | Op::Crash { .. } => {
                let next = match op {
                    Op::Reopen => {
                        drop(store);
                        fs.clone()
                    }
                    Op::Kill => {
                        store.abandon();
                        fs.restart()
                    }
                    Op::Crash { policy, seed } => {
                        store.abandon();
                        let seed = u64::from(seed);
                        fs.crash(match policy % 6 {
                            0 => CrashPolicy::DropUnsynced,
                            1 => CrashPolicy::KeepAll,
                            2 => CrashPolicy::Random { seed },
                            3 => CrashPolicy::Sectors { seed },
                            4 => CrashPolicy::KeepFirst {
                                ops: (seed % 16) as usize,
                            },
                            _ => CrashPolicy::TearAt {
                                ops: (seed % 8) as usize,
                                bytes: seed as usize,
                            },
                        })
                    }
                    _ => unreachable!(),
                };
                fs = next;
                fs.clear_faults();
                store = match reconcile(&fs, &mut model) {
                    Some(s) => s,
                    None => return,
                };
                poisoned = false;
            }
            Op::Fail { after, always } => {
                let mode = if always {
                    FaultMode::Always
                } else {
                    FaultMode::Once
                };
                fs.fail_at(fs.op_count() + u64::from(after % 8), mode, ErrorKind::Other);
            }
        }
    }
    drop(store);
    fs.clear_faults();
    reconcile(&fs.crash(CrashPolicy::DropUnsynced), &mut model);
});
