//! The result cache of `GET /analytics`: whole results (all pages) keyed by the
//! checked query, kept for a TTL and dropped together as soon as the rollup
//! generation (newest rollup time, rollup count) changes, so a dashboard never
//! sees numbers older than the latest rollup for longer than one freshness check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::params::AnalyticsQuery;
use super::query::QueryResult;

/// Identifies the state of `metrics_rollups`.
pub type Generation = (u32, u64);

struct Inner {
    entries: HashMap<AnalyticsQuery, (Instant, Arc<QueryResult>)>,
    generation: Option<Generation>,
    checked_at: Option<Instant>,
}

/// A TTL cache invalidated by rollup generation.
pub struct ResultCache {
    ttl: Duration,
    max_entries: usize,
    check_every: Duration,
    inner: Mutex<Inner>,
}

impl ResultCache {
    /// A cache keeping results `ttl`, at most `max_entries`, and checking the
    /// generation at most every `check_every`.
    pub fn new(ttl: Duration, max_entries: usize, check_every: Duration) -> Self {
        Self {
            ttl,
            max_entries,
            check_every,
            inner: Mutex::new(Inner { entries: HashMap::new(), generation: None, checked_at: None }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the generation should be looked up again at `now`.
    pub fn needs_check(&self, now: Instant) -> bool {
        self.lock().checked_at.is_none_or(|at| now.duration_since(at) >= self.check_every)
    }

    /// Records the generation seen at `now`; a change drops every entry.
    pub fn observe(&self, generation: Generation, now: Instant) {
        let mut inner = self.lock();
        if inner.generation != Some(generation) {
            inner.entries.clear();
            inner.generation = Some(generation);
        }
        inner.checked_at = Some(now);
    }

    /// The cached result of `q`, if younger than the TTL at `now`.
    pub fn get(&self, q: &AnalyticsQuery, now: Instant) -> Option<Arc<QueryResult>> {
        let inner = self.lock();
        inner.entries.get(q).filter(|(at, _)| now.duration_since(*at) < self.ttl).map(|(_, r)| Arc::clone(r))
    }

    /// Stores `r` for `q` at `now`, evicting expired entries, then the oldest, when full.
    pub fn put(&self, q: AnalyticsQuery, r: Arc<QueryResult>, now: Instant) {
        if self.max_entries == 0 || self.ttl.is_zero() {
            return;
        }
        let mut inner = self.lock();
        if inner.entries.len() >= self.max_entries {
            let ttl = self.ttl;
            inner.entries.retain(|_, (at, _)| now.duration_since(*at) < ttl);
        }
        while inner.entries.len() >= self.max_entries {
            let Some(oldest) = inner.entries.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) else {
                break;
            };
            inner.entries.remove(&oldest);
        }
        inner.entries.insert(q, (now, r));
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;
    use crate::http_analytics::params::{Aggregation, Metric};

    fn query(days: i64) -> AnalyticsQuery {
        let to = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default();
        AnalyticsQuery {
            metric: Metric::Events,
            dimensions: vec![],
            filters: Default::default(),
            from: to - chrono::Duration::days(days),
            to,
            aggregation: Aggregation::Day,
        }
    }

    fn result(n: i64) -> Arc<QueryResult> {
        Arc::new(QueryResult {
            points: vec![super::super::query::Point {
                period: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default(),
                dimensions: Default::default(),
                value: serde_json::json!(n),
            }],
            computed_at: None,
        })
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = ResultCache::new(Duration::from_secs(60), 10, Duration::from_secs(1));
        let t0 = Instant::now();
        cache.put(query(1), result(1), t0);
        assert_eq!(cache.get(&query(1), t0 + Duration::from_secs(59)), Some(result(1)));
        assert_eq!(cache.get(&query(1), t0 + Duration::from_secs(60)), None);
        assert_eq!(cache.get(&query(2), t0), None);
    }

    #[test]
    fn a_new_generation_drops_everything() {
        let cache = ResultCache::new(Duration::from_secs(60), 10, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(cache.needs_check(t0));
        cache.observe((100, 3), t0);
        assert!(!cache.needs_check(t0 + Duration::from_millis(999)));
        assert!(cache.needs_check(t0 + Duration::from_secs(1)));
        cache.put(query(1), result(1), t0);
        cache.observe((100, 3), t0 + Duration::from_secs(1));
        assert_eq!(cache.len(), 1);
        cache.observe((101, 4), t0 + Duration::from_secs(2));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_evicts_the_oldest() {
        let cache = ResultCache::new(Duration::from_secs(60), 2, Duration::from_secs(1));
        let t0 = Instant::now();
        cache.put(query(1), result(1), t0);
        cache.put(query(2), result(2), t0 + Duration::from_secs(1));
        cache.put(query(3), result(3), t0 + Duration::from_secs(2));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&query(1), t0 + Duration::from_secs(2)), None);
        assert!(cache.get(&query(3), t0 + Duration::from_secs(2)).is_some());
    }
}
