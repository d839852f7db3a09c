//! The PostgreSQL backend (feature `postgres`): events in a PostgreSQL database, for when one
//! process is not enough. [`PgStore`] offers the store's appends (every kind of expected
//! version, multi-stream transactions, idempotent re-appends by event id) and reads (by stream,
//! the whole log, category and event type, both directions), and implements the domain's
//! [`EventStore`](crate::domain::EventStore), so the repository, the message bus, units of
//! work and workflows run on it unchanged.
//!
//! # Schema (version 1)
//!
//! | table | what |
//! |---|---|
//! | `annals_schema` | one row: the schema version (a newer one is refused) |
//! | `annals_head` | one row: the last position given out |
//! | `annals_streams` | each stream's current version |
//! | `annals_checkpoints` | each catch-up subscription's resume position |
//! | `annals_events` | the events: `position` (the global order, from 1), `stream`, `category`, `version`, `id` (unique), type, schema version, timestamp, correlation and causation ids, published flag, payload encoding, metadata and payload |
//!
//! # No gaps, no skips
//!
//! Every append locks the one `annals_head` row (`SELECT … FOR UPDATE`) before it gives out
//! positions, and holds it until it commits: appends commit one at a time, in position order.
//! So no event ever commits with a position lower than one a reader has already seen, and a
//! reader that follows the global order (`read_all` from the last position it saw) never skips
//! one, whatever the number of writers and processes. The price is that appends do not commit
//! in parallel (each still costs one round trip and one commit of the server); this is the
//! "serialising commits" answer, chosen over a high-water mark because it needs no
//! sequence and no reader-side waiting, and it ports to CockroachDB and YugabyteDB (row locks
//! with `FOR UPDATE`; no advisory locks, no sequences relied on for order).
//!
//! ```no_run
//! use annals::pg::PgStore;
//! use annals::{Direction, ExpectedVersion, NewEvent, Position};
//!
//! let store = PgStore::connect("host=/run/postgresql user=app dbname=app")?;
//! store.append("order-1", ExpectedVersion::NoStream, [NewEvent::new("Placed", "{}")])?;
//! let all = store.read_all(Position::START, Direction::Forwards, 100)?;
//! assert_eq!(all[0].stream(), "order-1");
//! # Ok::<(), annals::Error>(())
//! ```

use std::time::{Duration, UNIX_EPOCH};

use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;
use r2d2_postgres::r2d2::{Pool, PooledConnection};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{AppendResult, NewEvent, RecordedEvent};
use crate::log::format::PayloadEncoding;
use crate::names::{category_of, check_stream_name};
use crate::values::{Direction, ExpectedVersion, Position};

/// The schema version this build creates and reads.
pub const SCHEMA_VERSION: i32 = 1;
/// Most events one read returns (reads take a `limit`; this bounds what one query allocates).
const PAGE: usize = 10_000;

type Conn = PooledConnection<PostgresConnectionManager<NoTls>>;

