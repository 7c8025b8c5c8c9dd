//! Profile stage configuration.

use std::net::SocketAddr;

use lifecycle_pipeline::profile::LifecycleRules;
use serde::{Deserialize, Serialize};

/// Settings of the profile stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// Consumer group; instances in one group split the partitions (and so the users).
    pub group_id: String,
    /// Most records per batch (one PostgreSQL transaction per batch).
    pub max_batch_records: usize,
    /// How long a batch may wait to fill, in milliseconds.
    pub batch_linger_ms: u64,
    /// Where `/metrics` and `/healthz` are served; none when absent.
    pub metrics_addr: Option<SocketAddr>,
    /// How long applied event ids are remembered for deduplication, in hours.
    pub dedup_window_hours: u64,
    /// Memory for cached profiles and the cache's own tables, in MiB
    /// (estimated; 0: no cache, every batch loads its users from PostgreSQL).
    /// The least recently updated profiles are dropped first, one at a time,
    /// so the cache stays at this once full.
    pub cache_mib: usize,
    /// How often segment and trigger definitions are reloaded, in milliseconds.
    pub rules_reload_ms: u64,
    /// Lifecycle stage thresholds.
    pub lifecycle: LifecycleRules,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            group_id: "lifecycle-profile".into(),
            max_batch_records: 5000,
            batch_linger_ms: 100,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9102))),
            dedup_window_hours: 7 * 24,
            cache_mib: 128,
            rules_reload_ms: 5000,
            lifecycle: LifecycleRules::default(),
        }
    }
}

impl ProfileConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.group_id.is_empty() || self.max_batch_records == 0 {
            return Err("profile.group_id must be set and profile.max_batch_records positive".into());
        }
        if self.dedup_window_hours == 0 {
            return Err("profile.dedup_window_hours must be positive".into());
        }
        Ok(())
    }
}
