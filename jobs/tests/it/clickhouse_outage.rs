//! ClickHouse down for 30 s mid-stream: the sink backs off, commits nothing
//! while down, loses nothing, and resumes. Uses its own ClickHouse server
//! (own data dir and ports) so stopping it does not disturb the other tests.

use std::collections::BTreeMap;
use std::time::Duration;

use lifecycle_connectors::clickhouse::client;
use lifecycle_jobs::stack::StackConfig;
use lifecycle_jobs::stack::clickhouse as ch_server;

use crate::common::{Sink, eventually, free_port, own_analytics, test_config};
use crate::profile_stage::{produce_valid, produce_valid_as};

/// Stops the isolated server even when the test fails.
struct Server(StackConfig);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = ch_server::down(&self.0);
        let _ = std::fs::remove_dir_all(&self.0.data_dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_for_30_seconds_loses_nothing() {
    let (mut cfg, reg) = test_config("chdown").await;
    let stack = StackConfig {
        data_dir: std::env::temp_dir().join(format!("lifecycle-ch-{}", uuid::Uuid::new_v4().simple())),
        clickhouse_http_port: free_port(),
        clickhouse_tcp_port: free_port(),
        ..StackConfig::default()
    };
    for dir in ["logs", "run"] {
        std::fs::create_dir_all(stack.data_dir.join(dir)).expect("data dir");
    }
    let server = Server(stack);
    ch_server::up(&server.0).await.expect("isolated ClickHouse starts");
    cfg.clickhouse.url = format!("http://127.0.0.1:{}", server.0.clickhouse_http_port);
    own_analytics(&mut cfg);
    cfg.analytics.batch_linger_ms = 200;
    cfg.analytics.max_batch_records = 5_000;

    let sink = Sink::start(&cfg);
    let inserted = || sink.inserted("events");
    let retries = || sink.handle.metrics.retries.with_label_values(&["clickhouse_unavailable"]).get();
    let mut events = produce_valid(&cfg, reg.valid_envelope_id, 30_000, 1_000, 1).await;
    assert!(eventually(120, || inserted() >= 5_000).await, "the sink got going ({} rows)", inserted());

    // Mid-stream: ClickHouse goes away for 30 s while more events arrive.
    ch_server::down(&server.0).expect("stop ClickHouse");
    let second_run = format!("{}second-", cfg.topics.prefix);
    events.extend(produce_valid_as(&cfg, reg.valid_envelope_id, (30_000, 1_000, 1), &second_run).await);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = inserted();
    assert!(retries() > 0, "inserts failed and were retried while ClickHouse was down");
    assert!(during < 60_000, "not everything can have been inserted while down ({during})");
    ch_server::up(&server.0).await.expect("ClickHouse restarts");

    assert!(eventually(180, || inserted() >= 60_000).await, "resumed: {} of 60000 rows", inserted());
    sink.stop().await;

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        *expected.entry(e["event_type"].as_str().expect("type").to_owned()).or_default() += 1;
    }
    let rows: Vec<(String, u64)> = client(&cfg.clickhouse)
        .query("SELECT event_type, uniqExact(event_id) FROM events GROUP BY event_type")
        .fetch_all()
        .await
        .expect("counts");
    assert_eq!(rows.into_iter().collect::<BTreeMap<_, _>>(), expected, "every event is in ClickHouse once");
    let distinct: u64 = client(&cfg.clickhouse)
        .query("SELECT count() FROM (SELECT event_id FROM events FINAL)")
        .fetch_one()
        .await
        .expect("final");
    assert_eq!(distinct, 60_000);
}
