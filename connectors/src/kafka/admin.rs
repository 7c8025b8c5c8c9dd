//! Topic creation by the project (never broker auto-create).

use std::time::Duration;

use std::collections::BTreeMap;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::config::KafkaConfig;

/// A topic as configuration declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Real topic name.
    pub name: String,
    /// Partition count.
    pub partitions: u16,
    /// Replicas of each partition.
    pub replication_factor: u16,
    /// Topic configuration the project manages (`cleanup.policy`, `retention.ms`,
    /// `min.insync.replicas`); other keys are left as they are.
    pub configs: Vec<(String, String)>,
}

/// What [`apply_topics`] found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicState {
    /// Created now.
    Created,
    /// Absent (only when checking, not applying).
    Missing,
    /// As declared.
    Unchanged,
    /// Changed now (partitions added, configuration set).
    Changed,
    /// Differs from the declaration in a way this command does not change
    /// (fewer partitions declared than it has, another replication factor), or
    /// in any way when only checking.
    Drift,
}

/// One line of the report of [`apply_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReport {
    /// Real topic name.
    pub name: String,
    /// What was found or done.
    pub state: TopicState,
    /// The differences, one sentence each.
    pub notes: Vec<String>,
}

impl std::fmt::Display for TopicReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            TopicState::Created => "created",
            TopicState::Missing => "missing",
            TopicState::Unchanged => "ok",
            TopicState::Changed => "changed",
            TopicState::Drift => "drift",
        };
        write!(f, "{}: {state}", self.name)?;
        if !self.notes.is_empty() {
            write!(f, " ({})", self.notes.join("; "))?;
        }
        Ok(())
    }
}

/// What a topic has on the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicFound {
    /// Partition count.
    pub partitions: usize,
    /// Replicas of its first partition.
    pub replication_factor: usize,
    /// Values of the managed configuration keys.
    pub configs: BTreeMap<String, String>,
}

/// How a topic on the cluster differs from its declaration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Differences {
    /// Partitions to grow to (fewer exist than declared).
    pub grow_to: Option<usize>,
    /// The managed configuration differs (it can be set).
    pub configs_differ: bool,
    /// A difference this project does not change: more partitions than
    /// declared, another replication factor.
    pub unfixable: bool,
    /// One sentence per difference.
    pub notes: Vec<String>,
}

/// The differences between a declaration and what the cluster has.
pub fn compare(spec: &TopicSpec, found: &TopicFound) -> Differences {
    let mut notes = Vec::new();
    let mut unfixable = false;
    let wanted = usize::from(spec.partitions);
    let grow = match found.partitions.cmp(&wanted) {
        std::cmp::Ordering::Less => {
            notes.push(format!("{} partitions, declared {wanted}", found.partitions));
            Some(wanted)
        }
        std::cmp::Ordering::Greater => {
            unfixable = true;
            notes.push(format!(
                "{} partitions, declared {wanted}: partitions cannot be removed (declare {} or recreate the topic)",
                found.partitions, found.partitions
            ));
            None
        }
        std::cmp::Ordering::Equal => None,
    };
    if found.replication_factor != usize::from(spec.replication_factor) {
        unfixable = true;
        notes.push(format!(
            "replication factor {}, declared {}: reassign its partitions with Kafka's tools",
            found.replication_factor, spec.replication_factor
        ));
    }
    let mut configs_differ = false;
    for (k, v) in &spec.configs {
        let have = found.configs.get(k);
        if have != Some(v) {
            configs_differ = true;
            notes.push(format!("{k} is {}, declared {v}", have.map_or("unset", String::as_str)));
        }
    }
    Differences { grow_to: grow, configs_differ, unfixable, notes }
}

/// Names of the topics in `names` that do not exist on the cluster.
pub fn missing_topics(cfg: &KafkaConfig, names: &[&str]) -> Result<Vec<String>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = cfg.admin().create()?;
    let md = admin.inner().fetch_metadata(None, Duration::from_secs(10))?;
    let present: std::collections::HashSet<&str> =
        md.topics().iter().filter(|t| t.error().is_none()).map(|t| t.name()).collect();
    Ok(names.iter().filter(|n| !present.contains(**n)).map(|n| (*n).to_owned()).collect())
}

