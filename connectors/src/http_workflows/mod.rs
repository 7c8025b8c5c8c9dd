//! The workflow REST API: workflow definitions (versioned BPMN), instances
//! (execute, inspect, cancel, re-run), segments, triggers and webhook
//! subscriptions. Reads need any role, changes need operator or admin,
//! webhook subscriptions (which hold secrets) need admin.

mod definitions;
mod instances;
mod rules;
mod webhooks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::http::body::Body;
use crate::http::error::ApiError;

/// Handler state.
#[derive(Clone)]
pub struct WorkflowsState {
    /// The pipeline database.
    pub pool: PgPool,
    /// Real name of `workflow.events` (cancellations made through the API go
    /// to the engine's outbox for it).
    pub events_topic: String,
    /// What webhook, HTTP task and callback URLs may reach.
    pub egress: std::sync::Arc<crate::http::egress::EgressPolicy>,
}

/// A 400 naming `field` when `url` is one outbound requests may not reach.
async fn check_egress(s: &WorkflowsState, field: &str, url: &str) -> Result<(), ApiError> {
    s.egress.check_url(url).await.map_err(|r| ApiError::bad_field(field, r.code, format!("{field}: {r}")))
}

const MAX_BODY: usize = 1024 * 1024;

/// Routes (without authentication: the caller's router adds it).
pub fn router(state: WorkflowsState) -> Router {
    Router::new()
        .route("/workflows", post(definitions::create).get(definitions::list))
        .route("/workflows/{id}", get(definitions::read).patch(definitions::update).delete(definitions::archive))
        .route("/workflows/{id}/execute", post(instances::execute))
        .route("/workflows/{id}/instances", get(instances::list))
        .route("/workflows/{id}/instances/{instance_id}", get(instances::read).delete(instances::cancel))
        .route("/workflows/{id}/instances/{instance_id}/rerun", post(instances::rerun))
        .route("/workflows/{id}/instances/{instance_id}/pause", post(instances::pause))
        .route("/workflows/{id}/instances/{instance_id}/resume", post(instances::resume))
        .route("/segments", post(rules::create_segment).get(rules::list_segments))
        .route("/segments/{id}", get(rules::read_segment).patch(rules::update_segment).delete(rules::delete_segment))
        .route("/segments/{id}/members", get(rules::members))
        .route("/triggers", post(rules::create_trigger).get(rules::list_triggers))
        .route("/triggers/{id}", get(rules::read_trigger).patch(rules::update_trigger).delete(rules::delete_trigger))
        .route("/triggers/{id}/enable", post(rules::enable_trigger))
        .route("/triggers/{id}/disable", post(rules::disable_trigger))
        .route("/triggers/{id}/executions", get(rules::trigger_executions))
        .route("/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/webhooks/{id}", get(webhooks::read).delete(webhooks::remove))
        .route("/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn db_error(e: sqlx::Error) -> ApiError {
    crate::http::error::db_error("database", e)
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} {id}"))
        .with_details(json!({"field": "id", "id": id}))
}

fn path_uuid(what: &str, id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| not_found(what, id))
}

/// `limit` (1-500, default 100) and `offset` (0 or more) query values; any
/// parameter besides those and `extra` is a 400 naming it.
fn page(q: &std::collections::HashMap<String, String>, extra: &[&str]) -> Result<(i64, i64), ApiError> {
    if let Some(k) = q.keys().find(|k| !["limit", "offset"].contains(&k.as_str()) && !extra.contains(&k.as_str())) {
        return Err(ApiError::bad_field(k, "unknown_parameter", format!("unknown parameter '{k}'")));
    }
    let num = |k: &str, default: i64, min: i64, max: i64| -> Result<i64, ApiError> {
        match q.get(k) {
            None => Ok(default),
            Some(s) => s.parse::<i64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
                let range = if max == i64::MAX { format!("{min} or more") } else { format!("{min}-{max}") };
                ApiError::bad_field(k, "invalid_value", format!("{k} must be an integer {range}"))
            }),
        }
    };
    Ok((num("limit", 100, 1, 500)?, num("offset", 0, 0, i64::MAX)?))
}

/// A page of a listing: `{"data": [...], "limit", "offset"}`.
fn listing(data: Vec<Value>, (limit, offset): (i64, i64)) -> axum::response::Response {
    use axum::response::IntoResponse;
    axum::Json(json!({"data": data, "limit": limit, "offset": offset})).into_response()
}

/// Deletes row `id` of `table` (a constant of ours); 204, or 404 naming `what`.
async fn delete_row(
    pool: &PgPool,
    table: &'static str,
    what: &str,
    id: &str,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let done = sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
        .bind(path_uuid(what, id)?)
        .execute(pool)
        .await
        .map_err(db_error)?;
    if done.rows_affected() == 0 {
        return Err(not_found(what, id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Replaces PII anywhere in `v` for callers who may not see it: `email` and
/// `date_of_birth` everywhere, `name` inside profiles and event properties.
fn mask_pii(v: &mut Value, in_profile: bool) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                let pii = matches!(k.as_str(), "email" | "date_of_birth") || (in_profile && k == "name");
                if pii && x.is_string() {
                    *x = Value::String("***".into());
                } else {
                    mask_pii(x, in_profile || k == "profile" || k == "event_properties");
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| mask_pii(x, in_profile)),
        _ => {}
    }
}
