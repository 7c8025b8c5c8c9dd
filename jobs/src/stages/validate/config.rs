//! Validation stage configuration.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Settings of the validation stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// Consumer group; instances in one group split the partitions.
    pub group_id: String,
    /// Most records per batch (outputs are produced and offsets committed per batch).
    pub max_batch_records: usize,
    /// How long a batch may wait to fill, in milliseconds.
    pub batch_linger_ms: u64,
    /// Where `/metrics` and `/healthz` are served; none when absent.
    pub metrics_addr: Option<SocketAddr>,
    /// How long an unknown schema id is remembered as unknown, in seconds.
    pub unknown_schema_ttl_secs: u64,
    /// Rejoin the consumer group after holding no partition this long, in seconds
    /// (0: never). tansu does not expire a member that died without leaving when
    /// another joins at that moment, and the survivor can be left with nothing;
    /// rejoining repairs that. Set 0 when running more instances than partitions.
    pub rejoin_when_unassigned_secs: u64,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        Self {
            group_id: "lifecycle-validate".into(),
            max_batch_records: 5000,
            batch_linger_ms: 50,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9101))),
            unknown_schema_ttl_secs: 60,
            rejoin_when_unassigned_secs: 20,
        }
    }
}

impl ValidateConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.group_id.is_empty() {
            return Err("validate.group_id must not be empty".into());
        }
        if self.max_batch_records == 0 {
            return Err("validate.max_batch_records must be positive".into());
        }
        Ok(())
    }
}
