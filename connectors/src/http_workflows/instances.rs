//! `POST /workflows/{id}/execute`, `GET /workflows/{id}/instances[/{instance_id}]`,
//! `DELETE` (cancel), `POST .../pause`, `POST .../resume` and `POST .../rerun`
//! (resolve an incident).

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use lifecycle_pipeline::workflow::bpmn::Process;
use lifecycle_pipeline::workflow::instance::Instance;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::{Body, MAX_BODY, WorkflowsState, db_error, listing, mask_pii, not_found, page, path_uuid};
use crate::http::auth::{Access, Caller, Role};
use crate::http::error::{ApiError, json_body};
use crate::postgres::profiles::resolve_user;
use crate::postgres::workflows::{self as store, NewInstance, StartError};

const COLUMNS: &str = "e.id, e.workflow_id, e.user_id, u.external_id, e.status, e.current_node_id, e.started_at, \
    e.completed_at, e.updated_at, e.variables, e.state, e.error_type, e.error_message, e.failed_step, e.stack_trace, \
    e.retry_count, e.callback_url, e.trigger_id, e.wake_at";
const FROM: &str = "workflow_executions e LEFT JOIN users u ON u.id = e.user_id";
const LONGEST_WAIT_MS: u64 = 30_000;

fn links(wf: Uuid, id: Uuid) -> Value {
    json!({
        "self": format!("/workflows/{wf}/instances/{id}"),
        "cancel": format!("DELETE /workflows/{wf}/instances/{id}"),
        "rerun": format!("POST /workflows/{wf}/instances/{id}/rerun"),
    })
}

/// The execution context of an instance.
fn instance_json(r: &PgRow, caller: &Caller, full: bool) -> Value {
    let id: Uuid = r.get("id");
    let wf: Uuid = r.get("workflow_id");
    let state: Option<Value> = r.get("state");
    let error_type: Option<String> = r.get("error_type");
    let mut v = json!({
        "instance_id": id,
        "workflow_id": wf,
        "user_id": r.get::<Option<String>, _>("external_id"),
        "user_uuid": r.get::<Uuid, _>("user_id"),
        "status": r.get::<String, _>("status"),
        "current_step": r.get::<Option<String>, _>("current_node_id"),
        "start_time": r.get::<Option<chrono::DateTime<Utc>>, _>("started_at"),
        "end_time": r.get::<Option<chrono::DateTime<Utc>>, _>("completed_at"),
        "updated_at": r.get::<chrono::DateTime<Utc>, _>("updated_at"),
        "next_wake_at": r.get::<Option<chrono::DateTime<Utc>>, _>("wake_at"),
        "retry_count": r.get::<i32, _>("retry_count"),
        "trigger_id": r.get::<Option<Uuid>, _>("trigger_id"),
        "error": error_type.map(|t| json!({
            "error_type": t,
            "error_message": r.get::<Option<String>, _>("error_message"),
            "failed_step": r.get::<Option<String>, _>("failed_step"),
            "stack_trace": r.get::<Option<String>, _>("stack_trace"),
        })),
        "links": links(wf, id),
    });
    if full {
        let s = state.unwrap_or(Value::Null);
        v["variables"] = s
            .get("variables")
            .cloned()
            .unwrap_or_else(|| r.get::<Option<Value>, _>("variables").unwrap_or(Value::Null));
        v["results"] = s.get("results").cloned().unwrap_or_else(|| json!({}));
        v["retries"] = s.get("retries").cloned().unwrap_or_else(|| json!({}));
        v["tokens"] = s.get("tokens").cloned().unwrap_or_else(|| json!([]));
        v["history"] = s.get("history").cloned().unwrap_or_else(|| json!([]));
        v["callback_url"] = json!(r.get::<Option<String>, _>("callback_url"));
    }
    if caller.role != Role::Admin {
        mask_pii(&mut v, false);
    }
    v
}

async fn fetch(s: &WorkflowsState, wf: Uuid, id: Uuid, raw: &str) -> Result<PgRow, ApiError> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM {FROM} WHERE e.id = $1 AND e.workflow_id = $2"))
        .bind(id)
        .bind(wf)
        .fetch_optional(&s.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found("instance", raw))
}

async fn attempts(s: &WorkflowsState, id: Uuid) -> Result<Value, ApiError> {
    let rows = sqlx::query(
        "SELECT step, attempt, outcome, error_message, idempotency_key, duration_ms, at \
         FROM workflow_execution_attempts WHERE execution_id = $1 ORDER BY at, id",
    )
    .bind(id)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    Ok(Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "step": r.get::<String, _>(0), "attempt": r.get::<i32, _>(1), "outcome": r.get::<String, _>(2),
                    "error_message": r.get::<Option<String>, _>(3), "idempotency_key": r.get::<String, _>(4),
                    "duration_ms": r.get::<i32, _>(5), "at": r.get::<chrono::DateTime<Utc>, _>(6),
                })
            })
            .collect(),
    ))
}

