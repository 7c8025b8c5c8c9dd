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
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::auth::{Access, ApiKeys, Caller, Role};
use super::body::Body;
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
    crate::http::error::db_error("key store", e)
}

fn key_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::bad_field("id", "invalid_value", "id must be a UUID"))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no working API key '{id}'"))
}

/// An optional number of seconds in `min..=max`.
fn seconds(b: &Body<'_>, field: &str, range: (u64, u64)) -> Result<Option<Duration>, ApiError> {
    Ok(b.integer(field, range)?.map(Duration::from_secs))
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
    let b = Body::new(&v, &["name", "role", "expires_in_secs"])?;
    let name = b.required("name", 255)?.trim();
    let role = Role::parse(b.required("role", 255)?)
        .ok_or_else(|| ApiError::bad_field("role", "invalid_value", "role must be admin, operator or analyst"))?;
    let expires_in = seconds(&b, "expires_in_secs", (1, MAX_LIFETIME_SECS))?;
    let (id, key, expires_at) = ApiKeys::create_expiring(&pool, name, role, expires_in).await.map_err(db_error)?;
    tracing::info!(target: "audit", by = %caller.name, key = %id, role = role.as_str(), "api key created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id, "key": key, "name": name, "role": role.as_str(),
            "expires_at": expires_at,
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
    let grace = seconds(&Body::new(&v, &["grace_secs"])?, "grace_secs", (0, MAX_GRACE_SECS))?
        .unwrap_or(Duration::from_secs(DEFAULT_GRACE_SECS));
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
