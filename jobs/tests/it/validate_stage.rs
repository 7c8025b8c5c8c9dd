//! The validation stage on the real broker and registry.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use lifecycle_pipeline::dlq::DlqRecord;
use lifecycle_pipeline::{ReasonCode, Topic, wire};

use crate::common::{count, eventually, produce_mixed, read_all, run_stage_until, schemas, test_config};
use lifecycle_jobs::demo;

/// Checks the outputs: exactly the valid event ids on events.valid (deduplicated
/// by event_id), exactly the broken records on events.dlq (deduplicated by
/// source offset) with the right reason; returns the raw counts.
fn check_outputs(
    cfg: &lifecycle_jobs::LifecycleConfig,
    produced: &crate::common::Produced,
    allow_duplicates: bool,
) -> (usize, usize) {
    let (envelope, _) = schemas();
    let valid = read_all(cfg, Topic::EventsValid);
    let mut ids = HashSet::new();
    let mut partition_of_user: HashMap<String, i32> = HashMap::new();
    for (partition, _, key, payload) in &valid {
        let wire::Encoding::Avro { body, .. } = wire::sniff(payload).expect("framed") else {
            panic!("valid records are Avro")
        };
        let obj = envelope.decode(envelope.schema(), body).expect("valid record decodes with the envelope");
        let id = obj["event_id"].as_str().expect("event_id").to_owned();
        let user = obj["user_id"].as_str().expect("user_id").to_owned();
        assert_eq!(key.as_deref(), Some(user.as_bytes()), "keyed by user_id");
        assert_eq!(*partition_of_user.entry(user.clone()).or_insert(*partition), *partition, "one partition per user");
        assert_eq!(produced.valid.get(&id), Some(&user), "an event we produced");
        ids.insert(id);
    }
    assert_eq!(ids.len(), produced.valid.len(), "every valid event arrived");
    let dlq = read_all(cfg, Topic::EventsDlq);
    let mut sources = HashSet::new();
    let mut by_reason: HashMap<ReasonCode, HashSet<i64>> = HashMap::new();
    for (_, _, _, payload) in &dlq {
        let rec: DlqRecord = serde_json::from_slice(payload).expect("DLQ record is JSON");
        assert!(!rec.errors.is_empty() && !rec.message.is_empty());
        assert!(!rec.original().expect("base64").is_empty(), "original bytes kept");
        assert_eq!(rec.source.topic, cfg.topics.name(Topic::EventsRaw));
        sources.insert((rec.source.partition, rec.source.offset));
        by_reason.entry(rec.reason).or_default().insert(rec.source.offset * 16 + i64::from(rec.source.partition));
    }
    let broken_total: usize = produced.broken.iter().map(|(_, n)| n).sum();
    assert_eq!(sources.len(), broken_total, "every broken record dead-lettered once (by source offset)");
    for (kind, n) in &produced.broken {
        assert_eq!(by_reason.get(&kind.expected_reason()).map_or(0, HashSet::len), *n, "{kind:?}");
    }
    if !allow_duplicates {
        assert_eq!(valid.len(), produced.valid.len(), "no duplicates without a crash");
        assert_eq!(dlq.len(), broken_total);
    }
    (valid.len(), dlq.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_events_split_exactly() {
    let (cfg, reg) = test_config("split").await;
    let produced = produce_mixed(&cfg, &reg, 9_000, 200, 0).await;
    assert_eq!(produced.total, 10_000);
    let handle = run_stage_until(&cfg, 10_000, 120).await;
    let (cin, cvalid, cdlq) = handle.counts();
    assert_eq!((cin, cvalid, cdlq), (10_000, 9_000, 1_000), "in == valid + dlq");
    assert_eq!(check_outputs(&cfg, &produced, false), (9_000, 1_000));
    let m = &handle.metrics;
    for kind in lifecycle_jobs::workload::Broken::ALL {
        assert_eq!(m.dlq_reasons.with_label_values(&[kind.expected_reason().as_str()]).get(), 200);
    }
}

fn spawn_stage(config_path: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    let out = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_lifecycle"))
        .args(["run", "validate"])
        .env("LIFECYCLE_CONFIG", config_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("spawn lifecycle run validate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing() {
    let (mut cfg, reg) = test_config("kill9").await;
    cfg.validate.max_batch_records = 500;
    let dir = std::env::temp_dir().join(format!("lifecycle-{}", cfg.validate.group_id));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let config_path = dir.join("lifecycle.toml");
    std::fs::write(&config_path, toml::to_string(&cfg).expect("toml")).expect("write config");
    // Half the stream before the kill, half after: the kill is always mid-stream.
    let first_half = produce_mixed(&cfg, &reg, 4_500, 100, 1).await;

    let mut first = spawn_stage(&config_path, &dir.join("first.log"));
    let started = eventually(60, || count(&cfg, Topic::EventsValid) + count(&cfg, Topic::EventsDlq) >= 2_000).await;
    first.kill().expect("kill -9"); // SIGKILL: no shutdown path runs
    first.wait().expect("reap");
    assert!(started, "stage made progress before the kill; log in {}", dir.display());
    let before_restart = count(&cfg, Topic::EventsValid) + count(&cfg, Topic::EventsDlq);
    let produced = first_half.merge(produce_mixed(&cfg, &reg, 4_500, 100, 2).await);
    assert_eq!(produced.total, 10_000);

    let mut second = spawn_stage(&config_path, &dir.join("second.log"));
    let done = eventually(120, || {
        let (_, ids, dlq, _) = committed_outputs(&cfg);
        ids >= 9_000 && dlq >= 1_000
    })
    .await;
    let _ = Command::new("kill").arg(second.id().to_string()).status();
    let _ = tokio::task::spawn_blocking(move || second.wait()).await;
    assert!(done, "all outputs after restart; logs in {}", dir.display());
    let (valid, dlq) = check_outputs(&cfg, &produced, true);
    // At-least-once: the batch in flight at the kill may appear twice; event_id deduplicates.
    assert!(valid >= 9_000 && dlq >= 1_000, "{valid} {dlq}");
    eprintln!(
        "kill -9 test: {before_restart} outputs before restart; duplicates after: {} valid, {} dlq",
        valid - 9_000,
        dlq - 1_000
    );
}

/// What a `read_committed` reader finds on events.valid and events.dlq:
/// records, distinct event ids on events.valid, distinct source offsets on events.dlq.
fn committed_outputs(cfg: &lifecycle_jobs::LifecycleConfig) -> (usize, usize, usize, usize) {
    let (envelope, _) = schemas();
    let valid = read_all(cfg, Topic::EventsValid);
    let ids: HashSet<String> = valid
        .iter()
        .filter_map(|(_, _, _, p)| match wire::sniff(p) {
            Ok(wire::Encoding::Avro { body, .. }) => envelope.decode(envelope.schema(), body).ok(),
            _ => None,
        })
        .filter_map(|o| o["event_id"].as_str().map(str::to_owned))
        .collect();
    let dlq = read_all(cfg, Topic::EventsDlq);
    let sources: HashSet<(i32, i64)> = dlq
        .iter()
        .filter_map(|(_, _, _, p)| serde_json::from_slice::<DlqRecord>(p).ok())
        .map(|r| (r.source.partition, r.source.offset))
        .collect();
    (valid.len(), ids.len(), dlq.len(), sources.len())
}

/// Records on events.valid including those of aborted transactions (what a
/// `read_uncommitted` reader would see): shows the kill left work behind.
fn uncommitted_valid(cfg: &lifecycle_jobs::LifecycleConfig) -> usize {
    let mut c = cfg.clone();
    c.kafka.properties.insert("isolation.level".into(), "read_uncommitted".into());
    read_all(&c, Topic::EventsValid).len()
}

/// 100,000 events (10 % broken) through `instances` validate processes in one
/// group; the first is killed (-9) mid-stream, and with one instance a new one
/// is started. A `read_committed` reader then finds every input exactly once
/// across events.valid and events.dlq.
async fn exactly_once_through_kill_9(name: &str, instances: usize) {
    let (mut cfg, reg) = test_config(name).await;
    cfg.validate.max_batch_records = 500;
    let dir = std::env::temp_dir().join(format!("lifecycle-{}", cfg.validate.group_id));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let config_path = dir.join("lifecycle.toml");
    std::fs::write(&config_path, toml::to_string(&cfg).expect("toml")).expect("write config");
    let produced = produce_mixed(&cfg, &reg, 90_000, 2_000, 3).await;
    assert_eq!(produced.total, 100_000);
    let mut procs: Vec<std::process::Child> =
        (0..instances).map(|i| spawn_stage(&config_path, &dir.join(format!("instance-{i}.log")))).collect();
    let progressed = eventually(120, || count(&cfg, Topic::EventsValid) >= 30_000).await;
    let mut victim = procs.remove(0);
    victim.kill().expect("kill -9");
    victim.wait().expect("reap");
    assert!(progressed, "progress before the kill; logs in {}", dir.display());
    if procs.is_empty() {
        procs.push(spawn_stage(&config_path, &dir.join("restarted.log")));
    }
    let started = std::time::Instant::now();
    let mut last = (0, 0, 0, 0);
    while started.elapsed() < std::time::Duration::from_secs(180) {
        last = committed_outputs(&cfg);
        if last.1 >= 90_000 && last.3 >= 10_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    let recovered = started.elapsed();
    for mut p in procs {
        let _ = Command::new("kill").arg(p.id().to_string()).status();
        let _ = tokio::task::spawn_blocking(move || p.wait()).await;
    }
    let uncommitted = uncommitted_valid(&cfg);
    eprintln!(
        "exactly-once ({instances} instance(s), one killed): {} valid and {} dlq records committed, \
         {uncommitted} records on events.valid including aborted ones, caught up {recovered:?} after the kill",
        last.0, last.2
    );
    assert_eq!(
        last,
        (90_000, 90_000, 10_000, 10_000),
        "read_committed sees each input exactly once; logs in {}",
        dir.display()
    );
    check_outputs(&cfg, &produced, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_only_instance_then_restart_is_exactly_once() {
    exactly_once_through_kill_9("eos1", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_of_two_instances_is_exactly_once() {
    exactly_once_through_kill_9("eos2", 2).await;
}

/// Debian's kcat (librdkafka 2.0) reads the stage's outputs: the broker speaks
/// the protocol third-party clients expect, transactions included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_reads_events_valid_and_events_dlq() {
    let (cfg, reg) = test_config("kcat").await;
    let produced = produce_mixed(&cfg, &reg, 900, 20, 4).await;
    run_stage_until(&cfg, produced.total as u64, 120).await;
    for (topic, want) in [(Topic::EventsValid, 900), (Topic::EventsDlq, 100)] {
        let out = Command::new("kcat")
            .args(["-C", "-e", "-q", "-b", &cfg.kafka.bootstrap_servers, "-t", &cfg.topics.name(topic)])
            .args(["-X", "isolation.level=read_committed", "-f", "%k\t%h\n"])
            .output()
            .expect("kcat is installed by `lifecycle stack up`");
        assert!(out.status.success(), "kcat: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), want, "{topic:?} through kcat");
        let header = if topic == Topic::EventsValid { "event_type=" } else { "reason=" };
        assert!(lines.iter().all(|l| l.contains(header)), "{topic:?} records carry {header}: {:?}", lines.first());
    }
}

/// A member joins while another is gathering a batch: the rebalance is served
/// inside that batch's reads. The batch keeps only records the first member
/// still owns, none twice (librdkafka's default eager protocol hands every
/// partition back and reads it again from the committed offset), so the two
/// members together hold every record exactly once. Before this, the batch
/// kept the records of partitions the newcomer took over, and its transaction
/// committed their offsets under the new generation: events.valid got them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_in_the_middle_of_a_batch_leaves_no_record_in_two_batches() {
    use lifecycle_connectors::kafka::source::BatchSource;
    use std::sync::Arc;
    use std::time::Duration;

    let (cfg, reg) = test_config("midbatch").await;
    let produced = produce_mixed(&cfg, &reg, 3_000, 0, 1).await;
    let raw = cfg.topics.name(Topic::EventsRaw);
    let partitions = demo::high_watermarks(&cfg, &raw).expect("watermarks");
    assert!(partitions.len() >= 2, "events.raw has partitions to share");
    let group = format!("{}-midbatch", cfg.validate.group_id);

    let first = Arc::new(BatchSource::subscribe(&cfg.kafka, &group, &[&raw]).expect("first member"));
    let gathering = {
        let first = first.clone();
        // A linger long enough for the second member's join to land inside it.
        tokio::spawn(async move { first.next_batch(1_000_000, Duration::from_secs(15), Duration::from_secs(30)).await })
    };
    assert!(
        eventually(30, || first.assigned_partitions().unwrap_or(0) == partitions.len()).await,
        "the first member holds every partition"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = BatchSource::subscribe(&cfg.kafka, &group, &[&raw]).expect("second member");
    let mut theirs = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < until {
        theirs
            .extend(second.next_batch(10_000, Duration::from_millis(200), Duration::from_secs(1)).await.expect("read"));
    }
    let mine = gathering.await.expect("join").expect("batch");

    let owned: HashSet<i32> = first.lag().expect("assignment").into_iter().map(|(_, partition, _)| partition).collect();
    assert!(!owned.is_empty() && owned.len() < partitions.len(), "the partitions were shared: {owned:?}");
    assert!(mine.iter().all(|r| owned.contains(&r.partition)), "the batch holds only partitions its member owns");
    let mut seen = HashSet::new();
    for r in mine.iter().chain(&theirs) {
        assert!(seen.insert((r.partition, r.offset)), "record {}@{} read by both or twice", r.partition, r.offset);
    }
    assert_eq!(seen.len(), produced.total, "every record once across the two members");
}

/// Hostile records of 17 kinds (truncated and bit-flipped Avro, wrong schema
/// ids, Avro lengths of 2^62, invalid UTF-8, JSON nested 100,000 deep, 900 KB
/// strings, 100 KB keys, NUL, 1e400, lone surrogates, thousands of errors in
/// one event) through the running stage: it never stops, and each record ends
/// exactly once on events.valid or, with a reason, on events.dlq.
/// (`lifecycle-bench hostile` runs the same with 100,000 and more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_each_end_once_valid_or_dead_lettered_with_a_reason() {
    let (mut cfg, reg) = test_config("hostile").await;
    cfg.validate.max_batch_records = 500;
    let n = 17 * 200;
    let report = lifecycle_jobs::hostile::run(&cfg, reg.raw_envelope_id, n, 7, Duration::from_secs(240))
        .await
        .expect("hostile run");
    println!("{report}");
    assert!(report.problems.is_empty(), "{report}");
    assert_eq!(report.valid + report.dlq, n, "{report}");
    assert_eq!(report.stage_counts, (n as u64, report.valid as u64, report.dlq as u64), "{report}");
    use lifecycle_jobs::hostile::Kind;
    assert_eq!(report.kinds[&Kind::Valid].valid, 200, "{report}");
    for kind in [Kind::HugeAvroLength, Kind::Empty, Kind::DeepJson, Kind::HugeString, Kind::NulCharacters] {
        assert_eq!(report.kinds[&kind].dlq.values().sum::<usize>(), 200, "every {kind:?} is dead-lettered: {report}");
    }
}
