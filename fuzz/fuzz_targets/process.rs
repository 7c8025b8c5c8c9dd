//! The validation stage's pure function: any bytes in, exactly one outcome
//! out (valid, or rejected with a reason and at least one field error), no
//! panic, whatever the framing (Confluent Avro under a known, an unreadable
//! or an unknown schema id; JSON; garbage).

#![no_main]

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use lifecycle_pipeline::avro::Envelope;
use lifecycle_pipeline::process::{Outcome, Writer, WriterCache, process};
use lifecycle_pipeline::{EventCatalog, Validator};

struct Setup {
    envelope: Envelope,
    validator: Validator,
    cache: WriterCache,
    now: DateTime<Utc>,
}

/// The shipped schemas (`schemas/avro`): the envelope is writer id 1, an
/// unrelated record id 2, an id the registry could not parse 3.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/avro");
        let envelope_text = std::fs::read_to_string(dir.join("envelope.avsc")).expect("envelope.avsc");
        let envelope = Envelope::parse(&envelope_text).expect("envelope");
        let mut types = Vec::new();
        for entry in std::fs::read_dir(dir.join("events")).expect("events dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if let Some(t) = name.strip_suffix(".avsc") {
                types.push((t.to_owned(), std::fs::read_to_string(&path).expect("schema")));
            }
        }
        let catalog = EventCatalog::from_schemas(types.iter().map(|(t, s)| (t.as_str(), s.as_str()))).expect("catalog");
        let validator = Validator::new(Arc::new(catalog), Default::default());
        let mut cache = WriterCache::new();
        cache.insert(1, Some(Writer::prepare(&envelope_text, &envelope)));
        cache.insert(
            2,
            Some(Writer::prepare(r#"{"type":"record","name":"X","fields":[{"name":"a","type":"string"}]}"#, &envelope)),
        );
        cache.insert(3, None);
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).single().expect("date");
        Setup { envelope, validator, cache, now }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    match process(data, &s.cache, &s.envelope, &s.validator, s.now) {
        Outcome::Valid(event) => {
            // A valid event must encode back to Avro (the stage's next step).
            assert!(s.envelope.encode(&event).is_ok(), "a valid event does not encode");
        }
        Outcome::Rejected(r, _) => assert!(!r.errors.is_empty() && !r.message.is_empty(), "{r:?}"),
    }
});
