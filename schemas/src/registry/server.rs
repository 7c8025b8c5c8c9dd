//! Confluent REST routes of the registry.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use lifecycle_connectors::http::ops;
use lifecycle_pipeline::metrics::HttpMetrics;
use serde::Deserialize;
use serde_json::{Value, json};

use super::compat::{self, Level};
use super::store::{Registered, Store, StoreError, VersionSel};

/// Handler state.
#[derive(Clone)]
pub struct RegistryState {
    /// Storage.
    pub store: Store,
    /// HTTP metrics.
    pub metrics: HttpMetrics,
    /// Exposed on `/metrics`.
    pub registry: prometheus::Registry,
}

/// A Confluent-style error: HTTP status plus `{error_code, message}`.
#[derive(Debug)]
pub struct SrError {
    status: StatusCode,
    error_code: i64,
    message: String,
}

impl SrError {
    fn new(status: StatusCode, error_code: i64, message: impl Into<String>) -> Self {
        Self { status, error_code, message: message.into() }
    }
    fn subject_not_found(subject: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, 40401, format!("Subject '{subject}' not found."))
    }
    fn version_not_found(subject: &str, v: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, 40402, format!("Version {v} not found for subject '{subject}'."))
    }
    fn schema_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, 40403, "Schema not found")
    }
    fn invalid_schema(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, 42201, message)
    }
}

impl From<StoreError> for SrError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Incompatible(msgs) => Self::new(
                StatusCode::CONFLICT,
                409,
                format!("Schema being registered is incompatible with an earlier schema; details: {}", msgs.join("; ")),
            ),
            other => {
                tracing::error!(error = %other, "registry store failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, 50001, "Error in the backend data store")
            }
        }
    }
}

impl IntoResponse for SrError {
    fn into_response(self) -> Response {
        (
            self.status,
            [("content-type", "application/vnd.schemaregistry.v1+json")],
            json!({ "error_code": self.error_code, "message": self.message }).to_string(),
        )
            .into_response()
    }
}

type SrResult = Result<Response, SrError>;

fn ok(v: Value) -> SrResult {
    Ok((StatusCode::OK, [("content-type", "application/vnd.schemaregistry.v1+json")], v.to_string()).into_response())
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn version_json(r: &Registered) -> Value {
    let mut v = json!({ "subject": r.subject, "version": r.version, "id": r.id, "schema": r.schema });
    if r.schema_type != "AVRO" {
        v["schemaType"] = json!(r.schema_type);
    }
    v
}

fn parse_version(subject: &str, v: &str) -> Result<VersionSel, SrError> {
    match v {
        "latest" | "-1" => Ok(VersionSel::Latest),
        n => match n.parse::<i32>() {
            Ok(n) if n > 0 => Ok(VersionSel::Number(n)),
            _ => Err(SrError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                42202,
                format!(
                    "The specified version '{v}' of subject '{subject}' is not valid. Versions are positive integers or 'latest'."
                ),
            )),
        },
    }
}

/// Body of register / lookup / compatibility requests.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: Option<String>,
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

/// Parses a request body into `(text, identity, parsed schema)`.
fn schema_from_body(body: &[u8]) -> Result<(String, String, apache_avro::Schema), SrError> {
    let b: SchemaBody = serde_json::from_slice(body)
        .map_err(|e| SrError::new(StatusCode::UNPROCESSABLE_ENTITY, 422, format!("Unrecognized request body: {e}")))?;
    let text = b.schema.ok_or_else(|| SrError::invalid_schema("Empty schema: the 'schema' field is required"))?;
    if let Some(t) = b.schema_type.as_deref()
        && !t.eq_ignore_ascii_case("AVRO")
    {
        return Err(SrError::invalid_schema(format!("Schema type {t} is not supported by this registry (AVRO only)")));
    }
    if !b.references.is_empty() {
        return Err(SrError::invalid_schema("Schema references are not supported by this registry"));
    }
    let schema = compat::parse(&text).map_err(|e| SrError::invalid_schema(format!("Invalid schema: {e}")))?;
    let identity = compat::identity(&text).map_err(|e| SrError::invalid_schema(format!("Invalid schema: {e}")))?;
    Ok((text, identity, schema))
}

/// Builds the router.
pub fn router(state: RegistryState) -> Router {
    let api = Router::new()
        .route("/", get(|| async { Json(json!({})) }))
        .route("/schemas/types", get(|| async { Json(json!(["AVRO"])) }))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_by_id))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version).delete(delete_version))
        .route("/subjects/{subject}/versions/{version}/schema", get(version_schema))
        .route("/subjects/{subject}/versions/{version}/referencedby", get(referenced_by))
        .route("/compatibility/subjects/{subject}/versions/{version}", post(compatibility_one))
        .route("/compatibility/subjects/{subject}/versions", post(compatibility_all))
        .route("/config", get(get_global_config).put(put_global_config))
        .route("/config/{subject}", get(get_subject_config).put(put_subject_config).delete(delete_subject_config))
        .route("/mode", get(|| async { Json(json!({"mode": "READWRITE"})) }))
        .route("/healthz", get(healthz))
        .with_state(state.clone());
    api.route("/metrics", get(ops::metrics_handler).with_state(state.registry.clone()))
        .fallback(|| async { SrError::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found") })
        .layer(middleware::from_fn_with_state(state.metrics.clone(), ops::track))
}

async fn healthz(State(s): State<RegistryState>) -> Response {
    match s.store.ping().await {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "error": e.to_string()})))
            .into_response(),
    }
}

