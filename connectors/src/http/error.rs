//! The JSON error body every API returns: `{code, message, details}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

/// An API error: HTTP status plus a stable code, a sentence and details.
#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    /// HTTP status (not serialised).
    #[serde(skip)]
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: String,
    /// Human-readable sentence.
    pub message: String,
    /// Structured detail: the offending field, per-field errors, limits.
    pub details: Value,
    /// Seconds to wait (429 only); sent as `Retry-After`.
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// A new error with empty details.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            details: Value::Object(Default::default()),
            retry_after_secs: None,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 400 naming a field.
    pub fn bad_field(field: &str, code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message).with_details(serde_json::json!({ "field": field }))
    }

    /// 500 that hides internals from the caller (they are logged instead).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// 503 for a dependency that is down; the caller may retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(&self)).into_response();
        if let Some(secs) = self.retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Maps a body-reading failure (too large, aborted) to a JSON error.
pub fn body_error(rejection: axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "payload_too_large", format!("request body exceeds {limit} bytes"))
            .with_details(serde_json::json!({ "limit_bytes": limit }))
    } else {
        ApiError::new(status, "invalid_body", rejection.body_text())
    }
}

/// Reads a JSON request body: a JSON error naming `body` when it is not JSON.
pub fn json_body(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<Value, ApiError> {
    let body = body.map_err(|r| body_error(r, limit))?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("body is not valid JSON: {e}"))
            .with_details(serde_json::json!({ "field": "body" }))
    })
}
