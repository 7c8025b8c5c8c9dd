//! The ClickHouse side of the analytics sink: the `events` and
//! `lifecycle_events` rows, batch inserts, and the marks that tell the rollup
//! which days changed.

use chrono::{DateTime, NaiveDate, Timelike, Utc};
use clickhouse::Row;
use lifecycle_pipeline::Event;
use serde::{Deserialize, Serialize};

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
        // Revenue as the profile counts it: purchases minus refunds.
        let signed = match e.event_type.as_str() {
            "transaction.purchase_complete" => 1.0,
            "transaction.refund" => -1.0,
            _ => 0.0,
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

impl EventRow {
    /// The event's day.
    pub fn day(&self) -> u16 {
        self.event_date
    }

    /// The event's id.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }
}

/// The JSON record the profile stage writes to `lifecycle.events`.
#[derive(Debug, Deserialize)]
struct StageChanged {
    user_id: String,
    from_stage: String,
    to_stage: String,
    transitioned_at: DateTime<Utc>,
    cause_event_id: String,
    #[serde(default)]
    cause_event_type: String,
}

/// One row of the ClickHouse `lifecycle_events` table.
#[derive(Debug, Row, Serialize)]
pub struct LifecycleRow {
    user_id: String,
    from_stage: String,
    to_stage: String,
    transition_date: u16,
    transitioned_at: u32,
    transitioned_ms: u16,
    cause_event_id: String,
    cause_event_type: String,
    kafka_partition: i32,
    kafka_offset: i64,
}

impl LifecycleRow {
    /// Parses a `lifecycle.events` record; the error says what is wrong with it.
    pub fn parse(payload: &[u8], partition: i32, offset: i64) -> Result<Self, String> {
        let r: StageChanged = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        let secs = r.transitioned_at.timestamp();
        Ok(Self {
            user_id: r.user_id,
            from_stage: r.from_stage,
            to_stage: r.to_stage,
            transition_date: u16::try_from(secs.div_euclid(86_400)).map_err(|_| "transitioned_at out of range")?,
            transitioned_at: u32::try_from(secs).map_err(|_| "transitioned_at out of range")?,
            transitioned_ms: u16::try_from(r.transitioned_at.nanosecond() / 1_000_000).unwrap_or(0),
            cause_event_id: r.cause_event_id,
            cause_event_type: r.cause_event_type,
            kafka_partition: partition,
            kafka_offset: offset,
        })
    }

    /// The transition's day.
    pub fn day(&self) -> u16 {
        self.transition_date
    }
}

/// Inserts `rows` into `table` in one RowBinary insert (nothing for no rows).
pub async fn insert<R>(ch: &clickhouse::Client, table: &str, rows: &[&R]) -> Result<(), clickhouse::error::Error>
where
    R: for<'a> Row<Value<'a> = R> + Serialize,
{
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = ch.insert::<R>(table).await?;
    for r in rows {
        insert.write(*r).await?;
    }
    insert.end().await
}

/// The date of a ClickHouse `Date` (days since 1970-01-01).
pub fn date_of(day: u16) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(719_163 + i32::from(day)).unwrap_or_default()
}

/// Marks days whose rows changed, after those rows were inserted: `events_days`
/// directly; for transitions, their days and every later day holding events
/// (a transition changes the stage of the user's later events).
pub async fn mark_dirty(
    ch: &clickhouse::Client,
    events_days: &[u16],
    transition_days: &[u16],
) -> Result<(), clickhouse::error::Error> {
    let mut days: Vec<u16> = events_days.iter().chain(transition_days).copied().collect();
    days.sort_unstable();
    days.dedup();
    if days.is_empty() {
        return Ok(());
    }
    let dates: Vec<NaiveDate> = days.iter().map(|d| date_of(*d)).collect();
    let list = super::rollup::date_literals(&dates);
    ch.query(&format!("INSERT INTO metrics_dirty (metric_date, marked_at) SELECT arrayJoin([{list}]), now()"))
        .execute()
        .await?;
    if let Some(first) = transition_days.iter().min() {
        ch.query(
            "INSERT INTO metrics_dirty (metric_date, marked_at) \
             SELECT DISTINCT event_date, now() FROM events WHERE event_date >= toDate(?)",
        )
        .bind(date_of(*first).to_string())
        .execute()
        .await?;
    }
    Ok(())
}
