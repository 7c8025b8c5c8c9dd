//! Stage processes under test (the real `lifecycle run <stage>` binary) and
//! the measurement of stalls in sampled progress, shared by the tests that
//! fault the stack under a steady stream (`cluster`, `faults`).

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_jobs::LifecycleConfig;
use lifecycle_jobs::workload::{AvroEncoder, Broken, Workload};
use lifecycle_pipeline::Topic;
use serde_json::Value;

use crate::common::schemas;

/// Stage processes, stopped with SIGTERM (or killed when the test fails).
pub(crate) struct Stages {
    pub(crate) config: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) running: Vec<(String, String, Child)>,
}

impl Stages {
    /// Stages of the configuration file `config`, their logs in `dir`.
    pub(crate) fn new(config: PathBuf, dir: PathBuf) -> Self {
        Self { config, dir, running: Vec::new() }
    }

    /// Starts `lifecycle run <stage>` as `instance` (its log: `<instance>.log`, appended).
    pub(crate) fn start(&mut self, stage: &str, instance: &str) {
        let section = stage.to_uppercase();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{instance}.log")))
            .expect("log");
        let mut c = Command::new(env!("CARGO_BIN_EXE_lifecycle"));
        c.args(["run", stage])
            .env("LIFECYCLE_CONFIG", &self.config)
            .env(format!("LIFECYCLE_{section}__METRICS_ADDR"), "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if stage == "validate" {
            c.env("LIFECYCLE_VALIDATE__INSTANCE_ID", instance);
        }
        self.running.push((stage.to_owned(), instance.to_owned(), c.spawn().expect("spawn a stage")));
    }

    /// SIGTERM, then waits for the instance to finish its batch and exit.
    pub(crate) fn stop(&mut self, instance: &str) {
        let at = self.running.iter().position(|(_, n, _)| n == instance).expect("running");
        let (_, _, mut child) = self.running.remove(at);
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let status = child.wait().expect("reap");
        assert!(status.success(), "{instance} exited cleanly after SIGTERM ({status}); log in {}", self.dir.display());
    }

    /// SIGKILL (no clean shutdown) and the same instance started again at once.
    pub(crate) fn kill_and_restart(&mut self, instance: &str) {
        let at = self.running.iter().position(|(_, n, _)| n == instance).expect("running");
        let (stage, _, mut child) = self.running.remove(at);
        let _ = child.kill();
        let _ = child.wait();
        self.start(&stage, instance);
    }

    /// Stops every instance still running, each with SIGTERM.
    pub(crate) fn stop_all(&mut self) {
        let names: Vec<String> = self.running.iter().map(|(_, n, _)| n.clone()).collect();
        for n in names {
            self.stop(&n);
        }
    }

    /// Any instance that exited by itself: a stage must ride out every fault.
    pub(crate) fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (_, name, child) in &mut self.running {
            if child.try_wait().ok().flatten().is_some() {
                out.push(name.clone());
            }
        }
        out
    }
}

impl Drop for Stages {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A steady stream to `events.raw`: `rate` records a second for `seconds`
/// seconds in tenth-of-a-second batches, one in `broken_every` broken (the
/// workload's kinds in turn), the rest valid events of `users` users.
/// Resolves to the valid events produced. A batch the broker cannot take yet
/// is waited for (the producer retries until its message timeout), and the
/// stream catches up on its schedule afterwards.
pub(crate) fn steady_stream(
    cfg: &LifecycleConfig,
    schema_id: u32,
    users: u32,
    rate: usize,
    seconds: usize,
    broken_every: usize,
) -> tokio::task::JoinHandle<Vec<Value>> {
    let (cfg, prefix) = (cfg.clone(), cfg.topics.prefix.clone());
    tokio::spawn(async move {
        let (envelope, validator) = schemas();
        let enc = AvroEncoder { validator: &validator, envelope: &envelope, schema_id };
        let mut w = Workload::new(31, users, &prefix, chrono::Utc::now());
        let topic = cfg.topics.name(Topic::EventsRaw);
        let sink = KafkaSink::new(&cfg.kafka).expect("producer");
        let total = rate * seconds;
        let mut events = Vec::with_capacity(total);
        let start = tokio::time::Instant::now();
        let tick = rate / 10;
        for step in 0..total / tick {
            let mut records = Vec::with_capacity(tick);
            for i in step * tick..(step + 1) * tick {
                if i % broken_every == broken_every - 1 {
                    let kind = Broken::ALL[(i / broken_every) % Broken::ALL.len()];
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
            sink.send_all(&records).await.expect("every record acknowledged");
            tokio::time::sleep_until(start + Duration::from_millis(100 * (step as u64 + 1))).await;
        }
        events
    })
}

/// One sample of progress: when, and the figures sampled (each only grows).
pub(crate) type Sample = (Instant, Vec<u64>);

/// Progress sampled every 250 ms until [`Sampler::finish`]: `figures` returns
/// the figures now, or `None` when they cannot be read (that sample is skipped).
pub(crate) struct Sampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub(crate) fn start<F, Fut>(mut figures: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Option<Vec<u64>>> + Send,
    {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                if let Some(f) = figures().await {
                    samples.push((Instant::now(), f));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stopped.changed() => return samples,
                }
            }
        });
        Self { stop, task }
    }

    /// Stops sampling; the samples taken.
    pub(crate) async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        self.task.await.expect("sampler")
    }
}

/// What each fault cost: for the stretch before the first fault (`None`) and
/// after each of `faults` (`Some(i)`), the longest stall of each of the
/// `figures` figures that began in it. A batch commits about every second, so
/// a stall that began up to 1.5 s before a fault is that fault's.
pub(crate) fn stalls_by_fault(
    samples: &[Sample],
    figures: usize,
    faults: &[Instant],
) -> Vec<(Option<usize>, Vec<Duration>)> {
    let slack = Duration::from_millis(1500);
    let found: Vec<_> = (0..figures).map(|i| stalls(samples, i)).collect();
    std::iter::once(None)
        .chain((0..faults.len()).map(Some))
        .map(|i| (i, found.iter().map(|s| longest_after(s, faults, i, slack)).collect()))
        .collect()
}

/// Every stretch during which figure `i` stood still and then moved again:
/// (when it last moved, how long it stood). A figure that never moves again
/// (the work is done) has no stall at its end.
fn stalls(samples: &[Sample], i: usize) -> Vec<(Instant, Duration)> {
    let mut out = Vec::new();
    let mut last: Option<(Instant, u64)> = None;
    for (at, figures) in samples {
        let v = figures[i];
        match last {
            Some((_, prev)) if v == prev => {}
            Some((t, _)) => {
                out.push((t, *at - t));
                last = Some((*at, v));
            }
            None => last = Some((*at, v)),
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

#[test]
fn stalls_are_attributed_to_the_fault_before_them() {
    let t = Instant::now();
    let at = |ms: u64| t + Duration::from_millis(ms);
    let s = |ms: u64, v: u64| (at(ms), vec![0, v]);
    let samples =
        [s(0, 1), s(250, 2), s(500, 2), s(750, 2), s(1000, 3), s(1250, 4), s(1500, 4), s(3000, 5), s(3250, 5)];
    let found = stalls(&samples, 1);
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
