//! Daily aggregates: `metrics_daily` per day, lifecycle stage and event type,
//! recomputed from the deduplicated `events` and `lifecycle_events` for every
//! day marked dirty since its last rollup.
//!
//! An event's stage is the `to_stage` of the user's newest transition at or
//! before the event (Acquisition without one), found by joining each event to
//! all of its user's transitions: 18.16 drops subquery columns used only
//! inside lambdas, so the array form of this lookup does not run there, and
//! it confuses aliases equal to column names across a JOIN, hence `e_*`.
//!
//! Why a rollup and not a materialized view: a view sees every inserted row,
//! so replayed and re-delivered events (the pipeline is at-least-once) would
//! add to sums, and an event's stage depends on transitions that may arrive
//! after it. Recomputing a day from `FINAL` data is idempotent and lets late
//! transitions re-attribute events. Each rollup writes a complete set of rows
//! for its days under a fresh `rollup_id` and then records itself in
//! `metrics_rollups`; readers use the newest rollup of each day, so they never
//! see half a rollup, and superseded rows are purged later.

use chrono::NaiveDate;

/// Days rolled up per statement (bounds the memory of one query).
const DAYS_PER_STATEMENT: usize = 31;

/// Rollups are purged this long after they were superseded, in seconds.
const PURGE_GRACE_SECS: u32 = 300;

/// Days whose newest dirty mark is not older than their newest rollup.
pub const DIRTY_DAYS: &str = "SELECT toString(metric_date) FROM \
     (SELECT metric_date, max(marked_at) AS marked FROM metrics_dirty GROUP BY metric_date) AS d \
     ANY LEFT JOIN \
     (SELECT metric_date, max(computed_at) AS rolled FROM metrics_rollups GROUP BY metric_date) AS r \
     USING metric_date WHERE marked >= rolled ORDER BY metric_date";

/// `toDate('YYYY-MM-DD'), ...` for `days`: SQL literals of dates we hold as
/// dates (never caller text), so they are rendered rather than bound.
pub fn date_literals(days: &[NaiveDate]) -> String {
    days.iter().map(|d| format!("toDate('{d}')")).collect::<Vec<_>>().join(", ")
}

/// The days whose newest dirty mark is not older than their newest rollup.
pub async fn dirty_days(ch: &clickhouse::Client) -> Result<Vec<NaiveDate>, clickhouse::error::Error> {
    let days: Vec<String> = ch.query(DIRTY_DAYS).fetch_all().await?;
    Ok(days.iter().filter_map(|d| d.parse().ok()).collect())
}

/// The rollup statement for `days` (rendered as literals: they are dates we
/// formatted, never caller input), `?` binding rollup_id then computed_at.
pub fn rollup_sql(days: &[NaiveDate]) -> String {
    let set = date_literals(days);
    format!(
        "INSERT INTO metrics_daily (metric_date, rollup_id, lifecycle_stage, event_type, event_category, \
             events, revenue_cents, conversions, active_users, computed_at) \
         SELECT metric_date, ?, lifecycle_stage, event_type, any(event_category), sum(events), sum(revenue_cents), \
             sum(conversions), uniqExactMergeState(active_users), toDateTime(?) \
         FROM ( \
             SELECT e_date AS metric_date, stage AS lifecycle_stage, e_type AS event_type, \
                 any(e_category) AS event_category, count() AS events, sum(e_cents) AS revenue_cents, \
                 toUInt64(0) AS conversions, uniqExactState(e_user) AS active_users \
             FROM ( \
                 SELECT event_id, any(event_date) AS e_date, any(event_type) AS e_type, \
                     any(event_category) AS e_category, any(user_id) AS e_user, any(amount_cents) AS e_cents, \
                     if(countIf(to_stage != '' AND moved_ms <= at_ms) = 0, 'Acquisition', \
                         argMaxIf(to_stage, moved_ms, to_stage != '' AND moved_ms <= at_ms)) AS stage \
                 FROM ( \
                     SELECT event_id, event_date, event_type, event_category, user_id, amount_cents, \
                         toUInt64(event_time) * 1000 + event_ms AS at_ms \
                     FROM events FINAL WHERE event_date IN ({set}) \
                 ) AS e ALL LEFT JOIN ( \
                     SELECT user_id, toUInt64(transitioned_at) * 1000 + transitioned_ms AS moved_ms, to_stage \
                     FROM lifecycle_events FINAL \
                     WHERE user_id IN (SELECT user_id FROM events WHERE event_date IN ({set})) \
                 ) AS t USING user_id \
                 GROUP BY event_id \
             ) \
             GROUP BY metric_date, lifecycle_stage, event_type \
             UNION ALL \
             SELECT transition_date AS metric_date, to_stage AS lifecycle_stage, cause_event_type AS event_type, \
                 any(splitByChar('.', cause_event_type)[1]) AS event_category, toUInt64(0) AS events, \
                 toInt64(0) AS revenue_cents, count() AS conversions, uniqExactStateIf(user_id, 0) AS active_users \
             FROM lifecycle_events FINAL WHERE transition_date IN ({set}) \
             GROUP BY metric_date, lifecycle_stage, event_type \
         ) \
         GROUP BY metric_date, lifecycle_stage, event_type"
    )
}

