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
    /// This instance's stable name, used in its transactional id
    /// (`<group_id>-<instance_id>`). Unset: a random one per start. Give each
    /// instance a stable, distinct name (e.g. a StatefulSet pod's name) so a
    /// restarted instance aborts its predecessor's open transaction at once;
    /// with random names `read_committed` readers wait up to
    /// `kafka.transaction_timeout_ms` behind a crashed instance's transaction.
    pub instance_id: Option<String>,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        Self {
            group_id: "lifecycle-validate".into(),
            max_batch_records: 5000,
            batch_linger_ms: 50,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9101))),
            unknown_schema_ttl_secs: 60,
            instance_id: None,
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