/// The id from the path and its `(schema text, type)`; 40403 when there is none.
async fn existing_schema(s: &RegistryState, id: &str) -> Result<(i32, String, String), SrError> {
    let id: i32 = id.parse().map_err(|_| SrError::schema_not_found())?;
    let (text, ty) = s.store.schema_by_id(id).await?.ok_or_else(SrError::schema_not_found)?;
    Ok((id, text, ty))
}

async fn schema_by_id(State(s): State<RegistryState>, Path(id): Path<String>) -> SrResult {
    let (_, text, ty) = existing_schema(&s, &id).await?;
    let mut v = json!({ "schema": text });
    if ty != "AVRO" {
        v["schemaType"] = json!(ty);
    }
    ok(v)
}

async fn raw_schema_by_id(State(s): State<RegistryState>, Path(id): Path<String>) -> SrResult {
    let (_, text, _) = existing_schema(&s, &id).await?;
    ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn subjects_by_id(
    State(s): State<RegistryState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> SrResult {
    let (id, _, _) = existing_schema(&s, &id).await?;
    let mut subjects: Vec<String> =
        s.store.usages(id, flag(&q, "deleted")).await?.into_iter().map(|(s, _)| s).collect();
    subjects.dedup();
    ok(json!(subjects))
}

async fn versions_by_id(
    State(s): State<RegistryState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> SrResult {
    let (id, _, _) = existing_schema(&s, &id).await?;
    let usages = s.store.usages(id, flag(&q, "deleted")).await?;
    ok(json!(
        usages.iter().map(|(subject, version)| json!({"subject": subject, "version": version})).collect::<Vec<_>>()
    ))
}

async fn subjects(State(s): State<RegistryState>, Query(q): Query<HashMap<String, String>>) -> SrResult {
    let prefix = q.get("subjectPrefix").map_or("", String::as_str);
    ok(json!(s.store.subjects(flag(&q, "deleted"), prefix).await?))
}

async fn versions(
    State(s): State<RegistryState>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> SrResult {
    let v = s.store.versions(&subject, flag(&q, "deleted")).await?;
    if v.is_empty() {
        return Err(SrError::subject_not_found(&subject));
    }
    ok(json!(v))
}

async fn register(State(s): State<RegistryState>, Path(subject): Path<String>, body: Bytes) -> SrResult {
    let (text, identity, schema) = schema_from_body(&body)?;
    let r = s.store.register(&subject, &text, &identity, &schema).await?;
    tracing::info!(subject, id = r.id, version = r.version, "schema registered");
    ok(json!({ "id": r.id }))
}

async fn lookup(
    State(s): State<RegistryState>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> SrResult {
    let (_, identity, _) = schema_from_body(&body)?;
    let deleted = flag(&q, "deleted");
    match s.store.lookup(&subject, &identity, deleted).await? {
        Some(r) => ok(version_json(&r)),
        None if s.store.versions(&subject, deleted).await?.is_empty() => Err(SrError::subject_not_found(&subject)),
        None => Err(SrError::schema_not_found()),
    }
}

async fn get_version(
    s: &RegistryState,
    subject: &str,
    v: &str,
    q: &HashMap<String, String>,
) -> Result<Registered, SrError> {
    let sel = parse_version(subject, v)?;
    if let Some(r) = s.store.version(subject, sel, flag(q, "deleted")).await? {
        return Ok(r);
    }
    if s.store.versions(subject, true).await?.is_empty() {
        Err(SrError::subject_not_found(subject))
    } else {
        Err(SrError::version_not_found(subject, v))
    }
}

async fn version(
    State(s): State<RegistryState>,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> SrResult {
    ok(version_json(&get_version(&s, &subject, &v, &q).await?))
}

async fn version_schema(
    State(s): State<RegistryState>,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> SrResult {
    let r = get_version(&s, &subject, &v, &q).await?;
    ok(serde_json::from_str(&r.schema).unwrap_or(Value::String(r.schema)))
}

async fn referenced_by(
    State(s): State<RegistryState>,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> SrResult {
    get_version(&s, &subject, &v, &q).await?;
    ok(json!([]))
}

async fn delete_subject(
    State(s): State<RegistryState>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> SrResult {
    let permanent = flag(&q, "permanent");
    let deleted = s.store.delete_subject(&subject, permanent).await?;
    if deleted.is_empty() {
        let live = s.store.versions(&subject, false).await?;
        if permanent && !live.is_empty() {
            return Err(SrError::new(
                StatusCode::NOT_FOUND,
                40405,
                format!("Subject '{subject}' was not deleted first before being permanently deleted"),
            ));
        }
        return Err(SrError::subject_not_found(&subject));
    }
    ok(json!(deleted))
}

async fn delete_version(
    State(s): State<RegistryState>,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> SrResult {
    let permanent = flag(&q, "permanent");
    let number = match parse_version(&subject, &v)? {
        VersionSel::Number(n) => n,
        VersionSel::Latest => get_version(&s, &subject, "latest", &q).await?.version,
    };
    match s.store.delete_version(&subject, number, permanent).await? {
        Some(n) => ok(json!(n)),
        None if s.store.versions(&subject, true).await?.is_empty() => Err(SrError::subject_not_found(&subject)),
        None if permanent => Err(SrError::new(
            StatusCode::NOT_FOUND,
            40407,
            format!("Subject '{subject}' Version {v} was not deleted first before being permanently deleted"),
        )),
        None => Err(SrError::version_not_found(&subject, &v)),
    }
}

async fn compatibility(
    s: &RegistryState,
    subject: &str,
    against: Option<&str>,
    q: &HashMap<String, String>,
    body: &[u8],
) -> SrResult {
    let (_, _, schema) = schema_from_body(body)?;
    let level = match s.store.level(subject).await? {
        Some(l) => l,
        None => s.store.level("").await?.unwrap_or(Level::Backward),
    };
    let mut existing = Vec::new();
    match against {
        Some(v) => {
            let r = get_version(s, subject, v, q).await?;
            existing
                .push((r.version, compat::parse(&r.schema).map_err(|e| SrError::from(StoreError::Corrupt(r.id, e)))?));
        }
        None => {
            for n in s.store.versions(subject, false).await? {
                if let Some(r) = s.store.version(subject, VersionSel::Number(n), false).await? {
                    existing.push((
                        r.version,
                        compat::parse(&r.schema).map_err(|e| SrError::from(StoreError::Corrupt(r.id, e)))?,
                    ));
                }
            }
        }
    }
    // Checking one given version: the level's direction applies to that version alone.
    let level = if against.is_some() { non_transitive(level) } else { level };
    let result = compat::check(level, &schema, &existing);
    let mut v = json!({ "is_compatible": result.is_ok() });
    if flag(q, "verbose") {
        v["messages"] = json!(result.err().unwrap_or_default());
    }
    ok(v)
}

fn non_transitive(level: Level) -> Level {
    match level {
        Level::BackwardTransitive => Level::Backward,
        Level::ForwardTransitive => Level::Forward,
        Level::FullTransitive => Level::Full,
        other => other,
    }
}

async fn compatibility_one(
    State(s): State<RegistryState>,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> SrResult {
    compatibility(&s, &subject, Some(&v), &q, &body).await
}

async fn compatibility_all(
    State(s): State<RegistryState>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> SrResult {
    compatibility(&s, &subject, None, &q, &body).await
}

fn level_from_body(body: &[u8]) -> Result<Level, SrError> {
    #[derive(Deserialize)]
    struct B {
        compatibility: Option<String>,
        #[serde(rename = "compatibilityLevel")]
        compatibility_level: Option<String>,
    }
    let invalid = |m: String| SrError::new(StatusCode::UNPROCESSABLE_ENTITY, 42203, m);
    let b: B = serde_json::from_slice(body).map_err(|e| invalid(format!("Invalid compatibility level: {e}")))?;
    let raw = b
        .compatibility
        .or(b.compatibility_level)
        .ok_or_else(|| invalid("Invalid compatibility level: missing 'compatibility'".into()))?;
    Level::parse(&raw).ok_or_else(|| invalid(format!("Invalid compatibility level: {raw}")))
}

async fn get_global_config(State(s): State<RegistryState>) -> SrResult {
    let level = s.store.level("").await?.unwrap_or(Level::Backward);
    ok(json!({ "compatibilityLevel": level.as_str() }))
}

async fn put_global_config(State(s): State<RegistryState>, body: Bytes) -> SrResult {
    let level = level_from_body(&body)?;
    s.store.set_level("", level).await?;
    ok(json!({ "compatibility": level.as_str() }))
}

async fn get_subject_config(
    State(s): State<RegistryState>,
    Path(subject): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> SrResult {
    match s.store.level(&subject).await? {
        Some(l) => ok(json!({ "compatibilityLevel": l.as_str() })),
        None if flag(&q, "defaultToGlobal") => get_global_config(State(s)).await,
        None => Err(SrError::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

async fn put_subject_config(State(s): State<RegistryState>, Path(subject): Path<String>, body: Bytes) -> SrResult {
    let level = level_from_body(&body)?;
    s.store.set_level(&subject, level).await?;
    ok(json!({ "compatibility": level.as_str() }))
}

async fn delete_subject_config(State(s): State<RegistryState>, Path(subject): Path<String>) -> SrResult {
    match s.store.delete_level(&subject).await? {
        Some(l) => ok(json!({ "compatibilityLevel": l.as_str() })),
        None => Err(SrError::subject_not_found(&subject)),
    }
}
