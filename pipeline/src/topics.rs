//! Topics as a logical enum; their real names come from configuration.

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
}

/// Real topic names; every name may be overridden, and `prefix` is put in front
/// of all of them (tests use a unique prefix each, so they can run together).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl TopicNames {
    /// Names with only a prefix.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Self::default() }
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
}
