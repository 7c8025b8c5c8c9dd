//! Poison records: values the stores cannot hold, mixed into a real stream over
//! Kafka and HTTP, and the same records sent straight to `events.valid`. Every
//! one ends in `events.dlq` (or a 400 naming the field), everything else is
//! applied, and no stage stalls.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use apache_avro::types::Value as Avro;
use lifecycle_connectors::http::auth::Role;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_jobs::stages::analytics::SinkHandle;
use lifecycle_jobs::stages::profile::{self, ProfileHandle};
use lifecycle_jobs::stages::validate::{self, StageHandle};
use lifecycle_jobs::workload::{AvroEncoder, Workload};
use lifecycle_pipeline::dlq::DlqRecord;
use lifecycle_pipeline::profile::Profile;
use lifecycle_pipeline::{ReasonCode, Topic, wire};
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::watch;

use crate::common::{
    Sink, drop_clickhouse_db, drop_database, eventually, own_analytics, own_database, read_all, schemas, test_config,
};
use crate::ingest_api::{key, start_with};
use crate::profile_stage::{as_recount, recount};

/// An event as Confluent-framed Avro with the envelope schema, without any
/// validation: what a misbehaving producer can write. `props` is the
/// `event_properties` text as sent (it need not be valid JSON).
fn raw_avro(schema_id: u32, e: &Value, props: Option<String>) -> Vec<u8> {
    let (envelope, _) = schemas();
    let s = |k: &str| Avro::String(e[k].as_str().unwrap_or_default().to_owned());
    let opt = |v: Option<&str>| match v {
        Some(s) => Avro::Union(1, Box::new(Avro::String(s.to_owned()))),
        None => Avro::Union(0, Box::new(Avro::Null)),
    };
    let record = |v: &Value, fields: &[&str]| match v {
        Value::Object(o) => Avro::Union(
            1,
            Box::new(Avro::Record(
                fields.iter().map(|f| ((*f).to_owned(), opt(o.get(*f).and_then(Value::as_str)))).collect(),
            )),
        ),
        _ => Avro::Union(0, Box::new(Avro::Null)),
    };
    let value = Avro::Record(vec![
        ("event_id".into(), s("event_id")),
        ("user_id".into(), s("user_id")),
        ("event_type".into(), s("event_type")),
        ("timestamp".into(), Avro::TimestampMillis(e["timestamp"].as_i64().expect("epoch ms"))),
        ("session_id".into(), s("session_id")),
        ("event_properties".into(), opt(props.as_deref())),
        (
            "device_info".into(),
            record(&e["device_info"], &["device_type", "os", "os_version", "browser", "app_version"]),
        ),
        ("location".into(), record(&e["location"], &["country", "region", "city", "timezone"])),
        ("referrer".into(), opt(e["referrer"].as_str())),
    ]);
    #[allow(deprecated)]
    let body = apache_avro::to_avro_datum(envelope.schema(), value).expect("the envelope encodes any strings");
    wire::frame(schema_id, &body)
}

/// A poison record: the event, its properties text, and the reason and field
/// validation must give.
struct Poison {
    event: Value,
    props: String,
    reason: ReasonCode,
    field: &'static str,
}

/// `e` with an event id no other event of the test has (`Workload::event_of`
/// repeats the last one).
fn unique(mut e: Value, tag: &str) -> Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{}-{tag}{n}", e["event_id"].as_str().unwrap_or("e"));
    e["event_id"] = json!(id);
    e
}

