//! The profile stage: `events.valid` -> user profiles in PostgreSQL, the
//! compacted `profiles.changelog` and `lifecycle.events`.

pub mod config;
pub mod stage;

pub use stage::{ProfileHandle, run};
