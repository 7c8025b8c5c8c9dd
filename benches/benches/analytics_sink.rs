//! ClickHouse sink throughput against ClickHouse's own client bulk-inserting the
//! same rows, in one run.
//!
//! Needs the local stack (`lifecycle stack up`). Produces N Avro events to a fresh
//! events.valid topic, runs the sink into a fresh database until every row is in
//! (consume, decode, RowBinary insert, commit), exports those rows to files, then
//! times `clickhouse-client` inserting the files into an identical table (TSV and
//! Native formats). Prints rows/s of each and the ratios.
//!
//!   cargo bench -p lifecycle-benches --bench analytics_sink [-- EVENTS USERS]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifecycle_connectors::clickhouse::sink::{EventRow, insert};
use lifecycle_jobs::LifecycleConfig;
use lifecycle_jobs::stages::analytics::{self, SinkHandle};
use lifecycle_pipeline::TopicNames;
use tokio::sync::watch;

fn arg(i: usize, default: usize) -> usize {
    std::env::args().filter(|a| !a.starts_with("--")).nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// Runs `clickhouse-client` with `query`, feeding it `input`; returns the wall time.
fn client(port: u16, query: &str, input: Option<&std::path::Path>) -> Duration {
    let mut cmd = Command::new("clickhouse-client");
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--query", query]);
    if let Some(path) = input {
        cmd.stdin(std::fs::File::open(path).expect("input file"));
    } else {
        cmd.stdin(Stdio::null());
    }
    let t = Instant::now();
    let out = cmd.output().expect("clickhouse-client (installed by stack up)");
    assert!(out.status.success(), "clickhouse-client {query}: {}", String::from_utf8_lossy(&out.stderr));
    t.elapsed()
}

/// Writes `SELECT ... FORMAT fmt` of the table to `path` through clickhouse-client.
fn export(port: u16, db: &str, fmt: &str, path: &std::path::Path) {
    let out = Command::new("clickhouse-client")
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--query"])
        .arg(format!("SELECT * FROM {db}.events FORMAT {fmt}"))
        .stdout(std::fs::File::create(path).expect("export file"))
        .status()
        .expect("clickhouse-client");
    assert!(out.success(), "export {fmt}");
}

#[tokio::main]
async fn main() {
    let (events, users) = (arg(1, 200_000), arg(2, 10_000));
    let mut cfg = LifecycleConfig::default();
    // The sink is timed from its first insert, so the first batch is not counted:
    // fewer events than two batches would time (almost) nothing.
    assert!(
        events >= 2 * cfg.analytics.max_batch_records,
        "EVENTS must be at least twice analytics.max_batch_records ({})",
        cfg.analytics.max_batch_records
    );
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    cfg.topics = TopicNames::with_prefix(format!("bench-{tag}."));
    cfg.analytics.group_id = format!("bench-{tag}-analytics");
    cfg.analytics.metrics_addr = None;
    cfg.clickhouse.database = format!("bench_{tag}");
    let port = cfg.stack.clickhouse_tcp_port;
    let db = cfg.clickhouse.database.clone();
    let reg = lifecycle_jobs::setup::topics_and_schemas(&cfg).await.expect("stack up? (lifecycle stack up)");
    let (generated, bytes) = lifecycle_benches::produce_valid(&cfg, reg.valid_envelope_id, (events, users, 5)).await;
    println!("produced {events} events for {users} users ({bytes} bytes avg)");

    let raw = lifecycle_benches::raw_consume(&cfg, events).await;

    // The sink: Kafka -> decode -> RowBinary insert -> commit.
    let handle = SinkHandle::new().expect("metrics");
    let (stop, rx) = watch::channel(false);
    let task = {
        let (cfg, handle) = (cfg.clone(), handle.clone());
        tokio::spawn(async move { analytics::run(&cfg, handle, rx).await })
    };
    // Time from the first inserted row: excludes migrations and the group join.
    let inserted = || handle.metrics.rows_inserted.with_label_values(&["events"]).get();
    let wait = Instant::now();
    while inserted() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(wait.elapsed() < Duration::from_secs(300), "sink did not start");
    }
    let first = inserted();
    let t = Instant::now();
    while inserted() < events as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(t.elapsed() < Duration::from_secs(900), "sink stalled at {}", inserted());
    }
    let sink_time = t.elapsed();
    let sink_rows = events as u64 - first;
    stop.send(true).expect("stop");
    task.await.expect("join").expect("sink");

    // The sink's insert path alone: the same rows, built in memory, one
    // RowBinary insert per 50,000 (the sink's batch size) through the crate.
    let files = lifecycle_schemas::SchemaFiles::load(&cfg.schemas_dir()).expect("schemas");
    let validator =
        lifecycle_pipeline::Validator::new(std::sync::Arc::new(files.catalog().expect("catalog")), Default::default());
    let now = chrono::Utc::now();
    let rows: Vec<EventRow> = generated
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let event = validator.validate_json(e.to_string().as_bytes(), now).expect("valid");
            EventRow::new(&event, 0, i64::try_from(i).unwrap_or(0))
        })
        .collect();
    client(port, &format!("CREATE TABLE {db}.events_crate AS {db}.events"), None);
    let ch = lifecycle_connectors::clickhouse::client(&cfg.clickhouse);
    let t = Instant::now();
    for chunk in rows.chunks(cfg.analytics.max_batch_records) {
        let chunk: Vec<&EventRow> = chunk.iter().collect();
        insert(&ch, "events_crate", &chunk).await.expect("crate insert");
    }
    let crate_time = t.elapsed();

    // ClickHouse's own client, bulk-inserting the same rows.
    let dir = std::env::temp_dir().join(format!("bench-{tag}"));
    std::fs::create_dir_all(&dir).expect("tmp");
    let mut results = Vec::new();
    for fmt in ["TSV", "Native"] {
        let path = dir.join(format!("events.{fmt}"));
        export(port, &db, fmt, &path);
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let table = format!("{db}.events_bulk_{}", fmt.to_lowercase());
        client(port, &format!("CREATE TABLE {table} AS {db}.events"), None);
        let took = client(port, &format!("INSERT INTO {table} FORMAT {fmt}"), Some(&path));
        results.push((fmt, took, size));
    }
    let rows_total = events as f64;
    client(port, &format!("DROP DATABASE {db}"), None);
    let _ = std::fs::remove_dir_all(&dir);

    let sink_rate = sink_rows as f64 / sink_time.as_secs_f64();
    println!(
        "machine: {} cores; broker, ClickHouse and the measured client share them",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<58} {:>12} {:>10}", "measurement", "rows/s", "seconds");
    let line = |what: &str, rows: f64, took: Duration| {
        println!("{what:<58} {:>12.0} {:>10.2}", rows / took.as_secs_f64(), took.as_secs_f64());
    };
    line("raw consume of the topic (rdkafka, no processing)", rows_total, raw);
    line("sink: Kafka consume + Avro decode + RowBinary insert + commit", sink_rows as f64, sink_time);
    line("sink's insert path alone: crate RowBinary, 50k-row inserts", rows_total, crate_time);
    for (fmt, took, size) in &results {
        println!(
            "{:<58} {:>12.0} {:>10.2}",
            format!("clickhouse-client INSERT FORMAT {fmt} from a file ({} MB)", size / 1_000_000),
            rows_total / took.as_secs_f64(),
            took.as_secs_f64()
        );
    }
    for (fmt, took, _) in &results {
        let client_rate = rows_total / took.as_secs_f64();
        println!(
            "ratio vs clickhouse-client {fmt}: sink {:.2}, insert path {:.2}",
            sink_rate / client_rate,
            rows_total / crate_time.as_secs_f64() / client_rate
        );
    }
    println!("ratio sink / raw consume: {:.2}", sink_rate / (rows_total / raw.as_secs_f64()));
}
