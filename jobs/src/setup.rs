//! Idempotent setup shared by `stack up`, the demo and every stage: topics with
//! their partition counts, and the schemas registered.

use lifecycle_connectors::kafka::admin::{TopicSpec, TopicState, ensure_topics};
use lifecycle_pipeline::{Topic, TopicNames};
use lifecycle_schemas::client::{Registration, register_all};
use lifecycle_schemas::{RegistryClient, SchemaFiles};

use crate::config::LifecycleConfig;

/// Topic specs for every logical topic under `names`.
pub fn topic_specs(names: &TopicNames) -> Vec<TopicSpec> {
    Topic::ALL
        .iter()
        .map(|&t| TopicSpec { name: names.name(t), partitions: t.default_partitions(), compacted: t.compacted() })
        .collect()
}

/// Creates the topics and registers the schemas; prints a line for each.
pub async fn topics_and_schemas(cfg: &LifecycleConfig) -> Result<Registration, String> {
    let states =
        ensure_topics(&cfg.kafka, &topic_specs(&cfg.topics)).await.map_err(|e| format!("creating topics: {e}"))?;
    let line: Vec<String> = states
        .iter()
        .map(|(n, s)| match s {
            TopicState::Created => format!("{n} (created)"),
            TopicState::Existed(p) => format!("{n} ({p}p)"),
        })
        .collect();
    println!("topics: {}", line.join(", "));
    let reg = register(cfg).await?;
    println!(
        "schemas: envelope id {} ({}), {} event types registered",
        reg.valid_envelope_id,
        cfg.topics.value_subject(Topic::EventsValid),
        reg.event_types.len()
    );
    Ok(reg)
}

/// Registers the schemas only.
pub async fn register(cfg: &LifecycleConfig) -> Result<Registration, String> {
    let files = SchemaFiles::load(&cfg.schemas_dir()).map_err(|e| e.to_string())?;
    files.catalog().map_err(|e| e.to_string())?;
    let client = RegistryClient::new(&cfg.registry_url).map_err(|e| e.to_string())?;
    register_all(&client, &files, &cfg.topics).await.map_err(|e| format!("registering schemas: {e}"))
}
