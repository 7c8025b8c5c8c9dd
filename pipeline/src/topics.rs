//! Topics as a logical enum; their real names come from configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every topic the pipeline reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Events as produced (Confluent Avro or JSON), keyed by user_id.
    EventsRaw,
    /// Validated events, Confluent Avro, keyed by user_id.
    EventsValid,
    /// Rejected records with reason codes, JSON.
    EventsDlq,
    /// Latest profile per user, compacted.
    ProfilesChangelog,
    /// Lifecycle stage transitions, JSON, keyed by user_id.
    LifecycleEvents,
    /// Commands that start workflows.
    WorkflowCommands,
    /// Workflow lifecycle events.
    WorkflowEvents,
    /// Workflow instances that exhausted their retries.
    WorkflowDlq,
    /// Segment membership changes (entered / exited), JSON, keyed by user_id.
    SegmentMemberships,
}

impl Topic {
    /// Every topic, in a fixed order.
    pub const ALL: [Topic; 9] = [
        Self::EventsRaw,
        Self::EventsValid,
        Self::EventsDlq,
        Self::ProfilesChangelog,
        Self::LifecycleEvents,
        Self::WorkflowCommands,
        Self::WorkflowEvents,
        Self::WorkflowDlq,
        Self::SegmentMemberships,
    ];

    /// The default name, as in the design document.
    pub fn default_name(self) -> &'static str {
        match self {
            Self::EventsRaw => "events.raw",
            Self::EventsValid => "events.valid",
            Self::EventsDlq => "events.dlq",
            Self::ProfilesChangelog => "profiles.changelog",
            Self::LifecycleEvents => "lifecycle.events",
            Self::WorkflowCommands => "workflow.commands",
            Self::WorkflowEvents => "workflow.events",
            Self::WorkflowDlq => "workflow.dlq",
            Self::SegmentMemberships => "segments.memberships",
        }
    }

    /// Default partition count. Event topics are partitioned by user_id, so the
    /// count bounds the number of processor instances that share the work.
    pub fn default_partitions(self) -> u16 {
        match self {
            Self::EventsDlq | Self::WorkflowDlq => 1,
            _ => 4,
        }
    }

    /// Whether the topic is log-compacted (keeps the latest record per key).
    pub fn compacted(self) -> bool {
        matches!(self, Self::ProfilesChangelog)
    }

    /// The topic's key in `[topics.settings]`: its default name with `_` for `.`.
    pub fn key(self) -> &'static str {
        match self {
            Self::EventsRaw => "events_raw",
            Self::EventsValid => "events_valid",
            Self::EventsDlq => "events_dlq",
            Self::ProfilesChangelog => "profiles_changelog",
            Self::LifecycleEvents => "lifecycle_events",
            Self::WorkflowCommands => "workflow_commands",
            Self::WorkflowEvents => "workflow_events",
            Self::WorkflowDlq => "workflow_dlq",
            Self::SegmentMemberships => "segments_memberships",
        }
    }
}

/// Declared settings of one topic; unset keys take the topic's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSettings {
    /// Partition count (the most instances of a stage that share the topic's work).
    pub partitions: Option<u16>,
    /// `retention.ms` (unset: the broker's default; `-1`: forever).
    pub retention_ms: Option<i64>,
    /// `cleanup.policy`: `delete`, `compact` or `compact,delete` (default: `compact`
    /// for profiles.changelog, `delete` for the others).
    pub cleanup_policy: Option<String>,
}

/// What a topic is declared to be: the input of `lifecycle topics apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDeclaration {
    /// Real name.
    pub name: String,
    /// Partitions.
    pub partitions: u16,
    /// Replicas per partition.
    pub replication_factor: u16,
    /// Managed topic configuration, in a fixed order.
    pub configs: Vec<(String, String)>,
}

/// The topics as configuration declares them: real names (every name may be
/// overridden, and `prefix` is put in front of all of them; tests use a unique
/// prefix each, so they can run together), replication and per-topic settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicNames {
    /// Put in front of every topic name, e.g. `staging.`.
    pub prefix: String,
    /// Name of the raw events topic (default `events.raw`).
    pub events_raw: Option<String>,
    /// Name of the valid events topic (default `events.valid`).
    pub events_valid: Option<String>,
    /// Name of the event dead-letter topic (default `events.dlq`).
    pub events_dlq: Option<String>,
    /// Replicas of every topic's partitions (1 for the local single-node
    /// stack; 3 on a production cluster).
    pub replication_factor: u16,
    /// `min.insync.replicas` of every topic (unset: the broker's default; 2
    /// with a replication factor of 3 keeps acknowledged writes through the
    /// loss of one broker).
    pub min_insync_replicas: Option<u16>,
    /// Per-topic settings by key (`events_raw`, `events_valid`, `events_dlq`,
    /// `profiles_changelog`, `lifecycle_events`, `workflow_commands`,
    /// `workflow_events`, `workflow_dlq`, `segments_memberships`).
    pub settings: BTreeMap<String, TopicSettings>,
}

