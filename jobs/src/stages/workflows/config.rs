//! Workflow engine configuration.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Settings of the workflow engine.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkflowConfig {
    /// Consumer group of `workflow.commands`.
    pub group_id: String,
    /// This engine's name in instance leases; unique per running engine (empty:
    /// the host name). An engine restarted under the same name takes its
    /// instances back at once.
    pub node_id: String,
    /// How often due instances are looked for, in milliseconds.
    pub poll_interval_ms: u64,
    /// How long a claimed instance stays this engine's without a save, in seconds.
    pub lease_secs: u64,
    /// Instances worked on at once.
    pub max_in_flight: usize,
    /// First retry delay of a failed service task, in milliseconds (doubles per attempt, 50-100 % jitter).
    pub retry_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// Timeout of one service-task or webhook call, in milliseconds.
    pub task_timeout_ms: u64,
    /// Secret that signs HTTP service-task calls and instance callbacks
    /// (`X-Lifecycle-Signature`); empty: sent unsigned. Subscriptions have their own.
    pub signing_secret: String,
    /// Attempts per webhook delivery before it is marked failed.
    pub webhook_max_attempts: u32,
    /// Where `/metrics` and `/healthz` are served; none when absent.
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        Self {
            group_id: "lifecycle-workflows".into(),
            node_id: String::new(),
            poll_interval_ms: 200,
            lease_secs: 60,
            max_in_flight: 64,
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            task_timeout_ms: 10_000,
            signing_secret: String::new(),
            webhook_max_attempts: 8,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9104))),
        }
    }
}

impl std::fmt::Debug for WorkflowConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowConfig")
            .field("group_id", &self.group_id)
            .field("node_id", &self.node_id)
            .field("max_in_flight", &self.max_in_flight)
            .field("signing_secret", &lifecycle_connectors::secret::shown(&self.signing_secret))
            .finish_non_exhaustive()
    }
}

impl WorkflowConfig {
    /// The lease owner name in effect: `node_id`, else the host name.
    pub fn node_name(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "engine".into())
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.group_id.is_empty() {
            return Err("workflows.group_id must be set".into());
        }
        if self.max_in_flight == 0 || self.poll_interval_ms == 0 || self.task_timeout_ms == 0 {
            return Err("workflows.max_in_flight, poll_interval_ms and task_timeout_ms must be positive".into());
        }
        if self.lease_secs * 1000 < self.task_timeout_ms * 2 {
            return Err("workflows.lease_secs must cover at least two task timeouts".into());
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            return Err("workflows.retry_base_ms must be positive and at most retry_max_ms".into());
        }
        if self.webhook_max_attempts == 0 {
            return Err("workflows.webhook_max_attempts must be positive".into());
        }
        Ok(())
    }
}
