//! Real-process crash test of deleting, scavenging and erasing: a child process appends from
//! two threads while a third deletes streams, scavenges and erases streams of personal data in
//! a loop; the parent kills it with SIGKILL at a random moment, reopens the store, and checks
//! that every acknowledged event of a stream not deleted is there, every acknowledged deletion
//! holds, every acknowledged erasure left no byte of its stream's payload in the file, and the
//! store verifies clean. The store is reused across rounds.
//!
//! `ANNALS_LIFECYCLE_KILL_ROUNDS` sets the number of rounds (default 20).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use annals::{Direction, ExpectedVersion, NewEvent, Position, Store};
use uuid::Uuid;

const DIR_VAR: &str = "ANNALS_LIFECYCLE_KILL_DIR";

fn open(dir: &Path) -> annals::Result<Store> {
    Store::builder()
        .segment_size(256 * 1024)
        .index_flush_events(300)
        .open(dir.join("lifecycle"))
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn marker(n: u64) -> String {
    format!("PII-{n:08}-SECRET")
}

/// The child: appends, deletes, scavenges and erases until killed.
#[test]
#[ignore = "run by kill_9_while_deleting_scavenging_and_erasing in a child process"]
fn child_lifecycle() {
    let dir = std::env::var(DIR_VAR).expect("started by the parent test");
    let store = open(Path::new(&dir)).expect("child open");
    // Rounds before this one used lower numbers: start above them.
    let base = uuid::Uuid::now_v7().as_u128() as u64 % 1_000_000_000;
    println!("READY");
    std::thread::scope(|s| {
        for t in 0..2u32 {
            let store = &store;
            s.spawn(move || {
                for i in 0u64.. {
                    let stream = format!("keep-{t}-{}", i % 4);
                    let e = NewEvent::new("Tick", vec![i as u8; 200 + 500 * (i as usize % 3)]);
                    say(format!("T {stream} {}", e.id));
                    store
                        .append(&stream, ExpectedVersion::Any, [e.clone()])
                        .expect("child append");
                    say(format!("A {}", e.id));
                }
            });
        }
        let store = &store;
        s.spawn(move || {
            for n in base.. {
                let doomed = format!("tmp-{n}");
                let events: Vec<_> = (0..20)
                    .map(|_| NewEvent::new("T", vec![7u8; 800]))
                    .collect();
                store
                    .append(&doomed, ExpectedVersion::NoStream, events)
                    .expect("child append");
                store
                    .delete_stream(&doomed, ExpectedVersion::Exact(19))
                    .expect("child delete");
                say(format!("D {doomed}"));
                let pii = format!("pii-{n}");
                let events: Vec<_> = (0..5)
                    .map(|_| NewEvent::new("Named", format!("{} {}", marker(n), "x".repeat(300))))
                    .collect();
                store
                    .append(&pii, ExpectedVersion::NoStream, events)
                    .expect("child append");
                if n % 3 == 0 {
                    store.erase_stream(&pii).expect("child erase");
                    say(format!("E {n}"));
                }
                if n % 25 == 0 {
                    store.scavenge().expect("child scavenge");
                }
            }
        });
    });
}

#[test]
fn kill_9_while_deleting_scavenging_and_erasing() {
    let rounds = crate::common::rounds("ANNALS_LIFECYCLE_KILL_ROUNDS", 20);
    let dir = tempfile::tempdir().unwrap();
    let mut tried: HashMap<Uuid, String> = HashMap::new();
    let mut acked: HashSet<Uuid> = HashSet::new();
    let mut deleted: HashSet<String> = HashSet::new();
    let mut erased: Vec<u64> = Vec::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let (mut total_acked, mut total_deleted, mut total_erased) = (0, 0, 0);
    for round in 0..rounds {
        let lines = crate::common::run_and_kill(
            "lifecycle_kill::child_lifecycle",
            &[(DIR_VAR, dir.path().as_os_str())],
            &mut rng,
            20,
            300,
        );
        for line in &lines {
            if let Some(rest) = line.strip_prefix("T ") {
                let (stream, id) = rest.split_once(' ').unwrap();
                tried.insert(id.parse().unwrap(), stream.to_owned());
            } else if let Some(id) = line.strip_prefix("A ") {
                acked.insert(id.parse().unwrap());
                total_acked += 1;
            } else if let Some(stream) = line.strip_prefix("D ") {
                deleted.insert(stream.to_owned());
                total_deleted += 1;
            } else if let Some(n) = line.strip_prefix("E ") {
                erased.push(n.parse().unwrap());
                total_erased += 1;
            }
        }
        let store = open(dir.path()).unwrap_or_else(|e| panic!("round {round}: reopen: {e}"));
        let present: HashMap<Uuid, String> = store
            .read_all(Position::START, Direction::Forwards, usize::MAX)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.id(), e.stream().to_owned())
            })
            .collect();
        for id in &acked {
            assert!(
                present.contains_key(id),
                "round {round}: acknowledged {id} is missing"
            );
        }
        for stream in &deleted {
            assert!(
                store
                    .read_stream(stream, 0, Direction::Forwards, 1)
                    .unwrap()
                    .next()
                    .is_none(),
                "round {round}: deleted {stream} reads"
            );
        }
        let report = store.verify(&mut |_, _| {}).unwrap();
        assert!(report.is_clean(), "round {round}: {report:?}");
        drop(store);
        // Every marker left in the file (one pass), against the erasures acknowledged.
        let bytes = std::fs::read(dir.path().join("lifecycle.annals")).unwrap();
        let mut left = HashSet::new();
        let mut at = 0;
        while let Some(k) = bytes[at..].windows(4).position(|w| w == b"PII-") {
            let start = at + k + 4;
            if let Some(n) = bytes
                .get(start..start + 8)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse::<u64>().ok())
            {
                left.insert(n);
            }
            at = start;
        }
        for n in &erased {
            assert!(
                !left.contains(n),
                "round {round}: erased pii-{n} is still in the file"
            );
        }
        // What recovery kept of the unacknowledged appends is durable now: it must stay.
        for (id, _) in tried.iter() {
            if !acked.contains(id) && present.contains_key(id) {
                acked.insert(*id);
            }
        }
        tried.retain(|id, _| acked.contains(id));
    }
    assert!(total_acked > rounds && total_deleted > 0 && total_erased > 0);
    println!(
        "{rounds} SIGKILLs while deleting, scavenging and erasing: {total_acked} acknowledged \
         appends all present, {total_deleted} deletions all held, {total_erased} erasures all \
         complete"
    );
}
