//! What one run does: the sizes and their presets, the systems and the items (workloads and
//! disk limits) `--systems` and `--workloads` select, and the resolved [`Plan`] with its
//! limits on how much may be written.

use std::path::Path;
use std::time::Duration;

use annals_bench::{self as workloads, BenchResult, System, Workload};
use clap::builder::PossibleValue;

use super::BenchArgs;
use crate::exit::{CliError, CliResult, USAGE};

/// Streams the read store is filled with ([`workloads::fill`]); `read-stream` reads one of them.
pub(super) const READ_STREAMS: u64 = 10;
/// Most bytes one batch workload commits at once (annals keeps a commit within one segment).
const MAX_BATCH_BYTES: u64 = 32 << 20;
/// Room for the framing and names of one event, on top of its payload.
const EVENT_OVERHEAD: u64 = 256;
/// Most bytes one workload may write per system.
const MAX_VOLUME: u64 = 8 << 30;

/// How much work `annals bench` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Size {
    /// 500 single appends, 20,000 events for batches and reads (seconds on an SSD).
    Small,
    /// 3,000 single appends, 200,000 events (under a minute on an SSD).
    Medium,
    /// 20,000 single appends, 1,000,000 events (about a minute on an SSD).
    Large,
}

/// The amounts a [`Size`] stands for.
#[derive(Debug, Clone, Copy)]
struct Preset {
    /// Single-event appends per append workload.
    appends: u64,
    /// Events of the read store and of each batch workload.
    events: u64,
    /// Bytes written by the sequential-write measure.
    seq_bytes: u64,
    /// Least time spent in each read and reopen measure.
    min_time: Duration,
}

impl Size {
    /// The amounts of this size.
    fn preset(self) -> Preset {
        match self {
            Size::Small => Preset {
                appends: 500,
                events: 20_000,
                seq_bytes: 64 << 20,
                min_time: Duration::from_millis(200),
            },
            Size::Medium => Preset {
                appends: 3_000,
                events: 200_000,
                seq_bytes: 256 << 20,
                min_time: Duration::from_millis(500),
            },
            Size::Large => Preset {
                appends: 20_000,
                events: 1_000_000,
                seq_bytes: 1 << 30,
                min_time: Duration::from_secs(1),
            },
        }
    }

    /// The name `--size` takes.
    pub(super) fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
        }
    }
}

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(super) enum SystemKind {
    /// annals, default options.
    Annals,
    /// annals' PostgreSQL backend, synchronous_commit on (needs --pg-url or ANNALS_PG_URL).
    Postgres,
    /// SQLite, WAL, synchronous=FULL.
    Sqlite,
    /// A plain redb table and index.
    Redb,
}

impl SystemKind {
    /// The name used in tables and JSON.
    pub(super) fn name(self) -> &'static str {
        match self {
            SystemKind::Annals => "annals",
            SystemKind::Postgres => "postgres",
            SystemKind::Sqlite => "sqlite",
            SystemKind::Redb => "redb",
        }
    }

    /// Opens (or creates) this system's store in `dir`, or for PostgreSQL in the database
    /// `pg` names.
    pub(super) fn open(self, dir: &Path, pg: Option<&str>) -> BenchResult<Box<dyn System>> {
        Ok(match self {
            SystemKind::Annals => Box::new(workloads::open_annals(dir)?),
            SystemKind::Postgres => Box::new(workloads::pg::open_postgres(
                pg.ok_or("no PostgreSQL database for this phase")?,
            )?),
            SystemKind::Sqlite => Box::new(workloads::open_sqlite(dir)?),
            SystemKind::Redb => Box::new(workloads::open_redb(dir)?),
        })
    }
}

/// What `--workloads` can select: a workload run on every system, or a limit of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Item {
    /// A workload run on every selected system.
    Run(Workload),
    /// The raw `write + fdatasync` loop.
    Fdatasync,
    /// The sequential write bandwidth.
    SeqWrite,
}

