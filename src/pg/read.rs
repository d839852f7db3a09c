//! Reads: one query per page, in the global order (or a stream's version order), at most
//! [`PAGE`] events each.

use std::time::{Duration, UNIX_EPOCH};

use super::PgStore;
use super::schema::{bad_value, clamped, db, encoding_of, unsigned};
use crate::error::Result;
use crate::event::{NewEvent, RecordedEvent};
use crate::values::{Direction, Position};

/// Most events one read returns (reads take a `limit`; this bounds what one query allocates).
pub(super) const PAGE: usize = 10_000;

const COLUMNS: &str = "position, stream, version, id, event_type, schema_version, \
    timestamp_nanos, correlation_id, causation_id, publish, encoding, metadata, payload";

/// What a read selects by.
#[derive(Clone, Copy)]
pub(super) enum Scope<'a> {
    /// One stream, by version.
    Stream(&'a str),
    /// The global order without the engine's `$` records.
    All,
    /// The global order with them.
    Log,
    /// One category.
    Category(&'a str),
    /// One event type.
    EventType(&'a str),
}

/// A stored event, checked.
pub(super) fn event_of(row: &postgres::Row) -> Result<RecordedEvent> {
    let stream: String = row.get(1);
    let nanos = unsigned(row.get(6), "timestamp")?;
    let event = NewEvent {
        id: row.get(3),
        event_type: std::borrow::Cow::Owned(row.get(4)),
        schema_version: u32::try_from(row.get::<_, i32>(5))
            .map_err(|_| bad_value("a negative schema version in the database".into()))?,
        timestamp: UNIX_EPOCH + Duration::from_nanos(nanos),
        correlation_id: row.get(7),
        causation_id: row.get(8),
        publish: row.get(9),
        encoding: encoding_of(row.get(10))?,
        metadata: row.get::<_, Vec<u8>>(11).into(),
        payload: row.get::<_, Vec<u8>>(12).into(),
    };
    // Positions count events here: the next one may be just after.
    Ok(RecordedEvent::detached(
        &stream,
        unsigned(row.get(2), "version")?,
        Position::new(unsigned(row.get(0), "position")?),
        &event,
    )?
    .with_span(1))
}

impl PgStore {
    /// Up to `limit` (and [`PAGE`]) events of `scope` from `from` (a version for a stream, a
    /// position otherwise), inclusive, in `direction`.
    pub(super) fn select(
        &self,
        scope: Scope<'_>,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let (cmp, order) = match direction {
            Direction::Forwards => (">=", "ASC"),
            Direction::Backwards => ("<=", "DESC"),
        };
        let limit = i64::try_from(limit.min(PAGE)).unwrap_or(PAGE as i64);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from = clamped(from);
        let (filter, key) = match scope {
            Scope::Stream(s) => ("stream = $3 AND version", Some(s)),
            Scope::Category(c) => ("category = $3 AND position", Some(c)),
            Scope::EventType(t) => ("event_type = $3 AND position", Some(t)),
            // `$` sorts before every letter and digit, but a stream may start with other
            // symbols: compare the first character.
            Scope::All => ("substr(stream, 1, 1) <> '$' AND position", None),
            Scope::Log => ("position", None),
        };
        let ordered = if matches!(scope, Scope::Stream(_)) {
            "version"
        } else {
            "position"
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM annals_events WHERE {filter} {cmp} $1 \
             ORDER BY {ordered} {order} LIMIT $2"
        );
        let mut conn = self.conn()?;
        let rows = match key {
            Some(k) => conn.query(&sql, &[&from, &limit, &k]),
            None => conn.query(&sql, &[&from, &limit]),
        }
        .map_err(db)?;
        rows.iter().map(event_of).collect()
    }

    /// The last position given out (0 before the first event).
    pub(super) fn head(&self) -> Result<u64> {
        let head: i64 = self
            .conn()?
            .query_one("SELECT position FROM annals_head WHERE id = 1", &[])
            .map_err(db)?
            .get(0);
        unsigned(head, "position")
    }
}
