//! Kafka client configuration.

use std::collections::BTreeMap;

use rdkafka::config::{FromClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientConfig, ClientContext};
use serde::{Deserialize, Serialize};

/// How to reach the brokers. Works unchanged against Apache Kafka, Redpanda or MSK.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Use the idempotent producer (on by default): a retried request never
    /// writes its records twice nor reorders them. Turn off only for a broker
    /// without idempotent producers; producers then keep order with one request
    /// in flight per connection and a retry may duplicate records.
    pub idempotence: bool,
    /// Let stages that read and write Kafka commit their outputs and input
    /// offsets in one Kafka transaction (exactly-once; on by default). Off: the
    /// at-least-once path for brokers without transactions (outputs acknowledged,
    /// then offsets committed; a crash in between repeats a batch).
    pub transactions: bool,
    /// How long the broker keeps a transaction of a producer that stopped
    /// answering open before aborting it, in milliseconds. It bounds how long
    /// `read_committed` readers wait behind a crashed stage's open transaction.
    pub transaction_timeout_ms: u32,
    /// Every stage aborts transactions that a partition holds open and no
    /// coordinator will ever end (Kafka can drop a transaction's markers when a
    /// partition is briefly leaderless, which stops `read_committed` readers
    /// for good) once their producer's last write is this old, in
    /// milliseconds; 0 turns the guard off. A transaction its coordinator is
    /// still working on is never touched. PLAINTEXT listeners only.
    pub hanging_transaction_abort_after_ms: u64,
    /// Extra librdkafka properties applied to every client last (e.g.
    /// `security.protocol`, `sasl.mechanisms`). Only the values of known
    /// harmless properties are ever printed; passwords and keys never are.
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("idempotence", &self.idempotence)
            .field("transactions", &self.transactions)
            .field("transaction_timeout_ms", &self.transaction_timeout_ms)
            .field("hanging_transaction_abort_after_ms", &self.hanging_transaction_abort_after_ms)
            .field(
                "properties",
                &crate::secret::kafka_properties_shown(self.properties.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            )
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            idempotence: true,
            transactions: true,
            transaction_timeout_ms: 10_000,
            hanging_transaction_abort_after_ms: 60_000,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Bootstrap servers and client id, then `specific`, then the user's
    /// properties last (so configuration can override any default).
    fn client(&self, specific: &[(&str, &str)]) -> ClientSettings {
        let mut c = ClientSettings(ClientConfig::new());
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set("client.id", "lifecycle");
        for (k, v) in specific {
            c.set(k, v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Producer settings: acks from all in-sync replicas, small linger for
    /// batching, per-partition order kept across retries, either by idempotence
    /// (`idempotence = true`) or by a single request in flight.
    pub fn producer(&self) -> ClientSettings {
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

    /// Settings of a transactional producer with `transactional_id` (always
    /// idempotent: transactions need it).
    pub fn transactional_producer(&self, transactional_id: &str) -> ClientSettings {
        let mut c = self.producer();
        c.set("enable.idempotence", "true");
        c.set("max.in.flight.requests.per.connection", "5");
        c.set("transactional.id", transactional_id);
        c.set("transaction.timeout.ms", &self.transaction_timeout_ms.to_string());
        // Delivery must finish within the transaction's lifetime.
        c.set("message.timeout.ms", &self.transaction_timeout_ms.to_string());
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Consumer settings for `group`: no auto-commit (stages commit after their
    /// outputs are durable), start from the earliest offset when none is
    /// committed, and read only committed transactions.
    pub fn consumer(&self, group: &str) -> ClientSettings {
        self.client(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "false"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            ("allow.auto.create.topics", "false"),
        ])
    }

    /// Admin client settings.
    pub fn admin(&self) -> ClientSettings {
        self.client(&[])
    }
}

/// librdkafka settings ready to create a client. Unlike rdkafka's
/// `ClientConfig`, neither its `Debug` nor a creation error shows a secret
/// value (librdkafka's error for a bad property repeats the value given).
#[derive(Clone)]
pub struct ClientSettings(ClientConfig);

impl ClientSettings {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.0.set(key, value);
        self
    }

    /// Creates a client with the default context.
    pub fn create<T: FromClientConfig>(&self) -> KafkaResult<T> {
        self.0.create().map_err(redacted)
    }

    /// Creates a client with `context`.
    pub fn create_with_context<C: ClientContext, T: FromClientConfigAndContext<C>>(
        &self,
        context: C,
    ) -> KafkaResult<T> {
        self.0.create_with_context(context).map_err(redacted)
    }
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClientSettings").field(&crate::secret::kafka_properties_shown(self.0.config_map())).finish()
    }
}

/// A client creation error with the offending value redacted (unless harmless).
fn redacted(e: KafkaError) -> KafkaError {
    match e {
        KafkaError::ClientConfig(code, desc, key, value) => {
            let shown = crate::secret::kafka_property_shown(&key, &value);
            let desc = if shown == value || value.is_empty() { desc } else { desc.replace(&value, shown) };
            KafkaError::ClientConfig(code, desc, key, shown.to_owned())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_are_idempotent_by_default_keep_order_without_it_and_user_properties_win() {
        let plain = KafkaConfig::default().producer();
        assert_eq!(plain.get("enable.idempotence"), Some("true"));
        assert_eq!(plain.get("acks"), Some("all"));

        let ordered = KafkaConfig { idempotence: false, ..KafkaConfig::default() }.producer();
        assert_eq!(ordered.get("enable.idempotence"), Some("false"));
        assert_eq!(ordered.get("max.in.flight.requests.per.connection"), Some("1"));

        let mut forced = KafkaConfig::default();
        forced.properties.insert("max.in.flight.requests.per.connection".into(), "3".into());
        assert_eq!(forced.producer().get("max.in.flight.requests.per.connection"), Some("3"));
    }

    #[test]
    fn transactional_producers_are_idempotent_and_bounded_by_the_transaction_timeout() {
        let cfg = KafkaConfig { idempotence: false, ..KafkaConfig::default() };
        let tx = cfg.transactional_producer("validate-1");
        assert_eq!(tx.get("transactional.id"), Some("validate-1"));
        assert_eq!(tx.get("enable.idempotence"), Some("true"));
        assert_eq!(tx.get("transaction.timeout.ms"), Some("10000"));
        assert_eq!(tx.get("message.timeout.ms"), Some("10000"));
    }

    #[test]
    fn consumers_read_committed_and_commit_explicitly() {
        let c = KafkaConfig::default().consumer("g");
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("group.id"), Some("g"));
    }

    #[test]
    fn property_values_never_print() {
        let mut cfg = KafkaConfig::default();
        cfg.properties.insert("sasl.password".into(), "hunter2-secret".into());
        cfg.properties.insert("security.protocol".into(), "SASL_SSL".into());
        let shown = format!("{cfg:?}");
        assert!(shown.contains("sasl.password") && !shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("SASL_SSL"), "harmless values are shown: {shown}");
    }

    #[test]
    fn a_client_that_cannot_be_created_does_not_repeat_a_secret_value() {
        let mut cfg = KafkaConfig::default();
        // Refused by librdkafka (this build has no OpenSSL, and "Nope" is no protocol).
        cfg.properties.insert("ssl.key.password".into(), "hunter2-secret".into());
        let e = cfg.producer().create::<rdkafka::producer::BaseProducer>().err().expect("refused").to_string();
        assert!(e.contains("ssl.key.password") && !e.contains("hunter2-secret"), "{e}");
        cfg.properties.clear();
        cfg.properties.insert("security.protocol".into(), "Nope".into());
        let e = cfg.admin().create::<rdkafka::producer::BaseProducer>().err().expect("refused").to_string();
        assert!(e.contains("Nope"), "a harmless value is kept: {e}");
        cfg.properties.insert("sasl.password".into(), "hunter2-secret".into());
        assert!(!format!("{:?}", cfg.consumer("g")).contains("hunter2-secret"));
    }

    #[test]
    fn idempotence_and_transactions_are_on_unless_configured_off() {
        let cfg: KafkaConfig = serde_json::from_str(r#"{"idempotence": false, "transactions": false}"#).expect("parse");
        assert!(!cfg.idempotence && !cfg.transactions);
        let cfg: KafkaConfig = serde_json::from_str(r#"{"bootstrap_servers": "k:9092"}"#).expect("parse");
        assert!(cfg.idempotence && cfg.transactions);
    }
}
