//! Event validation: a JSON object (from the HTTP path, or an Avro envelope turned
//! into one) becomes an [`Event`] or a [`Rejection`] naming every bad field.
//!
//! Pure: the caller passes `now`, so tests pin the clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use crate::catalog::{EventCatalog, json_kind};
use crate::envelope_codec::{self, DEVICE_FIELDS, EnvelopeView, LOCATION_FIELDS};
use crate::event::{DeviceInfo, Event, EventType, Location};
use crate::reason::{FieldError, ReasonCode, Rejection};

/// The envelope's fields, in the order errors are reported.
pub const ENVELOPE_FIELDS: [&str; 9] = [
    "event_id",
    "user_id",
    "event_type",
    "timestamp",
    "session_id",
    "event_properties",
    "device_info",
    "location",
    "referrer",
];

/// Limits applied by the validator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How far in the future a timestamp may lie (clock skew allowance).
    pub max_future_skew: Duration,
    /// How old an event may be (older ones fall outside event retention).
    pub max_age: Duration,
    /// Longest accepted id (event_id, user_id, session_id).
    pub max_id_len: usize,
    /// Longest accepted string anywhere else (property values and keys, device
    /// and location members), in bytes.
    pub max_string_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_future_skew: Duration::from_secs(5 * 60),
            max_age: Duration::from_secs(365 * 24 * 3600),
            max_id_len: 128,
            max_string_len: 8192,
        }
    }
}

/// Validates events against the envelope rules and the event catalog.
#[derive(Debug, Clone)]
pub struct Validator {
    catalog: Arc<EventCatalog>,
    limits: Limits,
}

impl Validator {
    /// A validator over `catalog` with `limits`.
    pub fn new(catalog: Arc<EventCatalog>, limits: Limits) -> Self {
        Self { catalog, limits }
    }

    /// The catalog this validator checks event types against.
    pub fn catalog(&self) -> &EventCatalog {
        &self.catalog
    }

