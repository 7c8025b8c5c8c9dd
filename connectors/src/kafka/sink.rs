//! A producer that reports success only when every record of a batch is acknowledged.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::config::KafkaConfig;

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Real topic name.
    pub topic: String,
    /// Key (partitioning: the same key always lands on the same partition).
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

/// A producer that keeps per-partition order (idempotent when `kafka.idempotence` is set).
#[derive(Clone)]
pub struct KafkaSink {
    producer: FutureProducer,
}

impl KafkaSink {
    /// Creates the producer.
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Self { producer: cfg.producer().create()? })
    }

    /// Produces every record and waits for every acknowledgement; the first
    /// failure is returned (records of a failed batch may be partly written:
    /// the caller retries the batch, so delivery is at-least-once).
    pub async fn send_all(&self, records: &[OutRecord]) -> Result<(), KafkaError> {
        let sends = records.iter().map(|r| {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
            }
            let mut rec = FutureRecord::<[u8], [u8]>::to(&r.topic).payload(&r.payload).headers(headers);
            if let Some(k) = &r.key {
                rec = rec.key(k);
            }
            self.producer.send(rec, Duration::from_secs(30))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
        Ok(())
    }

    /// Waits until everything queued is delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
