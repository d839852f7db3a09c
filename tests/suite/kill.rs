//! Real-process crash test: a child process appends from several threads and reports each
//! append before it starts and after it is acknowledged; the parent kills it with SIGKILL at a
//! random moment, reopens the store, and checks that every acknowledged event is there and
//! nothing that was never appended is. The store is reused across rounds, so every round also
//! checks every earlier round's events.
//!
//! `ANNALS_KILL_ROUNDS` sets the number of rounds (default 100).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::common::{Commit, verify};
use annals::{ExpectedVersion, NewEvent, Store};
use uuid::Uuid;

const DIR_VAR: &str = "ANNALS_KILL_CHILD_DIR";

fn open(dir: &Path) -> annals::Result<Store> {
    Store::builder()
        .segment_size(1 << 20)
        .index_flush_events(200)
        .open(dir.join("killed"))
}

/// The child: appends until killed. Runs only when the parent starts it.
#[test]
#[ignore = "run by kill_9_at_random_moments_loses_nothing_acknowledged in a child process"]
fn child_appender() {
    let dir = std::env::var(DIR_VAR).expect("started by the parent test");
    let store = open(Path::new(&dir)).expect("child open");
    println!("READY");
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let store = &store;
            s.spawn(move || {
                for i in 0u64.. {
                    let stream = format!("k-{t}-{}", i % 5);
                    let n = 1 + (i % 3) as usize;
                    let events: Vec<NewEvent> = (0..n)
                        .map(|k| {
                            NewEvent::new(
                                "Tick",
                                vec![(i + k as u64) as u8; 50 + 300 * (i as usize % 4)],
                            )
                        })
                        .collect();
                    let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
                    {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "T {stream} {}", ids.join(",")).unwrap();
                        out.flush().unwrap();
                    }
                    store
                        .append(&stream, ExpectedVersion::Any, events)
                        .expect("child append");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "A {}", ids[0]).unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}

#[test]
fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    let rounds = crate::common::rounds("ANNALS_KILL_ROUNDS", 100);
    let dir = tempfile::tempdir().unwrap();
    let mut tried: HashMap<Uuid, Commit> = HashMap::new();
    let mut acked: Vec<Uuid> = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut total_acked = 0;
    for round in 0..rounds {
        let lines = crate::common::run_and_kill(
            "kill::child_appender",
            &[(DIR_VAR, dir.path().as_os_str())],
            &mut rng,
            1,
            60,
        );

        let mut round_acked = 0;
        for line in &lines {
            if let Some(rest) = line.strip_prefix("T ") {
                let (stream, ids) = rest.split_once(' ').unwrap();
                let ids: Vec<Uuid> = ids.split(',').map(|s| s.parse().unwrap()).collect();
                tried.insert(
                    ids[0],
                    Commit {
                        parts: vec![(stream.to_owned(), ids)],
                    },
                );
            } else if let Some(id) = line.strip_prefix("A ") {
                acked.push(id.parse().unwrap());
                round_acked += 1;
            }
        }
        total_acked += round_acked;
        let acked_commits: Vec<Commit> = acked.iter().map(|id| tried[id].clone()).collect();
        let ack_set: std::collections::HashSet<&Uuid> = acked.iter().collect();
        let maybe: Vec<Commit> = tried
            .iter()
            .filter(|(id, _)| !ack_set.contains(id))
            .map(|(_, c)| c.clone())
            .collect();
        let store =
            open(dir.path()).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        verify(&store, &acked_commits, &maybe).unwrap_or_else(|e| panic!("round {round}: {e}"));
        // What recovery kept is now durable and must stay; what it dropped must never return.
        let present: std::collections::HashSet<Uuid> = store
            .read_all(
                annals::Position::START,
                annals::Direction::Forwards,
                usize::MAX,
            )
            .unwrap()
            .map(|e| e.unwrap().id())
            .collect();
        for commit in maybe {
            let first = commit.parts[0].1[0];
            if present.contains(&first) {
                acked.push(first);
            } else {
                tried.remove(&first);
            }
        }
        drop(store);
    }
    assert!(
        total_acked > rounds,
        "the children acknowledged appends ({total_acked})"
    );
    println!(
        "{rounds} SIGKILLs, {total_acked} acknowledged appends, all present after each reopen"
    );
}
