//! The analytics query API: `GET /analytics?metric=&dimensions=&filters=&date_range=&aggregation=&page=&page_size=`
//! over ClickHouse's daily aggregates, readable by every role (analyst included).

pub mod cache;
pub mod params;
pub mod query;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::auth::{Access, Caller};
use crate::http::error::ApiError;
use cache::ResultCache;
use query::QueryError;

/// Settings of `GET /analytics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsApiConfig {
    /// How long a result is served from the cache, in seconds (0: no cache).
    pub cache_ttl_secs: u64,
    /// Most cached results.
    pub cache_max_entries: usize,
    /// Most data points the cached results hold together (what bounds the
    /// cache's memory, about 200 bytes a point).
    pub cache_max_points: usize,
    /// How often the cache asks ClickHouse whether a rollup happened, in milliseconds.
    pub freshness_check_ms: u64,
    /// Most data points one query may return (over all pages).
    pub max_points: usize,
}

impl Default for AnalyticsApiConfig {
    fn default() -> Self {
        Self {
            cache_ttl_secs: 60,
            cache_max_entries: 1000,
            cache_max_points: 500_000,
            freshness_check_ms: 1000,
            max_points: 100_000,
        }
    }
}

/// Handler state.
#[derive(Clone)]
pub struct AnalyticsState {
    /// ClickHouse, on the analytics database.
    pub ch: clickhouse::Client,
    /// Results.
    pub cache: Arc<ResultCache>,
    /// Settings.
    pub config: AnalyticsApiConfig,
}

impl AnalyticsState {
    /// State for `ch` with `config`.
    pub fn new(ch: clickhouse::Client, config: AnalyticsApiConfig) -> Self {
        let cache = ResultCache::new(
            Duration::from_secs(config.cache_ttl_secs),
            config.cache_max_entries,
            config.cache_max_points,
            Duration::from_millis(config.freshness_check_ms),
        );
        Self { ch, cache: Arc::new(cache), config }
    }
}

/// Routes (without authentication: the caller's router adds it).
pub fn router(state: AnalyticsState) -> Router {
    Router::new().route("/analytics", get(analytics)).with_state(state)
}

#[derive(clickhouse::Row, Deserialize)]
struct GenerationRow {
    newest: u32,
    rollups: u64,
}

/// Asks ClickHouse for the rollup generation when due; a failure keeps the
/// cache as it is (it still expires by TTL).
async fn refresh_generation(s: &AnalyticsState) {
    let now = Instant::now();
    if !s.cache.needs_check(now) {
        return;
    }
    match s
        .ch
        .query("SELECT toUInt32(max(computed_at)) AS newest, count() AS rollups FROM metrics_rollups")
        .fetch_one::<GenerationRow>()
        .await
    {
        Ok(g) => s.cache.observe((g.newest, g.rollups), now),
        Err(e) => tracing::warn!(error = %e, "analytics: rollup generation check failed"),
    }
}

async fn analytics(
    State(s): State<AnalyticsState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(Access::Read)?;
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect();
    let (q, page) = params::parse(&pairs, Utc::now().date_naive())?;
    refresh_generation(&s).await;
    let (result, hit) = match s.cache.get(&q, Instant::now()) {
        Some(r) => (r, true),
        None => {
            let r = Arc::new(query::run(&s.ch, &q, s.config.max_points).await.map_err(|e| match e {
                QueryError::TooLarge(_) => ApiError::bad_field("dimensions", "too_many_points", e.to_string()),
                QueryError::ClickHouse(e) => {
                    tracing::error!(error = %e, "analytics query failed");
                    ApiError::unavailable("analytics store unavailable; retry later")
                }
            })?);
            s.cache.put(q.clone(), Arc::clone(&r), Instant::now());
            (r, false)
        }
    };
    let total = result.points.len();
    let start = (page.page - 1).saturating_mul(page.page_size).min(total);
    let end = start.saturating_add(page.page_size).min(total);
    let filters: serde_json::Map<String, serde_json::Value> =
        q.filters.iter().map(|(d, v)| (d.as_str().to_owned(), json!(v))).collect();
    let body = json!({
        "data": &result.points[start..end],
        "metadata": {
            "metric": q.metric.as_str(),
            "unit": q.metric.unit(),
            "dimensions": q.dimensions.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
            "filters": filters,
            "date_range": { "from": q.from, "to": q.to },
            "aggregation": q.aggregation.as_str(),
            "data_as_of": result.computed_at,
            "cached": hit,
        },
        "pagination": {
            "page": page.page,
            "page_size": page.page_size,
            "total_items": total,
            "total_pages": total.div_ceil(page.page_size),
            "has_next": end < total,
        },
    });
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert("x-cache", HeaderValue::from_static(if hit { "HIT" } else { "MISS" }));
    Ok(resp)
}
