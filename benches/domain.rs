//! The domain floor's costs, each against what it rides on, in the same run:
//!
//! - loading an aggregate of 10,000 events (decode and apply every event) from annals, from
//!   annals with a snapshot, and the same load from SQLite (WAL, `synchronous=FULL`) and from a
//!   plain redb table holding the same payloads;
//! - a message-bus round trip (command -> handler -> 1 event -> 1 listener -> durable commit)
//!   against the bare durable append of the same event, measured interleaved (the disk's
//!   latency drifts more between two runs than the bus costs).
//!
//! Run: `cargo bench -p annals-bench --bench domain`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use annals::domain::{
    Aggregate, DomainError, MessageBus, Recorder, Repository, Snapshot, UnitOfWork,
};
use annals::typed::EventType;
use annals::{ExpectedVersion, Store, events};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

const HISTORY: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    account: String,
    amount: u64,
    memo: String,
}
impl EventType for Deposited {
    const NAME: &'static str = "Deposited";
}
events! { #[derive(Debug, Clone, PartialEq)] enum AccountEvent { Deposited(Deposited) } }

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    balance: u64,
    deposits: u64,
    #[serde(skip)]
    recorder: Recorder<AccountEvent>,
}
impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Event = AccountEvent;
    fn apply(&mut self, event: &AccountEvent) {
        let AccountEvent::Deposited(e) = event;
        self.balance += e.amount;
        self.deposits += 1;
    }
    fn recorder(&self) -> &Recorder<AccountEvent> {
        &self.recorder
    }
    fn recorder_mut(&mut self) -> &mut Recorder<AccountEvent> {
        &mut self.recorder
    }
}
impl Snapshot for Account {}

fn deposit(i: u64) -> Deposited {
    Deposited {
        account: "acc-42".into(),
        amount: i % 100,
        memo: "salary, rent, groceries: a memo of some fifty bytes".into(),
    }
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var("ANNALS_BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap()
}

fn bincode_of(e: &Deposited) -> Vec<u8> {
    bincode::serde::encode_to_vec(e, bincode::config::standard()).unwrap()
}

fn from_bincode(bytes: &[u8]) -> Deposited {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .unwrap()
        .0
}

fn sqlite_with_history(path: &Path) -> rusqlite::Connection {
    let mut db = rusqlite::Connection::open(path).unwrap();
    db.pragma_update(None, "journal_mode", "WAL").unwrap();
    db.pragma_update(None, "synchronous", "FULL").unwrap();
    db.execute_batch(
        "CREATE TABLE events (stream TEXT NOT NULL, version INTEGER NOT NULL, type TEXT NOT NULL,
         payload BLOB NOT NULL, PRIMARY KEY (stream, version)) WITHOUT ROWID",
    )
    .unwrap();
    let tx = db.transaction().unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO events VALUES ('account-a', ?1, 'Deposited', ?2)")
            .unwrap();
        for i in 0..HISTORY {
            insert
                .execute(rusqlite::params![i as i64, bincode_of(&deposit(i))])
                .unwrap();
        }
    }
    tx.commit().unwrap();
    db
}

const REDB_EVENTS: TableDefinition<(&str, u64), (&str, &[u8])> = TableDefinition::new("events");

fn redb_with_history(path: &Path) -> redb::Database {
    let db = redb::Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut table = tx.open_table(REDB_EVENTS).unwrap();
        for i in 0..HISTORY {
            table
                .insert(
                    ("account-a", i),
                    ("Deposited", bincode_of(&deposit(i)).as_slice()),
                )
                .unwrap();
        }
    }
    tx.commit().unwrap();
    db
}

fn aggregate_load(c: &mut Criterion) {
    let dir = dir();
    let store = Store::open(dir.path().join("accounts")).unwrap();
    for chunk in 0..HISTORY / 1000 {
        let events: Vec<_> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| {
                store
                    .new_event(&AccountEvent::Deposited(deposit(i)))
                    .unwrap()
            })
            .collect();
        store
            .append("account-a", ExpectedVersion::Any, events)
            .unwrap();
    }
    // The same history with a snapshot at its last event.
    let snapshotting = Repository::<Account, _>::new(&store).with_snapshots(HISTORY);
    snapshotting
        .create("b", |a| -> Result<(), DomainError> {
            for i in 0..HISTORY {
                a.record(deposit(i));
            }
            Ok(())
        })
        .unwrap();
    assert!(store.load_snapshot("account-b").unwrap().is_some());
    let sqlite = sqlite_with_history(&dir.path().join("sqlite.db"));
    let redb = redb_with_history(&dir.path().join("redb.db"));

    let plain = Repository::<Account, _>::new(&store);
    let expected = plain.get("a").unwrap().balance;
    let mut g = c.benchmark_group("aggregate_load_10k_events");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(HISTORY));
    g.bench_function("annals", |b| {
        b.iter(|| {
            let a = plain.get("a").unwrap();
            assert_eq!(a.deposits, HISTORY);
            black_box(a.balance)
        })
    });
    g.bench_function("annals_snapshot", |b| {
        b.iter(|| {
            let a = snapshotting.get("b").unwrap();
            assert_eq!(a.deposits, HISTORY);
            black_box(a.balance)
        })
    });
    g.bench_function("sqlite", |b| {
        b.iter(|| {
            let mut account = Account::default();
            let mut q = sqlite
                .prepare_cached(
                    "SELECT type, payload FROM events WHERE stream = ?1 ORDER BY version",
                )
                .unwrap();
            let mut rows = q.query(["account-a"]).unwrap();
            while let Some(row) = rows.next().unwrap() {
                let kind = row.get_ref(0).unwrap().as_str().unwrap();
                assert_eq!(kind, "Deposited");
                account.apply(&AccountEvent::Deposited(from_bincode(
                    row.get_ref(1).unwrap().as_blob().unwrap(),
                )));
            }
            assert_eq!(account.balance, expected);
            black_box(account.balance)
        })
    });
    g.bench_function("redb", |b| {
        b.iter(|| {
            let mut account = Account::default();
            let tx = redb.begin_read().unwrap();
            let table = tx.open_table(REDB_EVENTS).unwrap();
            for row in table
                .range(("account-a", 0)..=("account-a", u64::MAX))
                .unwrap()
            {
                let (_, value) = row.unwrap();
                let (kind, payload) = value.value();
                assert_eq!(kind, "Deposited");
                account.apply(&AccountEvent::Deposited(from_bincode(payload)));
            }
            assert_eq!(account.balance, expected);
            black_box(account.balance)
        })
    });
    g.finish();
}

