//! Routes and handlers of the ingestion API.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router, middleware};
use chrono::Utc;
use lifecycle_pipeline::metrics::HttpMetrics;
use lifecycle_pipeline::{Rejection, Validator};
use serde_json::{Map, Value, json};

use super::config::IngestConfig;
use crate::http::auth::{self, Access, ApiKeys, Caller};
use crate::http::error::{ApiError, body_error};
use crate::http::ops;
use crate::kafka::sink::{KafkaSink, OutRecord};

/// Everything the handlers need.
#[derive(Clone)]
pub struct IngestState {
    /// Limits.
    pub config: IngestConfig,
    /// Event validation rules.
    pub validator: Arc<Validator>,
    /// Producer for `events.raw`.
    pub sink: KafkaSink,
    /// Real name of `events.raw`.
    pub raw_topic: String,
    /// API keys and rate limits.
    pub keys: Arc<ApiKeys>,
    /// HTTP metrics.
    pub metrics: HttpMetrics,
    /// Registry exposed on `/metrics`.
    pub registry: prometheus::Registry,
}

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Builds the router: `/events*` and the routes of `protected_extra` (e.g. the
/// users API) behind API keys and the rate limit; `/healthz`, `/metrics` and
/// `/openapi.json` open.
pub fn router(state: IngestState, protected_extra: Router) -> Router {
    let single =
        Router::new().route("/events", post(post_event)).layer(DefaultBodyLimit::max(state.config.max_event_bytes));
    let batch = Router::new()
        .route("/events/batch", post(post_batch))
        .layer(DefaultBodyLimit::max(state.config.max_batch_bytes));
    let protected = single
        .merge(batch)
        .with_state(state.clone())
        .merge(protected_extra)
        .route_layer(middleware::from_fn_with_state(state.keys.clone(), auth::authenticate));
    let open = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/openapi.json", get(|| async { ([("content-type", "application/json")], OPENAPI) }))
        .route("/metrics", get(ops::metrics_handler))
        .with_state(state.registry.clone());
    protected
        .merge(open)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(middleware::from_fn_with_state(state.metrics.clone(), ops::track))
}

fn rejection_error(r: &Rejection) -> ApiError {
    let field = r.errors.first().map(|e| e.field.clone()).unwrap_or_default();
    ApiError::new(StatusCode::BAD_REQUEST, r.reason.as_str(), r.message.clone())
        .with_details(json!({ "field": field, "errors": r.errors }))
}

/// Parses, assigns an event id when absent, validates; returns the record to produce.
fn accept(state: &IngestState, value: Value) -> Result<(String, OutRecord), Rejection> {
    let mut obj: Map<String, Value> = match value {
        Value::Object(o) => o,
        other => {
            return Err(Rejection::record(
                lifecycle_pipeline::ReasonCode::WrongType,
                format!("an event must be a JSON object, got {}", lifecycle_pipeline::catalog::json_kind(&other)),
            ));
        }
    };
    if !obj.contains_key("event_id") {
        obj.insert("event_id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
    }
    let event = state.validator.validate_object(&obj, Utc::now())?;
    let payload = serde_json::to_vec(&obj).unwrap_or_default();
    let record = OutRecord {
        topic: state.raw_topic.clone(),
        key: Some(event.user_id.into_bytes()),
        payload,
        headers: vec![("content-type", b"application/json".to_vec()), ("source", b"http".to_vec())],
    };
    Ok((event.event_id, record))
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("body is not valid JSON: {e}"))
            .with_details(json!({ "field": "body", "line": e.line(), "column": e.column() }))
    })
}

async fn post_event(
    State(state): State<IngestState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let body = body.map_err(|r| body_error(r, state.config.max_event_bytes))?;
    let value = parse_json(&body)?;
    let (event_id, record) = accept(&state, value).map_err(|r| {
        state.metrics.ingest_events.with_label_values(&["rejected"]).inc();
        rejection_error(&r)
    })?;
    state.sink.send_all(std::slice::from_ref(&record)).await.map_err(|e| {
        tracing::error!(error = %e, "produce to events.raw failed");
        ApiError::unavailable("event bus unavailable; retry later")
    })?;
    state.metrics.ingest_events.with_label_values(&["accepted"]).inc();
    Ok((StatusCode::ACCEPTED, Json(json!({ "event_id": event_id, "status": "accepted" }))).into_response())
}

async fn post_batch(
    State(state): State<IngestState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let body = body.map_err(|r| body_error(r, state.config.max_batch_bytes))?;
    let items = match parse_json(&body)? {
        Value::Array(items) => items,
        Value::Object(mut o) => match o.remove("events") {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(ApiError::bad_field(
                    "events",
                    "missing_required_field",
                    "body must be {\"events\": [...]} or an array",
                ));
            }
        },
        _ => {
            return Err(ApiError::bad_field("events", "wrong_type", "body must be {\"events\": [...]} or an array"));
        }
    };
    let max = state.config.max_batch_events;
    if items.len() > max {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "batch_too_large",
            format!("at most {max} events per batch, got {}", items.len()),
        )
        .with_details(json!({ "field": "events", "limit": max, "count": items.len() })));
    }
    if items.is_empty() {
        return Err(ApiError::bad_field("events", "invalid_value", "batch is empty"));
    }
    let mut results = Vec::with_capacity(items.len());
    let mut records = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match accept(&state, item) {
            Ok((event_id, record)) => {
                results.push(json!({ "index": index, "status": "accepted", "event_id": event_id }));
                records.push(record);
            }
            Err(r) => {
                let e = rejection_error(&r);
                results.push(json!({ "index": index, "status": "rejected", "error": e }));
            }
        }
    }
    let (accepted, rejected) = (records.len(), results.len() - records.len());
    state.metrics.ingest_events.with_label_values(&["rejected"]).inc_by(rejected as u64);
    if accepted == 0 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "all_events_rejected", "no event in the batch is valid")
            .with_details(json!({ "accepted": 0, "rejected": rejected, "results": results })));
    }
    state.sink.send_all(&records).await.map_err(|e| {
        tracing::error!(error = %e, "produce to events.raw failed");
        ApiError::unavailable("event bus unavailable; retry the batch")
    })?;
    state.metrics.ingest_events.with_label_values(&["accepted"]).inc_by(accepted as u64);
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": accepted, "rejected": rejected, "results": results })))
        .into_response())
}
