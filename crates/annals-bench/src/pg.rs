//! annals' PostgreSQL backend ([`annals::pg::PgStore`]) as a system under test (feature
//! `postgres`), the throwaway databases it runs in, the server settings a run reports, and the
//! checks of the writer-scaling workload.
//!
//! Every run works in a database of its own ([`PgDatabase`], `annals_bench_<uuid>`), created
//! on the server a connection string reaches and dropped when the guard goes.

use std::time::{Duration, SystemTime};

use annals::pg::PgStore;
use annals::{Direction, ExpectedVersion, Position};
use parking_lot::Mutex;

use crate::aggregate::{Account, aggregate_stream};
use crate::systems::new_event;
use crate::{BenchResult, Event, PayloadCodec, System};

/// Most events [`PgStore`]'s reads return per call: reads page through with this limit.
pub const PG_PAGE: usize = 10_000;
/// How long connecting may take before it fails (when the connection string sets no
/// `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one [`PgStore`] opens (its pool's size: it opens them all when it connects).
pub const PG_POOL_CONNECTIONS: u64 = 16;

/// `e` with its causes (`postgres::Error`'s own text is only its kind, "db error").
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// A plain connection to the database `url` names (for the run's own queries, not the store's).
pub fn client(url: &str) -> BenchResult<postgres::Client> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot connect to PostgreSQL: {}", describe(&e)).into())
}

/// `url` with its database replaced by `dbname`: a libpq `key=value` string gets ` dbname=…`
/// appended (the last one counts); a `postgres://` or `postgresql://` URI gets its path
/// replaced.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let trimmed = url.trim();
    let Some(rest) = ["postgresql://", "postgres://"]
        .iter()
        .find_map(|scheme| trimmed.strip_prefix(scheme).map(|r| (scheme, r)))
    else {
        return format!("{trimmed} dbname={dbname}");
    };
    let (scheme, rest) = rest;
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let authority = main.split_once('/').map_or(main, |(a, _)| a);
    let mut out = format!("{scheme}{authority}/{dbname}");
    if let Some(q) = query {
        // A `dbname` parameter would override the path: drop it.
        let kept: Vec<&str> = q
            .split('&')
            .filter(|kv| !kv.starts_with("dbname="))
            .collect();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
    }
    out
}

/// A database of this run on a PostgreSQL server, dropped (its remaining connections ended)
/// when the guard is dropped.
#[derive(Debug)]
pub struct PgDatabase {
    server: String,
    name: String,
    url: String,
}

impl PgDatabase {
    /// Creates a new, empty database `annals_bench_<uuid>` on the server `server_url` reaches
    /// (the user must be allowed to create databases).
    pub fn create(server_url: &str) -> BenchResult<PgDatabase> {
        let name = format!("annals_bench_{}", uuid::Uuid::now_v7().simple());
        client(server_url)?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| format!("cannot create the database {name}: {}", describe(&e)))?;
        Ok(PgDatabase {
            server: server_url.to_owned(),
            url: with_dbname(server_url, &name),
            name,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection string of the database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database now, reporting a failure (dropping the guard does the same silently).
    pub fn remove(self) -> BenchResult<()> {
        let result = self.drop_database();
        std::mem::forget(self);
        result
    }

    fn drop_database(&self) -> BenchResult<()> {
        client(&self.server)?
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .map_err(|e| format!("cannot drop the database {}: {}", self.name, describe(&e)).into())
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Err(e) = self.drop_database() {
            eprintln!("annals bench: {e}");
        }
    }
}

/// The server settings a run reports and depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    /// `server_version`.
    pub server_version: String,
    /// `synchronous_commit` (anything but `off` waits for the commit's WAL to be flushed).
    pub synchronous_commit: String,
    /// `fsync`.
    pub fsync: String,
    /// `wal_sync_method`.
    pub wal_sync_method: String,
    /// `data_directory`, when the user may read it.
    pub data_directory: Option<String>,
    /// `max_connections`.
    pub max_connections: u64,
    /// `superuser_reserved_connections`.
    pub reserved_connections: u64,
}

impl PgSettings {
    /// Reads the settings of a session on `url` (role and database settings included).
    pub fn read(url: &str) -> BenchResult<PgSettings> {
        let mut c = client(url)?;
        let mut show = |name: &str| -> BenchResult<String> {
            Ok(c.query_one(&format!("SHOW {name}"), &[])
                .map_err(|e| format!("SHOW {name}: {}", describe(&e)))?
                .get(0))
        };
        let number = |v: String, name: &str| -> BenchResult<u64> {
            v.parse()
                .map_err(|_| format!("{name} is `{v}`, not a number").into())
        };
        Ok(PgSettings {
            server_version: show("server_version")?,
            synchronous_commit: show("synchronous_commit")?,
            fsync: show("fsync")?,
            wal_sync_method: show("wal_sync_method")?,
            data_directory: show("data_directory").ok(),
            max_connections: number(show("max_connections")?, "max_connections")?,
            reserved_connections: number(
                show("superuser_reserved_connections")?,
                "superuser_reserved_connections",
            )?,
        })
    }

