-- Raw validated events. ReplacingMergeTree keyed by (event_date, event_type,
-- event_id): a replayed event collapses into the stored one (queries use FINAL
-- or count distinct event_id until parts merge).
CREATE TABLE IF NOT EXISTS events (
    event_id String,
    user_id String,
    event_type String,
    event_category String,
    event_date Date,
    event_time DateTime,
    event_ms UInt16,
    session_id String,
    device_type String,
    country String,
    amount_cents Int64,
    properties String,
    kafka_partition Int32,
    kafka_offset Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_date, event_type, event_id);
