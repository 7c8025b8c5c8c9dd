//! The Avro event envelope: decoding Confluent-framed bodies into the JSON shape
//! the validator checks, and encoding validated events for `events.valid`.

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::types::Value as Avro;
use serde_json::{Map, Number, Value};

use crate::error::PipelineError;
use crate::event::Event;
use crate::reason::{FieldError, ReasonCode, Rejection};
use crate::strict::StrictWalker;

/// The envelope schema (reader schema for decoding, writer schema for encoding).
#[derive(Debug, Clone)]
pub struct Envelope {
    schema: Schema,
    /// The schema is the one `envelope_codec` implements.
    v1: bool,
}

impl Envelope {
    /// Parses the envelope schema text (`schemas/avro/envelope.avsc`).
    pub fn parse(avsc: &str) -> Result<Self, PipelineError> {
        let schema = Schema::parse_str(avsc).map_err(|e| PipelineError::Envelope(e.to_string()))?;
        if !matches!(schema, Schema::Record(_)) {
            return Err(PipelineError::Envelope("must be a record".into()));
        }
        let v1 = crate::envelope_codec::is_v1(&schema);
        Ok(Self { schema, v1 })
    }

    /// Whether this is the envelope `envelope_codec` reads and writes in place.
    pub fn is_v1(&self) -> bool {
        self.v1
    }

    /// The parsed schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Checks once per writer schema whether its data can be read as the envelope.
    /// `Partial` compatibility (some values may fail) counts as readable; those
    /// values then fail to decode one by one.
    pub fn can_read(&self, writer: &Schema) -> Result<(), Rejection> {
        match SchemaCompatibility::can_read(writer, &self.schema) {
            Ok(Compatibility::Full | Compatibility::Partial) => Ok(()),
            Err(e) => Err(Rejection::record(
                ReasonCode::SchemaMismatch,
                format!("writer schema cannot be read as the event envelope: {e}"),
            )),
        }
    }

    /// Decodes an Avro body written with `writer` into the envelope's JSON shape.
    /// Call [`Envelope::can_read`] for the writer first.
    pub fn decode(&self, writer: &Schema, body: &[u8]) -> Result<Map<String, Value>, Rejection> {
        let walker = StrictWalker::new(writer)
            .map_err(|e| Rejection::record(ReasonCode::SchemaMismatch, format!("writer schema unusable: {e}")))?;
        self.decode_with(writer, &walker, body)
    }

    /// Like [`Envelope::decode`], with a walker prepared once per writer schema.
    pub fn decode_with(
        &self,
        writer: &Schema,
        walker: &StrictWalker,
        body: &[u8],
    ) -> Result<Map<String, Value>, Rejection> {
        let (obj, errors) = self.decode_fields(writer, walker, body)?;
        match Rejection::from_errors(errors) {
            Some(r) => Err(r),
            None => Ok(obj),
        }
    }

    /// Decodes the body into the envelope's JSON shape and the errors of fields
    /// that decode but do not convert (`event_properties` that is not JSON
    /// text), so the caller can still name the record (its `event_id`).
    pub fn decode_fields(
        &self,
        writer: &Schema,
        walker: &StrictWalker,
        body: &[u8],
    ) -> Result<(Map<String, Value>, Vec<FieldError>), Rejection> {
        let len = walker
            .datum_len(body)
            .map_err(|e| Rejection::record(ReasonCode::AvroDecodeError, format!("Avro body does not decode: {e}")))?;
        if len != body.len() {
            return Err(Rejection::record(
                ReasonCode::AvroDecodeError,
                format!("{} trailing bytes after the Avro record", body.len() - len),
            ));
        }
        let mut reader = body;
        #[allow(deprecated)]
        // GenericDatumReader needs a builder per call; this is the same code path.
        let value = apache_avro::from_avro_datum(writer, &mut reader, Some(&self.schema))
            .map_err(|e| Rejection::record(ReasonCode::AvroDecodeError, format!("Avro body does not decode: {e}")))?;
        if !reader.is_empty() {
            return Err(Rejection::record(
                ReasonCode::AvroDecodeError,
                format!("{} trailing bytes after the Avro record", reader.len()),
            ));
        }
        let Avro::Record(fields) = value else {
            return Err(Rejection::record(ReasonCode::SchemaMismatch, "decoded value is not a record"));
        };
        let mut obj = Map::with_capacity(fields.len());
        let mut errors = Vec::new();
        for (name, v) in fields {
            let json = if name == "event_properties" { properties_from_avro(v, &mut errors) } else { to_json(v) };
            obj.insert(name, json);
        }
        Ok((obj, errors))
    }

