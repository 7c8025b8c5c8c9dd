//! The profile stage on the real stack: profiles in PostgreSQL equal a recount
//! of the input, with every event delivered twice, across kill -9.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};

use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_jobs::stages::profile::{self, ProfileHandle};
use lifecycle_jobs::workload::{AvroEncoder, Workload};
use lifecycle_pipeline::Topic;
use lifecycle_pipeline::profile::{LifecycleRules, Profile};
use serde_json::Value;
use sqlx::Row;
use tokio::sync::watch;

use crate::common::{eventually, schemas, test_config};

/// Expected per-user counters, recounted from the generated events.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Recount {
    events: u64,
    sessions: u64,
    session_ms: u64,
    purchases: u64,
    refunds: u64,
    revenue_cents: i64,
    event_counts: BTreeMap<String, u64>,
    features: BTreeMap<String, u64>,
}

pub(crate) fn recount(events: &[Value]) -> HashMap<String, Recount> {
    let mut out: HashMap<String, Recount> = HashMap::new();
    for e in events {
        let r = out.entry(e["user_id"].as_str().expect("user").to_owned()).or_default();
        let t = e["event_type"].as_str().expect("type");
        let props = &e["event_properties"];
        let cents = (props["amount"].as_f64().unwrap_or(0.0) * 100.0).round() as i64;
        r.events += 1;
        *r.event_counts.entry(t.to_owned()).or_default() += 1;
        match t {
            "user.login" => r.sessions += 1,
            "user.logout" => r.session_ms += props["session_duration_ms"].as_u64().unwrap_or(0),
            "transaction.purchase_complete" => {
                r.purchases += 1;
                r.revenue_cents += cents;
            }
            "transaction.refund" => {
                r.refunds += 1;
                r.revenue_cents -= cents;
            }
            "engagement.feature_click" => {
                *r.features.entry(props["feature"].as_str().expect("f").to_owned()).or_default() += 1
            }
            _ => {}
        }
    }
    out
}

pub(crate) fn as_recount(p: &Profile) -> Recount {
    Recount {
        events: p.events_applied,
        sessions: p.behavioral.session_count,
        session_ms: p.behavioral.total_session_duration_ms,
        purchases: p.transaction.total_purchases,
        refunds: p.transaction.total_refunds,
        revenue_cents: p.transaction.total_revenue_cents,
        event_counts: p.behavioral.event_counts.clone(),
        features: p.behavioral.feature_usage_map.clone(),
    }
}

/// Generates `n` events for `users` users and produces each one `times` times to
/// events.valid (the second copy after all first copies: far-apart duplicates).
pub(crate) async fn produce_valid(
    cfg: &lifecycle_jobs::LifecycleConfig,
    valid_id: u32,
    n: usize,
    users: u32,
    times: usize,
) -> Vec<Value> {
    produce_valid_as(cfg, valid_id, (n, users, times), &cfg.topics.prefix).await
}

/// Like [`produce_valid`], with event and user ids made from `run_id`.
pub(crate) async fn produce_valid_as(
    cfg: &lifecycle_jobs::LifecycleConfig,
    valid_id: u32,
    (n, users, times): (usize, u32, usize),
    run_id: &str,
) -> Vec<Value> {
    let (envelope, validator) = schemas();
    let enc = AvroEncoder { validator: &validator, envelope: &envelope, schema_id: valid_id };
    let mut w = Workload::new(21, users, run_id, chrono::Utc::now());
    let events: Vec<Value> = (0..n).map(|_| w.next_event()).collect();
    let topic = cfg.topics.name(Topic::EventsValid);
    let records: Vec<OutRecord> = events
        .iter()
        .map(|e| OutRecord {
            topic: topic.clone(),
            key: Some(e["user_id"].as_str().expect("u").as_bytes().to_vec()),
            payload: enc.encode(e).expect("encode"),
            headers: vec![],
        })
        .collect();
    let sink = KafkaSink::new(&cfg.kafka).expect("producer");
    for _ in 0..times {
        for chunk in records.chunks(5000) {
            sink.send_all(chunk).await.expect("produce");
        }
    }
    events
}

pub(crate) async fn applied_offsets(pool: &sqlx::PgPool, group: &str) -> i64 {
    try_applied_offsets(pool, group).await.expect("offsets")
}

/// The input offsets `group` has applied, summed over its partitions.
pub(crate) async fn try_applied_offsets(pool: &sqlx::PgPool, group: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<_, Option<i64>>("SELECT sum(next_offset)::bigint FROM stage_offsets WHERE consumer_group = $1")
        .bind(group)
        .fetch_one(pool)
        .await
        .map(|n| n.unwrap_or(0))
}

