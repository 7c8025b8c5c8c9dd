//! The Confluent Schema Registry wire format: magic byte 0, a 4-byte big-endian
//! schema id, then the Avro binary body.

use crate::reason::{ReasonCode, Rejection};

/// The first byte of every Confluent-framed record.
pub const MAGIC_BYTE: u8 = 0;

/// How a record on `events.raw` is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding<'a> {
    /// Confluent-framed Avro: schema id and the Avro body.
    Avro { schema_id: u32, body: &'a [u8] },
    /// A JSON document (the HTTP ingestion path).
    Json(&'a [u8]),
}

/// Tells Confluent Avro from JSON by the first byte; rejects anything else.
pub fn sniff(payload: &[u8]) -> Result<Encoding<'_>, Rejection> {
    match payload.first() {
        None => Err(Rejection::record(ReasonCode::InvalidWireFormat, "empty payload")),
        Some(&MAGIC_BYTE) => {
            if payload.len() < 5 {
                return Err(Rejection::record(
                    ReasonCode::InvalidWireFormat,
                    format!("Confluent header needs 5 bytes, got {}", payload.len()),
                ));
            }
            let schema_id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
            Ok(Encoding::Avro { schema_id, body: &payload[5..] })
        }
        Some(_) => {
            let first = payload.iter().find(|b| !b.is_ascii_whitespace());
            if first == Some(&b'{') {
                Ok(Encoding::Json(payload))
            } else {
                Err(Rejection::record(
                    ReasonCode::InvalidWireFormat,
                    format!(
                        "payload is neither Confluent Avro (magic byte 0) nor a JSON object (first byte 0x{:02x})",
                        payload[0]
                    ),
                ))
            }
        }
    }
}

/// Frames an Avro body with the Confluent header.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_sniffs_avro() {
        let framed = frame(258, b"abc");
        assert_eq!(framed, [0, 0, 0, 1, 2, b'a', b'b', b'c']);
        assert_eq!(sniff(&framed), Ok(Encoding::Avro { schema_id: 258, body: b"abc" }));
    }

    #[test]
    fn sniffs_json_with_leading_whitespace() {
        assert_eq!(sniff(b"  {\"a\":1}"), Ok(Encoding::Json(b"  {\"a\":1}")));
    }

    #[test]
    fn rejects_short_header_empty_and_garbage() {
        for bad in [&b""[..], &[0, 1, 2][..], &b"[1,2]"[..], &[0xff, 0xfe][..]] {
            let err = sniff(bad).expect_err("must reject");
            assert_eq!(err.reason, ReasonCode::InvalidWireFormat, "{bad:?}");
        }
    }
}
