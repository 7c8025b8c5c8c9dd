//! The HTTP ingestion API: `POST /events` and `POST /events/batch` validate
//! synchronously (400 naming the field) and produce accepted events, as JSON,
//! to `events.raw`, answering 202 once Kafka has acknowledged them.

pub mod config;
pub mod source;

pub use config::IngestConfig;
pub use source::{IngestState, router};
