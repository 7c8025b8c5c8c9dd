//! Stream-processing stages. Each has `config.rs` and `stage.rs`; the logic they
//! run is pure and lives in `lifecycle_pipeline`.

pub mod analytics;
pub mod cdc;
pub(crate) mod common;
pub(crate) mod isolate;
pub mod profile;
pub mod validate;
pub mod workflows;

use lifecycle_pipeline::metrics::{AnalyticsMetrics, CdcMetrics, ProfileMetrics, ValidateMetrics, WorkflowMetrics};

/// A stage's metrics, registered in the stage's own registry.
pub trait StageMetrics: Clone + Sized {
    /// Registers them in `r`.
    fn register_in(r: &prometheus::Registry) -> Result<Self, prometheus::Error>;
}

impl StageMetrics for ValidateMetrics {
    fn register_in(r: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        Self::register(r)
    }
}

impl StageMetrics for ProfileMetrics {
    fn register_in(r: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        Self::register(r)
    }
}

impl StageMetrics for WorkflowMetrics {
    fn register_in(r: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        Self::register(r)
    }
}

impl StageMetrics for CdcMetrics {
    fn register_in(r: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        Self::register(r)
    }
}

impl StageMetrics for AnalyticsMetrics {
    fn register_in(r: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        Self::register(r)
    }
}

/// What a stage's probes report. Liveness: its main loop takes a step at
/// least every [`Health::LIVENESS_WINDOW`] (an idle poll, a batch, a retry).
/// Readiness: it holds partitions of its input and is not stalled. Stalled:
/// a store it writes keeps failing (the reason is served with the 503), until
/// the next success.
#[derive(Clone)]
pub struct Health {
    state: std::sync::Arc<std::sync::Mutex<HealthState>>,
}

struct HealthState {
    stalled: Option<String>,
    assigned: Option<bool>,
    beat: std::time::Instant,
}

impl Default for Health {
    fn default() -> Self {
        let state = HealthState { stalled: None, assigned: None, beat: std::time::Instant::now() };
        Self { state: std::sync::Arc::new(std::sync::Mutex::new(state)) }
    }
}

impl Health {
    /// How long the main loop may go without a step before the stage is not live.
    pub const LIVENESS_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

    fn with<T>(&self, f: impl FnOnce(&mut HealthState) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    /// The stage cannot make progress, because of `reason`.
    pub fn stalled(&self, reason: String) {
        self.with(|s| {
            s.stalled = Some(reason);
            s.beat = std::time::Instant::now();
        });
    }

    /// The stage made progress.
    pub fn progressing(&self) {
        self.with(|s| {
            s.stalled = None;
            s.beat = std::time::Instant::now();
        });
    }

    /// The main loop took a step; `assigned`: its consumer holds partitions.
    pub fn beat(&self, assigned: bool) {
        self.with(|s| {
            s.assigned = Some(assigned);
            s.beat = std::time::Instant::now();
        });
    }

    /// `Ok` while not stalled, else why.
    pub fn check(&self) -> Result<(), String> {
        self.with(|s| s.stalled.clone().map_or(Ok(()), Err)).unwrap_or_else(|| Err("health state poisoned".into()))
    }

    /// `Ok` while the main loop takes steps.
    pub fn live(&self) -> Result<(), String> {
        self.with(|s| {
            let idle = s.beat.elapsed();
            if idle <= Self::LIVENESS_WINDOW {
                Ok(())
            } else {
                Err(format!("main loop took no step for {} s", idle.as_secs()))
            }
        })
        .unwrap_or_else(|| Err("health state poisoned".into()))
    }

    /// `Ok` when the stage holds partitions and is not stalled.
    pub fn ready(&self) -> Result<(), String> {
        self.check()?;
        match self.with(|s| s.assigned) {
            Some(Some(true)) => Ok(()),
            Some(Some(false)) => Err("no partition of its input assigned (more instances than partitions?)".into()),
            _ => Err("not consuming yet".into()),
        }
    }
}

/// Counters a caller (tests, the demo, the CLI) can read while a stage runs,
/// and the registry its `/metrics` endpoint serves.
#[derive(Clone)]
pub struct Handle<M> {
    /// The stage's metrics.
    pub metrics: M,
    /// The registry they live in.
    pub registry: prometheus::Registry,
    /// Whether the stage makes progress (served on `/healthz`).
    pub health: Health,
}

impl<M: StageMetrics> Handle<M> {
    /// Creates the metrics in a fresh registry.
    pub fn new() -> Result<Self, String> {
        let registry = prometheus::Registry::new();
        let metrics = M::register_in(&registry).map_err(|e| e.to_string())?;
        crate::heap::HeapCollector::register(&registry).map_err(|e| e.to_string())?;
        Ok(Self { metrics, registry, health: Health::default() })
    }
}
