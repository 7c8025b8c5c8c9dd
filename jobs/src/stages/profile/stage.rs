//! The stage loop. Records that cannot be read go to `events.dlq` first. Then
//! per batch, in one PostgreSQL transaction: lock the batch's partition
//! offsets, drop records below them (applied before a restart) and repeated
//! event ids (duplicate deliveries), apply the rest to the profiles, evaluate
//! triggers (per event) and segments (per user), write profiles, history,
//! memberships, trigger executions and the workflow instances they start,
//! applied ids and offsets; only when PostgreSQL has accepted every statement,
//! produce the changelog, lifecycle events and membership changes, then
//! commit. Workflow commands go out after the commit (the instance rows are the
//! truth; a command only wakes the engine). Kafka offsets are committed
//! afterwards, best effort: PostgreSQL's offsets are the ones that count.
//!
//! A batch PostgreSQL refuses (a value it cannot hold) is split until the
//! records responsible are found (`stages::isolate`); those are dead-lettered
//! with reason `store_rejected` and the rest is applied.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use lifecycle_connectors::error::ConnectorError;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_connectors::kafka::source::RawRecord;
use lifecycle_connectors::postgres::rules::{self, MembershipChange, RuleWrites};
use lifecycle_connectors::postgres::{self, profiles};
use lifecycle_pipeline::metrics::ProfileMetrics;
use lifecycle_pipeline::profile::{LifecycleRules, Profile, ProfileCache, ScoreParams, Transition};
use lifecycle_pipeline::rules::Rules;
use lifecycle_pipeline::{Event, ReasonCode, Rejection, Topic};
use lifecycle_schemas::RegistryClient;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::config::LifecycleConfig;
use crate::stages::Health;
use crate::stages::common::{EventDecoder, Polled, Poller, WriterSchemas, dead_letter_record, serve_metrics};
use crate::stages::isolate::{Isolated, apply_isolating};

/// The profile stage's handle.
pub type ProfileHandle = crate::stages::Handle<ProfileMetrics>;

impl ProfileHandle {
    /// Records consumed so far.
    pub fn consumed(&self) -> u64 {
        self.metrics.records_in.get()
    }
}

/// Static parts of the stage.
struct Ctx {
    group: String,
    topic: String,
    changelog_topic: String,
    lifecycle_topic: String,
    segments_topic: String,
    commands_topic: String,
    dlq_topic: String,
    rules: LifecycleRules,
    params: ScoreParams,
    decoder: EventDecoder,
}

/// A consumed record, decoded (`None`: unreadable, already dead-lettered).
struct Decoded {
    partition: i32,
    offset: i64,
    event: Option<Event>,
}

/// What a committed slice of a batch did.
#[derive(Default)]
struct Applied {
    /// The profiles it updated, to cache again.
    profiles: HashMap<String, Profile>,
    events: u64,
    skipped_offset: u64,
    skipped_duplicate: u64,
}

/// Evaluates `rules`' segments for `profiles` at wall-clock time against the
/// memberships they had `before`: members, changes and the next recheck.
fn evaluate_segments<'p>(
    rules: &Rules,
    profiles: impl Iterator<Item = &'p Profile>,
    mut before: HashMap<String, HashSet<uuid::Uuid>>,
    writes: &mut RuleWrites,
) {
    let now = chrono::Utc::now();
    for p in profiles {
        let eval = rules.memberships(p, now);
        let was = before.remove(&p.user_id).unwrap_or_default();
        let change = |segment_id, change| MembershipChange { user_id: p.user_id.clone(), segment_id, change, at: now };
        for mb in eval.members.iter().filter(|mb| !was.contains(&mb.segment_id)) {
            writes.changes.push(change(mb.segment_id, "segment.entered"));
        }
        for s in was.iter().filter(|s| !eval.members.iter().any(|mb| mb.segment_id == **s)) {
            writes.changes.push(change(*s, "segment.exited"));
        }
        writes
            .memberships
            .push((p.user_id.clone(), eval.members.iter().map(|mb| (mb.segment_id, mb.valid_until)).collect()));
        writes.rechecks.push((p.user_id.clone(), eval.recheck_at));
    }
}

/// The `segments.memberships` records of `changes`.
fn membership_records(topic: &str, changes: &[MembershipChange]) -> Vec<OutRecord> {
    changes
        .iter()
        .map(|c| OutRecord {
            topic: topic.to_owned(),
            key: Some(c.user_id.as_bytes().to_vec()),
            payload: c.to_json().to_string().into_bytes(),
            headers: vec![],
        })
        .collect()
}

