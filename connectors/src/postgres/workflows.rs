//! Workflow instances in PostgreSQL: the engine's durable state.
//!
//! An instance row is the truth; Kafka commands only ask for rows. Engines
//! claim due rows with a lease (`FOR UPDATE SKIP LOCKED`), so several engines
//! share the work, a crashed engine's instances are taken over when its lease
//! ends, and an engine restarted under the same node id takes its own back at
//! once. Every save checks the lease and that nobody cancelled the instance.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lifecycle_pipeline::workflow::instance::Instance;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::rules::enqueue_webhooks;
use crate::kafka::sink::{KafkaSink, OutRecord};

/// A stored workflow version.
#[derive(Debug, Clone)]
pub struct Definition {
    /// `workflows.id` (one version).
    pub id: Uuid,
    /// Name shared by its versions.
    pub name: String,
    /// 1, 2, ...
    pub version_number: i32,
    /// draft, active, inactive or archived.
    pub status: String,
    /// The BPMN document.
    pub bpmn_xml: String,
}

/// Loads a workflow version.
pub async fn definition(pool: &PgPool, id: Uuid) -> Result<Option<Definition>, sqlx::Error> {
    let row = sqlx::query("SELECT id, name, version_number, status, bpmn_xml FROM workflows WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| Definition {
        id: r.get(0),
        name: r.get(1),
        version_number: r.get(2),
        status: r.get(3),
        bpmn_xml: r.get(4),
    }))
}

/// A request to start an instance.
#[derive(Debug, Clone)]
pub struct NewInstance {
    /// The instance id (chosen by the caller, so a repeated request is a no-op).
    pub id: Uuid,
    /// The workflow version.
    pub workflow_id: Uuid,
    /// `users.id`.
    pub user_id: Uuid,
    /// Start variables.
    pub variables: Value,
    /// Where to POST the outcome.
    pub callback_url: Option<String>,
    /// The trigger that started it.
    pub trigger_id: Option<Uuid>,
}

/// Why an instance was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No such workflow.
    #[error("workflow {0} does not exist")]
    NoWorkflow(Uuid),
    /// The workflow is not active.
    #[error("workflow {0} is {1}; only active workflows run")]
    NotActive(Uuid, String),
    /// No such user.
    #[error("user {0} does not exist")]
    NoUser(Uuid),
    /// Another reference (e.g. `trigger_id`) names nothing.
    #[error("a reference names nothing: {0}")]
    BadReference(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Inserts a pending instance, due now. Returns false when it already existed.
pub async fn insert_instance(pool: &PgPool, n: &NewInstance) -> Result<bool, StartError> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM workflows WHERE id = $1")
        .bind(n.workflow_id)
        .fetch_optional(pool)
        .await?;
    match status.as_deref() {
        None => return Err(StartError::NoWorkflow(n.workflow_id)),
        Some("active") => {}
        Some(other) => return Err(StartError::NotActive(n.workflow_id, other.to_owned())),
    }
    let done = sqlx::query(
        "INSERT INTO workflow_executions (id, workflow_id, user_id, status, variables, callback_url, trigger_id, wake_at) \
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, now()) ON CONFLICT (id) DO NOTHING",
    )
    .bind(n.id)
    .bind(n.workflow_id)
    .bind(n.user_id)
    .bind(&n.variables)
    .bind(&n.callback_url)
    .bind(n.trigger_id)
    .execute(pool)
    .await;
    match done {
        Ok(d) => Ok(d.rows_affected() == 1),
        Err(sqlx::Error::Database(d))
            if d.code().as_deref() == Some("23503") && d.constraint().is_some_and(|c| c.contains("user")) =>
        {
            Err(StartError::NoUser(n.user_id))
        }
        Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("23503") => {
            Err(StartError::BadReference(d.constraint().unwrap_or("foreign key").to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

/// An instance an engine claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Instance id.
    pub id: Uuid,
    /// Workflow version.
    pub workflow_id: Uuid,
    /// `users.id`.
    pub user_id: Uuid,
    /// The user's external id.
    pub external_user_id: Option<String>,
    /// The stored instance, none before its start.
    pub state: Option<Value>,
    /// Start variables.
    pub variables: Value,
    /// Where to POST the outcome.
    pub callback_url: Option<String>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Claims up to `limit` due instances for `owner` for `lease`, skipping
/// `busy` (instances this engine is already working on).
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
    limit: i64,
    busy: &[Uuid],
) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH due AS ( \
           SELECT id FROM workflow_executions \
           WHERE status IN ('pending', 'running') AND wake_at <= now() AND NOT (id = ANY($4)) \
             AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $1) \
           ORDER BY wake_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE workflow_executions e SET lease_owner = $1, lease_until = now() + make_interval(secs => $2) \
         FROM due WHERE e.id = due.id \
         RETURNING e.id, e.workflow_id, e.user_id, (SELECT external_id FROM users u WHERE u.id = e.user_id), \
           e.state, e.variables, e.callback_url",
    )
    .bind(owner)
    .bind(secs(lease))
    .bind(limit)
    .bind(busy)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Claimed {
            id: r.get(0),
            workflow_id: r.get(1),
            user_id: r.get(2),
            external_user_id: r.get(3),
            state: r.get(4),
            variables: r.get::<Option<Value>, _>(5).unwrap_or(Value::Null),
            callback_url: r.get(6),
        })
        .collect())
}

