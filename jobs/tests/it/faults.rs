//! Faults under load on the stack a single-node deployment runs: one Apache
//! Kafka broker (behind a TCP proxy that can slow the network path), its own
//! PostgreSQL server, ClickHouse, and every stage as a real process
//! (validate, profile, analytics, workflows) while 200,000 records flow at a
//! steady 2,000 a second. One after another: the broker killed with -9 and
//! restarted, the network path to the broker slowed by 200 ms each way,
//! PostgreSQL crashed (`pg_ctl stop -m immediate`) and started, every stage
//! killed with -9 and restarted.
//!
//! Afterwards: profiles equal a recount of the input, ClickHouse holds every
//! valid event once, `events.valid` (read_committed) holds each valid event
//! exactly once, `events.dlq` each broken record once, and every purchase's
//! workflow instance completed exactly once. What a client of the REST API saw
//! meanwhile (a probe posts an event and reads a user every half second) and
//! how long each fault stalled the stages are printed, not asserted (speed is
//! for benches/); docs/reliability.md records them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifecycle_connectors::clickhouse::client;
use lifecycle_connectors::http::auth::Role;
use lifecycle_jobs::LifecycleConfig;
use lifecycle_jobs::stack::{KafkaCluster, StackConfig, postgres as pg_server};
use lifecycle_jobs::workload::Workload;
use lifecycle_pipeline::{Topic, TopicNames, wire};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::common::{drop_clickhouse_db, free_port, own_analytics, read_all, schemas};
use crate::ingest_api::{key, start_with};
use crate::procs::{Sample, Sampler, Stages, stalls_by_fault, steady_stream};
use crate::profile_stage::{check_profiles, events_applied, try_applied_offsets};

/// Client port of the broker (its controller takes the next one).
const BROKER_PORT: u16 = 19192;
const RATE: usize = 2_000;
const SECONDS: usize = 100;
const BROKEN_EVERY: usize = 50;

/// A TCP proxy in front of the broker (which advertises the proxy's port, so
/// every client connection goes through it) that delays each byte by
/// `delay_ms` in each direction, keeping the stream pipelined as a slow
/// link does.
struct DelayProxy {
    port: u16,
    delay_ms: Arc<AtomicU64>,
}

impl DelayProxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        tokio::spawn(async move {
            loop {
                // A failed accept (a client gone before it was accepted) ends nothing.
                let Ok((client, _)) = listener.accept().await else { continue };
                let delay = delay.clone();
                tokio::spawn(async move {
                    // A broker that is down: the client sees the connection close, as it would.
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, delay.clone()), pipe(sr, cw, delay));
                });
            }
        });
        Self { port, delay_ms }
    }

    fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }
}

/// Copies `r` to `w`, each chunk written `delay` after it was read.
async fn pipe(mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf, delay: Arc<AtomicU64>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = r.read(&mut buf).await {
            let due = tokio::time::Instant::now() + Duration::from_millis(delay.load(Ordering::Relaxed));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// A PostgreSQL server of the test's own (own data directory and port), so
/// crashing it disturbs no other test; removed when dropped.
pub(crate) struct PgServer(pub(crate) LifecycleConfig);

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = pg_server::down(&self.0.stack);
        let _ = std::fs::remove_dir_all(&self.0.stack.data_dir);
    }
}

