//! Key management for administrators: `GET/POST /api-keys`,
//! `POST /api-keys/{id}/rotate`, `DELETE /api-keys/{id}`. The plaintext of a
//! key is shown once, in the answer that creates it.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::auth::{Access, ApiKeys, Caller, Role};
use super::error::{ApiError, json_body};

/// Longest key lifetime and rotation grace accepted: ten years, thirty days.
const MAX_LIFETIME_SECS: u64 = 10 * 365 * 86_400;
const MAX_GRACE_SECS: u64 = 30 * 86_400;
/// A rotation's default grace: a day for every client to switch.
const DEFAULT_GRACE_SECS: u64 = 86_400;

/// Routes (the caller's router adds authentication).
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/api-keys", get(list).post(create))
        .route("/api-keys/{id}", delete(revoke))
        .route("/api-keys/{id}/rotate", post(rotate))
        .with_state(pool)
}

fn db_error(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "api key store");
    ApiError::unavailable("key store unavailable")
}

fn key_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::bad_field("id", "invalid_value", "id must be a UUID"))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no working API key '{id}'"))
}

/// The body as an object whose keys are all in `allowed`.
fn object<'v>(v: &'v Value, allowed: &[&str]) -> Result<&'v Map<String, Value>, ApiError> {
    let o = v.as_object().ok_or_else(|| ApiError::bad_field("body", "wrong_type", "body must be a JSON object"))?;
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_field(k, "unknown_field", format!("unknown field '{k}'")));
    }
    Ok(o)
}

/// An optional whole number of seconds in `min..=max`.
fn seconds(o: &Map<String, Value>, field: &str, (min, max): (u64, u64)) -> Result<Option<Duration>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_u64().filter(|n| (min..=max).contains(n)).map(|n| Some(Duration::from_secs(n))).ok_or_else(|| {
                ApiError::bad_field(field, "invalid_value", format!("{field} must be an integer {min}-{max}"))
            })
        }
    }
}

async fn list(State(pool): State<PgPool>, Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    caller.require(Access::Admin)?;
    let keys = ApiKeys::list(&pool).await.map_err(db_error)?;
    Ok(Json(json!({ "data": keys })).into_response())
}

async fn create(
    State(pool): State<PgPool>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Admin)?;
    let v = json_body(body, 64 * 1024)?;
    let o = object(&v, &["name", "role", "expires_in_secs"])?;
    let name = match o.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 255 => s.trim(),
        None => return Err(ApiError::bad_field("name", "missing_required_field", "name is required")),
        _ => return Err(ApiError::bad_field("name", "invalid_value", "name must be a string of 1-255 characters")),
    };
    let role = match o.get("role") {
        None => return Err(ApiError::bad_field("role", "missing_required_field", "role is required")),
        Some(r) => r
            .as_str()
            .and_then(Role::parse)
            .ok_or_else(|| ApiError::bad_field("role", "invalid_value", "role must be admin, operator or analyst"))?,
    };
    let expires_in = seconds(o, "expires_in_secs", (1, MAX_LIFETIME_SECS))?;
    let (id, key) = ApiKeys::create_expiring(&pool, name, role, expires_in).await.map_err(db_error)?;
    let info = ApiKeys::list(&pool).await.map_err(db_error)?.into_iter().find(|k| k.id == id);
    tracing::info!(target: "audit", by = %caller.name, key = %id, role = role.as_str(), "api key created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id, "key": key, "name": name, "role": role.as_str(),
            "expires_at": info.and_then(|k| k.expires_at),
        })),
    )
        .into_response())
}

async fn rotate(
    State(pool): State<PgPool>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Admin)?;
    let uuid = key_id(&id)?;
    let empty = body.as_ref().is_ok_and(|b| b.iter().all(u8::is_ascii_whitespace));
    let v = if empty { json!({}) } else { json_body(body, 64 * 1024)? };
    let o = object(&v, &["grace_secs"])?;
    let grace = seconds(o, "grace_secs", (0, MAX_GRACE_SECS))?.unwrap_or(Duration::from_secs(DEFAULT_GRACE_SECS));
    let rotated = ApiKeys::rotate(&pool, uuid, grace).await.map_err(db_error)?.ok_or_else(|| not_found(&id))?;
    tracing::info!(target: "audit", by = %caller.name, old = %uuid, new = %rotated.id, "api key rotated");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": rotated.id, "key": rotated.key, "expires_at": rotated.expires_at,
            "previous": {"id": uuid, "expires_at": rotated.old_expires_at},
        })),
    )
        .into_response())
}

async fn revoke(
    State(pool): State<PgPool>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Admin)?;
    let uuid = key_id(&id)?;
    if !ApiKeys::revoke(&pool, uuid).await.map_err(db_error)? {
        return Err(not_found(&id));
    }
    tracing::info!(target: "audit", by = %caller.name, key = %uuid, "api key revoked");
    Ok(Json(json!({"id": uuid, "status": "revoked"})).into_response())
}
