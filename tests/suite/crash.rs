//! Crash tests with the fault-injecting file system: a workload is stopped at every one of its
//! I/O operations in turn, the machine "loses power" under several policies for the writes
//! that were not synced (none, all, prefixes, torn writes, random subsets, single sectors in
//! any order), or the process dies and a new one opens the store (the page cache keeps what was
//! written, failed syncs included, as on Linux), and the reopened store must hold every
//! acknowledged event, nothing that was never appended, whole commits only, and an index that
//! agrees with the log. The same is done at every I/O operation of an open that recovers a
//! crashed store (replaying, dropping a torn tail, flushing its index).
//!
//! Each test prints how many crashes it simulated; together they simulate more than 10,000.

use std::io::ErrorKind;

use crate::common::{Commit, verify};
use annals::storage::{CrashPolicy, FaultFs, FaultMode};
use annals::{ExpectedVersion, NewEvent, Store};

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
    p.extend((0..6).map(|k| CrashPolicy::Sectors {
        seed: n * 6 + k + 1,
    }));
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
        // The process dies instead (the machine keeps running) ...
        check_after_crash(fs.restart(), &ledger, &format!("kill at op {n}/{total}"));
        crashes += 1;
    }
    println!("{crashes} crashes simulated over {total} I/O operations");
    assert!(crashes >= 8 * total);
}

#[test]
fn a_transient_failure_at_every_io_operation_poisons_and_recovers() {
    let total = total_ops();
    let mut crashes = 0;
    for n in 0..total {
        let fs = FaultFs::new();
        fs.fail_at(n, FaultMode::Once, ErrorKind::Other);
        let mut ledger = Ledger::default();
        workload(&fs, &mut ledger);
        // A new process opens the same disk (what a failed sync left is still readable, and
        // still not durable), works on it, and then the power fails ...
        check_after_crash(fs.restart(), &ledger, &format!("failure at op {n}"));
        let restarted = fs.restart();
        drop(open(&restarted).expect("a new process opens the store"));
        for policy in [
            CrashPolicy::DropUnsynced,
            CrashPolicy::Sectors { seed: n + 1 },
        ] {
            check_after_crash(
                restarted.crash(policy),
                &ledger,
                &format!("failure at op {n}, reopened, then {policy:?}"),
            );
        }
        // ... or the power fails right away.
        check_after_crash(
            fs.crash(CrashPolicy::DropUnsynced),
            &ledger,
            &format!("failure at op {n}, then crash"),
        );
        crashes += 4;
    }
    println!("{crashes} crashes simulated after a transient failure at each of {total} operations");
}

/// A store left by a crash in the middle of the workload: commits after the sidecar's last
/// flush, and a torn tail. Returns the crashed file system and what was acknowledged.
fn crashed_store(cut: u64, policy: CrashPolicy) -> (FaultFs, Ledger) {
    let fs = FaultFs::new();
    fs.fail_at(cut, FaultMode::Always, ErrorKind::Other);
    let mut ledger = Ledger::default();
    workload(&fs, &mut ledger);
    (fs.crash(policy), ledger)
}

#[test]
fn a_power_cut_at_every_io_operation_of_a_recovering_open_loses_nothing_acknowledged() {
    let total = total_ops();
    let mut crashes = 0;
    let mut opens = 0;
    let cuts = (1..=9).map(|k| total * k / 10).chain([total - 3]);
    for (k, cut) in cuts.enumerate() {
        let policy = match k % 3 {
            0 => CrashPolicy::KeepAll,
            1 => CrashPolicy::Random { seed: cut },
            _ => CrashPolicy::Sectors { seed: cut },
        };
        let (base, ledger) = crashed_store(cut, policy);
        // How many operations the recovering open does.
        let probe = base.restart();
        drop(open(&probe).expect("the crashed store opens"));
        let ops = probe.op_count();
        assert!(ops > 5, "the recovering open does I/O ({ops})");
        opens += 1;
        for n in 0..ops {
            let fs = base.restart();
            fs.fail_at(n, FaultMode::Always, ErrorKind::Other);
            let _ = open(&fs).map(drop);
            for policy in policies(n, fs.pending_count()) {
                check_after_crash(
                    fs.crash(policy),
                    &ledger,
                    &format!(
                        "recovering open after a cut at {cut}, crash at its op {n}/{ops}, {policy:?}"
                    ),
                );
                crashes += 1;
            }
        }
    }
    println!("{crashes} crashes simulated during {opens} recovering opens");
    assert!(crashes > 1000);
}

