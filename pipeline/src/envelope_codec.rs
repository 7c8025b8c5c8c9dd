//! The event envelope's Avro binary form, read and written by hand: strings are
//! borrowed from the record's bytes and nothing goes through apache-avro's
//! generic `Value` trees (which resolve names and allocate per field). Used
//! whenever a writer schema is exactly the envelope this code was written for
//! ([`ENVELOPE_V1`]); any other writer schema takes the generic path.
//!
//! The decoder is strict: a truncated body, a union index out of range, a
//! string that is not UTF-8 or bytes after the record are errors.

use apache_avro::Schema;
use chrono::{DateTime, Utc};

use crate::event::Event;
use crate::reason::{ReasonCode, Rejection};

/// The envelope whose layout this module implements (`schemas/avro/envelope.avsc`,
/// version 1). A test checks that the shipped schema is this one.
pub const ENVELOPE_V1: &str = r#"{"type":"record","name":"Event","namespace":"io.lifecycle.events","fields":[
  {"name":"event_id","type":"string"},
  {"name":"user_id","type":"string"},
  {"name":"event_type","type":"string"},
  {"name":"timestamp","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"session_id","type":"string"},
  {"name":"event_properties","type":["null","string"],"default":null},
  {"name":"device_info","type":["null",{"type":"record","name":"DeviceInfo","fields":[
    {"name":"device_type","type":["null","string"],"default":null},
    {"name":"os","type":["null","string"],"default":null},
    {"name":"os_version","type":["null","string"],"default":null},
    {"name":"browser","type":["null","string"],"default":null},
    {"name":"app_version","type":["null","string"],"default":null}]}],"default":null},
  {"name":"location","type":["null",{"type":"record","name":"Location","fields":[
    {"name":"country","type":["null","string"],"default":null},
    {"name":"region","type":["null","string"],"default":null},
    {"name":"city","type":["null","string"],"default":null},
    {"name":"timezone","type":["null","string"],"default":null}]}],"default":null},
  {"name":"referrer","type":["null","string"],"default":null}]}"#;

/// `device_info` members, in schema order.
pub const DEVICE_FIELDS: [&str; 5] = ["device_type", "os", "os_version", "browser", "app_version"];
/// `location` members, in schema order.
pub const LOCATION_FIELDS: [&str; 4] = ["country", "region", "city", "timezone"];

/// Whether `schema` is the envelope this module reads and writes.
pub fn is_v1(schema: &Schema) -> bool {
    thread_local!(static V1: Option<String> = Schema::parse_str(ENVELOPE_V1).ok().map(|s| s.canonical_form()));
    V1.with(|v1| v1.as_deref() == Some(schema.canonical_form().as_str()))
}

/// An envelope read in place: every string borrowed from the record's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeView<'a> {
    /// `event_id`.
    pub event_id: &'a str,
    /// `user_id`.
    pub user_id: &'a str,
    /// `event_type`.
    pub event_type: &'a str,
    /// `timestamp`, epoch milliseconds.
    pub timestamp_ms: i64,
    /// `session_id`.
    pub session_id: &'a str,
    /// `event_properties`: JSON object text.
    pub event_properties: Option<&'a str>,
    /// `device_info` members in [`DEVICE_FIELDS`] order.
    pub device_info: Option<[Option<&'a str>; 5]>,
    /// `location` members in [`LOCATION_FIELDS`] order.
    pub location: Option<[Option<&'a str>; 4]>,
    /// `referrer`.
    pub referrer: Option<&'a str>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    field: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, what: impl std::fmt::Display) -> Rejection {
        Rejection::record(
            ReasonCode::AvroDecodeError,
            format!("Avro body does not decode: field {}: {what}", self.field),
        )
    }

    fn long(&mut self) -> Result<i64, Rejection> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.err(format!("truncated at offset {}", self.pos)));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn string(&mut self) -> Result<&'a str, Rejection> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| self.err(format!("negative length {len}")))?;
        let end = self.pos.checked_add(len).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            self.err(format!(
                "truncated: needs {len} bytes at offset {}, {} left",
                self.pos,
                self.bytes.len() - self.pos
            ))
        })?;
        let s = std::str::from_utf8(&self.bytes[self.pos..end])
            .map_err(|e| self.err(format!("string is not UTF-8: {e}")))?;
        self.pos = end;
        Ok(s)
    }

    /// The branch of a two-branch union with null first: false for null.
    fn present(&mut self) -> Result<bool, Rejection> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            i => Err(self.err(format!("union index {i} out of range"))),
        }
    }

    fn optional_string(&mut self) -> Result<Option<&'a str>, Rejection> {
        if self.present()? { self.string().map(Some) } else { Ok(None) }
    }

    fn members<const N: usize>(&mut self) -> Result<Option<[Option<&'a str>; N]>, Rejection> {
        if !self.present()? {
            return Ok(None);
        }
        let mut out = [None; N];
        for slot in &mut out {
            *slot = self.optional_string()?;
        }
        Ok(Some(out))
    }
}

