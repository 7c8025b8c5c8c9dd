//! Three Apache Kafka 4.4 brokers on 127.0.0.1 (KRaft, static quorum, topics at
//! replication factor 3 with `min.insync.replicas` 2) under a steady event
//! stream: one broker killed with -9 and restarted later; validate and profile
//! running as two processes each, then a third added, then one stopped.
//! Afterwards profiles equal a recount of the input, ClickHouse holds every
//! valid event once, `events.valid` (read_committed) holds each valid event
//! exactly once and `events.dlq` each broken record exactly once. The stall
//! each fault caused is printed, not asserted (speed is for benches/).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifecycle_connectors::clickhouse::client;
use lifecycle_connectors::kafka::admin::TopicState;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_jobs::LifecycleConfig;
use lifecycle_jobs::stack::KafkaCluster;
use lifecycle_jobs::workload::{AvroEncoder, Broken, Workload};
use lifecycle_pipeline::{Topic, TopicNames, wire};

use crate::common::{drop_clickhouse_db, own_analytics, read_all, schemas};
use crate::profile_stage::{applied_offsets, check_profiles};

/// Client port of the first broker; the nodes take the six ports from here.
const FIRST_PORT: u16 = 19092;
/// Events per second of the steady stream, and for how long.
const RATE: usize = 1_000;
const SECONDS: usize = 80;
/// One record in this many is broken (and must reach events.dlq once).
const BROKEN_EVERY: usize = 50;

/// Stage processes, stopped with SIGTERM (or killed when the test fails).
struct Stages {
    config: PathBuf,
    dir: PathBuf,
    running: Vec<(String, Child)>,
}

impl Stages {
    fn start(&mut self, stage: &str, instance: &str) {
        let section = stage.to_uppercase();
        let mut c = Command::new(env!("CARGO_BIN_EXE_lifecycle"));
        c.args(["run", stage])
            .env("LIFECYCLE_CONFIG", &self.config)
            .env(format!("LIFECYCLE_{section}__METRICS_ADDR"), "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("{instance}.log"))).expect("log"));
        if stage == "validate" {
            c.env("LIFECYCLE_VALIDATE__INSTANCE_ID", instance);
        }
        self.running.push((instance.to_owned(), c.spawn().expect("spawn a stage")));
    }

    /// SIGTERM, then waits for the instance to finish its batch and exit.
    fn stop(&mut self, instance: &str) {
        let at = self.running.iter().position(|(n, _)| n == instance).expect("running");
        let (_, mut child) = self.running.remove(at);
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let status = child.wait().expect("reap");
        assert!(status.success(), "{instance} exited cleanly after SIGTERM ({status}); log in {}", self.dir.display());
    }

    /// Any instance that exited by itself: a stage must ride out a broker loss.
    fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, child) in &mut self.running {
            if child.try_wait().ok().flatten().is_some() {
                out.push(name.clone());
            }
        }
        out
    }
}

