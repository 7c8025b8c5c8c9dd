//! The sink loop: read a batch (up to `max_batch_records`, at most
//! `batch_linger_ms`) from `events.valid` and `lifecycle.events`, insert the
//! events and the stage transitions into ClickHouse (one RowBinary insert per
//! table), mark the days they touch as dirty, and commit the offsets only after
//! all of that succeeded; while ClickHouse is down it retries with backoff. A
//! replay re-inserts rows with the same keys, which ReplacingMergeTree
//! collapses. Records that cannot be read, and rows ClickHouse refuses (found
//! by splitting the batch, `stages::isolate`), go to `events.dlq`. Beside it, a rollup task recomputes `metrics_daily` for dirty
//! days every `rollup_interval_ms`, and once more when the sink stops.

use std::ops::Range;
use std::time::{Duration, Instant};

use lifecycle_connectors::clickhouse::sink::{EventRow, LifecycleRow, insert, mark_dirty};
use lifecycle_connectors::clickhouse::{Client, client, migrate, rollup};
use lifecycle_connectors::error::ConnectorError;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_connectors::kafka::source::RawRecord;
use lifecycle_pipeline::metrics::AnalyticsMetrics;
use lifecycle_pipeline::{ReasonCode, Rejection, Topic};
use lifecycle_schemas::RegistryClient;
use tokio::sync::watch;

use crate::config::LifecycleConfig;
use crate::stages::common::{EventDecoder, Polled, Poller, WriterSchemas, backoff, dead_letter_record};
use crate::stages::isolate::{Isolated, apply_isolating};

/// One batch's rows under poison-record isolation: indices `0..events.len()`
/// are event rows, the rest transition rows.
struct SinkBatch<'a> {
    ch: &'a Client,
    sink: &'a KafkaSink,
    dlq_topic: &'a str,
    m: &'a AnalyticsMetrics,
    events: Vec<(EventRow, &'a RawRecord)>,
    moves: Vec<(LifecycleRow, &'a RawRecord)>,
}

impl SinkBatch<'_> {
    /// The slices of `range` that are event rows and transition rows.
    fn split(&self, range: Range<usize>) -> (Range<usize>, Range<usize>) {
        let n = self.events.len();
        (range.start.min(n)..range.end.min(n), range.start.max(n) - n..range.end.max(n) - n)
    }
}

impl Isolated for SinkBatch<'_> {
    async fn apply(&mut self, range: Range<usize>) -> Result<(), ConnectorError> {
        let (ev, mv) = self.split(range);
        let rows: Vec<&EventRow> = self.events[ev].iter().map(|(r, _)| r).collect();
        let moves: Vec<&LifecycleRow> = self.moves[mv].iter().map(|(r, _)| r).collect();
        insert(self.ch, "events", &rows).await?;
        insert(self.ch, "lifecycle_events", &moves).await?;
        let event_days: Vec<u16> = rows.iter().map(|r| r.day()).collect();
        let move_days: Vec<u16> = moves.iter().map(|r| r.day()).collect();
        mark_dirty(self.ch, &event_days, &move_days).await?;
        let m = self.m;
        m.rows_inserted.with_label_values(&["events"]).inc_by(rows.len() as u64);
        m.rows_inserted.with_label_values(&["lifecycle_events"]).inc_by(moves.len() as u64);
        m.outcomes.applied("event", rows.len() as u64);
        m.outcomes.applied("transition", moves.len() as u64);
        Ok(())
    }

    async fn dead_letter(&mut self, index: usize, error: &ConnectorError) -> Result<(), ConnectorError> {
        let (record, event_id) = match index.checked_sub(self.events.len()) {
            None => (self.events[index].1, Some(self.events[index].0.event_id().to_owned())),
            Some(i) => (self.moves[i].1, None),
        };
        let rejection = Rejection::record(
            ReasonCode::StoreRejected,
            format!("ClickHouse refused the row (code {}): {error}", error.store_code().unwrap_or_default()),
        );
        let dlq = dead_letter_record(self.dlq_topic, "analytics", record, rejection, event_id, chrono::Utc::now());
        self.sink.send_all(std::slice::from_ref(&dlq)).await?;
        self.m.outcomes.dead_lettered(ReasonCode::StoreRejected.as_str(), 1);
        Ok(())
    }

    fn retried(&self, error: &ConnectorError) {
        self.m.retries.with_label_values(&[error.code()]).inc();
    }
}

