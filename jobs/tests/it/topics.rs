//! Topics as declared configuration: a stage refuses to start on topics that
//! do not exist, naming them and the command that creates them; `topics apply`
//! creates them, then the stage runs; `topics check` reports drift.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifecycle_pipeline::Topic;

use crate::common::{eventually, read_all};

fn lifecycle(prefix: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifecycle"));
    c.args(args)
        .env("LIFECYCLE_TOPICS__PREFIX", prefix)
        .env("LIFECYCLE_VALIDATE__GROUP_ID", format!("{prefix}validate"))
        .env("LIFECYCLE_VALIDATE__METRICS_ADDR", "127.0.0.1:0")
        .env_remove("LIFECYCLE_CONFIG");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_on_missing_topics_exits_naming_them_and_runs_once_they_are_applied() {
    let prefix = format!("t-topics-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let started = Instant::now();
    let out = lifecycle(&prefix, &["run", "validate"]).output().expect("run validate");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the stage must not run on missing topics");
    assert!(took < Duration::from_secs(15), "it exits within seconds ({took:?})");
    assert!(
        stderr.contains(&format!("'{prefix}events.raw'")) && stderr.contains("lifecycle topics apply"),
        "names the topic and the command: {stderr}"
    );

    let check = lifecycle(&prefix, &["topics", "check"]).output().expect("topics check");
    assert!(!check.status.success(), "check fails while topics are missing");
    assert!(String::from_utf8_lossy(&check.stdout).contains(&format!("{prefix}events.raw: missing")));
    let apply = lifecycle(&prefix, &["topics", "apply"]).output().expect("topics apply");
    assert!(apply.status.success(), "apply: {}", String::from_utf8_lossy(&apply.stderr));
    assert_eq!(String::from_utf8_lossy(&apply.stdout).matches(": created").count(), Topic::ALL.len());
    let check = lifecycle(&prefix, &["topics", "check"]).output().expect("topics check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));

    // More partitions declared: check reports the drift, apply adds them.
    let grown = |c: &mut Command| {
        c.env("LIFECYCLE_TOPICS__SETTINGS__EVENTS_DLQ__PARTITIONS", "3");
    };
    let mut check = lifecycle(&prefix, &["topics", "check"]);
    grown(&mut check);
    let drift = check.output().expect("check");
    assert!(!drift.status.success());
    assert!(
        String::from_utf8_lossy(&drift.stdout).contains("1 partitions, declared 3"),
        "{}",
        String::from_utf8_lossy(&drift.stdout)
    );
    let mut apply = lifecycle(&prefix, &["topics", "apply"]);
    grown(&mut apply);
    assert!(apply.output().expect("apply").status.success());

    // The stage now runs and validates what arrives.
    let mut stage =
        lifecycle(&prefix, &["run", "validate"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    let cfg = lifecycle_jobs::LifecycleConfig {
        topics: lifecycle_pipeline::TopicNames::with_prefix(prefix.clone()),
        ..Default::default()
    };
    let producer = lifecycle_connectors::kafka::sink::KafkaSink::new(&cfg.kafka).expect("producer");
    let mut w = lifecycle_jobs::workload::Workload::new(9, 5, &prefix, chrono::Utc::now());
    let records: Vec<_> = (0..20)
        .map(|_| {
            let e = w.next_event();
            lifecycle_connectors::kafka::sink::OutRecord {
                topic: cfg.topics.name(Topic::EventsRaw),
                key: Some(e["user_id"].as_str().expect("user").as_bytes().to_vec()),
                payload: e.to_string().into_bytes(),
                headers: vec![("content-type", b"application/json".to_vec())],
            }
        })
        .collect();
    producer.send_all(&records).await.expect("produce");
    let done = eventually(60, || read_all(&cfg, Topic::EventsValid).len() >= 20).await;
    let still_running = stage.try_wait().expect("status").is_none();
    let _ = Command::new("kill").arg(stage.id().to_string()).status();
    let _ = tokio::task::spawn_blocking(move || stage.wait()).await;
    assert!(still_running, "the stage keeps running");
    assert!(done, "the stage validated the events");
}
