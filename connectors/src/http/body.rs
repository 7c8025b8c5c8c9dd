//! Request bodies: a JSON object whose unknown fields are refused and whose
//! accessors name the field in every error.

use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::ApiError;

/// A JSON object body with typed, field-naming accessors.
pub(crate) struct Body<'a> {
    obj: &'a Map<String, Value>,
}

impl<'a> Body<'a> {
    pub(crate) fn new(v: &'a Value, allowed: &[&str]) -> Result<Self, ApiError> {
        let obj =
            v.as_object().ok_or_else(|| ApiError::bad_field("body", "wrong_type", "body must be a JSON object"))?;
        if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad_field(
                k,
                "unknown_field",
                format!("unknown field '{k}'; allowed: {}", allowed.join(", ")),
            ));
        }
        // Text the database cannot store (U+0000, in a value or a key, at any
        // depth) is refused here, naming the field, rather than by PostgreSQL.
        for (k, v) in obj {
            if let Some(e) = lifecycle_pipeline::validate::unstorable(k, v, usize::MAX).first() {
                return Err(ApiError::bad_field(&e.field, e.code.as_str(), e.message.clone()));
            }
        }
        Ok(Self { obj })
    }

    pub(crate) fn has(&self, k: &str) -> bool {
        self.obj.contains_key(k)
    }

    pub(crate) fn raw(&self, k: &str) -> Option<&'a Value> {
        self.obj.get(k).filter(|v| !v.is_null())
    }

    pub(crate) fn string(&self, k: &str, max: usize) -> Result<Option<&'a str>, ApiError> {
        match self.raw(k) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() || s.len() > max => {
                Err(ApiError::bad_field(k, "invalid_value", format!("{k} must be 1-{max} characters")))
            }
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::bad_field(k, "wrong_type", format!("{k} must be a string"))),
        }
    }

    pub(crate) fn required(&self, k: &str, max: usize) -> Result<&'a str, ApiError> {
        self.string(k, max)?.ok_or_else(|| ApiError::bad_field(k, "missing_required_field", format!("{k} is required")))
    }

    /// An optional whole number in `min..=max`.
    pub(crate) fn integer(&self, k: &str, (min, max): (u64, u64)) -> Result<Option<u64>, ApiError> {
        match self.raw(k) {
            None => Ok(None),
            Some(v) => {
                v.as_u64().filter(|n| (min..=max).contains(n)).map(Some).ok_or_else(|| {
                    ApiError::bad_field(k, "invalid_value", format!("{k} must be an integer {min}-{max}"))
                })
            }
        }
    }

    pub(crate) fn boolean(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.raw(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::bad_field(k, "wrong_type", format!("{k} must be true or false"))),
        }
    }

    pub(crate) fn uuid(&self, k: &str) -> Result<Option<Uuid>, ApiError> {
        self.string(k, 64)?
            .map(|s| {
                Uuid::parse_str(s).map_err(|_| ApiError::bad_field(k, "invalid_value", format!("{k} must be a UUID")))
            })
            .transpose()
    }

    pub(crate) fn stages(&self, k: &str) -> Result<Vec<String>, ApiError> {
        const STAGES: [&str; 5] = ["Acquisition", "Activation", "Retention", "Revenue", "Referral"];
        match self.raw(k) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v.as_str() {
                    Some(s) if STAGES.contains(&s) => Ok(s.to_owned()),
                    _ => Err(ApiError::bad_field(
                        k,
                        "invalid_value",
                        format!("{k} items must be one of {}", STAGES.join(", ")),
                    )),
                })
                .collect(),
            Some(_) => Err(ApiError::bad_field(k, "wrong_type", format!("{k} must be a list of lifecycle stages"))),
        }
    }

    pub(crate) fn url(&self, k: &str) -> Result<Option<String>, ApiError> {
        let Some(s) = self.string(k, 2048)? else { return Ok(None) };
        match url::Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(Some(s.to_owned())),
            _ => Err(ApiError::bad_field(k, "invalid_value", format!("{k} must be an absolute http(s) URL"))),
        }
    }
}
