//! Topic creation by the project (never broker auto-create).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::config::KafkaConfig;

/// A topic the project needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Real topic name.
    pub name: String,
    /// Partition count.
    pub partitions: u16,
    /// Log compaction instead of time retention.
    pub compacted: bool,
}

/// What [`ensure_topics`] found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    /// Created now.
    Created,
    /// Already there with this many partitions.
    Existed(usize),
}

/// Creates every missing topic with its partition count and reports the state
/// of each. An existing topic with another partition count is reported, not changed.
pub async fn ensure_topics(cfg: &KafkaConfig, specs: &[TopicSpec]) -> Result<Vec<(String, TopicState)>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = cfg.admin().create()?;
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            let t = NewTopic::new(&s.name, i32::from(s.partitions), TopicReplication::Fixed(1));
            if s.compacted { t.set("cleanup.policy", "compact") } else { t }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(new.iter(), &opts).await?;
    let mut out = Vec::with_capacity(specs.len());
    for (spec, result) in specs.iter().zip(results) {
        match result {
            Ok(_) => out.push((spec.name.clone(), TopicState::Created)),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let md = admin.inner().fetch_metadata(Some(&spec.name), Duration::from_secs(10))?;
                let n = md.topics().iter().find(|t| t.name() == spec.name).map_or(0, |t| t.partitions().len());
                if n != usize::from(spec.partitions) {
                    tracing::warn!(topic = %spec.name, expected = spec.partitions, actual = n, "topic exists with another partition count");
                }
                out.push((spec.name.clone(), TopicState::Existed(n)));
            }
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code))
                    .inspect_err(|_| tracing::error!(topic = %name, %code, "create topic failed"));
            }
        }
    }
    Ok(out)
}

/// Deletes `names` (each once: a repeated name makes librdkafka answer with
/// fewer results than requested, which the rdkafka crate does not survive).
/// Topics that do not exist are not an error.
pub async fn delete_topics(cfg: &KafkaConfig, names: &[String]) -> Result<(), KafkaError> {
    let mut unique: Vec<&str> = names.iter().map(String::as_str).collect();
    unique.sort_unstable();
    unique.dedup();
    if unique.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = cfg.admin().create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.delete_topics(&unique, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => tracing::warn!(topic = %name, %code, "delete topic failed"),
        }
    }
    Ok(())
}