/// An event store in a PostgreSQL database; see the [module](self).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool<PostgresConnectionManager<NoTls>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn db(e: impl std::fmt::Display) -> Error {
    Error::Database {
        reason: e.to_string(),
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS annals_schema (version INT NOT NULL);
CREATE TABLE IF NOT EXISTS annals_head (id INT PRIMARY KEY, position BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS annals_streams (stream TEXT PRIMARY KEY, version BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS annals_events (
    position BIGINT PRIMARY KEY,
    stream TEXT NOT NULL,
    category TEXT NOT NULL,
    version BIGINT NOT NULL,
    id UUID NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    schema_version INT NOT NULL,
    timestamp_nanos BIGINT NOT NULL,
    correlation_id UUID,
    causation_id UUID,
    publish BOOLEAN NOT NULL,
    encoding SMALLINT NOT NULL,
    metadata BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    UNIQUE (stream, version)
);
CREATE TABLE IF NOT EXISTS annals_checkpoints (name TEXT PRIMARY KEY, position BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS annals_events_by_type ON annals_events (event_type, position);
CREATE INDEX IF NOT EXISTS annals_events_by_category ON annals_events (category, position);
";

fn encoding_code(e: PayloadEncoding) -> i16 {
    match e {
        PayloadEncoding::Raw => 0,
        PayloadEncoding::Bincode => 1,
        PayloadEncoding::Json => 2,
    }
}

fn encoding_of(code: i16) -> Result<PayloadEncoding> {
    Ok(match code {
        0 => PayloadEncoding::Raw,
        1 => PayloadEncoding::Bincode,
        2 => PayloadEncoding::Json,
        other => {
            return Err(db(format!(
                "unknown payload encoding {other} in the database"
            )));
        }
    })
}

/// A version or position from the database, checked (they are never negative).
fn unsigned(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| db(format!("a negative {what} ({v}) in the database")))
}

/// A version or position for the database (`i64`).
fn signed(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} {v} is past i64::MAX")))
}

const COLUMNS: &str = "position, stream, version, id, event_type, schema_version, \
    timestamp_nanos, correlation_id, causation_id, publish, encoding, metadata, payload";

fn event_of(row: &postgres::Row) -> Result<RecordedEvent> {
    let stream: String = row.get(1);
    let nanos = unsigned(row.get(6), "timestamp")?;
    let event = NewEvent {
        id: row.get(3),
        event_type: std::borrow::Cow::Owned(row.get(4)),
        schema_version: u32::try_from(row.get::<_, i32>(5))
            .map_err(|_| db("a negative schema version in the database"))?,
        timestamp: UNIX_EPOCH + Duration::from_nanos(nanos),
        correlation_id: row.get(7),
        causation_id: row.get(8),
        publish: row.get(9),
        encoding: encoding_of(row.get(10))?,
        metadata: row.get::<_, Vec<u8>>(11).into(),
        payload: row.get::<_, Vec<u8>>(12).into(),
    };
    RecordedEvent::detached(
        &stream,
        unsigned(row.get(2), "version")?,
        Position::new(unsigned(row.get(0), "position")?),
        &event,
    )
}

/// One stream's part of a [`PgStore::transaction`].
#[derive(Debug, Clone)]
pub struct PgPart {
    /// The stream.
    pub stream: String,
    /// What its version must be.
    pub expected: ExpectedVersion,
    /// What to append.
    pub events: Vec<NewEvent>,
}

impl PgStore {
    /// Connects (a pool of connections) and creates the schema if it is missing. A database
    /// whose schema is newer than this build's is refused. `url` is a libpq connection string
    /// (`host=/path/to/socket user=u dbname=d`, or `postgresql://…`).
    pub fn connect(url: &str) -> Result<PgStore> {
        let config: postgres::Config = url.parse().map_err(db)?;
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = Pool::builder()
            .max_size(16)
            .connection_timeout(Duration::from_secs(30))
            .build(manager)
            .map_err(db)?;
        let store = PgStore { pool };
        store.create_schema()?;
        Ok(store)
    }

    fn conn(&self) -> Result<Conn> {
        self.pool.get().map_err(db)
    }

    fn create_schema(&self) -> Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db)?;
        tx.batch_execute(SCHEMA).map_err(db)?;
        // One creator at a time (the lock on the schema row table's only row).
        tx.batch_execute("LOCK TABLE annals_schema IN EXCLUSIVE MODE")
            .map_err(db)?;
        let found: Option<i32> = tx
            .query_opt("SELECT version FROM annals_schema", &[])
            .map_err(db)?
            .map(|r| r.get(0));
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(Error::InvalidArgument(format!(
                    "the database holds annals schema version {v}, newer than this build's \
                     {SCHEMA_VERSION}: use a newer annals"
                )));
            }
            Some(_) => {}
            None => {
                tx.execute(
                    "INSERT INTO annals_schema (version) VALUES ($1)",
                    &[&SCHEMA_VERSION],
                )
                .map_err(db)?;
                tx.execute(
                    "INSERT INTO annals_head (id, position) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
                    &[],
                )
                .map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    /// Appends `events` to `stream` if its version is `expected`; see
    /// [`Store::append`](crate::Store::append) (the same rules, re-appends by event id
    /// included).
    pub fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Result<AppendResult> {
        let mut r = self.transaction(vec![PgPart {
            stream: stream.to_owned(),
            expected,
            events: events.into_iter().collect(),
        }])?;
        Ok(r.pop().expect("one result per part"))
    }

    /// Appends every part, all or nothing, each with its expected version (a part may name a
    /// stream an earlier part appended to).
    pub fn transaction(&self, parts: Vec<PgPart>) -> Result<Vec<AppendResult>> {
        for p in &parts {
            check_stream_name(&p.stream, true)?;
            for e in &p.events {
                crate::names::check_event_type(&e.event_type)?;
            }
        }
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db)?;
        // Appends commit one at a time, in position order: see "No gaps, no skips".
        let head: i64 = tx
            .query_one(
                "SELECT position FROM annals_head WHERE id = 1 FOR UPDATE",
                &[],
            )
            .map_err(db)?
            .get(0);
        let mut position = unsigned(head, "position")?;
        if let Some(results) = already_appended(&mut tx, &parts, position)? {
            return Ok(results);
        }
        let mut versions: std::collections::HashMap<String, Option<u64>> = Default::default();
        let mut results = Vec::with_capacity(parts.len());
        for p in &parts {
            let current = match versions.get(&p.stream) {
                Some(v) => *v,
                None => tx
                    .query_opt(
                        "SELECT version FROM annals_streams WHERE stream = $1",
                        &[&p.stream],
                    )
                    .map_err(db)?
                    .map(|r| unsigned(r.get(0), "version"))
                    .transpose()?,
            };
            if !p.expected.matches(current) {
                return Err(Error::WrongExpectedVersion {
                    stream: p.stream.clone(),
                    expected: p.expected,
                    actual: current,
                });
            }
            let first_position = position + 1;
            let mut version = current;
            for e in &p.events {
                let v = version
                    .map_or(Some(0), |v| v.checked_add(1))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("stream `{}` is at u64::MAX", p.stream))
                    })?;
                position += 1;
                let nanos = signed(e.timestamp_nanos(), "timestamp")?;
                tx.execute(
                    "INSERT INTO annals_events (position, stream, category, version, id, \
                     event_type, schema_version, timestamp_nanos, correlation_id, causation_id, \
                     publish, encoding, metadata, payload) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                    &[
                        &signed(position, "position")?,
                        &p.stream,
                        &category_of(&p.stream),
                        &signed(v, "version")?,
                        &e.id,
                        &&*e.event_type,
                        &i32::try_from(e.schema_version).unwrap_or(i32::MAX),
                        &nanos,
                        &e.correlation_id,
                        &e.causation_id,
                        &e.publish,
                        &encoding_code(e.encoding),
                        &&e.metadata[..],
                        &&e.payload[..],
                    ],
                )
                .map_err(db)?;
                version = Some(v);
            }
            if let Some(v) = version.filter(|_| !p.events.is_empty()) {
                tx.execute(
                    "INSERT INTO annals_streams (stream, version) VALUES ($1, $2) \
                     ON CONFLICT (stream) DO UPDATE SET version = EXCLUDED.version",
                    &[&p.stream, &signed(v, "version")?],
                )
                .map_err(db)?;
            }
            versions.insert(p.stream.clone(), version);
            let mut r = AppendResult::nothing(version, Position::new(position + 1));
            if !p.events.is_empty() {
                r.first_position = Position::new(first_position);
                r.last_position = Position::new(position);
            }
            results.push(r);
        }
        tx.execute(
            "UPDATE annals_head SET position = $1 WHERE id = 1",
            &[&signed(position, "position")?],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(results)
    }

    /// The version of the stream's last event, or `None` if it has none.
    pub fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        check_stream_name(stream, true)?;
        self.conn()?
            .query_opt(
                "SELECT version FROM annals_streams WHERE stream = $1",
                &[&stream],
            )
            .map_err(db)?
            .map(|r| unsigned(r.get(0), "version"))
            .transpose()
    }

    /// Where the next event will go: every committed event is before it.
    pub fn end_position(&self) -> Result<Position> {
        let head: i64 = self
            .conn()?
            .query_one("SELECT position FROM annals_head WHERE id = 1", &[])
            .map_err(db)?
            .get(0);
        Ok(Position::new(unsigned(head, "position")? + 1))
    }

    fn select(
        &self,
        filter: &str,
        key: Option<&str>,
        from: i64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let (cmp, order) = match direction {
            Direction::Forwards => (">=", "ASC"),
            Direction::Backwards => ("<=", "DESC"),
        };
        let limit = i64::try_from(limit.min(PAGE)).unwrap_or(PAGE as i64);
        let ordered = if filter == "stream" {
            "version"
        } else {
            "position"
        };
        let sql = match key {
            Some(_) => format!(
                "SELECT {COLUMNS} FROM annals_events WHERE {filter} = $1 AND {ordered} {cmp} $2 \
                 ORDER BY {ordered} {order} LIMIT $3"
            ),
            None => format!(
                "SELECT {COLUMNS} FROM annals_events WHERE position {cmp} $1 \
                 ORDER BY position {order} LIMIT $2"
            ),
        };
        let mut conn = self.conn()?;
        let rows = match key {
            Some(k) => conn.query(&sql, &[&k, &from, &limit]),
            None => conn.query(&sql, &[&from, &limit]),
        }
        .map_err(db)?;
        rows.iter().map(event_of).collect()
    }

    /// Events of `stream` from version `from` (at most `limit`, and at most 10,000 per call).
    pub fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        check_stream_name(stream, true)?;
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        self.select("stream", Some(stream), from, direction, limit)
    }

    /// Events of every stream from `from` (inclusive), in position order, leaving out the
    /// engine's own `$` streams (at most `limit`, and at most 10,000 per call).
    pub fn read_all(
        &self,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let from = i64::try_from(from.as_u64()).unwrap_or(i64::MAX);
        let mut events = self.select("", None, from, direction, limit)?;
        events.retain(|e| !e.stream().starts_with('$'));
        Ok(events)
    }

    /// Events of one category from `from`, in position order.
    pub fn read_category(
        &self,
        category: &str,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let from = i64::try_from(from.as_u64()).unwrap_or(i64::MAX);
        self.select("category", Some(category), from, direction, limit)
    }

    /// Events of one type from `from`, in position order.
    pub fn read_event_type(
        &self,
        event_type: &str,
        from: Position,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let from = i64::try_from(from.as_u64()).unwrap_or(i64::MAX);
        self.select("event_type", Some(event_type), from, direction, limit)
    }
}

