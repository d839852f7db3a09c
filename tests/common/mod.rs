//! Checks shared by the crash, model and kill tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};

use annals::{Direction, Position, RecordedEvent, Store};
use uuid::Uuid;

/// One commit: for each part, its stream and the ids of its events in order.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub parts: Vec<(String, Vec<Uuid>)>,
}

impl Commit {
    pub fn ids(&self) -> impl Iterator<Item = &Uuid> {
        self.parts.iter().flat_map(|(_, ids)| ids)
    }
}

/// Checks a store against what was acknowledged and what may or may not have been written:
/// every acknowledged event is there, nothing else is, commits are all-or-nothing, stream
/// versions count up from 0, and the index (stream reads, versions) agrees with the log.
pub fn verify(store: &Store, acked: &[Commit], maybe: &[Commit]) -> Result<(), String> {
    let log: Vec<RecordedEvent> = store
        .read_all(Position::START, Direction::Forwards, usize::MAX)
        .map_err(|e| format!("read_all: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("read_all: {e}"))?;
    let present: HashMap<Uuid, &RecordedEvent> = log.iter().map(|e| (e.id(), e)).collect();
    if present.len() != log.len() {
        return Err("an event id appears twice in the log".into());
    }
    let known: HashSet<&Uuid> = acked.iter().chain(maybe).flat_map(Commit::ids).collect();
    if let Some(e) = log.iter().find(|e| !known.contains(&e.id())) {
        return Err(format!("phantom event {e:?}"));
    }
    for c in acked {
        if let Some(id) = c.ids().find(|id| !present.contains_key(id)) {
            return Err(format!("acknowledged event {id} is missing (commit {c:?})"));
        }
    }
    for c in maybe {
        let n = c.ids().filter(|id| present.contains_key(id)).count();
        if n != 0 && n != c.ids().count() {
            return Err(format!("commit {c:?} is partly present ({n} events)"));
        }
    }
    // Each commit's parts are in order within their streams.
    for c in acked.iter().chain(maybe) {
        for (stream, ids) in &c.parts {
            let got: Vec<_> = ids.iter().filter_map(|id| present.get(id)).collect();
            if got.is_empty() {
                continue;
            }
            if got.iter().any(|e| e.stream() != stream) {
                return Err(format!("an event of {stream} landed in another stream"));
            }
            if got.windows(2).any(|w| w[1].version() != w[0].version() + 1) {
                return Err(format!(
                    "events of one part of {stream} are not consecutive"
                ));
            }
        }
    }
    let mut streams: BTreeMap<&str, Vec<&RecordedEvent>> = BTreeMap::new();
    for e in &log {
        streams.entry(e.stream()).or_default().push(e);
    }
    for (name, events) in &streams {
        if events
            .iter()
            .enumerate()
            .any(|(i, e)| e.version() != i as u64)
        {
            return Err(format!("versions of {name} do not count up from 0"));
        }
        let read: Vec<RecordedEvent> = store
            .read_stream(name, 0, Direction::Forwards, usize::MAX)
            .map_err(|e| format!("read_stream {name}: {e}"))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("read_stream {name}: {e}"))?;
        if read
            .iter()
            .map(RecordedEvent::id)
            .ne(events.iter().map(|e| e.id()))
        {
            return Err(format!("the index of {name} disagrees with the log"));
        }
        let version = store.stream_version(name).map_err(|e| e.to_string())?;
        if version != Some(events.len() as u64 - 1) {
            return Err(format!(
                "{name}: index version {version:?}, log has {}",
                events.len()
            ));
        }
    }
    Ok(())
}
