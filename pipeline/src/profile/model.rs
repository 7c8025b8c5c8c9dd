//! The profile data model (seed spec: core, demographic, behavioral, transaction).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::lifecycle::Stage;
use crate::segment::RecentEvent;

/// Whether the account exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Normal.
    #[default]
    Active,
    /// A `user.account_deletion` event was seen.
    Deleted,
}

/// Optional demographic attributes (from signup, profile updates, device and location).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Demographic {
    /// Age in whole years, derived from date_of_birth at the last update.
    pub age: Option<u32>,
    /// YYYY-MM-DD.
    pub date_of_birth: Option<String>,
    /// As given by the user.
    pub gender: Option<String>,
    /// ISO country code.
    pub country: Option<String>,
    /// City.
    pub city: Option<String>,
    /// IANA time zone.
    pub timezone: Option<String>,
    /// Preferred language.
    pub language: Option<String>,
    /// Device type of the latest event that named one.
    pub device_type: Option<String>,
}

/// Behavioral attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Behavioral {
    /// Sessions started (`user.login` events).
    pub session_count: u64,
    /// Latest `user.login`.
    pub last_session_date: Option<DateTime<Utc>>,
    /// Sum of `user.logout` `session_duration_ms`.
    pub total_session_duration_ms: u64,
    /// `engagement.feature_click` count per feature.
    pub feature_usage_map: BTreeMap<String, u64>,
    /// 0-100, see [`super::engagement_score`].
    pub engagement_score: f64,
    /// Events applied, per event type.
    pub event_counts: BTreeMap<String, u64>,
    /// Earliest event time.
    pub first_seen: Option<DateTime<Utc>>,
    /// Latest event time.
    pub last_activity: Option<DateTime<Utc>>,
    /// Category-weighted event count, exponentially decayed to `decayed_at`.
    pub decayed_activity: f64,
    /// Time `decayed_activity` refers to.
    pub decayed_at: Option<DateTime<Utc>>,
}

/// Transaction attributes. Money is kept in integer cents so sums are exact.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Transactional {
    /// `transaction.purchase_complete` count.
    pub total_purchases: u64,
    /// Gross purchase amount minus refunded amount, cents.
    pub total_revenue_cents: i64,
    /// Gross purchase amount, cents.
    pub gross_revenue_cents: i64,
    /// `transaction.refund` count.
    pub total_refunds: u64,
    /// Refunded amount, cents.
    pub refunded_cents: i64,
    /// Gross revenue / purchases, currency units.
    pub average_order_value: f64,
    /// Earliest purchase.
    pub first_purchase_date: Option<DateTime<Utc>>,
    /// Latest purchase.
    pub last_purchase_date: Option<DateTime<Utc>>,
    /// Tier from the latest event that named one.
    pub subscription_tier: Option<String>,
    /// When that event happened (so an older event cannot overwrite it).
    pub subscription_tier_at: Option<DateTime<Utc>>,
    /// Purchases per 30 days over the active period, see [`super::customer_lifetime_value`].
    pub purchase_frequency: f64,
    /// Predicted lifetime value, currency units.
    pub customer_lifetime_value: f64,
}

/// A user's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The `user_id` of the events.
    pub user_id: String,
    /// From `user.signup` / `user.profile_update`.
    pub email: Option<String>,
    /// From `user.signup` / `user.profile_update`.
    pub name: Option<String>,
    /// Time of the earliest `user.signup`.
    pub signup_date: Option<DateTime<Utc>>,
    /// Active or deleted.
    pub account_status: AccountStatus,
    /// Current lifecycle stage.
    pub lifecycle_stage: Stage,
    /// Optional demographics.
    #[serde(default)]
    pub demographic: Demographic,
    /// Behavior.
    #[serde(default)]
    pub behavioral: Behavioral,
    /// Transactions.
    #[serde(default)]
    pub transaction: Transactional,
    /// Number of events applied.
    pub events_applied: u64,
    /// Distinct event types seen (depth of engagement).
    #[serde(default)]
    pub event_types_seen: BTreeSet<String>,
    /// The newest events (type and time, at most [`RECENT_EVENTS`], newest
    /// last): what segment and trigger conditions count over time windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_events: Vec<RecentEvent>,
}

/// How many recent events a profile keeps for windowed conditions.
pub const RECENT_EVENTS: usize = 100;

impl Profile {
    /// An empty profile in Acquisition.
    pub fn new(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            email: None,
            name: None,
            signup_date: None,
            account_status: AccountStatus::Active,
            lifecycle_stage: Stage::Acquisition,
            demographic: Demographic::default(),
            behavioral: Behavioral::default(),
            transaction: Transactional::default(),
            events_applied: 0,
            event_types_seen: BTreeSet::new(),
            recent_events: Vec::new(),
        }
    }

    /// Net revenue in currency units.
    pub fn total_revenue(&self) -> f64 {
        self.transaction.total_revenue_cents as f64 / 100.0
    }

    /// Roughly the bytes this profile occupies in memory, its own size and
    /// what it owns on the heap (allocator overhead estimated): what a cache
    /// of profiles charges against a byte budget. Shared event-type names in
    /// [`Profile::recent_events`] are not counted: they are stored once.
    pub fn approx_bytes(&self) -> usize {
        // malloc rounds small allocations up and keeps a header per block.
        fn heap(len: usize) -> usize {
            if len == 0 { 0 } else { len.next_multiple_of(16) + 16 }
        }
        fn opt(s: &Option<String>) -> usize {
            s.as_ref().map_or(0, |s| heap(s.capacity()))
        }
        // A B-tree entry: key and value inline in a node (about 11 per node,
        // nodes about two thirds full), plus the key's own heap string.
        fn map<V>(m: &BTreeMap<String, V>) -> usize {
            m.keys().map(|k| heap(k.capacity()) + (size_of::<String>() + size_of::<V>()) * 3 / 2).sum()
        }
        let d = &self.demographic;
        let strings = heap(self.user_id.capacity())
            + opt(&self.email)
            + opt(&self.name)
            + [&d.date_of_birth, &d.gender, &d.country, &d.city, &d.timezone, &d.language, &d.device_type]
                .into_iter()
                .map(opt)
                .sum::<usize>()
            + opt(&self.transaction.subscription_tier);
        size_of::<Self>()
            + strings
            + map(&self.behavioral.feature_usage_map)
            + map(&self.behavioral.event_counts)
            + self.event_types_seen.iter().map(|k| heap(k.capacity()) + size_of::<String>() * 3 / 2).sum::<usize>()
            + heap(self.recent_events.capacity() * size_of::<RecentEvent>())
    }
}
