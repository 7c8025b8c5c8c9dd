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
    /// Bootstrap servers and client id, then `specific`, then the user's
    /// properties last (so configuration can override any default).
    fn client(&self, specific: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set("client.id", "lifecycle");
        for (k, v) in specific {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Producer settings: idempotent, acks from all in-sync replicas, small linger
    /// for batching. Per-partition order is kept across retries.
    pub fn producer(&self) -> ClientConfig {
        self.client(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "200000"),
            ("message.timeout.ms", "60000"),
        ])
    }

    /// Consumer settings for `group`: no auto-commit (stages commit after their
    /// outputs are durable), start from the earliest offset when none is committed.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        self.client(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            ("allow.auto.create.topics", "false"),
        ])
    }

    /// Admin client settings.
    pub fn admin(&self) -> ClientConfig {
        self.client(&[])
    }
}
