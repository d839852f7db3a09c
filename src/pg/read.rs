//! Reads: in the global order (or a stream's version order), one query per [`PAGE`] events.

use std::time::{Duration, UNIX_EPOCH};

use super::PgStore;
use super::schema::{bits_u32, bits_u64, clamped, col, db, encoding_of, unsigned};
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
    let stream: String = col(row, 1)?;
    let event = NewEvent {
        id: col(row, 3)?,
        event_type: std::borrow::Cow::Owned(col(row, 4)?),
        schema_version: bits_u32(col(row, 5)?),
        timestamp: UNIX_EPOCH + Duration::from_nanos(bits_u64(col(row, 6)?)),
        correlation_id: col(row, 7)?,
        causation_id: col(row, 8)?,
        publish: col(row, 9)?,
        encoding: encoding_of(col(row, 10)?)?,
        metadata: col::<Vec<u8>>(row, 11)?.into(),
        payload: col::<Vec<u8>>(row, 12)?.into(),
    };
    // Positions count events here: the next one may be just after.
    Ok(RecordedEvent::detached(
        &stream,
        unsigned(col(row, 2)?, "version")?,
        Position::new(unsigned(col(row, 0)?, "position")?),
        &event,
    )?
    .with_span(1))
}

impl PgStore {
    /// Up to `limit` events of `scope` from `from` (a version for a stream, a position
    /// otherwise), inclusive, in `direction`: one query per [`PAGE`] events.
    pub(super) fn select(
        &self,
        scope: Scope<'_>,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let mut out: Vec<RecordedEvent> = Vec::new();
        let mut from = from;
        while out.len() < limit {
            let want = (limit - out.len()).min(PAGE);
            let page = self.select_page(scope, from, direction, want)?;
            let full = page.len() == want;
            let Some(last) = page.last() else {
                break;
            };
            let at = match scope {
                Scope::Stream(_) => last.version(),
                _ => last.position().as_u64(),
            };
            let next = match direction {
                Direction::Forwards => at.checked_add(1),
                Direction::Backwards => at.checked_sub(1),
            };
            out.extend(page);
            match next {
                Some(n) if full => from = n,
                _ => break,
            }
        }
        Ok(out)
    }

    /// One query: up to `limit` (at most [`PAGE`]) events.
    fn select_page(
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
        let row = self
            .conn()?
            .query_one("SELECT position FROM annals_head WHERE id = 1", &[])
            .map_err(db)?;
        unsigned(col(&row, 0)?, "position")
    }
}
