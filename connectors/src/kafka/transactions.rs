//! Hanging transactions: transactions a partition holds open that no
//! transaction coordinator will ever end.
//!
//! A `read_committed` reader cannot pass the first offset of an open
//! transaction, so one hanging transaction stops every stage that reads the
//! partition, for good (and one in `__consumer_offsets` stops a group from
//! fetching its offsets). Kafka 4.4 can leave one behind: its coordinator drops
//! the markers of a transaction it is ending when a partition has no leader at
//! that moment, as if the partition had been deleted (docs/reliability.md).
//!
//! This module finds them the way Kafka's `kafka-transactions.sh find-hanging`
//! does, and ends them the way `kafka-transactions.sh abort` does:
//! 1. every partition leader lists the producers with an open transaction
//!    (`DescribeProducers`); those whose last write is older than a threshold
//!    are candidates;
//! 2. the coordinators name the candidates' transactional ids
//!    (`ListTransactions`) and describe their current transaction
//!    (`DescribeTransactions`);
//! 3. a candidate is hanging unless its coordinator is still working on a
//!    transaction of that producer that includes the partition;
//! 4. a hanging transaction is aborted by writing the abort marker to the
//!    partition (`WriteTxnMarkers`, what Kafka's Admin `abortTransaction` sends).
//!
//! A transaction the coordinator is still working on is never touched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use kafka_protocol::messages::describe_producers_request::TopicRequest;
use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeTransactionsRequest, FindCoordinatorRequest, ListTransactionsRequest,
    MetadataRequest, ProducerId, TopicName, TransactionalId, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::config::KafkaConfig;
use super::wire::{Connection, WireError, error_name};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A transaction a partition holds open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTransaction {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Leader of the partition (where markers go).
    pub leader: i32,
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch of the open transaction's records.
    pub producer_epoch: i16,
    /// Coordinator epoch of the producer's last marker (sent with the abort).
    pub coordinator_epoch: i32,
    /// First offset of the open transaction: `read_committed` readers stop here.
    pub start_offset: i64,
    /// Timestamp of the producer's last write to the partition (ms since the epoch).
    pub last_timestamp_ms: i64,
}

/// What a producer's transaction coordinator says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorView {
    /// The producer's transactional id.
    pub transactional_id: String,
    /// `Ongoing`, `PrepareCommit`, `CompleteAbort`, `Empty`, ...
    pub state: String,
    /// Producer id the coordinator holds for the transactional id.
    pub producer_id: i64,
    /// Its current epoch.
    pub producer_epoch: i16,
    /// Partitions of the transaction in progress.
    pub partitions: BTreeSet<(String, i32)>,
}

/// Whether an open transaction is hanging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The coordinator is working on it: leave it.
    Live(String),
    /// No coordinator will end it.
    Hanging(String),
}

/// An open transaction older than the threshold, with the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The open transaction.
    pub open: OpenTransaction,
    /// The producer's transactional id, when a coordinator knows it.
    pub transactional_id: Option<String>,
    /// Hanging or live, and why.
    pub verdict: Verdict,
}

/// The coordinator states in which it still writes markers for the
/// transaction in progress.
const IN_PROGRESS: [&str; 4] = ["Ongoing", "PrepareCommit", "PrepareAbort", "PrepareEpochFence"];

