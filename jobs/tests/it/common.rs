//! Shared helpers: per-test configuration, stack checks, produce and read-back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_jobs::config::LifecycleConfig;
use lifecycle_jobs::demo;
use lifecycle_jobs::stages::validate::{self, StageHandle};
use lifecycle_jobs::workload::{AvroEncoder, Broken, Workload};
use lifecycle_pipeline::avro::Envelope;
use lifecycle_pipeline::{Topic, TopicNames, Validator};
use lifecycle_schemas::SchemaFiles;
use lifecycle_schemas::client::Registration;
use tokio::sync::watch;

/// A configuration whose topics, subjects and group are unique to this test.
pub(crate) async fn test_config(name: &str) -> (LifecycleConfig, Registration) {
    let mut cfg = LifecycleConfig::default();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    cfg.topics = TopicNames::with_prefix(format!("t-{name}-{}.", &unique[..8]));
    cfg.validate.group_id = format!("t-{name}-{}", &unique[..8]);
    cfg.validate.metrics_addr = None;
    let reg = lifecycle_jobs::setup::topics_and_schemas(&cfg).await.unwrap_or_else(|e| {
        panic!("the local stack must be up (run `cargo run --release --bin lifecycle -- stack up`): {e}")
    });
    (cfg, reg)
}

/// A port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Envelope and validator from the shipped schema files.
pub(crate) fn schemas() -> (Envelope, Validator) {
    let files = SchemaFiles::load(&lifecycle_schemas::files::default_dir()).expect("schema files");
    let envelope = files.envelope().expect("envelope");
    let validator = Validator::new(Arc::new(files.catalog().expect("catalog")), Default::default());
    (envelope, validator)
}

/// What a mixed workload put on `events.raw`.
pub(crate) struct Produced {
    /// event_id -> user_id of every valid event.
    pub(crate) valid: HashMap<String, String>,
    /// Count of broken records per kind.
    pub(crate) broken: Vec<(Broken, usize)>,
    /// Total records produced.
    pub(crate) total: usize,
}

/// Produces `valid` good Avro events and `broken_per_kind` of each broken kind,
/// shuffled together, keyed by user_id. `part` keeps event ids of several calls distinct.
pub(crate) async fn produce_mixed(
    cfg: &LifecycleConfig,
    reg: &Registration,
    valid: usize,
    broken_per_kind: usize,
    part: u64,
) -> Produced {
    let (envelope, validator) = schemas();
    let enc = AvroEncoder { validator: &validator, envelope: &envelope, schema_id: reg.raw_envelope_id };
    let mut w = Workload::new(11 + part, 500, &format!("{}p{part}", cfg.topics.prefix), Utc::now());
    let topic = cfg.topics.name(Topic::EventsRaw);
    let mut records = Vec::new();
    let mut produced = Produced { valid: HashMap::new(), broken: Vec::new(), total: 0 };
    for _ in 0..valid {
        let e = w.next_event();
        let user = e["user_id"].as_str().expect("user").to_owned();
        produced.valid.insert(e["event_id"].as_str().expect("id").to_owned(), user.clone());
        records.push(OutRecord {
            topic: topic.clone(),
            key: Some(user.into_bytes()),
            payload: enc.encode(&e).expect("encode"),
            headers: vec![],
        });
    }
    for kind in Broken::ALL {
        for i in 0..broken_per_kind {
            // Spread broken records through the stream.
            let at = (i * 7919 + kind as usize * 104_729) % (records.len() + 1);
            records.insert(
                at,
                OutRecord {
                    topic: topic.clone(),
                    key: Some(b"broken".to_vec()),
                    payload: w.broken(kind, &enc),
                    headers: vec![],
                },
            );
        }
        produced.broken.push((kind, broken_per_kind));
    }
    produced.total = records.len();
    let sink = KafkaSink::new(&cfg.kafka).expect("producer");
    for chunk in records.chunks(5000) {
        sink.send_all(chunk).await.expect("produce");
    }
    produced
}

impl Produced {
    /// Both parts together.
    pub(crate) fn merge(mut self, other: Produced) -> Produced {
        self.valid.extend(other.valid);
        for ((kind, n), (other_kind, m)) in self.broken.iter_mut().zip(other.broken) {
            assert_eq!(*kind, other_kind, "parts list broken kinds in the same order");
            *n += m;
        }
        self.total += other.total;
        self
    }
}

