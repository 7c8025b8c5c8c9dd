//! Handlers of the users API.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Map, Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::http::auth::{Access, Caller, Role};
use crate::http::error::{ApiError, json_body};
use crate::postgres::profiles::{resolve_user as resolve, user_uuid};

/// Handler state.
#[derive(Clone)]
pub struct UsersState {
    /// The pipeline database.
    pub pool: PgPool,
}

const MAX_BODY: usize = 4 * 1024 * 1024;
const MAX_BATCH: usize = 1000;
/// Longest string (value or key) in `attributes`, in bytes.
const MAX_ATTRIBUTE_LEN: usize = 8192;

/// Routes (without authentication: the caller's router adds it).
pub fn router(state: UsersState) -> Router {
    Router::new()
        .route("/users", post(create))
        .route("/users/batch", post(batch))
        .route("/users/{id}", get(read).patch(update).delete(remove))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// What a database error means to the caller, by its class (SQLSTATE): a
/// conflict or a refused value is the request's (4xx); only an unavailable
/// database is a 503, and a misconfigured one a 500.
fn db_error(e: sqlx::Error) -> ApiError {
    if let sqlx::Error::Database(d) = &e
        && d.code().as_deref() == Some("23505")
    {
        let field = if d.constraint().is_some_and(|c| c.contains("email")) { "email" } else { "user_id" };
        return ApiError::new(StatusCode::CONFLICT, "conflict", format!("a user with this {field} exists"))
            .with_details(json!({ "field": field }));
    }
    crate::http::error::db_error("database", e)
}

fn mask(s: &str) -> String {
    match s.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
        None => format!("{}***", s.chars().next().unwrap_or('*')),
    }
}

/// The public JSON of a user row; PII masked unless the caller is an admin.
fn user_json(row: &sqlx::postgres::PgRow, caller: &Caller) -> Value {
    let profile: Option<Value> = row.get("profile");
    let attributes: Value = row.get::<Option<Value>, _>("attributes").unwrap_or_else(|| json!({}));
    let mut email: Option<String> = row.get("email");
    let mut name = attributes
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| profile.as_ref().and_then(|p| p.get("name")).and_then(Value::as_str).map(str::to_owned));
    let mut profile = profile.unwrap_or(Value::Null);
    let mut attributes = attributes;
    if caller.role != Role::Admin {
        email = email.map(|e| mask(&e));
        name = name.map(|n| mask(&n));
        for doc in [&mut profile, &mut attributes] {
            if let Some(o) = doc.as_object_mut() {
                for key in ["email", "name"] {
                    if let Some(Value::String(s)) = o.get(key) {
                        let masked = mask(s);
                        o.insert(key.into(), Value::String(masked));
                    }
                }
            }
            if let Some(d) = doc.get_mut("demographic").and_then(Value::as_object_mut)
                && d.get("date_of_birth").is_some_and(|v| !v.is_null())
            {
                d.insert("date_of_birth".into(), Value::String("***".into()));
            }
            if let Some(o) = doc.as_object_mut()
                && o.get("date_of_birth").is_some_and(|v| !v.is_null())
            {
                o.insert("date_of_birth".into(), Value::String("***".into()));
            }
        }
    }
    json!({
        "id": row.get::<Uuid, _>("id"),
        "user_id": row.get::<Option<String>, _>("external_id"),
        "email": email,
        "name": name,
        "lifecycle_stage": row.get::<String, _>("current_lifecycle_stage"),
        "account_status": row.get::<String, _>("account_status"),
        "attributes": attributes,
        "profile": profile,
        "created_at": row.get::<Option<chrono::DateTime<chrono::Utc>>, _>("created_at"),
        "updated_at": row.get::<Option<chrono::DateTime<chrono::Utc>>, _>("updated_at"),
        "pii_masked": caller.role != Role::Admin,
    })
}

const COLUMNS: &str =
    "id, external_id, email, current_lifecycle_stage, account_status, attributes, profile, created_at, updated_at";

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    json_body(body, MAX_BODY)
}

/// A validated create or update request.
struct UserInput {
    user_id: Option<String>,
    email: Option<Option<String>>,
    attributes: Map<String, Value>,
}

const FIELDS: [&str; 4] = ["user_id", "email", "name", "attributes"];