/// Kafka's rule (`kafka-transactions.sh find-hanging`): an open transaction is
/// hanging unless its producer's coordinator has a transaction in progress for
/// the same producer (the same epoch, or the next one, which a coordinator
/// bumps to when it ends a transaction of a newer protocol) that includes the
/// partition.
pub fn verdict(open: &OpenTransaction, coordinator: Option<&CoordinatorView>) -> Verdict {
    let Some(c) = coordinator else {
        return Verdict::Hanging(format!("no transaction coordinator knows producer {}", open.producer_id));
    };
    if c.producer_id != open.producer_id {
        return Verdict::Hanging(format!(
            "transactional id '{}' now belongs to producer {}, not {}",
            c.transactional_id, c.producer_id, open.producer_id
        ));
    }
    if !IN_PROGRESS.contains(&c.state.as_str()) {
        return Verdict::Hanging(format!("the coordinator's transaction of '{}' is {}", c.transactional_id, c.state));
    }
    let epoch_ok = c.producer_epoch == open.producer_epoch || c.producer_epoch == open.producer_epoch.wrapping_add(1);
    if !epoch_ok {
        return Verdict::Hanging(format!(
            "the coordinator's transaction of '{}' is at producer epoch {}, the partition's at {}",
            c.transactional_id, c.producer_epoch, open.producer_epoch
        ));
    }
    if !c.partitions.contains(&(open.topic.clone(), open.partition)) {
        return Verdict::Hanging(format!(
            "the coordinator's {} transaction of '{}' does not include {}-{}",
            c.state, c.transactional_id, open.topic, open.partition
        ));
    }
    Verdict::Live(format!("the coordinator's transaction of '{}' is {}", c.transactional_id, c.state))
}

/// Brokers and partition leaders of the cluster.
struct ClusterView {
    brokers: BTreeMap<i32, String>,
    /// leader -> topic -> partitions it leads.
    led: BTreeMap<i32, BTreeMap<String, Vec<i32>>>,
}

async fn cluster_view(conn: &mut Connection) -> Result<ClusterView, WireError> {
    // `topics: None` asks for every topic, internal ones included.
    let req = MetadataRequest::default().with_topics(None);
    let (_, resp) = conn.call(&req).await?;
    let brokers = resp.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
    let mut led: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
    for t in &resp.topics {
        let Some(name) = t.name.as_ref() else { continue };
        // The coordinators' own logs hold no transactions.
        if t.error_code != 0 || name.0.as_str() == "__transaction_state" {
            continue;
        }
        for p in &t.partitions {
            if p.error_code == 0 && p.leader_id.0 >= 0 {
                led.entry(p.leader_id.0).or_default().entry(name.0.to_string()).or_default().push(p.partition_index);
            }
        }
    }
    Ok(ClusterView { brokers, led })
}

/// Connections to brokers by id, opened on first use.
struct Brokers {
    addrs: BTreeMap<i32, String>,
    open: HashMap<i32, Connection>,
}

impl Brokers {
    async fn get(&mut self, id: i32) -> Result<&mut Connection, WireError> {
        if !self.open.contains_key(&id) {
            let addr = self.addrs.get(&id).ok_or_else(|| WireError(format!("broker {id} is not in the metadata")))?;
            let c = Connection::open(addr, REQUEST_TIMEOUT).await?;
            self.open.insert(id, c);
        }
        self.open.get_mut(&id).ok_or_else(|| WireError(format!("broker {id}: no connection")))
    }
}

