//! A consumer that hands out batches and commits explicit offsets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::config::KafkaConfig;

/// One consumed record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Topic (shared by the batch's records of one topic).
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (empty for a tombstone).
    pub payload: Vec<u8>,
    /// Headers (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RawRecord {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }
}

/// Logs rebalances and counts them.
#[derive(Debug, Default)]
pub struct LoggingContext {
    rebalances: AtomicU64,
}

impl ClientContext for LoggingContext {}

impl ConsumerContext for LoggingContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = ?partitions(tpl), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = ?partitions(tpl), "partitions assigned")
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
}

/// Where a consumer group stands on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset (`None`: nothing committed yet).
    pub committed: Option<i64>,
    /// Low watermark.
    pub low: i64,
    /// High watermark.
    pub high: i64,
    /// Whether this member holds the partition.
    pub mine: bool,
}

impl PartitionProgress {
    /// Records past the group's position (from the low watermark when nothing is committed).
    pub fn behind(&self) -> i64 {
        (self.high - self.committed.unwrap_or(self.low).max(self.low)).max(0)
    }
}

/// A subscribed consumer in a group that reads batches and commits offsets
/// only when told to.
pub struct BatchSource {
    consumer: StreamConsumer<LoggingContext>,
}

impl BatchSource {
    /// Joins `group` and subscribes to `topics`.
    pub fn subscribe(cfg: &KafkaConfig, group: &str, topics: &[&str]) -> Result<Self, KafkaError> {
        let consumer: StreamConsumer<LoggingContext> =
            cfg.consumer(group).create_with_context(LoggingContext::default())?;
        consumer.subscribe(topics)?;
        Ok(Self { consumer })
    }

