//! The engine's own records: **the specification of every event the engine itself writes**,
//! beside the frame format (`src/log/format.rs`). They are ordinary event frames in streams whose
//! names start with `$` (reserved: applications cannot append to them), so the log alone is
//! authoritative and every index stays derivable. Reads of the whole log leave them out
//! (`read_all`), `read_log` includes them.
//!
//! | family | stream | event type | payload | metadata |
//! |---|---|---|---|---|
//! | catch-up checkpoint | `$checkpoint-NAME` | `Checkpoint` | position, 8 bytes LE | none |
//! | outbox progress | `$outbox-NAME` | `Progress` | position, 8 bytes LE | none |
//! | outbox parked event | `$outbox-NAME-parked` | `Parked` | JSON [`Parked`] | none |
//! | outbox replay | `$outbox-NAME-parked` | `Replayed` | JSON [`Replayed`] | none |
//! | snapshot | `$snapshot-STREAM` | `Snapshot` | the state, as its encoder wrote it; schema version in the frame | version covered, 8 bytes LE |
//! | command relay marker | `$relay-NAME` | `annals.CommandHandled` / `annals.CommandFailed` | JSON [`RelayMarker`] | none |
//! | unique claim | `$unique-SCOPE-VALUE` | `annals.UniqueClaimed` | JSON [`UniqueClaim`] | none |
//! | stream metadata | `$meta-STREAM` | `annals.StreamMetadata` | JSON [`MetadataRecord`] | none |
//! | erasure | `$erased-STREAM` | `annals.StreamErased` | JSON [`ErasureRecord`] | none |
//!
//! **Stream metadata** is the newest record of `$meta-STREAM`; it is written with the stream's
//! own expected-version check in the same commit when a stream is deleted. Its fields decide
//! which events of `STREAM` reads still return (see `src/store/lifecycle.rs`): versions below
//! `truncate_before`, all but the newest `max_count`, events older than `max_age_secs`, and
//! every event of a tombstoned stream are unreadable, and a scavenge may remove them.
//! **Superseded records**: of `$checkpoint-`, `$outbox-NAME` (progress) and `$snapshot-`
//! and `$meta-` streams only the newest event is readable and kept; older ones are removed by
//! a scavenge.
//!
//! One engine-defined event type lives in applications' own streams: a command stored by a
//! workflow, `annals.CommandDispatched` ([`COMMAND_DISPATCHED`]), whose payload is the
//! command's JSON.
//!
//! The latest record of a stream is the one that counts (the newest checkpoint, the newest
//! progress, the newest snapshot); older ones are superseded. A record that does not decode is
//! reported as [`crate::error::Error::Decode`] by whoever reads it, never skipped silently (snapshots
//! excepted: a snapshot that does not decode is ignored, the stream is read whole).
//!
//! ```
//! use annals::records;
//!
//! assert_eq!(records::checkpoint_stream("mailer"), "$checkpoint-mailer");
//! let payload = records::encode_position(4096);
//! assert_eq!(records::decode_position(&payload), Some(4096));
//! assert_eq!(records::decode_position(b"short"), None);
//! ```

use serde::{Deserialize, Serialize};

/// The first character of every stream the engine reserves for its own records.
pub const RESERVED_PREFIX: char = '$';

/// Event type of a catch-up subscription's checkpoint.
pub const CHECKPOINT: &str = "Checkpoint";
/// Event type of an outbox's progress.
pub const OUTBOX_PROGRESS: &str = "Progress";
/// Event type of an event the outbox gave up on.
pub const OUTBOX_PARKED: &str = "Parked";
/// Event type of a parked event handed back for delivery.
pub const OUTBOX_REPLAYED: &str = "Replayed";
/// Event type of a snapshot.
pub const SNAPSHOT: &str = "Snapshot";
/// Event type of the marker a command relay commits with a command's effects.
pub const COMMAND_HANDLED: &str = "annals.CommandHandled";
/// Event type of the marker a command relay commits for a command that failed for good.
pub const COMMAND_FAILED: &str = "annals.CommandFailed";
/// Event type of a unique claim.
pub const UNIQUE_CLAIMED: &str = "annals.UniqueClaimed";
/// Event type of a command a workflow stored for its relay (in the workflow's own stream).
pub const COMMAND_DISPATCHED: &str = "annals.CommandDispatched";

/// Event type of a stream's metadata (retention, deletion, the user's own JSON).
pub const STREAM_METADATA: &str = "annals.StreamMetadata";
/// Event type of the record an erasure leaves.
pub const STREAM_ERASED: &str = "annals.StreamErased";