fn user_input(v: &Value, creating: bool) -> Result<UserInput, ApiError> {
    let obj = v.as_object().ok_or_else(|| ApiError::bad_field("body", "wrong_type", "a user must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_field(
            k,
            "unknown_field",
            format!("unknown field '{k}'; allowed: {}", FIELDS.join(", ")),
        ));
    }
    let string = |k: &str, max: usize| -> Result<Option<Option<String>>, ApiError> {
        match obj.get(k) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) if s.trim().is_empty() || s.chars().count() > max => {
                Err(ApiError::bad_field(k, "invalid_value", format!("{k} must be 1-{max} characters")))
            }
            Some(Value::String(s)) if s.contains('\0') => Err(ApiError::bad_field(
                k,
                "unsupported_character",
                format!("{k} contains U+0000 (NUL), which the database cannot store"),
            )),
            Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
            Some(_) => Err(ApiError::bad_field(k, "wrong_type", format!("{k} must be a string"))),
        }
    };
    let user_id = string("user_id", 128)?.flatten();
    if !creating && user_id.is_some() {
        return Err(ApiError::bad_field("user_id", "invalid_value", "user_id cannot be changed"));
    }
    let email = string("email", 255)?;
    if let Some(Some(e)) = &email {
        let ok = e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'));
        if !ok {
            return Err(ApiError::bad_field("email", "invalid_value", "email must look like name@domain.tld"));
        }
    }
    if creating && !matches!(email, Some(Some(_))) {
        return Err(ApiError::bad_field("email", "missing_required_field", "email is required"));
    }
    let mut attributes = match obj.get("attributes") {
        None | Some(Value::Null) => Map::new(),
        Some(v @ Value::Object(o)) => {
            if let Some(e) = lifecycle_pipeline::validate::unstorable("attributes", v, MAX_ATTRIBUTE_LEN).first() {
                return Err(ApiError::bad_field(&e.field, e.code.as_str(), e.message.clone()));
            }
            o.clone()
        }
        Some(_) => return Err(ApiError::bad_field("attributes", "wrong_type", "attributes must be an object")),
    };
    if let Some(name) = string("name", 255)? {
        attributes.insert("name".into(), name.map_or(Value::Null, Value::String));
    }
    Ok(UserInput { user_id, email, attributes })
}

async fn insert(pool: &PgPool, input: UserInput) -> Result<sqlx::postgres::PgRow, ApiError> {
    let external = input.user_id.unwrap_or_else(|| Uuid::new_v4().to_string());
    sqlx::query(&format!(
        "INSERT INTO users (id, external_id, email, current_lifecycle_stage, attributes) \
         VALUES ($1, $2, $3, 'Acquisition', $4) RETURNING {COLUMNS}"
    ))
    .bind(user_uuid(&external))
    .bind(&external)
    .bind(input.email.flatten())
    .bind(Value::Object(input.attributes))
    .fetch_one(pool)
    .await
    .map_err(db_error)
}

async fn read(
    State(s): State<UsersState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
        .bind(resolve(&id))
        .fetch_optional(&s.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(user_json(&row, &caller)).into_response())
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no user '{id}'")).with_details(json!({ "field": "id" }))
}

async fn create(
    State(s): State<UsersState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let input = user_input(&parse_body(body)?, true)?;
    let row = insert(&s.pool, input).await?;
    Ok((StatusCode::CREATED, Json(user_json(&row, &caller))).into_response())
}

