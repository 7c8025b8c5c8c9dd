//! Segments (`/segments`) and triggers (`/triggers`). Conditions are checked
//! when written: a bad tree is a 400 naming its JSON path. The profile stage
//! picks changes up within `profile.rules_reload_ms`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use lifecycle_pipeline::segment::Condition;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::{Body, MAX_BODY, WorkflowsState, db_error, delete_row, listing, mask_pii, not_found, page, path_uuid};
use crate::http::auth::{Access, Caller, Role};
use crate::http::error::{ApiError, json_body};

fn condition(b: &Body<'_>, required: bool) -> Result<Option<Value>, ApiError> {
    match b.raw("conditions") {
        None if required => Err(ApiError::bad_field("conditions", "missing_required_field", "conditions is required")),
        None => Ok(None),
        Some(v) => {
            Condition::parse(v, "conditions").map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_condition", e.to_string())
                    .with_details(json!({"field": e.path}))
            })?;
            Ok(Some(v.clone()))
        }
    }
}

// ---- segments ----

const SEGMENT_COLUMNS: &str = "s.id, s.name, s.description, s.conditions, s.lifecycle_stages, s.enabled, s.created_at, s.updated_at, \
     (SELECT count(*) FROM user_segment_memberships m WHERE m.segment_id = s.id) AS members";

fn segment_json(r: &PgRow) -> Value {
    json!({
        "id": r.get::<Uuid, _>("id"),
        "name": r.get::<String, _>("name"),
        "description": r.get::<Option<String>, _>("description"),
        "conditions": r.get::<Value, _>("conditions"),
        "lifecycle_stages": r.get::<Option<Vec<String>>, _>("lifecycle_stages").unwrap_or_default(),
        "enabled": r.get::<bool, _>("enabled"),
        "member_count": r.get::<i64, _>("members"),
        "created_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>("created_at"),
        "updated_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>("updated_at"),
    })
}

async fn segment_row(s: &WorkflowsState, id: Uuid, raw: &str) -> Result<PgRow, ApiError> {
    sqlx::query(&format!("SELECT {SEGMENT_COLUMNS} FROM user_segments s WHERE s.id = $1"))
        .bind(id)
        .fetch_optional(&s.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found("segment", raw))
}

const SEGMENT_FIELDS: [&str; 5] = ["name", "description", "conditions", "lifecycle_stages", "enabled"];

pub(super) async fn create_segment(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let v = json_body(body, MAX_BODY)?;
    let b = Body::new(&v, &SEGMENT_FIELDS)?;
    let name = b.required("name", 255)?;
    let cond = condition(&b, true)?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO user_segments (name, description, conditions, lifecycle_stages, enabled) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(name)
    .bind(b.string("description", 10_000)?)
    .bind(cond)
    .bind(b.stages("lifecycle_stages")?)
    .bind(b.boolean("enabled")?.unwrap_or(true))
    .fetch_one(&s.pool)
    .await
    .map_err(db_error)?;
    let row = segment_row(&s, id, &id.to_string()).await?;
    Ok((StatusCode::CREATED, Json(segment_json(&row))).into_response())
}

pub(super) async fn list_segments(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    let (limit, offset) = page(&q, &[])?;
    let rows = sqlx::query(&format!(
        "SELECT {SEGMENT_COLUMNS} FROM user_segments s ORDER BY s.created_at, s.id LIMIT $1 OFFSET $2"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    Ok(listing(rows.iter().map(segment_json).collect::<Vec<_>>(), (limit, offset)))
}

pub(super) async fn read_segment(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    let row = segment_row(&s, path_uuid("segment", &id)?, &id).await?;
    Ok(Json(segment_json(&row)).into_response())
}

pub(super) async fn update_segment(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let uuid = path_uuid("segment", &id)?;
    let v = json_body(body, MAX_BODY)?;
    let b = Body::new(&v, &SEGMENT_FIELDS)?;
    let stages = if b.has("lifecycle_stages") { Some(b.stages("lifecycle_stages")?) } else { None };
    let done = sqlx::query(
        "UPDATE user_segments SET name = COALESCE($2, name), description = CASE WHEN $3 THEN $4 ELSE description END, \
         conditions = COALESCE($5, conditions), lifecycle_stages = COALESCE($6, lifecycle_stages), \
         enabled = COALESCE($7, enabled), updated_at = now() WHERE id = $1",
    )
    .bind(uuid)
    .bind(b.string("name", 255)?)
    .bind(b.has("description"))
    .bind(b.string("description", 10_000)?)
    .bind(condition(&b, false)?)
    .bind(stages)
    .bind(b.boolean("enabled")?)
    .execute(&s.pool)
    .await
    .map_err(db_error)?;
    if done.rows_affected() == 0 {
        return Err(not_found("segment", &id));
    }
    let row = segment_row(&s, uuid, &id).await?;
    Ok(Json(segment_json(&row)).into_response())
}

pub(super) async fn delete_segment(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    delete_row(&s.pool, "user_segments", "segment", &id).await
}

pub(super) async fn members(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    let uuid = path_uuid("segment", &id)?;
    segment_row(&s, uuid, &id).await?;
    let (limit, offset) = page(&q, &[])?;
    let rows = sqlx::query(
        "SELECT u.external_id, m.user_id, m.evaluated_at, m.valid_until FROM user_segment_memberships m \
         JOIN users u ON u.id = m.user_id WHERE m.segment_id = $1 ORDER BY m.evaluated_at DESC, m.user_id LIMIT $2 OFFSET $3",
    )
    .bind(uuid)
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "user_id": r.get::<Option<String>, _>(0), "user_uuid": r.get::<Uuid, _>(1),
                "evaluated_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>(2),
                "valid_until": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>(3),
            })
        })
        .collect();
    Ok(listing(data, (limit, offset)))
}