    /// Parses JSON bytes and validates the object.
    pub fn validate_json(&self, bytes: &[u8], now: DateTime<Utc>) -> Result<Event, Rejection> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| Rejection::record(ReasonCode::InvalidJson, format!("invalid JSON: {e}")))?;
        match value {
            Value::Object(obj) => self.validate_object(&obj, now),
            other => Err(Rejection::record(
                ReasonCode::WrongType,
                format!("an event must be a JSON object, got {}", json_kind(&other)),
            )),
        }
    }

    /// Validates one event object, collecting every field error.
    pub fn validate_object(&self, obj: &Map<String, Value>, now: DateTime<Utc>) -> Result<Event, Rejection> {
        let mut errors = Vec::new();
        let max = self.limits.max_id_len;
        let event_id = required_id(obj, "event_id", max, &mut errors);
        let user_id = required_id(obj, "user_id", max, &mut errors);
        let event_type = self.event_type(obj, &mut errors);
        let timestamp = self.timestamp(obj, now, &mut errors);
        let session_id = required_id(obj, "session_id", max, &mut errors);
        let event_properties = self.properties(obj.get("event_properties"), event_type.as_ref(), &mut errors);
        let device_info = optional_struct::<DeviceInfo>(obj, "device_info", &mut errors);
        let location = optional_struct::<Location>(obj, "location", &mut errors);
        let referrer = optional_string(obj, "referrer", 2048, &mut errors);
        if let Some(props) = obj.get("event_properties") {
            storable("event_properties", props, self.limits.max_string_len, &mut errors);
        }
        for key in obj.keys() {
            if !ENVELOPE_FIELDS.contains(&key.as_str()) {
                errors.push(FieldError::new(
                    key.as_str(),
                    ReasonCode::UnknownField,
                    "not an envelope field (put type-specific data in event_properties)",
                ));
            }
        }
        if let Some(rejection) = Rejection::from_errors(errors) {
            return Err(rejection);
        }
        match (event_id, user_id, event_type, timestamp, session_id) {
            (Some(event_id), Some(user_id), Some(event_type), Some(timestamp), Some(session_id)) => Ok(Event {
                event_id,
                user_id,
                event_type,
                timestamp,
                session_id,
                event_properties,
                device_info,
                location,
                referrer,
            }),
            // Unreachable in practice: every None above pushed an error.
            _ => Err(Rejection::record(ReasonCode::MissingRequiredField, "required field missing")),
        }
    }

    /// Validates an envelope read in place ([`envelope_codec::decode`]) with the
    /// rules, messages and error order of [`Validator::validate_object`]; its
    /// fields cannot have wrong types, so only their values are checked.
    pub fn validate_view(&self, v: &EnvelopeView<'_>, now: DateTime<Utc>) -> Result<Event, Rejection> {
        // Properties that are not JSON text are reported alone, as the generic
        // decoder does.
        let props: Option<Value> = match v.event_properties.map(serde_json::from_str::<Value>).transpose() {
            Ok(p) => p,
            Err(e) => {
                let error = FieldError::new(
                    "event_properties",
                    ReasonCode::InvalidJson,
                    format!("event_properties is not JSON text: {e}"),
                );
                return Err(Rejection::from_errors(vec![error]).unwrap_or_else(|| unreachable!("one error")));
            }
        };
        let mut errors = Vec::new();
        let max = self.limits.max_id_len;
        let event_id = checked_id("event_id", v.event_id, max, &mut errors);
        let user_id = checked_id("user_id", v.user_id, max, &mut errors);
        let event_type = if text_ok("event_type", v.event_type, &mut errors) {
            self.event_type_of(v.event_type, &mut errors)
        } else {
            None
        };
        let timestamp = match envelope_codec::timestamp(v.timestamp_ms) {
            Some(ts) => self.in_range(ts, now, &mut errors),
            None => {
                errors.push(FieldError::new(
                    "timestamp",
                    ReasonCode::InvalidTimestamp,
                    format!("{} is not an integer number of epoch milliseconds", v.timestamp_ms),
                ));
                None
            }
        };
        let session_id = checked_id("session_id", v.session_id, max, &mut errors);
        let event_properties = self.properties(props.as_ref(), event_type.as_ref(), &mut errors);
        let device_info = v.device_info.map(|m| {
            let [device_type, os, os_version, browser, app_version] =
                members("device_info", &DEVICE_FIELDS, m, &mut errors);
            DeviceInfo { device_type, os, os_version, browser, app_version }
        });
        let location = v.location.map(|m| {
            let [country, region, city, timezone] = members("location", &LOCATION_FIELDS, m, &mut errors);
            Location { country, region, city, timezone }
        });
        let referrer = v.referrer.and_then(|r| checked_optional("referrer", r, 2048, &mut errors));
        if let Some(p) = &props {
            storable("event_properties", p, self.limits.max_string_len, &mut errors);
        }
        if let Some(rejection) = Rejection::from_errors(errors) {
            return Err(rejection);
        }
        match (event_id, user_id, event_type, timestamp, session_id) {
            (Some(event_id), Some(user_id), Some(event_type), Some(timestamp), Some(session_id)) => Ok(Event {
                event_id,
                user_id,
                event_type,
                timestamp,
                session_id,
                event_properties,
                device_info,
                location,
                referrer,
            }),
            _ => Err(Rejection::record(ReasonCode::MissingRequiredField, "required field missing")),
        }
    }

    fn event_type(&self, obj: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<EventType> {
        let raw = required_string(obj, "event_type", errors)?;
        self.event_type_of(raw, errors)
    }

    fn event_type_of(&self, raw: &str, errors: &mut Vec<FieldError>) -> Option<EventType> {
        match EventType::parse(raw) {
            Err(msg) => {
                errors.push(FieldError::new("event_type", ReasonCode::InvalidEventType, msg));
                None
            }
            Ok(t) if !self.catalog.contains(t.as_str()) => {
                errors.push(FieldError::new(
                    "event_type",
                    ReasonCode::UnknownEventType,
                    format!("'{t}' has no registered schema (add schemas/events/{t}.avsc)"),
                ));
                None
            }
            Ok(t) => Some(t),
        }
    }

    fn timestamp(
        &self,
        obj: &Map<String, Value>,
        now: DateTime<Utc>,
        errors: &mut Vec<FieldError>,
    ) -> Option<DateTime<Utc>> {
        let ts = match obj.get("timestamp") {
            None | Some(Value::Null) => {
                errors.push(missing("timestamp", "RFC 3339 string or epoch milliseconds"));
                return None;
            }
            Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
                Ok(t) => t.with_timezone(&Utc),
                Err(e) => {
                    errors.push(FieldError::new(
                        "timestamp",
                        ReasonCode::InvalidTimestamp,
                        format!("'{s}' is not an RFC 3339 timestamp: {e}"),
                    ));
                    return None;
                }
            },
            Some(Value::Number(n)) => match n.as_i64().and_then(envelope_codec::timestamp) {
                Some(t) => t,
                None => {
                    errors.push(FieldError::new(
                        "timestamp",
                        ReasonCode::InvalidTimestamp,
                        format!("{n} is not an integer number of epoch milliseconds"),
                    ));
                    return None;
                }
            },
            Some(other) => {
                errors.push(wrong_type("timestamp", "RFC 3339 string or epoch milliseconds", other));
                return None;
            }
        };
        self.in_range(ts, now, errors)
    }

    /// `ts` at millisecond precision when it lies within the limits around `now`.
    fn in_range(&self, ts: DateTime<Utc>, now: DateTime<Utc>, errors: &mut Vec<FieldError>) -> Option<DateTime<Utc>> {
        let skew = chrono::Duration::from_std(self.limits.max_future_skew).unwrap_or(chrono::Duration::MAX);
        let age = chrono::Duration::from_std(self.limits.max_age).unwrap_or(chrono::Duration::MAX);
        if ts > now + skew {
            errors.push(FieldError::new(
                "timestamp",
                ReasonCode::TimestampOutOfRange,
                format!("{} is more than {}s in the future", ts.to_rfc3339(), skew.num_seconds()),
            ));
            return None;
        }
        if ts < now - age {
            errors.push(FieldError::new(
                "timestamp",
                ReasonCode::TimestampOutOfRange,
                format!("{} is older than {} days", ts.to_rfc3339(), age.num_days()),
            ));
            return None;
        }
        // Millisecond precision, as stored in Avro timestamp-millis.
        Utc.timestamp_millis_opt(ts.timestamp_millis()).single()
    }

    fn properties(
        &self,
        value: Option<&Value>,
        event_type: Option<&EventType>,
        errors: &mut Vec<FieldError>,
    ) -> Option<Map<String, Value>> {
        match value {
            None | Some(Value::Null) => {
                if let Some(t) = event_type
                    && self.catalog.requires_properties(t.as_str())
                {
                    self.catalog.check_properties(t.as_str(), &Map::new(), errors);
                }
                None
            }
            Some(Value::Object(props)) => {
                if let Some(t) = event_type {
                    self.catalog.check_properties(t.as_str(), props, errors);
                }
                Some(props.clone())
            }
            Some(other) => {
                errors.push(wrong_type("event_properties", "object", other));
                None
            }
        }
    }
}

