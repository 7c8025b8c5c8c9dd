//! Profile stage throughput against raw consumption of the same topic, in one run.
//!
//! Needs the local stack (`lifecycle stack up`). Produces N Avro events for U users
//! to a fresh events.valid topic, then measures (1) an rdkafka consumer that reads
//! every record and does nothing, (2) the profile stage applying them all to
//! PostgreSQL. Prints events/s of each and the ratio.
//!
//!   cargo bench -p lifecycle-benches --bench profile_stage [-- EVENTS USERS]

use std::time::{Duration, Instant};

use lifecycle_jobs::LifecycleConfig;
use lifecycle_jobs::stages::profile::{self, ProfileHandle};
use lifecycle_pipeline::TopicNames;
use tokio::sync::watch;

fn arg(i: usize, default: usize) -> usize {
    std::env::args().filter(|a| !a.starts_with("--")).nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
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
    let t = Instant::now();
    let (_, bytes) = lifecycle_benches::produce_valid(&cfg, reg.valid_envelope_id, (events, users, 3)).await;
    println!("produced {events} events for {users} users ({bytes} bytes avg) in {:.2?}", t.elapsed());

    let raw = lifecycle_benches::raw_consume(&cfg, events).await;

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