/// Users re-evaluated per recheck transaction.
const RECHECK_BATCH: i64 = 1000;

/// Re-evaluates the segments of users whose window edge has passed without
/// new events (at most `RECHECK_BATCH` per call); returns how many were looked at.
async fn recheck_segments(
    topic: &str,
    pool: &PgPool,
    sink: &KafkaSink,
    rules: &Rules,
    m: &ProfileMetrics,
) -> Result<usize, String> {
    let mut tx = profiles::begin(pool).await.map_err(|e| format!("begin: {e}"))?;
    let users = tx.due_rechecks(RECHECK_BATCH).await.map_err(|e| format!("due rechecks: {e}"))?;
    if users.is_empty() {
        return Ok(0);
    }
    let loaded = tx.load(&users).await.map_err(|e| format!("load: {e}"))?;
    let before = tx.memberships(&users).await.map_err(|e| format!("memberships: {e}"))?;
    let mut writes = RuleWrites::default();
    evaluate_segments(rules, loaded.values(), before, &mut writes);
    sink.send_all(&membership_records(topic, &writes.changes)).await.map_err(|e| format!("produce: {e}"))?;
    tx.commit_rules(&writes).await.map_err(|e| format!("commit: {e}"))?;
    for c in &writes.changes {
        m.segment_changes.with_label_values(&[c.change.trim_start_matches("segment.")]).inc();
    }
    Ok(users.len())
}

/// Every `every`, re-evaluates the segments of users whose window edge
/// passed, whether or not events arrive; stops with the stage.
async fn sweep_segments(
    (pool, sink, m): (PgPool, KafkaSink, ProfileMetrics),
    topic: String,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let rules = match rules::load_rules(&pool).await {
            Ok(r) if !r.segments.is_empty() => r,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "segment recheck: loading segments failed");
                continue;
            }
        };
        loop {
            match recheck_segments(&topic, &pool, &sink, &rules, &m).await {
                Ok(n) if n as i64 == RECHECK_BATCH => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(users = n, "segments re-evaluated at their window edge");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "segment recheck failed; retried later");
                    break;
                }
            }
        }
    }
}

