//! The validation step as a pure function: one raw record in, one outcome out.
//!
//! `RawBytes -> Encoding (Avro | JSON) -> JSON object -> Event` or a `Rejection`.
//! Writer schemas are looked up in a cache the caller fills beforehand (the
//! registry is IO, so it stays outside).

use std::collections::HashMap;

use apache_avro::Schema;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::avro::Envelope;
use crate::envelope_codec;
use crate::event::Event;
use crate::reason::{ReasonCode, Rejection};
use crate::strict::StrictWalker;
use crate::validate::Validator;
use crate::wire::{self, Encoding};

/// A writer schema prepared for decoding.
#[derive(Debug, Clone)]
pub struct Writer {
    schema: Schema,
    walker: StrictWalker,
    readable: Result<(), Rejection>,
    /// Writer and reader are both the envelope `envelope_codec` implements:
    /// bodies are read in place, and a valid body is passed on unchanged.
    in_place: bool,
}

impl Writer {
    /// Parses a writer schema fetched from the registry and checks it against the envelope.
    pub fn prepare(text: &str, envelope: &Envelope) -> Self {
        let schema = match Schema::parse_str(text) {
            Ok(s) => s,
            Err(e) => return Self::unreadable(format!("writer schema does not parse: {e}")),
        };
        let walker = match StrictWalker::new(&schema) {
            Ok(w) => w,
            Err(e) => return Self::unreadable(format!("writer schema unusable: {e}")),
        };
        let readable = envelope.can_read(&schema);
        let in_place = envelope.is_v1() && envelope_codec::is_v1(&schema);
        Self { schema, walker, readable, in_place }
    }

    fn unreadable(message: String) -> Self {
        Self {
            schema: Schema::Null,
            walker: StrictWalker::new(&Schema::Null).unwrap_or_else(|_| unreachable!("null schema always walks")),
            readable: Err(Rejection::record(ReasonCode::SchemaMismatch, message)),
            in_place: false,
        }
    }
}

/// Writer schemas by id: `Some` known, `None` known to be absent from the registry.
pub type WriterCache = HashMap<u32, Option<Writer>>;

/// Schema ids referenced by Confluent-framed payloads that the cache lacks.
pub fn missing_schema_ids<'a>(payloads: impl IntoIterator<Item = &'a [u8]>, cache: &WriterCache) -> Vec<u32> {
    let mut ids: Vec<u32> = payloads
        .into_iter()
        .filter_map(|p| match wire::sniff(p) {
            Ok(Encoding::Avro { schema_id, .. }) if !cache.contains_key(&schema_id) => Some(schema_id),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The outcome of validating one record.
// Boxing the event would cost an allocation per record on the hot path.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// Passed: the event.
    Valid(Event),
    /// Rejected, with the event id when it could be read.
    Rejected(Rejection, Option<String>),
}

/// The Avro body of `payload` when it can go on to `events.valid` unchanged:
/// written with the envelope itself (so re-encoding the validated event would
/// give the same bytes). Check the payload with [`process`] first.
pub fn reusable_body<'a>(payload: &'a [u8], cache: &WriterCache) -> Option<&'a [u8]> {
    match wire::sniff(payload) {
        Ok(Encoding::Avro { schema_id, body }) => match cache.get(&schema_id) {
            Some(Some(w)) if w.in_place => Some(body),
            _ => None,
        },
        _ => None,
    }
}

