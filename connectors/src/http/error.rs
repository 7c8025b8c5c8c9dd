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

/// Maps a database failure by its class: input the database cannot store
/// (SQLSTATE class 22, e.g. NUL in text, a number out of range) is a 400 and
/// a constraint violation (class 23) a 409, both naming the SQLSTATE; a
/// failure to reach the database is a 503 (the caller may retry); a
/// misconfigured database a 500. `what` names the store in log lines.
pub fn db_error(what: &str, e: sqlx::Error) -> ApiError {
    use crate::error::{ConnectorError, ErrorClass};
    let constraint = match &e {
        sqlx::Error::Database(d) => d.constraint().map(str::to_owned),
        _ => None,
    };
    let e = ConnectorError::from(e);
    let sqlstate = e.store_code();
    match e.class() {
        ErrorClass::Data if sqlstate.as_deref().is_some_and(|c| c.starts_with("23")) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", format!("the change conflicts with stored data: {e}"))
                .with_details(serde_json::json!({ "sqlstate": sqlstate, "constraint": constraint }))
        }
        ErrorClass::Data => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_value",
            format!("the database cannot store this value: {e}"),
        )
        .with_details(serde_json::json!({ "sqlstate": sqlstate })),
        ErrorClass::Transient => {
            tracing::warn!(error = %e, "{what} query failed: database unavailable");
            ApiError::unavailable(format!("{what} unavailable; retry later"))
        }
        ErrorClass::Config => {
            tracing::error!(error = %e, "{what} query failed: database misconfigured");
            ApiError::internal("the database is misconfigured; see the service's log")
        }
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
