//! The local stack: Apache Kafka, PostgreSQL, ClickHouse and the schema registry,
//! installed and started by the project, with data under one project-local
//! directory. `up` is idempotent: a service that already answers is left alone.

pub mod clickhouse;
mod kafka;
pub use kafka::Cluster as KafkaCluster;
pub mod node;
pub mod postgres;
mod proc;
pub mod python;
mod registry;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::LifecycleConfig;

/// Where the stack keeps its data and binaries, and its ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StackConfig {
    /// Project-local data directory (PostgreSQL cluster, Kafka log segments, logs, pids).
    pub data_dir: PathBuf,
    /// Cache of downloads shared by every checkout (Kafka's jars, the Python venv).
    pub cache_dir: PathBuf,
    /// Apache Kafka version, fetched from Maven Central (`org.apache.kafka:kafka_2.13`).
    pub kafka_version: String,
    /// Kafka client listener port.
    pub kafka_port: u16,
    /// Kafka's KRaft controller listener port.
    pub kafka_controller_port: u16,
    /// The broker's JVM heap, in MiB.
    pub kafka_heap_mib: u32,
    /// PostgreSQL port.
    pub postgres_port: u16,
    /// ClickHouse HTTP port.
    pub clickhouse_http_port: u16,
    /// ClickHouse native-protocol port (clickhouse-client).
    pub clickhouse_tcp_port: u16,
}

impl Default for StackConfig {
    fn default() -> Self {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        Self {
            data_dir: lifecycle_schemas::files::checkout_root().join(".lifecycle"),
            cache_dir: home.join(".cache/lifecycle"),
            kafka_version: "4.4.0".into(),
            kafka_port: 9092,
            kafka_controller_port: 9093,
            kafka_heap_mib: 1024,
            postgres_port: 5432,
            clickhouse_http_port: 8123,
            clickhouse_tcp_port: 9000,
        }
    }
}

/// A stack operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{service}: {message}")]
pub struct StackError {
    /// Which service.
    pub service: &'static str,
    /// What went wrong (and where its log is).
    pub message: String,
}

pub(crate) fn err(service: &'static str, message: impl Into<String>) -> StackError {
    StackError { service, message: message.into() }
}

/// One line of `stack status`.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    /// Service name.
    pub name: &'static str,
    /// Address it answers on.
    pub addr: String,
    /// Whether it answers.
    pub up: bool,
    /// Extra detail (pid, version, log path).
    pub detail: String,
}

/// Installs what is missing and starts every service that is not answering;
/// then creates the topics and registers the schemas. Prints what it did.
pub async fn up(cfg: &LifecycleConfig) -> Result<(), StackError> {
    let s = &cfg.stack;
    std::fs::create_dir_all(s.data_dir.join("logs")).map_err(|e| err("stack", e.to_string()))?;
    std::fs::create_dir_all(s.data_dir.join("run")).map_err(|e| err("stack", e.to_string()))?;
    postgres::up(cfg).await?;
    kafka::up(s).await?;
    clickhouse::up(s).await?;
    registry::up(cfg).await?;
    crate::setup::topics_and_schemas(cfg).await.map_err(|e| err("setup", e))?;
    python::up(s)?;
    node::up(s)?;
    // Third-party clients the tests and benchmarks run against the broker.
    proc::ensure_tool("tools", "kcat", "kcat")?;
    Ok(())
}

/// Stops the services this project started (by pid file), newest first.
pub async fn down(cfg: &LifecycleConfig) -> Result<(), StackError> {
    registry::down(&cfg.stack)?;
    clickhouse::down(&cfg.stack)?;
    kafka::down(&cfg.stack)?;
    postgres::down(&cfg.stack)?;
    Ok(())
}

/// Health of each service.
pub async fn status(cfg: &LifecycleConfig) -> Vec<ServiceStatus> {
    vec![
        postgres::status(cfg).await,
        kafka::status(&cfg.stack).await,
        clickhouse::status(&cfg.stack).await,
        registry::status(cfg).await,
    ]
}

/// Waits until `check` passes or `timeout` elapses.
pub(crate) async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
