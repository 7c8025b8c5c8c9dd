//! The validated event model: what every stage after validation works with.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A well-formed `category.action` event type, e.g. `transaction.purchase_complete`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventType {
    full: String,
    dot: usize,
}

/// Longest accepted category or action.
pub const MAX_EVENT_TYPE_PART: usize = 64;

impl EventType {
    /// Parses `category.action`: each part starts with a lowercase ASCII letter
    /// and continues with lowercase letters, digits or `_`, at most 64 characters.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some(dot) = s.find('.') else {
            return Err(format!("'{s}' is not of the form category.action"));
        };
        let (category, action) = (&s[..dot], &s[dot + 1..]);
        for (what, part) in [("category", category), ("action", action)] {
            let ok = !part.is_empty()
                && part.len() <= MAX_EVENT_TYPE_PART
                && part.as_bytes()[0].is_ascii_lowercase()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(format!(
                    "'{s}' is not of the form category.action: the {what} must be 1-{MAX_EVENT_TYPE_PART} \
                     characters of [a-z0-9_] starting with a letter"
                ));
            }
        }
        Ok(Self { full: s.to_owned(), dot })
    }

    /// The whole `category.action` string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The part before the dot (`user`, `engagement`, `transaction`, ...).
    pub fn category(&self) -> &str {
        &self.full[..self.dot]
    }

    /// The part after the dot.
    pub fn action(&self) -> &str {
        &self.full[self.dot + 1..]
    }
}

impl TryFrom<String> for EventType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<EventType> for String {
    fn from(t: EventType) -> String {
        t.full
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

/// Device details attached to an event; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    /// desktop, mobile, tablet, ...
    pub device_type: Option<String>,
    /// Operating system name.
    pub os: Option<String>,
    /// Operating system version.
    pub os_version: Option<String>,
    /// Browser name.
    pub browser: Option<String>,
    /// Version of the producing app.
    pub app_version: Option<String>,
}

/// Coarse location attached to an event; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<String>,
    /// Region or state.
    pub region: Option<String>,
    /// City name.
    pub city: Option<String>,
    /// IANA time zone, e.g. Europe/Berlin.
    pub timezone: Option<String>,
}

/// An event that passed validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Producer-assigned unique id; the deduplication key downstream.
    pub event_id: String,
    /// The user the event is about; the partitioning key of every event topic.
    pub user_id: String,
    /// `category.action`.
    pub event_type: EventType,
    /// When the event happened (millisecond precision).
    pub timestamp: DateTime<Utc>,
    /// The session the event belongs to.
    pub session_id: String,
    /// Type-specific properties, checked against the event type's schema.
    pub event_properties: Option<Map<String, Value>>,
    /// Device details.
    pub device_info: Option<DeviceInfo>,
    /// Coarse location.
    pub location: Option<Location>,
    /// Referrer URL or campaign.
    pub referrer: Option<String>,
}
