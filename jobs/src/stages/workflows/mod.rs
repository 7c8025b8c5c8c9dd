//! The workflow engine: `workflow.commands` -> instances in PostgreSQL, run
//! from their BPMN definitions (service tasks, gateways, timers) with retries,
//! `workflow.events`, `workflow.dlq` and signed webhooks.

pub mod config;
pub mod engine;
mod tasks;

pub use engine::{EngineHandle, run};
