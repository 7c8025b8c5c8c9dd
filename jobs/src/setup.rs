//! Idempotent setup shared by `stack up`, `topics apply` and the demo: topics
//! as configuration declares them, and the schemas registered; and the check
//! every stage makes at start that its topics exist.

use lifecycle_connectors::kafka::admin::{TopicReport, TopicSpec, TopicState, apply_topics, missing_topics};
use lifecycle_pipeline::{Topic, TopicNames};
use lifecycle_schemas::client::{Registration, register_all};
use lifecycle_schemas::{RegistryClient, SchemaFiles};

use crate::config::LifecycleConfig;

/// Topic specs for every logical topic under `names`.
pub fn topic_specs(names: &TopicNames) -> Vec<TopicSpec> {
    Topic::ALL
        .iter()
        .map(|&t| {
            let d = names.declaration(t);
            TopicSpec {
                name: d.name,
                partitions: d.partitions,
                replication_factor: d.replication_factor,
                configs: d.configs,
            }
        })
        .collect()
}

/// Compares every declared topic with the cluster; when `apply`, creates,
/// grows and configures them (`lifecycle topics apply`), else only reports
/// (`lifecycle topics check`).
pub async fn topics(cfg: &LifecycleConfig, apply: bool) -> Result<Vec<TopicReport>, String> {
    cfg.topics.validate()?;
    apply_topics(&cfg.kafka, &topic_specs(&cfg.topics), apply).await.map_err(|e| format!("topics: {e}"))
}

/// Fails with one clear message when any of `needed` does not exist: a
/// stage must not start on topics nobody created (it would wait forever).
pub fn require_topics(cfg: &LifecycleConfig, needed: &[Topic]) -> Result<(), String> {
    let names: Vec<String> = needed.iter().map(|&t| cfg.topics.name(t)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let missing = missing_topics(&cfg.kafka, &refs).map_err(|e| format!("checking topics: {e}"))?;
    if missing.is_empty() {
        return Ok(());
    }
    let config = cfg.source.as_ref().map_or(String::new(), |p| format!(" --config {}", p.display()));
    Err(format!(
        "topic{} {} {} not exist on {}; create {} with `lifecycle{config} topics apply`",
        if missing.len() == 1 { "" } else { "s" },
        missing.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(", "),
        if missing.len() == 1 { "does" } else { "do" },
        cfg.kafka.bootstrap_servers,
        if missing.len() == 1 { "it" } else { "them" },
    ))
}

/// Creates the topics and registers the schemas; prints a line for each.
pub async fn topics_and_schemas(cfg: &LifecycleConfig) -> Result<Registration, String> {
    let reports = topics(cfg, true).await?;
    let line: Vec<String> = reports
        .iter()
        .map(|r| match r.state {
            TopicState::Created => format!("{} (created)", r.name),
            TopicState::Unchanged => format!("{} (ok)", r.name),
            _ => r.to_string(),
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
