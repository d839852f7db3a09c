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

/// The number of rounds a kill test runs: `var` if set, else `default`.
pub fn rounds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// Starts the ignored test `child` of this test binary in a child process with `envs`, waits
/// until it prints `READY`, lets it run `min_ms` plus a random part of `spread_ms`
/// milliseconds (drawn from `rng`, a xorshift state), kills it with SIGKILL, and returns every
/// line it printed.
pub fn run_and_kill(
    child: &str,
    envs: &[(&str, &std::ffi::OsStr)],
    rng: &mut u64,
    min_ms: u64,
    spread_ms: u64,
) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            child,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut process = command.spawn().unwrap();
    let stdout = process.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child became ready");
        let ready = line.ends_with("READY");
        lines.push(line);
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the child never became ready"
        );
    }
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    std::thread::sleep(Duration::from_millis(min_ms + *rng % spread_ms));
    process.kill().unwrap(); // SIGKILL
    process.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    assert!(started.elapsed() < Duration::from_secs(120));
    lines
}
