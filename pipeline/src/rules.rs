//! Segments and triggers as the profile stage evaluates them: which segments a
//! profile belongs to, and which triggers an event fires. Pure: the stage
//! loads the definitions from PostgreSQL and writes what this returns.
//!
//! A trigger sees `{"event": <the event>, "profile": <the profile after the
//! event>}` at the event's time; a segment sees `{"profile": ...}` at the
//! evaluation time. Both count the profile's recent events.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::event::Event;
use crate::profile::Profile;
use crate::segment::{Condition, Context};

/// Namespace of the instance ids a trigger creates (v5 of `trigger:event`), so
/// a redelivered event starts no second instance.
pub const TRIGGER_INSTANCE_NAMESPACE: Uuid = Uuid::from_u128(0x6c69_6665_6379_636c_6500_7472_6967_6731);

/// A segment definition.
#[derive(Debug, Clone)]
pub struct SegmentRule {
    /// `user_segments.id`.
    pub id: Uuid,
    /// Its name (for the membership-change records).
    pub name: String,
    /// Who is in it.
    pub condition: Condition,
}

/// A trigger definition.
#[derive(Debug, Clone)]
pub struct TriggerRule {
    /// `triggers.id`.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// The event type it listens to.
    pub event_type: String,
    /// When it fires.
    pub condition: Condition,
    /// The workflow it starts, if any.
    pub workflow_id: Option<Uuid>,
}

/// The enabled segments and triggers.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Segments.
    pub segments: Vec<SegmentRule>,
    triggers: HashMap<String, Vec<TriggerRule>>,
}

/// One trigger evaluation (a `trigger_executions` row).
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerEval {
    /// The trigger.
    pub trigger_id: Uuid,
    /// The event's id.
    pub event_id: String,
    /// The event's user.
    pub user_id: String,
    /// Whether the condition held.
    pub met: bool,
    /// The workflow to start and the instance id to start it under (when met).
    pub start: Option<(Uuid, Uuid)>,
    /// The event, as JSON.
    pub event: Value,
    /// The instance's variables (when met).
    pub variables: Value,
}

/// A user's membership in one segment after an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    /// The segment.
    pub segment_id: Uuid,
    /// When the answer may change by time alone.
    pub valid_until: Option<DateTime<Utc>>,
}

impl Rules {
    /// Rules from definitions.
    pub fn new(segments: Vec<SegmentRule>, triggers: Vec<TriggerRule>) -> Self {
        let mut by_type: HashMap<String, Vec<TriggerRule>> = HashMap::new();
        for t in triggers {
            by_type.entry(t.event_type.clone()).or_default().push(t);
        }
        Self { segments, triggers: by_type }
    }

    /// Whether there is nothing to evaluate.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.triggers.is_empty()
    }

    /// Number of triggers.
    pub fn trigger_count(&self) -> usize {
        self.triggers.values().map(Vec::len).sum()
    }

    /// Evaluates the triggers on `event`, with `profile` as it is after the event.
    pub fn triggers(&self, event: &Event, profile: &Profile) -> Vec<TriggerEval> {
        let Some(triggers) = self.triggers.get(event.event_type.as_str()) else {
            return vec![];
        };
        let event_json = serde_json::to_value(event).unwrap_or(Value::Null);
        let doc = json!({"event": event_json, "profile": profile_value(profile)});
        let ctx = Context { doc: &doc, recent: &profile.recent_events, now: event.timestamp };
        triggers
            .iter()
            .map(|t| {
                let met = t.condition.eval(&ctx);
                let start = t.workflow_id.filter(|_| met).map(|w| (w, instance_id(t.id, &event.event_id)));
                let variables = if start.is_some() {
                    json!({
                        "user_id": event.user_id,
                        "event": doc["event"],
                        "profile": doc["profile"],
                        "trigger": {"id": t.id, "name": t.name},
                    })
                } else {
                    Value::Null
                };
                TriggerEval {
                    trigger_id: t.id,
                    event_id: event.event_id.clone(),
                    user_id: event.user_id.clone(),
                    met,
                    start,
                    event: event_json.clone(),
                    variables,
                }
            })
            .collect()
    }

    /// The segments `profile` belongs to at `now`, and when to look again if
    /// nothing happens (the earliest window edge of any segment: members may
    /// drop out and others come in by time passing alone).
    pub fn memberships(&self, profile: &Profile, now: DateTime<Utc>) -> SegmentEval {
        if self.segments.is_empty() {
            return SegmentEval::default();
        }
        let doc = json!({"profile": profile_value(profile)});
        let ctx = Context { doc: &doc, recent: &profile.recent_events, now };
        let mut out = SegmentEval::default();
        for s in &self.segments {
            let edge = s.condition.horizon(&ctx);
            if s.condition.eval(&ctx) {
                out.members.push(Membership { segment_id: s.id, valid_until: edge });
            }
            out.recheck_at = match (out.recheck_at, edge) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        out
    }
}

/// One user's segment evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentEval {
    /// The segments the user is in.
    pub members: Vec<Membership>,
    /// When the answer may change without new events.
    pub recheck_at: Option<DateTime<Utc>>,
}

/// The profile as conditions see it (without the recent-events list, which
/// conditions count through `{"events": ...}`). Serialised from a copy whose
/// list is empty (serialisation skips it then) rather than by removing it from
/// the full document: cloning the list is one allocation, where serialising it
/// built up to 100 JSON objects only to drop them.
fn profile_value(profile: &Profile) -> Value {
    let view = Profile { recent_events: Vec::new(), ..profile.clone() };
    serde_json::to_value(&view).unwrap_or(Value::Null)
}