/// The statement recording a rollup of `days`; `?` binds rollup_id, computed_at.
pub fn record_sql(days: &[NaiveDate]) -> String {
    let set = date_literals(days);
    format!(
        "INSERT INTO metrics_rollups (metric_date, rollup_id, computed_at) \
         SELECT arrayJoin([{set}]), ?, toDateTime(?)"
    )
}

/// What one rollup did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    /// Its id (the `rollup_id` of its rows).
    pub rollup_id: u64,
    /// Its snapshot time (server clock, seconds).
    pub computed_at: u32,
    /// The days it recomputed.
    pub days: Vec<NaiveDate>,
}

/// Recomputes `days`. `after` is the previous rollup's time in this process:
/// two rollups of a day never share a second, so the newer one always wins.
pub async fn roll_up(
    ch: &clickhouse::Client,
    days: &[NaiveDate],
    after: u32,
) -> Result<Rollup, clickhouse::error::Error> {
    let mut computed_at: u32 = ch.query("SELECT toUInt32(now())").fetch_one().await?;
    while computed_at <= after {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        computed_at = ch.query("SELECT toUInt32(now())").fetch_one().await?;
    }
    let rollup_id: u64 = rand::random();
    for chunk in days.chunks(DAYS_PER_STATEMENT) {
        ch.query(&rollup_sql(chunk)).bind(rollup_id).bind(computed_at).execute().await?;
    }
    ch.query(&record_sql(days)).bind(rollup_id).bind(computed_at).execute().await?;
    Ok(Rollup { rollup_id, computed_at, days: days.to_vec() })
}

/// The newest rollup of each day in a range, as a subquery (`?` binds first, last day).
pub const CURRENT_ROLLUPS: &str = "SELECT metric_date, argMax(rollup_id, (computed_at, rollup_id)) FROM metrics_rollups \
     WHERE metric_date >= toDate(?) AND metric_date <= toDate(?) GROUP BY metric_date";

/// The statements that delete rows of rollups superseded more than a grace
/// period ago (ClickHouse mutations, run in the background).
pub fn purge_sql() -> Vec<String> {
    let current =
        "SELECT metric_date, argMax(rollup_id, (computed_at, rollup_id)) FROM metrics_rollups GROUP BY metric_date";
    ["metrics_daily", "metrics_rollups"]
        .iter()
        .map(|table| {
            format!(
                "ALTER TABLE {table} DELETE WHERE computed_at < now() - {PURGE_GRACE_SECS} \
                 AND (metric_date, rollup_id) NOT IN ({current})"
            )
        })
        .collect()
}

/// Deletes rows of superseded rollups ([`purge_sql`]).
pub async fn purge(ch: &clickhouse::Client) -> Result<(), clickhouse::error::Error> {
    for statement in purge_sql() {
        ch.query(&statement).execute().await?;
    }
    Ok(())
}
