//! # annals
//!
//! An embedded event store: one file, no server, durable, fast, and impossible to corrupt
//! silently.
//!
//! A [`Store`] is an append-only log of events in streams. Appends check an
//! [`ExpectedVersion`] (optimistic concurrency), may span several streams atomically
//! ([`Store::transaction`]), and are durable when they return; concurrent appends share one
//! `fdatasync` (group commit). Reads go by stream ([`Store::read_stream`]) or over the whole
//! log ([`Store::read_all`]).
//!
//! ```
//! use annals::{Direction, ExpectedVersion, NewEvent, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path().join("library"))?;
//! store.append("book-1", ExpectedVersion::NoStream, [NewEvent::new("BookRegistered", r#"{"title":"DDD"}"#)])?;
//! let first = store.read_stream("book-1", 0, Direction::Forwards, 10)?.next().unwrap()?;
//! assert_eq!(first.payload(), br#"{"title":"DDD"}"#);
//! # Ok::<(), annals::Error>(())
//! ```
//!
//! The on-disk format is specified in `src/log/format.rs` (and the engine's own records in
//! `src/log/records.rs`); the recovery rule in `src/log/recovery.rs`.

#![deny(missing_docs)]

pub mod domain;
mod error;
mod event;
mod index;
#[cfg(feature = "internals")]
pub mod internals;
mod json;
/// The log floor: the file format, the engine's own records, reading, writing and recovery.
/// Public only with the `internals` feature (for fuzz targets and tests); the format is
/// specified in `src/log/format.rs`, the recovery rule in `src/log/recovery.rs`.
#[cfg(feature = "internals")]
pub mod log;
#[cfg(not(feature = "internals"))]
mod log;
mod names;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod storage;
mod store;
mod values;

pub use error::{Error, Result};
pub use event::{AppendResult, EventView, NewEvent, RecordedEvent};
pub use log::format::PayloadEncoding;
/// The engine's own records (checkpoints, outbox progress, snapshots, relay markers, unique
/// claims): their streams, types and payloads, and [`records::map_positions`] for moving them
/// into another log.
pub use log::records;
pub use names::category_of;
pub use store::backend::{self, Backend};
pub use store::options::{
    DEFAULT_INDEX_FLUSH_EVENTS, DEFAULT_MAX_EVENT_SIZE, DEFAULT_SEGMENT_SIZE, Durability,
};
pub use store::outbox;
pub use store::subscriptions::BoxError;
pub use store::{
    ErasureReport, ScavengeOptions, ScavengeReport, Store, StoreBuilder, StreamMetadata,
    Transaction,
};
pub use values::{Direction, ExpectedVersion, Position};

/// Typed events: serde types with a name, a schema version and a published flag
/// ([`EventType`](typed::EventType)), enums of them ([`Events`](typed::Events), made with
/// [`events!`]), the codecs that encode them, and upcasting of old schema versions.
pub mod typed {
    pub use crate::json::to_json_string;
    pub use crate::store::codec::Codec;
    pub use crate::store::typed::{
        EventMeta, EventType, Events, TypedEvent, TypedEvents, Upcasters, decode_with, new_event,
    };
}

/// Subscriptions: synchronous ones ([`Store::subscribe`](crate::Store::subscribe), run before
/// `append` returns), catch-up ones with durable checkpoints
/// ([`Store::catch_up`](crate::Store::catch_up)), and projections.
pub mod subscriptions {
    pub use crate::error::SubscriberFailure;
    pub use crate::store::catch_up::{CatchUp, CatchUpStart, ProjectionHandle, ProjectionOptions};
    pub use crate::store::subscriptions::Filter;
    pub use crate::values::SubscriptionId;
}

/// The iterators reads return.
pub mod read {
    pub use crate::store::{AllEvents, IndexedEvents, StreamEvents};
}

/// What a store reports about itself: what recovery did at open, counters, `info`, `verify`.
pub mod reports {
    pub use crate::log::recovery::Truncation;
    pub use crate::store::maintenance::{StoreInfo, TruncateReport, VerifyReport};
    pub use crate::store::{Lost, RecoveryReport, StoreStats};
}

#[doc(hidden)]
pub mod __private {
    pub use serde_json;
}

/// The README's code blocks run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The guide's code blocks run as doc tests.
#[doc = include_str!("../docs/guide.md")]
#[cfg(doctest)]
pub struct GuideDoctests;

/// The PostgreSQL page's code blocks run as doc tests (those that need a server only compile).
#[doc = include_str!("../docs/postgres.md")]
#[cfg(all(doctest, feature = "postgres"))]
pub struct PostgresDoctests;
