//! `POST/GET /workflows`, `GET/PATCH/DELETE /workflows/{id}`.
//!
//! A workflow is a name with numbered versions; each version is one row whose
//! BPMN never changes. Posting a name that exists creates its next version.
//! Status: draft -> active <-> inactive -> archived (DELETE archives).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use lifecycle_pipeline::workflow::bpmn::{NodeKind, Process, TaskAction};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{Body, MAX_BODY, WorkflowsState, db_error, listing, not_found, page, path_uuid};
use crate::http::auth::{Access, Caller};
use crate::http::error::{ApiError, json_body};

const COLUMNS: &str = "id, name, description, version_number, status, lifecycle_stages, max_retries, bpmn_xml, \
                       created_at, updated_at";
const STATUSES: [&str; 4] = ["draft", "active", "inactive", "archived"];

fn workflow_json(r: &PgRow, with_xml: bool) -> Value {
    let mut v = json!({
        "id": r.get::<uuid::Uuid, _>("id"),
        "name": r.get::<String, _>("name"),
        "description": r.get::<Option<String>, _>("description"),
        "version": r.get::<i32, _>("version_number"),
        "status": r.get::<String, _>("status"),
        "lifecycle_stages": r.get::<Option<Vec<String>>, _>("lifecycle_stages").unwrap_or_default(),
        "max_retries": r.get::<i32, _>("max_retries"),
        "created_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>("created_at"),
        "updated_at": r.get::<Option<chrono::DateTime<chrono::Utc>>, _>("updated_at"),
    });
    if with_xml {
        v["bpmn_xml"] = Value::String(r.get("bpmn_xml"));
    }
    v
}

fn status_of(b: &Body<'_>) -> Result<Option<&'static str>, ApiError> {
    match b.string("status", 16)? {
        None => Ok(None),
        Some(s) => STATUSES.iter().find(|x| **x == s).copied().map(Some).ok_or_else(|| {
            ApiError::bad_field("status", "invalid_value", format!("status must be one of {}", STATUSES.join(", ")))
        }),
    }
}

/// Parses the BPMN; a refusal names the element (and its id).
fn parse_bpmn(xml: &str) -> Result<Process, ApiError> {
    Process::parse(xml).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_bpmn", e.to_string())
            .with_details(json!({"field": "bpmn_xml", "element": e.element, "id": e.id}))
    })
}

/// Every HTTP service task's URL must be one outbound requests may reach; a
/// refusal names the task.
async fn check_task_urls(s: &WorkflowsState, process: &Process) -> Result<(), ApiError> {
    for node in process.nodes.values() {
        if let NodeKind::Task { action: TaskAction::Http { url, .. }, .. } = &node.kind
            && let Err(r) = s.egress.check_url(url).await
        {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, r.code, format!("serviceTask '{}': {r}", node.id))
                .with_details(json!({"field": "bpmn_xml", "element": "serviceTask", "id": node.id, "url": url})));
        }
    }
    Ok(())
}

pub(super) async fn create(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let v = json_body(body, MAX_BODY)?;
    let b = Body::new(&v, &["name", "description", "bpmn_xml", "lifecycle_stages", "status"])?;
    let name = b.required("name", 255)?;
    let xml = b.required("bpmn_xml", MAX_BODY)?;
    let process = parse_bpmn(xml)?;
    check_task_urls(&s, &process).await?;
    let status = status_of(&b)?.unwrap_or("draft");
    if status == "archived" {
        return Err(ApiError::bad_field("status", "invalid_value", "a new version cannot start archived"));
    }
    let stages = b.stages("lifecycle_stages")?;
    let mut tx = s.pool.begin().await.map_err(db_error)?;
    // One writer per name at a time, so version numbers do not collide.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('workflow:' || $1))")
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    let row = sqlx::query(&format!(
        "INSERT INTO workflows (name, description, bpmn_xml, version, version_number, lifecycle_stages, status, max_retries) \
         SELECT $1, $2, $3, v::text || '.0.0', v, $4, $5, $6 \
         FROM (SELECT COALESCE(MAX(version_number), 0) + 1 AS v FROM workflows WHERE name = $1) n RETURNING {COLUMNS}"
    ))
    .bind(name)
    .bind(b.string("description", 10_000)?)
    .bind(xml)
    .bind(&stages)
    .bind(status)
    .bind(process.max_retries as i32)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok((StatusCode::CREATED, Json(workflow_json(&row, true))).into_response())
}

pub(super) async fn list(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    if let Some(st) = q.get("status").filter(|st| !STATUSES.contains(&st.as_str())) {
        return Err(ApiError::bad_field("status", "invalid_value", format!("unknown status '{st}'")));
    }
    let (limit, offset) = page(&q, &["name", "status"])?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM workflows WHERE ($1::text IS NULL OR name = $1) AND ($2::text IS NULL OR status = $2) \
         ORDER BY name, version_number DESC LIMIT $3 OFFSET $4"
    ))
    .bind(q.get("name"))
    .bind(q.get("status"))
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    Ok(listing(rows.iter().map(|r| workflow_json(r, false)).collect::<Vec<_>>(), (limit, offset)))
}

pub(super) async fn read(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    let uuid = path_uuid("workflow", &id)?;
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM workflows WHERE id = $1"))
        .bind(uuid)
        .fetch_optional(&s.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found("workflow", &id))?;
    Ok(Json(workflow_json(&row, true)).into_response())
}

pub(super) async fn update(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let uuid = path_uuid("workflow", &id)?;
    let v = json_body(body, MAX_BODY)?;
    let b = Body::new(&v, &["status", "description", "lifecycle_stages", "bpmn_xml", "name"])?;
    if b.has("bpmn_xml") || b.has("name") {
        let field = if b.has("bpmn_xml") { "bpmn_xml" } else { "name" };
        return Err(ApiError::bad_field(
            field,
            "immutable_field",
            format!("{field} of a version cannot change; POST /workflows with the same name creates the next version"),
        ));
    }
    let status = status_of(&b)?;
    let stages = if b.has("lifecycle_stages") { Some(b.stages("lifecycle_stages")?) } else { None };
    let current: Option<String> = sqlx::query_scalar("SELECT status FROM workflows WHERE id = $1")
        .bind(uuid)
        .fetch_optional(&s.pool)
        .await
        .map_err(db_error)?;
    let current = current.ok_or_else(|| not_found("workflow", &id))?;
    if current == "archived" && status.is_some_and(|st| st != "archived") {
        return Err(ApiError::new(StatusCode::CONFLICT, "archived", "an archived workflow version stays archived")
            .with_details(json!({"field": "status"})));
    }
    let row = sqlx::query(&format!(
        "UPDATE workflows SET status = COALESCE($2, status), description = CASE WHEN $3 THEN $4 ELSE description END, \
         lifecycle_stages = COALESCE($5, lifecycle_stages), updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(uuid)
    .bind(status)
    .bind(b.has("description"))
    .bind(b.string("description", 10_000)?)
    .bind(stages)
    .fetch_one(&s.pool)
    .await
    .map_err(db_error)?;
    Ok(Json(workflow_json(&row, true)).into_response())
}

pub(super) async fn archive(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let uuid = path_uuid("workflow", &id)?;
    let row = sqlx::query(&format!(
        "UPDATE workflows SET status = 'archived', updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(uuid)
    .fetch_optional(&s.pool)
    .await
    .map_err(db_error)?
    .ok_or_else(|| not_found("workflow", &id))?;
    Ok(Json(workflow_json(&row, false)).into_response())
}
