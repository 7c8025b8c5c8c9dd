//! Ingestion API configuration.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Settings of the ingestion API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address to listen on.
    pub listen_addr: SocketAddr,
    /// Largest accepted body of `POST /events`, in bytes.
    pub max_event_bytes: usize,
    /// Largest accepted body of `POST /events/batch`, in bytes.
    pub max_batch_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Requests per minute allowed per API key.
    pub requests_per_minute: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_event_bytes: 64 * 1024,
            max_batch_bytes: 4 * 1024 * 1024,
            max_batch_events: 1000,
            requests_per_minute: 100,
        }
    }
}

impl IngestConfig {
    /// Checks the limits make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_event_bytes == 0 || self.max_batch_bytes < self.max_event_bytes {
            return Err("need 0 < max_event_bytes <= max_batch_bytes".into());
        }
        if self.max_batch_events == 0 || self.requests_per_minute == 0 {
            return Err("max_batch_events and requests_per_minute must be positive".into());
        }
        Ok(())
    }
}