/// Every transaction a partition leader holds open whose producer last wrote
/// at least `older_than` ago, with its verdict. Partitions whose leader does
/// not answer are skipped (they are looked at again on the next scan).
pub async fn find(cfg: &KafkaConfig, older_than: Duration) -> Result<Vec<Finding>, WireError> {
    let mut boot = Connection::bootstrap(cfg, REQUEST_TIMEOUT).await?;
    let view = cluster_view(&mut boot).await?;
    let mut brokers = Brokers { addrs: view.brokers.clone(), open: HashMap::new() };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let older_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);

    let mut open = Vec::new();
    for (&leader, topics) in &view.led {
        let req = DescribeProducersRequest::default().with_topics(
            topics
                .iter()
                .map(|(t, ps)| {
                    TopicRequest::default()
                        .with_name(TopicName(StrBytes::from_string(t.clone())))
                        .with_partition_indexes(ps.clone())
                })
                .collect(),
        );
        let resp = match brokers.get(leader).await {
            Ok(c) => c.call(&req).await,
            Err(e) => Err(e),
        };
        let resp = match resp {
            Ok((_, r)) => r,
            Err(e) => {
                tracing::debug!(broker = leader, error = %e, "DescribeProducers failed; skipping the broker this round");
                brokers.open.remove(&leader);
                continue;
            }
        };
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    continue;
                }
                for s in p.active_producers {
                    if s.current_txn_start_offset < 0 || now_ms.saturating_sub(s.last_timestamp) < older_ms {
                        continue;
                    }
                    open.push(OpenTransaction {
                        topic: t.name.0.to_string(),
                        partition: p.partition_index,
                        leader,
                        producer_id: s.producer_id.0,
                        producer_epoch: i16::try_from(s.producer_epoch).unwrap_or(i16::MAX),
                        coordinator_epoch: s.coordinator_epoch,
                        start_offset: s.current_txn_start_offset,
                        last_timestamp_ms: s.last_timestamp,
                    });
                }
            }
        }
    }
    if open.is_empty() {
        return Ok(Vec::new());
    }

    // Which transactional id each candidate producer has: every broker is the
    // coordinator of some transactional ids, so every broker is asked.
    let pids: Vec<ProducerId> =
        open.iter().map(|o| ProducerId(o.producer_id)).collect::<BTreeSet<_>>().into_iter().collect();
    let mut tid_of: HashMap<i64, String> = HashMap::new();
    for id in view.brokers.keys().copied().collect::<Vec<_>>() {
        let req = ListTransactionsRequest::default().with_producer_id_filters(pids.clone());
        let resp = match brokers.get(id).await {
            Ok(c) => c.call(&req).await,
            Err(e) => Err(e),
        };
        match resp {
            Ok((_, r)) if r.error_code == 0 => {
                for s in r.transaction_states {
                    tid_of.insert(s.producer_id.0, s.transactional_id.0.to_string());
                }
            }
            Ok((_, r)) => {
                // Without every coordinator's answer a producer may look unknown
                // when it is not: judge nothing this round.
                return Err(WireError(format!("broker {id}: ListTransactions: {}", error_name(r.error_code))));
            }
            Err(e) => return Err(WireError(format!("broker {id}: ListTransactions: {e}"))),
        }
    }

    let mut views: HashMap<String, CoordinatorView> = HashMap::new();
    for tid in tid_of.values().collect::<BTreeSet<_>>() {
        views.insert(tid.clone(), describe(&mut boot, &mut brokers, tid).await?);
    }

    Ok(open
        .into_iter()
        .map(|o| {
            let tid = tid_of.get(&o.producer_id).cloned();
            let v = verdict(&o, tid.as_ref().and_then(|t| views.get(t)));
            Finding { open: o, transactional_id: tid, verdict: v }
        })
        .collect())
}

/// `DescribeTransactions` of `tid` at its coordinator.
async fn describe(boot: &mut Connection, brokers: &mut Brokers, tid: &str) -> Result<CoordinatorView, WireError> {
    let key = StrBytes::from_string(tid.to_owned());
    let v = boot.version_of::<FindCoordinatorRequest>()?;
    let req = if v >= 4 {
        FindCoordinatorRequest::default().with_key_type(1).with_coordinator_keys(vec![key])
    } else {
        FindCoordinatorRequest::default().with_key_type(1).with_key(key)
    };
    let resp = boot.call_version(&req, v).await?;
    let (node, code) = match resp.coordinators.first() {
        Some(c) if v >= 4 => (c.node_id.0, c.error_code),
        _ => (resp.node_id.0, resp.error_code),
    };
    if code != 0 {
        return Err(WireError(format!("FindCoordinator '{tid}': {}", error_name(code))));
    }
    let req = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(StrBytes::from_string(tid.to_owned()))]);
    let (_, resp) = brokers.get(node).await?.call(&req).await?;
    let s = resp
        .transaction_states
        .into_iter()
        .next()
        .ok_or_else(|| WireError(format!("DescribeTransactions '{tid}': empty answer")))?;
    if s.error_code != 0 {
        return Err(WireError(format!("DescribeTransactions '{tid}': {}", error_name(s.error_code))));
    }
    Ok(CoordinatorView {
        transactional_id: tid.to_owned(),
        state: s.transaction_state.to_string(),
        producer_id: s.producer_id.0,
        producer_epoch: s.producer_epoch,
        partitions: s
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.0.to_string(), *p)))
            .collect(),
    })
}

