//! Three Apache Kafka 4.4 brokers on 127.0.0.1 (KRaft, static quorum, topics at
//! replication factor 3 with `min.insync.replicas` 2) under a steady event
//! stream: one broker killed with -9 and restarted later; validate and profile
//! running as two processes each, then a third added, then one stopped.
//! Afterwards profiles equal a recount of the input, ClickHouse holds every
//! valid event once, `events.valid` (read_committed) holds each valid event
//! exactly once and `events.dlq` each broken record exactly once. The stall
//! each fault caused is printed, not asserted (speed is for benches/).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lifecycle_connectors::clickhouse::client;
use lifecycle_connectors::kafka::admin::TopicState;
use lifecycle_jobs::LifecycleConfig;
use lifecycle_jobs::stack::KafkaCluster;
use lifecycle_pipeline::{Topic, TopicNames, wire};

use crate::common::{drop_clickhouse_db, own_analytics, read_all, schemas};
use crate::procs::{Sampler, Stages, stalls_by_fault, steady_stream};
use crate::profile_stage::{applied_offsets, check_profiles, events_applied};

/// Client port of the first broker; the nodes take the six ports from here.
const FIRST_PORT: u16 = 19092;
/// Events per second of the steady stream, and for how long.
const RATE: usize = 1_000;
const SECONDS: usize = 80;
/// One record in this many is broken (and must reach events.dlq once).
const BROKEN_EVERY: usize = 50;

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
    let mut stages = Stages::new(config, dir.clone());
    for (stage, instance) in
        [("validate", "v0"), ("validate", "v1"), ("profile", "p0"), ("profile", "p1"), ("analytics", "a0")]
    {
        stages.start(stage, instance);
    }

    // The steady stream: RATE records a second for SECONDS seconds, 1 in BROKEN_EVERY broken.
    let total = RATE * SECONDS;
    let broken = total / BROKEN_EVERY;
    let valid = total - broken;
    let producer = steady_stream(&cfg, reg.raw_envelope_id, 800, RATE, SECONDS, BROKEN_EVERY);

    // A sampler of end-to-end progress, read from the stores (not from Kafka, which is being faulted).
    let pool = lifecycle_connectors::postgres::connect(&cfg.postgres).await.expect("db");
    let sampler = {
        let (pool, group, ch) = (pool.clone(), cfg.profile.group_id.clone(), client(&cfg.clickhouse));
        Sampler::start(move || {
            let (pool, group, ch) = (pool.clone(), group.clone(), ch.clone());
            async move {
                let applied = applied_offsets(&pool, &group).await;
                let rows: u64 = ch.query("SELECT count() FROM events").fetch_one().await.unwrap_or(0);
                Some(vec![applied as u64, rows])
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
        applied = events_applied(&pool, &cfg.topics.prefix).await.expect("applied");
        rows = ch.query("SELECT uniqExact(event_id) FROM events").fetch_one().await.unwrap_or(0);
        if applied >= valid as u64 && rows >= valid as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained = Instant::now();
    let samples = sampler.finish().await;
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
    for (i, stall) in stalls_by_fault(&samples, 2, &faults.iter().map(|f| f.1).collect::<Vec<_>>()) {
        let what = i.map_or("start-up (groups forming) and steady stream, before any fault", |i| faults[i].0);
        eprintln!(
            "three-broker test: {what}: longest stall {:.1} s (profile stage), {:.1} s (ClickHouse sink)",
            stall[0].as_secs_f64(),
            stall[1].as_secs_f64(),
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
