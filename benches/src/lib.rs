//! Benchmarks of the pipeline. `cargo bench -p lifecycle-benches` runs the
//! criterion micro-benchmarks in `benches/`; each compares a stage's work with
//! a baseline measured in the same run (here: plain Avro decoding).

pub mod harness;

use std::sync::Arc;

use chrono::Utc;
use lifecycle_jobs::workload::{AvroEncoder, Workload};
use lifecycle_pipeline::avro::Envelope;
use lifecycle_pipeline::process::{Writer, WriterCache};
use lifecycle_pipeline::{Limits, Validator};
use lifecycle_schemas::files::{SchemaFiles, default_dir};

/// Schema id used for the envelope in benchmarks.
pub const SCHEMA_ID: u32 = 1;

/// Everything a validation benchmark needs: envelope, validator, writer cache,
/// and `n` Confluent-framed events of the standard mix.
pub struct Fixture {
    /// The envelope.
    pub envelope: Envelope,
    /// The validator.
    pub validator: Validator,
    /// Writer cache holding the envelope under [`SCHEMA_ID`].
    pub cache: WriterCache,
    /// Framed Avro events.
    pub avro: Vec<Vec<u8>>,
    /// The same events as JSON bytes.
    pub json: Vec<Vec<u8>>,
}

impl Fixture {
    /// Builds `n` events from the shipped schemas.
    pub fn new(n: usize) -> Self {
        let files = SchemaFiles::load(&default_dir()).unwrap_or_else(|e| panic!("schemas: {e}"));
        let envelope = files.envelope().unwrap_or_else(|e| panic!("envelope: {e}"));
        let catalog = files.catalog().unwrap_or_else(|e| panic!("catalog: {e}"));
        let validator = Validator::new(Arc::new(catalog), Limits::default());
        let mut cache = WriterCache::new();
        cache.insert(SCHEMA_ID, Some(Writer::prepare(&files.envelope, &envelope)));
        let mut w = Workload::new(1, 10_000, "bench", Utc::now());
        let enc = AvroEncoder { validator: &validator, envelope: &envelope, schema_id: SCHEMA_ID };
        let events: Vec<serde_json::Value> = (0..n).map(|_| w.next_event()).collect();
        let avro = events.iter().map(|e| enc.encode(e).unwrap_or_else(|e| panic!("encode: {e}"))).collect();
        let json = events.iter().map(|e| e.to_string().into_bytes()).collect();
        Self { envelope, validator, cache, avro, json }
    }
}

/// Generates `events` events of the standard mix for `users` users (seeded, ids
/// made from the topic prefix) and produces them, Avro-framed with `schema_id`,
/// to `cfg`'s events.valid topic. Returns the generated events and the mean payload size.
pub async fn produce_valid(
    cfg: &lifecycle_jobs::LifecycleConfig,
    schema_id: u32,
    (events, users, seed): (usize, usize, u64),
) -> (Vec<serde_json::Value>, usize) {
    let topic = cfg.topics.name(lifecycle_pipeline::Topic::EventsValid);
    let users = u32::try_from(users).unwrap_or(u32::MAX);
    let mut all = Vec::with_capacity(events);
    let (bytes, _) =
        harness::produce(cfg, (&topic, schema_id), (events, users, seed), &cfg.topics.prefix, |e| all.push(e), None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    (all, bytes)
}

/// The ceiling: an rdkafka consumer reading the first `n` records of `cfg`'s
/// events.valid and doing nothing with them (on a blocking thread). Returns the
/// time from the first record to the last.
pub async fn raw_consume(cfg: &lifecycle_jobs::LifecycleConfig, n: usize) -> std::time::Duration {
    let (kafka, topic) = (cfg.kafka.clone(), cfg.topics.name(lifecycle_pipeline::Topic::EventsValid));
    tokio::task::spawn_blocking(move || harness::consume_and_drop(&kafka, &topic, n))
        .await
        .expect("raw consume")
        .unwrap_or_else(|e| panic!("raw consume: {e}"))
}
