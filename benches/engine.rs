//! annals against SQLite (WAL, synchronous=FULL) and a plain redb table, on the same workloads
//! in the same run, plus the raw `write + fdatasync` loop as the physical limit, and the time to
//! reopen each after a clean close. With the feature `postgres` and `ANNALS_PG_URL` set, annals'
//! PostgreSQL backend too (in a fresh database, dropped at the end).
//!
//! Run: `cargo bench -p annals-bench --bench engine` (add `--features postgres` with
//! `ANNALS_PG_URL` for PostgreSQL). The workload code is the `annals-bench`
//! crate (`crates/annals-bench`), shared with `annals bench`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use annals_bench::{Event, PayloadCodec, System};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const PAYLOAD: usize = 100;

/// The systems, and what must outlive them (PostgreSQL's database, dropped last).
struct Systems {
    list: Vec<Box<dyn System>>,
    #[cfg(feature = "postgres")]
    _database: Option<annals_bench::pg::PgDatabase>,
}

impl std::ops::Deref for Systems {
    type Target = Vec<Box<dyn System>>;
    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

fn systems(dir: &Path) -> Systems {
    #[allow(unused_mut)]
    let mut list: Vec<Box<dyn System>> = vec![
        Box::new(annals_bench::open_annals(dir).unwrap()),
        Box::new(annals_bench::open_sqlite(dir).unwrap()),
        Box::new(annals_bench::open_redb(dir).unwrap()),
    ];
    #[cfg(feature = "postgres")]
    let database = std::env::var("ANNALS_PG_URL").ok().map(|url| {
        let db = annals_bench::pg::PgDatabase::create(&url).unwrap();
        list.push(Box::new(annals_bench::pg::open_postgres(db.url()).unwrap()));
        db
    });
    Systems {
        list,
        #[cfg(feature = "postgres")]
        _database: database,
    }
}

fn durable_appends(c: &mut Criterion) {
    let dir =
        tempfile::tempdir_in(std::env::var("ANNALS_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    let mut g = c.benchmark_group("append_1_event_1_thread");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));
    {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("raw.bin"))
            .unwrap();
        let buf = vec![0x5Au8; PAYLOAD];
        let mut at = 0u64;
        g.bench_function("raw write+fdatasync", |b| {
            b.iter(|| {
                file.write_all_at(&buf, at).unwrap();
                file.sync_data().unwrap();
                at += PAYLOAD as u64;
            })
        });
    }
    let systems = systems(dir.path());
    for sys in systems.iter() {
        let event = Event::new(PAYLOAD);
        g.bench_function(sys.name(), |b| {
            b.iter(|| {
                let e = Event {
                    id: uuid::Uuid::now_v7(),
                    ..event.clone()
                };
                sys.append("one", std::slice::from_ref(&e)).unwrap()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("append_1_event_8_threads");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));
    for sys in systems.iter() {
        g.bench_function(sys.name(), |b| {
            b.iter_custom(|iters| {
                let total = iters.max(8);
                let elapsed = annals_bench::appends(sys.as_ref(), 8, total, PAYLOAD).unwrap();
                elapsed.mul_f64(iters as f64 / total.div_ceil(8).saturating_mul(8) as f64)
            })
        });
    }
    g.finish();

    for batch in [100usize, 1000] {
        let mut g = c.benchmark_group(format!("append_batch_{batch}"));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(8))
            .warm_up_time(Duration::from_secs(1));
        g.throughput(Throughput::Elements(batch as u64));
        for sys in systems.iter() {
            g.bench_with_input(BenchmarkId::new(sys.name(), batch), &batch, |b, &batch| {
                b.iter_custom(|iters| {
                    annals_bench::batches(sys.as_ref(), iters, batch, PAYLOAD).unwrap()
                })
            });
        }
        g.finish();
    }
}

fn reads(c: &mut Criterion) {
    let dir =
        tempfile::tempdir_in(std::env::var("ANNALS_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
    let systems = systems(dir.path());
    // 10 streams of 10,000 events, written round robin in batches of 1000.
    for sys in systems.iter() {
        annals_bench::fill(sys.as_ref(), 100_000, 10, PAYLOAD).unwrap();
    }
    let mut g = c.benchmark_group("read_stream_10000");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(10_000));
    for sys in systems.iter() {
        assert_eq!(sys.read_stream("fill-3").unwrap(), 10_000);
        g.bench_function(sys.name(), |b| {
            b.iter(|| sys.read_stream("fill-3").unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("read_all_100000");
    g.sample_size(10).measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements(100_000));
    for sys in systems.iter() {
        assert_eq!(sys.read_all().unwrap(), 100_000);
        g.bench_function(sys.name(), |b| b.iter(|| sys.read_all().unwrap()));
    }
    g.finish();

    // The same aggregate load as `annals bench --workloads aggregate` (annals through its
    // repository; see also `benches/domain.rs` against a single-table redb layout).
    let mut g = c.benchmark_group("load_aggregate_10000");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(annals_bench::AGGREGATE_EVENTS));
    let balance = annals_bench::balance_of(annals_bench::AGGREGATE_EVENTS);
    for sys in systems.iter() {
        annals_bench::fill_aggregate(sys.as_ref()).unwrap();
        for codec in [PayloadCodec::Json, PayloadCodec::Bincode] {
            assert_eq!(sys.load_aggregate(codec).unwrap().balance, balance);
            g.bench_function(format!("{} {}", sys.name(), codec.name()), |b| {
                b.iter(|| sys.load_aggregate(codec).unwrap())
            });
        }
    }
    g.finish();

    // Closed cleanly here; each reopen opens the store (120,000 events) and reads one stream.
    let names: Vec<&'static str> = systems.iter().map(|s| s.name()).collect();
    drop(systems);
    let mut g = c.benchmark_group("reopen_120000");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for name in names {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| annals_bench::reopen(iters, || open(name, dir.path())).unwrap())
        });
    }
    g.finish();
}

/// Opens the system called `name` in `dir`.
fn open(name: &str, dir: &Path) -> annals_bench::BenchResult<Box<dyn System>> {
    Ok(match name {
        "annals" => Box::new(annals_bench::open_annals(dir)?),
        "sqlite" => Box::new(annals_bench::open_sqlite(dir)?),
        _ => Box::new(annals_bench::open_redb(dir)?),
    })
}

criterion_group!(benches, durable_appends, reads);
criterion_main!(benches);
