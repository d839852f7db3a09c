//! The plain values the whole crate speaks in: expected versions, positions, directions,
//! subscription ids. This module imports nothing of the crate: every floor may use it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an append expects of its stream's current version (optimistic concurrency).
///
/// ```
/// use annals::ExpectedVersion;
///
/// assert!(ExpectedVersion::NoStream.matches(None));
/// assert!(ExpectedVersion::Exact(3).matches(Some(3)));
/// assert!(!ExpectedVersion::StreamExists.matches(None));
/// assert!(ExpectedVersion::Any.matches(Some(9)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's state.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist (have at least one event).
    StreamExists,
    /// The stream's last event must have exactly this version (versions start at 0).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose current version is `actual` (`None`: no stream) satisfies this.
    pub fn matches(self, actual: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::StreamExists => actual.is_some(),
            ExpectedVersion::Exact(v) => actual == Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => write!(f, "any"),
            ExpectedVersion::NoStream => write!(f, "no stream"),
            ExpectedVersion::StreamExists => write!(f, "stream exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// A place in the global log: the byte offset of an event's frame in the store file. Positions
/// strictly increase in log order; they are the cursor of [`crate::store::Store::read_all`] and of
/// checkpoints.
///
/// ```
/// use annals::Position;
///
/// assert!(Position::START < Position::new(4096));
/// assert_eq!(Position::new(4096).as_u64(), 4096);
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Position(u64);

impl Position {
    /// Before the first event.
    pub const START: Position = Position(0);
    /// After the last event.
    pub const END: Position = Position(u64::MAX);

    /// A position from its number.
    pub const fn new(n: u64) -> Position {
        Position(n)
    }

    /// The position's number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Identifies a registered synchronous subscription (to unsubscribe, or to run it again on an
/// event it failed on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(pub(crate) u64);

/// Which way a read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Oldest first.
    Forwards,
    /// Newest first.
    Backwards,
}