/// A catch-up subscription on a [`PgStore`]: reads the global order from where it stopped,
/// with its checkpoint kept in the database (`annals_checkpoints`). Never skips an event (see
/// "No gaps, no skips"); after a crash it resumes at its last checkpoint (at least once).
///
/// ```no_run
/// use annals::pg::PgStore;
///
/// let store = PgStore::connect("host=/run/postgresql user=app dbname=app")?;
/// let mut sub = store.catch_up("mailer")?;
/// for e in sub.poll(100)? {
///     println!("{} {}", e.stream(), e.event_type());
/// }
/// sub.checkpoint()?;
/// # Ok::<(), annals::Error>(())
/// ```
#[derive(Debug)]
pub struct PgCatchUp {
    store: PgStore,
    name: String,
    next: Position,
}

impl PgStore {
    /// A catch-up subscription named `name`, resuming at its checkpoint (the start if it has
    /// none).
    pub fn catch_up(&self, name: &str) -> Result<PgCatchUp> {
        let row = self
            .conn()?
            .query_opt(
                "SELECT position FROM annals_checkpoints WHERE name = $1",
                &[&name],
            )
            .map_err(db)?;
        let next = match row {
            Some(r) => Position::new(unsigned(r.get(0), "checkpoint")?),
            None => Position::START,
        };
        Ok(PgCatchUp {
            store: self.clone(),
            name: name.to_owned(),
            next,
        })
    }
}

