//! Change data capture: PostgreSQL logical replication (`pgoutput`) to Kafka,
//! one topic per table, in Debezium's change-event envelope.
//!
//! - [`replication`]: the replication-protocol client (slot, snapshot export,
//!   stream, standby status updates);
//! - [`pgoutput`]: the message decoder;
//! - [`debezium`]: the envelope;
//! - [`connector`]: publication and slot management, the initial snapshot,
//!   the stream to Kafka, and the confirmed LSN that moves only behind Kafka's
//!   acknowledgements.

pub mod connector;
pub mod debezium;
pub mod pgoutput;
pub mod replication;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[cdc]`: what to capture and where to write it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdcConfig {
    /// The database to capture, `postgres://user:password@host:port/database`
    /// (a role with the REPLICATION attribute, or a superuser). Empty: the
    /// pipeline's own database (`postgres.url`).
    pub source_url: String,
    /// Tables to capture, `schema.table`. Each needs a primary key or
    /// `REPLICA IDENTITY FULL`.
    pub tables: Vec<String>,
    /// Replication slot (created when missing).
    pub slot: String,
    /// Publication (created when missing; its table list is set to `tables`).
    pub publication: String,
    /// Topics are `<topic_prefix>.<schema>.<table>`; `source.name` is the
    /// prefix. Empty: `cdc.<database>`.
    pub topic_prefix: String,
    /// Partitions of each table's topic when it is created.
    pub partitions: u16,
    /// Snapshot the tables when the slot is created (Debezium's
    /// `snapshot.mode=initial`); false streams changes from then on only.
    pub snapshot: bool,
    /// Changes per Kafka batch at most.
    pub max_batch_changes: usize,
    /// How long changes wait for more before their batch goes to Kafka, ms.
    pub batch_linger_ms: u64,
    /// Standby status updates at least this often, ms.
    pub status_interval_ms: u64,
    /// When no change of the captured tables arrives for this long, the
    /// connector writes a heartbeat message into the WAL
    /// (`pg_logical_emit_message`) so the slot can confirm past other
    /// tables' WAL instead of pinning it; 0 turns heartbeats off. Ms.
    pub heartbeat_interval_ms: u64,
    /// How often the slot's lag and WAL headroom are read, ms.
    pub slot_check_interval_ms: u64,
    /// `/metrics` and probes (default 127.0.0.1:9105; absent: not served).
    pub metrics_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for CdcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdcConfig")
            .field("source_url", &crate::secret::redact_url(&self.source_url))
            .field("tables", &self.tables)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("topic_prefix", &self.topic_prefix)
            .finish_non_exhaustive()
    }
}

impl Default for CdcConfig {
    fn default() -> Self {
        Self {
            source_url: String::new(),
            tables: vec!["public.users".into()],
            slot: "lifecycle_cdc".into(),
            publication: "lifecycle_cdc".into(),
            topic_prefix: String::new(),
            partitions: 1,
            snapshot: true,
            max_batch_changes: 10_000,
            batch_linger_ms: 5,
            status_interval_ms: 1_000,
            heartbeat_interval_ms: 10_000,
            slot_check_interval_ms: 10_000,
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9105))),
        }
    }
}

impl CdcConfig {
    /// Checks the values a run cannot start without.
    pub fn validate(&self) -> Result<(), String> {
        if self.tables.is_empty() {
            return Err("cdc.tables is empty: name at least one schema.table".into());
        }
        for t in &self.tables {
            if t.split('.').count() != 2 || t.split('.').any(str::is_empty) {
                return Err(format!("cdc.tables: '{t}' is not schema.table"));
            }
        }
        for (name, v) in [("cdc.slot", &self.slot), ("cdc.publication", &self.publication)] {
            // Slot names: lower-case letters, digits and underscores (PostgreSQL's rule).
            if v.is_empty()
                || v.len() > 63
                || !v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(format!("{name}: '{v}' must be 1-63 lower-case letters, digits or underscores"));
            }
        }
        if self.partitions == 0 || self.max_batch_changes == 0 || self.status_interval_ms == 0 {
            return Err("cdc.partitions, cdc.max_batch_changes and cdc.status_interval_ms must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_capture_users_and_bad_values_are_named() {
        let c = CdcConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.tables, vec!["public.users".to_owned()]);
        let bad = |f: fn(&mut CdcConfig)| {
            let mut c = CdcConfig::default();
            f(&mut c);
            c.validate().expect_err("invalid")
        };
        assert!(bad(|c| c.tables = vec!["users".into()]).contains("'users'"));
        assert!(bad(|c| c.tables.clear()).contains("empty"));
        assert!(bad(|c| c.slot = "Bad-Slot".into()).contains("cdc.slot"));
        assert!(bad(|c| c.partitions = 0).contains("positive"));
        let with_password = CdcConfig { source_url: "postgres://u:s3cret@h/db".into(), ..CdcConfig::default() };
        assert!(!format!("{with_password:?}").contains("s3cret"));
    }
}