/// One service-task attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The node.
    pub step: String,
    /// 1, 2, ...
    pub attempt: i32,
    /// The error, when it failed.
    pub error: Option<String>,
    /// The idempotency key it was made under.
    pub idempotency_key: String,
    /// How long it took.
    pub duration_ms: i32,
}

/// An instance's failure columns.
#[derive(Debug, Clone)]
pub struct FailureCols {
    /// `task_failed`, `condition_error`, ...
    pub error_type: String,
    /// The last error.
    pub error_message: String,
    /// The node.
    pub failed_step: String,
    /// The trace: the instance's last steps.
    pub stack_trace: String,
}

/// What the engine stores after a step.
#[derive(Debug, Clone)]
pub struct Save {
    /// Instance.
    pub id: Uuid,
    /// Status (`running`, `completed`, `failed`).
    pub status: &'static str,
    /// The serialised instance.
    pub state: Value,
    /// The node of the first live token.
    pub current_step: Option<String>,
    /// When to look again (none: terminal or working now).
    pub wake_at: Option<DateTime<Utc>>,
    /// Keep the lease (still working) or give it up (waiting or done).
    pub hold: bool,
    /// Retries made so far.
    pub retry_count: i32,
    /// Set when failed.
    pub failure: Option<FailureCols>,
    /// Attempts made since the last save.
    pub attempts: Vec<Attempt>,
    /// Webhook events to queue (`workflow.completed`, ...) with their payloads.
    pub webhooks: Vec<(&'static str, Value)>,
    /// The callback to queue: URL, event type, payload.
    pub callback: Option<(String, &'static str, Value)>,
    /// Kafka records (workflow.events, workflow.dlq) to relay once this commits.
    pub events: Vec<OutRecord>,
}

/// Stores a step if `owner` still holds the lease and nobody cancelled the
/// instance; returns false otherwise (the engine must drop the instance).
pub async fn save(pool: &PgPool, owner: &str, lease: Duration, s: &Save) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let terminal = matches!(s.status, "completed" | "failed" | "cancelled");
    let (et, em, fs, st) = match &s.failure {
        Some(f) => (Some(&f.error_type), Some(&f.error_message), Some(&f.failed_step), Some(&f.stack_trace)),
        None => (None, None, None, None),
    };
    let done = sqlx::query(
        "UPDATE workflow_executions SET status = $3, state = $4, current_node_id = $5, \
           wake_at = CASE WHEN $7 THEN now() ELSE $6 END, \
           lease_owner = CASE WHEN $7 THEN $2 ELSE NULL END, \
           lease_until = CASE WHEN $7 THEN now() + make_interval(secs => $8) ELSE NULL END, \
           retry_count = $9, error_type = $10, error_message = $11, failed_step = $12, stack_trace = $13, \
           completed_at = CASE WHEN $14 THEN now() ELSE NULL END, updated_at = now() \
         WHERE id = $1 AND lease_owner = $2 AND status IN ('pending', 'running')",
    )
    .bind(s.id)
    .bind(owner)
    .bind(s.status)
    .bind(&s.state)
    .bind(&s.current_step)
    .bind(s.wake_at)
    .bind(s.hold)
    .bind(secs(lease))
    .bind(s.retry_count)
    .bind(et)
    .bind(em)
    .bind(fs)
    .bind(st)
    .bind(terminal)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    if !s.attempts.is_empty() {
        let step: Vec<&str> = s.attempts.iter().map(|a| a.step.as_str()).collect();
        let attempt: Vec<i32> = s.attempts.iter().map(|a| a.attempt).collect();
        let outcome: Vec<&str> =
            s.attempts.iter().map(|a| if a.error.is_some() { "failed" } else { "succeeded" }).collect();
        let error: Vec<Option<&str>> = s.attempts.iter().map(|a| a.error.as_deref()).collect();
        let key: Vec<&str> = s.attempts.iter().map(|a| a.idempotency_key.as_str()).collect();
        let ms: Vec<i32> = s.attempts.iter().map(|a| a.duration_ms).collect();
        sqlx::query(
            "INSERT INTO workflow_execution_attempts (execution_id, step, attempt, outcome, error_message, idempotency_key, duration_ms) \
             SELECT $1, * FROM UNNEST($2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::int[])",
        )
        .bind(s.id)
        .bind(&step)
        .bind(&attempt)
        .bind(&outcome)
        .bind(&error)
        .bind(&key)
        .bind(&ms)
        .execute(&mut *tx)
        .await?;
    }
    if !s.webhooks.is_empty() {
        let types: Vec<&str> = s.webhooks.iter().map(|w| w.0).collect();
        let payloads: Vec<Value> = s.webhooks.iter().map(|w| w.1.clone()).collect();
        enqueue_webhooks(&mut tx, &types, &payloads).await?;
    }
    if let Some((url, event_type, payload)) = &s.callback {
        enqueue_callback(&mut tx, url, event_type, payload).await?;
    }
    enqueue_records(&mut tx, &s.events).await?;
    tx.commit().await?;
    Ok(true)
}

/// After an engine error on an instance: give the lease up and look again in `delay`.
pub async fn back_off(pool: &PgPool, id: Uuid, owner: &str, delay: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE workflow_executions SET lease_owner = NULL, lease_until = NULL, \
           wake_at = now() + make_interval(secs => $3) WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(secs(delay))
    .execute(pool)
    .await?;
    Ok(())
}

/// Queues a delivery of `payload` to an instance's callback URL (signed with
/// the engine's secret).
pub async fn enqueue_callback(
    conn: &mut sqlx::PgConnection,
    url: &str,
    event_type: &str,
    payload: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (url, event_type, event_id, payload) VALUES ($1, $2, gen_random_uuid(), $3)",
    )
    .bind(url)
    .bind(event_type)
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// Queues Kafka records in the outbox (relayed by [`relay`]).
pub async fn enqueue_records(conn: &mut sqlx::PgConnection, records: &[OutRecord]) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = records.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<Option<&[u8]>> = records.iter().map(|r| r.key.as_deref()).collect();
    let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    let names: Vec<Option<&str>> = records.iter().map(|r| r.headers.first().map(|h| h.0)).collect();
    let values: Vec<Option<&[u8]>> = records.iter().map(|r| r.headers.first().map(|h| h.1.as_slice())).collect();
    sqlx::query(
        "INSERT INTO workflow_event_outbox (topic, key, payload, header_name, header_value) \
         SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bytea[], $4::text[], $5::bytea[])",
    )
    .bind(&topics)
    .bind(&keys)
    .bind(&payloads)
    .bind(&names)
    .bind(&values)
    .execute(conn)
    .await?;
    Ok(())
}

