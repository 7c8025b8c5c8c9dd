//! Rate limiting per API key over a sliding window: at most `limit` requests in
//! any `window` (100 per minute by default), exactly as the API contract says.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-key request timestamps within the window.
///
/// Limits are per process: N API instances behind a load balancer allow N times
/// the rate. Production deployments put a shared limiter in the gateway.
#[derive(Debug)]
pub struct RateLimiter {
    limit: usize,
    window: Duration,
    seen: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// `limit` requests per `window` per key.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self { limit: limit.max(1) as usize, window, seen: Mutex::new(HashMap::new()) }
    }

    /// Records a request for `key` at `now`; `Err(wait)` when the window is full,
    /// with the time until its oldest request leaves it.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() > 100_000 {
            let window = self.window;
            seen.retain(|_, q| q.back().is_some_and(|t| now.saturating_duration_since(*t) < window));
        }
        let q = seen.entry(key.to_owned()).or_default();
        while q.front().is_some_and(|t| now.saturating_duration_since(*t) >= self.window) {
            q.pop_front();
        }
        if q.len() >= self.limit {
            let oldest = q.front().copied().unwrap_or(now);
            return Err(self.window.saturating_sub(now.saturating_duration_since(oldest)));
        }
        q.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_exactly_the_limit_per_window() {
        let rl = RateLimiter::new(100, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(rl.check("k", t0 + Duration::from_millis(i * 10)).is_ok(), "request {i}");
        }
        let wait = rl.check("k", t0 + Duration::from_secs(30)).expect_err("101st in the minute");
        assert_eq!(wait, Duration::from_secs(30));
        assert!(rl.check("other", t0).is_ok(), "keys are independent");
        assert!(rl.check("k", t0 + Duration::from_millis(60_000)).is_ok(), "the first request left the window");
        assert!(rl.check("k", t0 + Duration::from_millis(60_005)).is_err(), "the second has not");
    }
}
