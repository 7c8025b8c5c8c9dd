//! Stable reason codes carried by DLQ records, HTTP errors and metric labels.

use serde::{Deserialize, Serialize};

/// Why a record or one of its fields was rejected.
///
/// The snake_case string of each variant is a public contract: it appears in
/// DLQ records (`reason`, `errors[].code`), in HTTP error bodies and as the
/// `reason` label of metrics. Never rename a variant's string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// Bytes are neither Confluent wire format (magic byte 0) nor a JSON object.
    InvalidWireFormat,
    /// Confluent wire format naming a schema id the registry does not know.
    UnknownSchemaId,
    /// Avro body could not be decoded with its writer schema (truncated, corrupt).
    AvroDecodeError,
    /// The writer schema cannot be resolved to the event envelope schema.
    SchemaMismatch,
    /// JSON that does not parse (including non-UTF-8 bytes).
    InvalidJson,
    /// A required field is absent or null.
    MissingRequiredField,
    /// A field has the wrong JSON/Avro type.
    WrongType,
    /// A field is present with the right type but an unacceptable value (empty, too long).
    InvalidValue,
    /// `event_type` does not follow the `category.action` naming convention.
    InvalidEventType,
    /// `event_type` is well formed but no schema is registered for it.
    UnknownEventType,
    /// `timestamp` cannot be parsed.
    InvalidTimestamp,
    /// `timestamp` lies too far in the future or the past.
    TimestampOutOfRange,
    /// `event_properties` does not match the schema of its event type.
    InvalidProperties,
    /// A field that the envelope does not define.
    UnknownField,
    /// Text the stores cannot hold: U+0000 (NUL), which PostgreSQL's text and
    /// JSONB refuse.
    UnsupportedCharacter,
    /// A string longer than its field allows (the field's `maxLength`, else
    /// `validation.max_string_len`).
    ValueTooLong,
    /// A number beyond the range its store holds (amounts are summed in integer cents).
    ValueOutOfRange,
    /// A store refused the record with a data or constraint error (details carry
    /// the store's code, e.g. the PostgreSQL SQLSTATE): found by a stage that
    /// isolated it from its batch.
    StoreRejected,
}

impl ReasonCode {
    /// Every code, in declaration order (used by golden tests and metric pre-registration).
    pub const ALL: [ReasonCode; 18] = [
        Self::InvalidWireFormat,
        Self::UnknownSchemaId,
        Self::AvroDecodeError,
        Self::SchemaMismatch,
        Self::InvalidJson,
        Self::MissingRequiredField,
        Self::WrongType,
        Self::InvalidValue,
        Self::InvalidEventType,
        Self::UnknownEventType,
        Self::InvalidTimestamp,
        Self::TimestampOutOfRange,
        Self::InvalidProperties,
        Self::UnknownField,
        Self::UnsupportedCharacter,
        Self::ValueTooLong,
        Self::ValueOutOfRange,
        Self::StoreRejected,
    ];

    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidWireFormat => "invalid_wire_format",
            Self::UnknownSchemaId => "unknown_schema_id",
            Self::AvroDecodeError => "avro_decode_error",
            Self::SchemaMismatch => "schema_mismatch",
            Self::InvalidJson => "invalid_json",
            Self::MissingRequiredField => "missing_required_field",
            Self::WrongType => "wrong_type",
            Self::InvalidValue => "invalid_value",
            Self::InvalidEventType => "invalid_event_type",
            Self::UnknownEventType => "unknown_event_type",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::TimestampOutOfRange => "timestamp_out_of_range",
            Self::InvalidProperties => "invalid_properties",
            Self::UnknownField => "unknown_field",
            Self::UnsupportedCharacter => "unsupported_character",
            Self::ValueTooLong => "value_too_long",
            Self::ValueOutOfRange => "value_out_of_range",
            Self::StoreRejected => "store_rejected",
        }
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with one field, named by its dotted path (`event_properties.amount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Dotted path of the field; empty for errors about the whole record.
    pub field: String,
    /// What is wrong.
    pub code: ReasonCode,
    /// A human-readable sentence.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, code: ReasonCode, message: impl Into<String>) -> Self {
        Self { field: field.into(), code, message: message.into() }
    }
}

/// Why a whole record was rejected: one reason code plus every field error found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The record-level reason (the first error's code; `invalid_properties` for
    /// errors inside `event_properties`).
    pub reason: ReasonCode,
    /// One sentence summarising the first error.
    pub message: String,
    /// Every error found, in a stable order.
    pub errors: Vec<FieldError>,
}

impl Rejection {
    /// A rejection of the record as a whole, with no field detail.
    pub fn record(reason: ReasonCode, message: impl Into<String>) -> Self {
        let message = message.into();
        Self { reason, errors: vec![FieldError::new("", reason, message.clone())], message }
    }

    /// Builds a rejection from field errors; `None` when the list is empty.
    pub fn from_errors(errors: Vec<FieldError>) -> Option<Self> {
        let first = errors.first()?;
        let reason =
            if first.field.starts_with("event_properties.") { ReasonCode::InvalidProperties } else { first.code };
        let message =
            if first.field.is_empty() { first.message.clone() } else { format!("{}: {}", first.field, first.message) };
        Some(Self { reason, message, errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_serde() {
        for code in ReasonCode::ALL {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ReasonCode = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, code);
        }
    }

    #[test]
    fn property_errors_make_an_invalid_properties_rejection() {
        let r = Rejection::from_errors(vec![FieldError::new(
            "event_properties.amount",
            ReasonCode::WrongType,
            "expected double, got string",
        )])
        .expect("one error");
        assert_eq!(r.reason, ReasonCode::InvalidProperties);
        assert_eq!(r.message, "event_properties.amount: expected double, got string");
        assert_eq!(r.errors[0].code, ReasonCode::WrongType);
    }
}