/// What the API probe saw: (sent at, operation, status (0: no answer), seconds to answer).
type Seen = Arc<Mutex<Vec<(Instant, &'static str, u16, f64)>>>;

/// start -> 1 s timer -> end: a durable timer in PostgreSQL across the faults.
const FOLLOW_UP: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d">
  <bpmn:process id="p" isExecutable="true">
    <bpmn:startEvent id="start"/>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="wait"/>
    <bpmn:intermediateCatchEvent id="wait"><bpmn:timerEventDefinition><bpmn:timeDuration>PT1S</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>
    <bpmn:sequenceFlow id="f2" sourceRef="wait" targetRef="end"/>
    <bpmn:endEvent id="end"/>
  </bpmn:process>
</bpmn:definitions>"#;

/// Instances of `trigger`'s workflow that completed.
async fn completed(pool: &sqlx::PgPool, trigger: &str) -> Result<u64, sqlx::Error> {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM workflow_executions WHERE status = 'completed' AND trigger_id = $1::uuid",
    )
    .bind(trigger)
    .fetch_one(pool)
    .await
    .map(|n| n as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_network_slowed_postgres_crashed_and_stages_killed_under_load_lose_and_double_nothing() {
    let unique = Uuid::new_v4().simple().to_string();
    let name = format!("t-faults-{}", &unique[..8]);
    let dir = std::env::temp_dir().join(format!("lifecycle-{name}"));
    std::fs::create_dir_all(&dir).expect("dir");

    // PostgreSQL of its own.
    let mut cfg = LifecycleConfig {
        stack: StackConfig { data_dir: dir.join("stack"), postgres_port: free_port(), ..StackConfig::default() },
        ..LifecycleConfig::default()
    };
    for sub in ["logs", "run"] {
        std::fs::create_dir_all(cfg.stack.data_dir.join(sub)).expect("stack dirs");
    }
    cfg.postgres.url = format!("postgres://lifecycle@127.0.0.1:{}/lifecycle", cfg.stack.postgres_port);
    let pg = PgServer(cfg.clone());
    pg_server::up(&pg.0).await.expect("a PostgreSQL server of the test's own");
    let pool = lifecycle_connectors::postgres::connect(&cfg.postgres).await.expect("db");

    // One broker behind the proxy.
    let proxy = DelayProxy::start(BROKER_PORT).await;
    let shared = LifecycleConfig::default().stack;
    let mut broker = KafkaCluster::start_with(
        &shared,
        &shared.data_dir.join("kafka-faults"),
        BROKER_PORT,
        1,
        512,
        &[proxy.port],
        &[],
    )
    .await
    .expect("one Kafka broker");
    cfg.kafka.bootstrap_servers = format!("127.0.0.1:{}", proxy.port);
    cfg.topics = TopicNames::with_prefix(format!("{name}."));
    cfg.validate.group_id = name.clone();
    cfg.validate.max_batch_records = 1000;
    cfg.profile.group_id = format!("{name}-profile");
    cfg.profile.max_batch_records = 1000;
    cfg.workflows.group_id = format!("{name}-workflows");
    cfg.workflows.signing_secret = "faults-test-signing-secret".into();
    own_analytics(&mut cfg);
    cfg.analytics.batch_linger_ms = 300;
    cfg.ingest.requests_per_minute = 1_000_000;
    let reg = lifecycle_jobs::setup::topics_and_schemas(&cfg).await.expect("topics on the broker, schemas");

    // Every purchase starts a workflow instance (loaded by the profile stage at its start).
    let wf: Uuid = sqlx::query_scalar(
        "INSERT INTO workflows (name, bpmn_xml, status) VALUES ('purchase follow-up', $1, 'active') RETURNING id",
    )
    .bind(FOLLOW_UP)
    .fetch_one(&pool)
    .await
    .expect("workflow");
    let trigger: Uuid = sqlx::query_scalar(
        "INSERT INTO triggers (name, event_type, conditions, workflow_id) \
         VALUES ('every purchase', 'transaction.purchase_complete', $1, $2) RETURNING id",
    )
    .bind(json!({"field": "event.event_properties.amount", "op": "exists"}))
    .bind(wf)
    .fetch_one(&pool)
    .await
    .expect("trigger");

    let config = dir.join("lifecycle.toml");
    std::fs::write(&config, toml::to_string(&cfg).expect("toml")).expect("config");
    let mut stages = Stages::new(config, dir.clone());
    for stage in ["validate", "profile", "analytics", "workflows"] {
        stages.start(stage, stage);
    }

    // The REST API in this process, and a probe that uses it as a client would.
    let api = start_with(cfg.clone()).await;
    let (_, operator) = key(&cfg, Role::Operator).await;
    let seen: Seen = Arc::default();
    let (stop_probe, probe_stopped) = tokio::sync::watch::channel(false);
    let probe_user = format!("probe-{}", &unique[..8]);
    let probe = {
        let (seen, operator, base, probe_user) = (seen.clone(), operator.clone(), api.base.clone(), probe_user.clone());
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(90)).build().expect("client");
        tokio::spawn(async move {
            let mut w = Workload::new(7, 1, &probe_user, chrono::Utc::now());
            let mut accepted = Vec::new();
            let mut asks = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut n = 0;
            while !*probe_stopped.borrow() {
                tick.tick().await;
                let mut event = w.event_of(0, "engagement.page_view");
                event["event_id"] = json!(format!("{probe_user}-{n}"));
                n += 1;
                let user = event["user_id"].as_str().expect("user").to_owned();
                for op in ["POST /events", "GET /users/{id}"] {
                    let (http, seen, operator, base, event, user) =
                        (http.clone(), seen.clone(), operator.clone(), base.clone(), event.clone(), user.clone());
                    asks.spawn(async move {
                        let t = Instant::now();
                        let req = if op == "POST /events" {
                            http.post(format!("{base}/events")).json(&event)
                        } else {
                            http.get(format!("{base}/users/{user}"))
                        };
                        let status = req.bearer_auth(&operator).send().await.map_or(0, |r| r.status().as_u16());
                        seen.lock().expect("seen").push((t, op, status, t.elapsed().as_secs_f64()));
                        (op == "POST /events" && status == 202).then(|| event["event_id"].as_str().map(str::to_owned))
                    });
                }
            }
            while let Some(r) = asks.join_next().await {
                if let Some(Some(id)) = r.expect("probe") {
                    accepted.push(id);
                }
            }
            accepted
        })
    };

    let producer = steady_stream(&cfg, reg.raw_envelope_id, 5_000, RATE, SECONDS, BROKEN_EVERY);

    // Progress read from the stores every 250 ms: profile offsets applied,
    // ClickHouse rows, workflow instances completed. Samples that PostgreSQL
    // cannot answer (while it is down) are skipped.
    let sampler = {
        let (pool, group, ch) = (pool.clone(), cfg.profile.group_id.clone(), client(&cfg.clickhouse));
        let trigger = trigger.to_string();
        Sampler::start(move || {
            let (pool, group, ch, trigger) = (pool.clone(), group.clone(), ch.clone(), trigger.clone());
            async move {
                let applied = try_applied_offsets(&pool, &group).await.ok()?;
                let done = completed(&pool, &trigger).await.ok()?;
                let rows: u64 = ch.query("SELECT count() FROM events").fetch_one().await.ok()?;
                Some(vec![applied as u64, rows, done])
            }
        })
    };

    // The faults, on a schedule measured from the start of the stream.
    let t0 = Instant::now();
    let at = |secs: u64| tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + Duration::from_secs(secs)));
    let mut faults: Vec<(&str, Instant)> = Vec::new();
    at(15).await;
    faults.push(("broker killed (-9)", Instant::now()));
    broker.kill(0);
    at(30).await;
    faults.push(("broker restarted", Instant::now()));
    broker.restart(0).await.expect("the broker back on its data");
    let broker_back = faults[1].1.elapsed();
    at(45).await;
    faults.push(("network to the broker slowed by 200 ms each way", Instant::now()));
    proxy.set_delay(200);
    at(60).await;
    faults.push(("network back to normal", Instant::now()));
    proxy.set_delay(0);
    at(70).await;
    faults.push(("PostgreSQL crashed (pg_ctl stop -m immediate)", Instant::now()));
    pg_server::crash(&pg.0.stack).expect("crash PostgreSQL");
    at(85).await;
    faults.push(("PostgreSQL started", Instant::now()));
    pg_server::up(&pg.0).await.expect("PostgreSQL recovers and starts");
    let pg_back = faults[5].1.elapsed();
    at(95).await;
    faults.push(("every stage killed (-9) and restarted", Instant::now()));
    for stage in ["validate", "profile", "analytics", "workflows"] {
        stages.kill_and_restart(stage);
    }
    assert_eq!(stages.exited(), Vec::<String>::new(), "no stage gave up; logs in {}", dir.display());

    let events = producer.await.expect("producer");
    let input_done = Instant::now();
    // The probe stops with the input, so its accepted events are drained too.
    stop_probe.send(true).expect("stop the probe");
    let accepted_probes = probe.await.expect("probe");
    let valid = events.len() as u64;
    let broken = RATE * SECONDS / BROKEN_EVERY;
    let purchases: HashSet<Uuid> = events
        .iter()
        .filter(|e| e["event_type"] == "transaction.purchase_complete")
        .map(|e| lifecycle_pipeline::rules::instance_id(trigger, e["event_id"].as_str().expect("id")))
        .collect();

    // Drained: every valid event in a profile and in ClickHouse, every instance completed.
    let ch = client(&cfg.clickhouse);
    let prefix = cfg.topics.prefix.clone();
    let in_clickhouse = || async {
        ch.query("SELECT uniqExact(event_id) FROM events WHERE startsWith(user_id, ?)")
            .bind(&prefix)
            .fetch_one::<u64>()
            .await
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut applied, mut rows, mut finished) = (0, 0, 0);
    while Instant::now() < deadline {
        applied = events_applied(&pool, &prefix).await.unwrap_or(0);
        rows = in_clickhouse().await;
        finished = completed(&pool, &trigger.to_string()).await.unwrap_or(0);
        if applied >= valid && rows >= valid && finished >= purchases.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained = Instant::now();
    let samples = sampler.finish().await;
    assert_eq!(stages.exited(), Vec::<String>::new(), "no stage gave up; logs in {}", dir.display());
    assert_eq!(
        (applied, rows, finished),
        (valid, valid, purchases.len() as u64),
        "every valid event in a profile and in ClickHouse, every purchase's instance completed; logs in {}",
        dir.display()
    );
    stages.stop_all();

    // What each fault cost, and what the API's clients saw meanwhile.
    report(&samples, &seen.lock().expect("seen"), &faults);
    eprintln!(
        "faults test: broker serving {:.1} s after its restart, PostgreSQL {:.1} s after its start; \
         {} records ({valid} valid, {broken} broken) over {SECONDS} s; drained {:.1} s after the last was produced",
        broker_back.as_secs_f64(),
        pg_back.as_secs_f64(),
        RATE * SECONDS,
        (drained - input_done).as_secs_f64()
    );

    // events.valid, read_committed: each valid event once; each probe event the API accepted once.
    let (envelope, _) = schemas();
    let produced: HashMap<&str, &str> =
        events.iter().map(|e| (e["event_id"].as_str().expect("id"), e["user_id"].as_str().expect("user"))).collect();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut probes: HashMap<String, usize> = HashMap::new();
    for (_, _, key, payload) in &read_all(&cfg, Topic::EventsValid) {
        let Ok(wire::Encoding::Avro { body, .. }) = wire::sniff(payload) else { panic!("valid records are Avro") };
        let obj = envelope.decode(envelope.schema(), body).expect("decodes with the envelope");
        let id = obj["event_id"].as_str().expect("event_id").to_owned();
        assert_eq!(key.as_deref(), obj["user_id"].as_str().map(str::as_bytes), "keyed by user");
        if obj["user_id"].as_str().is_some_and(|u| u.starts_with(&probe_user)) {
            *probes.entry(id).or_default() += 1;
        } else {
            assert_eq!(produced.get(id.as_str()).copied(), obj["user_id"].as_str(), "an event we produced");
            *ids.entry(id).or_default() += 1;
        }
    }
    assert_eq!(ids.len() as u64, valid, "events.valid holds every valid event");
    assert!(ids.values().all(|&n| n == 1), "events.valid holds no event twice");
    for id in &accepted_probes {
        assert_eq!(probes.get(id), Some(&1), "a probe event the API accepted (202) is on events.valid once: {id}");
    }
    assert!(probes.values().all(|&n| n == 1), "no probe event twice");
    assert_eq!(read_all(&cfg, Topic::EventsDlq).len(), broken, "events.dlq holds each broken record once");

    check_profiles(&cfg, &pool, &events).await;
    let (distinct, all): (u64, u64) = ch
        .query("SELECT uniqExact(event_id), count() FROM events FINAL WHERE startsWith(user_id, ?)")
        .bind(&prefix)
        .fetch_one()
        .await
        .expect("ClickHouse counts");
    assert_eq!((distinct, all), (valid, valid), "ClickHouse holds each valid event once");
    let instances: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, status FROM workflow_executions WHERE trigger_id = $1")
            .bind(trigger)
            .fetch_all(&pool)
            .await
            .expect("instances");
    assert_eq!(instances.len(), purchases.len(), "one instance per purchase");
    assert!(instances.iter().all(|(id, status)| purchases.contains(id) && status == "completed"));

    pool.close().await;
    drop_clickhouse_db(&cfg).await;
    drop(broker);
    let _ = std::fs::remove_dir_all(shared.data_dir.join("kafka-faults"));
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prints, for each fault, the longest stall of each stage's progress that
/// began after it, and the API answers to requests sent between it and the next.
fn report(samples: &[Sample], seen: &[(Instant, &'static str, u16, f64)], faults: &[(&str, Instant)]) {
    let times: Vec<Instant> = faults.iter().map(|f| f.1).collect();
    for (i, stall) in stalls_by_fault(samples, 3, &times) {
        let what = i.map_or("steady stream, before any fault", |i| faults[i].0);
        let stall: Vec<String> = ["profile", "ClickHouse sink", "workflows"]
            .iter()
            .zip(&stall)
            .map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64()))
            .collect();
        let from = i.map(|i| times[i]);
        let to = i.map_or(times.first().copied(), |i| times.get(i + 1).copied());
        let mut answers: BTreeMap<(&str, u16), (usize, f64)> = BTreeMap::new();
        for &(t, op, status, secs) in seen {
            if from.is_none_or(|f| t >= f) && to.is_none_or(|e| t < e) {
                let a = answers.entry((op, status)).or_default();
                a.0 += 1;
                a.1 = a.1.max(secs);
            }
        }
        let answers: Vec<String> =
            answers.iter().map(|((op, s), (n, max))| format!("{op} {s} x{n} (slowest {max:.1} s)")).collect();
        eprintln!("faults test: {what}: longest stall: {}; API: {}", stall.join(", "), answers.join(", "));
    }
}
