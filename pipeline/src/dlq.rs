//! Dead-letter records: what was rejected, where it came from, and why.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::reason::{FieldError, ReasonCode, Rejection};

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
    /// The original key, base64.
    pub original_key_base64: Option<String>,
    /// The original bytes, base64 (standard alphabet, padded).
    pub original_base64: String,
    /// When it was rejected.
    pub rejected_at: DateTime<Utc>,
}

impl DlqRecord {
    /// Builds the DLQ record for a rejected input.
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
        Self {
            reason: rejection.reason,
            message: rejection.message,
            errors: rejection.errors,
            source,
            stage: stage.to_owned(),
            event_id,
            original_key_base64: key.map(|k| b64.encode(k)),
            original_base64: b64.encode(payload),
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
    }
}