    /// Waits up to `idle` for one record (an empty batch when none came), then
    /// gathers more until `max` records or `linger` has passed since the first.
    ///
    /// A rebalance can happen while a batch is gathered (librdkafka serves it
    /// inside `recv`). The batch then keeps a partition's records only if this
    /// member still owns it and reads on from right after them: the records of
    /// a partition another member now owns would be committed under the new
    /// generation over that member's start, and those of a partition handed
    /// back (read again from its committed offset) would be read twice.
    pub async fn next_batch(&self, max: usize, linger: Duration, idle: Duration) -> Result<Vec<RawRecord>, KafkaError> {
        let mut batch = Vec::with_capacity(max.min(4096));
        let mut rebalances = self.rebalances();
        let idle_until = tokio::time::Instant::now() + idle;
        let first = loop {
            match tokio::time::timeout_at(idle_until, self.consumer.recv()).await {
                Err(_) => return Ok(batch),
                Ok(Ok(m)) => break m,
                Ok(Err(e)) if recovers_by_itself(&e) => {
                    tracing::debug!(error = %e, "broker connection trouble; the client recovers by itself");
                }
                Ok(Err(e)) => return Err(e),
            }
        };
        let mut topics = Topics::default();
        batch.push(owned(&first, &mut topics));
        drop(first);
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            let next = tokio::time::timeout_at(deadline, self.consumer.recv()).await;
            if self.rebalances() != rebalances {
                rebalances = self.rebalances();
                let arrived = match &next {
                    Ok(Ok(m)) => Some((m.topic(), m.partition(), m.offset())),
                    _ => None,
                };
                let positions = self.consumer.position()?;
                keep_after_rebalance(&mut batch, |topic, partition| match arrived {
                    Some((t, p, offset)) if t == topic && p == partition => Some(offset),
                    _ => match positions.find_partition(topic, partition).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => Some(o),
                        _ => None,
                    },
                });
            }
            match next {
                Err(_) => break,
                Ok(Ok(m)) => batch.push(owned(&m, &mut topics)),
                Ok(Err(e)) if recovers_by_itself(&e) => {
                    tracing::debug!(error = %e, "broker connection trouble; the client recovers by itself");
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error; processing what was read");
                    break;
                }
            }
        }
        Ok(batch)
    }

    /// The offset after the last record of each partition in `batch` (what to
    /// commit once the batch's outputs are durable).
    pub fn next_offsets(batch: &[RawRecord]) -> Result<TopicPartitionList, KafkaError> {
        let spans = spans(batch);
        let mut tpl = TopicPartitionList::with_capacity(spans.len());
        for ((topic, partition), (_, last)) in spans {
            tpl.add_partition_offset(topic, partition, Offset::Offset(last + 1))?;
        }
        Ok(tpl)
    }

    /// Commits (needs a multi-threaded tokio runtime), synchronously, the offset after the last record of each
    /// partition in `batch`, skipping partitions no longer assigned (their new
    /// owner re-reads them: at-least-once).
    pub fn commit(&self, batch: &[RawRecord]) -> Result<(), KafkaError> {
        let assigned = self.consumer.assignment()?;
        let mut tpl = TopicPartitionList::new();
        for e in Self::next_offsets(batch)?.elements() {
            if assigned.find_partition(e.topic(), e.partition()).is_some() {
                tpl.add_partition_offset(e.topic(), e.partition(), e.offset())?;
            } else {
                tracing::info!(topic = e.topic(), partition = e.partition(), "skipping commit for a revoked partition");
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        // A synchronous commit waits for the broker: keep it off the async workers' backs.
        tokio::task::block_in_place(|| self.consumer.commit(&tpl, CommitMode::Sync))
    }

    /// The group's generation and member id, which a transaction's offsets are
    /// sent with (so a member that lost its partitions cannot commit for them).
    pub fn group_metadata(&self) -> Option<rdkafka::consumer::ConsumerGroupMetadata> {
        self.consumer.group_metadata()
    }

    /// Moves each partition of `batch` back to the batch's first record of it,
    /// so a batch whose outputs were aborted is read again. That is where the
    /// group's committed offset stands: a batch starts where the last committed
    /// or rewound one ended, and holds no partition it lost in a rebalance
    /// (see [`BatchSource::next_batch`]). No broker is asked, so the rewind
    /// works while the group coordinator is out of reach, which is when
    /// transactions abort.
    pub fn rewind(&self, batch: &[RawRecord]) -> Result<(), KafkaError> {
        tokio::task::block_in_place(|| {
            for ((topic, partition), (first, _)) in spans(batch) {
                self.consumer.seek(topic, partition, Offset::Offset(first), Duration::from_secs(10))?;
            }
            Ok(())
        })
    }

    /// Moves every assigned partition back to the group's committed offset
    /// (the start when none is). For a transaction whose outcome the producer
    /// could not learn (its commit timed out and the abort was refused): the
    /// broker finishes it either way, and the committed offsets, read once it
    /// has (`read_committed` asks for stable offsets), say whether the batch
    /// counts.
    pub fn rewind_to_committed(&self) -> Result<(), KafkaError> {
        tokio::task::block_in_place(|| {
            let timeout = Duration::from_secs(10);
            let assigned = self.consumer.assignment()?;
            let committed = self.consumer.committed_offsets(assigned, timeout)?;
            for e in committed.elements() {
                let to = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::Beginning,
                };
                self.consumer.seek(e.topic(), e.partition(), to, timeout)?;
            }
            Ok(())
        })
    }

    /// Rebalances seen so far (a change means partitions may have moved).
    pub fn rebalances(&self) -> u64 {
        self.consumer.context().rebalances.load(Ordering::Relaxed)
    }

    /// Number of partitions currently assigned to this member.
    pub fn assigned_partitions(&self) -> Result<usize, KafkaError> {
        Ok(self.consumer.assignment()?.count())
    }

    /// Lag per assigned partition: high watermark minus committed offset.
    pub fn lag(&self) -> Result<Vec<(String, i32, i64)>, KafkaError> {
        tokio::task::block_in_place(|| self.lag_blocking())
    }

    /// The group's committed offset and the watermarks of each partition of `tpl`.
    fn progress_of(
        &self,
        tpl: TopicPartitionList,
        assigned: &TopicPartitionList,
    ) -> Result<Vec<PartitionProgress>, KafkaError> {
        let timeout = Duration::from_secs(5);
        let committed = self.consumer.committed_offsets(tpl, timeout)?;
        let mut out = Vec::with_capacity(committed.count());
        for e in committed.elements() {
            let (low, high) = self.consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
            out.push(PartitionProgress {
                topic: e.topic().to_owned(),
                partition: e.partition(),
                committed: match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                },
                low,
                high,
                mine: assigned.find_partition(e.topic(), e.partition()).is_some(),
            });
        }
        Ok(out)
    }

    fn lag_blocking(&self) -> Result<Vec<(String, i32, i64)>, KafkaError> {
        let assigned = self.consumer.assignment()?;
        let progress = self.progress_of(assigned.clone(), &assigned)?;
        Ok(progress.into_iter().map(|p| (p.topic, p.partition, (p.high - p.committed.unwrap_or(0)).max(0))).collect())
    }
}