/// The instance id trigger `trigger` starts for event `event_id`.
pub fn instance_id(trigger: Uuid, event_id: &str) -> Uuid {
    Uuid::new_v5(&TRIGGER_INSTANCE_NAMESPACE, format!("{trigger}:{event_id}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{LifecycleRules, ScoreParams};

    fn event(id: &str, t: &str, at: &str, amount: f64) -> Event {
        serde_json::from_value(json!({
            "event_id": id, "user_id": "u1", "event_type": t, "timestamp": at, "session_id": "s",
            "event_properties": {"amount": amount, "currency": "EUR", "order_id": id},
            "device_info": null, "location": null, "referrer": null,
        }))
        .expect("event")
    }

    fn cond(v: Value) -> Condition {
        Condition::parse(&v, "conditions").expect("condition")
    }

    #[test]
    fn conditions_see_the_whole_profile_but_its_recent_events() {
        let mut p = Profile::new("u1");
        p.email = Some("a@b.io".into());
        let (r, s) = (LifecycleRules::default(), ScoreParams::default());
        p.apply(&event("e1", "user.signup", "2026-11-20T10:00:00Z", 0.0), &r, &s);
        p.apply(&event("e2", "transaction.purchase_complete", "2026-11-20T11:00:00Z", 12.5), &r, &s);
        assert_eq!(p.recent_events.len(), 2);
        let mut full = serde_json::to_value(&p).expect("profile");
        full.as_object_mut().expect("object").remove("recent_events");
        assert_eq!(profile_value(&p), full);
        assert!(profile_value(&p).get("recent_events").is_none());
        assert_eq!(profile_value(&p)["transaction"]["total_purchases"], json!(1));
    }

    #[test]
    fn a_trigger_fires_on_its_type_when_the_condition_holds_and_names_a_stable_instance() {
        let wf = Uuid::from_u128(7);
        let big = TriggerRule {
            id: Uuid::from_u128(1),
            name: "big purchase".into(),
            event_type: "transaction.purchase_complete".into(),
            condition: cond(json!({"field": "event.event_properties.amount", "op": "gte", "value": 100})),
            workflow_id: Some(wf),
        };
        let rules = Rules::new(vec![], vec![big]);
        let mut p = Profile::new("u1");
        let small = event("e1", "transaction.purchase_complete", "2026-11-23T10:00:00Z", 20.0);
        p.apply(&small, &LifecycleRules::default(), &ScoreParams::default());
        let evals = rules.triggers(&small, &p);
        assert_eq!(evals.len(), 1);
        assert!(!evals[0].met && evals[0].start.is_none(), "20 < 100: evaluated, not met");
        let large = event("e2", "transaction.purchase_complete", "2026-11-23T10:01:00Z", 250.0);
        p.apply(&large, &LifecycleRules::default(), &ScoreParams::default());
        let evals = rules.triggers(&large, &p);
        assert!(evals[0].met);
        assert_eq!(evals[0].start, Some((wf, instance_id(Uuid::from_u128(1), "e2"))));
        assert_eq!(evals[0].variables["event"]["event_properties"]["amount"], json!(250.0));
        assert_eq!(evals[0].variables["profile"]["transaction"]["total_purchases"], json!(2));
        assert!(evals[0].variables["profile"].get("recent_events").is_none());
        assert!(rules.triggers(&event("e3", "engagement.page_view", "2026-11-23T10:02:00Z", 0.0), &p).is_empty());
    }

    #[test]
    fn windowed_segments_count_recent_events_and_expire_at_the_window_edge() {
        let seg = SegmentRule {
            id: Uuid::from_u128(9),
            name: "repeat buyers".into(),
            condition: cond(
                json!({"events": "transaction.purchase_complete", "within": "P7D", "op": "gte", "value": 2}),
            ),
        };
        let rules = Rules::new(vec![seg], vec![]);
        let mut p = Profile::new("u1");
        let (r, s) = (LifecycleRules::default(), ScoreParams::default());
        p.apply(&event("a", "transaction.purchase_complete", "2026-11-20T10:00:00Z", 5.0), &r, &s);
        let now: DateTime<Utc> = "2026-11-23T10:00:00Z".parse().expect("time");
        let first = rules.memberships(&p, now);
        assert!(first.members.is_empty(), "one purchase is not enough");
        assert_eq!(first.recheck_at, Some("2026-11-27T10:00:00Z".parse().expect("time")), "when it leaves the window");
        p.apply(&event("b", "transaction.purchase_complete", "2026-11-22T10:00:00Z", 5.0), &r, &s);
        let m = rules.memberships(&p, now).members;
        assert_eq!(m.len(), 1);
        // The older purchase leaves the 7-day window on 2026-11-27 10:00.
        assert_eq!(m[0].valid_until, Some("2026-11-27T10:00:00Z".parse().expect("time")));
        assert!(rules.memberships(&p, "2026-11-28T00:00:00Z".parse().expect("time")).members.is_empty());
        let dormant = SegmentRule {
            id: Uuid::from_u128(10),
            name: "dormant".into(),
            condition: cond(json!({"field": "profile.behavioral.last_activity", "op": "older_than", "value": "P30D"})),
        };
        let later = Rules::new(vec![dormant], vec![]).memberships(&p, now);
        assert!(later.members.is_empty(), "active two days ago");
        assert_eq!(
            later.recheck_at,
            Some("2026-12-22T10:00:00Z".parse().expect("time")),
            "a non-member is looked at again"
        );
    }
}