pub(super) async fn execute(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(wf): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let wf_id = path_uuid("workflow", &wf)?;
    let v = json_body(body, MAX_BODY)?;
    let b = Body::new(&v, &["user_id", "variables", "callback_url", "instance_id", "wait_ms"])?;
    let user = b.required("user_id", 128)?;
    let mut variables = match b.raw("variables") {
        None => serde_json::Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(ApiError::bad_field("variables", "wrong_type", "variables must be an object")),
    };
    variables.entry("user_id").or_insert_with(|| json!(user));
    let wait_ms = b.integer("wait_ms", (0, LONGEST_WAIT_MS))?.unwrap_or(0);
    let callback_url = b.url("callback_url")?;
    if let Some(url) = &callback_url {
        super::check_egress(&s, "callback_url", url).await?;
    }
    let n = NewInstance {
        id: b.uuid("instance_id")?.unwrap_or_else(Uuid::new_v4),
        workflow_id: wf_id,
        user_id: resolve_user(user),
        variables: Value::Object(variables),
        callback_url,
        trigger_id: None,
    };
    let created = match store::insert_instance(&s.pool, &n).await {
        Ok(created) => created,
        Err(StartError::NoWorkflow(_)) => return Err(not_found("workflow", &wf)),
        Err(e @ StartError::NotActive(..)) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "workflow_not_active", e.to_string())
                .with_details(json!({"field": "id", "hint": "PATCH /workflows/{id} {\"status\": \"active\"}"})));
        }
        Err(StartError::NoUser(_)) => {
            return Err(ApiError::bad_field("user_id", "unknown_user", format!("user '{user}' does not exist")));
        }
        Err(e @ StartError::BadReference(_)) => return Err(ApiError::internal(e.to_string())),
        Err(StartError::Db(e)) => return Err(db_error(e)),
    };
    if !created {
        // A repeated instance_id: it must be this workflow's.
        let owner: Option<Uuid> = sqlx::query_scalar("SELECT workflow_id FROM workflow_executions WHERE id = $1")
            .bind(n.id)
            .fetch_optional(&s.pool)
            .await
            .map_err(db_error)?;
        if owner != Some(wf_id) {
            return Err(ApiError::new(StatusCode::CONFLICT, "conflict", "instance_id belongs to another workflow")
                .with_details(json!({"field": "instance_id"})));
        }
    }
    // Optionally wait for the outcome; otherwise the status is "pending" and the
    // outcome arrives by callback or polling.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let row = loop {
        let row = fetch(&s, wf_id, n.id, &n.id.to_string()).await?;
        let status: String = row.get("status");
        if matches!(status.as_str(), "completed" | "failed" | "cancelled") || tokio::time::Instant::now() >= deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut out = instance_json(&row, &caller, false);
    out["created"] = json!(created);
    let code = if created { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((code, Json(out)).into_response())
}

pub(super) async fn list(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path(wf): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    let wf_id = path_uuid("workflow", &wf)?;
    const STATUSES: [&str; 6] = ["pending", "running", "paused", "completed", "failed", "cancelled"];
    if let Some(st) = q.get("status").filter(|st| !STATUSES.contains(&st.as_str())) {
        return Err(ApiError::bad_field("status", "invalid_value", format!("unknown status '{st}'")));
    }
    let (limit, offset) = page(&q, &["status"])?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE e.workflow_id = $1 AND ($2::text IS NULL OR e.status = $2) \
         ORDER BY e.started_at DESC, e.id LIMIT $3 OFFSET $4"
    ))
    .bind(wf_id)
    .bind(q.get("status"))
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.pool)
    .await
    .map_err(db_error)?;
    let data: Vec<Value> = rows.iter().map(|r| instance_json(r, &caller, false)).collect();
    Ok(listing(data, (limit, offset)))
}

