//! Lifecycle stages (pirate metrics) and their transition rules.
//!
//! Stages only move forward. After every event the profile's stage becomes the
//! highest stage whose rule holds (stages may be skipped); the rules depend on
//! counters only, so the final stage does not depend on event order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::Profile;

/// A lifecycle stage, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// Known to us: any event, before activation.
    #[default]
    Acquisition,
    /// Engaged with the product.
    Activation,
    /// Came back repeatedly.
    Retention,
    /// Paid.
    Revenue,
    /// Paid and brings others.
    Referral,
}

impl Stage {
    /// The name stored in PostgreSQL (`users.current_lifecycle_stage`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acquisition => "Acquisition",
            Self::Activation => "Activation",
            Self::Retention => "Retention",
            Self::Revenue => "Revenue",
            Self::Referral => "Referral",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Acquisition, Self::Activation, Self::Retention, Self::Revenue, Self::Referral]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// Thresholds of the transition rules (configurable, `[profile.lifecycle]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleRules {
    /// Activation: at least this many `engagement.*` events.
    pub activation_min_engagement_events: u64,
    /// Retention: activated and at least this many sessions (`user.login`).
    pub retention_min_sessions: u64,
    /// Revenue: at least this many purchases.
    pub revenue_min_purchases: u64,
    /// Referral: in Revenue and at least this many `engagement.share` events.
    pub referral_min_shares: u64,
}

impl Default for LifecycleRules {
    fn default() -> Self {
        Self {
            activation_min_engagement_events: 3,
            retention_min_sessions: 3,
            revenue_min_purchases: 1,
            referral_min_shares: 2,
        }
    }
}

/// A stage change, written to `user_lifecycle_history` and emitted as a lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The user.
    pub user_id: String,
    /// Stage before.
    pub from: Stage,
    /// Stage after.
    pub to: Stage,
    /// Time of the event that caused it.
    pub at: DateTime<Utc>,
    /// That event's id.
    pub event_id: String,
    /// That event's type.
    pub event_type: String,
}

impl LifecycleRules {
    /// The highest stage the profile's counters qualify for.
    pub fn qualified(&self, p: &Profile) -> Stage {
        let count = |t: &str| p.behavioral.event_counts.get(t).copied().unwrap_or(0);
        let engagement: u64 =
            p.behavioral.event_counts.iter().filter(|(t, _)| t.starts_with("engagement.")).map(|(_, n)| n).sum();
        let activated = engagement >= self.activation_min_engagement_events;
        let paid = self.revenue_min_purchases > 0 && p.transaction.total_purchases >= self.revenue_min_purchases;
        if paid && count("engagement.share") >= self.referral_min_shares {
            Stage::Referral
        } else if paid {
            Stage::Revenue
        } else if activated && p.behavioral.session_count >= self.retention_min_sessions {
            Stage::Retention
        } else if activated {
            Stage::Activation
        } else {
            Stage::Acquisition
        }
    }
}
