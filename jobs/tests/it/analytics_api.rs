//! Daily aggregates and `GET /analytics` on the real stack: events go through
//! the profile stage (transitions on lifecycle.events) and the ClickHouse sink;
//! metrics_daily per day, stage and type must equal an independent recount of
//! the input (each event attributed to the user's stage at its time), and the
//! API must serve the same numbers, paginated, cached and guarded.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lifecycle_connectors::clickhouse::client;
use lifecycle_connectors::http::auth::Role;
use lifecycle_jobs::stages::profile::{self, ProfileHandle};
use lifecycle_pipeline::profile::{LifecycleRules, Profile, ScoreParams};
use serde_json::Value;
use tokio::sync::watch;

use crate::common::{Sink, drop_clickhouse_db, eventually, own_analytics, schemas, test_config};
use crate::ingest_api::{Api, key};
use crate::profile_stage::produce_valid;

/// Key of a metrics_daily row: (day, stage, event type).
type Key = (String, String, String);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Expected {
    events: u64,
    revenue_cents: i64,
    conversions: u64,
    users: BTreeSet<String>,
}

/// Recounts the metrics from the generated events: transitions by applying the
/// events per user in produce order (as the stage does), then each event's stage
/// = the newest transition at or before its timestamp.
fn recount(events: &[Value]) -> BTreeMap<Key, Expected> {
    let (_, validator) = schemas();
    let now = chrono::Utc::now();
    let (rules, params) = (LifecycleRules::default(), ScoreParams::default());
    let mut profiles: HashMap<String, Profile> = HashMap::new();
    let mut moves: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    let mut out: BTreeMap<Key, Expected> = BTreeMap::new();
    let day = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).expect("time").date_naive().to_string();
    let parsed: Vec<_> = events
        .iter()
        .map(|e| validator.validate_json(e.to_string().as_bytes(), now).expect("generated events are valid"))
        .collect();
    for e in &parsed {
        let p = profiles.entry(e.user_id.clone()).or_insert_with(|| Profile::new(e.user_id.clone()));
        if let Some(t) = p.apply(e, &rules, &params) {
            let at = t.at.timestamp_millis();
            moves.entry(t.user_id.clone()).or_default().push((at, t.to.as_str().to_owned()));
            out.entry((day(at), t.to.as_str().to_owned(), t.event_type.clone())).or_default().conversions += 1;
        }
    }
    for e in &parsed {
        let at = e.timestamp.timestamp_millis();
        let mut user_moves = moves.get(&e.user_id).cloned().unwrap_or_default();
        user_moves.sort();
        let stage =
            user_moves.iter().rev().find(|(t, _)| *t <= at).map_or("Acquisition".to_owned(), |(_, s)| s.clone());
        let x = out.entry((day(at), stage, e.event_type.as_str().to_owned())).or_default();
        x.events += 1;
        x.users.insert(e.user_id.clone());
        let cents = e
            .event_properties
            .as_ref()
            .and_then(|p| p.get("amount"))
            .and_then(Value::as_f64)
            .map_or(0, |a| (a * 100.0).round() as i64);
        match e.event_type.as_str() {
            "transaction.purchase_complete" => x.revenue_cents += cents,
            "transaction.refund" => x.revenue_cents -= cents,
            _ => {}
        }
    }
    out
}

async fn stored(cfg: &lifecycle_jobs::LifecycleConfig) -> BTreeMap<Key, (u64, i64, u64, u64)> {
    let rows: Vec<(String, String, String, u64, i64, u64, u64)> = client(&cfg.clickhouse)
        .query(
            "SELECT toString(metric_date), lifecycle_stage, event_type, sum(events), sum(revenue_cents), \
             sum(conversions), uniqExactMerge(active_users) FROM metrics_daily \
             WHERE (metric_date, rollup_id) IN (SELECT metric_date, argMax(rollup_id, (computed_at, rollup_id)) \
                 FROM metrics_rollups GROUP BY metric_date) \
             GROUP BY metric_date, lifecycle_stage, event_type",
        )
        .fetch_all()
        .await
        .expect("metrics_daily");
    rows.into_iter().map(|(d, s, t, e, r, c, u)| ((d, s, t), (e, r, c, u))).collect()
}

