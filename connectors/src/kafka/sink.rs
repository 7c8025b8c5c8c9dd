//! A producer that reports success only when every record of a batch is acknowledged.

use std::sync::{Arc, Mutex};
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

impl OutRecord {
    /// The headers as librdkafka takes them.
    fn owned_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(OwnedHeaders::new_with_capacity(self.headers.len()), |h, (k, v)| {
            h.insert(Header { key: k, value: Some(v.as_slice()) })
        })
    }
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
        let mut rec = FutureRecord::<[u8], [u8]>::to(&r.topic).payload(&r.payload).headers(r.owned_headers());
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
    /// A transactional call did not return within [`WATCHDOG`] although
    /// librdkafka was asked to give up after [`TX_TIMEOUT`] (seen once:
    /// `send_offsets_to_transaction` waiting forever right after a broker
    /// restart). The outcome is unknown and the producer is left to its call:
    /// create a new one with the same transactional id, which fences this one.
    #[error("transactional producer stuck: {0} did not return within {secs} s", secs = WATCHDOG.as_secs())]
    Stuck(&'static str),
}

impl TxError {
    /// Whether the transaction's outcome is unknown and the producer must be replaced.
    pub fn needs_new_producer(&self) -> bool {
        matches!(self, Self::Fatal(_) | Self::Stuck(_))
    }
}

/// A transactional producer: a batch's outputs and its consumed offsets are
/// committed in one Kafka transaction, so `read_committed` readers see every
/// input's output exactly once, whatever crashes in between.
pub struct TxSink {
    /// Records are handed to librdkafka without a future each, and nothing
    /// polls in the background: the commit serves the delivery reports, waits
    /// for every delivery and fails the transaction if one failed. (A polling
    /// thread made every commit wait about 100 ms, its poll interval.)
    /// Shared with the blocking thread of a watched call, which may outlive
    /// this sink when the call never returns.
    producer: Arc<BaseProducer<TxContext>>,
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
pub const TX_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a transactional call may block before it is given up on: its own
/// timeout plus a margin for librdkafka to notice it.
pub const WATCHDOG: Duration = Duration::from_secs(TX_TIMEOUT.as_secs() + 15);

type Tx = BaseProducer<TxContext>;

impl TxSink {
    /// Creates the producer and registers `transactional_id` with the broker,
    /// which aborts any transaction a previous producer with that id left open
    /// and fences that producer out.
    pub async fn new(cfg: &KafkaConfig, transactional_id: &str) -> Result<Self, TxError> {
        let producer: Tx = cfg
            .transactional_producer(transactional_id)
            .create_with_context(TxContext::default())
            .map_err(TxError::Fatal)?;
        let sink = Self { producer: Arc::new(producer), id: transactional_id.to_owned() };
        sink.watched("init_transactions", |p| p.init_transactions(TX_TIMEOUT)).await?.map_err(TxError::Fatal)?;
        Ok(sink)
    }

    /// The transactional id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs a blocking call on the producer on a thread of its own and waits
    /// at most [`WATCHDOG`] for it. A call that overruns is left running (it holds
    /// its own reference to the producer) and reported as [`TxError::Stuck`].
    async fn watched<T: Send + 'static>(
        &self,
        what: &'static str,
        call: impl FnOnce(&Tx) -> T + Send + 'static,
    ) -> Result<T, TxError> {
        self.watched_for(WATCHDOG, what, call).await
    }

