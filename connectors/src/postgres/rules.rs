//! Segments and triggers in PostgreSQL: loading the enabled definitions, and
//! writing what the profile stage evaluated (memberships, trigger executions,
//! the workflow instances they start, webhook deliveries) inside the batch
//! transaction, so they advance together with the profiles and offsets.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use lifecycle_pipeline::rules::{Rules, SegmentRule, TriggerEval, TriggerRule};
use lifecycle_pipeline::segment::Condition;
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::profiles::{ProfileTx, user_uuid};

/// Loads the enabled segments and triggers. A stored condition that no longer
/// parses (written by hand, bypassing the API) is skipped and logged.
pub async fn load_rules(pool: &PgPool) -> Result<Rules, sqlx::Error> {
    let mut segments = Vec::new();
    for r in sqlx::query("SELECT id, name, conditions FROM user_segments WHERE enabled").fetch_all(pool).await? {
        let id: Uuid = r.get(0);
        match Condition::parse(&r.get::<Value, _>(2), "conditions") {
            Ok(condition) => segments.push(SegmentRule { id, name: r.get(1), condition }),
            Err(e) => tracing::warn!(segment = %id, error = %e, "segment skipped: its conditions do not parse"),
        }
    }
    let mut triggers = Vec::new();
    for r in sqlx::query("SELECT id, name, event_type, conditions, workflow_id FROM triggers WHERE enabled")
        .fetch_all(pool)
        .await?
    {
        let id: Uuid = r.get(0);
        match Condition::parse(&r.get::<Value, _>(3), "conditions") {
            Ok(condition) => triggers.push(TriggerRule {
                id,
                name: r.get(1),
                event_type: r.get(2),
                condition,
                workflow_id: r.get(4),
            }),
            Err(e) => tracing::warn!(trigger = %id, error = %e, "trigger skipped: its conditions do not parse"),
        }
    }
    Ok(Rules::new(segments, triggers))
}

/// A membership change, for the topic and webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipChange {
    /// The external user id.
    pub user_id: String,
    /// The segment.
    pub segment_id: Uuid,
    /// `segment.entered` or `segment.exited`.
    pub change: &'static str,
    /// When it was evaluated.
    pub at: DateTime<Utc>,
}

impl MembershipChange {
    /// The topic record / webhook payload.
    pub fn to_json(&self) -> Value {
        json!({
            "event_type": self.change, "user_id": self.user_id,
            "segment_id": self.segment_id, "evaluated_at": self.at,
        })
    }
}

/// The segments a user is in, each with its `valid_until`.
pub type SegmentsOf = Vec<(Uuid, Option<DateTime<Utc>>)>;

/// What a batch evaluated.
#[derive(Debug, Clone, Default)]
pub struct RuleWrites {
    /// Users whose memberships were evaluated, with the segments they are in
    /// now (and until when): their other memberships are removed.
    pub memberships: Vec<(String, SegmentsOf)>,
    /// Memberships that changed.
    pub changes: Vec<MembershipChange>,
    /// When to evaluate each user's segments again without new events (none: never).
    pub rechecks: Vec<(String, Option<DateTime<Utc>>)>,
    /// Trigger evaluations, in event order.
    pub triggers: Vec<TriggerEval>,
}

impl RuleWrites {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.memberships.is_empty() && self.triggers.is_empty() && self.rechecks.is_empty()
    }
}