/// The workload with appends that are not synced as they are made: nothing is promised
/// durable, but after any crash the store opens, holds whole commits only, and its index
/// agrees with its log.
#[test]
fn a_power_cut_at_every_io_operation_without_sync_leaves_a_consistent_store() {
    let open_nosync = |fs: &FaultFs| {
        Store::builder()
            .file_system(fs.clone())
            .segment_size(64 * 1024)
            .index_flush_events(7)
            .durability(annals::Durability::NoSync)
            .open(PATH)
    };
    let run = |fs: &FaultFs| -> Vec<Commit> {
        let mut commits = Vec::new();
        let Ok(store) = open_nosync(fs) else {
            return commits;
        };
        for i in 0..30u32 {
            let events: Vec<_> = (0..1 + i % 3)
                .map(|_| NewEvent::new("E", vec![i as u8; 200 + 300 * (i as usize % 7)]))
                .collect();
            let stream = format!("n-{}", i % 4);
            commits.push(Commit {
                parts: vec![(stream.clone(), events.iter().map(|e| e.id).collect())],
            });
            if store.append(&stream, ExpectedVersion::Any, events).is_err() {
                break;
            }
            if i % 10 == 9 && store.flush_index().is_err() {
                break;
            }
        }
        commits
    };
    let total = {
        let fs = FaultFs::new();
        run(&fs);
        fs.op_count()
    };
    let mut crashes = 0;
    for n in 0..total {
        let fs = FaultFs::new();
        fs.fail_at(n, FaultMode::Always, ErrorKind::Other);
        let maybe = run(&fs);
        for policy in policies(n, fs.pending_count()) {
            let crashed = fs.crash(policy);
            let store = open_nosync(&crashed)
                .unwrap_or_else(|e| panic!("op {n}, {policy:?}: reopen failed: {e}"));
            verify(&store, &[], &maybe).unwrap_or_else(|e| panic!("op {n}, {policy:?}: {e}"));
            crashes += 1;
        }
    }
    println!("{crashes} crashes simulated over {total} I/O operations without sync");
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

#[test]
fn reopening_a_cleanly_closed_store_syncs_nothing_and_the_next_append_still_survives_a_power_cut() {
    let fs = FaultFs::new();
    let first = NewEvent::new("E", vec![1u8; 10]);
    {
        let store = open(&fs).unwrap();
        store
            .append("s", ExpectedVersion::NoStream, [first.clone()])
            .unwrap();
    }
    let before = fs.sync_count();
    let store = open(&fs).unwrap();
    let read: Vec<_> = store
        .read_stream("s", 0, annals::Direction::Forwards, 10)
        .unwrap()
        .collect::<annals::Result<_>>()
        .unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(
        fs.sync_count(),
        before,
        "an open after a clean close has nothing to make durable"
    );
    let second = NewEvent::new("E", vec![2u8; 10]);
    store
        .append("s", ExpectedVersion::Exact(0), [second.clone()])
        .unwrap();
    assert!(fs.sync_count() > before, "the append was synced");
    for policy in [CrashPolicy::DropUnsynced, CrashPolicy::KeepAll] {
        let crashed = fs.crash(policy);
        let reopened = open(&crashed).unwrap();
        let ids: Vec<_> = reopened
            .read_stream("s", 0, annals::Direction::Forwards, 10)
            .unwrap()
            .map(|e| e.unwrap().id())
            .collect();
        assert_eq!(ids, vec![first.id, second.id], "{policy:?}");
    }
}

/// Every event id a store shows through `read_all`.
fn ids_of(store: &Store) -> std::collections::HashSet<uuid::Uuid> {
    store
        .read_all(
            annals::Position::START,
            annals::Direction::Forwards,
            usize::MAX,
        )
        .map(|events| events.filter_map(Result::ok).map(|e| e.id()).collect())
        .unwrap_or_default()
}

#[test]
fn a_live_reader_never_sees_what_a_power_cut_at_any_io_operation_takes() {
    let total = total_ops();
    let (mut crashes, mut seen_total) = (0, 0);
    // Each operation in turn fails (and all after it), then once with no failure.
    for fault in (0..total).map(Some).chain([None]) {
        let n = fault.unwrap_or(total);
        let fs = FaultFs::new();
        // The store exists before the failure is armed, so the reader can follow it.
        drop(open(&fs).unwrap());
        let writer = open(&fs).unwrap();
        let reader = Store::builder()
            .file_system(fs.clone())
            .read_only(true)
            .open(PATH)
            .unwrap();
        assert!(reader.follows_writer());
        if let Some(n) = fault {
            fs.fail_at(fs.op_count() + n, FaultMode::Always, ErrorKind::Other);
        }
        let mut seen = std::collections::HashSet::new();
        let mut acked = Vec::new();
        for i in 0..20u32 {
            let e = NewEvent::new("E", vec![i as u8; 40 + 300 * (i as usize % 3)]);
            let id = e.id;
            if writer
                .append(&format!("s-{}", i % 4), ExpectedVersion::Any, [e])
                .is_ok()
            {
                acked.push(id);
            }
            let now = ids_of(&reader);
            // What was visible stays visible. Without failures, acknowledged means durable
            // means visible (a failure may stop the writer publishing: the reader then lags,
            // never leads).
            assert!(seen.is_subset(&now), "op {n}, append {i}");
            if fault.is_none() {
                assert!(acked.iter().all(|id| now.contains(id)), "append {i}");
            }
            seen = now;
        }
        seen_total += seen.len();
        for policy in [
            CrashPolicy::DropUnsynced,
            CrashPolicy::Random { seed: n },
            CrashPolicy::Sectors { seed: n + 1 },
        ] {
            let store = open(&fs.crash(policy)).unwrap_or_else(|e| panic!("op {n}: {e}"));
            let kept = ids_of(&store);
            assert!(
                seen.is_subset(&kept),
                "op {n}, {policy:?}: the reader saw {} events that a power cut took",
                seen.difference(&kept).count()
            );
            crashes += 1;
        }
    }
    println!(
        "{crashes} power cuts after a failure at each of {total} operations: every one of \
         {seen_total} events a live reader saw survived"
    );
}
