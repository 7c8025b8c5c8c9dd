//! The engine loop. Four tasks share one PostgreSQL pool:
//!
//! - commands: `workflow.commands` -> instance rows (`start`, `cancel`);
//!   malformed commands go to `workflow.dlq` with a reason;
//! - scheduler: claims due instances under a lease and drives each through
//!   its BPMN process, saving the state before every service call and after
//!   every answer (so a kill -9 loses at most the calls in flight, which run
//!   again under the same idempotency key: at-least-once);
//! - relay: produces the workflow.events / workflow.dlq records each save
//!   queued in its transaction (an outbox);
//! - deliveries: sends queued webhooks, signed, with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use lifecycle_connectors::http::egress::EgressPolicy;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_connectors::postgres::profiles::resolve_user;
use lifecycle_connectors::postgres::workflows::{
    self as store, Attempt, Claimed, FailureCols, NewInstance, Save, StartError,
};
use lifecycle_connectors::postgres::{self};
use lifecycle_pipeline::metrics::WorkflowMetrics;
use lifecycle_pipeline::workflow::bpmn::Process;
use lifecycle_pipeline::workflow::instance::{Effect, Instance, RetryPolicy, Status, idempotency_key};
use lifecycle_pipeline::{ReasonCode, Topic};
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::config::WorkflowConfig;
use super::tasks::{Call, Executor, Failure, action_name};
use crate::config::LifecycleConfig;
use crate::stages::common::{Polled, Poller, backoff, serve_metrics};

/// The engine's handle.
pub type EngineHandle = crate::stages::Handle<WorkflowMetrics>;

/// Namespace of workflow event ids (v5 of `instance:type:run`).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6c69_6665_6379_636c_6500_7766_6576_7431);

struct Engine {
    wc: WorkflowConfig,
    pool: PgPool,
    sink: KafkaSink,
    exec: Executor,
    events_topic: String,
    dlq_topic: String,
    definitions: Mutex<HashMap<Uuid, Arc<Result<Process, String>>>>,
    m: WorkflowMetrics,
    health: crate::stages::Health,
}

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Pending => "pending",
        Status::Running => "running",
        Status::Paused => "paused",
        Status::Completed => "completed",
        Status::Failed => "failed",
        Status::Cancelled => "cancelled",
    }
}

impl Engine {
    /// The parsed process of a workflow version (cached; versions never change).
    async fn process(&self, id: Uuid) -> Result<Arc<Result<Process, String>>, sqlx::Error> {
        if let Some(p) = self.definitions.lock().await.get(&id) {
            return Ok(p.clone());
        }
        let parsed = match store::definition(&self.pool, id).await? {
            Some(d) => Process::parse(&d.bpmn_xml).map_err(|e| e.to_string()),
            None => Err(format!("workflow {id} does not exist")),
        };
        let parsed = Arc::new(parsed);
        self.definitions.lock().await.insert(id, parsed.clone());
        Ok(parsed)
    }

    /// A `workflow.events` document and its record.
    fn event(&self, c: &Claimed, kind: &'static str, inst: &Instance, extra: Value) -> (Value, OutRecord) {
        let run = inst.history.iter().filter(|s| s.what == "rerun").count();
        let event_id = Uuid::new_v5(&EVENT_NAMESPACE, format!("{}:{kind}:{run}", c.id).as_bytes());
        let mut doc = json!({
            "event_type": kind, "event_id": event_id, "instance_id": c.id, "workflow_id": c.workflow_id,
            "user_id": c.external_user_id, "status": status_str(inst.status), "current_step": inst.current_step(),
            "retries": inst.retry_count(), "at": Utc::now(),
        });
        if let (Some(d), Value::Object(e)) = (doc.as_object_mut(), extra) {
            d.extend(e);
        }
        let record = OutRecord {
            topic: self.events_topic.clone(),
            key: Some(user_key(c).into_bytes()),
            payload: doc.to_string().into_bytes(),
            headers: vec![("event_type", kind.as_bytes().to_vec())],
        };
        (doc, record)
    }