/// Compares every declared topic with the cluster and, when `apply`, creates
/// the missing ones, adds partitions where fewer exist than declared and sets
/// the managed configuration where it differs. Partitions are never removed
/// and replication factors never changed: those differences are reported.
pub async fn apply_topics(cfg: &KafkaConfig, specs: &[TopicSpec], apply: bool) -> Result<Vec<TopicReport>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = cfg.admin().create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let md = admin.inner().fetch_metadata(None, Duration::from_secs(10))?;
    let mut found: BTreeMap<String, TopicFound> = BTreeMap::new();
    for t in md.topics().iter().filter(|t| t.error().is_none()) {
        let replication_factor = t.partitions().first().map_or(0, |p| p.replicas().len());
        found.insert(
            t.name().to_owned(),
            TopicFound { partitions: t.partitions().len(), replication_factor, configs: BTreeMap::new() },
        );
    }
    let existing: Vec<&TopicSpec> = specs.iter().filter(|s| found.contains_key(&s.name)).collect();
    if !existing.is_empty() {
        let resources: Vec<ResourceSpecifier<'_>> =
            existing.iter().map(|s| ResourceSpecifier::Topic(s.name.as_str())).collect();
        for (spec, described) in existing.iter().zip(admin.describe_configs(resources.iter(), &opts).await?) {
            let Ok(resource) = described else { continue };
            let entry = found.entry(spec.name.clone()).or_default();
            for (k, _) in &spec.configs {
                if let Some(v) = resource.get(k).and_then(|e| e.value.clone()) {
                    entry.configs.insert(k.clone(), v);
                }
            }
        }
    }
    let mut reports = Vec::with_capacity(specs.len());
    let mut to_create = Vec::new();
    for spec in specs {
        let Some(have) = found.get(&spec.name) else {
            if apply {
                to_create.push(spec);
            } else {
                reports.push(TopicReport { name: spec.name.clone(), state: TopicState::Missing, notes: vec![] });
            }
            continue;
        };
        let d = compare(spec, have);
        let state = if d.notes.is_empty() {
            TopicState::Unchanged
        } else if apply && (d.grow_to.is_some() || d.configs_differ) {
            if let Some(n) = d.grow_to {
                let partitions = NewPartitions::new(&spec.name, n);
                for r in admin.create_partitions([&partitions], &opts).await? {
                    r.map_err(|(_, code)| KafkaError::AdminOp(code))?;
                }
            }
            if d.configs_differ {
                let mut change = AlterConfig::new(ResourceSpecifier::Topic(&spec.name));
                for (k, v) in &spec.configs {
                    change = change.set(k, v);
                }
                for r in admin.alter_configs([&change], &opts).await? {
                    r.map_err(|(_, code)| KafkaError::AdminOp(code))?;
                }
            }
            if d.unfixable { TopicState::Drift } else { TopicState::Changed }
        } else {
            TopicState::Drift
        };
        reports.push(TopicReport { name: spec.name.clone(), state, notes: d.notes });
    }
    if !to_create.is_empty() {
        let new: Vec<NewTopic<'_>> = to_create
            .iter()
            .map(|s| {
                let mut t = NewTopic::new(
                    &s.name,
                    i32::from(s.partitions),
                    TopicReplication::Fixed(i32::from(s.replication_factor)),
                );
                for (k, v) in &s.configs {
                    t = t.set(k, v);
                }
                t
            })
            .collect();
        for (spec, result) in to_create.iter().zip(admin.create_topics(new.iter(), &opts).await?) {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    reports.push(TopicReport { name: spec.name.clone(), state: TopicState::Created, notes: vec![] })
                }
                Err((name, code)) => {
                    tracing::error!(topic = %name, %code, "create topic failed");
                    return Err(KafkaError::AdminOp(code));
                }
            }
        }
    }
    Ok(reports)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TopicSpec {
        TopicSpec {
            name: "events.raw".into(),
            partitions: 8,
            replication_factor: 3,
            configs: vec![("min.insync.replicas".into(), "2".into()), ("cleanup.policy".into(), "delete".into())],
        }
    }

    #[test]
    fn a_topic_as_declared_has_no_differences() {
        let found = TopicFound {
            partitions: 8,
            replication_factor: 3,
            configs: [("min.insync.replicas", "2"), ("cleanup.policy", "delete")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        assert_eq!(compare(&spec(), &found), Differences::default());
    }

    #[test]
    fn fewer_partitions_grow_and_other_differences_are_named() {
        let found = TopicFound {
            partitions: 4,
            replication_factor: 1,
            configs: [("cleanup.policy", "compact")].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
        };
        let d = compare(&spec(), &found);
        assert_eq!((d.grow_to, d.configs_differ, d.unfixable), (Some(8), true, true));
        assert_eq!(
            d.notes,
            vec![
                "4 partitions, declared 8".to_owned(),
                "replication factor 1, declared 3: reassign its partitions with Kafka's tools".to_owned(),
                "min.insync.replicas is unset, declared 2".to_owned(),
                "cleanup.policy is compact, declared delete".to_owned(),
            ]
        );
        let more = TopicFound { partitions: 12, ..found };
        assert_eq!(compare(&spec(), &more).grow_to, None, "partitions are never removed");
    }
}