    async fn watched_for<T: Send + 'static>(
        &self,
        limit: Duration,
        what: &'static str,
        call: impl FnOnce(&Tx) -> T + Send + 'static,
    ) -> Result<T, TxError> {
        // A thread of its own, not tokio's blocking pool: a runtime waits for
        // its blocking tasks when it shuts down, so a call that never returns
        // would keep the process from stopping at SIGTERM.
        let producer = Arc::clone(&self.producer);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("kafka-tx-call".into()).spawn(move || {
            let _ = tx.send(call(&producer));
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, call = what, "cannot start a thread for a transactional call");
            return Err(TxError::Stuck(what));
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(out)) => Ok(out),
            // The thread ended without an answer: the call panicked.
            Ok(Err(_)) => panic!("transactional call {what} panicked"),
            Err(_) => {
                tracing::error!(
                    transactional_id = %self.id,
                    call = what,
                    "a transactional call did not return; replacing the producer (its thread is left behind)"
                );
                Err(TxError::Stuck(what))
            }
        }
    }

    /// Produces `records` and commits them together with `offsets` (the next
    /// offset to read per input partition) for the consumer group `group`.
    pub async fn commit_batch(
        &self,
        records: &[OutRecord],
        offsets: TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> Result<(), TxError> {
        let classify = |e: KafkaError| match &e {
            KafkaError::Transaction(t) if t.is_fatal() => TxError::Fatal(e),
            _ => TxError::Aborted(e),
        };
        // Beginning and enqueueing are local (they wait only while librdkafka's
        // queue is full, which its message timeout bounds); the calls that wait
        // for the coordinator run watched.
        let begun = tokio::task::block_in_place(|| {
            self.producer.context().take();
            self.producer.begin_transaction()?;
            records.iter().try_for_each(|r| enqueue(&self.producer, r))
        });
        let committed = match begun {
            Ok(()) => {
                let sent = self
                    .watched("send_offsets_to_transaction", move |p| {
                        p.send_offsets_to_transaction(&offsets, &group, TX_TIMEOUT)
                    })
                    .await?;
                match sent {
                    Ok(()) => self.commit_retrying().await?,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match committed {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = classify(e);
                if let TxError::Aborted(_) = e
                    && let Err(abort) = self.watched("abort_transaction", abort_serving).await?
                {
                    return Err(TxError::Fatal(abort));
                }
                Err(e)
            }
        }
    }

    /// Commits, retrying a commit librdkafka says may be retried (a timeout
    /// while the outcome is still pending).
    async fn commit_retrying(&self) -> Result<Result<(), KafkaError>, TxError> {
        // Workaround: rdkafka 0.39's BaseProducer::poll serves events until its
        // whole timeout has passed, and the flush inside commit_transaction polls
        // for 100 ms at a time, so every commit took at least 100 ms. Serving the
        // delivery reports in 1 ms polls first leaves that flush nothing to wait for.
        let failed = tokio::task::block_in_place(|| {
            let deadline = std::time::Instant::now() + TX_TIMEOUT;
            let context = self.producer.context();
            while self.producer.in_flight_count() > 0 && !context.has_failed() && std::time::Instant::now() < deadline {
                self.producer.poll(Duration::from_millis(1));
            }
            context.take()
        });
        if let Some(e) = failed {
            return Ok(Err(e));
        }
        let mut attempts = 0;
        loop {
            match self.watched("commit_transaction", |p| p.commit_transaction(TX_TIMEOUT)).await? {
                Err(KafkaError::Transaction(t)) if t.is_retriable() && attempts < 3 => attempts += 1,
                other => return Ok(other),
            }
        }
    }
}

/// Hands one record to librdkafka, waiting while its queue is full.
fn enqueue(producer: &Tx, r: &OutRecord) -> Result<(), KafkaError> {
    let mut rec = BaseRecord::<[u8], [u8]>::to(&r.topic).payload(&r.payload).headers(r.owned_headers());
    if let Some(k) = &r.key {
        rec = rec.key(k);
    }
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                producer.poll(Duration::from_millis(5));
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
fn abort_serving(producer: &Tx) -> Result<(), KafkaError> {
    let deadline = std::time::Instant::now() + TX_TIMEOUT;
    loop {
        match producer.abort_transaction(Duration::from_millis(100)) {
            Err(KafkaError::Transaction(t)) if t.is_retriable() && std::time::Instant::now() < deadline => {
                for _ in 0..20 {
                    producer.poll(Duration::from_millis(1));
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose producer never reached a broker (nothing listens on port 1).
    fn unconnected() -> TxSink {
        let cfg = KafkaConfig { bootstrap_servers: "127.0.0.1:1".into(), ..KafkaConfig::default() };
        let producer =
            cfg.transactional_producer("t-watchdog").create_with_context(TxContext::default()).expect("producer");
        TxSink { producer: Arc::new(producer), id: "t-watchdog".into() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_never_returns_is_reported_stuck_and_the_sink_stays_usable() {
        let sink = unconnected();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        // The call blocks until released, as librdkafka's did.
        let stuck = sink
            .watched_for(Duration::from_millis(300), "send_offsets_to_transaction", move |_| wait.recv().is_ok())
            .await;
        assert!(matches!(stuck, Err(TxError::Stuck("send_offsets_to_transaction"))), "{stuck:?}");
        assert!(stuck.as_ref().is_err_and(TxError::needs_new_producer));
        assert!(started.elapsed() < Duration::from_secs(5), "the watchdog did not give up in time");
        // The abandoned call still holds the producer: dropping the sink is safe.
        assert_eq!(Arc::strong_count(&sink.producer), 2);
        // A call that returns in time hands back its result.
        let answered = sink.watched_for(Duration::from_secs(5), "flush", |p| p.flush(Duration::ZERO).is_ok()).await;
        assert!(answered.is_ok(), "a call that returned was reported stuck");
        drop(sink);
        release.send(()).expect("the abandoned call is still waiting");
    }

    #[test]
    fn only_an_unknown_outcome_needs_a_new_producer() {
        let aborted = TxError::Aborted(KafkaError::Global(RDKafkaErrorCode::State));
        assert!(!aborted.needs_new_producer());
        assert!(TxError::Stuck("commit_transaction").needs_new_producer());
        assert!(TxError::Stuck("x").to_string().contains("45 s"), "{}", TxError::Stuck("x"));
    }
}
