//! Kafka client configuration.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// How to reach the brokers. Works unchanged against Apache Kafka, Redpanda,
/// MSK or the local tansu broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Extra librdkafka properties applied to every client last (e.g.
    /// `security.protocol`, `sasl.mechanisms`). Values are never logged.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self { bootstrap_servers: "127.0.0.1:9092".into(), properties: BTreeMap::new() }
    }
}

impl KafkaConfig {
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set("client.id", "lifecycle");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Producer settings: idempotent, acks from all in-sync replicas, small linger
    /// for batching. Per-partition order is kept across retries.
    pub fn producer(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set("client.id", "lifecycle");
        c.set("enable.idempotence", "true");
        c.set("acks", "all");
        c.set("linger.ms", "5");
        c.set("batch.num.messages", "10000");
        c.set("queue.buffering.max.messages", "200000");
        c.set("message.timeout.ms", "60000");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Consumer settings for `group`: no auto-commit (stages commit after their
    /// outputs are durable), start from the earliest offset when none is committed.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group);
        c.set("enable.auto.commit", "false");
        c.set("enable.auto.offset.store", "false");
        c.set("auto.offset.reset", "earliest");
        c.set("enable.partition.eof", "false");
        c.set("session.timeout.ms", "10000");
        c.set("heartbeat.interval.ms", "1000");
        c.set("allow.auto.create.topics", "false");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Admin client settings.
    pub fn admin(&self) -> ClientConfig {
        self.base()
    }
}