impl PgCatchUp {
    /// Where the next poll starts: every event before it has been handed out.
    pub fn position(&self) -> Position {
        self.next
    }

    /// Up to `max` events after the last one handed out, in the global order.
    pub fn poll(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        let events = self.store.read_all(self.next, Direction::Forwards, max)?;
        if let Some(last) = events.last() {
            self.next = Position::new(last.position().as_u64() + 1);
        }
        Ok(events)
    }

    /// Records durably that every event handed out so far is handled.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.store
            .conn()?
            .execute(
                "INSERT INTO annals_checkpoints (name, position) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
                &[&self.name, &signed(self.next.as_u64(), "position")?],
            )
            .map_err(db)?;
        Ok(())
    }
}

/// If the request's events are all stored where it would put them, the earlier results; if
/// only some are, or elsewhere, the error; if none is, `None`.
fn already_appended(
    tx: &mut postgres::Transaction<'_>,
    parts: &[PgPart],
    head: u64,
) -> Result<Option<Vec<AppendResult>>> {
    let ids: Vec<Uuid> = parts
        .iter()
        .flat_map(|p| p.events.iter().map(|e| e.id))
        .collect();
    if ids.is_empty() {
        return Ok(None);
    }
    let unique: std::collections::HashSet<&Uuid> = ids.iter().collect();
    if unique.len() != ids.len() {
        return Err(Error::DuplicateEventId {
            id: ids[0],
            detail: "appears twice in one append".into(),
        });
    }
    let rows = tx
        .query(
            "SELECT id, stream, version, position FROM annals_events WHERE id = ANY($1)",
            &[&ids],
        )
        .map_err(db)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let found: std::collections::HashMap<Uuid, (String, u64, u64)> = rows
        .iter()
        .map(|r| {
            Ok((
                r.get::<_, Uuid>(0),
                (
                    r.get::<_, String>(1),
                    unsigned(r.get(2), "version")?,
                    unsigned(r.get(3), "position")?,
                ),
            ))
        })
        .collect::<Result<_>>()?;
    let mut results = Vec::with_capacity(parts.len());
    for p in parts {
        let Some(first) = p.events.first() else {
            results.push(AppendResult::nothing(None, Position::new(head + 1)));
            continue;
        };
        let stored: Option<Vec<&(String, u64, u64)>> =
            p.events.iter().map(|e| found.get(&e.id)).collect();
        let in_place = stored.as_ref().is_some_and(|s| {
            let v0 = s[0].1;
            s.iter().enumerate().all(|(k, (stream, v, _))| {
                *stream == p.stream && v0.checked_add(k as u64) == Some(*v)
            }) && match p.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => v0 == 0,
                ExpectedVersion::StreamExists => v0 > 0,
                ExpectedVersion::Exact(v) => v.checked_add(1) == Some(v0),
            }
        });
        let Some(stored) = stored.filter(|_| in_place) else {
            let at = found.get(&first.id).or_else(|| found.values().next());
            return Err(Error::DuplicateEventId {
                id: first.id,
                detail: match at {
                    Some((stream, v, _)) => format!(
                        "already stored as version {v} of `{stream}`, not where this append \
                         ({} {}) puts it",
                        p.stream, p.expected
                    ),
                    None => "other events of this append are already stored".into(),
                },
            });
        };
        let (last, first) = (stored[stored.len() - 1], stored[0]);
        let mut r = AppendResult::nothing(Some(last.1), Position::new(last.2));
        r.first_position = Position::new(first.2);
        results.push(r);
    }
    Ok(Some(results))
}

