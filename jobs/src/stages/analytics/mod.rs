//! The analytics sink: `events.valid` -> ClickHouse `events`, in large batches.

pub mod config;
pub mod stage;

pub use stage::{SinkHandle, run};