/// Everything `--workloads` accepts, in the order it runs.
const ITEMS: [Item; 13] = [
    Item::Fdatasync,
    Item::SeqWrite,
    Item::Run(Workload::Append1),
    Item::Run(Workload::Append1Threads8),
    Item::Run(Workload::Batch100),
    Item::Run(Workload::Batch1000),
    Item::Run(Workload::TypedJson),
    Item::Run(Workload::TypedBincode),
    Item::Run(Workload::ReadStream),
    Item::Run(Workload::ReadAll),
    Item::Run(Workload::LoadAggregate),
    Item::Run(Workload::LoadAggregateBincode),
    Item::Run(Workload::Reopen),
];

impl Item {
    /// The name `--workloads` takes.
    pub(super) fn name(self) -> &'static str {
        match self {
            Item::Run(w) => w.name(),
            Item::Fdatasync => "fdatasync",
            Item::SeqWrite => "seq-write",
        }
    }

    /// What it measures.
    fn description(self) -> &'static str {
        match self {
            Item::Run(w) => w.description(),
            Item::Fdatasync => "disk limit: raw write of one payload + fdatasync, one thread",
            Item::SeqWrite => {
                "disk limits: sequential write bandwidth (1 MiB writes, one sync), and one batch of \
                 1,000 events' bytes + fdatasync"
            }
        }
    }
}

impl clap::ValueEnum for Item {
    fn value_variants<'a>() -> &'a [Self] {
        &ITEMS
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()).help(self.description()))
    }
}

/// Whether `w` writes (and runs on the write store) rather than reads the filled store.
pub(super) fn is_write(w: Workload) -> bool {
    matches!(
        w,
        Workload::Append1
            | Workload::Append1Threads8
            | Workload::Batch100
            | Workload::Batch1000
            | Workload::TypedJson
            | Workload::TypedBincode
    )
}

/// Events per append of a batch workload, if `w` is one.
pub(super) fn batch_size(w: Workload) -> Option<u64> {
    match w {
        Workload::Batch100 => Some(100),
        Workload::Batch1000 | Workload::TypedJson | Workload::TypedBincode => Some(1000),
        _ => None,
    }
}

/// The resolved parameters of one run.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// The `--size` the amounts come from.
    pub(super) size: Size,
    /// Single-event appends per append workload.
    pub(super) appends: u64,
    /// Events of the read store and of each batch workload.
    pub(super) events: u64,
    /// Payload bytes per event.
    pub(super) payload: usize,
    /// Bytes of the sequential-write measure.
    pub(super) seq_bytes: u64,
    /// Least time per read and reopen measure.
    pub(super) min_time: Duration,
    /// Systems, in canonical order, without duplicates.
    pub(super) systems: Vec<SystemKind>,
    /// The PostgreSQL server's connection string, when postgres is among the systems.
    pub(super) pg_url: Option<String>,
    /// Workloads and limits, in run order, without duplicates.
    pub(super) items: Vec<Item>,
}

impl Plan {
    /// Resolves and checks the options.
    pub(super) fn new(args: &BenchArgs) -> CliResult<Plan> {
        let preset = args.size.preset();
        let systems = args.systems()?;
        let pg_url = if systems.contains(&SystemKind::Postgres) {
            Some(args.require_pg_url("postgres")?)
        } else {
            None
        };
        let items = ITEMS
            .into_iter()
            .filter(|i| args.workloads.is_empty() || args.workloads.contains(i))
            .collect();
        let plan = Plan {
            size: args.size,
            appends: args.appends.unwrap_or(preset.appends),
            events: args.events.unwrap_or(preset.events),
            payload: args.payload,
            seq_bytes: preset.seq_bytes,
            min_time: preset.min_time,
            systems,
            pg_url,
            items,
        };
        plan.check_volumes()?;
        Ok(plan)
    }

