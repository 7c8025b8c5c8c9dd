//! The sink loop: read a batch (up to `max_batch_records`, at most
//! `batch_linger_ms`), insert it into ClickHouse in one RowBinary insert,
//! retrying with backoff while ClickHouse is down, and commit the offsets only
//! after the insert succeeded. A replay re-inserts rows with the same
//! (event_date, event_type, event_id) key, which ReplacingMergeTree collapses.

use std::time::{Duration, Instant};

use lifecycle_connectors::clickhouse::sink::{EventRow, insert};
use lifecycle_connectors::clickhouse::{client, migrate};
use lifecycle_connectors::kafka::source::RawRecord;
use lifecycle_pipeline::Topic;
use lifecycle_pipeline::metrics::AnalyticsMetrics;
use lifecycle_schemas::RegistryClient;
use tokio::sync::watch;

use crate::config::LifecycleConfig;
use crate::stages::common::{EventDecoder, Polled, Poller, WriterSchemas, backoff};

/// Counters a caller can read while the sink runs.
#[derive(Clone)]
pub struct SinkHandle {
    /// Metrics.
    pub metrics: AnalyticsMetrics,
    /// Their registry.
    pub registry: prometheus::Registry,
}

impl SinkHandle {
    /// Creates metrics in a fresh registry.
    pub fn new() -> Result<Self, String> {
        let registry = prometheus::Registry::new();
        let metrics = AnalyticsMetrics::register(&registry).map_err(|e| e.to_string())?;
        Ok(Self { metrics, registry })
    }
}

/// Runs the sink until `shutdown` turns true; finishes the batch in hand first.
pub async fn run(cfg: &LifecycleConfig, handle: SinkHandle, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let ac = &cfg.analytics;
    ac.validate()?;
    let decoder = EventDecoder::load(cfg)?;
    let mut attempt = 0;
    while let Err(e) = migrate::migrate(&cfg.clickhouse).await {
        handle.metrics.retries.with_label_values(&["migrate"]).inc();
        tracing::warn!(error = %e, attempt, "ClickHouse migrations failed; retrying");
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
    let ch = client(&cfg.clickhouse);
    let mut writers =
        WriterSchemas::new(RegistryClient::new(&cfg.registry_url).map_err(|e| e.to_string())?, Duration::from_secs(60));
    let topic = cfg.topics.name(Topic::EventsValid);
    let mut poller = Poller::new(
        &cfg.kafka,
        &ac.group_id,
        &topic,
        (ac.max_batch_records, Duration::from_millis(ac.batch_linger_ms)),
        ac.rejoin_when_unassigned_secs,
        handle.metrics.retries.clone(),
    )?;
    if let Some(addr) = ac.metrics_addr {
        crate::stages::common::serve_metrics(addr, handle.registry.clone(), shutdown.clone());
    }
    tracing::info!(input = %topic, database = %cfg.clickhouse.database, "analytics sink started");
    loop {
        let batch: Vec<RawRecord> = match poller.next(&mut shutdown).await? {
            Polled::Batch(b) => b,
            Polled::Rejoined => continue,
            Polled::Shutdown => break,
        };
        handle.metrics.records_in.inc_by(batch.len() as u64);
        writers.fill(&decoder.envelope, &batch, &handle.metrics.retries).await;
        let rows: Vec<EventRow> = batch
            .iter()
            .filter_map(|r| match decoder.decode(writers.cache(), r) {
                Some(e) => Some(EventRow::new(&e, r.partition, r.offset)),
                None => {
                    handle.metrics.skipped.with_label_values(&["undecodable"]).inc();
                    None
                }
            })
            .collect();
        let started = Instant::now();
        let mut attempt = 0;
        while let Err(e) = insert(&ch, &rows).await {
            handle.metrics.retries.with_label_values(&["insert"]).inc();
            tracing::warn!(error = %e, rows = rows.len(), attempt, "ClickHouse insert failed; backing off");
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
        handle.metrics.rows_inserted.inc_by(rows.len() as u64);
        if let Err(e) = poller.source().commit(&batch) {
            tracing::warn!(error = %e, "commit failed; the batch will be inserted again after a restart (deduplicated)");
        }
        tracing::debug!(rows = rows.len(), ms = started.elapsed().as_millis() as u64, "batch inserted");
    }
    tracing::info!("analytics sink stopped");
    Ok(())
}