impl Default for TopicNames {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            events_raw: None,
            events_valid: None,
            events_dlq: None,
            replication_factor: 1,
            min_insync_replicas: None,
            settings: BTreeMap::new(),
        }
    }
}

impl TopicNames {
    /// Names with only a prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Self::default() }
    }

    /// Checks the settings: known keys, positive counts, known cleanup policies.
    pub fn validate(&self) -> Result<(), String> {
        if self.replication_factor == 0 {
            return Err("topics.replication_factor must be positive".into());
        }
        if let Some(m) = self.min_insync_replicas
            && (m == 0 || m > self.replication_factor)
        {
            return Err(format!(
                "topics.min_insync_replicas must be 1..={} (the replication factor)",
                self.replication_factor
            ));
        }
        for (key, s) in &self.settings {
            if !Topic::ALL.iter().any(|t| t.key() == key) {
                let keys: Vec<&str> = Topic::ALL.iter().map(|t| t.key()).collect();
                return Err(format!("topics.settings.{key}: no such topic (one of {})", keys.join(", ")));
            }
            if s.partitions == Some(0) {
                return Err(format!("topics.settings.{key}.partitions must be positive"));
            }
            if let Some(p) = &s.cleanup_policy
                && !["delete", "compact", "compact,delete", "delete,compact"].contains(&p.as_str())
            {
                return Err(format!(
                    "topics.settings.{key}.cleanup_policy: '{p}' is not delete, compact or compact,delete"
                ));
            }
        }
        Ok(())
    }

    /// What `topic` is declared to be.
    pub fn declaration(&self, topic: Topic) -> TopicDeclaration {
        let s = self.settings.get(topic.key()).cloned().unwrap_or_default();
        let policy = s.cleanup_policy.unwrap_or_else(|| (if topic.compacted() { "compact" } else { "delete" }).into());
        let mut configs = vec![("cleanup.policy".to_owned(), policy)];
        if let Some(m) = self.min_insync_replicas {
            configs.push(("min.insync.replicas".into(), m.to_string()));
        }
        if let Some(r) = s.retention_ms {
            configs.push(("retention.ms".into(), r.to_string()));
        }
        TopicDeclaration {
            name: self.name(topic),
            partitions: s.partitions.unwrap_or_else(|| topic.default_partitions()),
            replication_factor: self.replication_factor,
            configs,
        }
    }

    /// The real name of a topic.
    pub fn name(&self, topic: Topic) -> String {
        let custom = match topic {
            Topic::EventsRaw => self.events_raw.as_deref(),
            Topic::EventsValid => self.events_valid.as_deref(),
            Topic::EventsDlq => self.events_dlq.as_deref(),
            _ => None,
        };
        format!("{}{}", self.prefix, custom.unwrap_or(topic.default_name()))
    }

    /// The Confluent TopicNameStrategy subject of a topic's values.
    pub fn value_subject(&self, topic: Topic) -> String {
        format!("{}-value", self.name(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefix_and_override() {
        let mut names = TopicNames::with_prefix("t1.");
        assert_eq!(names.name(Topic::EventsRaw), "t1.events.raw");
        names.events_dlq = Some("dead".into());
        assert_eq!(names.name(Topic::EventsDlq), "t1.dead");
        assert_eq!(names.value_subject(Topic::EventsValid), "t1.events.valid-value");
    }

    #[test]
    fn declarations_take_settings_over_the_topic_defaults() {
        let mut names = TopicNames::default();
        let d = names.declaration(Topic::ProfilesChangelog);
        assert_eq!((d.partitions, d.replication_factor), (4, 1));
        assert_eq!(d.configs, vec![("cleanup.policy".to_owned(), "compact".to_owned())]);
        names.replication_factor = 3;
        names.min_insync_replicas = Some(2);
        names.settings.insert(
            "events_raw".into(),
            TopicSettings { partitions: Some(12), retention_ms: Some(604_800_000), cleanup_policy: None },
        );
        let d = names.declaration(Topic::EventsRaw);
        assert_eq!((d.name.as_str(), d.partitions, d.replication_factor), ("events.raw", 12, 3));
        assert_eq!(
            d.configs,
            vec![
                ("cleanup.policy".to_owned(), "delete".to_owned()),
                ("min.insync.replicas".to_owned(), "2".to_owned()),
                ("retention.ms".to_owned(), "604800000".to_owned()),
            ]
        );
        names.validate().expect("valid");
        names.settings.insert("events_row".into(), TopicSettings::default());
        assert!(names.validate().expect_err("typo").contains("events_row"));
        names.settings.clear();
        names.min_insync_replicas = Some(4);
        assert!(names.validate().is_err());
    }
}
