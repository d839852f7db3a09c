//! Crash tests with the fault-injecting file system: a workload is stopped at every one of its
//! I/O operations in turn, the machine "loses power" under several policies for the writes
//! that were not synced, and the reopened store must hold every acknowledged event, nothing
//! that was never appended, whole commits only, and an index that agrees with the log.

mod common;

use std::io::ErrorKind;

use annals::storage::{CrashPolicy, FaultFs, FaultMode};
use annals::{ExpectedVersion, NewEvent, Store};
use common::{Commit, verify};

const PATH: &str = "/db/store";

fn open(fs: &FaultFs) -> annals::Result<Store> {
    Store::builder()
        .file_system(fs.clone())
        .segment_size(64 * 1024)
        .index_flush_events(7)
        .open(PATH)
}

#[derive(Default)]
struct Ledger {
    acked: Vec<Commit>,
    maybe: Vec<Commit>,
}

/// Appends of every shape (single events, batches, multi-stream transactions, events big
/// enough to fill segments), with a close and reopen halfway.
fn workload(fs: &FaultFs, ledger: &mut Ledger) {
    let Ok(mut store) = open(fs) else { return };
    for i in 0..40u32 {
        if i == 20 {
            drop(store);
            store = match open(fs) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
        let event = |size: usize| NewEvent::new("E", vec![i as u8; size]);
        let (commit, result) = match i % 4 {
            0 => {
                let e = event(40);
                let c = vec![(format!("s-{}", i % 3), vec![e.id])];
                (
                    c,
                    store
                        .append(&format!("s-{}", i % 3), ExpectedVersion::Any, [e])
                        .map(|_| ()),
                )
            }
            1 => {
                let events: Vec<_> = (0..5).map(|_| event(100)).collect();
                let c = vec![(
                    format!("b-{}", i % 2),
                    events.iter().map(|e| e.id).collect(),
                )];
                (
                    c,
                    store
                        .append(&format!("b-{}", i % 2), ExpectedVersion::Any, events)
                        .map(|_| ()),
                )
            }
            2 => {
                let (a, b, c2) = (event(30), event(30), event(30));
                let c = vec![
                    ("t-a".to_owned(), vec![a.id, c2.id]),
                    ("t-b".to_owned(), vec![b.id]),
                ];
                let r = store
                    .transaction()
                    .append("t-a", ExpectedVersion::Any, [a])
                    .append("t-b", ExpectedVersion::Any, [b])
                    .append("t-a", ExpectedVersion::Any, [c2])
                    .commit()
                    .map(|_| ());
                // Parts of one stream in one transaction are consecutive only per part; record
                // them as the verifier expects (per stream, in order).
                (c, r)
            }
            _ => {
                let e = event(9000);
                let c = vec![("big".to_owned(), vec![e.id])];
                (
                    c,
                    store.append("big", ExpectedVersion::Any, [e]).map(|_| ()),
                )
            }
        };
        let commit = Commit { parts: commit };
        match result {
            Ok(()) => ledger.acked.push(commit),
            Err(_) => ledger.maybe.push(commit),
        }
    }
}

fn policies(n: u64, pending: usize) -> Vec<CrashPolicy> {
    let mut p = vec![
        CrashPolicy::DropUnsynced,
        CrashPolicy::KeepAll,
        CrashPolicy::Random { seed: n },
        CrashPolicy::Random {
            seed: n ^ 0xDEAD_BEEF,
        },
    ];
    if pending > 0 {
        p.push(CrashPolicy::TearAt {
            ops: pending - 1,
            bytes: (n as usize * 7919) % 9000,
        });
        p.push(CrashPolicy::KeepFirst { ops: pending / 2 });
    }
    p
}

/// Reopens a crashed file system and checks it; then appends once more and checks again.
fn check_after_crash(crashed: FaultFs, ledger: &Ledger, what: &str) {
    let store = open(&crashed).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    verify(&store, &ledger.acked, &ledger.maybe).unwrap_or_else(|e| panic!("{what}: {e}"));
    let e = NewEvent::new("After", "x");
    let after = Commit {
        parts: vec![("after".into(), vec![e.id])],
    };
    store
        .append("after", ExpectedVersion::NoStream, [e])
        .unwrap_or_else(|e| panic!("{what}: append after recovery: {e}"));
    drop(store);
    let store = open(&crashed).unwrap_or_else(|e| panic!("{what}: second reopen failed: {e}"));
    let mut acked = ledger.acked.clone();
    acked.push(after);
    verify(&store, &acked, &ledger.maybe).unwrap_or_else(|e| panic!("{what} (second reopen): {e}"));
}

fn total_ops() -> u64 {
    let fs = FaultFs::new();
    let mut ledger = Ledger::default();
    workload(&fs, &mut ledger);
    assert_eq!(
        ledger.acked.len(),
        40,
        "the clean run acknowledges everything"
    );
    check_after_crash(fs.crash(CrashPolicy::DropUnsynced), &ledger, "clean run");
    fs.op_count()
}

#[test]
fn a_power_cut_at_every_io_operation_loses_nothing_acknowledged() {
    let total = total_ops();
    assert!(
        total > 150,
        "the workload does enough I/O to be interesting ({total})"
    );
    let mut crashes = 0;
    for n in 0..total {
        let fs = FaultFs::new();
        fs.fail_at(n, FaultMode::Always, ErrorKind::Other);
        let mut ledger = Ledger::default();
        workload(&fs, &mut ledger);
        for policy in policies(n, fs.pending_count()) {
            check_after_crash(
                fs.crash(policy),
                &ledger,
                &format!("crash at op {n}/{total}, {policy:?}"),
            );
            crashes += 1;
        }
    }
    println!("{crashes} crashes simulated over {total} I/O operations");
}

#[test]
fn a_transient_failure_at_every_io_operation_poisons_and_recovers() {
    let total = total_ops();
    for n in 0..total {
        let fs = FaultFs::new();
        fs.fail_at(n, FaultMode::Once, ErrorKind::Other);
        let mut ledger = Ledger::default();
        workload(&fs, &mut ledger);
        // Reopen the same disk (the process restarted, the machine did not crash) ...
        check_after_crash(
            fs.crash(CrashPolicy::KeepAll),
            &ledger,
            &format!("failure at op {n}"),
        );
        // ... and after a power cut too.
        check_after_crash(
            fs.crash(CrashPolicy::DropUnsynced),
            &ledger,
            &format!("failure at op {n}, then crash"),
        );
    }
}

#[test]
fn concurrent_appenders_cut_by_a_crash_lose_nothing_acknowledged() {
    use std::sync::{Arc, Mutex};
    for round in 0..30u64 {
        let fs = FaultFs::new();
        let store = Arc::new(open(&fs).unwrap());
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let cut = fs.op_count() + 20 + round * 7;
        fs.fail_at(cut, FaultMode::Always, ErrorKind::Other);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (store, ledger) = (store.clone(), ledger.clone());
                std::thread::spawn(move || {
                    for i in 0..30 {
                        let e = NewEvent::new("E", vec![t as u8; 64 + i]);
                        let c = Commit {
                            parts: vec![(format!("c-{t}"), vec![e.id])],
                        };
                        let r = store.append(&format!("c-{t}"), ExpectedVersion::Any, [e]);
                        let mut l = ledger.lock().unwrap();
                        match r {
                            Ok(_) => l.acked.push(c),
                            Err(_) => l.maybe.push(c),
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(store);
        let ledger = ledger.lock().unwrap();
        for policy in policies(round, fs.pending_count()) {
            check_after_crash(
                fs.crash(policy),
                &ledger,
                &format!("round {round}, {policy:?}"),
            );
        }
    }
}
