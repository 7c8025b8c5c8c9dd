//! Produce -> profile-visible latency at a fixed offered rate.
//!
//! The whole pipeline runs (validate, profile, ClickHouse sink) while a paced
//! producer offers the standard mix at `rate` events/s to events.raw. Every
//! 100th event is a probe: the sign-up of a user nobody has seen. A reader polls
//! PostgreSQL every 10 ms for the probes in flight, the way a dashboard would
//! see them; a probe's latency runs from the moment it was handed to the
//! producer to the end of the query that first returned its profile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use lifecycle_connectors::postgres::profiles::resolve_user;
use lifecycle_jobs::workload::{AvroEncoder, Workload};
use lifecycle_pipeline::Topic;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use uuid::Uuid;

use super::{Env, Options, Stage, start_stages};

/// One in this many offered events is a probe.
const PROBE_EVERY: usize = 100;

/// What the latency run measured.
#[derive(Debug, Clone)]
pub struct Latency {
    /// Offered rate, events/s.
    pub offered: u32,
    /// Rate the producer achieved, events/s.
    pub achieved: f64,
    /// Events offered.
    pub sent: usize,
    /// Probes offered.
    pub probes: usize,
    /// Probe latencies, sorted.
    pub latencies: Vec<Duration>,
}

impl Latency {
    /// The `q` quantile (0..=1) of the probes seen.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.latencies.len();
        (n > 0).then(|| self.latencies[((n as f64 * q).ceil() as usize).clamp(1, n) - 1])
    }

    /// `(p50, p99, max)` as "123 ms" ("-" when no probe was seen).
    pub fn quantiles_ms(&self) -> [String; 3] {
        let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0));
        [ms(self.quantile(0.5)), ms(self.quantile(0.99)), ms(self.latencies.last().copied())]
    }

    /// One line for the console.
    pub fn summary(&self) -> String {
        let [p50, p99, max] = self.quantiles_ms();
        format!(
            "  latency at {} events/s offered ({:.0} achieved): p50 {p50}, p99 {p99}, max {max} over {} of {} probes",
            self.offered,
            self.achieved,
            self.latencies.len(),
            self.probes
        )
    }
}

/// The offered records: `(key, payload, probe user)`.
type Offered = Vec<(String, Vec<u8>, Option<Uuid>)>;

fn offered(env: &Env, schema_id: u32, total: usize, users: u32) -> Result<Offered, String> {
    let (envelope, validator) = super::encoding(&env.cfg)?;
    let enc = AvroEncoder { validator: &validator, envelope: &envelope, schema_id };
    let mut load = Workload::new(7, users, "l", Utc::now());
    let mut probes = Workload::new(8, u32::MAX, "probe", Utc::now());
    (0..=total)
        .map(|i| {
            // Record 0 is the warm-up probe.
            let probe = i % PROBE_EVERY == 0;
            let mut e =
                if probe { probes.event_of(u32::try_from(i).unwrap_or(0), "user.signup") } else { load.next_event() };
            if probe {
                // event_of keeps the generator's event id; the profile stage drops
                // repeated ids, so each probe gets its own.
                e["event_id"] = serde_json::json!(format!("probe-{i}"));
                e["timestamp"] = serde_json::json!(Utc::now().timestamp_millis());
            }
            let user = e["user_id"].as_str().unwrap_or_default().to_owned();
            let stored = probe.then(|| resolve_user(&user));
            Ok((user, enc.encode(&e)?, stored))
        })
        .collect()
}

/// Sends `records` at `rate` events/s, noting each probe's send time in `sent`.
fn pace(
    producer: &BaseProducer,
    topic: &str,
    records: &[(String, Vec<u8>, Option<Uuid>)],
    rate: u32,
    sent: &Mutex<Vec<(Uuid, Instant)>>,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut i = 0;
    while i < records.len() {
        let due = ((start.elapsed().as_secs_f64() * f64::from(rate)) as usize).min(records.len());
        while i < due {
            let (key, payload, probe) = &records[i];
            if let Some(user) = probe
                && let Ok(mut s) = sent.lock()
            {
                s.push((*user, Instant::now()));
            }
            let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(payload.as_slice());
            // A full queue is waited out; any other refusal ends the run.
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        producer.poll(Duration::from_millis(5));
                        record = r;
                    }
                    Err((e, _)) => return Err(format!("producing the offered load: {e}")),
                }
            }
            i += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = start.elapsed();
    producer.flush(Duration::from_secs(60)).map_err(|e| format!("flushing the offered load: {e}"))?;
    Ok(took)
}

/// Probe users (of `users`, as stored: see `resolve_user`) whose profile is visible now.
async fn visible(pool: &sqlx::PgPool, users: &[Uuid]) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT id FROM users WHERE id = ANY($1)").bind(users).fetch_all(pool).await.unwrap_or_default()
}

/// The latency run on `env` (fresh topics and databases).
pub async fn run(opts: &Options, env: &mut Env) -> Result<Latency, String> {
    let reg = env.topics_and_schemas().await?;
    let total = opts.rate as usize * opts.latency_secs as usize;
    let records = Arc::new(offered(env, reg.raw_envelope_id, total, opts.users)?);
    let topic = env.cfg.topics.name(Topic::EventsRaw);
    let procs = start_stages(opts, env, "latency", &[Stage::Validate, Stage::Profile, Stage::Analytics])?;
    let producer: BaseProducer = env.cfg.kafka.producer().create().map_err(|e| e.to_string())?;
    let pool = lifecycle_connectors::postgres::connect(&env.cfg.postgres).await.map_err(|e| e.to_string())?;

    // Warm-up: the first probe, resent until the pipeline shows it.
    let warm = records.first().ok_or("no records")?;
    let started = Instant::now();
    loop {
        let _ = producer.send(BaseRecord::to(&topic).key(warm.0.as_bytes()).payload(warm.1.as_slice()));
        let _ = producer.flush(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !visible(&pool, &[resolve_user(&warm.0)]).await.is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            return Err(format!("the pipeline did not start within 3 minutes (logs in {})", env.dir.display()));
        }
    }

    let sent = Arc::new(Mutex::new(Vec::new()));
    let producing = {
        let (sent, topic, rate, records) = (sent.clone(), topic.clone(), opts.rate, records.clone());
        std::thread::spawn(move || pace(&producer, &topic, &records[1..], rate, &sent))
    };
    let (mut pending, mut latencies) = (HashMap::<Uuid, Instant>::new(), Vec::new());
    let mut drained_at = None;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Ok(mut s) = sent.lock() {
            pending.extend(s.drain(..));
        }
        if !pending.is_empty() {
            let users: Vec<Uuid> = pending.keys().copied().collect();
            let seen = visible(&pool, &users).await;
            let now = Instant::now();
            for u in seen {
                if let Some(t) = pending.remove(&u) {
                    latencies.push(now - t);
                }
            }
        }
        if producing.is_finished() {
            let since = *drained_at.get_or_insert_with(Instant::now);
            let empty = pending.is_empty() && sent.lock().is_ok_and(|s| s.is_empty());
            if empty || since.elapsed() > Duration::from_secs(60) {
                break;
            }
        }
    }
    let took = producing.join().map_err(|_| "the producer thread panicked")??;
    for p in procs {
        p.stop(0);
    }
    latencies.sort();
    let rest = &records[1..];
    Ok(Latency {
        offered: opts.rate,
        achieved: rest.len() as f64 / took.as_secs_f64().max(1e-9),
        sent: rest.len(),
        probes: rest.iter().filter(|r| r.2.is_some()).count(),
        latencies,
    })
}
