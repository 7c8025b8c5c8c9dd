//! Segments, triggers and the workflow engine on the real stack: events through
//! the profile stage fire a trigger whose BPMN workflow calls a local HTTP
//! endpoint (the test's peer), waits on a timer and updates the profile;
//! retries, the dead-letter queue, re-runs, cancellation, and a kill -9 of the
//! engine with 1,000 instances in flight. Each test has its own PostgreSQL
//! database and topics.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use lifecycle_connectors::http::auth::Role;
use lifecycle_connectors::http::signature::verify;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_jobs::LifecycleConfig;
use lifecycle_jobs::stages::{profile, workflows};
use lifecycle_jobs::workload::AvroEncoder;
use lifecycle_pipeline::Topic;
use reqwest::Method as M;
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use tokio::sync::watch;
use uuid::Uuid;

use crate::common::{drop_database, eventually, own_database, read_all, schemas, test_config};
use crate::ingest_api::{Api, key, start_with};

/// One request the peer received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    key: Option<String>,
    signature: Option<String>,
    event: Option<String>,
    body: Vec<u8>,
}

/// The test's HTTP peer: records every request. `/flaky/*` fails the first 3
/// calls per path, `/broken/*` fails while `broken` is set, `/to-metadata/*`
/// redirects to the cloud metadata address, anything else answers 200 after `delay_ms`.
#[derive(Clone, Default)]
struct Peer {
    calls: Arc<Mutex<Vec<Received>>>,
    broken: Arc<std::sync::atomic::AtomicBool>,
    delay_ms: u64,
}

impl Peer {
    async fn start(self) -> (Self, String) {
        self.start_on("127.0.0.1").await
    }

    async fn start_on(self, host: &str) -> (Self, String) {
        async fn handle(State(p): State<Peer>, uri: Uri, headers: HeaderMap, body: Bytes) -> axum::response::Response {
            use axum::response::IntoResponse;
            let mut resp = answer(&p, &uri, &headers, &body).await.into_response();
            if uri.path().starts_with("/to-metadata") {
                resp.headers_mut().insert(
                    axum::http::header::LOCATION,
                    axum::http::HeaderValue::from_static("http://169.254.169.254/latest/meta-data/"),
                );
            }
            resp
        }
        async fn answer(p: &Peer, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> (StatusCode, String) {
            let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let path = uri.path().to_owned();
            let earlier = {
                let mut calls = p.calls.lock().expect("lock");
                let earlier = calls.iter().filter(|c| c.path == path).count();
                calls.push(Received {
                    path: path.clone(),
                    key: h("idempotency-key"),
                    signature: h("x-lifecycle-signature"),
                    event: h("x-lifecycle-event"),
                    body: body.to_vec(),
                });
                earlier
            };
            if p.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(p.delay_ms)).await;
            }
            if path.starts_with("/flaky") && earlier < 3 {
                return (StatusCode::SERVICE_UNAVAILABLE, "try again".into());
            }
            if path.starts_with("/broken") && p.broken.load(std::sync::atomic::Ordering::SeqCst) {
                return (StatusCode::INTERNAL_SERVER_ERROR, "down".into());
            }
            if path.starts_with("/to-metadata") {
                return (StatusCode::TEMPORARY_REDIRECT, String::new());
            }
            (StatusCode::OK, json!({"ok": true, "path": path}).to_string())
        }
        let app = axum::Router::new().fallback(handle).with_state(self.clone());
        let listener = tokio::net::TcpListener::bind((host, 0)).await.expect("bind peer");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (self, base)
    }

    fn calls(&self, prefix: &str) -> Vec<Received> {
        self.calls.lock().expect("lock").iter().filter(|c| c.path.starts_with(prefix)).cloned().collect()
    }
}

const SECRET: &str = "test-signing-secret";

/// A configuration with its own database, topics and groups; fast retries.
async fn setup(name: &str) -> (LifecycleConfig, PgPool, u32) {
    let (mut cfg, reg) = test_config(name).await;
    let pool = own_database(&mut cfg).await;
    cfg.profile.group_id = format!("{}-profile", cfg.validate.group_id);
    cfg.profile.metrics_addr = None;
    cfg.profile.rules_reload_ms = 200;
    cfg.workflows.group_id = format!("{}-workflows", cfg.validate.group_id);
    cfg.workflows.metrics_addr = None;
    cfg.workflows.retry_base_ms = 50;
    cfg.workflows.retry_max_ms = 400;
    cfg.workflows.poll_interval_ms = 50;
    cfg.workflows.task_timeout_ms = 5000;
    cfg.workflows.lease_secs = 30;
    cfg.workflows.signing_secret = SECRET.into();
    // The test peers listen on loopback, which outbound requests may reach only when allowed.
    cfg.egress.allow = vec!["127.0.0.1".into()];
    (cfg, pool, reg.valid_envelope_id)
}

fn bpmn(body: &str, max_retries: u32) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:lifecycle="https://lifecycle.dev/schema/bpmn" id="d">
  <bpmn:process id="p" isExecutable="true" lifecycle:maxRetries="{max_retries}">
    {body}
  </bpmn:process>
</bpmn:definitions>"#
    )
}

/// start -> http task at `url` -> end.
fn one_call(url: &str, max_retries: u32) -> String {
    bpmn(
        &format!(
            r#"<bpmn:startEvent id="start"/>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="call"/>
    <bpmn:serviceTask id="call" lifecycle:type="http" lifecycle:url="{url}" lifecycle:method="POST"/>
    <bpmn:sequenceFlow id="f2" sourceRef="call" targetRef="end"/>
    <bpmn:endEvent id="end"/>"#
        ),
        max_retries,
    )
}