async fn update(
    State(s): State<UsersState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let input = user_input(&parse_body(body)?, false)?;
    let row = sqlx::query(&format!(
        "UPDATE users SET email = CASE WHEN $2 THEN $3 ELSE email END, \
           attributes = jsonb_strip_nulls(COALESCE(attributes, '{{}}'::jsonb) || $4), updated_at = now() \
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(resolve(&id))
    .bind(input.email.is_some())
    .bind(input.email.flatten())
    .bind(Value::Object(input.attributes))
    .fetch_optional(&s.pool)
    .await
    .map_err(db_error)?
    .ok_or_else(|| not_found(&id))?;
    Ok(Json(user_json(&row, &caller)).into_response())
}

async fn remove(
    State(s): State<UsersState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Access::Admin)?;
    let uid = resolve(&id);
    // Concurrent deletes of one user (or a delete racing the profile stage)
    // can meet in a deadlock or a serialization failure; PostgreSQL has then
    // rolled one back, and running it again is the documented remedy.
    let mut attempt = 0;
    let deleted = loop {
        attempt += 1;
        match delete_user(&s.pool, uid).await {
            Err(e) if attempt < 5 && retryable(&e) => {
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            outcome => break outcome.map_err(db_error)?,
        }
    };
    if !deleted {
        return Err(not_found(&id));
    }
    tracing::info!(target: "audit", key = %caller.name, user = %uid, "user deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes a user and its dedup ledger in one transaction; false if no such user.
/// The user's row is locked first, so a second delete waits and then finds nothing.
async fn delete_user(pool: &PgPool, uid: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM users WHERE id = $1 FOR UPDATE").bind(uid).fetch_optional(&mut *tx).await?;
    if found.is_none() {
        return Ok(false);
    }
    sqlx::query("DELETE FROM processed_events WHERE user_id = $1").bind(uid).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM users WHERE id = $1").bind(uid).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(true)
}

/// Deadlock detected (40P01) or serialization failure (40001): safe to run again.
fn retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

async fn batch(
    State(s): State<UsersState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Access::Write)?;
    let items = match parse_body(body)? {
        Value::Array(items) => items,
        Value::Object(mut o) => match o.remove("users") {
            Some(Value::Array(items)) => items,
            _ => return Err(ApiError::bad_field("users", "missing_required_field", "body must be {\"users\": [...]}")),
        },
        _ => return Err(ApiError::bad_field("users", "wrong_type", "body must be {\"users\": [...]}")),
    };
    if items.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "batch_too_large",
            format!("at most {MAX_BATCH} users per batch, got {}", items.len()),
        )
        .with_details(json!({ "field": "users", "limit": MAX_BATCH, "count": items.len() })));
    }
    let mut results = Vec::with_capacity(items.len());
    let mut created = 0;
    for (index, item) in items.iter().enumerate() {
        let outcome = match user_input(item, true) {
            Ok(input) => insert(&s.pool, input).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(row) => {
                created += 1;
                results.push(json!({ "index": index, "status": 201, "user": user_json(&row, &caller) }));
            }
            Err(e) => results.push(json!({ "index": index, "status": e.status.as_u16(), "error": e })),
        }
    }
    let outcome = json!({ "created": created, "failed": items.len() - created, "results": results });
    if created == 0 && !items.is_empty() {
        // The same shape as every other 400 (and as /events/batch): the per-item results go in details.
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "all_users_rejected", "no user in the batch was created")
            .with_details(outcome));
    }
    Ok(Json(outcome).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_a_hint_only() {
        assert_eq!(mask("ada@example.com"), "a***@example.com");
        assert_eq!(mask("Ada Lovelace"), "A***");
        assert_eq!(resolve("user-1"), user_uuid("user-1"));
        let u = Uuid::new_v4();
        assert_eq!(resolve(&u.to_string()), u);
    }

    #[test]
    fn input_is_checked_field_by_field() {
        let bad =
            |v: Value, creating: bool| user_input(&v, creating).err().map(|e| (e.code, e.details["field"].clone()));
        assert_eq!(bad(json!({"user_id": "u"}), true), Some(("missing_required_field".into(), json!("email"))));
        assert_eq!(bad(json!({"email": "nope"}), true), Some(("invalid_value".into(), json!("email"))));
        assert_eq!(bad(json!({"email": "a@b.co", "nick": "x"}), true), Some(("unknown_field".into(), json!("nick"))));
        assert_eq!(bad(json!({"email": 5}), false), Some(("wrong_type".into(), json!("email"))));
        assert_eq!(bad(json!({"user_id": "x"}), false), Some(("invalid_value".into(), json!("user_id"))));
        assert!(user_input(&json!({"email": "a@b.co", "name": "A", "attributes": {"plan": "pro"}}), true).is_ok());
        assert_eq!(bad(json!({"email": "a\u{0}@b.co"}), true), Some(("unsupported_character".into(), json!("email"))));
        assert_eq!(
            bad(json!({"email": "a@b.co", "attributes": {"tags": ["x", "y\u{0}"]}}), true),
            Some(("unsupported_character".into(), json!("attributes.tags[1]")))
        );
        assert_eq!(
            bad(json!({"email": "a@b.co", "name": "n".repeat(256)}), true),
            Some(("invalid_value".into(), json!("name")))
        );
    }
}
