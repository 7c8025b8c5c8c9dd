//! `GET /analytics` in SQL: a query over the newest rollup of each day of
//! `metrics_daily`. Identifiers come from the parameter enums; filter values
//! and dates are bound by the client (ClickHouse 18.16 has no server-side
//! parameters), so no caller text becomes SQL.

use chrono::{DateTime, NaiveDate, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::params::{Aggregation, AnalyticsQuery, Dimension, Metric};
use crate::clickhouse::rollup::CURRENT_ROLLUPS;

/// One data point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// First day of the time bucket.
    pub period: NaiveDate,
    /// The requested dimensions' values, by name.
    #[serde(flatten)]
    pub dimensions: serde_json::Map<String, serde_json::Value>,
    /// The metric.
    pub value: serde_json::Value,
}

/// A whole result (every page).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryResult {
    /// The data points, ordered by period then dimensions.
    pub points: Vec<Point>,
    /// When the newest rollup used was computed (none without data).
    pub computed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Row, Deserialize)]
struct RawPoint {
    period: String,
    d_stage: String,
    d_type: String,
    d_category: String,
    value: i64,
    rolled_at: u32,
}

fn value_expr(m: Metric) -> &'static str {
    match m {
        Metric::Events => "toInt64(sum(events))",
        Metric::ActiveUsers => "toInt64(uniqExactMerge(active_users))",
        Metric::Revenue => "sum(revenue_cents)",
        Metric::Conversions => "toInt64(sum(conversions))",
    }
}

fn period_expr(a: Aggregation) -> &'static str {
    match a {
        Aggregation::Day => "toString(metric_date)",
        Aggregation::Week => "toString(toMonday(metric_date))",
        Aggregation::Month => "toString(toStartOfMonth(metric_date))",
        Aggregation::Total => "toString(toDate(?))",
    }
}

/// The SQL of `q`; binds, in order: \[range start for `total`\], from, to, from,
/// to, then each filter's values in dimension order. At most `limit` rows.
pub fn sql(q: &AnalyticsQuery, limit: usize) -> String {
    let dim = |d: Dimension| if q.dimensions.contains(&d) { d.as_str() } else { "''" };
    let mut where_ =
        String::from("metric_date >= toDate(?) AND metric_date <= toDate(?) AND (metric_date, rollup_id) IN (");
    where_.push_str(CURRENT_ROLLUPS);
    where_.push(')');
    for (d, values) in &q.filters {
        let marks = vec!["?"; values.len()].join(", ");
        where_.push_str(&format!(" AND {} IN ({marks})", d.as_str()));
    }
    format!(
        "SELECT {period} AS period, {stage} AS d_stage, {etype} AS d_type, {ecat} AS d_category, \
             {value} AS value, toUInt32(max(computed_at)) AS rolled_at \
         FROM metrics_daily WHERE {where_} \
         GROUP BY period, d_stage, d_type, d_category HAVING value != 0 \
         ORDER BY period, d_stage, d_type, d_category LIMIT {limit}",
        period = period_expr(q.aggregation),
        stage = dim(Dimension::LifecycleStage),
        etype = dim(Dimension::EventType),
        ecat = dim(Dimension::EventCategory),
        value = value_expr(q.metric),
    )
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// More groups than `max_rows`.
    #[error("the query yields more than {0} data points; narrow the date range, filters or dimensions")]
    TooLarge(usize),
    /// ClickHouse failed.
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// The values [`sql`] binds, in order (all strings).
pub fn binds(q: &AnalyticsQuery) -> Vec<String> {
    let (from, to) = (q.from.to_string(), q.to.to_string());
    let mut out = Vec::new();
    if q.aggregation == Aggregation::Total {
        out.push(from.clone());
    }
    out.extend([from.clone(), to.clone(), from, to]);
    out.extend(q.filters.values().flatten().cloned());
    out
}

/// Runs `q`, returning at most `max_rows` points.
pub async fn run(ch: &clickhouse::Client, q: &AnalyticsQuery, max_rows: usize) -> Result<QueryResult, QueryError> {
    let mut query = ch.query(&sql(q, max_rows + 1));
    for v in binds(q) {
        query = query.bind(v);
    }
    let raw: Vec<RawPoint> = query.fetch_all().await?;
    if raw.len() > max_rows {
        return Err(QueryError::TooLarge(max_rows));
    }
    let computed_at = raw.iter().map(|r| r.rolled_at).max().and_then(|s| DateTime::from_timestamp(i64::from(s), 0));
    let points = raw
        .into_iter()
        .map(|r| {
            let mut dimensions = serde_json::Map::new();
            for d in &q.dimensions {
                let v = match d {
                    Dimension::LifecycleStage => &r.d_stage,
                    Dimension::EventType => &r.d_type,
                    Dimension::EventCategory => &r.d_category,
                };
                dimensions.insert(d.as_str().to_owned(), serde_json::Value::String(v.clone()));
            }
            let value = match q.metric {
                Metric::Revenue => serde_json::json!((r.value as f64) / 100.0),
                _ => serde_json::json!(r.value),
            };
            Point { period: r.period.parse().unwrap_or(q.from), dimensions, value }
        })
        .collect();
    Ok(QueryResult { points, computed_at })
}