/// Reads a body written with [`ENVELOPE_V1`].
pub fn decode(body: &[u8]) -> Result<EnvelopeView<'_>, Rejection> {
    let mut r = Reader { bytes: body, pos: 0, field: "event_id" };
    let event_id = r.string()?;
    r.field = "user_id";
    let user_id = r.string()?;
    r.field = "event_type";
    let event_type = r.string()?;
    r.field = "timestamp";
    let timestamp_ms = r.long()?;
    r.field = "session_id";
    let session_id = r.string()?;
    r.field = "event_properties";
    let event_properties = r.optional_string()?;
    r.field = "device_info";
    let device_info = r.members::<5>()?;
    r.field = "location";
    let location = r.members::<4>()?;
    r.field = "referrer";
    let referrer = r.optional_string()?;
    if r.pos != body.len() {
        return Err(Rejection::record(
            ReasonCode::AvroDecodeError,
            format!("{} trailing bytes after the Avro record", body.len() - r.pos),
        ));
    }
    Ok(EnvelopeView {
        event_id,
        user_id,
        event_type,
        timestamp_ms,
        session_id,
        event_properties,
        device_info,
        location,
        referrer,
    })
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

fn put_optional(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(2); // branch 1, zig-zag
            put_string(out, s);
        }
    }
}

/// Writes `event` as an [`ENVELOPE_V1`] body, its properties as `properties`
/// (JSON object text, when the event has properties).
pub fn encode(event: &Event, properties: Option<&str>, out: &mut Vec<u8>) {
    put_string(out, &event.event_id);
    put_string(out, &event.user_id);
    put_string(out, event.event_type.as_str());
    put_long(out, event.timestamp.timestamp_millis());
    put_string(out, &event.session_id);
    put_optional(out, properties);
    match &event.device_info {
        None => out.push(0),
        Some(d) => {
            out.push(2);
            for s in [&d.device_type, &d.os, &d.os_version, &d.browser, &d.app_version] {
                put_optional(out, s.as_deref());
            }
        }
    }
    match &event.location {
        None => out.push(0),
        Some(l) => {
            out.push(2);
            for s in [&l.country, &l.region, &l.city, &l.timezone] {
                put_optional(out, s.as_deref());
            }
        }
    }
    put_optional(out, event.referrer.as_deref());
}

/// The event's time from epoch milliseconds (`None` outside chrono's range).
pub fn timestamp(ms: i64) -> Option<DateTime<Utc>> {
    use chrono::TimeZone as _;
    Utc.timestamp_millis_opt(ms).single()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../schemas/avro/envelope.avsc");

    #[test]
    fn the_shipped_envelope_is_the_one_this_codec_implements() {
        assert!(is_v1(&Schema::parse_str(SHIPPED).expect("shipped envelope")));
        let other =
            Schema::parse_str(&SHIPPED.replace(r#""name": "referrer""#, r#""name": "referer""#)).expect("schema");
        assert!(!is_v1(&other));
    }

    #[test]
    fn reads_what_apache_avro_writes_and_writes_what_it_reads() {
        let env = crate::avro::Envelope::parse(SHIPPED).expect("envelope");
        let json = serde_json::json!({
            "event_id": "e-ü", "user_id": "u1", "event_type": "engagement.search", "timestamp": -5,
            "session_id": "s", "event_properties": {"query": "shoes", "n": [1, 2]},
            "device_info": {"os": "Linux", "browser": "Firefox"}, "location": {"city": "Köln"}, "referrer": "x"
        });
        let catalog = crate::EventCatalog::from_schemas([(
            "engagement.search",
            r#"{"type":"record","name":"S","fields":[{"name":"query","type":"string"}]}"#,
        )])
        .expect("catalog");
        let v = crate::Validator::new(std::sync::Arc::new(catalog), crate::Limits::default());
        let now = timestamp(0).expect("epoch");
        let event = v.validate_object(json.as_object().expect("object"), now).expect("valid");
        let generic = env.encode(&event).expect("apache-avro encodes");
        let view = decode(&generic).expect("decodes");
        assert_eq!(
            (view.event_id, view.timestamp_ms, view.device_info, view.location.map(|l| l[2])),
            ("e-ü", -5, Some([None, Some("Linux"), None, Some("Firefox"), None]), Some(Some("Köln")))
        );
        let props = serde_json::to_string(event.event_properties.as_ref().expect("props")).expect("json");
        assert_eq!(view.event_properties, Some(props.as_str()));
        let mut ours = Vec::new();
        encode(&event, Some(&props), &mut ours);
        assert_eq!(ours, generic, "byte for byte what apache-avro writes");
    }

    #[test]
    fn truncation_bad_unions_bad_utf8_and_trailing_bytes_are_decode_errors() {
        let mut body = Vec::new();
        for s in ["e", "u", "user.login"] {
            put_string(&mut body, s);
        }
        put_long(&mut body, 1);
        put_string(&mut body, "s");
        body.extend_from_slice(&[0, 0, 0, 0]);
        assert!(decode(&body).is_ok());
        for cut in 0..body.len() {
            let r = decode(&body[..cut]).expect_err("truncated");
            assert_eq!(r.reason, ReasonCode::AvroDecodeError, "cut at {cut}");
        }
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(decode(&trailing).expect_err("trailing").message.contains("trailing"));
        let mut bad_union = body.clone();
        let n = bad_union.len();
        bad_union[n - 1] = 4;
        assert!(decode(&bad_union).expect_err("union").message.contains("union index 2"));
        let mut bad_utf8 = Vec::new();
        put_long(&mut bad_utf8, 2);
        bad_utf8.extend_from_slice(&[0xff, 0xfe]);
        assert!(decode(&bad_utf8).expect_err("utf8").message.contains("UTF-8"));
    }
}