/// Aborts `open` by writing the abort marker to its partition (what Kafka's
/// Admin `abortTransaction` does), unless the partition no longer holds it
/// open (ended since it was found): `Ok(true)` when the marker was written.
/// Needs the `ClusterAction` permission where ACLs are on.
pub async fn abort(cfg: &KafkaConfig, open: &OpenTransaction) -> Result<bool, WireError> {
    let mut boot = Connection::bootstrap(cfg, REQUEST_TIMEOUT).await?;
    let view = cluster_view(&mut boot).await?;
    let addr = view
        .brokers
        .get(&open.leader)
        .ok_or_else(|| WireError(format!("broker {} is not in the metadata", open.leader)))?;
    let mut conn = Connection::open(addr, REQUEST_TIMEOUT).await?;
    let topic = TopicName(StrBytes::from_string(open.topic.clone()));
    let req = DescribeProducersRequest::default().with_topics(vec![
        TopicRequest::default().with_name(topic.clone()).with_partition_indexes(vec![open.partition]),
    ]);
    let (_, resp) = conn.call(&req).await?;
    let partition = resp.topics.iter().flat_map(|t| t.partitions.iter()).find(|p| p.partition_index == open.partition);
    match partition {
        Some(p) if p.error_code != 0 => {
            return Err(WireError(format!(
                "DescribeProducers {}-{}: {}",
                open.topic,
                open.partition,
                error_name(p.error_code)
            )));
        }
        Some(p)
            if p.active_producers
                .iter()
                .any(|s| s.producer_id.0 == open.producer_id && s.current_txn_start_offset == open.start_offset) => {}
        _ => return Ok(false),
    }
    let marker = WritableTxnMarker::default()
        .with_producer_id(ProducerId(open.producer_id))
        .with_producer_epoch(open.producer_epoch)
        .with_transaction_result(false)
        .with_coordinator_epoch(open.coordinator_epoch)
        .with_topics(vec![
            WritableTxnMarkerTopic::default().with_name(topic).with_partition_indexes(vec![open.partition]),
        ]);
    let (_, resp) = conn.call(&WriteTxnMarkersRequest::default().with_markers(vec![marker])).await?;
    let code = resp
        .markers
        .iter()
        .flat_map(|m| m.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)))
        .find(|c| *c != 0)
        .unwrap_or(0);
    if code != 0 {
        return Err(WireError(format!(
            "WriteTxnMarkers {}-{} producer {}: {}",
            open.topic,
            open.partition,
            open.producer_id,
            error_name(code)
        )));
    }
    Ok(true)
}

/// What one guard round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// Hanging transactions aborted.
    pub aborted: Vec<Finding>,
    /// Hanging transactions whose abort failed, with the error.
    pub failed: Vec<(Finding, String)>,
}

/// Finds hanging transactions older than `older_than` and aborts them.
pub async fn repair(cfg: &KafkaConfig, older_than: Duration) -> Result<Repaired, WireError> {
    let mut out = Repaired::default();
    for f in find(cfg, older_than).await? {
        if let Verdict::Hanging(_) = f.verdict {
            match abort(cfg, &f.open).await {
                Ok(true) => out.aborted.push(f),
                Ok(false) => {}
                Err(e) => out.failed.push((f, e.to_string())),
            }
        }
    }
    Ok(out)
}

