//! The ClickHouse sink on the real stack: counts per day and type equal the
//! input; replaying the same offsets does not change the deduplicated totals.

use std::collections::BTreeMap;

use lifecycle_connectors::clickhouse::client;

use crate::common::{Sink, drop_clickhouse_db, eventually, own_analytics, test_config};
use crate::profile_stage::produce_valid;

async fn run_sink(cfg: &lifecycle_jobs::LifecycleConfig, n: u64) {
    let sink = Sink::start(cfg);
    let done = eventually(300, || sink.inserted("events") >= n).await;
    let inserted = sink.inserted("events");
    sink.stop().await;
    assert!(done, "inserted {inserted} of {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_events_counted_per_day_and_type_and_replay_changes_nothing() {
    let (mut cfg, reg) = test_config("ch").await;
    own_analytics(&mut cfg);
    cfg.analytics.batch_linger_ms = 300;
    let events = produce_valid(&cfg, reg.valid_envelope_id, 100_000, 3_000, 1).await;
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in &events {
        let day = chrono::DateTime::from_timestamp_millis(e["timestamp"].as_i64().expect("ts"))
            .expect("time")
            .date_naive()
            .to_string();
        *expected.entry((day, e["event_type"].as_str().expect("type").to_owned())).or_default() += 1;
    }
    let counts = |final_: bool| {
        let ch = client(&cfg.clickhouse);
        async move {
            let sql = format!(
                "SELECT toString(event_date), event_type, count() FROM events {} GROUP BY event_date, event_type",
                if final_ { "FINAL" } else { "" }
            );
            let rows: Vec<(String, String, u64)> = ch.query(&sql).fetch_all().await.expect("counts");
            rows.into_iter().map(|(d, t, n)| ((d, t), n)).collect::<BTreeMap<_, _>>()
        }
    };
    run_sink(&cfg, 100_000).await;
    assert_eq!(counts(true).await, expected, "ClickHouse counts per day/type equal the input");

    // Replay every offset: a new group reads the topic again from the start.
    cfg.analytics.group_id.push_str("-replay");
    run_sink(&cfg, 100_000).await;
    let raw: u64 = counts(false).await.values().sum();
    assert!(raw >= 100_000, "rows before merging: {raw}");
    assert_eq!(counts(true).await, expected, "a replay does not change the totals");
    let distinct: u64 =
        client(&cfg.clickhouse).query("SELECT uniqExact(event_id) FROM events").fetch_one().await.expect("distinct");
    assert_eq!(distinct, 100_000);
    drop_clickhouse_db(&cfg).await;
}
