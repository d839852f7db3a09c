//! The integration tests, as one test binary (one link of the crate instead of one per file).
//! Each module is one topic; `common` holds the checks they share. The kill tests start this
//! same binary again as their child process.

mod common;

mod backends;
mod catch_up_kill;
mod crash;
mod disk_use;
mod domain;
mod examples;
mod floors;
mod idempotency;
mod indexed_reads;
mod kill;
mod lifecycle;
mod lifecycle_crash;
mod lifecycle_kill;
mod lifecycle_review;
mod live_read;
mod model;
mod outbox;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "postgres")]
mod pg_review;
mod processor_kill;
mod reads;
mod store;
mod subscriptions;
mod trust;
mod upcasting;
mod workflow_kill;
