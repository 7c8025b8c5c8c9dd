//! `lifecycle-bench`: one run that loads a realistic workload into Kafka and
//! measures, on the same machine and topic, the ceiling (raw consume with
//! rdkafka and with kcat), each stage alone, the whole pipeline, two peers (a
//! Python one and a Kafka Streams one), and produce -> profile-visible latency
//! at a fixed offered rate.
//!
//! Every measured program is a separate process (`lifecycle run <stage>`, the
//! raw consumer, kcat, the peers), so CPU time and peak RSS belong to it alone;
//! the CPU the broker, PostgreSQL and ClickHouse spend meanwhile is reported
//! apart from it.

pub mod api_load;
pub mod latency;
pub mod proc;
pub mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use lifecycle_connectors::kafka::config::KafkaConfig;
use lifecycle_jobs::LifecycleConfig;
use lifecycle_jobs::workload::{AvroEncoder, Workload};
use lifecycle_pipeline::avro::Envelope;
use lifecycle_pipeline::{Limits, Topic, TopicNames, Validator};
use lifecycle_schemas::files::SchemaFiles;
use rdkafka::consumer::{BaseConsumer, Consumer};

use proc::{Proc, RssSample, Usage};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Events in the workload.
    pub events: usize,
    /// Distinct users (Zipf-like).
    pub users: u32,
    /// Offered rate of the latency run, events/s.
    pub rate: u32,
    /// Length of the latency run.
    pub latency_secs: u64,
    /// Only the whole pipeline, sampling RSS (the memory run).
    pub soak: bool,
    /// Only these measurements (empty: all): raw, kcat, peer, streams, validate,
    /// profile, analytics, pipeline, latency. profile and analytics also run validate.
    pub only: Vec<String>,
    /// Markdown file whose results section is replaced.
    pub write: Option<PathBuf>,
    /// The `lifecycle` binary.
    pub lifecycle: PathBuf,
    /// This binary (for the raw consumer).
    pub me: PathBuf,
    /// The Python with confluent-kafka and fastavro.
    pub python: PathBuf,
    /// The peer script.
    pub peer: PathBuf,
    /// The Kafka Streams peer's Maven project (built on first use).
    pub streams_peer: PathBuf,
    /// Maven's local repository (shared with the stack's cache).
    pub maven_repo: PathBuf,
}

impl Options {
    /// Whether the run makes measurement `name` (see [`Options::only`]).
    pub fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// One measured row.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Events processed.
    pub events: usize,
    /// First record to last.
    pub wall: Duration,
    /// CPU time and peak RSS, summed over the row's processes.
    pub usage: Usage,
    /// RSS over time (summed over the row's processes, by sample index).
    pub rss: Vec<RssSample>,
    /// CPU time the services spent during the measurement: (`kafka`,
    /// `postgres`, `clickhouse`), each when its process is known.
    pub services_cpu: Vec<(&'static str, Duration)>,
    /// Why a fed run ended before all its events were done (`events` then counts
    /// those done).
    pub stalled: Option<String>,
}

impl Row {
    /// A row of one process, without memory samples.
    pub fn new(name: &str, events: usize, wall: Duration, usage: Usage) -> Self {
        Self { name: name.to_owned(), events, wall, usage, rss: Vec::new(), services_cpu: Vec::new(), stalled: None }
    }

    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// CPU seconds per million events.
    pub fn cpu_per_million(&self) -> f64 {
        self.usage.cpu.as_secs_f64() * 1e6 / self.events.max(1) as f64
    }

    /// CPU seconds per million events of service `name` (`kafka`, `postgres`, `clickhouse`).
    pub fn service_cpu_per_million(&self, name: &str) -> Option<f64> {
        let (_, cpu) = self.services_cpu.iter().find(|(n, _)| *n == name)?;
        Some(cpu.as_secs_f64() * 1e6 / self.events.max(1) as f64)
    }
}

/// Everything one benchmark run produced.
#[derive(Debug, Default)]
pub struct Results {
    /// Mean framed event size, bytes.
    pub event_bytes: usize,
    /// Producing the workload: events/s.
    pub produce_rate: f64,
    /// Measured rows, in run order.
    pub rows: Vec<Row>,
    /// The latency run, when made.
    pub latency: Option<latency::Latency>,
}

/// The stages a measured run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// events.raw -> events.valid / events.dlq.
    Validate,
    /// events.valid -> PostgreSQL profiles.
    Profile,
    /// events.valid -> ClickHouse.
    Analytics,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Self::Validate => "validate",
            Self::Profile => "profile",
            Self::Analytics => "analytics",
        }
    }
}