fn body(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// Creates an active workflow through the API; returns its id.
async fn active_workflow(api: &Api, key: &str, name: &str, xml: &str) -> String {
    let (s, w, _) = api.post("/workflows", Some(key), body(json!({"name": name, "bpmn_xml": xml}))).await;
    assert_eq!(s, 201, "{w}");
    assert_eq!(w["status"], "draft");
    let id = w["id"].as_str().expect("id").to_owned();
    let (s, w, _) = api.send(M::PATCH, &format!("/workflows/{id}"), Some(key), body(json!({"status": "active"}))).await;
    assert_eq!((s, w["status"].clone()), (200, json!("active")), "{w}");
    id
}

struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Running {
    fn engine(cfg: &LifecycleConfig) -> (Self, workflows::EngineHandle) {
        let handle = workflows::EngineHandle::new().expect("metrics");
        let (stop, rx) = watch::channel(false);
        let (c, h) = (cfg.clone(), handle.clone());
        let task = tokio::spawn(async move { workflows::run(&c, h, rx).await });
        (Self { stop, tasks: vec![task] }, handle)
    }

    fn with_profile(mut self, cfg: &LifecycleConfig) -> (Self, profile::ProfileHandle) {
        let handle = profile::ProfileHandle::new().expect("metrics");
        let (c, h, rx) = (cfg.clone(), handle.clone(), self.stop.subscribe());
        self.tasks.push(tokio::spawn(async move { profile::run(&c, h, rx).await }));
        (self, handle)
    }

    async fn stop(self) {
        self.stop.send(true).expect("stop");
        for t in self.tasks {
            t.await.expect("join").expect("ran cleanly");
        }
    }
}

/// A user in the Acquisition stage, as the profile stage would create it.
async fn insert_user(pool: &PgPool, external_id: &str) {
    sqlx::query("INSERT INTO users (id, external_id, current_lifecycle_stage) VALUES ($1, $2, 'Acquisition')")
        .bind(lifecycle_connectors::postgres::profiles::user_uuid(external_id))
        .bind(external_id)
        .execute(pool)
        .await
        .expect("user");
}

async fn status_of(pool: &PgPool, id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM workflow_executions WHERE id = $1::uuid")
        .bind(id)
        .fetch_optional(pool)
        .await
        .expect("query")
        .unwrap_or_default()
}

async fn wait_status(pool: &PgPool, id: &str, want: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status_of(pool, id).await;
        if s == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "instance {id} is '{s}', not '{want}', after {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn json_records(cfg: &LifecycleConfig, topic: Topic) -> Vec<Value> {
    read_all(cfg, topic).into_iter().map(|(_, _, _, p)| serde_json::from_slice(&p).expect("JSON record")).collect()
}

/// Produces Avro events (JSON documents) to `events.valid`, keyed by user.
async fn produce(cfg: &LifecycleConfig, valid_id: u32, events: &[Value]) {
    let (envelope, validator) = schemas();
    let enc = AvroEncoder { validator: &validator, envelope: &envelope, schema_id: valid_id };
    let topic = cfg.topics.name(Topic::EventsValid);
    let records: Vec<OutRecord> = events
        .iter()
        .map(|e| OutRecord {
            topic: topic.clone(),
            key: Some(e["user_id"].as_str().expect("user").as_bytes().to_vec()),
            payload: enc.encode(e).expect("encode"),
            headers: vec![],
        })
        .collect();
    KafkaSink::new(&cfg.kafka).expect("producer").send_all(&records).await.expect("produce");
}

fn event(id: &str, user: &str, t: &str, at: chrono::DateTime<chrono::Utc>, props: Value) -> Value {
    json!({
        "event_id": id, "user_id": user, "event_type": t, "timestamp": at.to_rfc3339(), "session_id": "s1",
        "event_properties": props,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_by_a_segment_member_fires_a_trigger_whose_workflow_runs_to_completion() {
    let (cfg, pool, valid_id) = setup("wfe2e").await;
    let (peer, peer_url) = Peer::default().start().await;
    let api = start_with(cfg.clone()).await;
    let (_, admin) = key(&cfg, Role::Admin).await;
    let (_, operator) = key(&cfg, Role::Operator).await;

    // A webhook subscription for workflow and segment events.
    let (s, sub, _) = api
        .post(
            "/webhooks",
            Some(&admin),
            body(json!({"url": format!("{peer_url}/hooks"), "event_types": ["workflow.started", "workflow.completed", "segment.entered"]})),
        )
        .await;
    assert_eq!(s, 201, "{sub}");
    let sub_secret = sub["secret"].as_str().expect("secret shown once").to_owned();

    // Gateway (big purchases only) -> HTTP task at the peer -> 2 s timer -> profile update.
    let xml = bpmn(
        &format!(
            r#"<bpmn:startEvent id="start"/>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="big"/>
    <bpmn:exclusiveGateway id="big" default="f_small"/>
    <bpmn:sequenceFlow id="f_big" sourceRef="big" targetRef="notify">
      <bpmn:conditionExpression>${{event.event_properties.amount >= 100}}</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="f_small" sourceRef="big" targetRef="end"/>
    <bpmn:serviceTask id="notify" lifecycle:type="http" lifecycle:url="{peer_url}/notify" lifecycle:method="POST"/>
    <bpmn:sequenceFlow id="f2" sourceRef="notify" targetRef="wait"/>
    <bpmn:intermediateCatchEvent id="wait">
      <bpmn:timerEventDefinition><bpmn:timeDuration>PT2S</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:intermediateCatchEvent>
    <bpmn:sequenceFlow id="f3" sourceRef="wait" targetRef="tag"/>
    <bpmn:serviceTask id="tag" lifecycle:type="profile-update" lifecycle:attributes='{{"vip": true}}'/>
    <bpmn:sequenceFlow id="f4" sourceRef="tag" targetRef="end"/>
    <bpmn:endEvent id="end"/>"#
        ),
        3,
    );
    let wf = active_workflow(&api, &operator, "big purchase follow-up", &xml).await;
    let (s, seg, _) = api
        .post(
            "/segments",
            Some(&operator),
            body(json!({"name": "buyers this week", "conditions": {"events": "transaction.purchase_complete", "within": "P7D", "op": "gte", "value": 1}})),
        )
        .await;
    assert_eq!(s, 201, "{seg}");
    let seg_id = seg["id"].as_str().expect("id").to_owned();
    // Time alone moves users out of this one: active in the last 5 seconds.
    let (s, recent, _) = api
        .post(
            "/segments",
            Some(&operator),
            body(json!({"name": "active just now", "conditions": {"field": "profile.behavioral.last_activity", "op": "within", "value": "PT5S"}})),
        )
        .await;
    assert_eq!(s, 201, "{recent}");
    let recent_id = recent["id"].as_str().expect("id").to_owned();
    let (s, trig, _) = api
        .post(
            "/triggers",
            Some(&operator),
            body(json!({
                "name": "purchase by a buyer", "event_type": "transaction.purchase_complete", "workflow_id": wf,
                "conditions": {"and": [
                    {"events": "transaction.purchase_complete", "within": "P7D", "op": "gte", "value": 2},
                    {"field": "event.event_properties.amount", "op": "gte", "value": 100}]}
            })),
        )
        .await;
    assert_eq!(s, 201, "{trig}");
    let trig_id = trig["id"].as_str().expect("id").to_owned();

    // Ada buys twice (the second, big purchase fires the trigger); Bob only browses.
    let p = cfg.topics.prefix.clone();
    let (ada, bob, cy) = (format!("{p}ada"), format!("{p}bob"), format!("{p}cy"));
    let now = chrono::Utc::now();
    let purchase = |amount: f64, order: &str| json!({"order_id": order, "amount": amount, "currency": "EUR"});
    let events = vec![
        event(&format!("{p}e5"), &cy, "engagement.page_view", now, json!({"page": "/pricing"})),
        event(
            &format!("{p}e1"),
            &ada,
            "user.signup",
            now - chrono::Duration::minutes(5),
            json!({"email": "ada@example.com", "name": "Ada"}),
        ),
        event(
            &format!("{p}e2"),
            &ada,
            "transaction.purchase_complete",
            now - chrono::Duration::minutes(4),
            purchase(20.0, "o1"),
        ),
        event(
            &format!("{p}e3"),
            &bob,
            "engagement.page_view",
            now - chrono::Duration::minutes(3),
            json!({"page": "/home"}),
        ),
        event(
            &format!("{p}e4"),
            &ada,
            "transaction.purchase_complete",
            now - chrono::Duration::minutes(2),
            purchase(250.0, "o2"),
        ),
    ];
    let (running, engine) = Running::engine(&cfg);
    let (running, prof) = running.with_profile(&cfg);
    // Give the stage time to load the rules before the events arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    produce(&cfg, valid_id, &events).await;
    assert!(eventually(60, || prof.metrics.outcomes.total("applied") >= 5).await, "profile stage applied the events");

    // One instance, started by the trigger for e4.
    let instance: String = {
        let mut found = None;
        for _ in 0..100 {
            found = sqlx::query_scalar::<_, Uuid>("SELECT id FROM workflow_executions WHERE trigger_id = $1::uuid")
                .bind(&trig_id)
                .fetch_optional(&pool)
                .await
                .expect("query");
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        found.expect("the trigger started an instance").to_string()
    };
    assert_eq!(
        instance,
        lifecycle_pipeline::rules::instance_id(trig_id.parse().expect("uuid"), &format!("{p}e4")).to_string()
    );
    wait_status(&pool, &instance, "completed", 60).await;

    // trigger_executions: e2 evaluated (one purchase: not met), e4 met and linked to the instance.
    let rows = sqlx::query(
        "SELECT event_id, condition_met, workflow_execution_id::text FROM trigger_executions WHERE trigger_id = $1::uuid ORDER BY executed_at, event_id",
    )
    .bind(&trig_id)
    .fetch_all(&pool)
    .await
    .expect("trigger executions");
    let got: Vec<(String, bool, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(got, vec![(format!("{p}e2"), false, None), (format!("{p}e4"), true, Some(instance.clone()))]);

    // Memberships: Ada is in the segment until her first purchase leaves the window; Bob is not.
    let members = sqlx::query(
        "SELECT u.external_id, m.valid_until FROM user_segment_memberships m JOIN users u ON u.id = m.user_id WHERE m.segment_id = $1::uuid",
    )
    .bind(&seg_id)
    .fetch_all(&pool)
    .await
    .expect("memberships");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].get::<Option<String>, _>(0).as_deref(), Some(ada.as_str()));
    let until: chrono::DateTime<chrono::Utc> = members[0].get::<Option<_>, _>(1).expect("valid_until");
    let expected_until = now - chrono::Duration::minutes(4) + chrono::Duration::days(7);
    assert!((until - expected_until).num_milliseconds().abs() < 5, "{until} vs {expected_until}");
    let changes: Vec<Value> = json_records(&cfg, Topic::SegmentMemberships)
        .into_iter()
        .filter(|c| c["segment_id"] == json!(seg_id))
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        (changes[0]["event_type"].clone(), changes[0]["user_id"].clone()),
        (json!("segment.entered"), json!(ada))
    );
    // Cy entered "active just now" with her event and leaves it 5 s later with no new event.
    let of_cy = |cfg: &LifecycleConfig| -> Vec<String> {
        json_records(cfg, Topic::SegmentMemberships)
            .into_iter()
            .filter(|c| c["segment_id"] == json!(recent_id))
            .map(|c| format!("{} {}", c["event_type"].as_str().unwrap_or(""), c["user_id"].as_str().unwrap_or("")))
            .collect()
    };
    assert!(eventually(30, || of_cy(&cfg).len() >= 2).await, "time moved Cy out of the segment: {:?}", of_cy(&cfg));
    assert_eq!(of_cy(&cfg), vec![format!("segment.entered {cy}"), format!("segment.exited {cy}")]);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM user_segment_memberships WHERE segment_id = $1::uuid")
        .bind(&recent_id)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 0);

    // The instance row: the whole execution context.
    let r = sqlx::query(
        "SELECT status, current_node_id, started_at, completed_at, retry_count, error_type, state, variables FROM workflow_executions WHERE id = $1::uuid",
    )
    .bind(&instance)
    .fetch_one(&pool)
    .await
    .expect("instance");
    assert_eq!(r.get::<String, _>(0), "completed");
    let (started, ended): (chrono::DateTime<chrono::Utc>, Option<chrono::DateTime<chrono::Utc>>) = (r.get(2), r.get(3));
    assert!(ended.expect("end time") - started >= chrono::Duration::seconds(2), "the 2 s timer ran");
    assert_eq!((r.get::<i32, _>(4), r.get::<Option<String>, _>(5)), (0, None));
    let state: Value = r.get(6);
    assert_eq!(state["results"]["notify"]["status"], 200);
    assert_eq!(state["results"]["tag"]["updated"], json!(["vip"]));
    let steps: Vec<&str> =
        state["history"].as_array().expect("history").iter().filter_map(|s| s["what"].as_str()).collect();
    assert!(steps.contains(&"took f_big") && steps.contains(&"timer_fired"), "{steps:?}");
    assert_eq!(r.get::<Value, _>(7)["event"]["event_id"], json!(format!("{p}e4")));
    let attrs: Value = sqlx::query_scalar("SELECT attributes FROM users WHERE external_id = $1")
        .bind(&ada)
        .fetch_one(&pool)
        .await
        .expect("user");
    assert_eq!(attrs["vip"], true, "the profile-update task ran");

    // The peer got exactly one signed call carrying the idempotency key and the event.
    let calls = peer.calls("/notify");
    assert_eq!(calls.len(), 1);
    let key = calls[0].key.clone().expect("idempotency key");
    assert!(key.starts_with(&format!("{instance}:notify:")), "{key}");
    let sig = calls[0].signature.clone().expect("signed");
    assert!(verify(SECRET.as_bytes(), &sig, &calls[0].body, chrono::Utc::now().timestamp(), 300), "signature verifies");
    let sent: Value = serde_json::from_slice(&calls[0].body).expect("JSON body");
    assert_eq!(sent["variables"]["event"]["event_properties"]["amount"], json!(250.0));
    let attempts: Vec<(String, String)> =
        sqlx::query("SELECT step, outcome FROM workflow_execution_attempts WHERE execution_id = $1::uuid ORDER BY at")
            .bind(&instance)
            .fetch_all(&pool)
            .await
            .expect("attempts")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(attempts, vec![("notify".into(), "succeeded".into()), ("tag".into(), "succeeded".into())]);

    // Topics: one start command; started and completed events; nothing dead-lettered.
    let commands = json_records(&cfg, Topic::WorkflowCommands);
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert_eq!((commands[0]["type"].clone(), commands[0]["instance_id"].clone()), (json!("start"), json!(instance)));
    let completed = |cfg: &LifecycleConfig| {
        json_records(cfg, Topic::WorkflowEvents)
            .iter()
            .any(|e| e["instance_id"] == json!(instance) && e["event_type"] == "workflow.completed")
    };
    assert!(eventually(10, || completed(&cfg)).await, "the outbox relayed the events");
    let wf_events = json_records(&cfg, Topic::WorkflowEvents);
    let kinds: Vec<&str> = wf_events
        .iter()
        .filter(|e| e["instance_id"] == json!(instance))
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(kinds, vec!["workflow.started", "workflow.completed"]);
    assert_eq!(crate::common::count(&cfg, Topic::WorkflowDlq), 0);
    assert_eq!(
        engine.metrics.commands.by_reason("skipped").iter().map(|(_, n)| n).sum::<u64>(),
        1,
        "the command found the row the stage wrote"
    );

    // Webhooks: segment.entered (Ada, Cy), workflow.started and workflow.completed, signed with the secret.
    assert!(eventually(20, || peer.calls("/hooks").len() >= 4).await, "webhooks delivered: {:?}", peer.calls("/hooks"));
    let hooks = peer.calls("/hooks");
    let mut kinds: Vec<String> = hooks.iter().filter_map(|h| h.event.clone()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["segment.entered", "segment.entered", "workflow.completed", "workflow.started"],
        "Ada and Cy entered"
    );
    for h in &hooks {
        let sig = h.signature.as_deref().expect("signed");
        assert!(verify(sub_secret.as_bytes(), sig, &h.body, chrono::Utc::now().timestamp(), 300));
    }

    // The API shows the same execution context (PII masked for the operator).
    let (s, got, _) = api.send(M::GET, &format!("/workflows/{wf}/instances/{instance}"), Some(&operator), vec![]).await;
    assert_eq!((s, got["status"].clone(), got["user_id"].clone()), (200, json!("completed"), json!(ada)));
    assert_eq!(got["attempts"].as_array().map(Vec::len), Some(2));
    assert_eq!(got["variables"]["profile"]["email"], "***", "operators see PII masked");
    let (_, got, _) = api.send(M::GET, &format!("/workflows/{wf}/instances/{instance}"), Some(&admin), vec![]).await;
    assert_eq!(got["variables"]["profile"]["email"], "ada@example.com");
    let (s, m, _) = api.send(M::GET, &format!("/segments/{seg_id}/members"), Some(&operator), vec![]).await;
    assert_eq!((s, m["data"][0]["user_id"].clone()), (200, json!(ada)));

    // A disabled segment keeps its memberships while Ada's next events are applied.
    let (s, _, _) =
        api.send(M::PATCH, &format!("/segments/{seg_id}"), Some(&operator), body(json!({"enabled": false}))).await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = event(&format!("{p}e6"), &ada, "engagement.page_view", chrono::Utc::now(), json!({"page": "/"}));
    produce(&cfg, valid_id, &[later]).await;
    assert!(eventually(30, || prof.metrics.outcomes.total("applied") >= 6).await);
    let (_, m, _) = api.send(M::GET, &format!("/segments/{seg_id}/members"), Some(&operator), vec![]).await;
    assert_eq!(m["data"].as_array().map(Vec::len), Some(1), "membership kept: {m}");

    running.stop().await;
    pool.close().await;
    drop_database(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_reruns_cancels_and_refuses_bad_definitions() {
    let (cfg, pool, _) = setup("wfretry").await;
    let (peer, peer_url) = Peer::default().start().await;
    let api = start_with(cfg.clone()).await;
    let (_, operator) = key(&cfg, Role::Operator).await;
    let (_, analyst) = key(&cfg, Role::Analyst).await;
    insert_user(&pool, "wf-user").await;

    // Bad definitions and conditions are refused, naming the element or path.
    let bad = bpmn(r#"<bpmn:startEvent id="s"/><bpmn:userTask id="approve"/>"#, 1);
    let (s, e, _) = api.post("/workflows", Some(&operator), body(json!({"name": "bad", "bpmn_xml": bad}))).await;
    assert_eq!((s, e["code"].clone(), e["details"]["field"].clone()), (400, json!("invalid_bpmn"), json!("bpmn_xml")));
    assert_eq!(
        (e["details"]["element"].clone(), e["details"]["id"].clone()),
        (json!("userTask"), json!("approve")),
        "{e}"
    );
    let (s, e, _) = api
        .post(
            "/segments",
            Some(&operator),
            body(json!({"name": "x", "conditions": {"and": [{"field": "profile.a", "op": "gt="}]}})),
        )
        .await;
    assert_eq!((s, e["details"]["field"].clone()), (400, json!("conditions.and[0].op")), "{e}");
    let (s, e, _) =
        api.post("/workflows", Some(&analyst), body(json!({"name": "x", "bpmn_xml": one_call("http://x", 1)}))).await;
    assert_eq!(s, 403, "{e}");

    // Versions: the same name gets version 2; a draft does not run.
    let flaky = active_workflow(&api, &operator, "flaky", &one_call(&format!("{peer_url}/flaky/a"), 3)).await;
    let (s, v2, _) = api
        .post(
            "/workflows",
            Some(&operator),
            body(json!({"name": "flaky", "bpmn_xml": one_call(&format!("{peer_url}/flaky/b"), 3)})),
        )
        .await;
    assert_eq!((s, v2["version"].clone()), (201, json!(2)));
    let draft = v2["id"].as_str().expect("id");
    let (s, e, _) =
        api.post(&format!("/workflows/{draft}/execute"), Some(&operator), body(json!({"user_id": "wf-user"}))).await;
    assert_eq!((s, e["code"].clone()), (409, json!("workflow_not_active")));
    let (s, e, _) =
        api.post(&format!("/workflows/{flaky}/execute"), Some(&operator), body(json!({"user_id": "nobody"}))).await;
    assert_eq!((s, e["details"]["field"].clone()), (400, json!("user_id")));

    // The OpenAPI document lists every endpoint of this API.
    let (_, doc, _) = api.send(M::GET, "/openapi.json", None, vec![]).await;
    for path in [
        "/workflows",
        "/workflows/{id}",
        "/workflows/{id}/execute",
        "/workflows/{id}/instances",
        "/workflows/{id}/instances/{instance_id}",
        "/workflows/{id}/instances/{instance_id}/rerun",
        "/workflows/{id}/instances/{instance_id}/pause",
        "/workflows/{id}/instances/{instance_id}/resume",
        "/segments",
        "/segments/{id}",
        "/segments/{id}/members",
        "/triggers",
        "/triggers/{id}",
        "/triggers/{id}/enable",
        "/triggers/{id}/disable",
        "/triggers/{id}/executions",
        "/webhooks",
        "/webhooks/{id}",
        "/webhooks/{id}/deliveries",
        "/api-keys",
        "/api-keys/{id}",
        "/api-keys/{id}/rotate",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi.json documents {path}");
    }

    let (running, _engine) = Running::engine(&cfg);

    // Fails 3 times, then succeeds: completed with 3 recorded retries, all under one key.
    let (s, started, _) = api
        .post(
            &format!("/workflows/{flaky}/execute"),
            Some(&operator),
            body(json!({"user_id": "wf-user", "variables": {"n": 1}, "wait_ms": 20000})),
        )
        .await;
    assert!(s == 200 || s == 202, "{started}");
    let id = started["instance_id"].as_str().expect("id").to_owned();
    wait_status(&pool, &id, "completed", 30).await;
    let (_, got, _) = api.send(M::GET, &format!("/workflows/{flaky}/instances/{id}"), Some(&operator), vec![]).await;
    assert_eq!(got["retry_count"], 3, "{got}");
    assert_eq!(got["retries"]["call"], 3);
    let outcomes: Vec<&str> =
        got["attempts"].as_array().expect("attempts").iter().filter_map(|a| a["outcome"].as_str()).collect();
    assert_eq!(outcomes, vec!["failed", "failed", "failed", "succeeded"]);
    let keys: HashSet<Option<String>> = peer.calls("/flaky/a").into_iter().map(|c| c.key).collect();
    assert_eq!(keys.len(), 1, "retries repeat the execution's idempotency key");
    assert_eq!(peer.calls("/flaky/a").len(), 4);
    // An instance id is one workflow's: reusing it elsewhere is a conflict.
    api.send(M::PATCH, &format!("/workflows/{draft}"), Some(&operator), body(json!({"status": "active"}))).await;
    let (s, e, _) = api
        .post(
            &format!("/workflows/{draft}/execute"),
            Some(&operator),
            body(json!({"user_id": "wf-user", "instance_id": id})),
        )
        .await;
    assert_eq!((s, e["details"]["field"].clone()), (409, json!("instance_id")), "{e}");

    // Always failing: after max retries the instance fails, lands in workflow.dlq, and re-runs.
    peer.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let broken = active_workflow(&api, &operator, "broken", &one_call(&format!("{peer_url}/broken"), 2)).await;
    let (_, started, _) =
        api.post(&format!("/workflows/{broken}/execute"), Some(&operator), body(json!({"user_id": "wf-user"}))).await;
    let id = started["instance_id"].as_str().expect("id").to_owned();
    wait_status(&pool, &id, "failed", 30).await;
    assert_eq!(peer.calls("/broken").len(), 3, "1 attempt + 2 retries");
    let (_, got, _) = api.send(M::GET, &format!("/workflows/{broken}/instances/{id}"), Some(&operator), vec![]).await;
    assert_eq!(
        (got["error"]["error_type"].clone(), got["error"]["failed_step"].clone()),
        (json!("task_failed"), json!("call"))
    );
    assert!(got["error"]["error_message"].as_str().expect("message").contains("HTTP 500"), "{got}");
    assert!(got["error"]["stack_trace"].as_str().expect("trace").contains("retry 2"), "{got}");
    assert!(eventually(10, || read_all(&cfg, Topic::WorkflowDlq).len() == 1).await, "dead-lettered once");
    let dlq = json_records(&cfg, Topic::WorkflowDlq);
    assert_eq!((dlq[0]["instance_id"].clone(), dlq[0]["error_type"].clone()), (json!(id), json!("task_failed")));
    let (s, failed, _) =
        api.send(M::GET, &format!("/workflows/{broken}/instances?status=failed"), Some(&analyst), vec![]).await;
    assert_eq!((s, failed["data"].as_array().map(Vec::len)), (200, Some(1)), "incidents are listed");
    peer.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    let (s, r, _) = api.post(&format!("/workflows/{broken}/instances/{id}/rerun"), Some(&operator), vec![]).await;
    assert_eq!((s, r["status"].clone()), (202, json!("running")), "{r}");
    wait_status(&pool, &id, "completed", 30).await;
    let calls = peer.calls("/broken");
    assert_eq!(calls.len(), 4);
    assert_ne!(calls[3].key, calls[0].key, "a re-run is a new execution with a new key");
    let (s, _, _) = api.post(&format!("/workflows/{broken}/instances/{id}/rerun"), Some(&operator), vec![]).await;
    assert_eq!(s, 409, "only failed instances re-run");

    // Pause an instance during its timer: nothing runs until it is resumed.
    let later = bpmn(
        &format!(
            r#"<bpmn:startEvent id="start"/><bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="wait"/>
    <bpmn:intermediateCatchEvent id="wait"><bpmn:timerEventDefinition><bpmn:timeDuration>PT1S</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>
    <bpmn:sequenceFlow id="f2" sourceRef="wait" targetRef="call"/>
    <bpmn:serviceTask id="call" lifecycle:type="http" lifecycle:url="{peer_url}/after-pause"/>
    <bpmn:sequenceFlow id="f3" sourceRef="call" targetRef="end"/><bpmn:endEvent id="end"/>"#
        ),
        1,
    );
    let pausable = active_workflow(&api, &operator, "pausable", &later).await;
    let (_, started, _) =
        api.post(&format!("/workflows/{pausable}/execute"), Some(&operator), body(json!({"user_id": "wf-user"}))).await;
    let id = started["instance_id"].as_str().expect("id").to_owned();
    wait_status(&pool, &id, "running", 10).await;
    let (s, p, _) = api.post(&format!("/workflows/{pausable}/instances/{id}/pause"), Some(&operator), vec![]).await;
    assert_eq!((s, p["status"].clone()), (200, json!("paused")), "{p}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(peer.calls("/after-pause").is_empty(), "a paused instance's timer does not move it on");
    assert_eq!(status_of(&pool, &id).await, "paused");
    let (s, _, _) = api.post(&format!("/workflows/{pausable}/instances/{id}/pause"), Some(&operator), vec![]).await;
    assert_eq!(s, 409, "already paused");
    let (s, r, _) = api.post(&format!("/workflows/{pausable}/instances/{id}/resume"), Some(&operator), vec![]).await;
    assert_eq!((s, r["status"].clone()), (200, json!("running")), "{r}");
    wait_status(&pool, &id, "completed", 10).await;
    assert_eq!(peer.calls("/after-pause").len(), 1);

    // Cancel a waiting instance; a second cancel is a conflict.
    let waits = bpmn(
        r#"<bpmn:startEvent id="start"/><bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="wait"/>
    <bpmn:intermediateCatchEvent id="wait"><bpmn:timerEventDefinition><bpmn:timeDuration>PT1H</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>
    <bpmn:sequenceFlow id="f2" sourceRef="wait" targetRef="end"/><bpmn:endEvent id="end"/>"#,
        1,
    );
    let slow = active_workflow(&api, &operator, "slow", &waits).await;
    let (_, started, _) =
        api.post(&format!("/workflows/{slow}/execute"), Some(&operator), body(json!({"user_id": "wf-user"}))).await;
    let id = started["instance_id"].as_str().expect("id").to_owned();
    wait_status(&pool, &id, "running", 10).await;
    let (s, c, _) = api.send(M::DELETE, &format!("/workflows/{slow}/instances/{id}"), Some(&operator), vec![]).await;
    assert_eq!((s, c["status"].clone()), (200, json!("cancelled")), "{c}");
    let (s, _, _) = api.send(M::DELETE, &format!("/workflows/{slow}/instances/{id}"), Some(&operator), vec![]).await;
    assert_eq!(s, 409);
    assert!(
        eventually(10, || json_records(&cfg, Topic::WorkflowEvents)
            .iter()
            .any(|e| e["event_type"] == "workflow.cancelled" && e["instance_id"] == json!(id)))
        .await
    );
    // The same through a cancel command on workflow.commands.
    let (_, started, _) =
        api.post(&format!("/workflows/{slow}/execute"), Some(&operator), body(json!({"user_id": "wf-user"}))).await;
    let id = started["instance_id"].as_str().expect("id").to_owned();
    wait_status(&pool, &id, "running", 10).await;
    let command = OutRecord {
        topic: cfg.topics.name(Topic::WorkflowCommands),
        key: Some(b"wf-user".to_vec()),
        payload: json!({"type": "cancel", "instance_id": id}).to_string().into_bytes(),
        headers: vec![],
    };
    KafkaSink::new(&cfg.kafka).expect("producer").send_all(&[command]).await.expect("produce");
    wait_status(&pool, &id, "cancelled", 20).await;
    let (_, got, _) = api.send(M::GET, &format!("/workflows/{slow}/instances/{id}"), Some(&operator), vec![]).await;
    assert!(got["history"].as_array().expect("history").iter().any(|h| h["what"] == "cancelled"), "{got}");
    assert!(
        eventually(10, || json_records(&cfg, Topic::WorkflowEvents)
            .iter()
            .any(|e| e["event_type"] == "workflow.cancelled" && e["instance_id"] == json!(id)))
        .await
    );

    running.stop().await;
    pool.close().await;
    drop_database(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_1000_instances_in_flight_completes_each_exactly_once() {
    let (mut cfg, pool, _) = setup("wfkill").await;
    cfg.workflows.max_in_flight = 64;
    let peer = Peer { delay_ms: 5, ..Peer::default() };
    let (peer, peer_url) = peer.start().await;
    // Two calls with a 1 s timer between them.
    let xml = bpmn(
        &format!(
            r#"<bpmn:startEvent id="start"/>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="first"/>
    <bpmn:serviceTask id="first" lifecycle:type="http" lifecycle:url="{peer_url}/first"/>
    <bpmn:sequenceFlow id="f2" sourceRef="first" targetRef="wait"/>
    <bpmn:intermediateCatchEvent id="wait"><bpmn:timerEventDefinition><bpmn:timeDuration>PT1S</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>
    <bpmn:sequenceFlow id="f3" sourceRef="wait" targetRef="second"/>
    <bpmn:serviceTask id="second" lifecycle:type="http" lifecycle:url="{peer_url}/second"/>
    <bpmn:sequenceFlow id="f4" sourceRef="second" targetRef="end"/>
    <bpmn:endEvent id="end"/>"#
        ),
        3,
    );
    let wf: Uuid = sqlx::query_scalar(
        "INSERT INTO workflows (name, bpmn_xml, status) VALUES ('two calls', $1, 'active') RETURNING id",
    )
    .bind(&xml)
    .fetch_one(&pool)
    .await
    .expect("workflow");
    // 1,000 start commands on workflow.commands for 100 users (several instances per user run side by side).
    let users: Vec<String> = (0..100).map(|i| format!("{}u{i}", cfg.topics.prefix)).collect();
    for u in &users {
        insert_user(&pool, u).await;
    }
    let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
    let commands: Vec<OutRecord> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let user = &users[i % users.len()];
            OutRecord {
                topic: cfg.topics.name(Topic::WorkflowCommands),
                key: Some(user.as_bytes().to_vec()),
                payload: json!({"type": "start", "instance_id": id, "workflow_id": wf, "user_id": user, "variables": {"i": i}}).to_string().into_bytes(),
                headers: vec![],
            }
        })
        .collect();
    // Plus one command that cannot run: dead-lettered with a reason.
    let mut commands = commands;
    commands.push(OutRecord {
        topic: cfg.topics.name(Topic::WorkflowCommands),
        key: None,
        payload: br#"{"type":"start","workflow_id":"not-a-uuid","user_id":"x"}"#.to_vec(),
        headers: vec![],
    });
    KafkaSink::new(&cfg.kafka).expect("producer").send_all(&commands).await.expect("produce commands");

    let dir = std::env::temp_dir().join(format!("lifecycle-{}", cfg.workflows.group_id));
    std::fs::create_dir_all(&dir).expect("dir");
    let config_path = dir.join("lifecycle.toml");
    std::fs::write(&config_path, toml::to_string(&cfg).expect("toml")).expect("config");
    let spawn = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_lifecycle"))
            .args(["run", "workflows"])
            .env("LIFECYCLE_CONFIG", &config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(name)).expect("log"))
            .spawn()
            .expect("spawn lifecycle run workflows")
    };
    let done = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM workflow_executions WHERE status = 'completed'")
            .fetch_one(&pool)
            .await
            .expect("count")
    };
    let mut first = spawn("first.log");
    // Kill while instances are spread over both tasks and the timer.
    let mut mid_flight = false;
    for _ in 0..1500 {
        if peer.calls("/second").len() >= 150 {
            mid_flight = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("kill -9");
    first.wait().expect("reap");
    assert!(mid_flight, "progress before the kill; logs in {}", dir.display());
    let at_kill = done(pool.clone()).await;
    let calls_at_kill = peer.calls("/").len();
    assert!(at_kill < 1000, "killed mid-flight ({at_kill} completed)");
    let mut second = spawn("second.log");
    let mut finished = false;
    for _ in 0..1200 {
        if done(pool.clone()).await == 1000 {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill").arg(second.id().to_string()).status();
    let _ = tokio::task::spawn_blocking(move || second.wait()).await;
    assert!(finished, "all 1000 completed after the restart; logs in {}", dir.display());
    eprintln!("workflow kill -9 test: {at_kill} completed and {calls_at_kill} calls made at the kill");

    // Every instance completed once, and called each service under one key per execution.
    let rows = sqlx::query("SELECT id, status, completed_at IS NOT NULL FROM workflow_executions")
        .fetch_all(&pool)
        .await
        .expect("instances");
    assert_eq!(rows.len(), 1000);
    assert!(rows.iter().all(|r| r.get::<String, _>(1) == "completed" && r.get::<bool, _>(2)));
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for c in peer.calls("/") {
        *per_key.entry(c.key.expect("key")).or_default() += 1;
    }
    for id in &ids {
        for node in ["first", "second"] {
            let keys: Vec<&String> = per_key.keys().filter(|k| k.starts_with(&format!("{id}:{node}:"))).collect();
            assert_eq!(keys.len(), 1, "{id} {node}: one execution key, got {keys:?}");
        }
    }
    // Repeats are only the calls in flight at the kill (at-least-once): at most one per instance in flight.
    let repeats: usize = per_key.values().map(|n| n - 1).sum();
    assert!(repeats <= cfg.workflows.max_in_flight, "{repeats} repeated calls");
    eprintln!("workflow kill -9 test: {repeats} calls repeated under their idempotency key");
    // workflow.events: one completion per instance once deduplicated by event_id.
    let completions: HashSet<String> = json_records(&cfg, Topic::WorkflowEvents)
        .iter()
        .filter(|e| e["event_type"] == "workflow.completed")
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect();
    assert_eq!(completions.len(), 1000);
    let dlq = json_records(&cfg, Topic::WorkflowDlq);
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(
        (dlq[0]["reason"].clone(), dlq[0]["source"]["topic"].clone()),
        (json!("invalid_field"), json!(cfg.topics.name(Topic::WorkflowCommands)))
    );

    pool.close().await;
    drop_database(&cfg).await;
}

/// Server-side request forgery: webhooks, HTTP tasks and callbacks reach only
/// public addresses or what `[egress] allow` names; refused at registration
/// (a 400 naming the field), at delivery (an incident, a failed delivery, no
/// retries), and on redirects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_requests_reach_only_public_or_allowlisted_addresses() {
    let (mut cfg, pool, _) = setup("wfegress").await;
    // The peer listens on 127.0.0.2 and only that address is allowed: the
    // rest of loopback (127.0.0.1, localhost) is not.
    let (peer, peer_url) = Peer::default().start_on("127.0.0.2").await;
    cfg.egress.allow = vec!["127.0.0.2".into()];
    let api = start_with(cfg.clone()).await;
    let (_, admin) = key(&cfg, Role::Admin).await;
    insert_user(&pool, "wf-user").await;
    let ok = active_workflow(&api, &admin, "ok", &one_call(&format!("{peer_url}/ok"), 3)).await;

    for url in [
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9000/hook",
        "http://[::ffff:169.254.169.254]/",
        "http://localhost/hook",
        "http://0.0.0.0/",
    ] {
        let (s, e, _) =
            api.post("/webhooks", Some(&admin), body(json!({"url": url, "event_types": ["segment.entered"]}))).await;
        assert_eq!(
            (s, e["code"].clone(), e["details"]["field"].clone()),
            (400, json!("non_public_address"), json!("url")),
            "{url}: {e}"
        );
        let (s, e, _) =
            api.post("/workflows", Some(&admin), body(json!({"name": "ssrf", "bpmn_xml": one_call(url, 1)}))).await;
        assert_eq!(
            (s, e["code"].clone(), e["details"]["field"].clone(), e["details"]["id"].clone()),
            (400, json!("non_public_address"), json!("bpmn_xml"), json!("call")),
            "{url}: {e}"
        );
        let (s, e, _) = api
            .post(
                &format!("/workflows/{ok}/execute"),
                Some(&admin),
                body(json!({"user_id": "wf-user", "callback_url": url})),
            )
            .await;
        assert_eq!((s, e["details"]["field"].clone()), (400, json!("callback_url")), "{url}: {e}");
    }
    let (s, e, _) = api
        .post(
            "/webhooks",
            Some(&admin),
            body(json!({"url": "http://169.254.169.254/", "event_types": ["segment.entered"]})),
        )
        .await;
    assert!(e["message"].as_str().is_some_and(|m| m.contains("169.254.169.254 is a link-local address")), "{s} {e}");
    // A public address, and the allowed peer, are accepted.
    for url in ["https://93.184.215.14/hook", &format!("{peer_url}/hook")] {
        let (s, e, _) =
            api.post("/webhooks", Some(&admin), body(json!({"url": url, "event_types": ["segment.entered"]}))).await;
        assert_eq!(s, 201, "{url}: {e}");
    }

    let (running, _) = Running::engine(&cfg);
    // An allowed task whose answer redirects to the metadata service: the
    // redirect is not followed, and the task fails at once (an incident, no retries).
    let redirected =
        active_workflow(&api, &admin, "redirected", &one_call(&format!("{peer_url}/to-metadata"), 3)).await;
    let (s, started, _) =
        api.post(&format!("/workflows/{redirected}/execute"), Some(&admin), body(json!({"user_id": "wf-user"}))).await;
    assert_eq!(s, 202, "{started}");
    let id = started["instance_id"].as_str().expect("id").to_owned();
    wait_status(&pool, &id, "failed", 30).await;
    let (_, got, _) = api.send(M::GET, &format!("/workflows/{redirected}/instances/{id}"), Some(&admin), vec![]).await;
    assert_eq!(got["error"]["error_type"], "egress_refused", "{got}");
    assert!(got["error"]["error_message"].as_str().is_some_and(|m| m.contains("169.254.169.254")), "{got}");
    assert_eq!(peer.calls("/to-metadata").len(), 1, "not retried");

    // A start command on workflow.commands (no API in between) with a private
    // callback: the instance runs, the callback delivery fails at once with the reason.
    let instance = uuid::Uuid::new_v4();
    let command = OutRecord {
        topic: cfg.topics.name(Topic::WorkflowCommands),
        key: Some(b"wf-user".to_vec()),
        payload: json!({"type": "start", "workflow_id": ok, "user_id": "wf-user", "instance_id": instance,
                        "callback_url": "http://10.0.0.1/callback"})
        .to_string()
        .into_bytes(),
        headers: vec![],
    };
    KafkaSink::new(&cfg.kafka).expect("producer").send_all(&[command]).await.expect("produce");
    wait_status(&pool, &instance.to_string(), "completed", 30).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (status, attempts, error) = loop {
        let row: Option<(String, i32, Option<String>)> = sqlx::query_as(
            "SELECT status, attempts, last_error FROM webhook_deliveries WHERE url = 'http://10.0.0.1/callback'",
        )
        .fetch_optional(&pool)
        .await
        .expect("deliveries");
        match row {
            Some(r) if r.0 != "pending" => break r,
            _ if tokio::time::Instant::now() > deadline => panic!("the callback delivery was not attempted: {row:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!((status.as_str(), attempts), ("failed", 1), "{error:?}");
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.starts_with("egress_refused: ") && e.contains("10.0.0.1 is a private address")),
        "{error:?}"
    );

    running.stop().await;
    pool.close().await;
    drop_database(&cfg).await;
}