/// Decodes and validates one payload. Schema ids absent from `cache` are treated
/// as unknown, so fill the cache first (see [`missing_schema_ids`]).
pub fn process(
    payload: &[u8],
    cache: &WriterCache,
    envelope: &Envelope,
    validator: &Validator,
    now: DateTime<Utc>,
) -> Outcome {
    let obj: Map<String, Value> = match wire::sniff(payload) {
        Err(r) => return Outcome::Rejected(r, None),
        Ok(Encoding::Json(bytes)) => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return Outcome::Rejected(
                    Rejection::record(ReasonCode::WrongType, "an event must be a JSON object"),
                    None,
                );
            }
            Err(e) => {
                return Outcome::Rejected(
                    Rejection::record(ReasonCode::InvalidJson, format!("invalid JSON: {e}")),
                    None,
                );
            }
        },
        Ok(Encoding::Avro { schema_id, body }) => {
            let Some(Some(writer)) = cache.get(&schema_id) else {
                return Outcome::Rejected(
                    Rejection::record(
                        ReasonCode::UnknownSchemaId,
                        format!("schema id {schema_id} is not in the registry"),
                    ),
                    None,
                );
            };
            if let Err(r) = &writer.readable {
                return Outcome::Rejected(r.clone(), None);
            }
            if writer.in_place {
                return match envelope_codec::decode(body) {
                    Err(r) => Outcome::Rejected(r, None),
                    Ok(view) => match validator.validate_view(&view, now) {
                        Ok(event) => Outcome::Valid(event),
                        Err(r) => Outcome::Rejected(r, Some(view.event_id.to_owned())),
                    },
                };
            }
            match envelope.decode_fields(&writer.schema, &writer.walker, body) {
                Ok((o, errors)) => match Rejection::from_errors(errors) {
                    None => o,
                    Some(r) => {
                        return Outcome::Rejected(r, o.get("event_id").and_then(Value::as_str).map(str::to_owned));
                    }
                },
                Err(r) => return Outcome::Rejected(r, None),
            }
        }
    };
    match validator.validate_object(&obj, now) {
        Ok(event) => Outcome::Valid(event),
        Err(r) => {
            let event_id = obj.get("event_id").and_then(Value::as_str).map(str::to_owned);
            Outcome::Rejected(r, event_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::EventCatalog;
    use crate::validate::Limits;
    use chrono::TimeZone;
    use std::sync::Arc;

    const ENVELOPE: &str = include_str!("../../schemas/avro/envelope.avsc");

    fn setup() -> (Envelope, Validator, WriterCache, DateTime<Utc>) {
        let env = Envelope::parse(ENVELOPE).expect("envelope");
        let catalog = EventCatalog::from_schemas([("user.login", r#"{"type":"record","name":"L","fields":[]}"#)])
            .expect("catalog");
        let v = Validator::new(Arc::new(catalog), Limits::default());
        let mut cache = WriterCache::new();
        cache.insert(7, Some(Writer::prepare(ENVELOPE, &env)));
        cache.insert(8, None);
        cache.insert(
            9,
            Some(Writer::prepare(r#"{"type":"record","name":"X","fields":[{"name":"a","type":"int"}]}"#, &env)),
        );
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).single().expect("date");
        (env, v, cache, now)
    }

    fn reason(o: Outcome) -> ReasonCode {
        match o {
            Outcome::Rejected(r, _) => r.reason,
            Outcome::Valid(e) => panic!("expected rejection, got {e:?}"),
        }
    }

    #[test]
    fn json_and_avro_paths_agree() {
        let (env, v, cache, now) = setup();
        let json =
            br#"{"event_id":"e","user_id":"u","event_type":"user.login","timestamp":1763856000000,"session_id":"s"}"#;
        let Outcome::Valid(event) = process(json, &cache, &env, &v, now) else { panic!("json should pass") };
        let framed = wire::frame(7, &env.encode(&event).expect("encode"));
        assert_eq!(process(&framed, &cache, &env, &v, now), Outcome::Valid(event));
    }

    #[test]
    fn every_malformed_input_gets_its_reason() {
        let (env, v, cache, now) = setup();
        let json =
            br#"{"event_id":"e","user_id":"u","event_type":"user.login","timestamp":1763856000000,"session_id":"s"}"#;
        let Outcome::Valid(event) = process(json, &cache, &env, &v, now) else { panic!("valid") };
        let body = env.encode(&event).expect("encode");
        assert_eq!(
            reason(process(&wire::frame(7, &body[..body.len() - 3]), &cache, &env, &v, now)),
            ReasonCode::AvroDecodeError
        );
        assert_eq!(reason(process(&wire::frame(8, &body), &cache, &env, &v, now)), ReasonCode::UnknownSchemaId);
        assert_eq!(reason(process(&wire::frame(1234, &body), &cache, &env, &v, now)), ReasonCode::UnknownSchemaId);
        assert_eq!(reason(process(&wire::frame(9, &body), &cache, &env, &v, now)), ReasonCode::SchemaMismatch);
        assert_eq!(reason(process(b"{\"event_id\":\"\xc3\x28\"}", &cache, &env, &v, now)), ReasonCode::InvalidJson);
        assert_eq!(reason(process(b"\x01garbage", &cache, &env, &v, now)), ReasonCode::InvalidWireFormat);
        let wrong =
            br#"{"event_id":"e","user_id":5,"event_type":"user.login","timestamp":1763856000000,"session_id":"s"}"#;
        match process(wrong, &cache, &env, &v, now) {
            Outcome::Rejected(r, id) => {
                assert_eq!((r.reason, id.as_deref()), (ReasonCode::WrongType, Some("e")));
                assert_eq!(r.errors[0].field, "user_id");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            missing_schema_ids([&wire::frame(7, &body)[..], &wire::frame(42, &body), &wire::frame(42, b"")], &cache),
            vec![42]
        );
    }

    /// Seeded mutations of valid Avro and JSON payloads (truncation, bit flips,
    /// splices, random bytes) never panic and always get exactly one outcome.
    #[test]
    fn mutated_inputs_never_panic() {
        let (env, v, cache, now) = setup();
        let json = br#"{"event_id":"e","user_id":"u","event_type":"user.login","timestamp":1763856000000,"session_id":"s","event_properties":{"method":"sso"},"device_info":{"os":"x"}}"#;
        let Outcome::Valid(event) = process(json, &cache, &env, &v, now) else { panic!("valid") };
        let avro = wire::frame(7, &env.encode(&event).expect("encode"));
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut valid, mut rejected) = (0, 0);
        for round in 0..20_000 {
            let base: &[u8] = if round % 2 == 0 { &avro } else { json };
            let mut p = base.to_vec();
            match next() % 4 {
                0 => p.truncate((next() as usize) % (p.len() + 1)),
                1 => {
                    for _ in 0..1 + next() % 4 {
                        let i = (next() as usize) % p.len();
                        p[i] ^= 1 << (next() % 8);
                    }
                }
                2 => {
                    let i = (next() as usize) % p.len();
                    let j = (next() as usize) % p.len();
                    p.splice(i..i, base[j..].iter().copied().take(16));
                }
                _ => p = (0..(next() % 64)).map(|_| next() as u8).collect(),
            }
            match process(&p, &cache, &env, &v, now) {
                Outcome::Valid(_) => valid += 1,
                Outcome::Rejected(r, _) => {
                    assert!(!r.errors.is_empty() && !r.message.is_empty());
                    rejected += 1;
                }
            }
        }
        assert_eq!(valid + rejected, 20_000);
        assert!(rejected > 10_000, "most mutations are caught ({rejected})");
    }
}
