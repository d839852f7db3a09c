//! The commit path: one database transaction per append, serialised by the `annals_head`
//! row (see "No gaps, no skips" in the [module docs](super)).

use std::collections::{HashMap, HashSet};

use postgres::types::ToSql;
use uuid::Uuid;

use super::PgStore;
use super::schema::{col, db, encoding_code, signed, u32_bits, u64_bits, unsigned};
use crate::backend::Part;
use crate::error::{Error, Result};
use crate::event::{AppendResult, NewEvent, RecordedEvent};
use crate::log::records;
use crate::names::{category_of, check_event_type, check_stream_name};
use crate::values::{ExpectedVersion, Position};

/// What one commit wrote: a result per part, and (if asked for) the events as recorded.
pub(super) struct Committed {
    pub results: Vec<AppendResult>,
    pub events: Vec<RecordedEvent>,
}

impl PgStore {
    /// Checks and writes every part in one database transaction, or nothing.
    pub(super) fn commit(&self, parts: &[Part], want_events: bool) -> Result<Committed> {
        for p in parts {
            check_stream_name(&p.stream, true)?;
            for e in &p.events {
                check_event_type(&e.event_type)?;
            }
        }
        let mut conn = self.conn()?;
        let mut tx = conn.transaction().map_err(db)?;
        // Appends commit one at a time, in position order: see "No gaps, no skips". The head
        // row is locked and moved past this append's events in one round trip; a refused
        // append or a retry rolls back (the transaction is dropped without a commit).
        let count: u64 = parts.iter().map(|p| p.events.len() as u64).sum();
        let count = signed(count, "event count")?;
        let head = tx
            .query_one(
                "UPDATE annals_head SET position = position + $1 WHERE id = 1 RETURNING position",
                &[&count],
            )
            .map_err(db)?;
        let end = unsigned(col(&head, 0)?, "position")?;
        let mut position = end.checked_sub(count.unsigned_abs()).ok_or_else(|| {
            super::schema::bad_value(format!("the head position {end} is below its own count"))
        })?;
        if let Some(results) = already_appended(&mut tx, parts, position)? {
            return Ok(Committed {
                results,
                events: Vec::new(),
            });
        }
        // Per stream: its version and where its first event goes.
        let mut versions: HashMap<&str, (Option<u64>, u64)> = HashMap::new();
        let mut results = Vec::with_capacity(parts.len());
        let mut events = Vec::new();
        let mut rows = Vec::new();
        for p in parts {
            let (current, start) = match versions.get(p.stream.as_str()) {
                Some(v) => *v,
                None => stream_state(&mut tx, &p.stream)?,
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
                    .map_or(Some(start), |v| v.checked_add(1))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("stream `{}` is at u64::MAX", p.stream))
                    })?;
                position += 1;
                rows.push(Row {
                    position: signed(position, "position")?,
                    stream: &p.stream,
                    version: signed(v, "version")?,
                    event: e,
                });
                if want_events {
                    events.push(
                        RecordedEvent::detached(&p.stream, v, Position::new(position), e)?
                            .with_span(1),
                    );
                }
                version = Some(v);
            }
            insert_rows(&mut tx, &rows)?;
            rows.clear();
            if let Some(v) = version.filter(|_| !p.events.is_empty()) {
                let v = signed(v, "version")?;
                tx.execute(
                    "INSERT INTO annals_streams (stream, version) VALUES ($1, $2) \
                     ON CONFLICT (stream) DO UPDATE SET version = EXCLUDED.version",
                    &[&p.stream, &v],
                )
                .map_err(db)?;
                if records::supersedes(&p.stream) {
                    // Only the newest record of a checkpoint or progress stream counts: the
                    // older ones go in the same transaction (the file store's scavenge), and
                    // their ids stay known, so that a retry of one is not a new newest record.
                    tx.execute(
                        "INSERT INTO annals_retired (id, stream, version, position) \
                         SELECT id, stream, version, position FROM annals_events \
                         WHERE stream = $1 AND version < $2",
                        &[&p.stream, &v],
                    )
                    .map_err(db)?;
                    tx.execute(
                        "DELETE FROM annals_events WHERE stream = $1 AND version < $2",
                        &[&p.stream, &v],
                    )
                    .map_err(db)?;
                }
            }
            versions.insert(&p.stream, (version, start));
            let mut r = AppendResult::nothing(version, Position::new(position + 1));
            if !p.events.is_empty() {
                r.first_position = Position::new(first_position);
                r.last_position = Position::new(position);
            }
            results.push(r);
        }
        debug_assert_eq!(position, end, "the head was moved by this append's count");
        tx.commit().map_err(db)?;
        Ok(Committed { results, events })
    }
}

/// A stream's version (`None` before its first event) and the version its first event gets
/// (0, unless it was made to start later: `start_stream_at`).
fn stream_state(tx: &mut postgres::Transaction<'_>, stream: &str) -> Result<(Option<u64>, u64)> {
    let row = tx
        .query_opt(
            "SELECT version, start FROM annals_streams WHERE stream = $1",
            &[&stream],
        )
        .map_err(db)?;
    Ok(match row {
        Some(r) => (
            col::<Option<i64>>(&r, 0)?
                .map(|v| unsigned(v, "version"))
                .transpose()?,
            unsigned(col(&r, 1)?, "start version")?,
        ),
        None => (None, 0),
    })
}

