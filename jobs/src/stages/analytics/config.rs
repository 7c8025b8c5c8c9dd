//! Analytics sink configuration.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Settings of the ClickHouse sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// Consumer group.
    pub group_id: String,
    /// Most rows per ClickHouse insert.
    pub max_batch_records: usize,
    /// How long a batch may wait to fill, in milliseconds.
    pub batch_linger_ms: u64,
    /// Where `/metrics` and `/healthz` are served; none when absent.
    pub metrics_addr: Option<SocketAddr>,
    /// How often days marked dirty are rolled up into metrics_daily, in milliseconds.
    pub rollup_interval_ms: u64,
    /// How often superseded rollups are purged, in seconds.
    pub purge_interval_secs: u64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            group_id: "lifecycle-analytics".into(),
            max_batch_records: 50_000,
            batch_linger_ms: 1000,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9103))),
            rollup_interval_ms: 5000,
            purge_interval_secs: 600,
        }
    }
}

impl AnalyticsConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.group_id.is_empty() || self.max_batch_records == 0 {
            return Err("analytics.group_id must be set and analytics.max_batch_records positive".into());
        }
        if self.rollup_interval_ms == 0 || self.purge_interval_secs == 0 {
            return Err("analytics.rollup_interval_ms and analytics.purge_interval_secs must be positive".into());
        }
        Ok(())
    }
}