/// Length of a position record's payload.
pub const POSITION_LEN: usize = 8;

/// The stream of catch-up subscription `name`'s checkpoints.
pub fn checkpoint_stream(name: &str) -> String {
    format!("{RESERVED_PREFIX}checkpoint-{name}")
}

/// The stream of outbox `name`'s progress.
pub fn outbox_stream(name: &str) -> String {
    format!("{RESERVED_PREFIX}outbox-{name}")
}

/// The stream of outbox `name`'s parked events.
pub fn outbox_parked_stream(name: &str) -> String {
    format!("{RESERVED_PREFIX}outbox-{name}-parked")
}

/// The stream of `stream`'s snapshots.
pub fn snapshot_stream(stream: &str) -> String {
    format!("{RESERVED_PREFIX}snapshot-{stream}")
}

/// The stream of command relay `name`'s markers.
pub fn relay_stream(name: &str) -> String {
    format!("{RESERVED_PREFIX}relay-{name}")
}

/// The stream that holds the claim of `value` within `scope`.
pub fn unique_stream(scope: &str, value: &str) -> String {
    format!("{RESERVED_PREFIX}unique-{scope}-{value}")
}

/// The stream of `stream`'s metadata.
pub fn metadata_stream(stream: &str) -> String {
    format!("{RESERVED_PREFIX}meta-{stream}")
}

/// The stream of the records of `stream`'s erasures.
pub fn erasure_stream(stream: &str) -> String {
    format!("{RESERVED_PREFIX}erased-{stream}")
}

/// The stream whose metadata record `meta_stream` is, if it is a metadata stream.
pub fn metadata_of(meta_stream: &str) -> Option<&str> {
    meta_stream.strip_prefix("$meta-")
}

/// Whether only the newest event of `stream` counts (checkpoints, outbox progress, snapshots):
/// older ones are superseded.
pub fn supersedes(stream: &str) -> bool {
    stream.starts_with("$checkpoint-")
        || stream.starts_with("$snapshot-")
        || stream.starts_with("$meta-")
        || (stream.starts_with("$outbox-") && !stream.ends_with("-parked"))
}

/// The payload of a position record (a checkpoint, outbox progress): 8 bytes, little-endian.
pub fn encode_position(position: u64) -> [u8; POSITION_LEN] {
    position.to_le_bytes()
}

/// Reads a position record's payload; `None` unless it is exactly 8 bytes.
pub fn decode_position(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.try_into().ok()?))
}

/// The metadata of a snapshot: the stream version it covers, 8 bytes, little-endian.
pub fn encode_snapshot_version(version: u64) -> [u8; 8] {
    version.to_le_bytes()
}

/// Reads a snapshot's metadata; `None` unless it is exactly 8 bytes.
pub fn decode_snapshot_version(metadata: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(metadata.try_into().ok()?))
}

/// An event the outbox gave up on after `attempts` failed deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// Where the event is.
    pub position: crate::values::Position,
    /// How many deliveries failed.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

/// A parked event handed back for delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    /// Where the event is.
    pub position: crate::values::Position,
}

/// What a command relay commits with a command's effects (or for a command that failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayMarker {
    /// Where to look for the next command.
    pub next: u64,
    /// The position of the command this marker is about.
    pub source: u64,
    /// The command's name.
    pub command: String,
    /// Why it failed, for [`COMMAND_FAILED`] markers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A unique claim: `value` is taken within `scope`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniqueClaim {
    /// What the value is unique within (e.g. `isbn`).
    pub scope: String,
    /// The value.
    pub value: String,
}

/// A stream's metadata, as recorded (see the table above). Missing fields are unset.
///
/// A reader treats versions below [`floor`](Self::floor) as gone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataRecord {
    /// Versions below this are unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_before: Option<u64>,
    /// Only the newest this many events are readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// Events older than this many seconds are unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// The stream is deleted for good: nothing of it is readable, nothing can be appended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tombstoned: bool,
    /// The stream was deleted (soft): versions below this are gone, and its next version is
    /// at least this (even where the deleted events are no longer in the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_before: Option<u64>,
    /// The application's own JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<serde_json::Value>,
}

impl MetadataRecord {
    /// Versions below this are unreadable: the larger of `truncate_before` and
    /// `deleted_before`.
    pub fn floor(&self) -> u64 {
        self.truncate_before
            .unwrap_or(0)
            .max(self.deleted_before.unwrap_or(0))
    }
}

