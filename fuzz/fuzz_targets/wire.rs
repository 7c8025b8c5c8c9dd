//! The wire-format parser (Confluent framing sniffing) and the hand-written
//! envelope decoder the downstream stages use: any bytes, no panic, and a
//! framed payload's schema id and body come back as framed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lifecycle_pipeline::{envelope_codec, wire};

fuzz_target!(|data: &[u8]| {
    if let Ok(wire::Encoding::Avro { schema_id, body }) = wire::sniff(data) {
        assert_eq!(wire::frame(schema_id, body), data, "sniff and frame disagree");
    }
    let _ = envelope_codec::decode(data);
    if let Some(body) = data.get(5..) {
        let _ = envelope_codec::decode(body);
    }
});
