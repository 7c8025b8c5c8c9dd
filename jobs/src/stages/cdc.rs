//! `lifecycle run cdc`: the CDC connector as a process, with its metrics and probes.

use lifecycle_connectors::cdc::connector::{CdcError, Connector};
use lifecycle_pipeline::metrics::CdcMetrics;
use tokio::sync::watch;

use crate::config::LifecycleConfig;

/// The connector's metrics, registry and health.
pub type CdcHandle = super::Handle<CdcMetrics>;

/// Runs the connector until `shutdown`. The captured database is
/// `cdc.source_url`, or the pipeline's own when that is empty; finished
/// snapshots are recorded in the pipeline's database.
pub async fn run(cfg: &LifecycleConfig, handle: CdcHandle, shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let state = lifecycle_connectors::postgres::connect_and_migrate(&cfg.postgres)
        .await
        .map_err(|e| format!("database: {e}"))?;
    let source_url = if cfg.cdc.source_url.is_empty() { cfg.postgres.url.clone() } else { cfg.cdc.source_url.clone() };
    if let Some(addr) = cfg.cdc.metrics_addr {
        super::common::serve_metrics(addr, handle.registry.clone(), handle.health.clone(), shutdown.clone());
    }
    // Nothing is consumed from Kafka: the connector holds no partitions and is
    // ready once it streams.
    let mut connector = loop {
        match Connector::new(
            cfg.cdc.clone(),
            &source_url,
            state.clone(),
            &cfg.kafka,
            cfg.topics.replication_factor,
            handle.metrics.clone(),
        )
        .await
        {
            Ok(c) => break c,
            Err(CdcError::Config(m)) => return Err(m),
            Err(CdcError::Unavailable(m)) => {
                handle.health.stalled(m.clone());
                tracing::warn!(error = %m, "CDC connector cannot start yet; retrying");
                let mut s = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    _ = s.wait_for(|s| *s) => return Ok(()),
                }
            }
        }
    };
    let health = handle.health.clone();
    connector.on_progress(move |failed| match failed {
        None => {
            health.beat(true);
            health.progressing();
        }
        Some(why) => health.stalled(why.to_owned()),
    });
    handle.health.beat(true);
    for (table, topic) in connector.topics() {
        tracing::info!(%table, %topic, "capturing");
    }
    connector.run(shutdown).await.map_err(|e| e.to_string())
}
