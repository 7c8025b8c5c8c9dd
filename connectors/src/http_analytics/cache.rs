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
    /// Data points held over every entry.
    points: usize,
    generation: Option<Generation>,
    checked_at: Option<Instant>,
}

/// A TTL cache invalidated by rollup generation.
pub struct ResultCache {
    ttl: Duration,
    max_entries: usize,
    max_points: usize,
    check_every: Duration,
    inner: Mutex<Inner>,
}

impl ResultCache {
    /// A cache keeping results `ttl`, at most `max_entries` of them holding at
    /// most `max_points` data points together (what bounds its memory: one
    /// result may hold up to `max_points` of the query limit), and checking the
    /// generation at most every `check_every`.
    pub fn new(ttl: Duration, max_entries: usize, max_points: usize, check_every: Duration) -> Self {
        Self {
            ttl,
            max_entries,
            max_points,
            check_every,
            inner: Mutex::new(Inner { entries: HashMap::new(), points: 0, generation: None, checked_at: None }),
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
            inner.points = 0;
            inner.generation = Some(generation);
        }
        inner.checked_at = Some(now);
    }

    /// The cached result of `q`, if younger than the TTL at `now`.
    pub fn get(&self, q: &AnalyticsQuery, now: Instant) -> Option<Arc<QueryResult>> {
        let inner = self.lock();
        inner.entries.get(q).filter(|(at, _)| now.duration_since(*at) < self.ttl).map(|(_, r)| Arc::clone(r))
    }

    /// Stores `r` for `q` at `now`, evicting expired entries, then the oldest,
    /// while over either bound. A result larger than the whole point budget is
    /// not kept.
    pub fn put(&self, q: AnalyticsQuery, r: Arc<QueryResult>, now: Instant) {
        let size = r.points.len();
        if self.max_entries == 0 || self.ttl.is_zero() || size > self.max_points {
            return;
        }
        let mut inner = self.lock();
        if let Some((_, old)) = inner.entries.remove(&q) {
            inner.points -= old.points.len();
        }
        let full = |i: &Inner| i.entries.len() >= self.max_entries || i.points + size > self.max_points;
        if full(&inner) {
            let ttl = self.ttl;
            inner.entries.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            inner.points = inner.entries.values().map(|(_, r)| r.points.len()).sum();
        }
        while full(&inner) {
            let Some(oldest) = inner.entries.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some((_, r)) = inner.entries.remove(&oldest) {
                inner.points -= r.points.len();
            }
        }
        inner.points += size;
        inner.entries.insert(q, (now, r));
    }

    /// Data points held.
    pub fn points(&self) -> usize {
        self.lock().points
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
        sized(n, 1)
    }

    /// A result of `points` data points.
    fn sized(n: i64, points: usize) -> Arc<QueryResult> {
        let point = super::super::query::Point {
            period: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap_or_default(),
            dimensions: Default::default(),
            value: serde_json::json!(n),
        };
        Arc::new(QueryResult { points: vec![point; points], computed_at: None })
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = ResultCache::new(Duration::from_secs(60), 10, 100, Duration::from_secs(1));
        let t0 = Instant::now();
        cache.put(query(1), result(1), t0);
        assert_eq!(cache.get(&query(1), t0 + Duration::from_secs(59)), Some(result(1)));
        assert_eq!(cache.get(&query(1), t0 + Duration::from_secs(60)), None);
        assert_eq!(cache.get(&query(2), t0), None);
    }

    #[test]
    fn a_new_generation_drops_everything() {
        let cache = ResultCache::new(Duration::from_secs(60), 10, 100, Duration::from_secs(1));
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
        let cache = ResultCache::new(Duration::from_secs(60), 2, 100, Duration::from_secs(1));
        let t0 = Instant::now();
        cache.put(query(1), result(1), t0);
        cache.put(query(2), result(2), t0 + Duration::from_secs(1));
        cache.put(query(3), result(3), t0 + Duration::from_secs(2));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&query(1), t0 + Duration::from_secs(2)), None);
        assert!(cache.get(&query(3), t0 + Duration::from_secs(2)).is_some());
    }

    #[test]
    fn the_points_held_stay_within_the_budget() {
        let cache = ResultCache::new(Duration::from_secs(60), 100, 100, Duration::from_secs(1));
        let t0 = Instant::now();
        cache.put(query(1), sized(1, 60), t0);
        cache.put(query(2), sized(2, 30), t0 + Duration::from_secs(1));
        assert_eq!((cache.len(), cache.points()), (2, 90));
        // 30 more do not fit: the oldest (60) goes.
        cache.put(query(3), sized(3, 30), t0 + Duration::from_secs(2));
        assert_eq!((cache.len(), cache.points()), (2, 60));
        assert!(cache.get(&query(1), t0 + Duration::from_secs(2)).is_none());
        // Replacing an entry counts its new size only.
        cache.put(query(3), sized(3, 40), t0 + Duration::from_secs(3));
        assert_eq!((cache.len(), cache.points()), (2, 70));
        // Bigger than the whole budget: served, not kept.
        cache.put(query(4), sized(4, 101), t0 + Duration::from_secs(4));
        assert_eq!((cache.len(), cache.points()), (2, 70));
        cache.observe((1, 1), t0 + Duration::from_secs(5));
        assert_eq!((cache.len(), cache.points()), (0, 0));
    }
}