/// After a rebalance in the middle of gathering a batch: keeps the records of
/// a partition only if this member still reads it on from right after them.
/// `next_read` gives, per partition, the offset the consumer reads next (`None`
/// when the partition is no longer assigned, or was assigned afresh and will be
/// read again from the group's committed offset, which the eager protocol does
/// to every partition it hands back).
fn keep_after_rebalance(records: &mut Vec<RawRecord>, next_read: impl Fn(&str, i32) -> Option<i64>) {
    let keep: Vec<(String, i32)> = spans(records)
        .into_iter()
        .filter(|&((topic, partition), (_, last))| next_read(topic, partition) == Some(last + 1))
        .map(|((topic, partition), _)| (topic.to_owned(), partition))
        .collect();
    records.retain(|r| keep.iter().any(|(t, p)| *p == r.partition && **t == *r.topic));
}

/// The first and last offset of each partition in `records`.
fn spans(records: &[RawRecord]) -> BTreeMap<(&str, i32), (i64, i64)> {
    let mut spans: BTreeMap<(&str, i32), (i64, i64)> = BTreeMap::new();
    for r in records {
        let (first, last) = spans.entry((&*r.topic, r.partition)).or_insert((r.offset, r.offset));
        *first = (*first).min(r.offset);
        *last = (*last).max(r.offset);
    }
    spans
}

/// The topic names of a batch, one allocation each.
#[derive(Default)]
struct Topics(Vec<Arc<str>>);

impl Topics {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(t) = self.0.iter().find(|t| ***t == *name) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(name);
        self.0.push(t.clone());
        t
    }
}

fn owned<M: Message>(m: &M, topics: &mut Topics) -> RawRecord {
    RawRecord {
        topic: topics.get(m.topic()),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers: m
            .headers()
            .map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
            .unwrap_or_default(),
    }
}

/// Errors a consumer reports while a broker is unreachable or a partition's
/// leadership moves. librdkafka reconnects and refetches metadata by itself;
/// the other brokers' partitions go on being fetched meanwhile, so these
/// must not stop consumption (with one broker of three dead, every poll
/// would otherwise end in an error and the stage would read nothing).
pub fn recovers_by_itself(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::Resolve
                | C::NotLeaderForPartition
                | C::LeaderNotAvailable
                | C::NetworkException
                | C::RequestTimedOut
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::CoordinatorLoadInProgress
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(topic: &Arc<str>, partition: i32, offset: i64) -> RawRecord {
        RawRecord { topic: topic.clone(), partition, offset, key: None, payload: vec![], headers: vec![] }
    }

    #[test]
    fn after_a_mid_batch_rebalance_only_partitions_read_on_from_right_after_the_batch_keep_their_records() {
        let t: Arc<str> = Arc::from("events.raw");
        let mut batch: Vec<RawRecord> =
            [(0, 10), (1, 20), (0, 11), (2, 30), (1, 21), (3, 40)].iter().map(|&(p, o)| rec(&t, p, o)).collect();
        // 0 is read on from 12 (kept, cooperative); 1 was handed back and is
        // read again from its committed offset 20; 2 went to another member;
        // 3 was handed back and nothing of it has been read since.
        keep_after_rebalance(&mut batch, |topic, p| {
            assert_eq!(topic, "events.raw");
            match p {
                0 => Some(12),
                1 => Some(20),
                _ => None,
            }
        });
        let left: Vec<(i32, i64)> = batch.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(left, [(0, 10), (0, 11)]);
    }

    #[test]
    fn a_lost_broker_or_moving_leader_is_waited_out_but_a_missing_topic_is_not() {
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
        ] {
            assert!(recovers_by_itself(&KafkaError::MessageConsumption(code)), "{code:?}");
        }
        for code in [RDKafkaErrorCode::UnknownTopicOrPartition, RDKafkaErrorCode::TopicAuthorizationFailed] {
            assert!(!recovers_by_itself(&KafkaError::MessageConsumption(code)), "{code:?}");
        }
    }
}