/// Longest `device_info` or `location` member, in bytes.
const MAX_MEMBER_LEN: usize = 256;

fn nul(field: &str) -> FieldError {
    FieldError::new(
        field,
        ReasonCode::UnsupportedCharacter,
        "contains U+0000 (NUL), which PostgreSQL text and JSONB cannot store",
    )
}

/// Whether [`storable`] finds nothing under `v`.
fn is_storable(v: &Value, max_len: usize) -> bool {
    let ok = |s: &str| s.len() <= max_len && !s.contains('\0');
    match v {
        Value::String(s) => ok(s),
        Value::Array(items) => items.iter().all(|i| is_storable(i, max_len)),
        Value::Object(o) => o.iter().all(|(k, i)| ok(k) && is_storable(i, max_len)),
        _ => true,
    }
}

/// One string of [`storable`]: no NUL, at most `max_len` bytes.
fn storable_str(path: &str, s: &str, max_len: usize, errors: &mut Vec<FieldError>) {
    if s.contains('\0') {
        errors.push(nul(path));
    } else if s.len() > max_len {
        errors.push(FieldError::new(
            path,
            ReasonCode::ValueTooLong,
            format!("{} bytes, longer than {max_len}", s.len()),
        ));
    }
}

/// Every string under `path` (object keys included) that the stores cannot
/// hold: a NUL character, or more than `max_len` bytes. For documents other
/// than events (API bodies) that end up in PostgreSQL.
pub fn unstorable(path: &str, v: &Value, max_len: usize) -> Vec<FieldError> {
    let mut errors = Vec::new();
    storable(path, v, max_len, &mut errors);
    errors
}

/// Checks that every string (keys included) under `path` can be stored: no
/// NUL character, at most `max_len` bytes. Lone surrogates never get this far:
/// JSON parsing and Avro's UTF-8 check refuse them. Paths are only built for
/// values that fail (nearly all pass: the common case allocates nothing).
fn storable(path: &str, v: &Value, max_len: usize, errors: &mut Vec<FieldError>) {
    if is_storable(v, max_len) {
        return;
    }
    match v {
        Value::String(s) => storable_str(path, s, max_len, errors),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                storable(&format!("{path}[{i}]"), item, max_len, errors);
            }
        }
        Value::Object(o) => {
            for (k, item) in o {
                let child = format!("{path}.{}", k.replace('\0', "\\u0000"));
                if k.contains('\0') {
                    errors.push(nul(&child));
                } else if k.len() > max_len {
                    errors.push(FieldError::new(
                        &child,
                        ReasonCode::ValueTooLong,
                        format!("key longer than {max_len} bytes"),
                    ));
                } else {
                    storable(&child, item, max_len, errors);
                }
            }
        }
        _ => {}
    }
}

