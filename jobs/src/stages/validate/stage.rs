//! The stage loop: read a batch, fill the writer-schema cache, validate every
//! record (pure), then deliver: by default the outputs and the batch's input
//! offsets commit in one Kafka transaction (exactly-once for `read_committed`
//! readers; an aborted transaction rewinds the consumer and the batch is read
//! again from its first offsets). With `kafka.transactions = false` (brokers without transactions) the
//! outputs are produced and acknowledged, then the offsets committed: a crash
//! in between re-processes the batch (at-least-once; `event_id` identifies the
//! duplicates).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord, TxError, TxSink};
use lifecycle_connectors::kafka::source::{BatchSource, RawRecord};
use lifecycle_pipeline::avro::Envelope;
use lifecycle_pipeline::metrics::ValidateMetrics;
use lifecycle_pipeline::process::{self, Outcome, WriterCache};
use lifecycle_pipeline::{ReasonCode, Rejection, Topic, Validator, wire};
use lifecycle_schemas::{RegistryClient, SchemaFiles};
use tokio::sync::watch;

use crate::config::LifecycleConfig;
use crate::stages::common::{Polled, Poller, WriterSchemas, backoff, dead_letter_record, serve_metrics};

/// The validation stage's handle.
pub type StageHandle = crate::stages::Handle<ValidateMetrics>;

impl StageHandle {
    /// `(in, valid, dlq)` so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let m = &self.metrics;
        (
            m.records_in.get(),
            m.records_out.with_label_values(&["valid"]).get(),
            m.records_out.with_label_values(&["dlq"]).get(),
        )
    }
}

struct Ctx {
    envelope: Envelope,
    validator: Validator,
    valid_schema_id: u32,
    valid_topic: String,
    dlq_topic: String,
}

/// A batch's outcomes, counted once its outputs are durable.
#[derive(Default)]
struct Tally {
    valid: u64,
    dlq: Vec<ReasonCode>,
}

impl Tally {
    fn count(self, records: usize, m: &ValidateMetrics) {
        m.records_in.inc_by(records as u64);
        m.records_out.with_label_values(&["valid"]).inc_by(self.valid);
        m.records_out.with_label_values(&["dlq"]).inc_by(self.dlq.len() as u64);
        for reason in self.dlq {
            m.dlq_reasons.with_label_values(&[reason.as_str()]).inc();
        }
    }
}

/// Turns one consumed record into its one output record.
fn output(ctx: &Ctx, cache: &WriterCache, r: &RawRecord, now: chrono::DateTime<Utc>, tally: &mut Tally) -> OutRecord {
    let mut dlq = |rejection: Rejection, event_id: Option<String>| {
        tally.dlq.push(rejection.reason);
        dead_letter_record(&ctx.dlq_topic, "validate", r, rejection, event_id, now)
    };
    match process::process(&r.payload, cache, &ctx.envelope, &ctx.validator, now) {
        Outcome::Valid(event) => match process::reusable_body(&r.payload, cache).map_or_else(
            || ctx.envelope.encode(&event).map(|body| wire::frame(ctx.valid_schema_id, &body)),
            |body| Ok(wire::frame(ctx.valid_schema_id, body)),
        ) {
            Ok(payload) => {
                tally.valid += 1;
                OutRecord {
                    topic: ctx.valid_topic.clone(),
                    key: Some(event.user_id.as_bytes().to_vec()),
                    payload,
                    headers: vec![
                        ("event_type", event.event_type.as_str().as_bytes().to_vec()),
                        ("event_id", event.event_id.as_bytes().to_vec()),
                    ],
                }
            }
            Err(e) => dlq(Rejection::record(ReasonCode::SchemaMismatch, e.to_string()), Some(event.event_id)),
        },
        Outcome::Rejected(rejection, event_id) => dlq(rejection, event_id),
    }
}

/// How a batch's outputs and offsets become durable.
enum Delivery {
    /// In one Kafka transaction.
    Transactional { sink: TxSink, id: String },
    /// Outputs acknowledged, then offsets committed (at-least-once).
    AtLeastOnce(KafkaSink),
}