/// Runs [`repair`] every `every` until the process ends, logging each abort
/// and counting it in `aborted`. Errors (a broker down, a cluster behind TLS)
/// are logged and the next round tries again.
pub async fn guard(cfg: KafkaConfig, older_than: Duration, every: Duration, aborted: prometheus::IntCounter) {
    if let Err(e) = super::wire::check_plaintext(&cfg) {
        tracing::warn!(error = %e, "hanging-transaction guard off");
        return;
    }
    let mut warned = false;
    loop {
        tokio::time::sleep(every).await;
        match repair(&cfg, older_than).await {
            Ok(r) => {
                warned = false;
                for f in &r.aborted {
                    aborted.inc();
                    let o = &f.open;
                    tracing::warn!(
                        topic = %o.topic, partition = o.partition, producer_id = o.producer_id,
                        producer_epoch = o.producer_epoch, start_offset = o.start_offset,
                        transactional_id = f.transactional_id.as_deref().unwrap_or("-"),
                        reason = match &f.verdict { Verdict::Hanging(r) | Verdict::Live(r) => r.as_str() },
                        "aborted a hanging transaction (read_committed readers of the partition were stuck at its start)"
                    );
                }
                for (f, e) in &r.failed {
                    let o = &f.open;
                    tracing::error!(topic = %o.topic, partition = o.partition, producer_id = o.producer_id, error = %e, "a hanging transaction could not be aborted");
                }
            }
            // One warning per outage, not one per round.
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, "hanging-transaction scan failed; retrying");
            }
            Err(e) => tracing::debug!(error = %e, "hanging-transaction scan failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(topic: &str, partition: i32, pid: i64, epoch: i16) -> OpenTransaction {
        OpenTransaction {
            topic: topic.into(),
            partition,
            leader: 1,
            producer_id: pid,
            producer_epoch: epoch,
            coordinator_epoch: 3,
            start_offset: 100,
            last_timestamp_ms: 0,
        }
    }

    fn coord(state: &str, pid: i64, epoch: i16, parts: &[(&str, i32)]) -> CoordinatorView {
        CoordinatorView {
            transactional_id: "t".into(),
            state: state.into(),
            producer_id: pid,
            producer_epoch: epoch,
            partitions: parts.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect(),
        }
    }

    fn hanging(v: &Verdict) -> bool {
        matches!(v, Verdict::Hanging(_))
    }

    #[test]
    fn a_transaction_its_coordinator_is_working_on_is_live() {
        let o = open("events.valid", 0, 7, 2);
        for state in ["Ongoing", "PrepareCommit", "PrepareAbort"] {
            assert!(!hanging(&verdict(&o, Some(&coord(state, 7, 2, &[("events.valid", 0)])))), "{state}");
        }
        // A coordinator ending a transaction of the newer protocol bumps the epoch first.
        assert!(!hanging(&verdict(&o, Some(&coord("PrepareAbort", 7, 3, &[("events.valid", 0)])))));
    }

    #[test]
    fn a_transaction_no_coordinator_will_end_is_hanging() {
        let o = open("events.valid", 0, 7, 2);
        // Nobody knows the producer.
        assert!(hanging(&verdict(&o, None)));
        // The coordinator finished (and dropped the markers of) the transaction.
        for state in ["CompleteAbort", "CompleteCommit", "Empty", "Dead"] {
            assert!(hanging(&verdict(&o, Some(&coord(state, 7, 2, &[])))), "{state}");
        }
        // Its transaction in progress is another one: other partitions, a later epoch, another producer.
        assert!(hanging(&verdict(&o, Some(&coord("Ongoing", 7, 2, &[("events.valid", 1)])))));
        assert!(hanging(&verdict(&o, Some(&coord("Ongoing", 7, 5, &[("events.valid", 0)])))));
        assert!(hanging(&verdict(&o, Some(&coord("Ongoing", 8, 2, &[("events.valid", 0)])))));
        let Verdict::Hanging(why) = verdict(&o, Some(&coord("CompleteAbort", 7, 3, &[]))) else { unreachable!() };
        assert!(why.contains("CompleteAbort"), "{why}");
    }
}
