//! The domain floor: aggregates, the repository (conflicts, retries, snapshots), the message
//! bus and its unit of work (atomic commits, rollback, listeners, queued commands, unique
//! claims), the publishing, in-memory and sink-hole stores, and the command relay.

mod bus;
mod context;
pub(crate) mod fixtures;
mod publishing;
mod repository;
pub(crate) mod shop;
mod snapshots;
mod workflow;
