//! The project's ClickHouse SQL on two engines: the stack's server (18.16) and
//! chdb-core (ClickHouse 26.9, in-process, from the venv `stack up` creates).
//! Same migrations, same sample rows, the real rollup statements, every
//! `GET /analytics` query shape and every Grafana dashboard query: all must run
//! on both and give identical results.

use std::process::Command;

use chrono::NaiveDate;
use lifecycle_connectors::clickhouse::{migrate, rollup};
use lifecycle_connectors::http_analytics::{params, query};
use serde_json::{Value, json};

/// Replaces each `?` with the next literal (values here are ours: numbers, dates, names).
fn bind(sql: &str, literals: &[String]) -> String {
    let mut parts = sql.split('?');
    let mut out = parts.next().unwrap_or_default().to_owned();
    for (part, lit) in parts.zip(literals.iter().chain(std::iter::repeat(&String::new()))) {
        out.push_str(lit);
        out.push_str(part);
    }
    out
}

fn quoted(values: Vec<String>) -> Vec<String> {
    values.into_iter().map(|v| format!("'{v}'")).collect()
}

/// Sample rows: two days, three users, a duplicate delivery, a refund, transitions.
fn sample_rows() -> Vec<String> {
    let ev = |id: &str, user: &str, t: &str, at: &str, cents: i64| {
        let cat = t.split('.').next().unwrap_or_default();
        format!(
            "('{id}', '{user}', '{t}', '{cat}', toDate('{}'), toDateTime('{at}'), 250, 's-{user}', 'mobile', 'DE', {cents}, '{{}}', 0, 1)",
            &at[..10]
        )
    };
    let events = [
        ev("e1", "u1", "user.signup", "2026-11-20 08:00:00", 0),
        ev("e2", "u1", "engagement.page_view", "2026-11-20 08:05:00", 0),
        ev("e2", "u1", "engagement.page_view", "2026-11-20 08:05:00", 0),
        ev("e3", "u1", "transaction.purchase_complete", "2026-11-20 09:00:00", 4999),
        ev("e4", "u2", "user.login", "2026-11-20 10:00:00", 0),
        ev("e5", "u2", "transaction.purchase_complete", "2026-11-21 11:00:00", 1000),
        ev("e6", "u2", "transaction.refund", "2026-11-21 12:00:00", -1000),
        ev("e7", "u3", "engagement.share", "2026-11-21 13:00:00", 0),
        ev("e8", "u1", "engagement.share", "2026-11-21 14:00:00", 0),
    ];
    let mv = |user: &str, from: &str, to: &str, at: &str, cause: &str, t: &str| {
        format!(
            "('{user}', '{from}', '{to}', toDate('{}'), toDateTime('{at}'), 250, '{cause}', '{t}', 0, 1)",
            &at[..10]
        )
    };
    let moves = [
        mv("u1", "Acquisition", "Revenue", "2026-11-20 09:00:00", "e3", "transaction.purchase_complete"),
        mv("u1", "Acquisition", "Revenue", "2026-11-20 09:00:00", "e3", "transaction.purchase_complete"),
        mv("u2", "Acquisition", "Revenue", "2026-11-21 11:00:00", "e5", "transaction.purchase_complete"),
        mv("u1", "Revenue", "Referral", "2026-11-21 14:00:00", "e8", "engagement.share"),
    ];
    vec![
        format!("INSERT INTO events VALUES {}", events.join(", ")),
        format!("INSERT INTO lifecycle_events VALUES {}", moves.join(", ")),
        "INSERT INTO metrics_dirty VALUES (toDate('2026-11-20'), toDateTime('2026-11-22 00:00:00')), \
         (toDate('2026-11-21'), toDateTime('2026-11-22 00:00:00')), (toDate('2026-11-22'), toDateTime('2026-11-22 00:00:00'))"
            .to_owned(),
    ]
}

/// The dashboard's queries with Grafana's macros expanded for 2026-11-01..2026-11-30.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/lifecycle-analytics.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("dashboard JSON");
    let (from, to) = ("2026-11-01 00:00:00", "2026-11-30 23:59:59");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let sql = t["rawSql"].as_str().expect("rawSql");
            let mut expanded = sql.to_owned();
            for (macro_, col_filter) in [
                ("$__dateFilter(", format!(">= toDate('{}') AND {{c}} <= toDate('{}')", &from[..10], &to[..10])),
                ("$__timeFilter(", format!(">= toDateTime('{from}') AND {{c}} <= toDateTime('{to}')")),
            ] {
                while let Some(i) = expanded.find(macro_) {
                    let rest = &expanded[i + macro_.len()..];
                    let close = rest.find(')').expect("macro closes");
                    let col = rest[..close].to_owned();
                    let replacement = format!("{col} {}", col_filter.replace("{c}", &col));
                    expanded = format!("{}{replacement}{}", &expanded[..i], &rest[close + 1..]);
                }
            }
            assert!(!expanded.contains("$__"), "unexpanded macro in panel {}: {expanded}", p["title"]);
            out.push((format!("dashboard: {}", p["title"].as_str().unwrap_or_default()), expanded));
        }
    }
    out
}