    /// Refuses combinations that would write too much at once or in all.
    fn check_volumes(&self) -> CliResult<()> {
        let event_bytes = self.payload as u64 + EVENT_OVERHEAD;
        for w in self.workloads() {
            if let Some(batch) = batch_size(w) {
                let bytes = batch * event_bytes;
                if bytes > MAX_BATCH_BYTES {
                    return Err(CliError::new(
                        USAGE,
                        format!(
                            "{} with {}-byte payloads would commit about {} MB at once (the \
                             limit is {} MiB); lower --payload or leave it out with --workloads",
                            w.name(),
                            self.payload,
                            bytes / 1_000_000,
                            MAX_BATCH_BYTES >> 20
                        ),
                    ));
                }
            }
        }
        for (what, n) in [("--events", self.events), ("--appends", self.appends)] {
            let bytes = n.saturating_mul(event_bytes);
            if bytes > MAX_VOLUME {
                return Err(CliError::new(
                    USAGE,
                    format!(
                        "{what} {n} with {}-byte payloads would write about {} GB per system \
                         (the limit is {} GiB); lower {what} or --payload",
                        self.payload,
                        bytes / 1_000_000_000,
                        MAX_VOLUME >> 30
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The selected workloads that run on every system, in run order.
    pub(super) fn workloads(&self) -> impl Iterator<Item = Workload> + '_ {
        self.items.iter().filter_map(|i| match i {
            Item::Run(w) => Some(*w),
            _ => None,
        })
    }

    /// Whether `item` was selected.
    pub(super) fn has(&self, item: Item) -> bool {
        self.items.contains(&item)
    }

    /// Events in each stream of the read store.
    pub(super) fn per_stream(&self) -> u64 {
        self.events / READ_STREAMS
    }

    /// Events in the read store (the aggregate's history comes on top when it is selected).
    pub(super) fn read_events(&self) -> u64 {
        self.per_stream() * READ_STREAMS
    }

    /// Events in the read store, the aggregates' histories (JSON and bincode) included when an
    /// aggregate load is selected.
    pub(super) fn stored_events(&self) -> u64 {
        let aggregate = if self.has_aggregate() {
            2 * workloads::AGGREGATE_EVENTS
        } else {
            0
        };
        self.read_events() + aggregate
    }

    /// Whether an aggregate load is selected (the read store then holds both aggregates).
    pub(super) fn has_aggregate(&self) -> bool {
        self.has(Item::Run(Workload::LoadAggregate))
            || self.has(Item::Run(Workload::LoadAggregateBincode))
    }

    /// Bytes the caller supplies per event of the read store: payload, type, stream name, id
    /// (16) and timestamp (8).
    pub(super) fn caller_bytes(&self) -> u64 {
        let stream = "fill-0".len() as u64;
        self.payload as u64 + "Deposited".len() as u64 + stream + 16 + 8
    }

    /// Whether the read store is needed.
    pub(super) fn needs_fill(&self) -> bool {
        self.workloads().any(|w| !is_write(w))
    }

    /// Steps of the progress bar.
    pub(super) fn steps(&self) -> u64 {
        let limits = self
            .items
            .iter()
            .filter(|i| !matches!(i, Item::Run(_)))
            .count()
            // The sequential write also times one batch's bytes + fdatasync.
            + usize::from(self.has(Item::SeqWrite));
        let runs = self.workloads().count() + usize::from(self.needs_fill());
        (limits + runs * self.systems.len()) as u64
    }
}

/// The table label of `w`.
pub(super) fn label(plan: &Plan, w: Workload) -> String {
    match w {
        Workload::Append1 => "append 1 event, 1 thread".into(),
        Workload::Append1Threads8 => "append 1 event, 8 threads".into(),
        Workload::Batch100 => "batches of 100".into(),
        Workload::Batch1000 => "batches of 1,000".into(),
        Workload::ReadStream => format!("read 1 stream of {}", thousands(plan.per_stream())),
        Workload::ReadAll => format!("read all {} events", thousands(plan.stored_events())),
        Workload::TypedJson => "typed batches of 1,000, JSON".into(),
        Workload::TypedBincode => "typed batches of 1,000, bincode".into(),
        Workload::LoadAggregate => format!(
            "load a {}-event aggregate, JSON",
            thousands(workloads::AGGREGATE_EVENTS)
        ),
        Workload::LoadAggregateBincode => format!(
            "load a {}-event aggregate, bincode",
            thousands(workloads::AGGREGATE_EVENTS)
        ),
        Workload::Reopen => format!("reopen, {} events", thousands(plan.stored_events())),
    }
}

/// `n` with thousands separators.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(Workload::from_name(w.name()), Some(w));
        }
    }
}