impl ProfileTx {
    /// Current memberships of `user_ids` (external ids) in enabled segments;
    /// locks those users' rows for the rest of the transaction.
    pub async fn memberships(&mut self, user_ids: &[String]) -> Result<HashMap<String, HashSet<Uuid>>, sqlx::Error> {
        let uuids: Vec<Uuid> = user_ids.iter().map(|u| user_uuid(u)).collect();
        // Lock the users first, in one order: the segment sweeper locks them too,
        // so the two never evaluate one user at once.
        sqlx::query("SELECT 1 FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&uuids)
            .execute(&mut *self.tx)
            .await?;
        let rows = sqlx::query(
            "SELECT u.external_id, m.segment_id FROM user_segment_memberships m JOIN users u ON u.id = m.user_id \
             JOIN user_segments g ON g.id = m.segment_id AND g.enabled WHERE m.user_id = ANY($1)",
        )
        .bind(&uuids)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out: HashMap<String, HashSet<Uuid>> = HashMap::new();
        for r in rows {
            if let Some(ext) = r.get::<Option<String>, _>(0) {
                out.entry(ext).or_default().insert(r.get(1));
            }
        }
        Ok(out)
    }

    /// Locks up to `limit` users whose segments are due for a time-based
    /// re-evaluation (skipping rows another instance holds); external ids.
    pub async fn due_rechecks(&mut self, limit: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT u.external_id FROM segment_rechecks r JOIN users u ON u.id = r.user_id \
             WHERE r.due_at <= now() AND u.external_id IS NOT NULL ORDER BY r.due_at LIMIT $1 \
             FOR UPDATE OF r, u SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await
    }

    /// Writes what a re-evaluation found and commits.
    pub async fn commit_rules(mut self, w: &RuleWrites) -> Result<(), sqlx::Error> {
        self.write_rules(w).await?;
        self.tx.commit().await
    }

    /// Writes memberships, trigger executions, the instances triggers start
    /// (only for workflows that are active) and webhook deliveries. Runs after
    /// the users are written (foreign keys).
    pub(super) async fn write_rules(&mut self, w: &RuleWrites) -> Result<(), sqlx::Error> {
        if !w.memberships.is_empty() {
            let evaluated: Vec<Uuid> = w.memberships.iter().map(|(u, _)| user_uuid(u)).collect();
            let (mut users, mut segs, mut until) = (Vec::new(), Vec::new(), Vec::new());
            for (u, list) in &w.memberships {
                for (s, v) in list {
                    users.push(user_uuid(u));
                    segs.push(*s);
                    until.push(*v);
                }
            }
            sqlx::query(
                "DELETE FROM user_segment_memberships m USING user_segments g WHERE m.user_id = ANY($1) \
                 AND g.id = m.segment_id AND g.enabled \
                 AND NOT EXISTS (SELECT 1 FROM UNNEST($2::uuid[], $3::uuid[]) AS v(u, s) \
                                 WHERE v.u = m.user_id AND v.s = m.segment_id)",
            )
            .bind(&evaluated)
            .bind(&users)
            .bind(&segs)
            .execute(&mut *self.tx)
            .await?;
            sqlx::query(
                "INSERT INTO user_segment_memberships (user_id, segment_id, evaluated_at, valid_until) \
                 SELECT v.u, v.s, now(), v.t FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[]) AS v(u, s, t) \
                 JOIN user_segments g ON g.id = v.s \
                 ON CONFLICT (user_id, segment_id) DO UPDATE SET evaluated_at = now(), valid_until = EXCLUDED.valid_until",
            )
            .bind(&users)
            .bind(&segs)
            .bind(&until)
            .execute(&mut *self.tx)
            .await?;
        }
        if !w.rechecks.is_empty() {
            let users: Vec<Uuid> = w.rechecks.iter().map(|(u, _)| user_uuid(u)).collect();
            let due: Vec<Option<DateTime<Utc>>> = w.rechecks.iter().map(|(_, d)| *d).collect();
            sqlx::query(
                "DELETE FROM segment_rechecks r USING UNNEST($1::uuid[], $2::timestamptz[]) AS v(u, d) \
                 WHERE r.user_id = v.u AND v.d IS NULL",
            )
            .bind(&users)
            .bind(&due)
            .execute(&mut *self.tx)
            .await?;
            sqlx::query(
                "INSERT INTO segment_rechecks (user_id, due_at) SELECT v.u, v.d \
                 FROM UNNEST($1::uuid[], $2::timestamptz[]) AS v(u, d) WHERE v.d IS NOT NULL \
                 ON CONFLICT (user_id) DO UPDATE SET due_at = EXCLUDED.due_at",
            )
            .bind(&users)
            .bind(&due)
            .execute(&mut *self.tx)
            .await?;
        }
        if !w.changes.is_empty() {
            let types: Vec<&str> = w.changes.iter().map(|c| c.change).collect();
            let payloads: Vec<Value> = w.changes.iter().map(MembershipChange::to_json).collect();
            enqueue_webhooks(&mut self.tx, &types, &payloads).await?;
        }
        let started: Vec<&TriggerEval> = w.triggers.iter().filter(|t| t.start.is_some()).collect();
        if !started.is_empty() {
            let ids: Vec<Uuid> = started.iter().filter_map(|t| t.start.map(|s| s.1)).collect();
            let wfs: Vec<Uuid> = started.iter().filter_map(|t| t.start.map(|s| s.0)).collect();
            let users: Vec<Uuid> = started.iter().map(|t| user_uuid(&t.user_id)).collect();
            let vars: Vec<Value> = started.iter().map(|t| t.variables.clone()).collect();
            let trig: Vec<Uuid> = started.iter().map(|t| t.trigger_id).collect();
            sqlx::query(
                "INSERT INTO workflow_executions (id, workflow_id, user_id, status, variables, trigger_id, wake_at) \
                 SELECT v.id, v.wf, v.u, 'pending', v.vars, v.trig, now() \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::jsonb[], $5::uuid[]) AS v(id, wf, u, vars, trig) \
                 JOIN workflows w ON w.id = v.wf AND w.status = 'active' \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&ids)
            .bind(&wfs)
            .bind(&users)
            .bind(&vars)
            .bind(&trig)
            .execute(&mut *self.tx)
            .await?;
        }
        if !w.triggers.is_empty() {
            let trig: Vec<Uuid> = w.triggers.iter().map(|t| t.trigger_id).collect();
            let users: Vec<Uuid> = w.triggers.iter().map(|t| user_uuid(&t.user_id)).collect();
            let data: Vec<Value> = w.triggers.iter().map(|t| t.event.clone()).collect();
            let met: Vec<bool> = w.triggers.iter().map(|t| t.met).collect();
            let inst: Vec<Option<Uuid>> = w.triggers.iter().map(|t| t.start.map(|s| s.1)).collect();
            let events: Vec<&str> = w.triggers.iter().map(|t| t.event_id.as_str()).collect();
            sqlx::query(
                "INSERT INTO trigger_executions (trigger_id, user_id, event_data, condition_met, workflow_execution_id, event_id) \
                 SELECT v.t, v.u, v.d, v.m, e.id, v.ev \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::jsonb[], $4::bool[], $5::uuid[], $6::text[]) AS v(t, u, d, m, i, ev) \
                 JOIN triggers t ON t.id = v.t \
                 LEFT JOIN workflow_executions e ON e.id = v.i",
            )
            .bind(&trig)
            .bind(&users)
            .bind(&data)
            .bind(&met)
            .bind(&inst)
            .bind(&events)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }
}

/// Queues one delivery per enabled subscription of each event's type.
pub async fn enqueue_webhooks(
    conn: &mut sqlx::PgConnection,
    types: &[&str],
    payloads: &[Value],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO webhook_deliveries (subscription_id, url, event_type, event_id, payload) \
         SELECT s.id, s.url, v.t, gen_random_uuid(), v.p FROM UNNEST($1::text[], $2::jsonb[]) AS v(t, p) \
         JOIN webhook_subscriptions s ON s.enabled AND v.t = ANY(s.event_types)",
    )
    .bind(types)
    .bind(payloads)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