impl Drop for Stages {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Progress seen by the sampler.
type Samples = Arc<Mutex<Vec<Sample>>>;

/// One sample of progress: (when, profile offsets applied, ClickHouse rows).
type Sample = (Instant, i64, u64);

/// Every stretch during which the figure `f` stood still and then moved again:
/// (when it last moved, how long it stood). A figure that never moves again
/// (the work is done) has no stall at its end.
fn stalls(samples: &[Sample], f: impl Fn(&Sample) -> u64) -> Vec<(Instant, Duration)> {
    let mut out = Vec::new();
    let mut last: Option<(Instant, u64)> = None;
    for s in samples {
        let v = f(s);
        match last {
            Some((_, prev)) if v == prev => {}
            Some((t, _)) => {
                out.push((t, s.0 - t));
                last = Some((s.0, v));
            }
            None => last = Some((s.0, v)),
        }
    }
    out
}

/// The longest stall that began after fault `i` (or, for `None`, before the
/// first fault) and before the next one; a stall that began within `slack`
/// before a fault (the sampling interval) counts as that fault's.
fn longest_after(stalls: &[(Instant, Duration)], faults: &[Instant], i: Option<usize>, slack: Duration) -> Duration {
    let owner = |start: Instant| faults.iter().rposition(|&f| f <= start + slack);
    stalls.iter().filter(|(start, _)| owner(*start) == i).map(|(_, d)| *d).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_one_killed_and_stages_scaled_out_and_in_lose_and_double_nothing() {
    let stack = LifecycleConfig::default().stack;
    let mut cluster = KafkaCluster::start(&stack, &stack.data_dir.join("kafka-cluster"), FIRST_PORT, 3, 512)
        .await
        .expect("three Kafka brokers");

    let unique = uuid::Uuid::new_v4().simple().to_string();
    let mut cfg = LifecycleConfig::default();
    cfg.kafka.bootstrap_servers = cluster.bootstrap_servers();
    cfg.topics = TopicNames {
        replication_factor: 3,
        min_insync_replicas: Some(2),
        ..TopicNames::with_prefix(format!("t-rf3-{}.", &unique[..8]))
    };
    cfg.validate.group_id = format!("t-rf3-{}", &unique[..8]);
    cfg.validate.max_batch_records = 1000;
    cfg.profile.group_id = format!("{}-profile", cfg.validate.group_id);
    cfg.profile.max_batch_records = 1000;
    own_analytics(&mut cfg);
    cfg.analytics.batch_linger_ms = 300;
    let reg = lifecycle_jobs::setup::topics_and_schemas(&cfg).await.expect("topics on the cluster, schemas");
    let check = lifecycle_jobs::setup::topics(&cfg, false).await.expect("check topics");
    assert!(
        check.iter().all(|r| r.state == TopicState::Unchanged),
        "RF 3, min.insync.replicas 2 as declared: {check:?}"
    );

    let dir = std::env::temp_dir().join(format!("lifecycle-{}", cfg.validate.group_id));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("lifecycle.toml");
    std::fs::write(&config, toml::to_string(&cfg).expect("toml")).expect("config");
    let mut stages = Stages { config, dir: dir.clone(), running: Vec::new() };
    for (stage, instance) in
        [("validate", "v0"), ("validate", "v1"), ("profile", "p0"), ("profile", "p1"), ("analytics", "a0")]
    {
        stages.start(stage, instance);
    }

    // The steady stream: RATE records a second for SECONDS seconds, 1 in BROKEN_EVERY broken.
    let total = RATE * SECONDS;
    let broken = total / BROKEN_EVERY;
    let valid = total - broken;
    let producer = {
        let (cfg, prefix, schema_id) = (cfg.clone(), cfg.topics.prefix.clone(), reg.raw_envelope_id);
        tokio::spawn(async move {
            let (envelope, validator) = schemas();
            let enc = AvroEncoder { validator: &validator, envelope: &envelope, schema_id };
            let mut w = Workload::new(31, 800, &prefix, chrono::Utc::now());
            let topic = cfg.topics.name(Topic::EventsRaw);
            let sink = KafkaSink::new(&cfg.kafka).expect("producer");
            let mut events = Vec::with_capacity(valid);
            let start = tokio::time::Instant::now();
            let tick = RATE / 10;
            for step in 0..total / tick {
                let mut records = Vec::with_capacity(tick);
                for i in step * tick..(step + 1) * tick {
                    if i % BROKEN_EVERY == BROKEN_EVERY - 1 {
                        let kind = Broken::ALL[(i / BROKEN_EVERY) % Broken::ALL.len()];
                        records.push(OutRecord {
                            topic: topic.clone(),
                            key: Some(b"broken".to_vec()),
                            payload: w.broken(kind, &enc),
                            headers: vec![],
                        });
                    } else {
                        let e = w.next_event();
                        let key = e["user_id"].as_str().expect("user").as_bytes().to_vec();
                        records.push(OutRecord {
                            topic: topic.clone(),
                            key: Some(key),
                            payload: enc.encode(&e).expect("encode"),
                            headers: vec![],
                        });
                        events.push(e);
                    }
                }
                sink.send_all(&records).await.expect("every record acknowledged by two in-sync replicas");
                tokio::time::sleep_until(start + Duration::from_millis(100 * (step as u64 + 1))).await;
            }
            events
        })
    };

    // A sampler of end-to-end progress, read from the stores (not from Kafka, which is being faulted).
    let pool = lifecycle_connectors::postgres::connect(&cfg.postgres).await.expect("db");
    let samples: Samples = Arc::default();
    let (stop_sampling, mut sampling) = tokio::sync::watch::channel(false);
    let sampler = {
        let (pool, samples, cfg) = (pool.clone(), samples.clone(), cfg.clone());
        tokio::spawn(async move {
            let ch = client(&cfg.clickhouse);
            loop {
                let applied = applied_offsets(&pool, &cfg.profile.group_id).await;
                let rows: u64 = ch.query("SELECT count() FROM events").fetch_one().await.unwrap_or(0);
                samples.lock().expect("samples").push((Instant::now(), applied, rows));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = sampling.changed() => return,
                }
            }
        })
    };

    // The faults, on a schedule measured from the start of the stream.
    let t0 = Instant::now();
    let at = |secs: u64| tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + Duration::from_secs(secs)));
    let mut faults: Vec<(&str, Instant)> = Vec::new();
    at(15).await;
    faults.push(("broker 1 killed (-9)", Instant::now()));
    cluster.kill(0);
    at(37).await;
    faults.push(("broker 1 restarted", Instant::now()));
    cluster.restart(0).await.expect("broker 1 back on its data");
    eprintln!(
        "three-broker test: broker 1 serving again {:.1} s after its restart",
        faults[1].1.elapsed().as_secs_f64()
    );
    at(62).await;
    faults.push(("third validate and profile instances added", Instant::now()));
    stages.start("validate", "v2");
    stages.start("profile", "p2");
    at(70).await;
    faults.push(("one validate and one profile instance stopped (SIGTERM)", Instant::now()));
    for instance in ["v0", "p0"] {
        let t = Instant::now();
        stages.stop(instance);
        eprintln!("three-broker test: {instance} stopped {:.1} s after SIGTERM", t.elapsed().as_secs_f64());
    }
    assert_eq!(stages.exited(), Vec::<String>::new(), "no stage gave up; logs in {}", dir.display());

    let events = producer.await.expect("producer");
    assert_eq!(events.len(), valid);
    let input_done = Instant::now();

    // Wait until every valid event is in a profile and in ClickHouse.
    let ch = client(&cfg.clickhouse);
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut applied, mut rows) = (0u64, 0u64);
    while Instant::now() < deadline {
        applied = sqlx::query_scalar::<_, Option<i64>>(
            "SELECT sum((profile->>'events_applied')::bigint)::bigint FROM users WHERE starts_with(external_id, $1)",
        )
        .bind(&cfg.topics.prefix)
        .fetch_one(&pool)
        .await
        .expect("applied")
        .unwrap_or(0) as u64;
        rows = ch.query("SELECT uniqExact(event_id) FROM events").fetch_one().await.unwrap_or(0);
        if applied >= valid as u64 && rows >= valid as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained = Instant::now();
    stop_sampling.send(true).expect("stop sampling");
    sampler.await.expect("sampler");
    assert_eq!(stages.exited(), Vec::<String>::new(), "no stage gave up; logs in {}", dir.display());
    for instance in ["v1", "v2", "p1", "p2", "a0"] {
        stages.stop(instance);
    }
    assert_eq!(
        (applied, rows),
        (valid as u64, valid as u64),
        "every valid event in a profile and in ClickHouse; logs in {}",
        dir.display()
    );

    // What each fault cost: the longest stall of each figure that began after it.
    let samples = samples.lock().expect("samples").clone();
    let profile = stalls(&samples, |s| s.1 as u64);
    let sink = stalls(&samples, |s| s.2);
    let times: Vec<Instant> = faults.iter().map(|f| f.1).collect();
    // A batch commits about every second: a stall that began up to 1.5 s
    // before a fault is that fault's.
    let slack = Duration::from_millis(1500);
    let labels = std::iter::once((None, "start-up (groups forming) and steady stream, before any fault"))
        .chain(faults.iter().enumerate().map(|(i, f)| (Some(i), f.0)));
    for (i, what) in labels {
        eprintln!(
            "three-broker test: {what}: longest stall {:.1} s (profile stage), {:.1} s (ClickHouse sink)",
            longest_after(&profile, &times, i, slack).as_secs_f64(),
            longest_after(&sink, &times, i, slack).as_secs_f64(),
        );
    }
    eprintln!(
        "three-broker test: {total} records ({valid} valid, {broken} broken) over {SECONDS} s; drained {:.1} s after the last was produced",
        (drained - input_done).as_secs_f64()
    );

    // events.valid, read_committed: each valid event exactly once, from our input.
    let (envelope, _) = schemas();
    let produced: HashMap<&str, &str> =
        events.iter().map(|e| (e["event_id"].as_str().expect("id"), e["user_id"].as_str().expect("user"))).collect();
    let out = read_all(&cfg, Topic::EventsValid);
    let mut ids = HashSet::new();
    for (_, _, key, payload) in &out {
        let Ok(wire::Encoding::Avro { body, .. }) = wire::sniff(payload) else { panic!("valid records are Avro") };
        let obj = envelope.decode(envelope.schema(), body).expect("decodes with the envelope");
        let id = obj["event_id"].as_str().expect("event_id").to_owned();
        assert_eq!(produced.get(id.as_str()).copied(), obj["user_id"].as_str(), "an event we produced");
        assert_eq!(key.as_deref(), obj["user_id"].as_str().map(str::as_bytes), "keyed by user");
        ids.insert(id);
    }
    assert_eq!((out.len(), ids.len()), (valid, valid), "events.valid holds each valid event exactly once");
    assert_eq!(read_all(&cfg, Topic::EventsDlq).len(), broken, "events.dlq holds each broken record exactly once");

    check_profiles(&cfg, &pool, &events).await;
    let (distinct, all): (u64, u64) =
        ch.query("SELECT uniqExact(event_id), count() FROM events FINAL").fetch_one().await.expect("ClickHouse counts");
    assert_eq!((distinct, all), (valid as u64, valid as u64), "ClickHouse holds each valid event once");
    drop_clickhouse_db(&cfg).await;
    drop(cluster);
    if std::env::var_os("KEEP_CLUSTER").is_none() {
        let _ = std::fs::remove_dir_all(stack.data_dir.join("kafka-cluster"));
    }
}

#[test]
fn stalls_are_attributed_to_the_fault_before_them() {
    let t = Instant::now();
    let at = |ms: u64| t + Duration::from_millis(ms);
    let s = |ms: u64, v: u64| (at(ms), 0i64, v);
    let samples =
        [s(0, 1), s(250, 2), s(500, 2), s(750, 2), s(1000, 3), s(1250, 4), s(1500, 4), s(3000, 5), s(3250, 5)];
    let found = stalls(&samples, |s| s.2);
    assert_eq!(
        found,
        vec![
            (at(0), Duration::from_millis(250)),
            (at(250), Duration::from_millis(750)),
            (at(1000), Duration::from_millis(250)),
            (at(1250), Duration::from_millis(1750)),
        ],
        "a figure that stays still at the end (done) is not a stall"
    );
    let faults = [at(300), at(1400)];
    let slack = Duration::from_millis(200);
    assert_eq!(longest_after(&found, &faults, None, slack), Duration::from_millis(250));
    assert_eq!(longest_after(&found, &faults, Some(0), slack), Duration::from_millis(750));
    assert_eq!(longest_after(&found, &faults, Some(1), slack), Duration::from_millis(1750), "began within the slack");
}