    /// Drives a claimed instance until it waits, ends, or is taken away.
    async fn drive(&self, c: Claimed) -> Result<(), String> {
        let process = self.process(c.workflow_id).await.map_err(|e| format!("definition: {e}"))?;
        let now = Utc::now();
        let mut out = Vec::new();
        let mut webhooks = Vec::new();
        let (mut inst, mut effects) = match (&c.state, process.as_ref()) {
            (None, Ok(p)) => {
                let vars = match &c.variables {
                    Value::Object(o) => o.clone(),
                    _ => Map::new(),
                };
                let mut i = Instance::start(p, vars, now);
                let fx = i.advance(p, now);
                self.m.instances_started.inc();
                let (doc, record) = self.event(&c, "workflow.started", &i, json!({}));
                webhooks.push(("workflow.started", doc));
                out.push(record);
                (i, fx)
            }
            (Some(state), Ok(p)) => {
                let mut i: Instance =
                    serde_json::from_value(state.clone()).map_err(|e| format!("stored state: {e}"))?;
                let fx = i.resume(p, now);
                (i, fx)
            }
            (state, Err(e)) => {
                // A definition that no longer parses (or was deleted): an incident.
                let mut i = match state {
                    Some(s) => serde_json::from_value(s.clone()).map_err(|e| format!("stored state: {e}"))?,
                    None => Instance::empty(Map::new()),
                };
                let fx = i.raise("invalid_definition", e.clone(), now);
                (i, fx)
            }
        };
        let policy = RetryPolicy {
            base: chrono::Duration::milliseconds(self.wc.retry_base_ms as i64),
            max: chrono::Duration::milliseconds(self.wc.retry_max_ms as i64),
        };
        let mut attempts = Vec::new();
        loop {
            let executes: Vec<(u64, String, lifecycle_pipeline::workflow::bpmn::TaskAction, u32)> = effects
                .iter()
                .filter_map(|e| match e {
                    Effect::Execute { token, node, action, attempt } if inst.status == Status::Running => {
                        Some((*token, node.clone(), action.clone(), *attempt))
                    }
                    _ => None,
                })
                .collect();
            let mut callback = None;
            let mut failure = None;
            for e in &effects {
                let (kind, extra) = match e {
                    Effect::Completed => ("workflow.completed", json!({"results": inst.results})),
                    Effect::Failed(f) => ("workflow.failed", json!({"failure": f})),
                    _ => continue,
                };
                let (doc, record) = self.event(&c, kind, &inst, extra);
                if let Some(url) = &c.callback_url {
                    callback = Some((url.clone(), kind, doc.clone()));
                }
                webhooks.push((kind, doc));
                out.push(record);
                if let Effect::Failed(f) = e {
                    let dlq = json!({
                        "instance_id": c.id, "workflow_id": c.workflow_id, "user_id": c.external_user_id,
                        "error_type": f.error_type, "error_message": f.error_message, "failed_step": f.failed_step,
                        "attempt": f.attempt, "failed_at": f.at, "retries": inst.retry_count(),
                        "rerun": format!("POST /workflows/{}/instances/{}/rerun", c.workflow_id, c.id),
                    });
                    out.push(OutRecord {
                        topic: self.dlq_topic.clone(),
                        key: Some(c.id.to_string().into_bytes()),
                        payload: dlq.to_string().into_bytes(),
                        headers: vec![("reason", f.error_type.as_bytes().to_vec())],
                    });
                    let trace: Vec<String> = inst
                        .history
                        .iter()
                        .rev()
                        .take(20)
                        .map(|s| format!("{} {} {}", s.at.to_rfc3339(), s.node, s.what))
                        .collect();
                    failure = Some(FailureCols {
                        error_type: f.error_type.clone(),
                        error_message: f.error_message.clone(),
                        failed_step: f.failed_step.clone(),
                        stack_trace: trace.join("\n"),
                    });
                    self.m.instances_ended.with_label_values(&["failed"]).inc();
                } else {
                    self.m.instances_ended.with_label_values(&["completed"]).inc();
                }
            }
            let hold = !executes.is_empty();
            let save = Save {
                id: c.id,
                status: status_str(inst.status),
                state: serde_json::to_value(&inst).map_err(|e| e.to_string())?,
                current_step: inst.current_step().map(str::to_owned),
                wake_at: if hold { None } else { inst.next_wake() },
                hold,
                retry_count: inst.retry_count() as i32,
                failure,
                attempts: std::mem::take(&mut attempts),
                webhooks: std::mem::take(&mut webhooks),
                callback,
                events: std::mem::take(&mut out),
            };
            let lease = Duration::from_secs(self.wc.lease_secs);
            if !store::save(&self.pool, &self.wc.node_id, lease, &save).await.map_err(|e| format!("save: {e}"))? {
                tracing::info!(instance = %c.id, "instance cancelled or taken over; dropped");
                return Ok(());
            }
            let Ok(p) = process.as_ref() else { return Ok(()) };
            if executes.is_empty() {
                return Ok(());
            }
            let scope = Value::Object(inst.scope());
            let user = user_key(&c);
            let runs = executes.iter().map(|(token, node, action, attempt)| {
                let key = idempotency_key(&c.id.to_string(), node, *token);
                let scope = &scope;
                let user = &user;
                async move {
                    let call = Call {
                        instance_id: c.id,
                        workflow_id: c.workflow_id,
                        user_uuid: c.user_id,
                        user_id: user,
                        node,
                        attempt: *attempt,
                        key: &key,
                        scope,
                    };
                    let started = Instant::now();
                    let outcome = self.exec.execute(action, &call).await;
                    (*token, node.clone(), action_name(action), *attempt, key, outcome, started.elapsed())
                }
            });
            let results = futures::future::join_all(runs).await;
            effects = Vec::new();
            for (token, node, action, attempt, key, outcome, took) in results {
                self.m.task_seconds.observe(took.as_secs_f64());
                let label = if outcome.is_ok() { "succeeded" } else { "failed" };
                self.m.task_attempts.with_label_values(&[action, label]).inc();
                if let Err(e) = &outcome {
                    tracing::info!(instance = %c.id, node, attempt, error = e.message(), "service task failed");
                }
                attempts.push(Attempt {
                    step: node,
                    attempt: attempt as i32,
                    error: outcome.as_ref().err().map(|e| e.message().to_owned()),
                    idempotency_key: key,
                    duration_ms: took.as_millis().min(i32::MAX as u128) as i32,
                });
                effects.extend(match outcome {
                    Err(Failure::Refused(message)) => inst.task_refused(token, "egress_refused", message, Utc::now()),
                    Err(Failure::Retry(message)) => {
                        inst.task_done(p, token, Err(message), (Utc::now(), policy, rand::random::<f64>()))
                    }
                    Ok(v) => inst.task_done(p, token, Ok(v), (Utc::now(), policy, rand::random::<f64>())),
                });
            }
        }
    }

