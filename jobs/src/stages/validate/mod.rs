//! The validation stage: `events.raw` -> `events.valid` | `events.dlq`.

pub mod config;
pub mod stage;

pub use stage::{StageHandle, run, run_until};