pub(super) async fn read(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path((wf, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    let (wf_id, iid) = (path_uuid("workflow", &wf)?, path_uuid("instance", &id)?);
    let row = fetch(&s, wf_id, iid, &id).await?;
    let mut v = instance_json(&row, &caller, true);
    v["attempts"] = attempts(&s, iid).await?;
    Ok(Json(v).into_response())
}

/// Loads a stored instance for a change made through the API.
async fn stored(s: &WorkflowsState, wf: Uuid, id: Uuid, raw: &str) -> Result<(PgRow, Option<Instance>), ApiError> {
    let row = fetch(s, wf, id, raw).await?;
    let inst = match row.get::<Option<Value>, _>("state") {
        Some(v) => Some(serde_json::from_value(v).map_err(|e| ApiError::internal(format!("stored state: {e}")))?),
        None => None,
    };
    Ok((row, inst))
}

pub(super) async fn cancel(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path((wf, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let (wf_id, iid) = (path_uuid("workflow", &wf)?, path_uuid("instance", &id)?);
    fetch(&s, wf_id, iid, &id).await?;
    if store::cancel(&s.pool, iid, &s.events_topic).await.map_err(db_error)?.is_none() {
        let row = fetch(&s, wf_id, iid, &id).await?;
        let status: String = row.get("status");
        return Err(ApiError::new(StatusCode::CONFLICT, "instance_ended", format!("the instance is already {status}"))
            .with_details(json!({"field": "instance_id", "status": status})));
    }
    let row = fetch(&s, wf_id, iid, &id).await?;
    Ok(Json(instance_json(&row, &caller, false)).into_response())
}

pub(super) async fn rerun(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path((wf, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let (wf_id, iid) = (path_uuid("workflow", &wf)?, path_uuid("instance", &id)?);
    let (row, inst) = stored(&s, wf_id, iid, &id).await?;
    let status: String = row.get("status");
    let not_failed = || {
        ApiError::new(StatusCode::CONFLICT, "not_failed", format!("only failed instances re-run; this one is {status}"))
            .with_details(json!({"field": "instance_id", "status": status}))
    };
    let Some(mut inst) = inst.filter(|_| status == "failed") else { return Err(not_failed()) };
    let def = store::definition(&s.pool, wf_id).await.map_err(db_error)?.ok_or_else(|| not_found("workflow", &wf))?;
    let process = Process::parse(&def.bpmn_xml).map_err(|e| {
        ApiError::new(StatusCode::CONFLICT, "invalid_definition", format!("the workflow's BPMN no longer parses: {e}"))
            .with_details(json!({"field": "bpmn_xml"}))
    })?;
    inst.rerun(&process, Utc::now());
    if inst.status != lifecycle_pipeline::workflow::instance::Status::Running {
        // It fails (or ends) again at once, e.g. a gateway condition that cannot be
        // evaluated with these variables: nothing is changed.
        let why = inst.failure.as_ref().map(|f| format!("{}: {}", f.error_type, f.error_message)).unwrap_or_default();
        return Err(ApiError::new(StatusCode::CONFLICT, "rerun_fails", format!("a re-run would end at once ({why})"))
            .with_details(json!({"field": "instance_id"})));
    }
    let done = sqlx::query(
        "UPDATE workflow_executions SET status = 'running', state = $2, current_node_id = $3, error_type = NULL, \
         error_message = NULL, failed_step = NULL, stack_trace = NULL, completed_at = NULL, wake_at = now(), \
         lease_owner = NULL, lease_until = NULL, updated_at = now() WHERE id = $1 AND status = 'failed'",
    )
    .bind(iid)
    .bind(serde_json::to_value(&inst).map_err(|e| ApiError::internal(e.to_string()))?)
    .bind(inst.current_step())
    .execute(&s.pool)
    .await
    .map_err(db_error)?;
    if done.rows_affected() == 0 {
        return Err(not_failed());
    }
    let row = fetch(&s, wf_id, iid, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(instance_json(&row, &caller, false))).into_response())
}

/// Moves an instance from one of `from` to `to` (pause and resume); the engine
/// drops a paused instance at its next save and does not claim it.
async fn transition(
    s: &WorkflowsState,
    caller: &Caller,
    (wf, id): (&str, &str),
    from: &[&str],
    to: &str,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let (wf_id, iid) = (path_uuid("workflow", wf)?, path_uuid("instance", id)?);
    let row = fetch(s, wf_id, iid, id).await?;
    let status: String = row.get("status");
    let from: Vec<String> = from.iter().map(|f| (*f).to_owned()).collect();
    let done = sqlx::query(
        "UPDATE workflow_executions SET status = $2, updated_at = now(), lease_owner = NULL, lease_until = NULL, \
         wake_at = CASE WHEN $2 = 'running' THEN now() ELSE wake_at END WHERE id = $1 AND status = ANY($3)",
    )
    .bind(iid)
    .bind(to)
    .bind(&from)
    .execute(&s.pool)
    .await
    .map_err(db_error)?;
    if done.rows_affected() == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_transition",
            format!("the instance is {status}; only {} instances can become {to}", from.join(" or ")),
        )
        .with_details(json!({"field": "instance_id", "status": status})));
    }
    let row = fetch(s, wf_id, iid, id).await?;
    Ok(Json(instance_json(&row, caller, false)).into_response())
}

pub(super) async fn pause(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path((wf, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    transition(&s, &caller, (&wf, &id), &["pending", "running"], "paused").await
}

pub(super) async fn resume(
    State(s): State<WorkflowsState>,
    Extension(caller): Extension<Caller>,
    Path((wf, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    transition(&s, &caller, (&wf, &id), &["paused"], "running").await
}
