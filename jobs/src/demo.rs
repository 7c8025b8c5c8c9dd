//! The main job end to end: start the stack, run the API, the stages and the
//! workflow engine, define a segment, a trigger and a BPMN workflow through
//! the API, send a demo workload over Kafka and HTTP, and print what happened,
//! read back from the output topics and tables.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lifecycle_connectors::http::auth::{ApiKeys, Role};
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_pipeline::dlq::DlqRecord;
use lifecycle_pipeline::{Topic, Validator};
use lifecycle_schemas::SchemaFiles;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use tokio::sync::watch;

use crate::config::LifecycleConfig;
use crate::stages::validate::{self, StageHandle};
use crate::workload::{AvroEncoder, Broken, Workload};

/// High watermarks of every partition of `topic`.
///
/// A partition whose leader the broker is still settling (a topic created a
/// moment ago, a broker restarting) answers `NOT_LEADER_OR_FOLLOWER` or
/// `LEADER_NOT_AVAILABLE` for a short while: those are asked again for up to
/// 15 s; any other error is returned at once.
pub fn high_watermarks(cfg: &LifecycleConfig, topic: &str) -> Result<BTreeMap<i32, i64>, String> {
    let c: BaseConsumer = cfg.kafka.consumer("lifecycle-demo-reader").create().map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match watermarks_once(&c, topic) {
            Err(e) if is_settling(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other.map_err(|e| e.to_string()),
        }
    }
}

fn watermarks_once(c: &BaseConsumer, topic: &str) -> Result<BTreeMap<i32, i64>, rdkafka::error::KafkaError> {
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut out = BTreeMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            out.insert(p.id(), high);
        }
    }
    Ok(out)
}

/// Errors a partition gives while its leadership is being settled.
fn is_settling(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::NotLeaderForPartition | C::LeaderNotAvailable | C::UnknownTopicOrPartition)
    )
}

/// A record read back: (partition, offset, key, payload).
pub type Fetched = (i32, i64, Option<Vec<u8>>, Vec<u8>);

/// A reader's context: reaching the end of a partition is what the reader
/// waits for, not an error to log.
struct EndOfPartitionIsNews;

