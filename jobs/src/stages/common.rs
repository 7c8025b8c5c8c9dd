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
        let lenient = lifecycle_pipeline::Limits { max_future_skew: century, max_age: century, max_id_len: 4096 };
        Ok(Self {
            envelope: files.envelope().map_err(|e| e.to_string())?,
            validator: lifecycle_pipeline::Validator::new(
                std::sync::Arc::new(files.catalog().map_err(|e| e.to_string())?),
                lenient,
            ),
        })
    }

    /// The event, or `None` (logged) when the record cannot be read.
    pub(crate) fn decode(&self, cache: &WriterCache, r: &RawRecord) -> Option<lifecycle_pipeline::Event> {
        match process::process(&r.payload, cache, &self.envelope, &self.validator, chrono::Utc::now()) {
            process::Outcome::Valid(e) => Some(e),
            process::Outcome::Rejected(rej, _) => {
                tracing::error!(partition = r.partition, offset = r.offset, reason = %rej.reason, message = %rej.message, "undecodable record on events.valid");
                None
            }
        }
    }
}

/// Tracks how long this member has held no partition (see `rejoin_when_unassigned_secs`).
struct Membership {
    since: Option<Instant>,
    after: Duration,
}

impl Membership {
    fn new(rejoin_after_secs: u64) -> Self {
        Self { since: None, after: Duration::from_secs(rejoin_after_secs) }
    }

    /// Called on an idle poll with the assigned partition count; true when the
    /// member should leave and rejoin its group.
    fn should_rejoin(&mut self, assigned: usize) -> bool {
        if assigned > 0 {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if !self.after.is_zero() && since.elapsed() >= self.after {
            self.since = None;
            return true;
        }
        false
    }

    /// Records arrived: the member is assigned.
    fn reset(&mut self) {
        self.since = None;
    }
}

/// Serves `/metrics` and `/healthz` for a stage until `shutdown`.
pub(crate) fn serve_metrics(
    addr: std::net::SocketAddr,
    registry: prometheus::Registry,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(lifecycle_connectors::http::ops::metrics_handler))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .with_state(registry);
    tokio::spawn(async move {
        let served = lifecycle_connectors::http::ops::serve(addr, app, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
        if let Err(e) = served.await {
            tracing::error!(%addr, error = %e, "metrics endpoint failed");
        }
    });
}

/// What [`Poller::next`] got.
pub(crate) enum Polled {
    /// A non-empty batch.
    Batch(Vec<RawRecord>),
    /// The member left and rejoined its group (partitions may have moved).
    Rejoined,
    /// Shutdown was requested.
    Shutdown,
}

/// A stage's consumer: batches, consume-error retries, and rejoining the group
/// after holding no partition for too long (see `rejoin_when_unassigned_secs`).
pub(crate) struct Poller {
    source: Option<lifecycle_connectors::kafka::source::BatchSource>,
    kafka: lifecycle_connectors::kafka::config::KafkaConfig,
    group: String,
    topics: Vec<String>,
    membership: Membership,
    max: usize,
    linger: Duration,
    retries: IntCounterVec,
}

impl Poller {
    pub(crate) fn new(
        kafka: &lifecycle_connectors::kafka::config::KafkaConfig,
        group: &str,
        topics: &[&str],
        (max, linger): (usize, Duration),
        rejoin_after_secs: u64,
        retries: IntCounterVec,
    ) -> Result<Self, String> {
        let mut p = Self {
            source: None,
            kafka: kafka.clone(),
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            membership: Membership::new(rejoin_after_secs),
            max,
            linger,
            retries,
        };
        p.subscribe()?;
        Ok(p)
    }

    fn subscribe(&mut self) -> Result<(), String> {
        drop(self.source.take()); // leave the group before joining again
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        let source = lifecycle_connectors::kafka::source::BatchSource::subscribe(&self.kafka, &self.group, &topics)
            .map_err(|e| e.to_string())?;
        self.source = Some(source);
        Ok(())
    }

    /// The current consumer.
    pub(crate) fn source(&self) -> &lifecycle_connectors::kafka::source::BatchSource {
        self.source.as_ref().unwrap_or_else(|| unreachable!("subscribed in new() and subscribe()"))
    }

    /// Waits for the next non-empty batch, shutdown, or a rejoin.
    pub(crate) async fn next(&mut self, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Result<Polled, String> {
        loop {
            let batch = tokio::select! {
                b = self.source().next_batch(self.max, self.linger, Duration::from_secs(1)) => b,
                _ = shutdown.wait_for(|s| *s) => return Ok(Polled::Shutdown),
            };
            match batch {
                Ok(b) if b.is_empty() => {
                    if self.membership.should_rejoin(self.source().assigned_partitions().unwrap_or(0)) {
                        tracing::warn!(group = %self.group, "no partition assigned; leaving and rejoining the consumer group");
                        self.retries.with_label_values(&["rejoin"]).inc();
                        self.subscribe()?;
                        return Ok(Polled::Rejoined);
                    }
                }
                Ok(b) => {
                    self.membership.reset();
                    return Ok(Polled::Batch(b));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consume failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