    /// Applies one command; `Err` is a reason to dead-letter it, with a message.
    async fn command(&self, payload: &[u8]) -> Result<&'static str, (&'static str, String)> {
        let v: Value = serde_json::from_slice(payload).map_err(|e| ("invalid_json", e.to_string()))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str);
        let uuid_of = |k: &'static str| -> Result<Uuid, (&'static str, String)> {
            field(k)
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or(("invalid_field", format!("{k} must be a UUID string")))
        };
        match field("type") {
            Some("start") => {
                let user = field("user_id")
                    .filter(|s| !s.is_empty())
                    .ok_or(("invalid_field", "user_id is required".to_owned()))?;
                let n = NewInstance {
                    id: match field("instance_id") {
                        Some(_) => uuid_of("instance_id")?,
                        None => Uuid::new_v4(),
                    },
                    workflow_id: uuid_of("workflow_id")?,
                    user_id: resolve_user(user),
                    variables: match v.get("variables") {
                        None | Some(Value::Null) => json!({"user_id": user}),
                        Some(Value::Object(o)) => {
                            let mut o = o.clone();
                            o.entry("user_id").or_insert_with(|| json!(user));
                            Value::Object(o)
                        }
                        Some(_) => return Err(("invalid_field", "variables must be an object".into())),
                    },
                    callback_url: field("callback_url").map(str::to_owned),
                    trigger_id: field("trigger_id").and_then(|s| Uuid::parse_str(s).ok()),
                };
                match store::insert_instance(&self.pool, &n).await {
                    Ok(true) => Ok("started"),
                    Ok(false) => Ok("duplicate"),
                    Err(StartError::NoWorkflow(_)) => {
                        Err(("unknown_workflow", format!("workflow {} does not exist", n.workflow_id)))
                    }
                    Err(e @ StartError::NotActive(..)) => Err(("workflow_not_active", e.to_string())),
                    Err(e @ StartError::NoUser(_)) => Err(("unknown_user", e.to_string())),
                    Err(e @ StartError::BadReference(_)) => Err(("invalid_field", e.to_string())),
                    Err(StartError::Db(e)) => Err(db_reason(e)),
                }
            }
            Some("cancel") => {
                let id = uuid_of("instance_id")?;
                match store::cancel(&self.pool, id, &self.events_topic).await.map_err(db_reason)? {
                    Some(_) => Ok("cancelled"),
                    None => Ok("duplicate"),
                }
            }
            _ => Err(("invalid_field", "type must be \"start\" or \"cancel\"".into())),
        }
    }
}