// ---- triggers ----

const TRIGGER_COLUMNS: &str = "id, name, event_type, conditions, workflow_id, enabled, created_at, updated_at";
const TRIGGER_FIELDS: [&str; 5] = ["name", "event_type", "conditions", "workflow_id", "enabled"];

fn trigger_json(r: &PgRow) -> Value {
    json!({
        "id": r.get::<Uuid, _>("id"),
        "name": r.get::<String, _>("name"),
        "event_type": r.get::<String, _>("event_type"),
        "conditions": r.get::<Value, _>("conditions"),
        "workflow_id": r.get::<Option<Uuid>, _>("workflow_id"),
        "enabled": r.get::<Option<bool>, _>("enabled").unwrap_or(false),
        "created_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>("created_at"),
        "updated_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>("updated_at"),
    })
}

fn event_type(b: &Body<'_>, required: bool) -> Result<Option<String>, ApiError> {
    let t = if required { Some(b.required("event_type", 255)?) } else { b.string("event_type", 255)? };
    let Some(t) = t else { return Ok(None) };
    let ok = t.split_once('.').is_some_and(|(c, a)| {
        let part =
            |p: &str| !p.is_empty() && p.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
        part(c) && part(a)
    });
    if !ok {
        return Err(ApiError::bad_field(
            "event_type",
            "invalid_value",
            "event_type must be category.action in lowercase snake_case",
        ));
    }
    Ok(Some(t.to_owned()))
}

async fn check_workflow(s: &WorkflowsState, id: Option<Uuid>) -> Result<(), ApiError> {
    let Some(id) = id else { return Ok(()) };
    let exists: Option<String> = sqlx::query_scalar("SELECT status FROM workflows WHERE id = $1")
        .bind(id)
        .fetch_optional(&s.pool)
        .await
        .map_err(db_error)?;
    match exists.as_deref() {
        None => Err(ApiError::bad_field("workflow_id", "unknown_workflow", format!("workflow {id} does not exist"))),
        Some("archived") => {
            Err(ApiError::bad_field("workflow_id", "invalid_value", format!("workflow {id} is archived")))
        }
        Some(_) => Ok(()),
    }
}

async fn trigger_row(s: &WorkflowsState, id: Uuid, raw: &str) -> Result<PgRow, ApiError> {
    sqlx::query(&format!("SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = $1"))
        .bind(id)
        .fetch_optional(&s.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found("trigger", raw))
}

pub(super) async fn create_trigger(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let v = json_body(body, MAX_BODY)?;
    let b = Body::new(&v, &TRIGGER_FIELDS)?;
    let name = b.required("name", 255)?;
    let et = event_type(&b, true)?;
    let cond = condition(&b, true)?;
    let wf = b.uuid("workflow_id")?;
    check_workflow(&s, wf).await?;
    let row = sqlx::query(&format!(
        "INSERT INTO triggers (name, event_type, conditions, workflow_id, enabled) VALUES ($1, $2, $3, $4, $5) RETURNING {TRIGGER_COLUMNS}"
    ))
    .bind(name)
    .bind(et)
    .bind(cond)
    .bind(wf)
    .bind(b.boolean("enabled")?.unwrap_or(true))
    .fetch_one(&s.pool)
    .await
    .map_err(db_error)?;
    Ok((StatusCode::CREATED, Json(trigger_json(&row))).into_response())
}

