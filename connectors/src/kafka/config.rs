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
    /// Use librdkafka's idempotent producer. Off by default: producers are then
    /// ordered at-least-once (one request in flight per broker, so a retry never
    /// overtakes a later request; a retried request may write its records twice).
    /// Every stage is at-least-once anyway (a crash between produce and commit
    /// re-sends a batch) and every consumer deduplicates, so idempotence adds
    /// nothing the pipeline relies on, and on tansu it costs a producing stage
    /// about 2.7x the CPU: its in-flight cap (5 requests per partition) is checked
    /// after the broker thread has scheduled an immediate wake-up, so the thread
    /// spins until the slow acknowledgements return.
    pub idempotence: bool,
    /// Extra librdkafka properties applied to every client last (e.g.
    /// `security.protocol`, `sasl.mechanisms`). Values are never logged.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self { bootstrap_servers: "127.0.0.1:9092".into(), idempotence: false, properties: BTreeMap::new() }
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

    /// Producer settings: acks from all in-sync replicas, small linger for
    /// batching, per-partition order kept across retries, either by idempotence
    /// (`idempotence = true`) or by a single request in flight.
    pub fn producer(&self) -> ClientConfig {
        let (idempotent, in_flight) = if self.idempotence { ("true", "5") } else { ("false", "1") };
        self.client(&[
            ("enable.idempotence", idempotent),
            ("max.in.flight.requests.per.connection", in_flight),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "200000"),
            ("message.timeout.ms", "60000"),
        ])
    }

    /// Consumer settings for `group`: no auto-commit (stages commit after their
    /// outputs are durable), start from the earliest offset when none is committed.
    /// Fetches wait at most 50 ms for data: tansu answers a fetch that finds too
    /// little only when the wait is over, not when records arrive, so librdkafka's
    /// 500 ms default added up to half a second per stage to end-to-end latency.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        self.client(&[
            ("group.id", group),
            ("fetch.wait.max.ms", "50"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_keep_partition_order_with_or_without_idempotence_and_user_properties_win() {
        let plain = KafkaConfig::default().producer();
        assert_eq!(plain.get("enable.idempotence"), Some("false"));
        assert_eq!(plain.get("max.in.flight.requests.per.connection"), Some("1"));
        assert_eq!(plain.get("acks"), Some("all"));

        let idempotent = KafkaConfig { idempotence: true, ..KafkaConfig::default() }.producer();
        assert_eq!(idempotent.get("enable.idempotence"), Some("true"));
        assert_eq!(idempotent.get("max.in.flight.requests.per.connection"), Some("5"));

        let mut forced = KafkaConfig::default();
        forced.properties.insert("max.in.flight.requests.per.connection".into(), "3".into());
        assert_eq!(forced.producer().get("max.in.flight.requests.per.connection"), Some("3"));
    }

    #[test]
    fn consumers_wait_briefly_for_data_unless_told_otherwise() {
        assert_eq!(KafkaConfig::default().consumer("g").get("fetch.wait.max.ms"), Some("50"));
        let mut cfg = KafkaConfig::default();
        cfg.properties.insert("fetch.wait.max.ms".into(), "500".into());
        assert_eq!(cfg.consumer("g").get("fetch.wait.max.ms"), Some("500"));
    }

    #[test]
    fn idempotence_is_off_unless_configured() {
        let cfg: KafkaConfig = serde_json::from_str(r#"{"idempotence": true}"#).expect("parse");
        assert!(cfg.idempotence);
        let cfg: KafkaConfig = serde_json::from_str(r#"{"bootstrap_servers": "k:9092"}"#).expect("parse");
        assert!(!cfg.idempotence);
    }
}