async fn get(api: &Api, query: &str, key: Option<&str>) -> (u16, Value, reqwest::header::HeaderMap) {
    api.send(reqwest::Method::GET, &format!("/analytics?{query}"), key, vec![]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_metrics_per_stage_and_type_equal_a_recount_and_the_api_serves_them() {
    let (mut cfg, reg) = test_config("agg").await;
    own_analytics(&mut cfg);
    cfg.profile.group_id = format!("{}-profile", cfg.validate.group_id);
    cfg.profile.metrics_addr = None;
    cfg.analytics.batch_linger_ms = 300;
    cfg.analytics.rollup_interval_ms = 500;
    // 20,000 events for 400 users, each delivered twice (at-least-once upstream).
    let events = produce_valid(&cfg, reg.valid_envelope_id, 20_000, 400, 2).await;
    let expected = recount(&events);
    let transitions: u64 = expected.values().map(|x| x.conversions).sum();
    assert!(transitions > 400, "the workload moves users through stages ({transitions} transitions)");

    let (stop, rx) = watch::channel(false);
    let profiles = {
        let cfg = cfg.clone();
        tokio::spawn(async move { profile::run(&cfg, ProfileHandle::new().expect("metrics"), rx).await })
    };
    let sink = Sink::start(&cfg);
    let inserted = |t: &str| sink.inserted(t);
    let done = eventually(300, || inserted("events") >= 40_000 && inserted("lifecycle_events") >= transitions).await;
    assert!(done, "sink inserted {} events, {} transitions", inserted("events"), inserted("lifecycle_events"));
    // The rollup runs every 500 ms; wait until the aggregates match.
    let want: BTreeMap<Key, (u64, i64, u64, u64)> = expected
        .iter()
        .map(|(k, x)| (k.clone(), (x.events, x.revenue_cents, x.conversions, x.users.len() as u64)))
        .collect();
    let mut got = BTreeMap::new();
    for _ in 0..120 {
        got = stored(&cfg).await;
        if got == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(got, want, "metrics_daily equals the recount (events, revenue, conversions, active users)");

    // The API, with an analyst key.
    let app = lifecycle_jobs::services::api_router(&cfg).await.expect("api");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let api = Api { base, http: reqwest::Client::builder().no_proxy().build().expect("client"), cfg: cfg.clone() };
    let (_, analyst) = key(&cfg, Role::Analyst).await;
    let days: BTreeSet<&String> = want.keys().map(|(d, _, _)| d).collect();
    let range = format!("{}..{}", days.first().expect("a day"), days.last().expect("a day"));

    // Events per stage, whole range.
    let (status, body, headers) = get(
        &api,
        &format!("metric=events&dimensions=lifecycle_stage&aggregation=total&date_range={range}"),
        Some(&analyst),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-cache"], "MISS");
    let mut per_stage: BTreeMap<String, u64> = BTreeMap::new();
    for ((_, s, _), x) in &expected {
        *per_stage.entry(s.clone()).or_default() += x.events;
    }
    per_stage.retain(|_, n| *n > 0);
    let served: BTreeMap<String, u64> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|p| (p["lifecycle_stage"].as_str().expect("stage").to_owned(), p["value"].as_u64().expect("value")))
        .collect();
    assert_eq!(served, per_stage);
    assert_eq!(body["metadata"]["metric"], "events");
    assert_eq!(body["metadata"]["cached"], false);
    assert!(body["metadata"]["data_as_of"].is_string(), "{body}");
    assert_eq!(body["pagination"]["total_items"], per_stage.len());
    // The same query again comes from the cache.
    let (_, again, headers) = get(
        &api,
        &format!("metric=events&dimensions=lifecycle_stage&aggregation=total&date_range={range}"),
        Some(&analyst),
    )
    .await;
    assert_eq!(headers["x-cache"], "HIT");
    assert_eq!(again["data"], body["data"]);

    // Active users overall: distinct users, not a sum over stages or types.
    let (status, body, _) =
        get(&api, &format!("metric=active_users&aggregation=total&date_range={range}"), Some(&analyst)).await;
    assert_eq!(status, 200, "{body}");
    let users: BTreeSet<&str> = events.iter().map(|e| e["user_id"].as_str().expect("user")).collect();
    assert_eq!(body["data"][0]["value"].as_u64(), Some(users.len() as u64));

    // Revenue of purchases filtered to the Revenue and Referral stages, per day.
    let (status, body, _) = get(
        &api,
        &format!("metric=revenue&filters=lifecycle_stage:Revenue|Referral&date_range={range}"),
        Some(&analyst),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut per_day: BTreeMap<String, i64> = BTreeMap::new();
    for ((d, s, _), x) in &expected {
        if s == "Revenue" || s == "Referral" {
            *per_day.entry(d.clone()).or_default() += x.revenue_cents;
        }
    }
    per_day.retain(|_, c| *c != 0);
    let served: BTreeMap<String, i64> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|p| {
            let cents = (p["value"].as_f64().expect("value") * 100.0).round() as i64;
            (p["period"].as_str().expect("period").to_owned(), cents)
        })
        .collect();
    assert_eq!(served, per_day);

    // Conversions per stage and event type, two points per page.
    let q = format!("metric=conversions&dimensions=lifecycle_stage,event_type&aggregation=total&date_range={range}");
    let (_, first, _) = get(&api, &format!("{q}&page_size=2"), Some(&analyst)).await;
    let total = first["pagination"]["total_items"].as_u64().expect("total");
    let pages = first["pagination"]["total_pages"].as_u64().expect("pages");
    assert_eq!(pages, total.div_ceil(2));
    let mut all: Vec<Value> = Vec::new();
    for page in 1..=pages {
        let (status, body, _) = get(&api, &format!("{q}&page_size=2&page={page}"), Some(&analyst)).await;
        assert_eq!(status, 200);
        assert_eq!(body["pagination"]["has_next"], page < pages);
        all.extend(body["data"].as_array().expect("data").iter().cloned());
    }
    let conversions: u64 = all.iter().map(|p| p["value"].as_u64().expect("value")).sum();
    assert_eq!(conversions, transitions);
    assert_eq!(all.len() as u64, total);

    // Guarded: no key, bad parameters named, injection attempts rejected.
    assert_eq!(get(&api, "metric=events", None).await.0, 401);
    for (query, field) in [
        ("dimensions=event_type", "metric"),
        ("metric=events&dimensions=event_type;DROP%20TABLE%20events", "dimensions"),
        ("metric=events&filters=event_type:x')%20OR%20('1'='1", "filters"),
        ("metric=events&date_range=last_week", "date_range"),
        ("metric=events&aggregation=hourly", "aggregation"),
        ("metric=events&page_size=0", "page_size"),
    ] {
        let (status, body, _) = get(&api, query, Some(&analyst)).await;
        assert_eq!((status, body["details"]["field"].as_str()), (400, Some(field)), "{query}: {body}");
    }

    stop.send(true).expect("stop");
    profiles.await.expect("join").expect("profile stage ran cleanly");
    sink.stop().await;
    drop_clickhouse_db(&cfg).await;
}