pub(super) async fn list_triggers(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    let (limit, offset) = page(&q, &[])?;
    let rows =
        sqlx::query(&format!("SELECT {TRIGGER_COLUMNS} FROM triggers ORDER BY created_at, id LIMIT $1 OFFSET $2"))
            .bind(limit)
            .bind(offset)
            .fetch_all(&s.pool)
            .await
            .map_err(db_error)?;
    Ok(listing(rows.iter().map(trigger_json).collect::<Vec<_>>(), (limit, offset)))
}

pub(super) async fn read_trigger(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    let row = trigger_row(&s, path_uuid("trigger", &id)?, &id).await?;
    Ok(Json(trigger_json(&row)).into_response())
}

pub(super) async fn update_trigger(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let uuid = path_uuid("trigger", &id)?;
    let v = json_body(body, MAX_BODY)?;
    let b = Body::new(&v, &TRIGGER_FIELDS)?;
    let wf = b.uuid("workflow_id")?;
    check_workflow(&s, wf).await?;
    let row = sqlx::query(&format!(
        "UPDATE triggers SET name = COALESCE($2, name), event_type = COALESCE($3, event_type), \
         conditions = COALESCE($4, conditions), workflow_id = CASE WHEN $5 THEN $6 ELSE workflow_id END, \
         enabled = COALESCE($7, enabled), updated_at = now() WHERE id = $1 RETURNING {TRIGGER_COLUMNS}"
    ))
    .bind(uuid)
    .bind(b.string("name", 255)?)
    .bind(event_type(&b, false)?)
    .bind(condition(&b, false)?)
    .bind(b.has("workflow_id"))
    .bind(wf)
    .bind(b.boolean("enabled")?)
    .fetch_optional(&s.pool)
    .await
    .map_err(db_error)?
    .ok_or_else(|| not_found("trigger", &id))?;
    Ok(Json(trigger_json(&row)).into_response())
}

async fn set_enabled(s: &WorkflowsState, id: &str, enabled: bool) -> Result<Response, ApiError> {
    let row = sqlx::query(&format!(
        "UPDATE triggers SET enabled = $2, updated_at = now() WHERE id = $1 RETURNING {TRIGGER_COLUMNS}"
    ))
    .bind(path_uuid("trigger", id)?)
    .bind(enabled)
    .fetch_optional(&s.pool)
    .await
    .map_err(db_error)?
    .ok_or_else(|| not_found("trigger", id))?;
    Ok(Json(trigger_json(&row)).into_response())
}

pub(super) async fn enable_trigger(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    set_enabled(&s, &id, true).await
}

pub(super) async fn disable_trigger(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    set_enabled(&s, &id, false).await
}

pub(super) async fn delete_trigger(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let uuid = path_uuid("trigger", &id)?;
    trigger_row(&s, uuid, &id).await?;
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM trigger_executions WHERE trigger_id = $1")
        .bind(uuid)
        .fetch_one(&s.pool)
        .await
        .map_err(db_error)?;
    if runs > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "has_executions",
            format!("the trigger has {runs} recorded evaluations (an audit trail); disable it instead"),
        )
        .with_details(json!({"field": "id", "executions": runs})));
    }
    sqlx::query("DELETE FROM triggers WHERE id = $1").bind(uuid).execute(&s.pool).await.map_err(db_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn trigger_executions(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    let uuid = path_uuid("trigger", &id)?;
    trigger_row(&s, uuid, &id).await?;
    let (limit, offset) = page(&q, &[])?;
    let rows = sqlx::query(
        "SELECT t.id, u.external_id, t.event_id, t.condition_met, t.workflow_execution_id, t.executed_at, t.event_data \
         FROM trigger_executions t LEFT JOIN users u ON u.id = t.user_id WHERE t.trigger_id = $1 \
         ORDER BY t.executed_at DESC, t.id LIMIT $2 OFFSET $3",
    )
    .bind(uuid)
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    let mut data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<Uuid, _>(0), "user_id": r.get::<Option<String>, _>(1), "event_id": r.get::<Option<String>, _>(2),
                "condition_met": r.get::<bool, _>(3), "workflow_execution_id": r.get::<Option<Uuid>, _>(4),
                "executed_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>(5), "event": r.get::<Option<Value>, _>(6),
            })
        })
        .collect();
    if caller.role != Role::Admin {
        data.iter_mut().for_each(|d| mask_pii(d, false));
    }
    Ok(listing(data, (limit, offset)))
}