    /// Why a commit would return before it is on the disk, if it would.
    pub fn not_durable(&self) -> Option<String> {
        if self.synchronous_commit == "off" {
            Some(
                "the server runs with synchronous_commit=off: its commits return before they are \
                 on the disk (turn it on for the server, or add options='-c \
                 synchronous_commit=on' to the connection string)"
                    .into(),
            )
        } else if self.fsync == "off" {
            Some("the server runs with fsync=off: nothing it writes is synced to the disk".into())
        } else {
            None
        }
    }

    /// Connections a user without superuser rights may open.
    pub fn usable_connections(&self) -> u64 {
        self.max_connections
            .saturating_sub(self.reserved_connections)
    }
}

/// annals' PostgreSQL backend: [`PgStore`] with the server's settings (the bench requires
/// `synchronous_commit` on). Appends go through [`PgStore::append`] with
/// [`ExpectedVersion::Any`]: in one transaction it reads the stream's version and inserts the
/// events, the same work as SQLite's append (reading the version beforehand with
/// [`PgStore::stream_version`] would add a round trip the other systems do not make). Reads
/// page through the 10,000-event pages [`PgStore`] returns.
pub struct Postgres {
    /// The store.
    pub store: PgStore,
    url: String,
    /// A plain connection for `pg_database_size`, opened on first use (not when the store
    /// opens, so that reopening costs what [`PgStore::connect`] costs).
    sizer: Mutex<Option<postgres::Client>>,
}

/// Connects [`PgStore`] to the database `url` names (creating the schema if it is missing).
pub fn open_postgres(url: &str) -> BenchResult<Postgres> {
    Ok(Postgres {
        store: PgStore::connect(url)?,
        url: url.to_owned(),
        sizer: Mutex::new(None),
    })
}

impl System for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn append(&self, stream: &str, events: &[Event]) -> BenchResult<()> {
        let now = SystemTime::now();
        self.store.append(
            stream,
            ExpectedVersion::Any,
            events.iter().map(|e| new_event(e, now)),
        )?;
        Ok(())
    }

    /// Pages of at most [`PG_PAGE`] events, from the version after the last one read; a short
    /// page is the last (the workload checks the count).
    fn read_stream(&self, stream: &str) -> BenchResult<u64> {
        let mut from = 0;
        let mut n = 0;
        loop {
            let page = self
                .store
                .read_stream(stream, from, Direction::Forwards, PG_PAGE)?;
            for e in &page {
                std::hint::black_box((e.event_type().len(), e.payload().first()));
            }
            n += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == PG_PAGE => from = last.version() + 1,
                _ => return Ok(n),
            }
        }
    }

    /// Pages of at most [`PG_PAGE`] events, from the position after the last one read; a short
    /// page is the last (the workload checks the count; the bench writes no `$` stream, which
    /// [`PgStore::read_all`] would leave out of a page).
    fn read_all(&self) -> BenchResult<u64> {
        let mut from = Position::START;
        let mut n = 0;
        loop {
            let page = self.store.read_all(from, Direction::Forwards, PG_PAGE)?;
            for e in &page {
                std::hint::black_box((e.stream().len(), e.event_type().len(), e.payload().first()));
            }
            n += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == PG_PAGE => {
                    from = Position::new(last.position().as_u64() + 1)
                }
                _ => return Ok(n),
            }
        }
    }

    /// Through the domain floor's repository, as annals does ([`PgStore`] implements its
    /// `EventStore`).
    fn load_aggregate(&self, codec: PayloadCodec) -> BenchResult<Account> {
        let (_, id) = aggregate_stream(codec);
        Ok(annals::domain::Repository::<Account, _>::new(&self.store).get(id)?)
    }

    /// `pg_database_size(current_database())`: the database's files (tables, indexes, TOAST,
    /// free space maps), not the cluster's write-ahead log.
    fn disk_bytes(&self) -> BenchResult<u64> {
        let mut sizer = self.sizer.lock();
        if sizer.is_none() {
            *sizer = Some(client(&self.url)?);
        }
        let c = sizer.as_mut().ok_or("no connection")?;
        let bytes: i64 = c
            .query_one("SELECT pg_database_size(current_database())", &[])
            .map_err(|e| format!("pg_database_size: {}", describe(&e)))?
            .get(0);
        Ok(u64::try_from(bytes).unwrap_or(0))
    }
}