/// Every record of a topic: (partition, offset, key, payload).
pub(crate) fn read_all(cfg: &LifecycleConfig, topic: Topic) -> Vec<demo::Fetched> {
    demo::read_from(cfg, &cfg.topics.name(topic), &BTreeMap::new()).expect("read topic")
}

/// Number of records on a topic (sum of high watermarks; topics start at 0).
pub(crate) fn count(cfg: &LifecycleConfig, topic: Topic) -> i64 {
    demo::high_watermarks(cfg, &cfg.topics.name(topic)).expect("watermarks").values().sum()
}

/// Polls `f` every 200 ms until it is true or `secs` pass.
pub(crate) async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f()
}

/// Runs the validation stage in-process until it has consumed `n` records (or
/// `secs` pass), stops it cleanly and returns its counters.
pub(crate) async fn run_stage_until(cfg: &LifecycleConfig, n: u64, secs: u64) -> StageHandle {
    let handle = StageHandle::new().expect("metrics");
    validate::run_until(cfg, &handle, n, Duration::from_secs(secs)).await.expect("stage ran cleanly");
    assert!(handle.counts().0 >= n, "stage consumed {:?} of {n} in {secs} s", handle.counts());
    handle
}

/// Gives the test its own ClickHouse database and the sink its own group,
/// without a metrics port.
pub(crate) fn own_analytics(cfg: &mut LifecycleConfig) {
    cfg.clickhouse.database = format!("t_{}", uuid::Uuid::new_v4().simple());
    cfg.analytics.group_id = format!("{}-analytics", cfg.validate.group_id);
    cfg.analytics.metrics_addr = None;
}

/// Drops the test's ClickHouse database.
pub(crate) async fn drop_clickhouse_db(cfg: &LifecycleConfig) {
    lifecycle_connectors::clickhouse::server_client(&cfg.clickhouse)
        .query("DROP DATABASE ?")
        .bind(clickhouse::sql::Identifier(&cfg.clickhouse.database))
        .execute()
        .await
        .expect("drop the test database");
}

/// A running analytics sink: its handle, the stop switch and the task.
pub(crate) struct Sink {
    pub(crate) handle: lifecycle_jobs::stages::analytics::SinkHandle,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Sink {
    /// Starts the sink with `cfg`.
    pub(crate) fn start(cfg: &LifecycleConfig) -> Self {
        let handle = lifecycle_jobs::stages::analytics::SinkHandle::new().expect("metrics");
        let (stop, rx) = watch::channel(false);
        let task = {
            let (cfg, handle) = (cfg.clone(), handle.clone());
            tokio::spawn(async move { lifecycle_jobs::stages::analytics::run(&cfg, handle, rx).await })
        };
        Self { handle, stop, task }
    }

    /// Rows inserted into `table` so far.
    pub(crate) fn inserted(&self, table: &str) -> u64 {
        self.handle.metrics.rows_inserted.with_label_values(&[table]).get()
    }

    /// Stops the sink (it finishes its batch and rolls up once more); it must have run cleanly.
    pub(crate) async fn stop(self) -> lifecycle_jobs::stages::analytics::SinkHandle {
        self.stop.send(true).expect("stop");
        self.task.await.expect("join").expect("sink ran cleanly");
        self.handle
    }
}

/// Gives the test its own PostgreSQL database (migrated) on the stack's server,
/// for tests whose global tables (workflows, triggers, segments) must not
/// meet other tests' rows.
pub(crate) async fn own_database(cfg: &mut LifecycleConfig) -> sqlx::PgPool {
    let server = lifecycle_connectors::postgres::connect(&cfg.postgres).await.expect("database server");
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&server).await.expect("create the test database");
    server.close().await;
    let mut url = url::Url::parse(&cfg.postgres.url).expect("postgres url");
    url.set_path(&name);
    cfg.postgres.url = url.to_string();
    lifecycle_connectors::postgres::connect_and_migrate(&cfg.postgres).await.expect("migrate the test database")
}

/// Drops the database `own_database` made (connections still open are ended).
pub(crate) async fn drop_database(cfg: &LifecycleConfig) {
    let url = url::Url::parse(&cfg.postgres.url).expect("postgres url");
    let name = url.path().trim_start_matches('/').to_owned();
    let mut server = cfg.postgres.clone();
    server.url = LifecycleConfig::default().postgres.url;
    let pool = lifecycle_connectors::postgres::connect(&server).await.expect("database server");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&pool)
        .await
        .expect("drop the test database");
}