/// A database error of a command: `database` (retried) while a retry can
/// help, else `store_rejected` (the command is dead-lettered).
fn db_reason(e: sqlx::Error) -> (&'static str, String) {
    let e = lifecycle_connectors::error::ConnectorError::from(e);
    let reason = if e.retryable() { "database" } else { ReasonCode::StoreRejected.as_str() };
    (reason, format!("{} ({}): {e}", e.code(), e.store_code().unwrap_or_default()))
}

async fn consume_commands(
    engine: Arc<Engine>,
    cfg: LifecycleConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let topic = cfg.topics.name(Topic::WorkflowCommands);
    let wc = &cfg.workflows;
    let mut poller =
        Poller::new(&cfg.kafka, &wc.group_id, &[&topic], (500, Duration::from_millis(50)), engine.health.clone())?;
    loop {
        let batch = match poller.next(&mut shutdown).await? {
            Polled::Batch(b) => b,
            Polled::Shutdown => return Ok(()),
        };
        let mut dead = Vec::new();
        for r in &batch {
            let mut attempt = 0;
            let outcome = loop {
                match engine.command(&r.payload).await {
                    Err(("database", e)) => {
                        engine.m.retries.with_label_values(&["database"]).inc();
                        tracing::warn!(error = %e, attempt, "command not applied; retrying");
                        if attempt >= 2 {
                            engine.health.stalled(format!("database: {e}"));
                        }
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                    other => break other,
                }
            };
            engine.health.progressing();
            match outcome {
                Ok("duplicate") => engine.m.commands.skipped("duplicate", 1),
                Ok(what) => engine.m.commands.applied(what, 1),
                Err((reason, message)) => {
                    engine.m.commands.dead_lettered(reason, 1);
                    let doc = json!({
                        "reason": reason, "message": message, "source": {"topic": r.topic, "partition": r.partition, "offset": r.offset},
                        "original": String::from_utf8_lossy(&r.payload),
                    });
                    dead.push(OutRecord {
                        topic: engine.dlq_topic.clone(),
                        key: r.key.clone(),
                        payload: doc.to_string().into_bytes(),
                        headers: vec![("reason", reason.as_bytes().to_vec())],
                    });
                }
            }
        }
        let mut attempt = 0;
        while let Err(e) = engine.sink.send_all(&dead).await {
            engine.m.retries.with_label_values(&["produce"]).inc();
            tracing::warn!(error = %e, "dead-lettering commands failed; retrying");
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
        if let Err(e) = poller.source().commit(&batch) {
            tracing::debug!(error = %e, "command offsets not committed; they are applied again (idempotent)");
        }
    }
}

/// Relays the outbox's workflow.events / workflow.dlq records to Kafka.
async fn relay_events(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let mut failures = 0;
    loop {
        let relayed = match store::relay(&engine.pool, &engine.sink, 500).await {
            Ok(n) => {
                failures = 0;
                n
            }
            Err(e) => {
                engine.m.retries.with_label_values(&["relay"]).inc();
                tracing::warn!(error = %e, "relaying workflow events failed; they stay in the outbox");
                tokio::time::sleep(backoff(failures)).await;
                failures += 1;
                0
            }
        };
        if relayed < 500 {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(engine.wc.poll_interval_ms)) => false,
                _ = shutdown.wait_for(|s| *s) => true,
            };
            if stopping {
                return; // run() relays what the last saves queue
            }
        }
    }
}