impl crate::domain::EventStore for PgStore {
    fn append(&self, parts: Vec<crate::domain::Part>) -> Result<Vec<AppendResult>> {
        self.transaction(
            parts
                .into_iter()
                .map(|p| PgPart {
                    stream: p.stream,
                    expected: p.expected,
                    events: p.events,
                })
                .collect(),
        )
    }

    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<()>,
    ) -> Result<()> {
        let mut from = from;
        loop {
            let page = PgStore::read_stream(self, stream, from, Direction::Forwards, PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            from = last.version() + 1;
            let full = page.len() == PAGE;
            page.iter().try_for_each(&mut *visit)?;
            if !full {
                return Ok(());
            }
        }
    }

    fn read_event_type(
        &self,
        event_type: &str,
        from: Position,
        visit: &mut dyn FnMut(&RecordedEvent) -> Result<bool>,
    ) -> Result<()> {
        let mut from = from;
        loop {
            let page = PgStore::read_event_type(self, event_type, from, Direction::Forwards, PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            from = Position::new(last.position().as_u64() + 1);
            let full = page.len() == PAGE;
            for e in &page {
                if !visit(e)? {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn last_event(&self, stream: &str) -> Result<Option<RecordedEvent>> {
        Ok(PgStore::read_stream(self, stream, u64::MAX, Direction::Backwards, 1)?.pop())
    }

    fn new_event<E: crate::typed::Events>(&self, event: &E) -> Result<NewEvent> {
        crate::typed::new_event(event, crate::typed::Codec::default())
    }

    fn decode<E: crate::typed::Events>(&self, event: &RecordedEvent) -> Result<E> {
        crate::typed::decode_with(&crate::typed::Upcasters::default(), event)
    }
}