impl rdkafka::ClientContext for EndOfPartitionIsNews {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        if !matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndOfPartitionIsNews {}

/// Reads every committed record of `topic` from `from` up to the current end
/// of each partition (`read_committed`: records of open or aborted
/// transactions are not returned; transaction markers take offsets, so the end
/// is found by the consumer reaching it, not by counting records).
pub fn read_from(cfg: &LifecycleConfig, topic: &str, from: &BTreeMap<i32, i64>) -> Result<Vec<Fetched>, String> {
    let to = high_watermarks(cfg, topic)?;
    let c: BaseConsumer<EndOfPartitionIsNews> = cfg
        .kafka
        .consumer("lifecycle-demo-reader")
        .set("enable.partition.eof", "true")
        .create_with_context(EndOfPartitionIsNews)
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    let mut open: std::collections::BTreeSet<i32> = std::collections::BTreeSet::new();
    for (&p, &high) in &to {
        let start = from.get(&p).copied().unwrap_or(0);
        if high > start {
            tpl.add_partition_offset(topic, p, Offset::Offset(start)).map_err(|e| e.to_string())?;
            open.insert(p);
        }
    }
    let mut out = Vec::new();
    if open.is_empty() {
        return Ok(out);
    }
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !open.is_empty() && std::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) if m.offset() < to.get(&m.partition()).copied().unwrap_or(0) => {
                out.push((
                    m.partition(),
                    m.offset(),
                    m.key().map(<[u8]>::to_vec),
                    m.payload().unwrap_or_default().to_vec(),
                ));
                if m.offset() + 1 >= to.get(&m.partition()).copied().unwrap_or(0) {
                    open.remove(&m.partition());
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

/// Runs the demo; `events` valid events go straight to Kafka as Avro.
pub async fn run(cfg: &LifecycleConfig, events: usize) -> Result<(), String> {
    println!("== 1. local stack ==");
    crate::stack::up(cfg).await.map_err(|e| e.to_string())?;
    let registration = crate::setup::register(cfg).await?;
    let files = SchemaFiles::load(&cfg.schemas_dir()).map_err(|e| e.to_string())?;
    let envelope = files.envelope().map_err(|e| e.to_string())?;
    let validator = Validator::new(Arc::new(files.catalog().map_err(|e| e.to_string())?), cfg.validation.limits()?);
    let pool = lifecycle_connectors::postgres::connect(&cfg.postgres).await.map_err(|e| e.to_string())?;
    let (_, api_key) = ApiKeys::create(&pool, "demo", Role::Operator).await.map_err(|e| e.to_string())?;

    println!(
        "\n== 2. stages: API on http://{} + validation + profile + ClickHouse sink + workflow engine ==",
        cfg.ingest.listen_addr
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let handle = StageHandle::new()?;
    let stage = {
        let (cfg, handle, rx) = (cfg.clone(), handle.clone(), stop_rx.clone());
        tokio::spawn(async move { validate::run(&cfg, handle, rx).await })
    };
    let profiles = {
        let (cfg, rx) = (cfg.clone(), stop_rx.clone());
        let handle = crate::stages::profile::ProfileHandle::new()?;
        tokio::spawn(async move { crate::stages::profile::run(&cfg, handle, rx).await })
    };
    let sink_handle = crate::stages::analytics::SinkHandle::new()?;
    let analytics = {
        let (cfg, handle, rx) = (cfg.clone(), sink_handle.clone(), stop_rx.clone());
        tokio::spawn(async move { crate::stages::analytics::run(&cfg, handle, rx).await })
    };
    let engine = {
        let (cfg, rx) = (cfg.clone(), stop_rx.clone());
        let handle = crate::stages::workflows::EngineHandle::new()?;
        tokio::spawn(async move { crate::stages::workflows::run(&cfg, handle, rx).await })
    };
    // CDC of public.users: what the profile stage and any other system write
    // there reaches Kafka as Debezium change events. A slot of the demo's own,
    // dropped at the end, so no WAL is kept for it afterwards.
    let cdc = crate::demo::Cdc::start(cfg, &pool).await?;
    let (stop_api, api_rx) = watch::channel(false);
    let api = {
        let cfg = cfg.clone();
        tokio::spawn(async move { crate::services::run_ingest(&cfg, api_rx).await })
    };
    let valid_topic = cfg.topics.name(Topic::EventsValid);
    let dlq_topic = cfg.topics.name(Topic::EventsDlq);
    let valid_from = high_watermarks(cfg, &valid_topic)?;
    let dlq_from = high_watermarks(cfg, &dlq_topic)?;

    let http = reqwest::Client::builder().no_proxy().build().map_err(|e| e.to_string())?;
    let base = format!("http://{}", cfg.ingest.listen_addr);
    crate::stack::wait_for(Duration::from_secs(10), || async {
        http.get(format!("{base}/healthz")).send().await.is_ok()
    })
    .await;
    println!("\n== 3. demo workload ==");
    let run_id = format!("demo{}", Utc::now().timestamp_millis());
    let rules = define_rules(&http, &base, &api_key, &run_id).await?;
    let mut w = Workload::new(42, 500, &run_id, Utc::now());
    let enc = AvroEncoder { validator: &validator, envelope: &envelope, schema_id: registration.raw_envelope_id };
    let raw_topic = cfg.topics.name(Topic::EventsRaw);
    let mut records = Vec::with_capacity(events + 50);
    for _ in 0..events {
        let e = w.next_event();
        let key = e["user_id"].as_str().unwrap_or_default().as_bytes().to_vec();
        records.push(OutRecord { topic: raw_topic.clone(), key: Some(key), payload: enc.encode(&e)?, headers: vec![] });
    }
    let broken_per_kind = 10;
    for kind in Broken::ALL {
        for _ in 0..broken_per_kind {
            records.push(OutRecord {
                topic: raw_topic.clone(),
                key: Some(b"broken".to_vec()),
                payload: w.broken(kind, &enc),
                headers: vec![],
            });
        }
    }
    let sink = KafkaSink::new(&cfg.kafka).map_err(|e| e.to_string())?;
    sink.send_all(&records).await.map_err(|e| e.to_string())?;
    println!(
        "kafka: produced {} Confluent-Avro events + {} broken records (5 kinds x {broken_per_kind}) to {raw_topic}",
        events,
        records.len() - events
    );

    let mut batch: Vec<serde_json::Value> = (0..100).map(|_| w.next_event()).collect();
    batch[3]["event_type"] = json!("transaction.purchase");
    batch[7]["timestamp"] = json!("next tuesday");
    let resp = http
        .post(format!("{base}/events/batch"))
        .bearer_auth(&api_key)
        .json(&json!({ "events": batch }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    let http_accepted = body["accepted"].as_u64().unwrap_or(0);
    println!(
        "http: POST /events/batch (100 events, 2 bad) -> {status}: accepted {http_accepted}, rejected {}",
        body["rejected"]
    );
    let mut bad = w.next_event();
    bad["user_id"] = json!(12345);
    let resp =
        http.post(format!("{base}/events")).bearer_auth(&api_key).json(&bad).send().await.map_err(|e| e.to_string())?;
    println!(
        "http: POST /events with a numeric user_id -> {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );

    let expected = records.len() as u64 + http_accepted;
    let done = crate::stack::wait_for(Duration::from_secs(120), || async { handle.counts().0 >= expected }).await;
    if !done {
        let _ = stop_tx.send(true);
        return Err(format!("the stage processed {} of {expected} records in 120 s", handle.counts().0));
    }
    // Profiles of this run's users: wait until they hold every valid event.
    let applied_sql = "SELECT count(*), COALESCE(sum((profile->>'events_applied')::bigint), 0)::bigint \
                       FROM users WHERE starts_with(external_id, $1)";
    let valid_count = handle.counts().1;
    let profiled = crate::stack::wait_for(Duration::from_secs(120), || async {
        let row: Result<(i64, i64), _> = sqlx::query_as(applied_sql).bind(&run_id).fetch_one(&pool).await;
        row.is_ok_and(|(_, n)| n as u64 >= valid_count)
    })
    .await;
    let inserted = || sink_handle.metrics.rows_inserted.with_label_values(&["events"]).get();
    let sunk = crate::stack::wait_for(Duration::from_secs(120), || async { inserted() >= valid_count }).await;
    let settled = crate::stack::wait_for(Duration::from_secs(60), || async {
        let open: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM workflow_executions WHERE workflow_id = $1::uuid AND status IN ('pending', 'running')",
        )
        .bind(&rules.workflow)
        .fetch_one(&pool)
        .await;
        open.is_ok_and(|n| n == 0)
    })
    .await;
    let _ = stop_tx.send(true); // the sink rolls up metrics_daily once more as it stops
    stage.await.map_err(|e| e.to_string())??;
    profiles.await.map_err(|e| e.to_string())??;
    analytics.await.map_err(|e| e.to_string())??;
    engine.await.map_err(|e| e.to_string())??;
    let cdc_report = cdc.finish(cfg, &pool).await?;
    if !settled {
        let _ = stop_api.send(true);
        return Err("workflow instances were still running after 60 s".into());
    }
    if !profiled {
        let _ = stop_api.send(true);
        return Err("the profile stage did not apply every valid event in 120 s".into());
    }
    if !sunk {
        let _ = stop_api.send(true);
        return Err(format!("the ClickHouse sink inserted {} of {valid_count} events in 120 s", inserted()));
    }
    let (_, analyst_key) = ApiKeys::create(&pool, "demo-analyst", Role::Analyst).await.map_err(|e| e.to_string())?;
    let analytics = |query: &'static str| {
        let request = http.get(format!("{base}/analytics?{query}")).bearer_auth(&analyst_key);
        async move {
            let resp = request.send().await.map_err(|e| e.to_string())?;
            resp.json::<serde_json::Value>().await.map_err(|e| e.to_string())
        }
    };
    let instance = report_rules(&http, &base, &api_key, &pool, &rules).await?;
    let analytics_query = "metric=events&dimensions=lifecycle_stage&date_range=last_2d&aggregation=total";
    let revenue_query = "metric=revenue&date_range=last_2d&aggregation=total";
    let per_stage = analytics(analytics_query).await?;
    let revenue = analytics(revenue_query).await?;
    let _ = stop_api.send(true);
    api.await.map_err(|e| e.to_string())??;

    println!("\n== 4. what happened ==");
    println!("{cdc_report}");
    let valid = read_from(cfg, &valid_topic, &valid_from)?;
    let dlq = read_from(cfg, &dlq_topic, &dlq_from)?;
    let (cin, cvalid, cdlq) = handle.counts();
    println!("validation stage: in {cin} = valid {cvalid} + dlq {cdlq}");
    println!("topics: {} new records on {valid_topic}, {} on {dlq_topic}", valid.len(), dlq.len());
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut sample = None;
    for (_, _, _, payload) in &dlq {
        if let Ok(rec) = serde_json::from_slice::<DlqRecord>(payload) {
            *reasons.entry(rec.reason.as_str().to_owned()).or_default() += 1;
            if sample.is_none() && rec.reason == lifecycle_pipeline::ReasonCode::InvalidProperties {
                sample = Some(rec);
            }
        }
    }
    for (reason, n) in &reasons {
        println!("  dlq reason {reason:<24} {n}");
    }
    if let Some(mut s) = sample {
        s.original_base64 =
            format!("{}... ({} chars)", &s.original_base64[..24.min(s.original_base64.len())], s.original_base64.len());
        println!("sample DLQ record:\n{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    }
    let (users, applied): (i64, i64) =
        sqlx::query_as(applied_sql).bind(&run_id).fetch_one(&pool).await.map_err(|e| e.to_string())?;
    println!("\nprofile stage: {users} user profiles in PostgreSQL hold {applied} events (= valid {cvalid})");
    let stages: Vec<(String, i64)> = sqlx::query_as(
        "SELECT current_lifecycle_stage, count(*) FROM users WHERE starts_with(external_id, $1) GROUP BY 1 ORDER BY 2 DESC",
    )
    .bind(&run_id)
    .fetch_all(&pool)
    .await
    .map_err(|e| e.to_string())?;
    let line: Vec<String> = stages.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("lifecycle stages: {}", line.join(", "));
    let top: Option<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT external_id, profile FROM users WHERE starts_with(external_id, $1) \
         ORDER BY (profile->>'events_applied')::bigint DESC LIMIT 1",
    )
    .bind(&run_id)
    .fetch_optional(&pool)
    .await
    .map_err(|e| e.to_string())?;
    if let Some((user, p)) = top {
        println!(
            "busiest user {user}: {} events, {} sessions, {} purchases, revenue {:.2}, engagement score {}, CLV {:.2}, stage {}",
            p["events_applied"],
            p["behavioral"]["session_count"],
            p["transaction"]["total_purchases"],
            p["transaction"]["total_revenue_cents"].as_i64().unwrap_or(0) as f64 / 100.0,
            p["behavioral"]["engagement_score"],
            p["transaction"]["customer_lifetime_value"].as_f64().unwrap_or(0.0),
            p["lifecycle_stage"]
        );
    }
    println!(
        "\nanalytics sink: {} events and {} stage transitions inserted into ClickHouse database '{}', {} day(s) rolled up into metrics_daily",
        inserted(),
        sink_handle.metrics.rows_inserted.with_label_values(&["lifecycle_events"]).get(),
        cfg.clickhouse.database,
        sink_handle.metrics.days_rolled_up.get()
    );
    println!("\n{instance}");
    println!("GET /analytics?{analytics_query} (analyst key), all users, last 2 days:");
    for p in per_stage["data"].as_array().into_iter().flatten() {
        println!("  {:<12} {:>8} events", p["lifecycle_stage"].as_str().unwrap_or("?"), p["value"]);
    }
    println!(
        "GET /analytics?{revenue_query} -> {} (data as of {})",
        revenue["data"][0]["value"], revenue["metadata"]["data_as_of"]
    );
    println!(
        "\ninspect with kcat: kcat -b {} -C -t {dlq_topic} -o -3 -e   |   registry: curl {}/subjects",
        cfg.kafka.bootstrap_servers, cfg.registry_url
    );
    if cin != cvalid + cdlq || valid.len() as u64 != cvalid || dlq.len() as u64 != cdlq {
        return Err("counts do not add up".into());
    }
    Ok(())
}

/// What the demo defined through the API.
struct DemoRules {
    workflow: String,
    segment: String,
    trigger: String,
}

/// Sends one API call; non-2xx answers are errors carrying the body.
async fn call(
    http: &reqwest::Client,
    (method, url): (reqwest::Method, String),
    key: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let mut req = http.request(method.clone(), &url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if status.is_success() { Ok(v) } else { Err(format!("{method} {url}: {status} {v}")) }
}

/// A workflow (big purchases: emit to workflow.events, wait 1 s, tag the user),
/// a segment (this run's buyers) and a trigger (this run's purchases of 100 or
/// more), defined through the API and scoped to this run's users.
async fn define_rules(http: &reqwest::Client, base: &str, key: &str, run_id: &str) -> Result<DemoRules, String> {
    use reqwest::Method as M;
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:lifecycle="https://lifecycle.dev/schema/bpmn" id="demo">
  <bpmn:process id="big_purchase" name="Big purchase follow-up" isExecutable="true" lifecycle:maxRetries="3">
    <bpmn:startEvent id="start"/>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="big"/>
    <bpmn:exclusiveGateway id="big" default="small"/>
    <bpmn:sequenceFlow id="f2" sourceRef="big" targetRef="announce">
      <bpmn:conditionExpression>${event.event_properties.amount >= 100}</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="small" sourceRef="big" targetRef="end"/>
    <bpmn:serviceTask id="announce" lifecycle:type="kafka" lifecycle:topic="workflow.events"/>
    <bpmn:sequenceFlow id="f3" sourceRef="announce" targetRef="wait"/>
    <bpmn:intermediateCatchEvent id="wait">
      <bpmn:timerEventDefinition><bpmn:timeDuration>PT1S</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:intermediateCatchEvent>
    <bpmn:sequenceFlow id="f4" sourceRef="wait" targetRef="tag"/>
    <bpmn:serviceTask id="tag" lifecycle:type="profile-update" lifecycle:attributes='{"big_spender": true}'/>
    <bpmn:sequenceFlow id="f5" sourceRef="tag" targetRef="end"/>
    <bpmn:endEvent id="end"/>
  </bpmn:process>
</bpmn:definitions>"#;
    let wf = call(
        http,
        (M::POST, format!("{base}/workflows")),
        key,
        Some(json!({"name": format!("big purchase {run_id}"), "bpmn_xml": xml})),
    )
    .await?;
    let workflow = wf["id"].as_str().unwrap_or_default().to_owned();
    call(http, (M::PATCH, format!("{base}/workflows/{workflow}")), key, Some(json!({"status": "active"}))).await?;
    let ours = json!({"field": "profile.user_id", "op": "contains", "value": run_id});
    let seg = json!({"name": format!("buyers {run_id}"), "conditions": {"and": [ours, {"events": "transaction.purchase_complete", "within": "P7D", "op": "gte", "value": 1}]}});
    let segment = call(http, (M::POST, format!("{base}/segments")), key, Some(seg)).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let trig = json!({
        "name": format!("big purchase {run_id}"), "event_type": "transaction.purchase_complete", "workflow_id": workflow,
        "conditions": {"and": [{"field": "event.user_id", "op": "contains", "value": run_id},
                               {"field": "event.event_properties.amount", "op": "gte", "value": 100}]},
    });
    let trigger = call(http, (M::POST, format!("{base}/triggers")), key, Some(trig)).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!(
        "api: workflow {workflow} (BPMN: gateway, kafka task, 1 s timer, profile update) active; segment {segment}; trigger {trigger}"
    );
    Ok(DemoRules { workflow, segment, trigger })
}

/// Describes what the segment, trigger and engine did (with one instance's
/// context) and switches the demo's trigger and segment off.
async fn report_rules(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    pool: &sqlx::PgPool,
    r: &DemoRules,
) -> Result<String, String> {
    use reqwest::Method as M;
    let q = |sql: &'static str, id: &str| {
        let (pool, id) = (pool.clone(), id.to_owned());
        async move { sqlx::query_scalar::<_, i64>(sql).bind(id).fetch_one(&pool).await.map_err(|e| e.to_string()) }
    };
    let met =
        q("SELECT count(*) FROM trigger_executions WHERE trigger_id = $1::uuid AND condition_met", &r.trigger).await?;
    let all = q("SELECT count(*) FROM trigger_executions WHERE trigger_id = $1::uuid", &r.trigger).await?;
    let members = q("SELECT count(*) FROM user_segment_memberships WHERE segment_id = $1::uuid", &r.segment).await?;
    let done = q(
        "SELECT count(*) FROM workflow_executions WHERE workflow_id = $1::uuid AND status = 'completed'",
        &r.workflow,
    )
    .await?;
    let failed =
        q("SELECT count(*) FROM workflow_executions WHERE workflow_id = $1::uuid AND status = 'failed'", &r.workflow)
            .await?;
    let mut text = format!(
        "segment: {members} users bought this week; trigger: {all} purchases evaluated, {met} of 100 or more\n\
         workflow engine: {done} instances completed, {failed} failed (each: kafka task, 1 s timer, profile update)\n"
    );
    let list = call(http, (M::GET, format!("{base}/workflows/{}/instances?limit=1", r.workflow)), key, None).await?;
    if list["data"].as_array().is_none_or(Vec::is_empty) {
        text.push_str("no instance ran (no purchase of 100 or more in this workload)");
    }
    if let Some(id) = list["data"][0]["instance_id"].as_str() {
        let i = call(http, (M::GET, format!("{base}/workflows/{}/instances/{id}", r.workflow)), key, None).await?;
        let steps: Vec<String> = i["history"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("{} {}", s["node"].as_str().unwrap_or(""), s["what"].as_str().unwrap_or("")))
            .collect();
        text += &format!(
            "GET /workflows/{}/instances/{id}: status {}, user {}, {} -> {}, steps: {}",
            r.workflow,
            i["status"],
            i["user_id"],
            i["start_time"],
            i["end_time"],
            steps.join(" | ")
        );
    }
    call(http, (M::POST, format!("{base}/triggers/{}/disable", r.trigger)), key, None).await?;
    call(http, (M::PATCH, format!("{base}/segments/{}", r.segment)), key, Some(json!({"enabled": false}))).await?;
    Ok(text)
}

/// The demo's CDC connector on `public.users`.
pub(crate) struct Cdc {
    topic: String,
    from: BTreeMap<i32, i64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), lifecycle_connectors::cdc::connector::CdcError>>,
    slot: String,
}

impl Cdc {
    async fn start(cfg: &LifecycleConfig, pool: &sqlx::PgPool) -> Result<Self, String> {
        let cdc_cfg = lifecycle_connectors::cdc::CdcConfig {
            tables: vec!["public.users".into()],
            slot: "lifecycle_cdc_demo".into(),
            publication: "lifecycle_cdc_demo".into(),
            snapshot: false,
            metrics_addr: None,
            ..cfg.cdc.clone()
        };
        let metrics = lifecycle_pipeline::metrics::CdcMetrics::register(&prometheus::Registry::new())
            .map_err(|e| e.to_string())?;
        let connector = lifecycle_connectors::cdc::connector::Connector::new(
            cdc_cfg.clone(),
            &cfg.postgres.url,
            pool.clone(),
            &cfg.kafka,
            cfg.topics.replication_factor,
            metrics,
        )
        .await
        .map_err(|e| format!("CDC: {e}"))?;
        let topic = connector.topics().into_iter().next().map(|(_, t)| t).ok_or("CDC: no topic")?;
        let from = high_watermarks(cfg, &topic)?;
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move { connector.run(rx).await });
        println!("CDC connector: public.users -> {topic} (slot {})", cdc_cfg.slot);
        Ok(Self { topic, from, stop, task, slot: cdc_cfg.slot })
    }

    /// Another system changes a user's attributes in PostgreSQL; waits until
    /// its change event is on Kafka, stops the connector, drops its slot and
    /// says what it wrote.
    async fn finish(self, cfg: &LifecycleConfig, pool: &sqlx::PgPool) -> Result<String, String> {
        let changed: Option<(uuid::Uuid,)> = sqlx::query_as(
            "UPDATE users SET attributes = attributes || '{\"crm_tier\": \"gold\"}' \
             WHERE id = (SELECT id FROM users ORDER BY updated_at DESC LIMIT 1) RETURNING id",
        )
        .fetch_optional(pool)
        .await
        .map_err(|e| e.to_string())?;
        let mut events = Vec::new();
        let mut crm = None;
        for _ in 0..50 {
            events = read_from(cfg, &self.topic, &self.from)?;
            crm = events.iter().rev().find_map(|(_, _, _, v)| {
                let e: serde_json::Value = serde_json::from_slice(v).ok()?;
                let id = changed.map(|(id,)| id.to_string())?;
                (e["after"]["id"].as_str() == Some(id.as_str())
                    && e["after"]["attributes"].as_str().is_some_and(|a| a.contains("crm_tier")))
                .then_some(e)
            });
            if crm.is_some() || changed.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| e.to_string())?.map_err(|e| format!("CDC: {e}"))?;
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(&self.slot)
            .execute(pool)
            .await
            .map_err(|e| e.to_string())?;
        let mut ops: BTreeMap<String, usize> = BTreeMap::new();
        for (_, _, _, v) in &events {
            let op = serde_json::from_slice::<serde_json::Value>(v)
                .ok()
                .and_then(|e| e["op"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "tombstone".into());
            *ops.entry(op).or_default() += 1;
        }
        let ops = ops.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
        let mut out = format!("CDC: {} change events of public.users on {} ({ops})", events.len(), self.topic);
        match crm {
            Some(e) => out.push_str(&format!(
                "\n  another system set attributes.crm_tier in PostgreSQL; its event: op {}, key id {}, after.attributes {}, source.txId {}, source.lsn {}",
                e["op"], e["after"]["id"], e["after"]["attributes"], e["source"]["txId"], e["source"]["lsn"]
            )),
            None => return Err(format!("CDC: the CRM update did not reach {} within 10 s", self.topic)),
        }
        Ok(out)
    }
}