async fn deliver_webhooks(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let lease = Duration::from_millis(engine.wc.task_timeout_ms * 2);
    loop {
        let due = match store::claim_deliveries(&engine.pool, 50, lease).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "claiming webhook deliveries failed");
                vec![]
            }
        };
        let results = futures::future::join_all(due.iter().map(|d| engine.exec.deliver(d))).await;
        for (d, r) in due.iter().zip(results) {
            let refused = r.as_ref().err().and_then(|e| match e {
                Failure::Refused(m) => Some(format!("egress_refused: {m}")),
                Failure::Retry(_) => None,
            });
            let (err, retry) = match &r {
                Ok(()) => (None, None),
                Err(_) if refused.is_some() => (refused.as_deref(), None),
                Err(Failure::Retry(e)) if (d.attempts as u32 + 1) < engine.wc.webhook_max_attempts => {
                    let base = Duration::from_millis(engine.wc.retry_base_ms);
                    let delay = base
                        .saturating_mul(1 << d.attempts.clamp(0, 16))
                        .min(Duration::from_millis(engine.wc.retry_max_ms));
                    (Some(e.as_str()), Some(delay.mul_f64(0.5 + 0.5 * rand::random::<f64>())))
                }
                Err(e) => (Some(e.message()), None),
            };
            let label = match (err, retry) {
                (None, _) => "delivered",
                (Some(_), Some(_)) => "retry",
                (Some(_), None) => "failed",
            };
            engine.m.webhooks.with_label_values(&[label]).inc();
            if let Err(e) = store::delivery_done(&engine.pool, d.id, err, retry).await {
                tracing::warn!(error = %e, delivery = %d.id, "recording a webhook delivery failed; it is sent again");
            }
        }
        if due.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(engine.wc.poll_interval_ms)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        } else if *shutdown.borrow() {
            return;
        }
    }
}

/// The Kafka key of an instance's records: the external user id, else `users.id`.
fn user_key(c: &Claimed) -> String {
    c.external_user_id.clone().unwrap_or_else(|| c.user_id.to_string())
}

/// The task id of a finished drive task, whether it returned or panicked.
fn finished(done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match done {
        Ok((id, ())) => id,
        Err(e) => {
            tracing::error!(error = %e, "an instance task panicked; the instance is retried when its lease ends");
            e.id()
        }
    }
}

