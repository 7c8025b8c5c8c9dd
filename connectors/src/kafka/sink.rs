//! A producer that reports success only when every record of a batch is acknowledged.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};

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
        send_all(&self.producer, records).await
    }

    /// Waits until everything queued is delivered.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

async fn send_all(producer: &FutureProducer, records: &[OutRecord]) -> Result<(), KafkaError> {
    let sends = records.iter().map(|r| {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
        }
        let mut rec = FutureRecord::<[u8], [u8]>::to(&r.topic).payload(&r.payload).headers(headers);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        producer.send(rec, Duration::from_secs(30))
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The transaction was aborted (a produce failed, the group moved on, the
    /// broker was unavailable): nothing of it is visible to `read_committed`
    /// readers. Rewind the consumer to its committed offsets and go on.
    #[error("transaction aborted: {0}")]
    Aborted(KafkaError),
    /// The producer can no longer be used (fenced by a newer instance with the
    /// same transactional id, or a fatal broker error): create a new one.
    #[error("transactional producer unusable: {0}")]
    Fatal(KafkaError),
}

/// A transactional producer: a batch's outputs and its consumed offsets are
/// committed in one Kafka transaction, so `read_committed` readers see every
/// input's output exactly once, whatever crashes in between.
pub struct TxSink {
    /// Records are handed to librdkafka without a future each, and nothing
    /// polls in the background: the commit serves the delivery reports, waits
    /// for every delivery and fails the transaction if one failed. (A polling
    /// thread made every commit wait about 100 ms, its poll interval.)
    producer: BaseProducer<TxContext>,
    id: String,
}

/// Remembers the first failed delivery of the open transaction, so the commit
/// stops waiting for the rest at once (a partition whose leader died fails
/// its records only when they time out; the others would be waited for in vain:
/// the transaction has to be aborted anyway).
#[derive(Default)]
struct TxContext {
    failed: Mutex<Option<KafkaError>>,
}

impl ClientContext for TxContext {}

impl ProducerContext for TxContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result
            && let Ok(mut failed) = self.failed.lock()
        {
            failed.get_or_insert_with(|| e.clone());
        }
    }
}

impl TxContext {
    fn take(&self) -> Option<KafkaError> {
        self.failed.lock().ok().and_then(|mut f| f.take())
    }

    fn has_failed(&self) -> bool {
        self.failed.lock().map(|f| f.is_some()).unwrap_or(false)
    }
}

/// How long one transactional call may take before it is treated as failed.
const TX_TIMEOUT: Duration = Duration::from_secs(30);

impl TxSink {
    /// Creates the producer and registers `transactional_id` with the broker,
    /// which aborts any transaction a previous producer with that id left open
    /// and fences that producer out.
    pub fn new(cfg: &KafkaConfig, transactional_id: &str) -> Result<Self, KafkaError> {
        let producer: BaseProducer<TxContext> =
            cfg.transactional_producer(transactional_id).create_with_context(TxContext::default())?;
        tokio::task::block_in_place(|| producer.init_transactions(TX_TIMEOUT))?;
        Ok(Self { producer, id: transactional_id.to_owned() })
    }

    /// The transactional id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Produces `records` and commits them together with `offsets` (the next
    /// offset to read per input partition) for the consumer group `group`.
    pub async fn commit_batch(
        &self,
        records: &[OutRecord],
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<(), TxError> {
        let classify = |e: KafkaError| match &e {
            KafkaError::Transaction(t) if t.is_fatal() => TxError::Fatal(e),
            _ => TxError::Aborted(e),
        };
        let committed = tokio::task::block_in_place(|| {
            self.producer.context().take();
            self.producer.begin_transaction()?;
            for r in records {
                self.enqueue(r)?;
            }
            self.producer.send_offsets_to_transaction(offsets, group, TX_TIMEOUT)?;
            self.commit_retrying()
        });
        match committed {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = classify(e);
                if let TxError::Aborted(_) = e
                    && let Err(abort) = tokio::task::block_in_place(|| self.abort_serving())
                {
                    return Err(TxError::Fatal(abort));
                }
                Err(e)
            }
        }
    }

    /// Hands one record to librdkafka, waiting while its queue is full.
    fn enqueue(&self, r: &OutRecord) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header { key: k, value: Some(v.as_slice()) });
        }
        let mut rec = BaseRecord::<[u8], [u8]>::to(&r.topic).payload(&r.payload).headers(headers);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Aborts the open transaction. librdkafka purges its records and waits
    /// until their delivery reports are served, which nothing does while
    /// `abort_transaction` blocks (a `BaseProducer` is served by `poll`): so
    /// the abort is asked for in short steps with the reports served between
    /// them, instead of one call that would wait out its whole timeout whenever
    /// records were still in flight (a partition leader lost mid-batch).
    fn abort_serving(&self) -> Result<(), KafkaError> {
        let deadline = std::time::Instant::now() + TX_TIMEOUT;
        loop {
            match self.producer.abort_transaction(Duration::from_millis(100)) {
                Err(KafkaError::Transaction(t)) if t.is_retriable() && std::time::Instant::now() < deadline => {
                    for _ in 0..20 {
                        self.producer.poll(Duration::from_millis(1));
                    }
                }
                other => return other,
            }
        }
    }

    /// Commits, retrying a commit librdkafka says may be retried (a timeout
    /// while the outcome is still pending).
    fn commit_retrying(&self) -> Result<(), KafkaError> {
        // Workaround: rdkafka 0.39's BaseProducer::poll serves events until its
        // whole timeout has passed, and the flush inside commit_transaction polls
        // for 100 ms at a time, so every commit took at least 100 ms. Serving the
        // delivery reports in 1 ms polls first leaves that flush nothing to wait for.
        let deadline = std::time::Instant::now() + TX_TIMEOUT;
        let context = self.producer.context();
        while self.producer.in_flight_count() > 0 && !context.has_failed() && std::time::Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(1));
        }
        if let Some(e) = context.take() {
            return Err(e);
        }
        let mut attempts = 0;
        loop {
            match self.producer.commit_transaction(TX_TIMEOUT) {
                Err(KafkaError::Transaction(t)) if t.is_retriable() && attempts < 3 => attempts += 1,
                other => return other,
            }
        }
    }
}
