//! The pipeline's core: the event model, validation rules, reason codes, topic
//! names and metric declarations that every stage, connector and job builds on.
//! Everything here is synchronous and does no IO, so it is tested without servers.

pub mod avro;
pub mod catalog;
pub mod dlq;
pub mod envelope_codec;
pub mod error;
pub mod event;
pub mod intern;
pub mod metrics;
pub mod process;
pub mod profile;
pub mod reason;
pub mod rules;
pub mod segment;
pub mod strict;
pub mod topics;
pub mod validate;
pub mod wire;
pub mod workflow;

pub use catalog::EventCatalog;
pub use error::PipelineError;
pub use event::{Event, EventType};
pub use reason::{FieldError, ReasonCode, Rejection};
pub use topics::{Topic, TopicDeclaration, TopicNames, TopicSettings};
pub use validate::{Limits, Validator};