/// What an erasure records: which stream, how many events and bytes were overwritten (the
/// time is the record's timestamp).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureRecord {
    /// The stream erased.
    pub stream: String,
    /// Events below this version were erased.
    pub before_version: u64,
    /// How many event frames were overwritten.
    pub events: u64,
    /// How many bytes of the file were overwritten or punched.
    pub bytes: u64,
}

/// What a position held by an engine record means; see [`map_positions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionRole {
    /// Where a reader resumes: every event before it has been handled (checkpoints, outbox
    /// progress, a relay marker's `next`). It need not be an event's position.
    Resume,
    /// The position of one event (a parked or replayed event, a relay marker's `source`).
    Event,
}

/// Rewrites every log position an engine record of type `event_type` holds, through `map`,
/// for moving records into another log (`annals import`), where every position differs.
/// Returns the new payload, or `None` when the record holds no position (snapshots, unique
/// claims). A record of a type this build does not know, or one that does not decode, is an
/// error: copying it unchanged could leave a position that points at the wrong event.
///
/// ```
/// use annals::records::{self, PositionRole};
///
/// let checkpoint = records::encode_position(4096);
/// let moved = records::map_positions(records::CHECKPOINT, &checkpoint, |role, p| {
///     assert_eq!(role, PositionRole::Resume);
///     Ok(p + 100)
/// })?;
/// assert_eq!(moved, Some(records::encode_position(4196).to_vec()));
/// assert_eq!(records::map_positions(records::SNAPSHOT, b"state", |_, p| Ok(p))?, None);
/// assert!(records::map_positions("Mystery", b"", |_, p| Ok(p)).is_err());
/// # Ok::<(), String>(())
/// ```
pub fn map_positions(
    event_type: &str,
    payload: &[u8],
    mut map: impl FnMut(PositionRole, u64) -> Result<u64, String>,
) -> Result<Option<Vec<u8>>, String> {
    fn json<T: serde::de::DeserializeOwned>(event_type: &str, payload: &[u8]) -> Result<T, String> {
        serde_json::from_slice(payload).map_err(|e| format!("a {event_type} record: {e}"))
    }
    fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
        // As the engine writes them (`NewEvent::json`).
        crate::json::to_json_vec(value).expect("engine records are plain data")
    }
    Ok(Some(match event_type {
        CHECKPOINT | OUTBOX_PROGRESS => {
            let p = decode_position(payload).ok_or_else(|| {
                format!(
                    "a {event_type} record holds {POSITION_LEN} bytes, not {}",
                    payload.len()
                )
            })?;
            encode_position(map(PositionRole::Resume, p)?).to_vec()
        }
        OUTBOX_PARKED => {
            let mut r: Parked = json(event_type, payload)?;
            r.position =
                crate::values::Position::new(map(PositionRole::Event, r.position.as_u64())?);
            to_json(&r)
        }
        OUTBOX_REPLAYED => {
            let mut r: Replayed = json(event_type, payload)?;
            r.position =
                crate::values::Position::new(map(PositionRole::Event, r.position.as_u64())?);
            to_json(&r)
        }
        COMMAND_HANDLED | COMMAND_FAILED => {
            let mut r: RelayMarker = json(event_type, payload)?;
            r.next = map(PositionRole::Resume, r.next)?;
            r.source = map(PositionRole::Event, r.source)?;
            to_json(&r)
        }
        SNAPSHOT | UNIQUE_CLAIMED | STREAM_METADATA | STREAM_ERASED => return Ok(None),
        other => {
            return Err(format!(
                "`{other}` is not an engine record this build knows"
            ));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_records_round_trip_and_reject_other_lengths() {
        for p in [0, 4096, u64::MAX] {
            assert_eq!(decode_position(&encode_position(p)), Some(p));
            assert_eq!(
                decode_snapshot_version(&encode_snapshot_version(p)),
                Some(p)
            );
        }
        for bad in [&b""[..], b"1234567", b"123456789"] {
            assert_eq!(decode_position(bad), None);
            assert_eq!(decode_snapshot_version(bad), None);
        }
    }

    #[test]
    fn every_family_lives_in_a_reserved_stream() {
        for s in [
            checkpoint_stream("a"),
            outbox_stream("a"),
            outbox_parked_stream("a"),
            snapshot_stream("a"),
            relay_stream("a"),
            unique_stream("a", "b"),
            metadata_stream("a"),
            erasure_stream("a"),
        ] {
            assert!(s.starts_with(RESERVED_PREFIX), "{s}");
        }
    }

    #[test]
    fn map_positions_moves_every_position_and_nothing_else() {
        let shift = |role: PositionRole, p: u64| {
            Ok(match role {
                PositionRole::Resume => p + 1000,
                PositionRole::Event => p + 7,
            })
        };
        let parked = Parked {
            position: crate::values::Position::new(40),
            attempts: 3,
            error: "broker down".into(),
        };
        let moved = map_positions(OUTBOX_PARKED, &serde_json::to_vec(&parked).unwrap(), shift)
            .unwrap()
            .unwrap();
        let moved: Parked = serde_json::from_slice(&moved).unwrap();
        assert_eq!(moved.position.as_u64(), 47);
        assert_eq!((moved.attempts, moved.error.as_str()), (3, "broker down"));

        let replayed = serde_json::to_vec(&Replayed {
            position: crate::values::Position::new(5),
        })
        .unwrap();
        let moved = map_positions(OUTBOX_REPLAYED, &replayed, shift)
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Replayed>(&moved)
                .unwrap()
                .position
                .as_u64(),
            12
        );

        for t in [COMMAND_HANDLED, COMMAND_FAILED] {
            let m = RelayMarker {
                next: 90,
                source: 60,
                command: "Ship".into(),
                error: Some("no".into()),
            };
            let moved = map_positions(t, &serde_json::to_vec(&m).unwrap(), shift)
                .unwrap()
                .unwrap();
            let moved: RelayMarker = serde_json::from_slice(&moved).unwrap();
            assert_eq!((moved.next, moved.source), (1090, 67));
            assert_eq!((moved.command, moved.error), (m.command, m.error));
        }
        for t in [CHECKPOINT, OUTBOX_PROGRESS] {
            let moved = map_positions(t, &encode_position(u64::MAX - 1000), shift).unwrap();
            assert_eq!(moved, Some(encode_position(u64::MAX).to_vec()));
        }
        assert_eq!(map_positions(UNIQUE_CLAIMED, b"{}", shift), Ok(None));
    }

    #[test]
    fn map_positions_refuses_what_it_cannot_read() {
        let keep = |_: PositionRole, p: u64| Ok(p);
        assert!(
            map_positions(CHECKPOINT, b"short", keep)
                .unwrap_err()
                .contains("8 bytes")
        );
        assert!(map_positions(OUTBOX_PARKED, b"{", keep).is_err());
        assert!(map_positions(COMMAND_HANDLED, b"[]", keep).is_err());
        assert!(
            map_positions("annals.Future", b"", keep)
                .unwrap_err()
                .contains("annals.Future")
        );
        // The mapper's own refusal comes through.
        let refuse = |_: PositionRole, _: u64| Err("no such event".to_string());
        assert_eq!(
            map_positions(CHECKPOINT, &encode_position(1), refuse),
            Err("no such event".into())
        );
    }

    #[test]
    fn metadata_records_round_trip_and_name_their_stream() {
        let m = MetadataRecord {
            truncate_before: Some(10),
            max_count: None,
            max_age_secs: Some(60),
            tombstoned: false,
            deleted_before: Some(12),
            custom: Some(serde_json::json!({"owner": "ops"})),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"truncate_before":10,"max_age_secs":60,"deleted_before":12,"custom":{"owner":"ops"}}"#
        );
        assert_eq!(m.floor(), 12);
        assert_eq!(serde_json::from_str::<MetadataRecord>(&json).unwrap(), m);
        assert_eq!(
            serde_json::from_str::<MetadataRecord>("{}").unwrap(),
            MetadataRecord::default()
        );
        assert_eq!(metadata_of(&metadata_stream("order-1")), Some("order-1"));
        assert_eq!(metadata_of("$checkpoint-x"), None);
        assert!(
            supersedes("$checkpoint-a") && supersedes("$outbox-a") && supersedes("$snapshot-s")
        );
        assert!(supersedes("$meta-a"));
        assert!(!supersedes("$outbox-a-parked") && !supersedes("$erased-a") && !supersedes("a"));
    }

    #[test]
    fn json_records_round_trip() {
        let m = RelayMarker {
            next: 9,
            source: 4096,
            command: "Ship".into(),
            error: None,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"next":9,"source":4096,"command":"Ship"}"#);
        assert_eq!(serde_json::from_str::<RelayMarker>(&json).unwrap(), m);
        let c = UniqueClaim {
            scope: "isbn".into(),
            value: "978".into(),
        };
        assert_eq!(
            serde_json::from_str::<UniqueClaim>(&serde_json::to_string(&c).unwrap()).unwrap(),
            c
        );
    }
}
