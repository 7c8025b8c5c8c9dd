//! Long-running HTTP services: the schema registry and the ingestion API.

use std::sync::Arc;
use std::time::Duration;

use lifecycle_connectors::clickhouse::{ClickHouseConfig, migrate};
use lifecycle_connectors::http::auth::ApiKeys;
use lifecycle_connectors::http::egress::EgressPolicy;
use lifecycle_connectors::http::ops;
use lifecycle_connectors::http_analytics;
use lifecycle_connectors::http_ingest::{IngestState, router};
use lifecycle_connectors::kafka::sink::KafkaSink;
use lifecycle_connectors::postgres;
use lifecycle_pipeline::metrics::HttpMetrics;
use lifecycle_pipeline::{Topic, Validator};
use lifecycle_schemas::SchemaFiles;
use lifecycle_schemas::registry::server::{self, RegistryState};
use lifecycle_schemas::registry::store::Store;
use tokio::sync::watch;

use crate::config::LifecycleConfig;

async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Serves the schema registry until `shutdown`.
pub async fn run_registry(cfg: &LifecycleConfig, shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let pool = postgres::connect(&cfg.registry.postgres).await.map_err(|e| format!("registry database: {e}"))?;
    let store = Store::new(pool);
    store.migrate().await.map_err(|e| format!("registry migrations: {e}"))?;
    let registry = prometheus::Registry::new();
    let metrics = HttpMetrics::register(&registry).map_err(|e| e.to_string())?;
    let app = server::router(RegistryState { store, metrics, registry });
    ops::serve(cfg.registry.listen_addr, app, stopped(shutdown))
        .await
        .map_err(|e| format!("registry on {}: {e}", cfg.registry.listen_addr))
}

/// Builds the ingestion API's state (validator, producer, key store).
pub async fn ingest_state(cfg: &LifecycleConfig) -> Result<IngestState, String> {
    cfg.ingest.validate()?;
    let files = SchemaFiles::load(&cfg.schemas_dir()).map_err(|e| e.to_string())?;
    let validator = Validator::new(Arc::new(files.catalog().map_err(|e| e.to_string())?), cfg.validation.limits()?);
    let pool = postgres::connect(&cfg.postgres).await.map_err(|e| format!("database: {e}"))?;
    let registry = prometheus::Registry::new();
    Ok(IngestState {
        config: cfg.ingest.clone(),
        validator: Arc::new(validator),
        sink: KafkaSink::new(&cfg.kafka).map_err(|e| e.to_string())?,
        raw_topic: cfg.topics.name(Topic::EventsRaw),
        keys: ApiKeys::new(pool, cfg.ingest.requests_per_minute),
        metrics: HttpMetrics::register(&registry).map_err(|e| e.to_string())?,
        registry,
    })
}

/// The REST API: events ingestion and users, behind API keys.
pub async fn api_router(cfg: &LifecycleConfig) -> Result<axum::Router, String> {
    let state = ingest_state(cfg).await?;
    let pool = postgres::connect_and_migrate(&cfg.postgres).await.map_err(|e| format!("database: {e}"))?;
    clickhouse_schema(&cfg.clickhouse).await;
    let users =
        lifecycle_connectors::http_users::router(lifecycle_connectors::http_users::UsersState { pool: pool.clone() });
    let analytics = http_analytics::router(http_analytics::AnalyticsState::new(
        lifecycle_connectors::clickhouse::client(&cfg.clickhouse),
        cfg.analytics_api.clone(),
    ));
    let workflows =
        lifecycle_connectors::http_workflows::router(lifecycle_connectors::http_workflows::WorkflowsState {
            pool: pool.clone(),
            events_topic: cfg.topics.name(Topic::WorkflowEvents),
            egress: Arc::new(EgressPolicy::new(&cfg.egress)?),
        });
    let keys = lifecycle_connectors::http::keys::router(pool);
    Ok(router(state, users.merge(analytics).merge(workflows).merge(keys)))
}

/// `/analytics` reads tables the analytics sink creates, and on a fresh stack
/// the API may start first: it applies the same idempotent migrations, so a
/// query finds empty tables (200, no data) rather than missing ones (503).
/// ClickHouse being down does not hold the API back: the migrations are retried
/// in the background and `/analytics` answers 503 meanwhile.
async fn clickhouse_schema(cfg: &ClickHouseConfig) {
    let first = tokio::time::timeout(Duration::from_secs(10), migrate::migrate(cfg)).await;
    match first {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => tracing::warn!(error = %e, "ClickHouse migrations failed; retrying in the background"),
        Err(_) => tracing::warn!("ClickHouse migrations took over 10 s; retrying in the background"),
    }
    let cfg = cfg.clone();
    tokio::spawn(async move {
        let mut attempt = 0;
        loop {
            tokio::time::sleep(crate::stages::common::backoff(attempt)).await;
            match migrate::migrate(&cfg).await {
                Ok(_) => return tracing::info!("ClickHouse migrations applied"),
                Err(e) => tracing::warn!(error = %e, attempt, "ClickHouse migrations failed; retrying"),
            }
            attempt = attempt.saturating_add(1);
        }
    });
}

/// Serves the REST API (ingestion and users) until `shutdown`.
pub async fn run_ingest(cfg: &LifecycleConfig, shutdown: watch::Receiver<bool>) -> Result<(), String> {
    crate::setup::require_topics(cfg, &[lifecycle_pipeline::Topic::EventsRaw])?;
    let app = api_router(cfg).await?;
    ops::serve(cfg.ingest.listen_addr, app, stopped(shutdown))
        .await
        .map_err(|e| format!("ingest API on {}: {e}", cfg.ingest.listen_addr))
}
