//! Benchmarks of the pipeline. `cargo bench -p lifecycle-benches` runs the
//! criterion micro-benchmarks in `benches/`; each compares a stage's work with
//! a baseline measured in the same run (here: plain Avro decoding).

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