/// Twelve poison records for Kafka, each a good event spoiled one way.
fn kafka_poison(w: &mut Workload) -> Vec<Poison> {
    let mut out = Vec::new();
    let mut add = |w: &mut Workload, kind: &str, spoil: &dyn Fn(&mut Value), reason, field| {
        let mut e = unique(w.event_of(7, kind), "k");
        spoil(&mut e);
        let props = e["event_properties"].to_string();
        out.push(Poison { event: e, props, reason, field });
    };
    add(
        w,
        "engagement.page_view",
        &|e| e["location"]["city"] = json!("Ber\u{0}lin"),
        ReasonCode::UnsupportedCharacter,
        "location.city",
    );
    add(
        w,
        "user.login",
        &|e| e["location"]["region"] = json!("\u{0}"),
        ReasonCode::UnsupportedCharacter,
        "location.region",
    );
    add(
        w,
        "engagement.search",
        &|e| e["event_properties"]["query"] = json!("shoes\u{0}"),
        ReasonCode::InvalidProperties,
        "event_properties.query",
    );
    add(
        w,
        "engagement.search",
        &|e| e["event_properties"]["k\u{0}"] = json!(1),
        ReasonCode::InvalidProperties,
        "event_properties.k\\u0000",
    );
    add(
        w,
        "transaction.purchase_complete",
        &|e| e["event_properties"]["amount"] = json!(1e300),
        ReasonCode::InvalidProperties,
        "event_properties.amount",
    );
    add(
        w,
        "transaction.refund",
        &|e| e["event_properties"]["amount"] = json!(1e13),
        ReasonCode::InvalidProperties,
        "event_properties.amount",
    );
    add(
        w,
        "user.signup",
        &|e| e["event_properties"]["email"] = json!(format!("{}@example.com", "a".repeat(300))),
        ReasonCode::InvalidProperties,
        "event_properties.email",
    );
    add(
        w,
        "engagement.page_view",
        &|e| e["event_properties"]["title"] = json!("x".repeat(10_000)),
        ReasonCode::InvalidProperties,
        "event_properties.title",
    );
    add(
        w,
        "engagement.share",
        &|e| e["user_id"] = json!("poison\u{0}user"),
        ReasonCode::UnsupportedCharacter,
        "user_id",
    );
    add(w, "engagement.share", &|e| e["session_id"] = json!("s\u{0}"), ReasonCode::UnsupportedCharacter, "session_id");
    add(
        w,
        "engagement.content_view",
        &|e| e["referrer"] = json!("https://x.io/\u{0}"),
        ReasonCode::UnsupportedCharacter,
        "referrer",
    );
    // A lone surrogate in the properties' JSON text: no JSON parser accepts it.
    let mut e = unique(w.event_of(8, "engagement.search"), "k");
    e["event_properties"]["query"] = json!("PLACEHOLDER");
    let props = e["event_properties"].to_string().replace("PLACEHOLDER", "\\ud800");
    out.push(Poison { event: e, props, reason: ReasonCode::InvalidJson, field: "event_properties" });
    out
}

/// Eight poison events for HTTP (JSON text as sent) with the code and field of the 400.
fn http_poison(w: &mut Workload) -> Vec<(String, &'static str, &'static str)> {
    let mut out = Vec::new();
    let mut add = |w: &mut Workload, kind: &str, spoil: &dyn Fn(&mut Value), code, field| {
        let mut e = w.event_of(9, kind);
        e.as_object_mut().expect("object").remove("event_id");
        spoil(&mut e);
        out.push((e.to_string(), code, field));
    };
    add(
        w,
        "engagement.page_view",
        &|e| e["location"]["city"] = json!("a\u{0}b"),
        "unsupported_character",
        "location.city",
    );
    add(
        w,
        "transaction.purchase_complete",
        &|e| e["event_properties"]["amount"] = json!(1e300),
        "invalid_properties",
        "event_properties.amount",
    );
    add(
        w,
        "transaction.purchase_complete",
        &|e| e["event_properties"]["amount"] = json!(u64::MAX),
        "invalid_properties",
        "event_properties.amount",
    );
    add(
        w,
        "engagement.search",
        &|e| e["event_properties"]["q\u{0}"] = json!("x"),
        "invalid_properties",
        "event_properties.q\\u0000",
    );
    add(
        w,
        "user.signup",
        &|e| e["event_properties"]["name"] = json!("n".repeat(300)),
        "invalid_properties",
        "event_properties.name",
    );
    add(
        w,
        "engagement.page_view",
        &|e| e["event_properties"]["page"] = json!("p".repeat(9000)),
        "invalid_properties",
        "event_properties.page",
    );
    add(w, "user.login", &|e| e["session_id"] = json!("\u{0}"), "unsupported_character", "session_id");
    // A lone surrogate: the body is not JSON at all.
    let mut e = w.event_of(9, "user.login");
    e.as_object_mut().expect("object").remove("event_id");
    e["session_id"] = json!("PLACEHOLDER");
    out.push((e.to_string().replace("PLACEHOLDER", "\\udc00"), "invalid_json", "body"));
    out
}