/// Runs the engine until `shutdown` turns true; instances in flight reach
/// their next save first, then the engine gives its leases up.
pub async fn run(
    cfg: &LifecycleConfig,
    handle: EngineHandle,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut wc = cfg.workflows.clone();
    wc.validate()?;
    crate::setup::require_topics(cfg, &[Topic::WorkflowCommands, Topic::WorkflowEvents, Topic::WorkflowDlq])?;
    wc.node_id = wc.node_name();
    let pool = postgres::connect_and_migrate(&cfg.postgres).await.map_err(|e| format!("database: {e}"))?;
    let sink = KafkaSink::new(&cfg.kafka).map_err(|e| e.to_string())?;
    let egress = Arc::new(EgressPolicy::new(&cfg.egress)?);
    let http = egress
        .client()
        .connect_timeout(Duration::from_millis(wc.task_timeout_ms))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let engine = Arc::new(Engine {
        exec: Executor {
            http,
            egress,
            sink: sink.clone(),
            pool: pool.clone(),
            topics: cfg.topics.clone(),
            signing_secret: wc.signing_secret.clone(),
            timeout: Duration::from_millis(wc.task_timeout_ms),
        },
        wc: wc.clone(),
        pool: pool.clone(),
        sink,
        events_topic: cfg.topics.name(Topic::WorkflowEvents),
        dlq_topic: cfg.topics.name(Topic::WorkflowDlq),
        definitions: Mutex::new(HashMap::new()),
        m: handle.metrics.clone(),
        health: handle.health.clone(),
    });
    crate::stages::common::spawn_transaction_guard(&cfg.kafka, &handle.registry)?;
    if let Some(addr) = wc.metrics_addr {
        serve_metrics(addr, handle.registry.clone(), handle.health.clone(), shutdown.clone());
    }
    let commands = tokio::spawn(consume_commands(engine.clone(), cfg.clone(), shutdown.clone()));
    let deliveries = tokio::spawn(deliver_webhooks(engine.clone(), shutdown.clone()));
    let relay = tokio::spawn(relay_events(engine.clone(), shutdown.clone()));
    tracing::info!(node = %wc.node_id, max_in_flight = wc.max_in_flight, "workflow engine started");
    let mut running: JoinSet<()> = JoinSet::new();
    // Instances being driven, by the task driving them (a panicking task still frees its slot).
    let mut busy: HashMap<tokio::task::Id, Uuid> = HashMap::new();
    let lease = Duration::from_secs(wc.lease_secs);
    let poll = Duration::from_millis(wc.poll_interval_ms);
    let mut failures = 0;
    while !*shutdown.borrow() {
        while let Some(done) = running.try_join_next_with_id() {
            busy.remove(&finished(done));
        }
        engine.m.in_flight.set(busy.len() as i64);
        let free = wc.max_in_flight.saturating_sub(busy.len());
        let mut claimed = 0;
        if free > 0 {
            let skip: Vec<Uuid> = busy.values().copied().collect();
            match store::claim(&pool, &wc.node_id, lease, free as i64, &skip).await {
                Ok(list) => {
                    failures = 0;
                    claimed = list.len();
                    for c in list {
                        let (id, e) = (c.id, engine.clone());
                        let task = running.spawn(async move {
                            if let Err(err) = e.drive(c).await {
                                e.m.retries.with_label_values(&["instance"]).inc();
                                tracing::warn!(instance = %id, error = %err, "instance step failed; tried again in 5 s");
                                if let Err(db) = store::back_off(&e.pool, id, &e.wc.node_id, Duration::from_secs(5)).await {
                                    tracing::warn!(instance = %id, error = %db, "backing off failed; the lease expires");
                                }
                            }
                        });
                        busy.insert(task.id(), id);
                    }
                }
                Err(e) => {
                    engine.m.retries.with_label_values(&["database"]).inc();
                    tracing::warn!(error = %e, "claiming instances failed");
                    tokio::time::sleep(backoff(failures)).await;
                    failures += 1;
                }
            }
        }
        if claimed == 0 {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    busy.remove(&finished(done));
                }
                _ = shutdown.changed() => {}
            }
        }
    }
    let grace = Duration::from_millis(wc.task_timeout_ms + 5000);
    if tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await.is_err() {
        running.abort_all();
    }
    match store::release(&pool, &wc.node_id).await {
        Ok(n) if n > 0 => tracing::info!(instances = n, "leases given up"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "giving leases up failed; they expire"),
    }
    if let Ok(Err(e)) = commands.await {
        tracing::warn!(error = %e, "command consumer stopped with an error");
    }
    let _ = deliveries.await;
    let _ = relay.await;
    // What the last saves queued goes out now rather than at the next start.
    while let Ok(n) = store::relay(&pool, &engine.sink, 500).await
        && n > 0
    {}
    tracing::info!("workflow engine stopped");
    Ok(())
}
