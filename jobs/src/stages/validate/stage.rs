//! The stage loop: read a batch, fill the writer-schema cache, validate every
//! record (pure), produce all outputs, wait for every acknowledgement, then
//! commit the batch's offsets. A crash between produce and commit re-processes
//! the batch: delivery is at-least-once and `event_id` identifies duplicates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_connectors::kafka::source::RawRecord;
use lifecycle_pipeline::avro::Envelope;
use lifecycle_pipeline::dlq::{DlqRecord, SourceRef};
use lifecycle_pipeline::metrics::ValidateMetrics;
use lifecycle_pipeline::process::{self, Outcome, WriterCache};
use lifecycle_pipeline::{ReasonCode, Rejection, Topic, Validator, wire};
use lifecycle_schemas::{RegistryClient, SchemaFiles};
use tokio::sync::watch;

use crate::config::LifecycleConfig;
use crate::stages::common::{Polled, Poller, WriterSchemas, backoff, serve_metrics};

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

/// Turns one consumed record into its one output record.
fn output(ctx: &Ctx, cache: &WriterCache, r: &RawRecord, now: chrono::DateTime<Utc>, m: &ValidateMetrics) -> OutRecord {
    let dlq = |rejection: Rejection, event_id: Option<String>| {
        m.dlq_reasons.with_label_values(&[rejection.reason.as_str()]).inc();
        m.records_out.with_label_values(&["dlq"]).inc();
        let reason = rejection.reason.as_str().as_bytes().to_vec();
        let src = SourceRef { topic: r.topic.clone(), partition: r.partition, offset: r.offset };
        let rec = DlqRecord::new(rejection, src, "validate", event_id, r.key.as_deref(), &r.payload, now);
        OutRecord {
            topic: ctx.dlq_topic.clone(),
            key: r.key.clone(),
            payload: serde_json::to_vec(&rec).unwrap_or_default(),
            headers: vec![("content-type", b"application/json".to_vec()), ("reason", reason)],
        }
    };
    match process::process(&r.payload, cache, &ctx.envelope, &ctx.validator, now) {
        Outcome::Valid(event) => match ctx.envelope.encode(&event) {
            Ok(body) => {
                m.records_out.with_label_values(&["valid"]).inc();
                OutRecord {
                    topic: ctx.valid_topic.clone(),
                    key: Some(event.user_id.as_bytes().to_vec()),
                    payload: wire::frame(ctx.valid_schema_id, &body),
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

/// Runs the stage until `shutdown` turns true; finishes the batch in hand first.
pub async fn run(
    cfg: &LifecycleConfig,
    handle: StageHandle,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let vc = &cfg.validate;
    vc.validate()?;
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
    let mut poller = Poller::new(
        &cfg.kafka,
        &vc.group_id,
        &[&raw_topic],
        (vc.max_batch_records, linger),
        vc.rejoin_when_unassigned_secs,
        handle.metrics.retries.clone(),
    )?;
    let sink = KafkaSink::new(&cfg.kafka).map_err(|e| e.to_string())?;
    let m = handle.metrics.clone();
    if let Some(addr) = vc.metrics_addr {
        serve_metrics(addr, handle.registry.clone(), shutdown.clone());
    }
    tracing::info!(input = %raw_topic, valid = %ctx.valid_topic, dlq = %ctx.dlq_topic, group = %vc.group_id, "validation stage started");
    let mut writers = WriterSchemas::new(client, Duration::from_secs(vc.unknown_schema_ttl_secs));
    let mut last_lag = Instant::now();
    loop {
        let batch = match poller.next(&mut shutdown).await? {
            Polled::Batch(b) => b,
            Polled::Rejoined => continue,
            Polled::Shutdown => break,
        };
        let started = Instant::now();
        m.records_in.inc_by(batch.len() as u64);
        m.batch_size.observe(batch.len() as f64);
        writers.fill(&ctx.envelope, &batch, &m.retries).await;
        let now = Utc::now();
        let outputs: Vec<OutRecord> = batch.iter().map(|r| output(&ctx, writers.cache(), r, now, &m)).collect();
        let mut attempt = 0;
        while let Err(e) = sink.send_all(&outputs).await {
            m.retries.with_label_values(&["produce"]).inc();
            tracing::warn!(error = %e, records = outputs.len(), attempt, "produce failed; retrying the batch");
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
        let mut attempt = 0;
        while let Err(e) = poller.source().commit(&batch) {
            m.retries.with_label_values(&["commit"]).inc();
            if attempt >= 5 {
                tracing::error!(error = %e, "commit failed 5 times; the batch will be re-processed after a restart");
                break;
            }
            tracing::warn!(error = %e, attempt, "commit failed; retrying");
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
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
        tracing::debug!(records = batch.len(), ms = started.elapsed().as_millis() as u64, "batch done");
    }
    tracing::info!("validation stage stopped");
    Ok(())
}