async fn run_on_server(http: &reqwest::Client, url: &str, db: &str, sql: &str) -> String {
    let resp = http
        .post(format!("{url}/?database={db}&default_format=TabSeparated"))
        .body(sql.to_owned())
        .send()
        .await
        .expect("ClickHouse reachable");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(status.is_success(), "ClickHouse 18.16 rejected:\n{sql}\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_rollup_api_and_dashboard_sql_agree_on_clickhouse_18_and_26() {
    let mut cfg = lifecycle_jobs::LifecycleConfig::default();
    cfg.clickhouse.database = format!("t_{}", uuid::Uuid::new_v4().simple());
    migrate::migrate(&cfg.clickhouse).await.expect("migrations on 18.16");

    let days: Vec<NaiveDate> =
        ["2026-11-20", "2026-11-21", "2026-11-22"].iter().map(|d| d.parse().expect("date")).collect();
    let stamp = "1795305600".to_owned(); // 2026-11-22 00:00:00 UTC: rollup time = mark time
    let mut statements: Vec<String> = Vec::new();
    for (_, _, sql) in migrate::MIGRATIONS {
        statements.extend(migrate::statements(sql));
    }
    let migrations = statements.len();
    statements.extend(sample_rows());
    statements.push(bind(&rollup::rollup_sql(&days), &["7".to_owned(), stamp.clone()]));
    statements.push(bind(&rollup::record_sql(&days), &["7".to_owned(), stamp.clone()]));
    statements.extend(rollup::purge_sql());

    let today = NaiveDate::from_ymd_opt(2026, 11, 23).expect("date");
    let mut queries: Vec<(String, String)> = vec![
        ("dirty days".into(), rollup::DIRTY_DAYS.to_owned()),
        (
            "metrics_daily".into(),
            format!(
                "SELECT toString(metric_date), lifecycle_stage, event_type, event_category, events, revenue_cents, \
                 conversions, uniqExactMerge(active_users) FROM metrics_daily WHERE (metric_date, rollup_id) IN ({}) \
                 GROUP BY metric_date, lifecycle_stage, event_type, event_category, events, revenue_cents, conversions \
                 ORDER BY metric_date, lifecycle_stage, event_type",
                bind(rollup::CURRENT_ROLLUPS, &quoted(vec!["2026-11-01".into(), "2026-11-30".into()]))
            ),
        ),
    ];
    for q in [
        "metric=events&date_range=2026-11-01..2026-11-30",
        "metric=events&dimensions=lifecycle_stage,event_type&date_range=2026-11-20..2026-11-21&aggregation=total",
        "metric=active_users&dimensions=lifecycle_stage&date_range=last_30d&aggregation=week",
        "metric=active_users&aggregation=total&date_range=last_30d",
        "metric=revenue&dimensions=event_category&filters=lifecycle_stage:Revenue|Referral&aggregation=month",
        "metric=conversions&dimensions=lifecycle_stage,event_type,event_category&filters=event_category:transaction|engagement",
    ] {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        let (parsed, _) = params::parse(&pairs, today).expect("valid query");
        queries.push((format!("api: {q}"), bind(&query::sql(&parsed, 1000), &quoted(query::binds(&parsed)))));
    }
    queries.extend(dashboard_queries());

    // ClickHouse 18.16 (migrations already applied through the crate).
    let http = reqwest::Client::builder().no_proxy().build().expect("http");
    for sql in &statements[migrations..] {
        run_on_server(&http, &cfg.clickhouse.url, &cfg.clickhouse.database, sql).await;
    }
    let mut old = serde_json::Map::new();
    for (name, sql) in &queries {
        old.insert(name.clone(), json!(run_on_server(&http, &cfg.clickhouse.url, &cfg.clickhouse.database, sql).await));
    }

    // ClickHouse 26.9 (chdb-core).
    let spec = json!({
        "statements": statements,
        "queries": queries.iter().map(|(n, s)| json!({"name": n, "sql": s})).collect::<Vec<_>>(),
    });
    let file = std::env::temp_dir().join(format!("chdb-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, spec.to_string()).expect("spec");
    let py = lifecycle_jobs::stack::python::python(&cfg.stack);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/chdb_compat.py");
    let out = tokio::task::spawn_blocking(move || Command::new(&py).arg(script).arg(&file).env("TZ", "UTC").output())
        .await
        .expect("join")
        .expect("python from the venv `lifecycle stack up` creates");
    assert!(out.status.success(), "chdb failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let mut new: serde_json::Map<String, Value> = serde_json::from_slice(&out.stdout).expect("JSON from chdb");
    let version = new.remove("__version__").unwrap_or_default();
    assert!(version.as_str().is_some_and(|v| v.starts_with("26.")), "chdb engine version {version}");

    for (name, _) in &queries {
        assert_eq!(old[name], new[name], "{name}: 18.16 and {version} disagree");
    }
    // The rollup got the stages right on both: u1's share on the 21st is in Referral,
    // e2 counted once, the refund cancels u2's purchase.
    let daily = old["metrics_daily"].as_str().expect("text");
    assert!(daily.contains("2026-11-21\tReferral\tengagement.share\tengagement\t1\t0\t1\t1"), "{daily}");
    assert!(daily.contains("2026-11-20\tAcquisition\tengagement.page_view\tengagement\t1\t0\t0\t1"), "{daily}");
    assert!(daily.contains("2026-11-21\tRevenue\ttransaction.refund\ttransaction\t1\t-1000\t0\t1"), "{daily}");
    assert_eq!(
        old["dirty days"],
        json!("2026-11-20\n2026-11-21\n2026-11-22\n"),
        "marks at the rollup's second stay dirty"
    );
    for (name, _) in queries.iter().filter(|(n, _)| n.starts_with("dashboard") || n.starts_with("api")) {
        assert!(!old[name].as_str().unwrap_or_default().is_empty(), "{name} returns rows");
    }

    crate::common::drop_clickhouse_db(&cfg).await;
}
