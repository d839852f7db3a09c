//! The one error type of the crate.

use std::io;
use std::path::PathBuf;

use crate::values::ExpectedVersion;

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in annals, as variants a caller can act on.
///
/// ```
/// use annals::{Error, ExpectedVersion, NewEvent, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path().join("demo"))?;
/// store.append("order-1", ExpectedVersion::NoStream, [NewEvent::new("Placed", "{}")])?;
/// match store.append("order-1", ExpectedVersion::NoStream, [NewEvent::new("Placed", "{}")]) {
///     Err(Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Some(0)),
///     other => panic!("expected a conflict, got {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the version the append expected; nothing was written.
    #[error(
        "wrong expected version for stream `{stream}`: expected {expected}, actual {}",
        describe_version(*actual)
    )]
    WrongExpectedVersion {
        /// The stream whose check failed.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version at the time of the check (`None`: no stream).
        actual: Option<u64>,
    },

    /// An event id is already stored somewhere this append does not put it (re-appending
    /// events already stored exactly where the append puts them succeeds and writes nothing).
    #[error("event id {id} {detail}")]
    DuplicateEventId {
        /// The id.
        id: uuid::Uuid,
        /// Where it is, or what else is wrong.
        detail: String,
    },

    /// The stream was deleted for good ([`Store::tombstone_stream`](crate::Store::tombstone_stream)):
    /// nothing can be appended to it again; nothing was written.
    #[error("stream `{stream}` is deleted for good (tombstoned)")]
    StreamDeleted {
        /// The stream.
        stream: String,
    },

    /// The database (the PostgreSQL backend) refused or failed.
    #[error("database: {reason}")]
    Database {
        /// What it said.
        reason: String,
    },

    /// Stored bytes failed a check (checksum, position, length, layout).
    #[error("corrupt store at position {position}: {reason}")]
    Corrupt {
        /// Byte position in the store file of the first bad record.
        position: u64,
        /// What was wrong.
        reason: String,
    },

    /// Another handle (in this or another process) has the store open.
    #[error("store {} is locked: it is open in another handle or process", path.display())]
    Locked {
        /// The store file.
        path: PathBuf,
    },

    /// An event, a batch or a name exceeds a configured or built-in limit.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// An earlier write or sync failed; the store must be reopened so that recovery can decide
    /// from the disk what was written.
    #[error("the store is poisoned by an earlier failure ({cause}); reopen it")]
    Poisoned {
        /// The first failure.
        cause: String,
    },

    /// The file exists but is not an annals store.
    #[error("{} is not an annals store: {reason}", path.display())]
    NotAStore {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },

    /// The store was written by a newer version of annals.
    #[error("store format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version found in the file header.
        found: u32,
        /// Version this build reads and writes.
        supported: u32,
    },

    /// A stream name is empty, too long, contains control characters or is reserved.
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStreamName {
        /// The offending name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// An event type name is empty, too long or contains control characters.
    #[error("invalid event type {name:?}: {reason}")]
    InvalidEventType {
        /// The offending name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// An option or argument is out of its allowed range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The derived index sidecar failed in a way recovery could not handle by rebuilding.
    #[error("index sidecar: {0}")]
    Index(String),

    /// A typed event could not be encoded.
    #[error("cannot encode a `{event_type}` event: {reason}")]
    Encode {
        /// Its type name.
        event_type: String,
        /// What the codec said.
        reason: String,
    },

    /// A stored event could not be decoded as the type asked for (unknown type, undecodable
    /// payload, missing upcaster, newer schema).
    #[error("cannot decode the `{event_type}` event at position {position}: {reason}")]
    Decode {
        /// Where the event is.
        position: u64,
        /// Its stored type name.
        event_type: String,
        /// What was wrong.
        reason: String,
    },

    /// A subscription callback run again with [`crate::store::Store::redeliver`] failed again.
    #[error("{0}")]
    SubscriberFailed(SubscriberFailure),

    /// The store was opened read-only ([`crate::store::Store::open_read_only`]): it cannot be
    /// written.
    #[error("store {} is open read-only", path.display())]
    ReadOnly {
        /// The store file.
        path: PathBuf,
    },

    /// A projection's apply function failed; it stopped there and resumes from its last
    /// checkpoint when run again.
    #[error("projection `{name}` failed at position {position}: {reason}")]
    Projection {
        /// The projection's name.
        name: String,
        /// The event it failed on.
        position: u64,
        /// What it returned.
        reason: String,
    },

    /// A transport refused a message.
    #[error("publishing failed: {0}")]
    Publish(String),

    /// An operating-system I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    /// An operating-system I/O error on a named file.
    #[error("{}: {source}", path.display())]
    File {
        /// The file (or directory) it concerns.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
}

/// A synchronous subscription callback that failed (or panicked) on an event. The event is
/// durable regardless: see [`crate::store::Store::redeliver`] to run the callback again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberFailure {
    /// The subscription's name.
    pub subscription: String,
    /// The subscription (to run it again with [`crate::store::Store::redeliver`]).
    pub subscription_id: crate::values::SubscriptionId,
    /// The event it was handed.
    pub position: crate::values::Position,
    /// What it returned, or that it panicked and with what.
    pub error: String,
}

impl std::fmt::Display for SubscriberFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "subscription `{}` failed on the event at position {}: {}",
            self.subscription, self.position, self.error
        )
    }
}

fn describe_version(version: Option<u64>) -> String {
    match version {
        Some(v) => v.to_string(),
        None => "no stream".to_owned(),
    }
}

impl Error {
    /// An I/O error on the file at `path`.
    pub(crate) fn io_at(path: &std::path::Path, source: io::Error) -> Error {
        Error::File {
            path: path.to_owned(),
            source,
        }
    }

    /// The I/O error behind this error, if it is one (named file or not).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io(e) | Error::File { source: e, .. } => Some(e),
            _ => None,
        }
    }

    pub(crate) fn corrupt(position: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            position,
            reason: reason.into(),
        }
    }
}

macro_rules! index_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Index(e.to_string())
            }
        }
    )*};
}
index_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