/// A per-run environment: topics under one prefix, its own PostgreSQL and
/// ClickHouse databases, metrics ports, and a directory for configs and logs.
pub struct Env {
    /// The configuration the stages get.
    pub cfg: LifecycleConfig,
    /// Where configs and logs go.
    pub dir: PathBuf,
    tag: String,
    databases: Vec<String>,
    topics: Vec<String>,
}

impl Env {
    /// A fresh environment under `bench-<tag>.`.
    pub fn new(base: &LifecycleConfig, root: &Path, tag: &str) -> Result<Self, String> {
        let mut cfg = base.clone();
        cfg.topics = TopicNames::with_prefix(format!("bench-{tag}."));
        let dir = root.join(tag);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        cfg.validate.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 19101)));
        cfg.profile.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 19102)));
        cfg.analytics.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 19103)));
        Ok(Self { cfg, dir, tag: tag.to_owned(), databases: Vec::new(), topics: Vec::new() })
    }

    /// Creates the topics of the current names (remembered for [`Env::clean`]) and registers the schemas.
    pub async fn topics_and_schemas(&mut self) -> Result<lifecycle_schemas::client::Registration, String> {
        self.topics.extend(Topic::ALL.iter().map(|&t| self.cfg.topics.name(t)));
        lifecycle_jobs::setup::topics_and_schemas(&self.cfg).await
    }

    /// Gives the stages fresh consumer groups and fresh databases named after `run`.
    pub async fn fresh(&mut self, run: &str) -> Result<(), String> {
        let name = format!("bench_{}_{}", self.tag.replace('-', "_"), run);
        self.cfg.validate.group_id = format!("{name}-validate");
        self.cfg.profile.group_id = format!("{name}-profile");
        self.cfg.analytics.group_id = format!("{name}-analytics");
        let server = lifecycle_connectors::postgres::connect(&self.cfg.postgres).await.map_err(|e| e.to_string())?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&server).await.map_err(|e| e.to_string())?;
        server.close().await;
        let mut url = url::Url::parse(&self.cfg.postgres.url).map_err(|e| e.to_string())?;
        url.set_path(&name);
        self.cfg.postgres.url = url.to_string();
        self.cfg.clickhouse.database = name.clone();
        self.databases.push(name);
        Ok(())
    }

    /// Writes the configuration for the stages; returns its path.
    fn config_file(&self, run: &str) -> Result<PathBuf, String> {
        let path = self.dir.join(format!("{run}.toml"));
        let text = toml::to_string(&self.cfg).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// Drops the databases and deletes the topics this environment made.
    pub async fn clean(&self, base: &LifecycleConfig) {
        if let Ok(server) = lifecycle_connectors::postgres::connect(&base.postgres).await {
            for db in &self.databases {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&server).await;
            }
        }
        let http = reqwest::Client::new();
        for db in &self.databases {
            let _ = http.post(&base.clickhouse.url).body(format!("DROP DATABASE IF EXISTS {db}")).send().await;
        }
        if let Err(e) = lifecycle_connectors::kafka::admin::delete_topics(&base.kafka, &self.topics).await {
            println!("deleting the run's topics failed: {e}");
        }
    }
}

/// The envelope and a validator with default limits, from `cfg`'s schema directory:
/// what the workload's Avro encoder needs.
pub fn encoding(cfg: &LifecycleConfig) -> Result<(Envelope, Validator), String> {
    let files = SchemaFiles::load(&cfg.schemas_dir()).map_err(|e| e.to_string())?;
    let envelope = files.envelope().map_err(|e| e.to_string())?;
    let validator = Validator::new(Arc::new(files.catalog().map_err(|e| e.to_string())?), Limits::default());
    Ok((envelope, validator))
}