/// The analytics sink's handle.
pub type SinkHandle = crate::stages::Handle<AnalyticsMetrics>;

/// Runs the sink until `shutdown` turns true; finishes the batch in hand first.
pub async fn run(cfg: &LifecycleConfig, handle: SinkHandle, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let ac = &cfg.analytics;
    ac.validate()?;
    crate::setup::require_topics(cfg, &[Topic::EventsValid, Topic::LifecycleEvents, Topic::EventsDlq])?;
    let decoder = EventDecoder::load(cfg)?;
    let mut attempt = 0;
    while let Err(e) = migrate::migrate(&cfg.clickhouse).await {
        handle.metrics.retries.with_label_values(&["migrate"]).inc();
        tracing::warn!(error = %e, attempt, "ClickHouse migrations failed; retrying");
        handle.health.stalled(format!("ClickHouse migrations: {e}"));
        tokio::select! {
            _ = tokio::time::sleep(backoff(attempt)) => {}
            // Nothing read yet, so nothing to finish: stop at once.
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        }
        attempt += 1;
    }
    let ch = client(&cfg.clickhouse);
    let mut writers =
        WriterSchemas::new(RegistryClient::new(&cfg.registry_url).map_err(|e| e.to_string())?, Duration::from_secs(60));
    let events_topic = cfg.topics.name(Topic::EventsValid);
    let lifecycle_topic = cfg.topics.name(Topic::LifecycleEvents);
    let dlq_topic = cfg.topics.name(Topic::EventsDlq);
    let dlq_sink = KafkaSink::new(&cfg.kafka).map_err(|e| e.to_string())?;
    let mut poller = Poller::new(
        &cfg.kafka,
        &ac.group_id,
        &[&events_topic, &lifecycle_topic],
        (ac.max_batch_records, Duration::from_millis(ac.batch_linger_ms)),
        handle.health.clone(),
    )?;
    crate::stages::common::spawn_transaction_guard(&cfg.kafka, &handle.registry)?;
    if let Some(addr) = ac.metrics_addr {
        crate::stages::common::serve_metrics(addr, handle.registry.clone(), handle.health.clone(), shutdown.clone());
    }
    let every = (Duration::from_millis(ac.rollup_interval_ms), Duration::from_secs(ac.purge_interval_secs));
    let rollups = tokio::spawn(rollup_loop(ch.clone(), every, handle.metrics.clone(), shutdown.clone()));
    tracing::info!(input = %events_topic, transitions = %lifecycle_topic, database = %cfg.clickhouse.database, "analytics sink started");
    loop {
        let batch: Vec<RawRecord> = match poller.next(&mut shutdown).await? {
            Polled::Batch(b) => b,
            Polled::Shutdown => break,
        };
        let m = &handle.metrics;
        m.records_in.inc_by(batch.len() as u64);
        let (transitions, events): (Vec<&RawRecord>, Vec<&RawRecord>) =
            batch.iter().partition(|r| *r.topic == *lifecycle_topic);
        writers.fill(&decoder.envelope, events.iter().copied(), &m.retries).await;
        let mut unreadable: Vec<(&RawRecord, Rejection, Option<String>)> = Vec::new();
        let mut rows = Vec::with_capacity(events.len());
        for r in events {
            match decoder.decode(writers.cache(), r) {
                Ok(e) => rows.push((EventRow::new(&e, r.partition, r.offset), r)),
                Err((rejection, id)) => unreadable.push((r, rejection, id)),
            }
        }
        let mut moves = Vec::with_capacity(transitions.len());
        for r in transitions {
            match LifecycleRow::parse(&r.payload, r.partition, r.offset) {
                Ok(row) => moves.push((row, r)),
                Err(e) => unreadable.push((r, Rejection::record(ReasonCode::InvalidJson, e), None)),
            }
        }
        let started = Instant::now();
        if !unreadable.is_empty() {
            let reasons: Vec<ReasonCode> = unreadable.iter().map(|(_, r, _)| r.reason).collect();
            let now = chrono::Utc::now();
            let dead: Vec<OutRecord> = unreadable
                .into_iter()
                .map(|(r, rejection, id)| dead_letter_record(&dlq_topic, "analytics", r, rejection, id, now))
                .collect();
            let mut attempt = 0;
            while let Err(e) = dlq_sink.send_all(&dead).await {
                m.retries.with_label_values(&["dlq"]).inc();
                tracing::warn!(error = %e, attempt, "dead-lettering failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            for reason in reasons {
                m.outcomes.dead_lettered(reason.as_str(), 1);
            }
        }
        let mut slices = SinkBatch { ch: &ch, sink: &dlq_sink, dlq_topic: &dlq_topic, m, events: rows, moves };
        let n = slices.events.len() + slices.moves.len();
        apply_isolating(n, &mut slices, &handle.health).await;
        if let Err(e) = poller.source().commit(&batch) {
            tracing::warn!(error = %e, "commit failed; the batch will be inserted again after a restart (deduplicated)");
        }
        tracing::debug!(records = batch.len(), ms = started.elapsed().as_millis() as u64, "batch inserted");
    }
    let last = rollups.await.unwrap_or(0);
    if let Err(e) = roll_dirty(&ch, last, &handle.metrics).await {
        tracing::warn!(error = %e, "final rollup failed; the next start rolls those days up");
    }
    tracing::info!("analytics sink stopped");
    Ok(())
}

/// Rolls up the dirty days, if any; returns the time of the rollup done (or `after`).
async fn roll_dirty(ch: &Client, after: u32, m: &AnalyticsMetrics) -> Result<u32, String> {
    let days = rollup::dirty_days(ch).await.map_err(|e| format!("dirty days: {e}"))?;
    if days.is_empty() {
        return Ok(after);
    }
    let started = Instant::now();
    let done = rollup::roll_up(ch, &days, after).await.map_err(|e| format!("rollup: {e}"))?;
    m.days_rolled_up.inc_by(days.len() as u64);
    m.rollup_seconds.observe(started.elapsed().as_secs_f64());
    tracing::debug!(days = days.len(), rollup_id = done.rollup_id, "metrics_daily rolled up");
    Ok(done.computed_at)
}

/// A rollup recomputes whole days, so it takes longer as a day fills up; the
/// pause after one is at least this many times as long as it took, which
/// keeps rollups to at most a fifth of the time (and of ClickHouse) however
/// large the days grow, at the price of staler `metrics_daily` on busy days.
const ROLLUP_PAUSE_FACTOR: u32 = 4;

/// The pause before the next rollup: the interval, or longer after a slow rollup.
fn rollup_pause(interval: Duration, last_took: Duration) -> Duration {
    interval.max(last_took * ROLLUP_PAUSE_FACTOR)
}

/// Rolls up every `every.0` (longer after slow rollups, see [`rollup_pause`])
/// and purges every `every.1` until `shutdown`; returns the time of its last rollup.
async fn rollup_loop(
    ch: Client,
    every: (Duration, Duration),
    m: AnalyticsMetrics,
    mut shutdown: watch::Receiver<bool>,
) -> u32 {
    let mut last = 0;
    let mut purged = Instant::now();
    let mut took = Duration::ZERO;
    loop {
        tokio::select! {
            () = tokio::time::sleep(rollup_pause(every.0, took)) => {}
            _ = shutdown.wait_for(|s| *s) => return last,
        }
        let started = Instant::now();
        let rolled = roll_dirty(&ch, last, &m).await;
        took = started.elapsed();
        match rolled {
            Ok(t) => last = t,
            Err(e) => {
                m.retries.with_label_values(&["rollup"]).inc();
                tracing::warn!(error = %e, "rollup failed; retrying at the next interval");
            }
        }
        if purged.elapsed() >= every.1 {
            purged = Instant::now();
            if let Err(e) = rollup::purge(&ch).await {
                tracing::warn!(error = %e, "purging superseded rollups failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_rollups_are_spaced_out_in_proportion_to_their_cost() {
        let interval = Duration::from_secs(5);
        assert_eq!(rollup_pause(interval, Duration::ZERO), interval);
        assert_eq!(rollup_pause(interval, Duration::from_millis(300)), interval);
        assert_eq!(rollup_pause(interval, Duration::from_secs(3)), Duration::from_secs(12));
        assert_eq!(rollup_pause(Duration::ZERO, Duration::from_secs(20)), Duration::from_secs(80));
    }
}