/// Applies one slice of a batch in one transaction; returns what it did. The
/// slice's cached profiles are taken out of `cache` and updated in place: if
/// the slice fails they are simply loaded again from PostgreSQL, which the
/// failed transaction left as it was.
async fn apply_batch(
    ctx: &Ctx,
    pool: &PgPool,
    sink: &KafkaSink,
    cache: &mut ProfileCache,
    (batch, segments_and_triggers): (&[Decoded], &Rules),
    m: &ProfileMetrics,
) -> Result<Applied, ConnectorError> {
    let mut tx = profiles::begin(pool).await?;
    let mut partitions: Vec<i32> = batch.iter().map(|d| d.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    let applied_up_to = tx.lock_offsets(&ctx.group, &ctx.topic, &partitions).await?;
    let mut done = Applied::default();
    let mut fresh: Vec<&Event> = Vec::with_capacity(batch.len());
    for d in batch {
        let Some(e) = &d.event else { continue };
        if d.offset >= applied_up_to.get(&d.partition).copied().unwrap_or(0) {
            fresh.push(e);
        } else {
            done.skipped_offset += 1;
        }
    }
    let ids: Vec<String> = fresh.iter().map(|e| e.event_id.clone()).collect();
    let mut seen = tx.seen(&ids).await?;
    let mut events: Vec<&Event> = Vec::with_capacity(fresh.len());
    for e in fresh {
        if seen.insert(e.event_id.clone()) {
            events.push(e);
        } else {
            done.skipped_duplicate += 1;
        }
    }
    let needed: HashSet<&str> = events.iter().map(|e| e.user_id.as_str()).collect();
    let missing: Vec<String> = needed.iter().filter(|u| !cache.contains(u)).map(|u| (*u).to_owned()).collect();
    m.cache_lookups.with_label_values(&["hit"]).inc_by((needed.len() - missing.len()) as u64);
    m.cache_lookups.with_label_values(&["miss"]).inc_by(missing.len() as u64);
    let mut loaded = tx.load(&missing).await?;
    let mut working: HashMap<String, Profile> = HashMap::new();
    let mut transitions: Vec<Transition> = Vec::new();
    let mut writes = RuleWrites::default();
    for e in &events {
        let p = working.entry(e.user_id.clone()).or_insert_with(|| {
            cache
                .take(&e.user_id)
                .or_else(|| loaded.remove(&e.user_id))
                .unwrap_or_else(|| Profile::new(e.user_id.clone()))
        });
        if let Some(t) = p.apply(e, &ctx.rules, &ctx.params) {
            transitions.push(t);
        }
        writes.triggers.extend(segments_and_triggers.triggers(e, p));
    }
    if !segments_and_triggers.segments.is_empty() && !working.is_empty() {
        let users: Vec<String> = working.keys().cloned().collect();
        let before = tx.memberships(&users).await?;
        evaluate_segments(segments_and_triggers, working.values(), before, &mut writes);
    }
    // Each profile is serialised once: the changelog record's payload is also
    // the document written to PostgreSQL.
    let touched: Vec<&Profile> = working.values().collect();
    let mut out = Vec::with_capacity(touched.len() + transitions.len());
    for p in &touched {
        // Sized up front: growing the buffer copied large documents several times.
        let mut doc = Vec::with_capacity(p.approx_bytes());
        serde_json::to_writer(&mut doc, p).map_err(|e| ConnectorError::Encode(e.to_string()))?;
        out.push(OutRecord {
            topic: ctx.changelog_topic.clone(),
            key: Some(p.user_id.as_bytes().to_vec()),
            payload: doc,
            headers: vec![],
        });
    }
    for t in &transitions {
        let doc = serde_json::json!({
            "event_type": "lifecycle.stage_changed", "user_id": t.user_id, "from_stage": t.from.as_str(),
            "to_stage": t.to.as_str(), "transitioned_at": t.at, "cause_event_id": t.event_id,
            "cause_event_type": t.event_type,
        });
        out.push(OutRecord {
            topic: ctx.lifecycle_topic.clone(),
            key: Some(t.user_id.as_bytes().to_vec()),
            payload: doc.to_string().into_bytes(),
            headers: vec![],
        });
    }
    out.extend(membership_records(&ctx.segments_topic, &writes.changes));
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for d in batch {
        let e = next.entry(d.partition).or_insert(d.offset + 1);
        *e = (*e).max(d.offset + 1);
    }
    let written = touched
        .iter()
        .zip(&out)
        .map(|(p, r)| std::str::from_utf8(&r.payload).map(|doc| (*p, doc)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConnectorError::Encode(e.to_string()))?;
    let applied: Vec<(String, String)> = events.iter().map(|e| (e.event_id.clone(), e.user_id.clone())).collect();
    tx.write(&written, &transitions, &writes, &applied, &ctx.group, &ctx.topic, &next).await?;
    // PostgreSQL accepted the batch: its outputs go out before the commit, so
    // a crash in between re-applies the batch and produces them again (same
    // keys, same content) rather than losing them; a batch PostgreSQL refuses
    // produces nothing.
    sink.send_all(&out).await?;
    tx.commit().await?;
    let commands: Vec<OutRecord> = writes
        .triggers
        .iter()
        .filter_map(|t| {
            let (workflow_id, instance_id) = t.start?;
            let cmd = serde_json::json!({
                "type": "start", "instance_id": instance_id, "workflow_id": workflow_id,
                "user_id": t.user_id, "trigger_id": t.trigger_id, "variables": t.variables,
            });
            Some(OutRecord {
                topic: ctx.commands_topic.clone(),
                key: Some(t.user_id.as_bytes().to_vec()),
                payload: cmd.to_string().into_bytes(),
                headers: vec![],
            })
        })
        .collect();
    if !commands.is_empty()
        && let Err(e) = sink.send_all(&commands).await
    {
        // The instances are committed; the engine finds them without the command.
        tracing::warn!(error = %e, commands = commands.len(), "workflow commands not produced");
    }
    for t in &writes.triggers {
        m.trigger_evaluations.with_label_values(&[if t.met { "met" } else { "not_met" }]).inc();
    }
    for c in &writes.changes {
        m.segment_changes.with_label_values(&[c.change.trim_start_matches("segment.")]).inc();
    }
    for t in &transitions {
        m.transitions.with_label_values(&[t.to.as_str()]).inc();
    }
    done.events = events.len() as u64;
    done.profiles = working;
    Ok(done)
}

/// One consumed batch under poison-record isolation.
struct ProfileBatch<'a> {
    ctx: &'a Ctx,
    pool: &'a PgPool,
    sink: &'a KafkaSink,
    cache: &'a mut ProfileCache,
    rules: &'a Rules,
    m: &'a ProfileMetrics,
    records: &'a [RawRecord],
    decoded: &'a [Decoded],
}

impl Isolated for ProfileBatch<'_> {
    async fn apply(&mut self, range: Range<usize>) -> Result<(), ConnectorError> {
        let done =
            apply_batch(self.ctx, self.pool, self.sink, self.cache, (&self.decoded[range], self.rules), self.m).await?;
        let o = &self.m.outcomes;
        o.applied("event", done.events);
        o.skipped("offset", done.skipped_offset);
        o.skipped("event_id", done.skipped_duplicate);
        self.cache.extend(done.profiles.into_values());
        Ok(())
    }

    async fn dead_letter(&mut self, index: usize, error: &ConnectorError) -> Result<(), ConnectorError> {
        let (r, d) = (&self.records[index], &self.decoded[index]);
        let event = d.event.as_ref();
        let rejection = Rejection::record(
            ReasonCode::StoreRejected,
            format!("PostgreSQL refused the event ({}): {error}", error.store_code().unwrap_or_default()),
        );
        let id = event.map(|e| e.event_id.clone());
        let dlq = dead_letter_record(&self.ctx.dlq_topic, "profile", r, rejection, id, chrono::Utc::now());
        self.sink.send_all(std::slice::from_ref(&dlq)).await?;
        profiles::skip_record(
            self.pool,
            (&self.ctx.group, &self.ctx.topic),
            (d.partition, d.offset),
            event.map(|e| (e.event_id.as_str(), e.user_id.as_str())),
        )
        .await?;
        self.m.outcomes.dead_lettered(ReasonCode::StoreRejected.as_str(), 1);
        Ok(())
    }

    fn retried(&self, error: &ConnectorError) {
        self.m.retries.with_label_values(&[error.code()]).inc();
    }
}

