//! Webhook subscriptions (`/webhooks`, admin only): a URL and the event types
//! it receives. The secret that signs deliveries is shown once, at creation.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rand::RngCore;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::{Body, MAX_BODY, WorkflowsState, check_egress, db_error, delete_row, listing, not_found, page, path_uuid};
use crate::http::auth::{Access, Caller};
use crate::http::error::{ApiError, json_body};

/// Event types a subscription may ask for.
pub(super) const EVENT_TYPES: [&str; 6] = [
    "workflow.started",
    "workflow.completed",
    "workflow.failed",
    "workflow.cancelled",
    "segment.entered",
    "segment.exited",
];

fn subscription_json(r: &PgRow) -> Value {
    json!({
        "id": r.get::<Uuid, _>("id"),
        "url": r.get::<String, _>("url"),
        "event_types": r.get::<Vec<String>, _>("event_types"),
        "enabled": r.get::<bool, _>("enabled"),
        "created_at": r.get::<chrono::DateTime<chrono::Utc>, _>("created_at"),
    })
}

pub(super) async fn create(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Admin)?;
    let v = json_body(body, MAX_BODY)?;
    let b = Body::new(&v, &["url", "event_types"])?;
    let url = b.url("url")?.ok_or_else(|| ApiError::bad_field("url", "missing_required_field", "url is required"))?;
    check_egress(&s, "url", &url).await?;
    let bad = || {
        ApiError::bad_field(
            "event_types",
            "invalid_value",
            format!("event_types must be a non-empty list of: {}", EVENT_TYPES.join(", ")),
        )
    };
    let types: Vec<String> = match b.raw("event_types") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|t| t.as_str().filter(|t| EVENT_TYPES.contains(t)).map(str::to_owned).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    let mut raw = [0u8; 24];
    rand::rng().fill_bytes(&mut raw);
    let secret = format!("whsec_{}", hex::encode(raw));
    let row = sqlx::query(
        "INSERT INTO webhook_subscriptions (url, secret, event_types) VALUES ($1, $2, $3) \
         RETURNING id, url, event_types, enabled, created_at",
    )
    .bind(&url)
    .bind(&secret)
    .bind(&types)
    .fetch_one(&s.pool)
    .await
    .map_err(db_error)?;
    let mut out = subscription_json(&row);
    out["secret"] = Value::String(secret);
    out["signature"] = json!("X-Lifecycle-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">");
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub(super) async fn list(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require(Access::Admin)?;
    let rows =
        sqlx::query("SELECT id, url, event_types, enabled, created_at FROM webhook_subscriptions ORDER BY created_at")
            .fetch_all(&s.pool)
            .await
            .map_err(db_error)?;
    Ok(Json(json!({"data": rows.iter().map(subscription_json).collect::<Vec<_>>()})).into_response())
}

pub(super) async fn read(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Admin)?;
    let row = sqlx::query("SELECT id, url, event_types, enabled, created_at FROM webhook_subscriptions WHERE id = $1")
        .bind(path_uuid("webhook", &id)?)
        .fetch_optional(&s.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found("webhook", &id))?;
    Ok(Json(subscription_json(&row)).into_response())
}

pub(super) async fn remove(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Admin)?;
    delete_row(&s.pool, "webhook_subscriptions", "webhook", &id).await
}

pub(super) async fn deliveries(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Access::Admin)?;
    let (limit, offset) = page(&q, &[])?;
    let rows = sqlx::query(
        "SELECT id, event_type, event_id, status, attempts, last_error, created_at, delivered_at, next_attempt_at \
         FROM webhook_deliveries WHERE subscription_id = $1 ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
    )
    .bind(path_uuid("webhook", &id)?)
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<Uuid, _>(0), "event_type": r.get::<String, _>(1), "event_id": r.get::<Uuid, _>(2),
                "status": r.get::<String, _>(3), "attempts": r.get::<i32, _>(4), "last_error": r.get::<Option<String>, _>(5),
                "created_at": r.get::<chrono::DateTime<chrono::Utc>, _>(6),
                "delivered_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>(7),
                "next_attempt_at": r.get::<chrono::DateTime<chrono::Utc>, _>(8),
            })
        })
        .collect();
    Ok(listing(data, (limit, offset)))
}
