//! Profile stage throughput against raw consumption of the same topic, in one run.
//!
//! Needs the local stack (`lifecycle stack up`). Produces N Avro events for U users
//! to a fresh events.valid topic, then measures (1) an rdkafka consumer that reads
//! every record and does nothing, (2) the profile stage applying them all to
//! PostgreSQL. Prints events/s of each and the ratio.
//!
//!   cargo bench -p lifecycle-benches --bench profile_stage [-- EVENTS USERS]

use std::time::{Duration, Instant};

use chrono::Utc;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_jobs::LifecycleConfig;
use lifecycle_jobs::stages::profile::{self, ProfileHandle};
use lifecycle_jobs::workload::{AvroEncoder, Workload};
use lifecycle_pipeline::{Topic, TopicNames};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

fn arg(i: usize, default: usize) -> usize {
    std::env::args().filter(|a| !a.starts_with("--")).nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn raw_consume(cfg: &LifecycleConfig, topic: &str, n: usize) -> Duration {
    let c: BaseConsumer =
        cfg.kafka.consumer(&format!("bench-raw-{}", uuid::Uuid::new_v4())).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..i32::from(Topic::EventsValid.default_partitions()) {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let start = Instant::now();
    let mut seen = 0;
    while seen < n {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            seen += 1;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "raw consume stalled at {seen}/{n}");
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let (events, users) = (arg(1, 100_000), arg(2, 5_000));
    let mut cfg = LifecycleConfig::default();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    cfg.topics = TopicNames::with_prefix(format!("bench-{tag}."));
    cfg.profile.group_id = format!("bench-{tag}-profile");
    cfg.profile.metrics_addr = None;
    let reg = lifecycle_jobs::setup::topics_and_schemas(&cfg).await.expect("stack up? (lifecycle stack up)");
    let files = lifecycle_schemas::SchemaFiles::load(&cfg.schemas_dir()).expect("schemas");
    let envelope = files.envelope().expect("envelope");
    let validator =
        lifecycle_pipeline::Validator::new(std::sync::Arc::new(files.catalog().expect("catalog")), Default::default());
    let enc = AvroEncoder { validator: &validator, envelope: &envelope, schema_id: reg.valid_envelope_id };
    let mut w = Workload::new(3, u32::try_from(users).unwrap_or(u32::MAX), &cfg.topics.prefix, Utc::now());
    let topic = cfg.topics.name(Topic::EventsValid);
    let sink = KafkaSink::new(&cfg.kafka).expect("producer");
    let t = Instant::now();
    let mut bytes = 0;
    for _ in 0..events.div_ceil(5000) {
        let chunk: Vec<OutRecord> = (0..5000.min(events - w.count() as usize))
            .map(|_| {
                let e = w.next_event();
                let payload = enc.encode(&e).expect("encode");
                bytes += payload.len();
                OutRecord {
                    topic: topic.clone(),
                    key: Some(e["user_id"].as_str().unwrap_or_default().as_bytes().to_vec()),
                    payload,
                    headers: vec![],
                }
            })
            .collect();
        sink.send_all(&chunk).await.expect("produce");
    }
    println!("produced {events} events for {users} users ({} bytes avg) in {:.2?}", bytes / events.max(1), t.elapsed());

    let raw = tokio::task::spawn_blocking({
        let (cfg, topic) = (cfg.clone(), topic.clone());
        move || raw_consume(&cfg, &topic, events)
    })
    .await
    .expect("raw consume");

    let handle = ProfileHandle::new().expect("metrics");
    let (stop, rx) = watch::channel(false);
    let stage = {
        let (cfg, handle) = (cfg.clone(), handle.clone());
        tokio::spawn(async move { profile::run(&cfg, handle, rx).await })
    };
    let t = Instant::now();
    while handle.metrics.events_applied.get() < events as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(t.elapsed() < Duration::from_secs(900), "profile stage stalled");
    }
    let staged = t.elapsed();
    stop.send(true).expect("stop");
    stage.await.expect("join").expect("stage");

    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!(
        "machine: {} cores; broker, PostgreSQL and the measured client share them",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<44} {:>12} {:>10}", "measurement", "events/s", "seconds");
    println!("{:<44} {:>12.0} {:>10.2}", "raw consume (rdkafka, no processing)", rate(raw), raw.as_secs_f64());
    println!(
        "{:<44} {:>12.0} {:>10.2}",
        "profile stage (decode, apply, PostgreSQL)",
        rate(staged),
        staged.as_secs_f64()
    );
    println!("ratio profile / raw consume: {:.2}", raw.as_secs_f64() / staged.as_secs_f64());
    println!(
        "batches: {}, mean flush {:.1} ms",
        handle.metrics.flush_seconds.get_sample_count(),
        1000.0 * handle.metrics.flush_seconds.get_sample_sum()
            / handle.metrics.flush_seconds.get_sample_count().max(1) as f64
    );
}
