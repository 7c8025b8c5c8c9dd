//! Workflows: BPMN 2.0 process definitions checked into an executable graph,
//! and the condition expressions of their sequence flows. Pure: the engine
//! that runs instances (PostgreSQL state, retries, timers) builds on this.

pub mod bpmn;
pub mod expr;

pub use bpmn::{BpmnError, Flow, Node, NodeKind, Process, TaskAction};
pub use expr::{Expr, ExprError};
