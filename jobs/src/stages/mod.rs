//! Stream-processing stages. Each has `config.rs` and `stage.rs`; the logic they
//! run is pure and lives in `lifecycle_pipeline`.

pub mod analytics;
pub(crate) mod common;
pub(crate) mod isolate;
pub mod profile;
pub mod validate;
pub mod workflows;

use lifecycle_pipeline::metrics::{AnalyticsMetrics, ProfileMetrics, ValidateMetrics, WorkflowMetrics};

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

impl StageMetrics for AnalyticsMetrics {
    fn register_in(r: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        Self::register(r)
    }
}

/// Whether a stage is making progress: it turns unhealthy while a store it
/// writes keeps failing (its `/healthz` then answers 503 with the reason), and
/// healthy again at the next success.
#[derive(Clone, Default)]
pub struct Health {
    stalled: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Health {
    /// The stage cannot make progress, because of `reason`.
    pub fn stalled(&self, reason: String) {
        if let Ok(mut s) = self.stalled.lock() {
            *s = Some(reason);
        }
    }

    /// The stage made progress.
    pub fn progressing(&self) {
        if let Ok(mut s) = self.stalled.lock() {
            *s = None;
        }
    }

    /// `Ok` while healthy, else why not.
    pub fn check(&self) -> Result<(), String> {
        match self.stalled.lock() {
            Ok(s) => s.clone().map_or(Ok(()), Err),
            Err(_) => Err("health state poisoned".into()),
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