/// Produces up to `limit` outbox records in order and deletes them, in one
/// transaction: a crash or a broker error leaves them for the next call
/// (at-least-once). Returns how many were relayed.
pub async fn relay(pool: &PgPool, sink: &KafkaSink, limit: i64) -> Result<usize, String> {
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    let rows = sqlx::query(
        "SELECT id, topic, key, payload, header_name, header_value FROM workflow_event_outbox \
         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let records: Vec<OutRecord> = rows
        .iter()
        .map(|r| {
            let name = match r.get::<Option<String>, _>(4).as_deref() {
                Some("event_type") => Some("event_type"),
                Some("reason") => Some("reason"),
                _ => None,
            };
            OutRecord {
                topic: r.get(1),
                key: r.get(2),
                payload: r.get(3),
                headers: name.zip(r.get::<Option<Vec<u8>>, _>(5)).into_iter().collect(),
            }
        })
        .collect();
    sink.send_all(&records).await.map_err(|e| format!("produce: {e}"))?;
    sqlx::query("DELETE FROM workflow_event_outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(records.len())
}

/// The `workflow.events` record of a cancellation, keyed by user.
fn cancelled_record(topic: &str, event: &Value) -> OutRecord {
    OutRecord {
        topic: topic.to_owned(),
        key: Some(event["user_id"].as_str().unwrap_or_default().as_bytes().to_vec()),
        payload: event.to_string().into_bytes(),
        headers: vec![("event_type", b"workflow.cancelled".to_vec())],
    }
}

/// Cancels an instance that has not ended: its state records the
/// cancellation, and the `workflow.cancelled` event is queued for webhooks and
/// the callback and its `events_topic` record in the same transaction.
/// Returns the event, or none when it had already ended or does not exist.
pub async fn cancel(pool: &PgPool, id: Uuid, events_topic: &str) -> Result<Option<Value>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT e.workflow_id, u.external_id, e.state, e.callback_url FROM workflow_executions e \
         LEFT JOIN users u ON u.id = e.user_id \
         WHERE e.id = $1 AND e.status IN ('pending', 'running', 'paused', 'failed') FOR UPDATE OF e",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let now = Utc::now();
    let state = row.get::<Option<Value>, _>(2).and_then(|v| serde_json::from_value::<Instance>(v).ok()).map(|mut i| {
        i.cancel(now);
        serde_json::to_value(i).unwrap_or(Value::Null)
    });
    sqlx::query(
        "UPDATE workflow_executions SET status = 'cancelled', state = COALESCE($2, state), completed_at = now(), \
         updated_at = now(), wake_at = NULL, lease_owner = NULL, lease_until = NULL WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .execute(&mut *tx)
    .await?;
    let event = serde_json::json!({
        "event_type": "workflow.cancelled", "event_id": Uuid::new_v4(), "instance_id": id,
        "workflow_id": row.get::<Uuid, _>(0), "user_id": row.get::<Option<String>, _>(1), "status": "cancelled", "at": now,
    });
    enqueue_webhooks(&mut tx, &["workflow.cancelled"], std::slice::from_ref(&event)).await?;
    if let Some(url) = row.get::<Option<String>, _>(3) {
        enqueue_callback(&mut tx, &url, "workflow.cancelled", &event).await?;
    }
    enqueue_records(&mut tx, &[cancelled_record(events_topic, &event)]).await?;
    tx.commit().await?;
    Ok(Some(event))
}

/// Gives up every lease `owner` holds (a clean shutdown).
pub async fn release(pool: &PgPool, owner: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE workflow_executions SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1 \
         AND status IN ('pending', 'running')",
    )
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// A webhook delivery to make.
#[derive(Clone)]
pub struct Delivery {
    /// Delivery id.
    pub id: Uuid,
    /// Target.
    pub url: String,
    /// `workflow.completed`, `segment.entered`, ...
    pub event_type: String,
    /// Stable id of the event (receivers deduplicate on it).
    pub event_id: Uuid,
    /// Body.
    pub payload: Value,
    /// Attempts made before this one.
    pub attempts: i32,
    /// The subscription's secret; none for instance callbacks.
    pub secret: Option<String>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("url", &crate::secret::redact_url(&self.url))
            .field("event_type", &self.event_type)
            .field("event_id", &self.event_id)
            .field("attempts", &self.attempts)
            .field("secret", &self.secret.as_deref().map(crate::secret::shown))
            .finish_non_exhaustive()
    }
}

/// Claims up to `limit` due deliveries for `lease`.
pub async fn claim_deliveries(pool: &PgPool, limit: i64, lease: Duration) -> Result<Vec<Delivery>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH due AS (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= now() \
                      ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2) FROM due \
         WHERE d.id = due.id \
         RETURNING d.id, d.url, d.event_type, d.event_id, d.payload, d.attempts, \
           (SELECT secret FROM webhook_subscriptions s WHERE s.id = d.subscription_id)",
    )
    .bind(limit)
    .bind(secs(lease))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Delivery {
            id: r.get(0),
            url: r.get(1),
            event_type: r.get(2),
            event_id: r.get(3),
            payload: r.get(4),
            attempts: r.get(5),
            secret: r.get(6),
        })
        .collect())
}

/// Records a delivery's outcome: delivered, retried after `retry_in`, or
/// (no `retry_in`) given up.
pub async fn delivery_done(
    pool: &PgPool,
    id: Uuid,
    error: Option<&str>,
    retry_in: Option<Duration>,
) -> Result<(), sqlx::Error> {
    let status = match (error, retry_in) {
        (None, _) => "delivered",
        (Some(_), Some(_)) => "pending",
        (Some(_), None) => "failed",
    };
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1, last_error = $3, \
           next_attempt_at = now() + make_interval(secs => $4), \
           delivered_at = CASE WHEN $2 = 'delivered' THEN now() ELSE NULL END WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(error)
    .bind(retry_in.map_or(0.0, secs))
    .execute(pool)
    .await?;
    Ok(())
}
