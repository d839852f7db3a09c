//! The database schema (version [`SCHEMA_VERSION`]), how a value crosses into and out of it,
//! and the one place that turns a database error into an [`Error`].

use crate::error::{Error, Result};
use crate::log::format::PayloadEncoding;

/// The schema version this build creates and reads.
pub const SCHEMA_VERSION: i32 = 1;

/// The tables (see the [module docs](super)). Only SQL that CockroachDB and YugabyteDB also
/// accept: no sequences, no advisory locks, no partial indexes, `BYTEA`/`UUID`/`BIGINT` only.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS annals_schema (version INT NOT NULL);
CREATE TABLE IF NOT EXISTS annals_head (id INT PRIMARY KEY, position BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS annals_streams (
    stream TEXT PRIMARY KEY,
    version BIGINT,
    start BIGINT NOT NULL DEFAULT 0
);
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
CREATE TABLE IF NOT EXISTS annals_retired (
    id UUID PRIMARY KEY,
    stream TEXT NOT NULL,
    version BIGINT NOT NULL,
    position BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS annals_events_by_type ON annals_events (event_type, position);
CREATE INDEX IF NOT EXISTS annals_events_by_category ON annals_events (category, position);
";

/// Column `idx` of `row`, checked: a NULL or a type this build did not write is an error,
/// never a panic.
pub(super) fn col<'a, T: postgres::types::FromSql<'a>>(
    row: &'a postgres::Row,
    idx: usize,
) -> Result<T> {
    row.try_get(idx).map_err(db)
}

/// A `u64` that must keep every value (a timestamp), stored bit for bit in a `BIGINT`.
pub(super) fn u64_bits(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// The `u64` a `BIGINT` written by [`u64_bits`] holds.
pub(super) fn bits_u64(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// A `u32` (a schema version) stored bit for bit in an `INT`.
pub(super) fn u32_bits(v: u32) -> i32 {
    i32::from_ne_bytes(v.to_ne_bytes())
}

/// The `u32` an `INT` written by [`u32_bits`] holds.
pub(super) fn bits_u32(v: i32) -> u32 {
    u32::from_ne_bytes(v.to_ne_bytes())
}

/// A database failure as the store's error, with every cause the driver gives (the server's
/// own message: "db error" alone says nothing).
pub(super) fn db(e: impl std::error::Error) -> Error {
    Error::Database { reason: reason(e) }
}

/// What `e` and each of its causes say.
pub(super) fn reason(e: impl std::error::Error) -> String {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !reason.contains(&more) {
            reason.push_str(": ");
            reason.push_str(&more);
        }
        source = cause.source();
    }
    reason
}

/// A value in the database that this build cannot have written.
pub(super) fn bad_value(what: String) -> Error {
    Error::Database { reason: what }
}

/// Creates the schema if it is missing; refuses a newer one.
pub(super) fn create(conn: &mut postgres::Client) -> Result<()> {
    let mut tx = conn.transaction().map_err(db)?;
    tx.batch_execute(SCHEMA).map_err(db)?;
    // One creator at a time (the lock on the schema row table).
    tx.batch_execute("LOCK TABLE annals_schema IN EXCLUSIVE MODE")
        .map_err(db)?;
    let found: Option<i32> = tx
        .query_opt("SELECT version FROM annals_schema", &[])
        .map_err(db)?
        .map(|r| col(&r, 0))
        .transpose()?;
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

/// How a payload encoding is stored.
pub(super) fn encoding_code(e: PayloadEncoding) -> i16 {
    match e {
        PayloadEncoding::Raw => 0,
        PayloadEncoding::Bincode => 1,
        PayloadEncoding::Json => 2,
    }
}

/// A stored payload encoding, checked.
pub(super) fn encoding_of(code: i16) -> Result<PayloadEncoding> {
    Ok(match code {
        0 => PayloadEncoding::Raw,
        1 => PayloadEncoding::Bincode,
        2 => PayloadEncoding::Json,
        other => {
            return Err(bad_value(format!(
                "unknown payload encoding {other} in the database"
            )));
        }
    })
}

/// A version or position from the database, checked (they are never negative).
pub(super) fn unsigned(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| bad_value(format!("a negative {what} ({v}) in the database")))
}

/// A version or position for the database (`i64`).
pub(super) fn signed(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} {v} is past i64::MAX")))
}

/// A position to read from, clamped into the database's range.
pub(super) fn clamped(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoding_round_trips_and_an_unknown_code_is_an_error() {
        for e in [
            PayloadEncoding::Raw,
            PayloadEncoding::Bincode,
            PayloadEncoding::Json,
        ] {
            assert_eq!(encoding_of(encoding_code(e)).unwrap(), e);
        }
        assert!(matches!(encoding_of(7), Err(Error::Database { .. })));
    }

    #[test]
    fn timestamps_and_schema_versions_keep_every_value() {
        for v in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(bits_u64(u64_bits(v)), v);
        }
        for v in [0, 1, i32::MAX as u32 + 1, u32::MAX] {
            assert_eq!(bits_u32(u32_bits(v)), v);
        }
    }

    #[test]
    fn values_past_the_database_range_are_errors_not_wraps() {
        assert!(signed(u64::MAX, "position").is_err());
        assert_eq!(signed(5, "position").unwrap(), 5);
        assert!(unsigned(-1, "version").is_err());
        assert_eq!(clamped(u64::MAX), i64::MAX);
    }
}