/// How far the memory run's feed may run ahead of the slowest stage, in
/// events: the run measures the stages' memory while they keep up with a
/// stream, not while they drain a backlog of 10 million events.
pub const SOAK_LAG: u64 = 100_000;

/// A gate at this value tells [`produce`] to stop feeding.
pub const GATE_STOP: u64 = u64::MAX;

/// Generates `events` events of the standard mix for `users` users (seeded, ids
/// made from `run_id`), encodes them as Confluent-framed Avro with `schema_id`
/// and produces them to `topic`, handing each event to `keep` once encoded.
/// With a `gate`, no more events are sent than it allows (it is raised by
/// whoever watches the consumers) and none after it is set to [`GATE_STOP`].
/// Returns the mean framed size and the produce rate (events/s, time spent
/// waiting on the gate excluded).
pub async fn produce(
    cfg: &LifecycleConfig,
    (topic, schema_id): (&str, u32),
    (events, users, seed): (usize, u32, u64),
    run_id: &str,
    mut keep: impl FnMut(serde_json::Value),
    gate: Option<&AtomicU64>,
) -> Result<(usize, f64), String> {
    use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
    let (envelope, validator) = encoding(cfg)?;
    let enc = AvroEncoder { validator: &validator, envelope: &envelope, schema_id };
    let mut w = Workload::new(seed, users, run_id, Utc::now());
    let sink = KafkaSink::new(&cfg.kafka).map_err(|e| e.to_string())?;
    let (mut sent, mut bytes, mut producing) = (0, 0, Duration::ZERO);
    while sent < events {
        let chunk = (0..20_000.min(events - sent))
            .map(|_| {
                let e = w.next_event();
                let payload = enc.encode(&e).map_err(|err| format!("encoding {e}: {err}"))?;
                bytes += payload.len();
                let key = Some(e["user_id"].as_str().unwrap_or_default().as_bytes().to_vec());
                keep(e);
                Ok(OutRecord { topic: topic.to_owned(), key, payload, headers: vec![] })
            })
            .collect::<Result<Vec<_>, String>>()?;
        while gate.is_some_and(|g| (sent + chunk.len()) as u64 > g.load(Ordering::Relaxed)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if gate.is_some_and(|g| g.load(Ordering::Relaxed) == GATE_STOP) {
            break;
        }
        let t = Instant::now();
        sink.send_all(&chunk).await.map_err(|e| format!("producing the workload: {e}"))?;
        producing += t.elapsed();
        sent += chunk.len();
    }
    Ok((bytes / sent.max(1), sent as f64 / producing.as_secs_f64().max(1e-9)))
}

/// Sum of the samples of `metric` (whose labels contain `labels`) at a Prometheus endpoint.
fn scrape(addr: SocketAddr, metric: &str, labels: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\nConnection: close\r\n\r\n").is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(metric).is_some_and(|rest| rest.starts_with(['{', ' '])) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// `(started, done)` counts of a stage, from its metrics (and, for validate,
/// from the output topic: its events count when they are in Kafka).
fn progress(cfg: &LifecycleConfig, stage: Stage) -> (u64, u64) {
    let port = |a: Option<SocketAddr>| a.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    match stage {
        // Validate counts a batch once its transaction committed: its outputs
        // are then visible to read_committed readers.
        Stage::Validate => {
            let a = port(cfg.validate.metrics_addr);
            let done = scrape(a, "lifecycle_validate_records_out_total", "");
            (done, done)
        }
        Stage::Profile => {
            let a = port(cfg.profile.metrics_addr);
            let done = scrape(a, "lifecycle_profile_outcomes_total", "");
            (scrape(a, "lifecycle_profile_records_in_total", ""), done)
        }
        Stage::Analytics => {
            let a = port(cfg.analytics.metrics_addr);
            let done = scrape(a, "lifecycle_analytics_outcomes_total", "reason=\"event\"")
                + scrape(a, "lifecycle_analytics_outcomes_total", "outcome=\"dead_lettered\"");
            (scrape(a, "lifecycle_analytics_records_in_total", ""), done)
        }
    }
}

/// Starts `lifecycle run <stage>` for each of `stages` with `env`'s configuration.
pub fn start_stages(opts: &Options, env: &Env, run: &str, stages: &[Stage]) -> Result<Vec<Proc>, String> {
    let config = env.config_file(run)?;
    stages
        .iter()
        .map(|s| {
            let mut cmd = Command::new(&opts.lifecycle);
            cmd.arg("--config")
                .arg(&config)
                .args(["run", s.name()])
                .env("RUST_LOG", std::env::var("BENCH_STAGE_LOG").unwrap_or_else(|_| "warn".into()));
            Proc::spawn(s.name(), &mut cmd, Stdio::null(), &env.dir.join(format!("{run}-{}.log", s.name())))
        })
        .collect()
}

/// Runs `stages` together on `env` until the last of them has done `events`;
/// times from the first record the first stage takes to the last one done.
/// With a `feed`, keeps its gate at `window` events past the slowest stage, and
/// when the stages stall closes the gate and returns what was measured so far.
pub fn measure_stages(
    opts: &Options,
    env: &Env,
    (run, stages): (&str, &[Stage]),
    events: usize,
    feed: Option<(&AtomicU64, u64)>,
) -> Result<Row, String> {
    let mut procs = start_stages(opts, env, run, stages)?;
    let (mut first, mut last_change, mut last_done) = (None, Instant::now(), 0);
    let (started, mut stalled) = (Instant::now(), None);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let counts: Vec<(u64, u64)> = stages.iter().map(|&s| progress(&env.cfg, s)).collect();
        let done = counts.iter().map(|c| c.1).min().unwrap_or(0);
        if let Some((gate, window)) = feed {
            gate.fetch_max(done + window, Ordering::Relaxed);
        }
        if first.is_none() && counts.first().is_some_and(|c| c.0 > 0) {
            first = Some(Instant::now());
        }
        for p in &mut procs {
            if !p.sample(done) {
                return Err(format!("{} exited early; see {}", p.name, env.dir.display()));
            }
        }
        if done >= events as u64 {
            break;
        }
        if done != last_done {
            (last_done, last_change) = (done, Instant::now());
        }
        if last_change.elapsed() > Duration::from_secs(180) {
            let why = format!("{run} stalled at {done}/{events} (logs in {})", env.dir.display());
            // A fed run keeps what it measured up to the stall.
            let Some((gate, _)) = feed else { return Err(why) };
            gate.store(GATE_STOP, Ordering::Relaxed);
            stalled = Some(why);
            break;
        }
    }
    let events = if stalled.is_some() { usize::try_from(last_done).unwrap_or(events) } else { events };
    let wall = first.map_or(started.elapsed(), |f| f.elapsed());
    let (mut usage, mut rss) = (Usage::default(), Vec::<RssSample>::new());
    for p in procs {
        let (u, samples) = p.stop(events as u64);
        usage = usage + u;
        for (i, s) in samples.into_iter().enumerate() {
            match rss.get_mut(i) {
                Some(r) => r.rss_kib += s.rss_kib,
                None => rss.push(s),
            }
        }
    }
    Ok(Row { name: run.to_owned(), events, wall, usage, rss, services_cpu: Vec::new(), stalled })
}

/// The rdkafka raw consumer (this binary's `raw-consume`): reads `events` records, does nothing.
pub fn measure_raw(opts: &Options, env: &Env, topic: &str, events: usize) -> Result<Row, String> {
    let mut cmd = Command::new(&opts.me);
    cmd.args(["raw-consume", "--bootstrap", &env.cfg.kafka.bootstrap_servers, "--topic", topic])
        .args(["--count", &events.to_string()]);
    measure_reporting("raw consume (rdkafka)", &mut cmd, &env.dir.join("raw.log"), events)
}

/// Runs a process that consumes `events` records and prints `{"elapsed_s": ..}`
/// (first record to last) as its last line; its CPU and memory come from `/proc`.
fn measure_reporting(name: &str, cmd: &mut Command, log: &Path, events: usize) -> Result<Row, String> {
    let p = Proc::spawn(name, cmd, Stdio::piped(), log)?;
    let (usage, out) = p.finish(Duration::from_secs(7200))?;
    let last = out.lines().last().unwrap_or_default();
    let elapsed = serde_json::from_str::<serde_json::Value>(last).ok().and_then(|v| v["elapsed_s"].as_f64());
    let wall = elapsed.ok_or_else(|| format!("{name} printed {out:?}"))?;
    Ok(Row::new(name, events, Duration::from_secs_f64(wall), usage))
}

/// kcat -C over the topic, output discarded; timed as a whole process. Tried
/// up to three times: kcat gives up at once when its first metadata request fails.
pub fn measure_kcat(env: &Env, topic: &str, events: usize) -> Result<Row, String> {
    let mut last = String::new();
    for attempt in 1..=3 {
        let mut cmd = Command::new("kcat");
        cmd.args(["-C", "-q", "-e", "-b", &env.cfg.kafka.bootstrap_servers, "-t", topic, "-o", "beginning"])
            .args(["-c", &events.to_string()]);
        let t = Instant::now();
        let p = Proc::spawn("kcat", &mut cmd, Stdio::null(), &env.dir.join(format!("kcat-{attempt}.log")))?;
        match p.finish(Duration::from_secs(3600)) {
            Ok((usage, _)) => return Ok(Row::new("raw consume (kcat -C)", events, t.elapsed(), usage)),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(format!("{last} (see {})", env.dir.display()))
}

/// The Python peer on the topic.
pub fn measure_peer(opts: &Options, env: &Env, topic: &str, events: usize) -> Result<Row, String> {
    let mut cmd = Command::new(&opts.python);
    cmd.arg(&opts.peer).args([&env.cfg.kafka.bootstrap_servers, topic, &events.to_string()]).arg(env.cfg.schemas_dir());
    measure_reporting("Python peer (confluent-kafka + fastavro)", &mut cmd, &env.dir.join("peer.log"), events)
}

/// The Kafka Streams peer's jar, built with Maven unless it is there.
fn streams_peer_jar(opts: &Options) -> Result<PathBuf, String> {
    let jar = opts.streams_peer.join("target/streams-peer.jar");
    if jar.is_file() {
        return Ok(jar);
    }
    println!("building the Kafka Streams peer (mvn package in {})...", opts.streams_peer.display());
    let out = Command::new("mvn")
        .args(["-B", "-q", "package"])
        .arg(format!("-Dmaven.repo.local={}", opts.maven_repo.display()))
        .current_dir(&opts.streams_peer)
        .output()
        .map_err(|e| format!("mvn: {e}"))?;
    if !out.status.success() || !jar.is_file() {
        return Err(format!("building the Kafka Streams peer failed: {}", String::from_utf8_lossy(&out.stdout)));
    }
    Ok(jar)
}

/// The Kafka Streams peer (Java 17, kafka-streams 4.4, exactly_once_v2, RocksDB) on the topic.
pub fn measure_streams_peer(opts: &Options, env: &Env, topic: &str, events: usize) -> Result<Row, String> {
    let jar = streams_peer_jar(opts)?;
    let state = env.dir.join("streams-state");
    std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("java");
    cmd.args(["-Xms512m", "-Xmx1g", "-jar"])
        .arg(&jar)
        .args([&env.cfg.kafka.bootstrap_servers, topic, &events.to_string()])
        .arg(env.cfg.schemas_dir())
        .arg(&state);
    measure_reporting(STREAMS_PEER, &mut cmd, &env.dir.join("streams-peer.log"), events)
}

/// The Kafka Streams peer's row name.
pub const STREAMS_PEER: &str = "Kafka Streams peer (exactly_once_v2, RocksDB)";

/// The raw consumer itself: prints `{"elapsed_s": first record to last}` of [`consume_and_drop`].
pub fn raw_consume(bootstrap: &str, topic: &str, count: usize) -> Result<(), String> {
    let kafka = KafkaConfig { bootstrap_servers: bootstrap.to_owned(), ..Default::default() };
    let elapsed = consume_and_drop(&kafka, topic, count)?;
    println!("{}", serde_json::json!({"elapsed_s": elapsed.as_secs_f64(), "seen": count}));
    Ok(())
}

/// Assigns every partition of `topic` from the beginning, polls `count` records
/// and drops them. Returns the time from the first record to the last.
pub fn consume_and_drop(kafka: &KafkaConfig, topic: &str, count: usize) -> Result<Duration, String> {
    use rdkafka::{Offset, TopicPartitionList};
    let c: BaseConsumer = kafka.consumer("bench-raw").create().map_err(|e| e.to_string())?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let partitions = md.topics().first().map_or(0, |t| t.partitions().len());
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, i32::try_from(p).unwrap_or(0), Offset::Beginning).map_err(|e| e.to_string())?;
    }
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let (mut seen, mut first, mut last_seen) = (0, None, Instant::now());
    while seen < count {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                first.get_or_insert_with(Instant::now);
                seen += 1;
                last_seen = Instant::now();
            }
            Some(Err(e)) => return Err(e.to_string()),
            None if last_seen.elapsed() > Duration::from_secs(60) => {
                return Err(format!("stalled at {seen}/{count}"));
            }
            None => {}
        }
    }
    Ok(first.map_or(Duration::ZERO, |f: Instant| f.elapsed()))
}

