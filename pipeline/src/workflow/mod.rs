//! Workflows: BPMN 2.0 process definitions checked into an executable graph,
//! and the condition expressions of their sequence flows. Pure: the engine
//! that runs instances (PostgreSQL state, retries, timers) builds on this.

pub mod bpmn;
pub mod expr;
pub mod instance;

pub use bpmn::{BpmnError, Flow, Node, NodeKind, Process, TaskAction};
pub use expr::{Expr, ExprError};
pub use instance::{Effect, Failure, Instance, RetryPolicy, Status, Token, TokenState};
