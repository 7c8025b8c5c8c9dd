//! Dead-letter records: what was rejected, where it came from, and why.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::reason::{FieldError, ReasonCode, Rejection};

/// Bytes of the original record a DLQ record carries (base64 makes them 4/3).
pub const MAX_ORIGINAL: usize = 512 * 1024;
/// Bytes of the original key a DLQ record carries.
pub const MAX_ORIGINAL_KEY: usize = 16 * 1024;
/// Characters of a message, field path or event id a DLQ record carries.
pub const MAX_TEXT: usize = 1024;
/// Field errors a DLQ record lists (one more entry says how many were left out).
pub const MAX_ERRORS: usize = 50;

/// `s` cut to [`MAX_TEXT`] characters, marked with an ellipsis when cut.
fn clip(s: String) -> String {
    match s.char_indices().nth(MAX_TEXT) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

/// Where a consumed record came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// Topic name (or `http` for the ingestion API).
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// A record on the DLQ topic (JSON, one per rejected input record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqRecord {
    /// Record-level reason code (stable; see `ReasonCode`).
    pub reason: ReasonCode,
    /// One-sentence summary.
    pub message: String,
    /// Every field error found.
    pub errors: Vec<FieldError>,
    /// Where the original came from.
    pub source: SourceRef,
    /// The stage that rejected it.
    pub stage: String,
    /// The event id when it could be read.
    pub event_id: Option<String>,
    /// The original key, base64 (its first [`MAX_ORIGINAL_KEY`] bytes).
    pub original_key_base64: Option<String>,
    /// The original bytes, base64 (standard alphabet, padded; the first
    /// [`MAX_ORIGINAL`] bytes).
    pub original_base64: String,
    /// Size of the original in bytes, present only when `original_base64`
    /// holds a prefix of it (the whole record stays at `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_size: Option<usize>,
    /// Size of the original key in bytes, present only when it was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_key_size: Option<usize>,
    /// When it was rejected.
    pub rejected_at: DateTime<Utc>,
}

impl DlqRecord {
    /// Builds the DLQ record for a rejected input. It always fits in a Kafka
    /// record (1 MB by default) whatever the input: the original and its key
    /// are cut to [`MAX_ORIGINAL`] and [`MAX_ORIGINAL_KEY`] bytes (their sizes
    /// then recorded), texts to [`MAX_TEXT`] characters and the errors to
    /// [`MAX_ERRORS`], since a hostile record can carry a huge key or field name
    /// that every error would repeat.
    pub fn new(
        rejection: Rejection,
        source: SourceRef,
        stage: &str,
        event_id: Option<String>,
        key: Option<&[u8]>,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        let cut = |bytes: &[u8], max: usize| {
            (b64.encode(&bytes[..bytes.len().min(max)]), (bytes.len() > max).then_some(bytes.len()))
        };
        let (original_base64, original_size) = cut(payload, MAX_ORIGINAL);
        let (key_base64, original_key_size) = match key {
            Some(k) => {
                let (b, size) = cut(k, MAX_ORIGINAL_KEY);
                (Some(b), size)
            }
            None => (None, None),
        };
        let total = rejection.errors.len();
        let mut errors: Vec<FieldError> = rejection
            .errors
            .into_iter()
            .take(MAX_ERRORS)
            .map(|e| FieldError { field: clip(e.field), code: e.code, message: clip(e.message) })
            .collect();
        if total > MAX_ERRORS {
            errors.push(FieldError::new(
                "",
                rejection.reason,
                format!("{} more errors not listed", total - MAX_ERRORS),
            ));
        }
        Self {
            reason: rejection.reason,
            message: clip(rejection.message),
            errors,
            source,
            stage: stage.to_owned(),
            event_id: event_id.map(clip),
            original_key_base64: key_base64,
            original_base64,
            original_size,
            original_key_size,
            rejected_at: now,
        }
    }

    /// The original bytes.
    pub fn original(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.original_base64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_original_bytes() {
        let r = Rejection::record(ReasonCode::InvalidJson, "bad");
        let src = SourceRef { topic: "events.raw".into(), partition: 2, offset: 41 };
        let rec = DlqRecord::new(r, src, "validate", None, Some(b"u1"), &[0xff, 0, 1], Utc::now());
        let json = serde_json::to_string(&rec).expect("serialize");
        let back: DlqRecord = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.original().expect("base64"), vec![0xff, 0, 1]);
        assert_eq!(back.reason, ReasonCode::InvalidJson);
        assert!(json.contains("\"reason\":\"invalid_json\""));
        assert!(!json.contains("original_size"), "sizes appear only when something was cut");
    }

    #[test]
    fn a_huge_hostile_record_still_fits_in_one_kafka_record() {
        let key = "k".repeat(900_000);
        let mut r = Rejection::record(ReasonCode::InvalidProperties, "x".repeat(900_000));
        let field = "f".repeat(100_000);
        r.errors =
            (0..200).map(|i| FieldError::new(format!("{field}{i}"), ReasonCode::WrongType, "y".repeat(5000))).collect();
        let src = SourceRef { topic: "events.raw".into(), partition: 0, offset: 0 };
        let payload = vec![0xAB; 1_000_000];
        let rec = DlqRecord::new(r, src, "validate", Some(key.clone()), Some(key.as_bytes()), &payload, Utc::now());
        let json = serde_json::to_vec(&rec).expect("serialize");
        assert!(json.len() < 1_000_000, "{} bytes", json.len());
        assert_eq!((rec.original_size, rec.original_key_size), (Some(1_000_000), Some(900_000)));
        assert_eq!(rec.original().expect("base64").len(), MAX_ORIGINAL);
        assert_eq!(rec.errors.len(), MAX_ERRORS + 1);
        assert_eq!(rec.errors[MAX_ERRORS].message, "150 more errors not listed");
        assert!(rec.message.ends_with('…') && rec.message.chars().count() == MAX_TEXT + 1);
        let back: DlqRecord = serde_json::from_slice(&json).expect("deserialize");
        assert_eq!(back.original_size, Some(1_000_000));
    }
}