impl Delivery {
    async fn new(cfg: &LifecycleConfig) -> Result<Self, String> {
        if !cfg.kafka.transactions {
            return Ok(Self::AtLeastOnce(KafkaSink::new(&cfg.kafka).map_err(|e| e.to_string())?));
        }
        let instance = cfg.validate.instance_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let id = format!("{}-{instance}", cfg.validate.group_id);
        let sink = TxSink::new(&cfg.kafka, &id).await.map_err(|e| format!("transactional producer {id}: {e}"))?;
        tracing::info!(transactional_id = %id, "transactions on: outputs and offsets commit together");
        Ok(Self::Transactional { sink, id })
    }

    /// Makes the batch's outputs and offsets durable; `false` when they were
    /// aborted instead and the consumer rewound (the batch is read again).
    async fn deliver(
        &mut self,
        cfg: &LifecycleConfig,
        (source, batch, outputs): (&BatchSource, &[RawRecord], &[OutRecord]),
        (m, health): (&ValidateMetrics, &crate::stages::Health),
    ) -> bool {
        match self {
            Self::Transactional { sink, id } => {
                let committed = match (BatchSource::next_offsets(batch), source.group_metadata()) {
                    (Ok(offsets), Some(group)) => sink.commit_batch(outputs, offsets, group).await,
                    (Err(e), _) => Err(TxError::Aborted(e)),
                    // Not in a group yet (no generation to commit under).
                    (_, None) => Err(TxError::Aborted(rdkafka::error::KafkaError::Global(
                        rdkafka::types::RDKafkaErrorCode::State,
                    ))),
                };
                let e = match committed {
                    Ok(()) => {
                        health.progressing();
                        return true;
                    }
                    Err(e) => e,
                };
                m.retries.with_label_values(&["transaction"]).inc();
                tracing::warn!(error = %e, records = batch.len(), "transaction not committed; the batch will be read again");
                let unknown_outcome = e.needs_new_producer();
                if unknown_outcome {
                    let mut attempt = 0;
                    loop {
                        match TxSink::new(&cfg.kafka, id).await {
                            Ok(new) => {
                                *sink = new;
                                break;
                            }
                            Err(e) => {
                                health.stalled(format!("transactional producer: {e}"));
                                tracing::warn!(error = %e, attempt, "transactional producer not ready; retrying");
                                tokio::time::sleep(backoff(attempt)).await;
                                attempt += 1;
                            }
                        }
                    }
                }
                // Reading on without the rewind would skip the batch. An abort
                // that went through leaves the batch uncommitted: back to its
                // first offsets. Otherwise the transaction may have committed
                // after all, and only the group's committed offsets tell.
                let mut attempt = 0;
                loop {
                    let rewound = if unknown_outcome { source.rewind_to_committed() } else { source.rewind(batch) };
                    let Err(e) = rewound else { break };
                    health.stalled(format!("rewind: {e}"));
                    tracing::warn!(error = %e, attempt, "rewind failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                false
            }
            Self::AtLeastOnce(sink) => {
                let mut attempt = 0;
                while let Err(e) = sink.send_all(outputs).await {
                    m.retries.with_label_values(&["produce"]).inc();
                    tracing::warn!(error = %e, records = outputs.len(), attempt, "produce failed; retrying the batch");
                    if attempt >= 2 {
                        health.stalled(format!("produce: {e}"));
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                health.progressing();
                let mut attempt = 0;
                while let Err(e) = source.commit(batch) {
                    m.retries.with_label_values(&["commit"]).inc();
                    if attempt >= 5 {
                        tracing::error!(error = %e, "commit failed 5 times; the batch will be re-processed after a restart");
                        break;
                    }
                    tracing::warn!(error = %e, attempt, "commit failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                true
            }
        }
    }
}

/// Runs the stage in this process, counting on `handle`, until it has
/// consumed `n` records, ended on its own, or `timeout` passed; then stops it
/// (it finishes its batch) and says how it ended. For tests and benchmarks.
pub async fn run_until(cfg: &LifecycleConfig, handle: &StageHandle, n: u64, timeout: Duration) -> Result<(), String> {
    let (stop, rx) = watch::channel(false);
    let started = Instant::now();
    let stage = {
        let (cfg, handle) = (cfg.clone(), handle.clone());
        tokio::spawn(async move { run(&cfg, handle, rx).await })
    };
    while handle.counts().0 < n && started.elapsed() < timeout && !stage.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(true);
    stage.await.unwrap_or_else(|e| Err(format!("the stage panicked: {e}")))
}

/// Runs the stage until `shutdown` turns true; finishes the batch in hand first.
pub async fn run(
    cfg: &LifecycleConfig,
    handle: StageHandle,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let vc = &cfg.validate;
    vc.validate()?;
    crate::setup::require_topics(cfg, &[Topic::EventsRaw, Topic::EventsValid, Topic::EventsDlq])?;
    let files = SchemaFiles::load(&cfg.schemas_dir()).map_err(|e| e.to_string())?;
    let envelope = files.envelope().map_err(|e| e.to_string())?;
    let validator = Validator::new(Arc::new(files.catalog().map_err(|e| e.to_string())?), cfg.validation.limits()?);
    let client = RegistryClient::new(&cfg.registry_url).map_err(|e| e.to_string())?;
    let registration = crate::setup::register(cfg).await?;
    let ctx = Ctx {
        envelope,
        validator,
        valid_schema_id: registration.valid_envelope_id,
        valid_topic: cfg.topics.name(Topic::EventsValid),
        dlq_topic: cfg.topics.name(Topic::EventsDlq),
    };
    let raw_topic = cfg.topics.name(Topic::EventsRaw);
    let linger = Duration::from_millis(vc.batch_linger_ms);
    let mut poller =
        Poller::new(&cfg.kafka, &vc.group_id, &[&raw_topic], (vc.max_batch_records, linger), handle.health.clone())?;
    let mut delivery = Delivery::new(cfg).await?;
    let m = handle.metrics.clone();
    crate::stages::common::spawn_transaction_guard(&cfg.kafka, &handle.registry)?;
    if let Some(addr) = vc.metrics_addr {
        serve_metrics(addr, handle.registry.clone(), handle.health.clone(), shutdown.clone());
    }
    tracing::info!(input = %raw_topic, valid = %ctx.valid_topic, dlq = %ctx.dlq_topic, group = %vc.group_id, "validation stage started");
    let mut writers = WriterSchemas::new(client, Duration::from_secs(vc.unknown_schema_ttl_secs));
    let mut last_lag = Instant::now();
    loop {
        let batch = match poller.next(&mut shutdown).await? {
            Polled::Batch(b) => b,
            Polled::Shutdown => break,
        };
        let started = Instant::now();
        m.batch_size.observe(batch.len() as f64);
        writers.fill(&ctx.envelope, &batch, &m.retries).await;
        let now = Utc::now();
        let mut tally = Tally::default();
        let outputs: Vec<OutRecord> = batch.iter().map(|r| output(&ctx, writers.cache(), r, now, &mut tally)).collect();
        let validated = started.elapsed();
        if delivery.deliver(cfg, (poller.source(), &batch, &outputs), (&m, &handle.health)).await {
            tally.count(batch.len(), &m);
        }
        m.batch_seconds.observe(started.elapsed().as_secs_f64());
        if last_lag.elapsed() > Duration::from_secs(5) {
            last_lag = Instant::now();
            if let Ok(lags) = poller.source().lag() {
                for (_, partition, lag) in lags {
                    m.lag.with_label_values(&[&partition.to_string()]).set(lag);
                }
            }
        }
        tracing::debug!(
            records = batch.len(),
            validate_ms = validated.as_millis() as u64,
            ms = started.elapsed().as_millis() as u64,
            "batch done"
        );
    }
    tracing::info!("validation stage stopped");
    Ok(())
}