/// Events applied to the profiles of users whose id starts with `prefix`.
pub(crate) async fn events_applied(pool: &sqlx::PgPool, prefix: &str) -> Result<u64, sqlx::Error> {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT sum((profile->>'events_applied')::bigint)::bigint FROM users WHERE starts_with(external_id, $1)",
    )
    .bind(prefix)
    .fetch_one(pool)
    .await
    .map(|n| n.unwrap_or(0) as u64)
}

/// Compares every stored profile with the recount; checks history and stages.
pub(crate) async fn check_profiles(cfg: &lifecycle_jobs::LifecycleConfig, pool: &sqlx::PgPool, events: &[Value]) {
    let expected = recount(events);
    let rows = sqlx::query(
        "SELECT external_id, profile, current_lifecycle_stage, id FROM users WHERE starts_with(external_id, $1)",
    )
    .bind(&cfg.topics.prefix)
    .fetch_all(pool)
    .await
    .expect("profiles");
    assert_eq!(rows.len(), expected.len(), "one row per user");
    let rules = LifecycleRules::default();
    for row in &rows {
        let user: String = row.get(0);
        let p: Profile = serde_json::from_value(row.get(1)).expect("profile document");
        assert_eq!(as_recount(&p), expected[&user], "{user}");
        assert_eq!(p.lifecycle_stage, rules.qualified(&p), "{user}: stage follows the rules");
        assert_eq!(row.get::<String, _>(2), p.lifecycle_stage.as_str());
        let history: Vec<(Option<String>, String)> = sqlx::query_as(
            "SELECT from_stage, to_stage FROM user_lifecycle_history WHERE user_id = $1 ORDER BY transitioned_at, id",
        )
        .bind(row.get::<uuid::Uuid, _>(3))
        .fetch_all(pool)
        .await
        .expect("history");
        // Exactly one row per stage change (none repeated by redelivery), ending at the current stage.
        let mut tos: Vec<&String> = history.iter().map(|(_, to)| to).collect();
        let n = tos.len();
        tos.dedup();
        assert_eq!(tos.len(), n, "{user}: no repeated transition");
        let audited: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM lifecycle_events WHERE user_id = $1 AND event_type = 'lifecycle.stage_changed'",
        )
        .bind(row.get::<uuid::Uuid, _>(3))
        .fetch_one(pool)
        .await
        .expect("audit log");
        assert_eq!(audited as usize, n, "{user}: one lifecycle_events row per transition");
        if p.lifecycle_stage.as_str() != "Acquisition" {
            assert_eq!(
                history.iter().map(|(_, t)| t.as_str()).max_by_key(|t| lifecycle_pipeline::profile::Stage::parse(t)),
                Some(p.lifecycle_stage.as_str())
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_events_twice_recount_exactly() {
    let (mut cfg, reg) = test_config("prof").await;
    cfg.profile.group_id = format!("{}-profile", cfg.validate.group_id);
    cfg.profile.metrics_addr = None;
    let events = produce_valid(&cfg, reg.valid_envelope_id, 50_000, 2_000, 2).await;
    let pool = lifecycle_connectors::postgres::connect(&cfg.postgres).await.expect("db");
    let handle = ProfileHandle::new().expect("metrics");
    let (stop, rx) = watch::channel(false);
    let stage = {
        let (cfg, handle) = (cfg.clone(), handle.clone());
        tokio::spawn(async move { profile::run(&cfg, handle, rx).await })
    };
    let done = eventually(240, || handle.consumed() >= 100_000).await;
    stop.send(true).expect("stop");
    stage.await.expect("join").expect("stage ran cleanly");
    assert!(done, "consumed {}", handle.consumed());
    assert_eq!(applied_offsets(&pool, &cfg.profile.group_id).await, 100_000);
    let m = &handle.metrics;
    assert_eq!(m.outcomes.total("applied"), 50_000, "each event applied once");
    assert_eq!(
        m.outcomes.by_reason("skipped"),
        vec![("event_id".to_owned(), 50_000), ("offset".to_owned(), 0)],
        "each second copy skipped"
    );
    assert_eq!(m.outcomes.total("dead_lettered"), 0);
    assert_eq!(m.records_in.get(), m.outcomes.all(), "in == applied + skipped + dead-lettered");
    check_profiles(&cfg, &pool, &events).await;
    // The compacted changelog carries every user's latest profile.
    let mut latest: HashMap<String, u64> = HashMap::new();
    for (_, _, key, payload) in crate::common::read_all(&cfg, Topic::ProfilesChangelog) {
        let p: Profile = serde_json::from_slice(&payload).expect("changelog JSON");
        assert_eq!(key.as_deref(), Some(p.user_id.as_bytes()));
        latest.insert(p.user_id, p.events_applied);
    }
    let expected = recount(&events);
    assert_eq!(latest.len(), expected.len());
    for (user, n) in latest {
        assert_eq!(n, expected[&user].events, "{user}: last changelog record is the final profile");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_duplicates_still_recount_exactly() {
    let (mut cfg, reg) = test_config("profkill").await;
    cfg.profile.group_id = format!("{}-profile", cfg.validate.group_id);
    cfg.profile.max_batch_records = 1000;
    cfg.profile.metrics_addr = None;
    cfg.validate.metrics_addr = None;
    let dir = std::env::temp_dir().join(format!("lifecycle-{}", cfg.profile.group_id));
    std::fs::create_dir_all(&dir).expect("dir");
    let config_path = dir.join("lifecycle.toml");
    std::fs::write(&config_path, toml::to_string(&cfg).expect("toml")).expect("config");
    let events = produce_valid(&cfg, reg.valid_envelope_id, 50_000, 2_000, 2).await;
    let pool = lifecycle_connectors::postgres::connect(&cfg.postgres).await.expect("db");
    let spawn = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_lifecycle"))
            .args(["run", "profile"])
            .env("LIFECYCLE_CONFIG", &config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(name)).expect("log"))
            .spawn()
            .expect("spawn lifecycle run profile")
    };
    let mut first = spawn("first.log");
    // Kill at a moment that depends on the clock: somewhere in the first 40% of the stream.
    let target = 10_000 + i64::from(chrono::Utc::now().timestamp_subsec_millis()) * 30;
    let mut progressed = false;
    for _ in 0..600 {
        if applied_offsets(&pool, &cfg.profile.group_id).await >= target {
            progressed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    first.kill().expect("kill -9");
    first.wait().expect("reap");
    assert!(progressed, "progress before the kill; logs in {}", dir.display());
    let at_kill = applied_offsets(&pool, &cfg.profile.group_id).await;
    assert!(at_kill < 100_000, "killed mid-stream at {at_kill}");
    let mut second = spawn("second.log");
    let mut done = false;
    for _ in 0..2400 {
        if applied_offsets(&pool, &cfg.profile.group_id).await >= 100_000 {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill").arg(second.id().to_string()).status();
    let _ = tokio::task::spawn_blocking(move || second.wait()).await;
    assert!(done, "finished after restart; logs in {}", dir.display());
    eprintln!("profile kill -9 test: killed at {at_kill} of 100000 records");
    check_profiles(&cfg, &pool, &events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_partitions_and_agree_with_the_recount() {
    let (mut cfg, reg) = test_config("proftwo").await;
    cfg.profile.group_id = format!("{}-profile", cfg.validate.group_id);
    cfg.profile.metrics_addr = None;
    cfg.profile.max_batch_records = 500;
    let events = produce_valid(&cfg, reg.valid_envelope_id, 20_000, 800, 1).await;
    let pool = lifecycle_connectors::postgres::connect(&cfg.postgres).await.expect("db");
    let (stop, rx) = watch::channel(false);
    let start = |handle: ProfileHandle| {
        let (cfg, rx) = (cfg.clone(), rx.clone());
        tokio::spawn(async move { profile::run(&cfg, handle, rx).await })
    };
    let (a, b) = (ProfileHandle::new().expect("metrics"), ProfileHandle::new().expect("metrics"));
    let first = start(a.clone());
    assert!(eventually(30, || a.consumed() > 0).await, "first instance started");
    let second = start(b.clone());
    let mut done = false;
    for _ in 0..1200 {
        if applied_offsets(&pool, &cfg.profile.group_id).await >= 20_000 {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.send(true).expect("stop");
    first.await.expect("join").expect("first");
    second.await.expect("join").expect("second");
    assert!(done, "all applied: a {} b {}", a.consumed(), b.consumed());
    assert!(b.consumed() > 0, "the second instance took over partitions (a {}, b {})", a.consumed(), b.consumed());
    assert_eq!(
        a.metrics.outcomes.total("applied") + b.metrics.outcomes.total("applied"),
        20_000,
        "each event applied once in total"
    );
    check_profiles(&cfg, &pool, &events).await;
}