/// What the log of a database holds, to check a writer-scaling run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCheck {
    /// Events in `annals_events`.
    pub events: u64,
    /// Their lowest position (0 when there is none).
    pub first: u64,
    /// Their highest position (0 when there is none).
    pub last: u64,
    /// The last position given out (`annals_head`).
    pub head: u64,
}

impl LogCheck {
    /// Reads the figures of the database `url` names.
    pub fn read(url: &str) -> BenchResult<LogCheck> {
        let mut c = client(url)?;
        let row = c
            .query_one(
                "SELECT count(*), coalesce(min(position), 0), coalesce(max(position), 0), \
                 (SELECT position FROM annals_head WHERE id = 1) FROM annals_events",
                &[],
            )
            .map_err(|e| format!("counting the events: {}", describe(&e)))?;
        let unsigned = |i: usize| -> BenchResult<u64> {
            let v: Option<i64> = row.get(i);
            u64::try_from(v.unwrap_or(0)).map_err(|_| "a negative count or position".into())
        };
        Ok(LogCheck {
            events: unsigned(0)?,
            first: unsigned(1)?,
            last: unsigned(2)?,
            head: unsigned(3)?,
        })
    }

    /// What is wrong if the log does not hold exactly `expected` events at positions
    /// `1..=expected` (no gap, no extra), with the head at the last.
    pub fn problem(&self, expected: u64) -> Option<String> {
        if self.events != expected {
            return Some(format!(
                "the database holds {} events but the writers reported {expected} appends",
                self.events
            ));
        }
        if expected > 0 && (self.first != 1 || self.last != expected) {
            return Some(format!(
                "the {expected} events hold positions {} to {}, not 1 to {expected}: the global \
                 order has a gap",
                self.first, self.last
            ));
        }
        if self.head != self.last {
            return Some(format!(
                "the head is at position {} but the last event at {}",
                self.head, self.last
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_goes_where_each_form_of_url_takes_it() {
        assert_eq!(
            with_dbname("host='/tmp/x' user=postgres dbname=annals_test", "b"),
            "host='/tmp/x' user=postgres dbname=annals_test dbname=b"
        );
        assert_eq!(
            with_dbname("postgresql://u:p@localhost:5432/app?sslmode=disable", "b"),
            "postgresql://u:p@localhost:5432/b?sslmode=disable"
        );
        assert_eq!(
            with_dbname("postgres://localhost?dbname=app", "b"),
            "postgres://localhost/b"
        );
        let config: postgres::Config = with_dbname("host=/tmp user=u", "b").parse().unwrap();
        assert_eq!(config.get_dbname(), Some("b"));
    }

    #[test]
    fn a_gap_or_a_missing_event_is_a_problem() {
        let ok = LogCheck {
            events: 10,
            first: 1,
            last: 10,
            head: 10,
        };
        assert_eq!(ok.problem(10), None);
        assert!(ok.problem(11).is_some());
        let gap = LogCheck { last: 11, ..ok };
        assert!(gap.problem(10).unwrap().contains("gap"));
        let head = LogCheck { head: 12, ..ok };
        assert!(head.problem(10).is_some());
    }
}