/// The pids of the stack's services: Kafka and ClickHouse from their pid files,
/// PostgreSQL's postmaster from its data directory.
fn service_pids(cfg: &LifecycleConfig) -> Vec<(&'static str, u32)> {
    let read =
        |path: PathBuf| std::fs::read_to_string(path).ok().and_then(|t| t.lines().next()?.trim().parse::<u32>().ok());
    let d = &cfg.stack.data_dir;
    [
        ("kafka", read(d.join("run/kafka.pid"))),
        ("postgres", read(d.join("postgres/postmaster.pid"))),
        ("clickhouse", read(d.join("run/clickhouse.pid"))),
    ]
    .into_iter()
    .filter_map(|(name, pid)| Some((name, pid?)))
    .collect()
}

/// The whole run: see the module docs.
pub async fn run(opts: &Options, base: &LifecycleConfig) -> Result<Results, String> {
    let root = base.stack.data_dir.join("bench");
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    println!("bench {tag}: {} events, {} users; logs and configs in {}", opts.events, opts.users, root.display());
    let mut env = Env::new(base, &root, &tag)?;
    let result = run_in(opts, &mut env).await;
    env.clean(base).await;
    result
}

async fn run_in(opts: &Options, env: &mut Env) -> Result<Results, String> {
    let mut res = Results::default();
    let raw_topic = env.cfg.topics.name(Topic::EventsRaw);
    let reg = env.topics_and_schemas().await?;
    let workload = (opts.events, opts.users, 42);
    if !opts.soak {
        let (bytes, rate) = produce(&env.cfg, (&raw_topic, reg.raw_envelope_id), workload, "b", drop, None).await?;
        (res.event_bytes, res.produce_rate) = (bytes, rate);
        println!("produced {} events ({bytes} bytes mean, framed Avro) at {rate:.0} events/s", opts.events);
    }
    let n = opts.events;
    let show = |r: &Row| {
        println!(
            "  {:<50} {:>9.0} events/s {:>7.1} CPU s/M events {:>6.0} MiB peak; kafka {:.1}, postgres {:.1}, clickhouse {:.1} CPU s/M",
            r.name,
            r.rate(),
            r.cpu_per_million(),
            r.usage.peak_rss_kib as f64 / 1024.0,
            r.service_cpu_per_million("kafka").unwrap_or(0.0),
            r.service_cpu_per_million("postgres").unwrap_or(0.0),
            r.service_cpu_per_million("clickhouse").unwrap_or(0.0)
        );
    };
    let push = |res: &mut Results, r: Row| {
        show(&r);
        res.rows.push(r);
    };
    // Each measurement also notes the services' CPU time while it ran.
    let services = service_pids(&env.cfg);
    let services_cpu = || -> Vec<(&'static str, Option<Duration>)> {
        services.iter().map(|&(name, pid)| (name, proc::tree_cpu_of(pid))).collect()
    };
    let blocking = |f: &dyn Fn() -> Result<Row, String>| {
        let before = services_cpu();
        let mut row = tokio::task::block_in_place(f)?;
        // The stages' database connections end when the stages stop; their
        // backends' CPU reaches the postmaster's account once they are reaped.
        std::thread::sleep(Duration::from_secs(1));
        for ((name, b), (_, a)) in before.into_iter().zip(services_cpu()) {
            if let (Some(b), Some(a)) = (b, a) {
                row.services_cpu.push((name, a.saturating_sub(b)));
            }
        }
        Ok::<Row, String>(row)
    };
    let all = [Stage::Validate, Stage::Profile, Stage::Analytics];
    if opts.soak {
        // Fed while the stages run, never more than SOAK_LAG events ahead of them.
        env.fresh("pipeline").await?;
        let gate = Arc::new(AtomicU64::new(SOAK_LAG));
        let feed = tokio::spawn({
            let (cfg, topic, gate, id) = (env.cfg.clone(), raw_topic.clone(), gate.clone(), reg.raw_envelope_id);
            async move { produce(&cfg, (&topic, id), workload, "b", drop, Some(&gate)).await }
        });
        let measured = blocking(&|| measure_stages(opts, env, ("pipeline", &all), n, Some((&gate, SOAK_LAG))));
        if measured.is_err() && feed.is_finished() {
            feed.await.map_err(|e| e.to_string())??;
            return Err("the feed finished but the stages did not".into());
        }
        let r = measured?;
        // After a stall the gate is closed: the feed stops at its next chunk.
        (res.event_bytes, res.produce_rate) = feed.await.map_err(|e| e.to_string())??;
        push(&mut res, Row { name: "whole pipeline".into(), ..r });
        return Ok(res);
    }
    if opts.wants("raw") {
        push(&mut res, blocking(&|| measure_raw(opts, env, &raw_topic, n))?);
    }
    if opts.wants("kcat") {
        push(&mut res, blocking(&|| measure_kcat(env, &raw_topic, n))?);
    }
    if opts.wants("peer") {
        push(&mut res, blocking(&|| measure_peer(opts, env, &raw_topic, n))?);
    }
    if opts.wants("streams") {
        push(&mut res, blocking(&|| measure_streams_peer(opts, env, &raw_topic, n))?);
    }

    // Each stage alone: validate writes a topic of its own, which profile and
    // analytics then read; the whole pipeline below starts again from events.raw.
    let pipeline_topics = env.cfg.topics.clone();
    env.cfg.topics.events_valid = Some("events.valid-alone".into());
    env.topics_and_schemas().await?;
    let downstream = opts.wants("profile") || opts.wants("analytics");
    for (run, stage, label) in [
        ("validate", Stage::Validate, "validate stage alone (Avro + rules -> Kafka)"),
        ("profile", Stage::Profile, "profile stage alone (-> PostgreSQL)"),
        ("analytics", Stage::Analytics, "ClickHouse sink alone"),
    ] {
        if !(opts.wants(run) || (run == "validate" && downstream)) {
            continue;
        }
        env.fresh(run).await?;
        let r = blocking(&|| measure_stages(opts, env, (run, &[stage]), n, None))?;
        push(&mut res, Row { name: label.into(), ..r });
    }
    env.cfg.topics = pipeline_topics;
    if opts.wants("pipeline") {
        env.fresh("pipeline").await?;
        let r = blocking(&|| measure_stages(opts, env, ("pipeline", &all), n, None))?;
        push(&mut res, Row { name: "whole pipeline (validate -> profile + ClickHouse)".into(), ..r });
    }
    if opts.latency_secs > 0 && opts.wants("latency") {
        env.fresh("latency").await?;
        env.cfg.topics = TopicNames::with_prefix(format!("{}latency.", env.cfg.topics.prefix));
        env.topics_and_schemas().await?;
        let l = latency::run(opts, env).await?;
        println!("{}", l.summary());
        res.latency = Some(l);
    }
    Ok(res)
}
