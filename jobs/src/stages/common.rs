//! Pieces every stage uses: retry backoff and the writer-schema cache.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lifecycle_connectors::kafka::source::RawRecord;
use lifecycle_pipeline::avro::Envelope;
use lifecycle_pipeline::process::{self, Writer, WriterCache};
use lifecycle_schemas::RegistryClient;
use prometheus::IntCounterVec;

/// Exponential backoff: 100 ms doubling, at most 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5_000))
}

/// Writer schemas by id, fetched from the registry on first sight; ids the
/// registry does not know are remembered as unknown for `unknown_ttl`.
pub(crate) struct WriterSchemas {
    client: RegistryClient,
    cache: WriterCache,
    unknown_since: HashMap<u32, Instant>,
    unknown_ttl: Duration,
}

impl WriterSchemas {
    pub(crate) fn new(client: RegistryClient, unknown_ttl: Duration) -> Self {
        Self { client, cache: WriterCache::new(), unknown_since: HashMap::new(), unknown_ttl }
    }

    pub(crate) fn cache(&self) -> &WriterCache {
        &self.cache
    }

    /// Fetches every schema the batch needs; retries while the registry is down
    /// (counted in `retries{cause="registry"}`), so no record is dead-lettered or
    /// skipped because of an outage.
    pub(crate) async fn fill<'r>(
        &mut self,
        envelope: &Envelope,
        batch: impl IntoIterator<Item = &'r RawRecord>,
        retries: &IntCounterVec,
    ) {
        let ttl = self.unknown_ttl;
        let cache = &mut self.cache;
        self.unknown_since.retain(|id, at| {
            let keep = at.elapsed() < ttl;
            if !keep {
                cache.remove(id);
            }
            keep
        });
        for id in process::missing_schema_ids(batch.into_iter().map(|r| r.payload.as_slice()), &self.cache) {
            let mut attempt = 0;
            loop {
                match self.client.schema_by_id(id).await {
                    Ok(Some(text)) => {
                        self.cache.insert(id, Some(Writer::prepare(&text, envelope)));
                        break;
                    }
                    Ok(None) => {
                        self.cache.insert(id, None);
                        self.unknown_since.insert(id, Instant::now());
                        break;
                    }
                    Err(e) => {
                        retries.with_label_values(&["registry"]).inc();
                        tracing::warn!(schema_id = id, error = %e, attempt, "schema registry unavailable; retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                }
            }
        }
    }
}

/// Decodes `events.valid` records into events (without age limits: they were
/// validated on the way in).
pub(crate) struct EventDecoder {
    pub(crate) envelope: lifecycle_pipeline::avro::Envelope,
    validator: lifecycle_pipeline::Validator,
}

impl EventDecoder {
    pub(crate) fn load(cfg: &crate::config::LifecycleConfig) -> Result<Self, String> {
        let files = lifecycle_schemas::SchemaFiles::load(&cfg.schemas_dir()).map_err(|e| e.to_string())?;
        let century = Duration::from_secs(100 * 365 * 86_400);
        let lenient =
            lifecycle_pipeline::Limits { max_future_skew: century, max_age: century, ..cfg.validation.limits()? };
        Ok(Self {
            envelope: files.envelope().map_err(|e| e.to_string())?,
            validator: lifecycle_pipeline::Validator::new(
                std::sync::Arc::new(files.catalog().map_err(|e| e.to_string())?),
                lenient,
            ),
        })
    }

    /// The event, or why the record cannot be read (with its event id when known).
    pub(crate) fn decode(
        &self,
        cache: &WriterCache,
        r: &RawRecord,
    ) -> Result<lifecycle_pipeline::Event, (lifecycle_pipeline::Rejection, Option<String>)> {
        match process::process(&r.payload, cache, &self.envelope, &self.validator, chrono::Utc::now()) {
            process::Outcome::Valid(e) => Ok(e),
            process::Outcome::Rejected(rej, id) => {
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, reason = %rej.reason, message = %rej.message, "unreadable record; dead-lettered");
                Err((rej, id))
            }
        }
    }
}

/// The `events.dlq` record of a consumed record that `stage` rejects.
pub(crate) fn dead_letter_record(
    topic: &str,
    stage: &str,
    r: &RawRecord,
    rejection: lifecycle_pipeline::Rejection,
    event_id: Option<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> lifecycle_connectors::kafka::sink::OutRecord {
    use lifecycle_pipeline::dlq::{DlqRecord, SourceRef};
    let reason = rejection.reason.as_str().as_bytes().to_vec();
    let src = SourceRef { topic: r.topic.to_string(), partition: r.partition, offset: r.offset };
    let rec = DlqRecord::new(rejection, src, stage, event_id, r.key.as_deref(), &r.payload, now);
    lifecycle_connectors::kafka::sink::OutRecord {
        topic: topic.to_owned(),
        key: r.key.clone(),
        // A DLQ record is strings, numbers and a timestamp: it always serialises.
        payload: serde_json::to_vec(&rec).unwrap_or_default(),
        headers: vec![("content-type", b"application/json".to_vec()), ("reason", reason)],
    }
}

/// Serves `/metrics` and the probes for a stage until `shutdown`: `/livez`
/// (the main loop takes steps), `/readyz` (it holds partitions and is not
/// stalled) and `/healthz` (not stalled); each answers 503 with the reason.
pub(crate) fn serve_metrics(
    addr: std::net::SocketAddr,
    registry: prometheus::Registry,
    health: super::Health,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    let probe = |check: fn(&super::Health) -> Result<(), String>| {
        let health = health.clone();
        move || {
            let result = check(&health);
            async move {
                match result {
                    Ok(()) => axum::Json(serde_json::json!({"status": "ok"})).into_response(),
                    Err(reason) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(serde_json::json!({"status": "unhealthy", "reason": reason})),
                    )
                        .into_response(),
                }
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(lifecycle_connectors::http::ops::metrics_handler))
        .with_state(registry)
        .route("/healthz", get(probe(super::Health::check)))
        .route("/livez", get(probe(super::Health::live)))
        .route("/readyz", get(probe(super::Health::ready)));
    tokio::spawn(async move {
        let served = lifecycle_connectors::http::ops::serve(addr, app, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
        if let Err(e) = served.await {
            tracing::error!(%addr, error = %e, "metrics endpoint failed");
        }
    });
}

/// Starts the hanging-transaction guard of this process (unless
/// `kafka.hanging_transaction_abort_after_ms` is 0): every so often it aborts
/// transactions a partition holds open that no coordinator will end, counted
/// in `lifecycle_kafka_hanging_transactions_aborted_total`.
pub(crate) fn spawn_transaction_guard(
    kafka: &lifecycle_connectors::kafka::config::KafkaConfig,
    registry: &prometheus::Registry,
) -> Result<(), String> {
    let after = kafka.hanging_transaction_abort_after_ms;
    if after == 0 {
        return Ok(());
    }
    let aborted =
        lifecycle_pipeline::metrics::kafka_hanging_transactions_aborted(registry).map_err(|e| e.to_string())?;
    let after = Duration::from_millis(after);
    // Often enough that a stuck reader waits little past the threshold, and
    // never more than every 5 s (a scan is a few requests per broker).
    let every = (after / 4).clamp(Duration::from_secs(5), Duration::from_secs(30));
    tokio::spawn(lifecycle_connectors::kafka::transactions::guard(kafka.clone(), after, every, aborted));
    Ok(())
}

/// What [`Poller::next`] got.
pub(crate) enum Polled {
    /// A non-empty batch.
    Batch(Vec<RawRecord>),
    /// Shutdown was requested.
    Shutdown,
}

/// A stage's consumer: batches, and consume errors retried.
pub(crate) struct Poller {
    source: lifecycle_connectors::kafka::source::BatchSource,
    max: usize,
    linger: Duration,
    health: super::Health,
}

impl Poller {
    pub(crate) fn new(
        kafka: &lifecycle_connectors::kafka::config::KafkaConfig,
        group: &str,
        topics: &[&str],
        (max, linger): (usize, Duration),
        health: super::Health,
    ) -> Result<Self, String> {
        let source = lifecycle_connectors::kafka::source::BatchSource::subscribe(kafka, group, topics)
            .map_err(|e| e.to_string())?;
        Ok(Self { source, max, linger, health })
    }

    /// The consumer.
    pub(crate) fn source(&self) -> &lifecycle_connectors::kafka::source::BatchSource {
        &self.source
    }

    /// Waits for the next non-empty batch or shutdown.
    pub(crate) async fn next(&mut self, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Result<Polled, String> {
        loop {
            let batch = tokio::select! {
                b = self.source.next_batch(self.max, self.linger, Duration::from_secs(1)) => b,
                _ = shutdown.wait_for(|s| *s) => return Ok(Polled::Shutdown),
            };
            self.health.beat(self.source.assigned_partitions().is_ok_and(|n| n > 0));
            match batch {
                Ok(b) if b.is_empty() => {}
                Ok(b) => return Ok(Polled::Batch(b)),
                Err(e) => {
                    tracing::warn!(error = %e, "consume failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
