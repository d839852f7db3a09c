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
//! The on-disk format is specified in [`log::format`]; the recovery rule in `log::recovery`.

#![deny(missing_docs)]

pub mod domain;
mod error;
mod index;
#[cfg(feature = "internals")]
pub mod internals;
pub mod log;
pub mod storage;
mod store;
mod types;

pub use error::{Error, Result, SubscriberFailure};
pub use index::category_of;
pub use log::format::PayloadEncoding;
pub use log::recovery::Truncation;
pub use store::catch_up::{CatchUp, ProjectionHandle, ProjectionOptions, Start};
pub use store::codec::{Codec, to_json_string};
pub use store::maintenance::{StoreInfo, TruncateReport, VerifyReport};
pub use store::options::{
    DEFAULT_INDEX_FLUSH_EVENTS, DEFAULT_MAX_EVENT_SIZE, DEFAULT_SEGMENT_SIZE, Durability,
};
pub use store::outbox;
pub use store::subscriptions::{BoxError, Filter};
pub use store::typed::{
    EventMeta, EventType, Events, TypedEvent, TypedEvents, Upcasters, decode_with, new_event,
};
pub use store::{
    AllEvents, IndexedEvents, Lost, RecoveryReport, Store, StoreBuilder, StoreStats, StreamEvents,
    Transaction,
};
pub use types::{
    AppendResult, Direction, ExpectedVersion, NewEvent, Position, RecordedEvent, SubscriptionId,
};

#[doc(hidden)]
pub mod __private {
    pub use serde_json;
}

/// The README's code blocks run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