/// One event on its way into `annals_events`.
struct Row<'a> {
    position: i64,
    stream: &'a str,
    version: i64,
    event: &'a NewEvent,
}

/// Events per `INSERT` (14 parameters each; a statement takes at most 65,535).
const ROWS_PER_INSERT: usize = 1000;

/// Inserts `rows`, many per statement (one round trip per statement, not per event).
fn insert_rows(tx: &mut postgres::Transaction<'_>, rows: &[Row<'_>]) -> Result<()> {
    const COLUMNS: usize = 14;
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO annals_events (position, stream, category, version, id, event_type, \
             schema_version, timestamp_nanos, correlation_id, causation_id, publish, encoding, \
             metadata, payload) VALUES ",
        );
        let categories: Vec<&str> = chunk.iter().map(|r| category_of(r.stream)).collect();
        let types: Vec<&str> = chunk.iter().map(|r| &*r.event.event_type).collect();
        let metadata: Vec<&[u8]> = chunk.iter().map(|r| &r.event.metadata[..]).collect();
        let payloads: Vec<&[u8]> = chunk.iter().map(|r| &r.event.payload[..]).collect();
        let schema_versions: Vec<i32> = chunk
            .iter()
            .map(|r| u32_bits(r.event.schema_version))
            .collect();
        let timestamps: Vec<i64> = chunk
            .iter()
            .map(|r| u64_bits(r.event.timestamp_nanos()))
            .collect();
        let encodings: Vec<i16> = chunk
            .iter()
            .map(|r| encoding_code(r.event.encoding))
            .collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(chunk.len() * COLUMNS);
        for (k, r) in chunk.iter().enumerate() {
            if k > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 1..=COLUMNS {
                if c > 1 {
                    sql.push_str(", ");
                }
                sql.push('$');
                sql.push_str(&(k * COLUMNS + c).to_string());
            }
            sql.push(')');
            params.extend([
                &r.position as &(dyn ToSql + Sync),
                &r.stream,
                &categories[k],
                &r.version,
                &r.event.id,
                &types[k],
                &schema_versions[k],
                &timestamps[k],
                &r.event.correlation_id,
                &r.event.causation_id,
                &r.event.publish,
                &encodings[k],
                &metadata[k],
                &payloads[k],
            ]);
        }
        debug_assert_eq!(params.len(), chunk.len() * COLUMNS);
        tx.execute(&sql, &params).map_err(db)?;
    }
    Ok(())
}

/// If the request's events are all stored where it would put them, the earlier results (its
/// check-only parts checked again); if only some are, or elsewhere, the error; if none is,
/// `None`. Superseded `$` records count as stored (their ids are kept in `annals_retired`).
fn already_appended(
    tx: &mut postgres::Transaction<'_>,
    parts: &[Part],
    head: u64,
) -> Result<Option<Vec<AppendResult>>> {
    let ids: Vec<Uuid> = parts
        .iter()
        .flat_map(|p| p.events.iter().map(|e| e.id))
        .collect();
    if ids.is_empty() {
        return Ok(None);
    }
    let unique: HashSet<&Uuid> = ids.iter().collect();
    if unique.len() != ids.len() {
        return Err(Error::DuplicateEventId {
            id: ids[0],
            detail: "appears twice in one append".into(),
        });
    }
    let rows = tx
        .query(
            "SELECT id, stream, version, position FROM annals_events WHERE id = ANY($1) \
             UNION ALL \
             SELECT id, stream, version, position FROM annals_retired WHERE id = ANY($1)",
            &[&ids],
        )
        .map_err(db)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let found: HashMap<Uuid, (String, u64, u64)> = rows
        .iter()
        .map(|r| {
            Ok((
                col::<Uuid>(r, 0)?,
                (
                    col::<String>(r, 1)?,
                    unsigned(col(r, 2)?, "version")?,
                    unsigned(col(r, 3)?, "position")?,
                ),
            ))
        })
        .collect::<Result<_>>()?;
    let mut results = Vec::with_capacity(parts.len());
    for p in parts {
        let Some(first) = p.events.first() else {
            // A check-only part: checked as the first try checked it.
            let (current, _) = stream_state(tx, &p.stream)?;
            if !p.expected.matches(current) {
                return Err(Error::WrongExpectedVersion {
                    stream: p.stream.clone(),
                    expected: p.expected,
                    actual: current,
                });
            }
            results.push(AppendResult::nothing(current, Position::new(head + 1)));
            continue;
        };
        let stored: Option<Vec<&(String, u64, u64)>> =
            p.events.iter().map(|e| found.get(&e.id)).collect();
        let in_order = stored.as_ref().is_some_and(|s| {
            let v0 = s[0].1;
            s.iter().enumerate().all(|(k, (stream, v, _))| {
                *stream == p.stream && v0.checked_add(k as u64) == Some(*v)
            })
        });
        let in_place = in_order
            && match p.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::Exact(v) => v.checked_add(1) == stored.as_ref().map(|s| s[0].1),
                // The stream's first event is at its start version (0 unless it was made to
                // start later).
                ExpectedVersion::NoStream | ExpectedVersion::StreamExists => {
                    let (_, start) = stream_state(tx, &p.stream)?;
                    let v0 = stored.as_ref().map_or(0, |s| s[0].1);
                    (v0 == start) == (p.expected == ExpectedVersion::NoStream)
                }
            };
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
