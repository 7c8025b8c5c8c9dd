//! The ClickHouse side of the analytics sink: the `events` row and the batch insert.

use chrono::Timelike;
use clickhouse::Row;
use lifecycle_pipeline::Event;
use serde::Serialize;

/// One row of the ClickHouse `events` table.
#[derive(Debug, Row, Serialize)]
pub struct EventRow {
    event_id: String,
    user_id: String,
    event_type: String,
    event_category: String,
    /// Days since 1970-01-01 (ClickHouse `Date`).
    event_date: u16,
    /// Seconds since the epoch (ClickHouse `DateTime`).
    event_time: u32,
    event_ms: u16,
    session_id: String,
    device_type: String,
    country: String,
    amount_cents: i64,
    properties: String,
    kafka_partition: i32,
    kafka_offset: i64,
}

impl EventRow {
    /// The row of an event read from `partition`/`offset`.
    pub fn new(e: &Event, partition: i32, offset: i64) -> Self {
        let amount = e.event_properties.as_ref().and_then(|p| p.get("amount")).and_then(serde_json::Value::as_f64);
        let signed = match e.event_type.as_str() {
            "transaction.refund" => -1.0,
            _ => 1.0,
        };
        let secs = e.timestamp.timestamp();
        Self {
            event_id: e.event_id.clone(),
            user_id: e.user_id.clone(),
            event_type: e.event_type.as_str().to_owned(),
            event_category: e.event_type.category().to_owned(),
            event_date: u16::try_from(secs.div_euclid(86_400)).unwrap_or(0),
            event_time: u32::try_from(secs).unwrap_or(0),
            event_ms: u16::try_from(e.timestamp.nanosecond() / 1_000_000).unwrap_or(0),
            session_id: e.session_id.clone(),
            device_type: e.device_info.as_ref().and_then(|d| d.device_type.clone()).unwrap_or_default(),
            country: e.location.as_ref().and_then(|l| l.country.clone()).unwrap_or_default(),
            amount_cents: amount.map_or(0, |a| (signed * a * 100.0).round() as i64),
            properties: e
                .event_properties
                .as_ref()
                .map(|p| serde_json::Value::Object(p.clone()).to_string())
                .unwrap_or_default(),
            kafka_partition: partition,
            kafka_offset: offset,
        }
    }
}

/// Inserts `rows` into `events` in one RowBinary insert.
pub async fn insert(ch: &clickhouse::Client, rows: &[EventRow]) -> Result<(), clickhouse::error::Error> {
    let mut insert = ch.insert::<EventRow>("events").await?;
    for r in rows {
        insert.write(r).await?;
    }
    insert.end().await
}
