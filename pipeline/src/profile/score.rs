//! Engagement score and customer lifetime value.
//!
//! Engagement score, 0-100, at time `now`:
//!
//! ```text
//! R = exp(-d / 14)                 d = days since last activity
//! F = 1 - exp(-A / 20)             A = category-weighted event count, each event
//!                                      decayed by exp(-age_days / 14)
//!                                      (weights: transaction 3, engagement 1, user 0.5)
//! D = min(1, (distinct event types + distinct features used) / 10)
//! score = 100 * (0.4 R + 0.35 F + 0.25 D), rounded to 0.1
//! ```
//!
//! Customer lifetime value, in currency units:
//!
//! ```text
//! months = max(1, days from first purchase to last activity / 30)
//! purchase_frequency = purchases / months                (per 30 days)
//! CLV = average_order_value * purchase_frequency * lifetime_months (24)
//! ```

use chrono::{DateTime, Utc};

use super::model::Profile;

/// Parameters of the formulas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreParams {
    /// Decay time constant of recency and activity, days.
    pub decay_days: f64,
    /// Activity at which F reaches 1 - 1/e.
    pub activity_scale: f64,
    /// Expected customer lifetime for CLV, months.
    pub lifetime_months: f64,
}

impl Default for ScoreParams {
    fn default() -> Self {
        Self { decay_days: 14.0, activity_scale: 20.0, lifetime_months: 24.0 }
    }
}

/// Weight of an event category in the activity count.
pub(super) fn category_weight(event_type: &str) -> f64 {
    match event_type.split('.').next() {
        Some("transaction") => 3.0,
        Some("engagement") => 1.0,
        _ => 0.5,
    }
}

fn days(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 86_400_000.0
}

/// Adds an event of `weight` at `at` to a decayed sum kept at `sum_at`; exact in
/// any arrival order (the sum always refers to the latest time seen).
pub(super) fn add_decayed(
    sum: &mut f64,
    sum_at: &mut Option<DateTime<Utc>>,
    weight: f64,
    at: DateTime<Utc>,
    decay_days: f64,
) {
    match *sum_at {
        Some(t) if at < t => *sum += weight * (-days(at, t) / decay_days).exp(),
        Some(t) => {
            *sum = *sum * (-days(t, at) / decay_days).exp() + weight;
            *sum_at = Some(at);
        }
        None => {
            *sum = weight;
            *sum_at = Some(at);
        }
    }
}

/// Engagement score of `p` at `now` (0-100, one decimal).
pub fn engagement_score(p: &Profile, now: DateTime<Utc>, params: &ScoreParams) -> f64 {
    let b = &p.behavioral;
    let Some(last) = b.last_activity else { return 0.0 };
    let r = (-days(last, now).max(0.0) / params.decay_days).exp();
    let activity = match b.decayed_at {
        Some(at) => b.decayed_activity * (-days(at, now).max(0.0) / params.decay_days).exp(),
        None => 0.0,
    };
    let f = 1.0 - (-activity / params.activity_scale).exp();
    let d = ((p.event_types_seen.len() + b.feature_usage_map.len()) as f64 / 10.0).min(1.0);
    (1000.0 * (0.4 * r + 0.35 * f + 0.25 * d)).round() / 10.0
}

/// `(purchase_frequency, customer_lifetime_value)` of `p`.
pub fn customer_lifetime_value(p: &Profile, params: &ScoreParams) -> (f64, f64) {
    let t = &p.transaction;
    let (Some(first), Some(last)) = (t.first_purchase_date, p.behavioral.last_activity) else { return (0.0, 0.0) };
    let months = (days(first, last) / 30.0).max(1.0);
    let frequency = t.total_purchases as f64 / months;
    let aov =
        if t.total_purchases == 0 { 0.0 } else { t.gross_revenue_cents as f64 / 100.0 / t.total_purchases as f64 };
    (frequency, aov * frequency * params.lifetime_months)
}