    /// Encodes a validated event as an Avro body (without the Confluent header).
    pub fn encode(&self, event: &Event) -> Result<Vec<u8>, PipelineError> {
        let enc_err = |message: String| PipelineError::Encode { event_id: event.event_id.clone(), message };
        let props = event
            .event_properties
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| enc_err(e.to_string()))?;
        if self.v1 {
            let mut out = Vec::with_capacity(256);
            crate::envelope_codec::encode(event, props.as_deref(), &mut out);
            return Ok(out);
        }
        let opt_str = |s: &Option<String>| match s {
            Some(s) => Avro::Union(1, Box::new(Avro::String(s.clone()))),
            None => Avro::Union(0, Box::new(Avro::Null)),
        };
        let record = |fields: Vec<(&str, &Option<String>)>| {
            Avro::Union(
                1,
                Box::new(Avro::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), opt_str(v))).collect())),
            )
        };
        let device = match &event.device_info {
            None => Avro::Union(0, Box::new(Avro::Null)),
            Some(d) => record(vec![
                ("device_type", &d.device_type),
                ("os", &d.os),
                ("os_version", &d.os_version),
                ("browser", &d.browser),
                ("app_version", &d.app_version),
            ]),
        };
        let location = match &event.location {
            None => Avro::Union(0, Box::new(Avro::Null)),
            Some(l) => record(vec![
                ("country", &l.country),
                ("region", &l.region),
                ("city", &l.city),
                ("timezone", &l.timezone),
            ]),
        };
        let value = Avro::Record(vec![
            ("event_id".into(), Avro::String(event.event_id.clone())),
            ("user_id".into(), Avro::String(event.user_id.clone())),
            ("event_type".into(), Avro::String(event.event_type.as_str().to_owned())),
            ("timestamp".into(), Avro::TimestampMillis(event.timestamp.timestamp_millis())),
            ("session_id".into(), Avro::String(event.session_id.clone())),
            ("event_properties".into(), opt_str(&props)),
            ("device_info".into(), device),
            ("location".into(), location),
            ("referrer".into(), opt_str(&event.referrer)),
        ]);
        #[allow(deprecated)]
        apache_avro::to_avro_datum(&self.schema, value).map_err(|e| enc_err(e.to_string()))
    }
}

fn properties_from_avro(v: Avro, errors: &mut Vec<FieldError>) -> Value {
    match unwrap_union(v) {
        Avro::Null => Value::Null,
        Avro::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(json) => json,
            Err(e) => {
                errors.push(FieldError::new(
                    "event_properties",
                    ReasonCode::InvalidJson,
                    format!("event_properties is not JSON text: {e}"),
                ));
                Value::Null
            }
        },
        other => to_json(other),
    }
}

fn unwrap_union(v: Avro) -> Avro {
    match v {
        Avro::Union(_, inner) => unwrap_union(*inner),
        other => other,
    }
}

/// Converts a decoded Avro value to JSON (timestamps as epoch milliseconds).
pub fn to_json(v: Avro) -> Value {
    match unwrap_union(v) {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Value::from(i),
        Avro::Long(i)
        | Avro::TimestampMillis(i)
        | Avro::TimestampMicros(i)
        | Avro::TimestampNanos(i)
        | Avro::TimeMicros(i)
        | Avro::LocalTimestampMillis(i)
        | Avro::LocalTimestampMicros(i)
        | Avro::LocalTimestampNanos(i) => Value::from(i),
        Avro::Float(f) => Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number),
        Avro::Double(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Value::String(String::from_utf8_lossy(&b).into_owned()),
        Avro::Uuid(u) => Value::String(u.to_string()),
        Avro::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Avro::Map(m) => Value::Object(m.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        Avro::Record(fields) => Value::Object(fields.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        other => Value::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::EventCatalog;
    use crate::validate::{Limits, Validator};
    use chrono::{TimeZone, Utc};
    use std::sync::Arc;

    const ENVELOPE: &str = include_str!("../../schemas/avro/envelope.avsc");

    fn event() -> Event {
        let catalog = EventCatalog::from_schemas([(
            "engagement.search",
            r#"{"type":"record","name":"S","fields":[{"name":"query","type":"string"}]}"#,
        )])
        .expect("catalog");
        let v = Validator::new(Arc::new(catalog), Limits::default());
        let json = serde_json::json!({
            "event_id": "e1", "user_id": "u1", "event_type": "engagement.search",
            "timestamp": 1_763_856_000_000_i64, "session_id": "s1",
            "event_properties": {"query": "shoes", "n": 3},
            "device_info": {"os": "Linux"}, "referrer": "ads"
        });
        let now = Utc.timestamp_millis_opt(1_763_856_000_000).single().expect("ts");
        v.validate_object(json.as_object().expect("object"), now).expect("valid")
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let env = Envelope::parse(ENVELOPE).expect("envelope");
        let e = event();
        let body = env.encode(&e).expect("encode");
        env.can_read(env.schema()).expect("self-compatible");
        let obj = env.decode(env.schema(), &body).expect("decode");
        assert_eq!(obj["event_id"], "e1");
        assert_eq!(obj["timestamp"], 1_763_856_000_000_i64);
        assert_eq!(obj["event_properties"]["n"], 3);
        assert_eq!(obj["device_info"]["os"], "Linux");
        assert_eq!(obj["device_info"]["browser"], Value::Null);
        assert_eq!(obj["location"], Value::Null);
    }

    #[test]
    fn truncated_and_padded_bodies_are_decode_errors() {
        let env = Envelope::parse(ENVELOPE).expect("envelope");
        let body = env.encode(&event()).expect("encode");
        for bad in [body[..body.len() / 2].to_vec(), [body.clone(), vec![1, 2]].concat(), vec![]] {
            let r = env.decode(env.schema(), &bad).expect_err("must fail");
            assert_eq!(r.reason, ReasonCode::AvroDecodeError);
        }
    }

    #[test]
    fn foreign_writer_schema_is_a_mismatch() {
        let env = Envelope::parse(ENVELOPE).expect("envelope");
        let other = Schema::parse_str(r#"{"type":"record","name":"Event","fields":[{"name":"x","type":"int"}]}"#)
            .expect("schema");
        assert_eq!(env.can_read(&other).expect_err("mismatch").reason, ReasonCode::SchemaMismatch);
    }
}