fn missing(field: &str, expected: &str) -> FieldError {
    FieldError::new(field, ReasonCode::MissingRequiredField, format!("required {expected} is missing"))
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> FieldError {
    FieldError::new(field, ReasonCode::WrongType, format!("expected {expected}, got {}", json_kind(got)))
}

fn required_string<'a>(obj: &'a Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<&'a str> {
    match obj.get(field) {
        None | Some(Value::Null) => {
            errors.push(missing(field, "string"));
            None
        }
        Some(Value::String(s)) => text_ok(field, s, errors).then_some(s.as_str()),
        Some(other) => {
            errors.push(wrong_type(field, "string", other));
            None
        }
    }
}

/// A required text field: not empty, no NUL.
fn text_ok(field: &str, s: &str, errors: &mut Vec<FieldError>) -> bool {
    if s.trim().is_empty() {
        errors.push(FieldError::new(field, ReasonCode::InvalidValue, "must not be empty"));
        false
    } else if s.contains('\0') {
        errors.push(nul(field));
        false
    } else {
        true
    }
}

fn required_id(obj: &Map<String, Value>, field: &str, max_len: usize, errors: &mut Vec<FieldError>) -> Option<String> {
    let s = required_string(obj, field, errors)?;
    id_len_ok(field, s, max_len, errors).then(|| s.to_owned())
}

/// An id of the envelope: [`text_ok`] and at most `max_len` bytes.
fn checked_id(field: &str, s: &str, max_len: usize, errors: &mut Vec<FieldError>) -> Option<String> {
    (text_ok(field, s, errors) && id_len_ok(field, s, max_len, errors)).then(|| s.to_owned())
}

fn id_len_ok(field: &str, s: &str, max_len: usize, errors: &mut Vec<FieldError>) -> bool {
    if s.len() > max_len {
        errors.push(FieldError::new(field, ReasonCode::InvalidValue, format!("longer than {max_len} bytes")));
        return false;
    }
    true
}

/// An optional text field present as `s`: at most `max_len` bytes, no NUL.
fn checked_optional(field: &str, s: &str, max_len: usize, errors: &mut Vec<FieldError>) -> Option<String> {
    if s.len() > max_len {
        errors.push(FieldError::new(field, ReasonCode::InvalidValue, format!("longer than {max_len} bytes")));
        None
    } else if s.contains('\0') {
        errors.push(nul(field));
        None
    } else {
        Some(s.to_owned())
    }
}

/// The members of a `device_info` or `location` read in place, checked like
/// [`storable`] checks them in a JSON object.
fn members<const N: usize>(
    field: &str,
    names: &[&str; N],
    values: [Option<&str>; N],
    errors: &mut Vec<FieldError>,
) -> [Option<String>; N] {
    let mut i = 0;
    values.map(|v| {
        let name = names[i];
        i += 1;
        let s = v?;
        if s.len() <= MAX_MEMBER_LEN && !s.contains('\0') {
            return Some(s.to_owned());
        }
        storable_str(&format!("{field}.{name}"), s, MAX_MEMBER_LEN, errors);
        None
    })
}

fn optional_string(
    obj: &Map<String, Value>,
    field: &str,
    max_len: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => checked_optional(field, s, max_len, errors),
        Some(other) => {
            errors.push(wrong_type(field, "string", other));
            None
        }
    }
}

/// Checks an optional object whose members are all optional strings.
fn optional_struct<T: serde::de::DeserializeOwned>(
    obj: &Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(whole @ Value::Object(inner)) => {
            let before = errors.len();
            for (k, v) in inner {
                if !matches!(v, Value::String(_) | Value::Null) {
                    errors.push(wrong_type(&format!("{field}.{k}"), "string", v));
                }
            }
            storable(field, whole, MAX_MEMBER_LEN, errors);
            if errors.len() > before {
                return None;
            }
            match serde_json::from_value(Value::Object(inner.clone())) {
                Ok(t) => Some(t),
                Err(e) => {
                    // Only unknown member names remain possible here.
                    errors.push(FieldError::new(field, ReasonCode::UnknownField, e.to_string()));
                    None
                }
            }
        }
        Some(other) => {
            errors.push(wrong_type(field, "object", other));
            None
        }
    }
}

#[cfg(test)]
mod tests;