/// Puts the records that cannot be read on the dead-letter topic (retrying
/// while Kafka is down) and counts them.
async fn dead_letter_unreadable(
    ctx: &Ctx,
    sink: &KafkaSink,
    unreadable: Vec<(&RawRecord, Rejection, Option<String>)>,
    (m, health): (&ProfileMetrics, &Health),
) {
    if unreadable.is_empty() {
        return;
    }
    let reasons: Vec<ReasonCode> = unreadable.iter().map(|(_, r, _)| r.reason).collect();
    let records: Vec<OutRecord> = unreadable
        .into_iter()
        .map(|(r, rejection, id)| dead_letter_record(&ctx.dlq_topic, "profile", r, rejection, id, chrono::Utc::now()))
        .collect();
    let mut attempt = 0;
    while let Err(e) = sink.send_all(&records).await {
        let e = ConnectorError::from(e);
        m.retries.with_label_values(&[e.code()]).inc();
        if attempt >= 2 {
            health.stalled(format!("{}: {e}", e.code()));
        }
        tokio::time::sleep(crate::stages::common::backoff(attempt)).await;
        attempt += 1;
    }
    for reason in reasons {
        m.outcomes.dead_lettered(reason.as_str(), 1);
    }
}

/// Runs the stage until `shutdown` turns true; finishes the batch in hand first.
pub async fn run(
    cfg: &LifecycleConfig,
    handle: ProfileHandle,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let pc = &cfg.profile;
    pc.validate()?;
    crate::setup::require_topics(
        cfg,
        &[
            Topic::EventsValid,
            Topic::EventsDlq,
            Topic::ProfilesChangelog,
            Topic::LifecycleEvents,
            Topic::SegmentMemberships,
            Topic::WorkflowCommands,
        ],
    )?;
    let ctx = Ctx {
        group: pc.group_id.clone(),
        topic: cfg.topics.name(Topic::EventsValid),
        changelog_topic: cfg.topics.name(Topic::ProfilesChangelog),
        lifecycle_topic: cfg.topics.name(Topic::LifecycleEvents),
        segments_topic: cfg.topics.name(Topic::SegmentMemberships),
        commands_topic: cfg.topics.name(Topic::WorkflowCommands),
        dlq_topic: cfg.topics.name(Topic::EventsDlq),
        rules: pc.lifecycle.clone(),
        params: ScoreParams::default(),
        decoder: EventDecoder::load(cfg)?,
    };
    let pool = postgres::connect_and_migrate(&cfg.postgres).await.map_err(|e| format!("database: {e}"))?;
    let client = RegistryClient::new(&cfg.registry_url).map_err(|e| e.to_string())?;
    let mut writers = WriterSchemas::new(client, Duration::from_secs(60));
    let sink = KafkaSink::new(&cfg.kafka).map_err(|e| e.to_string())?;
    let mut poller = Poller::new(
        &cfg.kafka,
        &pc.group_id,
        &[&ctx.topic],
        (pc.max_batch_records, Duration::from_millis(pc.batch_linger_ms)),
        handle.health.clone(),
    )?;
    let m = handle.metrics.clone();
    crate::stages::common::spawn_transaction_guard(&cfg.kafka, &handle.registry)?;
    if let Some(addr) = pc.metrics_addr {
        serve_metrics(addr, handle.registry.clone(), handle.health.clone(), shutdown.clone());
    }
    tracing::info!(input = %ctx.topic, group = %ctx.group, "profile stage started");
    let mut cache = ProfileCache::new(pc.cache_mib.saturating_mul(1 << 20));
    let mut rebalances = poller.source().rebalances();
    let mut last_housekeeping = Instant::now();
    let reload_every = Duration::from_millis(pc.rules_reload_ms);
    let mut segments_and_triggers = Rules::default();
    let mut rules_loaded: Option<Instant> = None;
    let sweeper = tokio::spawn(sweep_segments(
        (pool.clone(), sink.clone(), m.clone()),
        ctx.segments_topic.clone(),
        reload_every,
        shutdown.clone(),
    ));
    loop {
        let polled = poller.next(&mut shutdown).await?;
        if poller.source().rebalances() != rebalances {
            // Partitions may have moved: another instance may have changed these users.
            rebalances = poller.source().rebalances();
            cache.clear();
        }
        let batch = match polled {
            Polled::Batch(b) => b,
            Polled::Shutdown => break,
        };
        if rules_loaded.is_none_or(|at| at.elapsed() >= reload_every) {
            match rules::load_rules(&pool).await {
                Ok(r) => {
                    if rules_loaded.is_none() {
                        let (segments, triggers) = (r.segments.len(), r.trigger_count());
                        tracing::info!(segments, triggers, "segments and triggers loaded");
                    }
                    segments_and_triggers = r;
                    rules_loaded = Some(Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, "reloading segments and triggers failed; keeping the last ones"),
            }
        }

        let started = Instant::now();
        m.records_in.inc_by(batch.len() as u64);
        m.batch_size.observe(batch.len() as f64);
        writers.fill(&ctx.decoder.envelope, &batch, &m.retries).await;
        let mut unreadable = Vec::new();
        let decoded: Vec<Decoded> = batch
            .iter()
            .map(|r| Decoded {
                partition: r.partition,
                offset: r.offset,
                event: match ctx.decoder.decode(writers.cache(), r) {
                    Ok(e) => Some(e),
                    Err((rejection, id)) => {
                        unreadable.push((r, rejection, id));
                        None
                    }
                },
            })
            .collect();
        dead_letter_unreadable(&ctx, &sink, unreadable, (&m, &handle.health)).await;
        let mut slices = ProfileBatch {
            ctx: &ctx,
            pool: &pool,
            sink: &sink,
            cache: &mut cache,
            rules: &segments_and_triggers,
            m: &m,
            records: &batch,
            decoded: &decoded,
        };
        apply_isolating(decoded.len(), &mut slices, &handle.health).await;
        m.flush_seconds.observe(started.elapsed().as_secs_f64());
        m.cache_bytes.set(i64::try_from(cache.bytes()).unwrap_or(i64::MAX));
        m.cache_entries.set(i64::try_from(cache.len()).unwrap_or(i64::MAX));
        if let Err(e) = poller.source().commit(&batch) {
            tracing::debug!(error = %e, "kafka commit failed; PostgreSQL offsets stay authoritative");
        }
        if last_housekeeping.elapsed() > Duration::from_secs(60) {
            last_housekeeping = Instant::now();
            match profiles::prune_processed(&pool, pc.dedup_window_hours).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "pruned applied event ids past the dedup window"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning applied event ids failed"),
            }
            if let Ok(lags) = poller.source().lag() {
                for (_, partition, lag) in lags {
                    m.lag.with_label_values(&[&partition.to_string()]).set(lag);
                }
            }
        }
    }
    let _ = sweeper.await;
    tracing::info!("profile stage stopped");
    Ok(())
}
