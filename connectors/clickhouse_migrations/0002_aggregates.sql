-- Lifecycle stage transitions from the profile stage (topic lifecycle.events).
-- ReplacingMergeTree: a re-emitted transition (same user, stage and causing
-- event) collapses into the stored one.
CREATE TABLE IF NOT EXISTS lifecycle_events (
    user_id String,
    from_stage String,
    to_stage String,
    transition_date Date,
    transitioned_at DateTime,
    transitioned_ms UInt16,
    cause_event_id String,
    cause_event_type String,
    kafka_partition Int32,
    kafka_offset Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(transition_date)
ORDER BY (transition_date, user_id, to_stage, cause_event_id);

-- Daily metrics per lifecycle stage and event type (seed metrics_daily, wide):
-- event counts, revenue (net of refunds, cents), conversions (transitions into
-- the stage caused by an event of the type) and active users as an exact
-- uniq state, so users are counted once when days, types or stages are merged.
-- Every rollup of a day writes a complete set of rows under a fresh rollup_id;
-- readers use the day's latest rollup (metrics_rollups), superseded rollups are
-- purged. A row's stage is the user's stage at the time of the event.
CREATE TABLE IF NOT EXISTS metrics_daily (
    metric_date Date,
    rollup_id UInt64,
    lifecycle_stage String,
    event_type String,
    event_category String,
    events UInt64,
    revenue_cents Int64,
    conversions UInt64,
    active_users AggregateFunction(uniqExact, String),
    computed_at DateTime
) ENGINE = MergeTree()
PARTITION BY toYear(metric_date)
ORDER BY (metric_date, rollup_id, lifecycle_stage, event_type);

-- One row per completed rollup of a day; the newest (computed_at, rollup_id) wins.
CREATE TABLE IF NOT EXISTS metrics_rollups (
    metric_date Date,
    rollup_id UInt64,
    computed_at DateTime
) ENGINE = MergeTree()
ORDER BY (metric_date, computed_at, rollup_id);

-- Days whose inputs changed: the sink marks a day after inserting its rows;
-- a day is rolled up again while its newest mark is not older than its newest rollup.
CREATE TABLE IF NOT EXISTS metrics_dirty (
    metric_date Date,
    marked_at DateTime
) ENGINE = ReplacingMergeTree(marked_at)
ORDER BY metric_date;
