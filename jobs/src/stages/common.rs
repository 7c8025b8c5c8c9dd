//! Pieces every stage uses: retry backoff and the writer-schema cache.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lifecycle_connectors::kafka::source::{PartitionProgress, RawRecord};
use lifecycle_pipeline::avro::Envelope;
use lifecycle_pipeline::process::{self, Writer, WriterCache};
use lifecycle_schemas::RegistryClient;
use prometheus::IntCounterVec;

/// Exponential backoff: 100 ms doubling, at most 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5_000))
}

/// Writer schemas by id, fetched from the registry on first sight; ids the
/// registry does not know are remembered as unknown for `unknown_ttl`.
pub(crate) struct WriterSchemas {
    client: RegistryClient,
    cache: WriterCache,
    unknown_since: HashMap<u32, Instant>,
    unknown_ttl: Duration,
}

impl WriterSchemas {
    pub(crate) fn new(client: RegistryClient, unknown_ttl: Duration) -> Self {
        Self { client, cache: WriterCache::new(), unknown_since: HashMap::new(), unknown_ttl }
    }

    pub(crate) fn cache(&self) -> &WriterCache {
        &self.cache
    }

    /// Fetches every schema the batch needs; retries while the registry is down
    /// (counted in `retries{cause="registry"}`), so no record is dead-lettered or
    /// skipped because of an outage.
    pub(crate) async fn fill<'r>(
        &mut self,
        envelope: &Envelope,
        batch: impl IntoIterator<Item = &'r RawRecord>,
        retries: &IntCounterVec,
    ) {
        let ttl = self.unknown_ttl;
        let cache = &mut self.cache;
        self.unknown_since.retain(|id, at| {
            let keep = at.elapsed() < ttl;
            if !keep {
                cache.remove(id);
            }
            keep
        });
        for id in process::missing_schema_ids(batch.into_iter().map(|r| r.payload.as_slice()), &self.cache) {
            let mut attempt = 0;
            loop {
                match self.client.schema_by_id(id).await {
                    Ok(Some(text)) => {
                        self.cache.insert(id, Some(Writer::prepare(&text, envelope)));
                        break;
                    }
                    Ok(None) => {
                        self.cache.insert(id, None);
                        self.unknown_since.insert(id, Instant::now());
                        break;
                    }
                    Err(e) => {
                        retries.with_label_values(&["registry"]).inc();
                        tracing::warn!(schema_id = id, error = %e, attempt, "schema registry unavailable; retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                }
            }
        }
    }
}

/// Decodes `events.valid` records into events (without age limits: they were
/// validated on the way in).
pub(crate) struct EventDecoder {
    pub(crate) envelope: lifecycle_pipeline::avro::Envelope,
    validator: lifecycle_pipeline::Validator,
}

impl EventDecoder {
    pub(crate) fn load(cfg: &crate::config::LifecycleConfig) -> Result<Self, String> {
        let files = lifecycle_schemas::SchemaFiles::load(&cfg.schemas_dir()).map_err(|e| e.to_string())?;
        let century = Duration::from_secs(100 * 365 * 86_400);
        let lenient = lifecycle_pipeline::Limits { max_future_skew: century, max_age: century, max_id_len: 4096 };
        Ok(Self {
            envelope: files.envelope().map_err(|e| e.to_string())?,
            validator: lifecycle_pipeline::Validator::new(
                std::sync::Arc::new(files.catalog().map_err(|e| e.to_string())?),
                lenient,
            ),
        })
    }

    /// The event, or `None` (logged) when the record cannot be read.
    pub(crate) fn decode(&self, cache: &WriterCache, r: &RawRecord) -> Option<lifecycle_pipeline::Event> {
        match process::process(&r.payload, cache, &self.envelope, &self.validator, chrono::Utc::now()) {
            process::Outcome::Valid(e) => Some(e),
            process::Outcome::Rejected(rej, _) => {
                tracing::error!(partition = r.partition, offset = r.offset, reason = %rej.reason, message = %rej.message, "undecodable record on events.valid");
                None
            }
        }
    }
}

/// Tracks how long this member has held no partition (see `rejoin_when_unassigned_secs`).
struct Membership {
    since: Option<Instant>,
    after: Duration,
}

impl Membership {
    fn new(rejoin_after_secs: u64) -> Self {
        Self { since: None, after: Duration::from_secs(rejoin_after_secs) }
    }

    /// Called on an idle poll with the assigned partition count; true when the
    /// member should leave and rejoin its group.
    fn should_rejoin(&mut self, assigned: usize) -> bool {
        if assigned > 0 {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if !self.after.is_zero() && since.elapsed() >= self.after {
            self.since = None;
            return true;
        }
        false
    }

    /// Records arrived: the member is assigned.
    fn reset(&mut self) {
        self.since = None;
    }
}

/// Watches the partitions of the group's topics that this member does not hold:
/// one whose committed offset sits still behind its end for `after` is consumed
/// by no one. tansu 0.6 can leave a timed-out member's partitions assigned to
/// nobody while the rest of the group goes on (README, "The local stack").
struct Orphans {
    after: Duration,
    /// Per partition not held: the committed offset last seen and since when.
    still: HashMap<(String, i32), (Option<i64>, Instant)>,
}

impl Orphans {
    fn new(after: Duration) -> Self {
        Self { after, still: HashMap::new() }
    }

    /// Takes a snapshot of the group at `now`; returns a partition that has been
    /// behind, not held by this member and without a new commit for `after`.
    fn observe(&mut self, now: Instant, parts: &[PartitionProgress]) -> Option<(String, i32)> {
        let mut orphan = None;
        let mut still = HashMap::new();
        for p in parts.iter().filter(|p| !p.mine && p.behind() > 0) {
            let key = (p.topic.clone(), p.partition);
            let since = match self.still.get(&key) {
                Some(&(committed, since)) if committed == p.committed => since,
                _ => now,
            };
            if orphan.is_none() && !self.after.is_zero() && now.duration_since(since) >= self.after {
                orphan = Some(key.clone());
            }
            still.insert(key, (p.committed, since));
        }
        self.still = still;
        orphan
    }
}

/// Serves `/metrics` and `/healthz` for a stage until `shutdown`.
pub(crate) fn serve_metrics(
    addr: std::net::SocketAddr,
    registry: prometheus::Registry,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(lifecycle_connectors::http::ops::metrics_handler))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .with_state(registry);
    tokio::spawn(async move {
        let served = lifecycle_connectors::http::ops::serve(addr, app, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
        if let Err(e) = served.await {
            tracing::error!(%addr, error = %e, "metrics endpoint failed");
        }
    });
}

/// What [`Poller::next`] got.
pub(crate) enum Polled {
    /// A non-empty batch.
    Batch(Vec<RawRecord>),
    /// The member left and rejoined its group (partitions may have moved).
    Rejoined,
    /// Shutdown was requested.
    Shutdown,
}

/// A stage's consumer: batches, consume-error retries, and rejoining the group
/// after holding no partition, or seeing a partition consumed by no member, for
/// too long (see `rejoin_when_unassigned_secs`).
pub(crate) struct Poller {
    source: Option<lifecycle_connectors::kafka::source::BatchSource>,
    kafka: lifecycle_connectors::kafka::config::KafkaConfig,
    group: String,
    topics: Vec<String>,
    membership: Membership,
    orphans: Orphans,
    last_check: Instant,
    max: usize,
    linger: Duration,
    retries: IntCounterVec,
}

impl Poller {
    pub(crate) fn new(
        kafka: &lifecycle_connectors::kafka::config::KafkaConfig,
        group: &str,
        topics: &[&str],
        (max, linger): (usize, Duration),
        rejoin_after_secs: u64,
        retries: IntCounterVec,
    ) -> Result<Self, String> {
        let mut p = Self {
            source: None,
            kafka: kafka.clone(),
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            membership: Membership::new(rejoin_after_secs),
            orphans: Orphans::new(Duration::from_secs(rejoin_after_secs)),
            last_check: Instant::now(),
            max,
            linger,
            retries,
        };
        p.subscribe()?;
        Ok(p)
    }

    fn subscribe(&mut self) -> Result<(), String> {
        drop(self.source.take()); // leave the group before joining again
        self.orphans.still.clear();
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        let source = lifecycle_connectors::kafka::source::BatchSource::subscribe(&self.kafka, &self.group, &topics)
            .map_err(|e| e.to_string())?;
        self.source = Some(source);
        Ok(())
    }

    /// The current consumer.
    pub(crate) fn source(&self) -> &lifecycle_connectors::kafka::source::BatchSource {
        self.source.as_ref().unwrap_or_else(|| unreachable!("subscribed in new() and subscribe()"))
    }

    /// A partition of the group's topics consumed by no member (checked every
    /// quarter of the rejoin delay, at most every 5 s; never when it is 0).
    fn orphaned(&mut self) -> Option<(String, i32)> {
        let every = (self.orphans.after / 4).max(Duration::from_secs(5));
        if self.orphans.after.is_zero() || self.last_check.elapsed() < every {
            return None;
        }
        self.last_check = Instant::now();
        match self.source().group_progress(&self.topics) {
            Ok(parts) => self.orphans.observe(Instant::now(), &parts),
            Err(e) => {
                tracing::debug!(error = %e, "group progress unavailable");
                None
            }
        }
    }

    /// Waits for the next non-empty batch, shutdown, or a rejoin.
    pub(crate) async fn next(&mut self, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Result<Polled, String> {
        loop {
            if let Some((topic, partition)) = self.orphaned() {
                tracing::warn!(group = %self.group, topic, partition, "a partition is consumed by no member; leaving and rejoining the consumer group");
                self.retries.with_label_values(&["rejoin"]).inc();
                self.subscribe()?;
                return Ok(Polled::Rejoined);
            }
            let batch = tokio::select! {
                b = self.source().next_batch(self.max, self.linger, Duration::from_secs(1)) => b,
                _ = shutdown.wait_for(|s| *s) => return Ok(Polled::Shutdown),
            };
            match batch {
                Ok(b) if b.is_empty() => {
                    if self.membership.should_rejoin(self.source().assigned_partitions().unwrap_or(0)) {
                        tracing::warn!(group = %self.group, "no partition assigned; leaving and rejoining the consumer group");
                        self.retries.with_label_values(&["rejoin"]).inc();
                        self.subscribe()?;
                        return Ok(Polled::Rejoined);
                    }
                }
                Ok(b) => {
                    self.membership.reset();
                    return Ok(Polled::Batch(b));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consume failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(partition: i32, committed: Option<i64>, high: i64, mine: bool) -> PartitionProgress {
        PartitionProgress { topic: "events.raw".into(), partition, committed, low: 0, high, mine }
    }

    #[test]
    fn a_partition_nobody_holds_is_orphaned_once_its_offset_sits_still_behind_for_the_delay() {
        let mut o = Orphans::new(Duration::from_secs(20));
        let t0 = Instant::now();
        let snap = |c2: i64| [part(0, Some(10), 50, true), part(1, Some(10), 50, true), part(2, Some(c2), 900, false)];
        assert_eq!(o.observe(t0, &snap(100)), None);
        assert_eq!(o.observe(t0 + Duration::from_secs(19), &snap(100)), None);
        assert_eq!(o.observe(t0 + Duration::from_secs(20), &snap(100)), Some(("events.raw".into(), 2)));
    }

    #[test]
    fn a_partition_another_member_is_consuming_is_not_orphaned() {
        let mut o = Orphans::new(Duration::from_secs(20));
        let t0 = Instant::now();
        for step in 0..10 {
            let committed = 100 + step * 10; // a new commit at every look
            let at = t0 + Duration::from_secs(10 * step as u64);
            assert_eq!(o.observe(at, &[part(3, Some(committed), 5_000, false)]), None);
        }
    }

    #[test]
    fn caught_up_held_or_disabled_partitions_are_never_orphaned() {
        let later = Instant::now() + Duration::from_secs(3600);
        let mut o = Orphans::new(Duration::from_secs(20));
        let caught_up = [part(0, Some(50), 50, false), part(1, None, 0, false)];
        assert_eq!(o.observe(Instant::now(), &caught_up), None);
        assert_eq!(o.observe(later, &caught_up), None);
        let held = [part(0, Some(1), 50, true)];
        assert_eq!(o.observe(Instant::now(), &held), None);
        assert_eq!(o.observe(later, &held), None);
        let mut off = Orphans::new(Duration::ZERO);
        let behind = [part(0, None, 50, false)];
        assert_eq!(off.observe(Instant::now(), &behind), None);
        assert_eq!(off.observe(later, &behind), None);
    }

    #[test]
    fn a_partition_that_was_consumed_again_restarts_its_clock() {
        let mut o = Orphans::new(Duration::from_secs(20));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(o.observe(at(0), &[part(1, Some(5), 90, false)]), None);
        assert_eq!(o.observe(at(15), &[part(1, Some(5), 90, false)]), None);
        assert_eq!(o.observe(at(16), &[part(1, Some(6), 90, false)]), None);
        assert_eq!(o.observe(at(35), &[part(1, Some(6), 90, false)]), None);
        assert_eq!(o.observe(at(36), &[part(1, Some(6), 90, false)]), Some(("events.raw".into(), 1)));
    }

    #[test]
    fn a_member_without_partitions_does_not_rejoin_before_the_delay_nor_when_disabled() {
        let mut m = Membership::new(0);
        assert!(!m.should_rejoin(0), "0 disables");
        let mut m = Membership::new(3600);
        assert!(!m.should_rejoin(0));
        assert!(!m.should_rejoin(4));
        m.reset();
        assert!(!m.should_rejoin(0));
    }

    #[test]
    fn behind_counts_from_the_low_watermark_when_nothing_is_committed() {
        let p = PartitionProgress { topic: "t".into(), partition: 0, committed: None, low: 40, high: 100, mine: false };
        assert_eq!(p.behind(), 60);
        assert_eq!(PartitionProgress { committed: Some(10), ..p.clone() }.behind(), 60, "offset below low");
        assert_eq!(PartitionProgress { committed: Some(100), ..p }.behind(), 0);
    }
}
