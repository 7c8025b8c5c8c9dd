//! Fixed-rate limiting per API key: a token bucket refilled continuously.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-key token buckets (`capacity` requests per `period`, refilled evenly).
///
/// Limits are per process: N API instances behind a load balancer allow N times
/// the rate. Production deployments put a shared limiter in the gateway.
#[derive(Debug)]
pub struct RateLimiter {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `capacity` requests per `period` per key.
    pub fn new(capacity: u32, period: Duration) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self { capacity, per_second: capacity / period.as_secs_f64().max(0.001), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `key` at `now`; `Err(wait)` tells how long until one is free.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 100_000 {
            // Forget full buckets so the map cannot grow without bound.
            let (cap, rate) = (self.capacity, self.per_second);
            buckets.retain(|_, (tokens, at)| *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < cap);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.capacity, now));
        let refilled = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second).min(self.capacity);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_capacity_then_refuses_then_refills() {
        let rl = RateLimiter::new(100, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(rl.check("k", t0).is_ok(), "request {i}");
        }
        let wait = rl.check("k", t0).expect_err("101st refused");
        assert!((wait.as_secs_f64() - 0.6).abs() < 0.01, "{wait:?}");
        assert!(rl.check("other", t0).is_ok(), "keys are independent");
        assert!(rl.check("k", t0 + Duration::from_millis(650)).is_ok(), "refilled one token");
        assert!(rl.check("k", t0 + Duration::from_millis(660)).is_err());
    }
}
