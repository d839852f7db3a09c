//! Model test: random sequences of appends (with expected versions, several streams,
//! multi-stream transactions), reads, index flushes, reopens and simulated power cuts, a
//! catch-up subscription polled and checkpointed, an outbox run, and a synchronous
//! subscription, compared after every step with a plain in-memory model.

use std::collections::BTreeMap;

use std::sync::{Arc, Mutex};

use annals::outbox::{Outbox, OutboxMessage, OutboxOptions};
use annals::storage::{CrashPolicy, FaultFs};
use annals::subscriptions::CatchUpStart;
use annals::subscriptions::Filter;
use annals::{Direction, Error, ExpectedVersion, NewEvent, Position, RecordedEvent, Store};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
enum Exp {
    Any,
    NoStream,
    Exists,
    Current,
    Wrong,
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8, Exp, Vec<u16>),
    Transaction(Vec<(u8, Exp, Vec<u16>)>),
    ReadStream {
        stream: u8,
        from: u8,
        backwards: bool,
        limit: u8,
    },
    ReadAll {
        from: u8,
        backwards: bool,
        limit: u8,
    },
    FlushIndex,
    Reopen,
    Crash(u8, u64),
    /// Poll the catch-up subscription for at most this many events.
    Poll(u8),
    /// Checkpoint the catch-up subscription where it is.
    Checkpoint,
    /// One round of the outbox.
    RunOutbox,
}

fn exp() -> impl Strategy<Value = Exp> {
    prop_oneof![
        1 => Just(Exp::Any),
        1 => Just(Exp::NoStream),
        1 => Just(Exp::Exists),
        3 => Just(Exp::Current),
        1 => Just(Exp::Wrong)
    ]
}

fn sizes() -> impl Strategy<Value = Vec<u16>> {
    prop::collection::vec(prop_oneof![4 => 0u16..200, 1 => 1000u16..6000], 1..6)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..5, exp(), sizes()).prop_map(|(s, e, z)| Op::Append(s, e, z)),
        2 => prop::collection::vec((0u8..5, exp(), sizes()), 1..4).prop_map(Op::Transaction),
        2 => (0u8..5, 0u8..30, any::<bool>(), 0u8..12)
            .prop_map(|(stream, from, backwards, limit)| Op::ReadStream { stream, from, backwards, limit }),
        2 => (any::<u8>(), any::<bool>(), 0u8..12).prop_map(|(from, backwards, limit)| Op::ReadAll { from, backwards, limit }),
        1 => Just(Op::FlushIndex),
        1 => Just(Op::Reopen),
        1 => (0u8..6, any::<u64>()).prop_map(|(k, seed)| Op::Crash(k, seed)),
        2 => (0u8..10).prop_map(Op::Poll),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::RunOutbox),
    ]
}

#[derive(Default)]
struct Model {
    streams: BTreeMap<String, Vec<Uuid>>,
    log: Vec<Uuid>,
    /// Ids of published events, in log order.
    published: Vec<Uuid>,
    /// Events of the log the catch-up subscription has handed out, and where its checkpoint is.
    cursor: usize,
    checkpoint: usize,
    /// Published events the outbox has delivered.
    delivered: usize,
}

impl Model {
    fn add(&mut self, events: &[NewEvent]) {
        self.log.extend(events.iter().map(|e| e.id));
        self.published
            .extend(events.iter().filter(|e| e.publish).map(|e| e.id));
    }
}

impl Model {
    fn version(&self, stream: &str) -> Option<u64> {
        self.streams.get(stream).map(|v| v.len() as u64 - 1)
    }

    fn expected(&self, stream: &str, e: Exp) -> ExpectedVersion {
        let v = self.version(stream);
        match e {
            Exp::Any => ExpectedVersion::Any,
            Exp::NoStream => ExpectedVersion::NoStream,
            Exp::Exists => ExpectedVersion::StreamExists,
            Exp::Current => v.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact),
            Exp::Wrong => ExpectedVersion::Exact(v.map_or(0, |v| v + 1)),
        }
    }
}

fn name(s: u8) -> String {
    format!("stream-{s}")
}

fn events(sizes: &[u16]) -> Vec<NewEvent> {
    sizes
        .iter()
        .map(|&n| {
            let payload = format!("{{\"n\": {n}, \"pad\": \"{}\"}}", "x".repeat(n.into()));
            NewEvent::new("E", payload).published(n % 3 == 0)
        })
        .collect()
}

fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(RecordedEvent::id).collect()
}