/// DLQ records of `stage`, by event id (or source offset when the id is unknown).
fn dlq_of(cfg: &lifecycle_jobs::LifecycleConfig, stage: &str) -> Vec<DlqRecord> {
    read_all(cfg, Topic::EventsDlq)
        .iter()
        .map(|(_, _, _, p)| serde_json::from_slice::<DlqRecord>(p).expect("DLQ records are JSON"))
        .filter(|r| r.stage == stage)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_are_dead_lettered_and_nothing_else_stops() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
    let (mut cfg, reg) = test_config("poison").await;
    let pool = own_database(&mut cfg).await;
    own_analytics(&mut cfg);
    cfg.profile.group_id = format!("{}-profile", cfg.validate.group_id);
    cfg.profile.metrics_addr = None;
    cfg.profile.max_batch_records = 2000;
    cfg.ingest.requests_per_minute = 10_000;
    // A value PostgreSQL refuses that validation knows nothing of: events of
    // users named `*-refused` pass validation and the sink, and only the
    // profile stage's store refuses them (found by splitting its batches).
    sqlx::query("ALTER TABLE users ADD CONSTRAINT test_refused CHECK (external_id NOT LIKE '%-refused')")
        .execute(&pool)
        .await
        .expect("constraint");

    let (envelope, validator) = schemas();
    let enc = AvroEncoder { validator: &validator, envelope: &envelope, schema_id: reg.raw_envelope_id };
    let run = cfg.topics.prefix.clone();
    let mut w = Workload::new(5, 500, &run, chrono::Utc::now());
    let good: Vec<Value> = (0..10_000).map(|_| w.next_event()).collect();
    let mut refused: Vec<Value> = Vec::new();
    for i in 0..6 {
        let kind = ["user.login", "engagement.page_view", "transaction.purchase_complete"][i as usize % 3];
        let mut e = unique(w.event_of(1000 + i % 2, kind), "r");
        e["user_id"] = json!(format!("{run}r{}-refused", i % 2));
        refused.push(e);
    }
    let poison = kafka_poison(&mut w);
    let http_bad = http_poison(&mut w);

    // Kafka: 9,000 good events with the poison and the refused users' events
    // spread through them; HTTP: 1,000 good events in batches, then the 8 bad ones.
    let raw_topic = cfg.topics.name(Topic::EventsRaw);
    let record = |key: &str, payload: Vec<u8>| OutRecord {
        topic: raw_topic.clone(),
        key: Some(key.as_bytes().to_vec()),
        payload,
        headers: vec![],
    };
    let mut records: Vec<OutRecord> = good[..9000]
        .iter()
        .map(|e| record(e["user_id"].as_str().expect("u"), enc.encode(e).expect("encode")))
        .collect();
    for (i, p) in poison.iter().enumerate() {
        let at = (i * 743 + 101) % records.len();
        records.insert(
            at,
            record(
                p.event["user_id"].as_str().unwrap_or("x"),
                raw_avro(reg.raw_envelope_id, &p.event, Some(p.props.clone())),
            ),
        );
    }
    for (i, e) in refused.iter().enumerate() {
        records.insert(
            (i * 1499 + 50) % records.len(),
            record(e["user_id"].as_str().expect("u"), enc.encode(e).expect("encode")),
        );
    }

    let api = start_with(cfg.clone()).await;
    let (_, operator) = key(&cfg, Role::Operator).await;
    let (validate_h, profile_h, (stop, rx)) =
        (StageHandle::new().expect("metrics"), ProfileHandle::new().expect("metrics"), watch::channel(false));
    let tasks = vec![
        {
            let (cfg, h, rx) = (cfg.clone(), validate_h.clone(), rx.clone());
            tokio::spawn(async move { validate::run(&cfg, h, rx).await })
        },
        {
            let (cfg, h, rx) = (cfg.clone(), profile_h.clone(), rx.clone());
            tokio::spawn(async move { profile::run(&cfg, h, rx).await })
        },
    ];
    let sink = Sink::start(&cfg);
    let started = Instant::now();
    let producer = KafkaSink::new(&cfg.kafka).expect("producer");
    for chunk in records.chunks(2000) {
        producer.send_all(chunk).await.expect("produce");
    }
    let mut http_ids = Vec::new();
    for chunk in good[9000..].chunks(100) {
        let (s, b, _) =
            api.post("/events/batch", Some(&operator), json!({"events": chunk}).to_string().into_bytes()).await;
        assert_eq!((s, b["accepted"].clone()), (202, json!(100)), "{b}");
        http_ids.extend(
            b["results"].as_array().expect("results").iter().map(|r| r["event_id"].as_str().expect("id").to_owned()),
        );
    }
    for (body, code, field) in &http_bad {
        let (s, b, _) = api.post("/events", Some(&operator), body.clone().into_bytes()).await;
        assert_eq!(s, 400, "{body:.200}: {b}");
        assert_eq!((b["code"].as_str(), b["details"]["field"].as_str()), (Some(*code), Some(*field)), "{b}");
    }
    // The same spoiled events in one batch: each rejected on its own, the good one accepted.
    let mut batch: Vec<Value> = http_bad[..7].iter().map(|(b, _, _)| serde_json::from_str(b).expect("json")).collect();
    batch.push(good[0].clone());
    let (s, b, _) = api.post("/events/batch", Some(&operator), json!({"events": batch}).to_string().into_bytes()).await;
    assert_eq!((s, b["accepted"].clone(), b["rejected"].clone()), (202, json!(1), json!(7)), "{b}");
    assert_eq!(b["results"][0]["error"]["details"]["field"], json!("location.city"), "{b}");

    // Every good event reaches PostgreSQL (the refused users' do not) and ClickHouse.
    let valid_total = (good.len() + refused.len()) as u64;
    let profiles_done = eventually(180, || {
        profile_h.metrics.outcomes.total("applied") + profile_h.metrics.outcomes.total("dead_lettered") >= valid_total
    })
    .await;
    let took = started.elapsed();
    let o = &profile_h.metrics.outcomes;
    assert!(
        profiles_done,
        "profile outcomes {:?} {:?} {:?}, in {}, validate {:?}, health {:?}",
        o.by_reason("applied"),
        o.by_reason("skipped"),
        o.by_reason("dead_lettered"),
        profile_h.metrics.records_in.get(),
        validate_h.counts(),
        profile_h.health.check()
    );
    assert!(profile_h.health.check().is_ok(), "the profile stage is healthy: {:?}", profile_h.health.check());
    eprintln!("poison test: {valid_total} valid events applied or dead-lettered in {took:?}");

    // The same poison straight onto events.valid, bypassing validation.
    let valid_topic = cfg.topics.name(Topic::EventsValid);
    let bypass: Vec<OutRecord> = poison
        .iter()
        .map(|p| OutRecord {
            topic: valid_topic.clone(),
            key: Some(b"bypass".to_vec()),
            payload: raw_avro(reg.valid_envelope_id, &p.event, Some(p.props.clone())),
            headers: vec![],
        })
        .collect();
    producer.send_all(&bypass).await.expect("produce to events.valid");
    assert!(
        eventually(60, || profile_h.metrics.outcomes.total("dead_lettered") >= refused.len() as u64 + 12).await,
        "profile stage dead-lettered the bypassing poison: {:?}",
        profile_h.metrics.outcomes.by_reason("dead_lettered")
    );
    assert!(
        eventually(60, || sink.handle.metrics.outcomes.all() >= valid_total + 12).await,
        "sink saw everything: {}",
        sink.handle.metrics.outcomes.all()
    );
    // A good event after all the poison still goes through every stage.
    let late = unique(w.event_of(3, "user.login"), "late");
    producer
        .send_all(&[record(late["user_id"].as_str().expect("u"), enc.encode(&late).expect("encode"))])
        .await
        .expect("late");
    let late_id = late["event_id"].as_str().expect("id").to_owned();
    assert!(
        eventually(60, || profile_h.metrics.outcomes.total("applied") > good.len() as u64).await,
        "the late event was applied"
    );
    // The sink counts a redelivered event again (good[0] came twice), so
    // ClickHouse is asked for the late event itself.
    let ch = lifecycle_connectors::clickhouse::client(&cfg.clickhouse);
    let mut late_in_ch = false;
    for _ in 0..300 {
        let n: u64 = ch
            .query("SELECT count() FROM events WHERE event_id = ?")
            .bind(late_id.as_str())
            .fetch_one()
            .await
            .expect("count the late event");
        if n > 0 {
            late_in_ch = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(late_in_ch, "the sink inserted the late event");
    stop.send(true).expect("stop");
    for t in tasks {
        t.await.expect("join").expect("stage ran cleanly");
    }
    let sink_h: SinkHandle = sink.stop().await;

    // Validation: exactly the 12 Kafka poison records, each with its reason and field.
    let (vin, vvalid, vdlq) = validate_h.counts();
    assert_eq!(vin, vvalid + vdlq, "validate: in == valid + dlq");
    assert_eq!(vdlq, 12);
    let by_id: HashMap<String, DlqRecord> =
        dlq_of(&cfg, "validate").into_iter().map(|r| (r.event_id.clone().unwrap_or_default(), r)).collect();
    assert_eq!(by_id.len(), 12, "each poison record dead-lettered once");
    for p in &poison {
        let id = p.event["event_id"].as_str().expect("id");
        let r = by_id.get(id).unwrap_or_else(|| panic!("{id} dead-lettered"));
        assert_eq!((r.reason, r.errors[0].field.as_str()), (p.reason, p.field), "{}", r.message);
        assert_eq!(r.source.topic, raw_topic);
    }

    // Profile stage: the refused users' events (found by splitting batches) and
    // the bypassing poison are dead-lettered with their reasons and sources.
    let pdlq = dlq_of(&cfg, "profile");
    let store: Vec<&DlqRecord> = pdlq.iter().filter(|r| r.reason == ReasonCode::StoreRejected).collect();
    let refused_ids: HashSet<&str> = refused.iter().map(|e| e["event_id"].as_str().expect("id")).collect();
    assert_eq!(store.iter().filter_map(|r| r.event_id.as_deref()).collect::<HashSet<_>>(), refused_ids);
    assert!(
        store.iter().all(|r| r.message.contains("23514") && r.source.topic == valid_topic),
        "{:?}",
        store.first().map(|r| &r.message)
    );
    let bypassed: Vec<&DlqRecord> = pdlq.iter().filter(|r| r.reason != ReasonCode::StoreRejected).collect();
    assert_eq!(bypassed.len(), 12, "{:?}", bypassed.iter().map(|r| r.reason).collect::<Vec<_>>());
    let m = &profile_h.metrics;
    assert_eq!(m.records_in.get(), m.outcomes.all(), "profile: in == applied + skipped + dead-lettered");
    assert_eq!(m.outcomes.total("dead_lettered"), refused.len() as u64 + 12);
    assert_eq!(m.outcomes.total("applied"), good.len() as u64 + 1);

    // Analytics sink: every valid event (the refused users' too) in ClickHouse once;
    // the bypassing poison dead-lettered.
    let sm = &sink_h.metrics;
    assert_eq!(sm.records_in.get(), sm.outcomes.all(), "sink: in == applied + dead-lettered");
    assert_eq!(sm.outcomes.total("dead_lettered"), 12);
    assert_eq!(dlq_of(&cfg, "analytics").len(), 12);
    let in_ch: u64 = ch.query("SELECT uniqExact(event_id) FROM events").fetch_one().await.expect("count");
    assert_eq!(in_ch, valid_total + 1, "every valid event in ClickHouse once");

    // Profiles equal a recount of the good events.
    let mut expected_events: Vec<Value> = good.clone();
    expected_events.push(late.clone());
    let expected = recount(&expected_events);
    let rows = sqlx::query("SELECT external_id, profile FROM users WHERE starts_with(external_id, $1)")
        .bind(&run)
        .fetch_all(&pool)
        .await
        .expect("profiles");
    let stored: BTreeMap<String, Profile> =
        rows.iter().map(|r| (r.get(0), serde_json::from_value(r.get(1)).expect("profile"))).collect();
    assert_eq!(stored.len(), expected.len(), "one profile per good user, none for refused users");
    for (user, p) in &stored {
        assert_eq!(as_recount(p), expected[user], "{user}");
    }
    assert!(http_ids.iter().all(|id| !id.is_empty()));
    assert!(!late_id.is_empty());
    drop_clickhouse_db(&cfg).await;
    drop_database(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_with_history_memberships_and_executions_works() {
    let (mut cfg, _) = test_config("deluser").await;
    let pool = own_database(&mut cfg).await;
    let api = start_with(cfg.clone()).await;
    let (_, admin) = key(&cfg, Role::Admin).await;
    let user = lifecycle_connectors::postgres::profiles::user_uuid("del-1");
    let q = |sql: &'static str| sqlx::query(sql).bind(user);
    q("INSERT INTO users (id, external_id, current_lifecycle_stage) VALUES ($1, 'del-1', 'Revenue')")
        .execute(&pool)
        .await
        .expect("user");
    q("INSERT INTO user_lifecycle_history (user_id, to_stage) VALUES ($1, 'Revenue')")
        .execute(&pool)
        .await
        .expect("history");
    q("INSERT INTO lifecycle_events (event_type, user_id, lifecycle_stage) VALUES ('lifecycle.stage_changed', $1, 'Revenue')")
        .execute(&pool)
        .await
        .expect("audit");
    let segment: uuid::Uuid =
        sqlx::query_scalar("INSERT INTO user_segments (name, conditions) VALUES ('s', '{}') RETURNING id")
            .fetch_one(&pool)
            .await
            .expect("segment");
    sqlx::query("INSERT INTO user_segment_memberships (user_id, segment_id) VALUES ($1, $2)")
        .bind(user)
        .bind(segment)
        .execute(&pool)
        .await
        .expect("membership");
    let workflow: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO workflows (name, bpmn_xml, status) VALUES ('w', '<x/>', 'active') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("workflow");
    let execution: uuid::Uuid =
        sqlx::query_scalar("INSERT INTO workflow_executions (workflow_id, user_id) VALUES ($1, $2) RETURNING id")
            .bind(workflow)
            .bind(user)
            .fetch_one(&pool)
            .await
            .expect("execution");
    let trigger: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO triggers (name, event_type, conditions, workflow_id) VALUES ('t', 'user.login', '{}', $1) RETURNING id",
    )
    .bind(workflow)
    .fetch_one(&pool)
    .await
    .expect("trigger");
    sqlx::query("INSERT INTO trigger_executions (trigger_id, user_id, condition_met, workflow_execution_id) VALUES ($1, $2, true, $3)")
        .bind(trigger)
        .bind(user)
        .bind(execution)
        .execute(&pool)
        .await
        .expect("trigger execution");

    let (s, b, _) = api.send(reqwest::Method::DELETE, "/users/del-1", Some(&admin), vec![]).await;
    assert_eq!(s, 204, "{b}");
    for table in [
        "users",
        "user_lifecycle_history",
        "lifecycle_events",
        "user_segment_memberships",
        "workflow_executions",
        "trigger_executions",
    ] {
        let column = if table == "users" { "id" } else { "user_id" };
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE {column} = $1"))
            .bind(user)
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(n, 0, "{table} rows of the deleted user");
    }
    assert_eq!(api.send(reqwest::Method::DELETE, "/users/del-1", Some(&admin), vec![]).await.0, 404);
    // A value the database cannot hold is the request's fault: 400, never 5xx.
    let (s, b, _) = api
        .post(
            "/users",
            Some(&admin),
            json!({"user_id": "del-2", "email": "d@x.io", "attributes": {"k": "v\u{0}"}}).to_string().into_bytes(),
        )
        .await;
    assert_eq!((s, b["details"]["field"].clone()), (400, json!("attributes.k")), "{b}");
    drop(pool);
    drop_database(&cfg).await;
}