/// The command of the round trip.
struct Deposit {
    account: String,
    amount: u64,
}

fn bus_round_trip(_: &mut Criterion) {
    let dir = dir();
    let bare = Store::open(dir.path().join("bare")).unwrap();
    let bussed = Store::open(dir.path().join("bus")).unwrap();
    let heard = Arc::new(AtomicU64::new(0));
    let mut bus = MessageBus::<Store>::new();
    bus.handle_with(
        |d: Deposit, uow: &mut UnitOfWork<'_, Store>| -> annals::Result<()> {
            uow.get_or_create::<Account>(&d.account)?.record(Deposited {
                account: d.account.clone(),
                amount: d.amount,
                memo: "salary, rent, groceries: a memo of some fifty bytes".into(),
            });
            Ok(())
        },
    )
    .unwrap();
    let ears = heard.clone();
    bus.listen(
        move |e: &Deposited, _: &mut UnitOfWork<'_, Store>| -> annals::Result<()> {
            ears.fetch_add(e.amount, Ordering::Relaxed);
            Ok(())
        },
    );

    let rounds: usize = 7;
    let per_round = 1500u64;
    let mut ratios = Vec::new();
    let (mut total_bare, mut total_bus) = (Duration::ZERO, Duration::ZERO);
    let mut i = 0u64;
    for _ in 0..rounds {
        let (mut t_bare, mut t_bus) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..per_round {
            i += 1;
            // A new account each time: the same work on both sides (no history to load).
            let account = format!("acc-{i}");
            let bus_first = i.is_multiple_of(2);
            for side in [bus_first, !bus_first] {
                let start = Instant::now();
                if side {
                    let () = bus
                        .execute(
                            Deposit {
                                account: account.clone(),
                                amount: 1,
                            },
                            &bussed,
                        )
                        .unwrap();
                    t_bus += start.elapsed();
                } else {
                    let e = bare
                        .new_event(&AccountEvent::Deposited(Deposited {
                            account: account.clone(),
                            amount: 1,
                            memo: "salary, rent, groceries: a memo of some fifty bytes".into(),
                        }))
                        .unwrap();
                    bare.append(
                        &Account::stream_name(&account),
                        ExpectedVersion::NoStream,
                        [e],
                    )
                    .unwrap();
                    t_bare += start.elapsed();
                }
            }
        }
        ratios.push(t_bus.as_secs_f64() / t_bare.as_secs_f64());
        total_bare += t_bare;
        total_bus += t_bus;
    }
    assert_eq!(
        heard.load(Ordering::Relaxed),
        i,
        "the listener heard every event"
    );
    ratios.sort_by(f64::total_cmp);
    let n = (rounds as u64 * per_round) as f64;
    println!(
        "bus_round_trip: bare durable append {:.1} us, bus round trip {:.1} us; \
         median of {rounds} interleaved rounds: {:+.2}% (rounds from {:+.2}% to {:+.2}%)",
        total_bare.as_secs_f64() * 1e6 / n,
        total_bus.as_secs_f64() * 1e6 / n,
        (ratios[rounds / 2] - 1.0) * 100.0,
        (ratios[0] - 1.0) * 100.0,
        (ratios[rounds - 1] - 1.0) * 100.0
    );
}

/// The bus's own work, without the disk: the same round trip on the in-memory store.
fn bus_cpu(c: &mut Criterion) {
    let store = annals::domain::InMemoryEventStore::default();
    let mut bus = MessageBus::<annals::domain::InMemoryEventStore>::new();
    bus.handle_with(
        |d: Deposit,
         uow: &mut UnitOfWork<'_, annals::domain::InMemoryEventStore>|
         -> annals::Result<()> {
            uow.get_or_create::<Account>(&d.account)?
                .record(deposit(d.amount));
            Ok(())
        },
    )
    .unwrap();
    bus.listen(
        |e: &Deposited,
         _: &mut UnitOfWork<'_, annals::domain::InMemoryEventStore>|
         -> annals::Result<()> {
            black_box(e.amount);
            Ok(())
        },
    );
    let mut i = 0u64;
    let mut g = c.benchmark_group("bus_round_trip_in_memory");
    g.throughput(Throughput::Elements(1));
    g.bench_function("execute", |b| {
        b.iter(|| {
            i += 1;
            let () = bus
                .execute(
                    Deposit {
                        account: format!("acc-{i}"),
                        amount: i,
                    },
                    &store,
                )
                .unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, aggregate_load, bus_round_trip, bus_cpu);
criterion_main!(benches);