fn open(fs: &FaultFs, flush_every: u64) -> Store {
    Store::builder()
        .file_system(fs.clone())
        .segment_size(64 * 1024)
        .index_flush_events(flush_every)
        .open("/model/store")
        .expect("open")
}

fn read_all(store: &Store) -> Vec<RecordedEvent> {
    store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Registers the synchronous subscription that records every event it is handed.
fn record(store: &Store, seen: &Arc<Mutex<Vec<Uuid>>>) {
    let sink = seen.clone();
    store.subscribe("model", Filter::All, move |e| {
        sink.lock().unwrap().push(e.id());
        Ok(())
    });
}

fn run(ops: Vec<Op>, flush_every: u64) -> Result<(), TestCaseError> {
    let mut fs = FaultFs::new();
    let mut store = open(&fs, flush_every);
    let mut model = Model::default();
    let seen: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    record(&store, &seen);
    let mut cursor = Position::START;
    let reopened = |store: &Store, model: &mut Model| -> Position {
        // The catch-up subscription restarts from its checkpoint.
        model.cursor = model.checkpoint;
        store
            .catch_up("model", CatchUpStart::Beginning, Filter::All)
            .unwrap()
            .position()
    };
    for op in ops {
        match op {
            Op::Append(s, e, sizes) => {
                let stream = name(s);
                let expected = model.expected(&stream, e);
                let evs = events(&sizes);
                let new_ids: Vec<Uuid> = evs.iter().map(|e| e.id).collect();
                let kept = evs.clone();
                let ok = expected.matches(model.version(&stream));
                match store.append(&stream, expected, evs) {
                    Ok(r) => {
                        prop_assert!(ok, "append {stream} {expected:?} should have failed");
                        let ids = model.streams.entry(stream.clone()).or_default();
                        ids.extend(&new_ids);
                        prop_assert_eq!(r.version, Some(ids.len() as u64 - 1));
                        model.add(&kept);
                    }
                    Err(Error::WrongExpectedVersion { actual, .. }) => {
                        prop_assert!(!ok);
                        prop_assert_eq!(actual, model.version(&stream));
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("append: {e}"))),
                }
            }
            Op::Transaction(parts) => {
                // Expected versions are chosen against the model as each part would see it.
                let mut shadow: BTreeMap<String, u64> = BTreeMap::new();
                let mut ok = true;
                let mut tx = store.transaction();
                let mut staged = vec![];
                for (s, e, sizes) in &parts {
                    let stream = name(*s);
                    let current = match shadow.get(&stream) {
                        Some(n) => n.checked_sub(1),
                        None => model.version(&stream),
                    };
                    let expected = match e {
                        Exp::Current => {
                            current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
                        }
                        Exp::Wrong => ExpectedVersion::Exact(current.map_or(0, |v| v + 1)),
                        _ => model.expected(&stream, *e),
                    };
                    ok &= expected.matches(current);
                    let evs = events(sizes);
                    *shadow
                        .entry(stream.clone())
                        .or_insert(current.map_or(0, |v| v + 1)) += evs.len() as u64;
                    staged.push((stream.clone(), evs.clone()));
                    tx = tx.append(&stream, expected, evs);
                }
                match tx.commit() {
                    Ok(results) => {
                        prop_assert!(ok, "transaction should have failed");
                        prop_assert_eq!(results.len(), parts.len());
                        for (stream, evs) in staged {
                            model
                                .streams
                                .entry(stream)
                                .or_default()
                                .extend(evs.iter().map(|e| e.id));
                            model.add(&evs);
                        }
                    }
                    Err(Error::WrongExpectedVersion { .. }) => prop_assert!(!ok),
                    Err(e) => return Err(TestCaseError::fail(format!("transaction: {e}"))),
                }
            }
            Op::ReadStream {
                stream,
                from,
                backwards,
                limit,
            } => {
                let stream = name(stream);
                let dir = if backwards {
                    Direction::Backwards
                } else {
                    Direction::Forwards
                };
                let got: Vec<RecordedEvent> = store
                    .read_stream(&stream, u64::from(from), dir, usize::from(limit))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .map_err(|e| TestCaseError::fail(format!("read_stream: {e}")))?;
                let all = model.streams.get(&stream).cloned().unwrap_or_default();
                let from = usize::from(from);
                let want: Vec<Uuid> = if backwards {
                    let top = from.min(all.len().saturating_sub(1));
                    if all.is_empty() {
                        vec![]
                    } else {
                        all[..=top]
                            .iter()
                            .rev()
                            .take(limit.into())
                            .copied()
                            .collect()
                    }
                } else {
                    all.iter().skip(from).take(limit.into()).copied().collect()
                };
                prop_assert_eq!(ids(&got), want);
            }
            Op::ReadAll {
                from,
                backwards,
                limit,
            } => {
                let everything = read_all(&store);
                prop_assert_eq!(ids(&everything), model.log.clone());
                if everything.is_empty() {
                    continue;
                }
                let i = usize::from(from) % everything.len();
                let dir = if backwards {
                    Direction::Backwards
                } else {
                    Direction::Forwards
                };
                let got: Vec<RecordedEvent> = store
                    .read_all(everything[i].position(), dir, usize::from(limit))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .map_err(|e| TestCaseError::fail(format!("read_all: {e}")))?;
                let want: Vec<Uuid> = if backwards {
                    model.log[..=i]
                        .iter()
                        .rev()
                        .take(limit.into())
                        .copied()
                        .collect()
                } else {
                    model.log[i..].iter().take(limit.into()).copied().collect()
                };
                prop_assert_eq!(ids(&got), want);
            }
            Op::FlushIndex => store.flush_index().unwrap(),
            Op::Poll(max) => {
                let mut sub = store
                    .catch_up("model", CatchUpStart::Beginning, Filter::All)
                    .unwrap();
                sub.seek(cursor);
                let got = sub
                    .poll(usize::from(max))
                    .map_err(|e| TestCaseError::fail(format!("poll: {e}")))?;
                let want: Vec<Uuid> = model
                    .log
                    .iter()
                    .skip(model.cursor)
                    .take(max.into())
                    .copied()
                    .collect();
                prop_assert_eq!(ids(&got), want);
                model.cursor += got.len();
                cursor = sub.position();
            }
            Op::Checkpoint => {
                let mut sub = store
                    .catch_up("model", CatchUpStart::Beginning, Filter::All)
                    .unwrap();
                sub.checkpoint_at(cursor).unwrap();
                model.checkpoint = model.cursor;
            }
            Op::RunOutbox => {
                let mut got = Vec::new();
                let mut outbox = Outbox::new(
                    &store,
                    "model",
                    |m: &OutboxMessage| {
                        got.push(m.event.id());
                        Ok(())
                    },
                    OutboxOptions::default(),
                )
                .unwrap();
                let report = outbox.run_once().unwrap();
                drop(outbox);
                prop_assert!(report.caught_up);
                prop_assert_eq!(&got[..], &model.published[model.delivered..]);
                model.delivered = model.published.len();
            }
            Op::Reopen => {
                drop(store);
                store = open(&fs, flush_every);
                record(&store, &seen);
                cursor = reopened(&store, &mut model);
            }
            Op::Crash(kind, seed) => {
                let policy = match kind {
                    0 => Some(CrashPolicy::DropUnsynced),
                    1 => Some(CrashPolicy::KeepAll),
                    2 => Some(CrashPolicy::Random { seed }),
                    3 => Some(CrashPolicy::Sectors { seed }),
                    // The process dies; the machine keeps running.
                    4 => None,
                    _ => Some(CrashPolicy::TearAt {
                        ops: fs.pending_count().saturating_sub(1),
                        bytes: seed as usize,
                    }),
                };
                store.abandon();
                let crashed = match policy {
                    Some(policy) => fs.crash(policy),
                    None => fs.restart(),
                };
                fs = crashed;
                store = open(&fs, flush_every);
                record(&store, &seen);
                cursor = reopened(&store, &mut model);
            }
        }
        // After every step: versions agree, and the whole log and every stream read back.
        for (stream, ids_) in &model.streams {
            prop_assert_eq!(
                store.stream_version(stream).unwrap(),
                Some(ids_.len() as u64 - 1)
            );
        }
        let acked = vec![crate::common::Commit {
            parts: model
                .streams
                .iter()
                .map(|(s, i)| (s.clone(), i.clone()))
                .collect(),
        }];
        crate::common::verify(&store, &acked, &[]).map_err(TestCaseError::fail)?;
        prop_assert_eq!(ids(&read_all(&store)), model.log.clone());
        // The synchronous subscription saw every event, once, in log order.
        prop_assert_eq!(&*seen.lock().unwrap(), &model.log);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_store_behaves_like_the_model(ops in prop::collection::vec(op(), 1..60), flush_every in 1u64..40) {
        run(ops, flush_every)?;
    }
}
