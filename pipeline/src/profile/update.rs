//! The pure update: apply one validated event to a profile.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde_json::{Map, Value};

use super::lifecycle::{LifecycleRules, Transition};
use super::model::{AccountStatus, Profile, RECENT_EVENTS};
use super::score::{ScoreParams, add_decayed, category_weight, customer_lifetime_value, engagement_score};
use crate::event::Event;
use crate::intern::Name;
use crate::segment::RecentEvent;

fn prop<'a>(props: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a Value> {
    props.and_then(|p| p.get(key)).filter(|v| !v.is_null())
}

fn prop_str(props: Option<&Map<String, Value>>, key: &str) -> Option<String> {
    prop(props, key).and_then(Value::as_str).map(str::to_owned)
}

/// Amount in integer cents (validated as a number by the event schema).
fn cents(props: Option<&Map<String, Value>>) -> i64 {
    prop(props, "amount").and_then(Value::as_f64).map_or(0, |a| (a * 100.0).round() as i64)
}

fn age_at(dob: &str, at: DateTime<Utc>) -> Option<u32> {
    let dob = NaiveDate::parse_from_str(dob, "%Y-%m-%d").ok()?;
    let today = at.date_naive();
    let mut years = today.year() - dob.year();
    if (today.month(), today.day()) < (dob.month(), dob.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

fn set_if(slot: &mut Option<String>, value: Option<String>, newest: bool) {
    if let Some(v) = value
        && (newest || slot.is_none())
    {
        *slot = Some(v);
    }
}

impl Profile {
    /// Applies one event and returns the lifecycle transition it caused, if any.
    ///
    /// Counters are sums, so applying the same events in any order gives the same
    /// counts; attributes that are overwritten (email, tier, device) keep the value
    /// of the newest event by event time. Duplicates are the caller's concern
    /// (the stage drops repeated event ids before calling this).
    pub fn apply(&mut self, event: &Event, rules: &LifecycleRules, params: &ScoreParams) -> Option<Transition> {
        let ts = event.timestamp;
        let t = event.event_type.as_str();
        let props = event.event_properties.as_ref();
        let newest = self.behavioral.last_activity.is_none_or(|last| ts >= last);

        self.events_applied += 1;
        *self.behavioral.event_counts.entry(t.to_owned()).or_insert(0) += 1;
        self.event_types_seen.insert(t.to_owned());
        let at = self.recent_events.partition_point(|r| r.at <= ts);
        self.recent_events.insert(at, RecentEvent { event_type: Name::new(t), at: ts });
        if self.recent_events.len() > RECENT_EVENTS {
            self.recent_events.remove(0);
        }
        let b = &mut self.behavioral;
        b.first_seen = Some(b.first_seen.map_or(ts, |f| f.min(ts)));
        b.last_activity = Some(b.last_activity.map_or(ts, |l| l.max(ts)));
        add_decayed(&mut b.decayed_activity, &mut b.decayed_at, category_weight(t), ts, params.decay_days);
        if let Some(d) = &event.device_info {
            set_if(&mut self.demographic.device_type, d.device_type.clone(), newest);
        }
        if let Some(l) = &event.location {
            set_if(&mut self.demographic.country, l.country.clone(), false);
            set_if(&mut self.demographic.city, l.city.clone(), false);
            set_if(&mut self.demographic.timezone, l.timezone.clone(), false);
        }

        match t {
            "user.signup" => {
                self.signup_date = Some(self.signup_date.map_or(ts, |s| s.min(ts)));
                set_if(&mut self.email, prop_str(props, "email"), newest);
                set_if(&mut self.name, prop_str(props, "name"), newest);
            }
            "user.login" => {
                let b = &mut self.behavioral;
                b.session_count += 1;
                b.last_session_date = Some(b.last_session_date.map_or(ts, |l| l.max(ts)));
            }
            "user.logout" => {
                let ms = prop(props, "session_duration_ms").and_then(Value::as_u64).unwrap_or(0);
                self.behavioral.total_session_duration_ms =
                    self.behavioral.total_session_duration_ms.saturating_add(ms);
            }
            "user.profile_update" => {
                set_if(&mut self.email, prop_str(props, "email"), newest);
                set_if(&mut self.name, prop_str(props, "name"), newest);
                let d = &mut self.demographic;
                for (slot, key) in [
                    (&mut d.date_of_birth, "date_of_birth"),
                    (&mut d.gender, "gender"),
                    (&mut d.country, "country"),
                    (&mut d.city, "city"),
                    (&mut d.timezone, "timezone"),
                    (&mut d.language, "language"),
                ] {
                    // A profile update is explicit: it wins over location-derived values.
                    set_if(slot, prop_str(props, key), true);
                }
                if let Some(dob) = d.date_of_birth.as_deref() {
                    d.age = age_at(dob, self.behavioral.last_activity.unwrap_or(ts));
                }
                self.set_tier(prop_str(props, "subscription_tier"), ts);
            }
            "user.account_deletion" => self.account_status = AccountStatus::Deleted,
            "engagement.feature_click" => {
                if let Some(f) = prop_str(props, "feature") {
                    *self.behavioral.feature_usage_map.entry(f).or_insert(0) += 1;
                }
            }
            "transaction.purchase_complete" => {
                let c = cents(props);
                let tr = &mut self.transaction;
                tr.total_purchases += 1;
                // Saturating: validation bounds each amount, so only an absurd
                // history could reach the ends of i64; it must not wrap or panic.
                tr.gross_revenue_cents = tr.gross_revenue_cents.saturating_add(c);
                tr.total_revenue_cents = tr.total_revenue_cents.saturating_add(c);
                tr.first_purchase_date = Some(tr.first_purchase_date.map_or(ts, |f| f.min(ts)));
                tr.last_purchase_date = Some(tr.last_purchase_date.map_or(ts, |l| l.max(ts)));
                self.set_tier(prop_str(props, "subscription_tier"), ts);
            }
            "transaction.refund" => {
                let c = cents(props);
                let tr = &mut self.transaction;
                tr.total_refunds += 1;
                tr.refunded_cents = tr.refunded_cents.saturating_add(c);
                tr.total_revenue_cents = tr.total_revenue_cents.saturating_sub(c);
            }
            _ => {}
        }

        let tr = &mut self.transaction;
        tr.average_order_value = if tr.total_purchases == 0 {
            0.0
        } else {
            tr.gross_revenue_cents as f64 / 100.0 / tr.total_purchases as f64
        };
        let (frequency, clv) = customer_lifetime_value(self, params);
        self.transaction.purchase_frequency = frequency;
        self.transaction.customer_lifetime_value = clv;
        let now = self.behavioral.last_activity.unwrap_or(ts);
        self.behavioral.engagement_score = engagement_score(self, now, params);

        let target = rules.qualified(self);
        (target > self.lifecycle_stage).then(|| {
            let from = std::mem::replace(&mut self.lifecycle_stage, target);
            Transition {
                user_id: self.user_id.clone(),
                from,
                to: target,
                at: ts,
                event_id: event.event_id.clone(),
                event_type: event.event_type.as_str().to_owned(),
            }
        })
    }

    fn set_tier(&mut self, tier: Option<String>, ts: DateTime<Utc>) {
        let tr = &mut self.transaction;
        if let Some(tier) = tier
            && tr.subscription_tier_at.is_none_or(|at| ts >= at)
        {
            tr.subscription_tier = Some(tier);
            tr.subscription_tier_at = Some(ts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::profile::{Stage, Transactional};
    use chrono::TimeZone;
    use serde_json::json;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).single().expect("date")
    }

    fn ev(id: &str, t: &str, ts: DateTime<Utc>, props: Value) -> Event {
        Event {
            event_id: id.into(),
            user_id: "u1".into(),
            event_type: EventType::parse(t).expect("type"),
            timestamp: ts,
            session_id: "s".into(),
            event_properties: props.as_object().cloned(),
            device_info: None,
            location: None,
            referrer: None,
        }
    }

    fn journey() -> Vec<Event> {
        vec![
            ev("1", "user.signup", at(1, 9), json!({"email": "a@x.io", "name": "Ada"})),
            ev("2", "user.login", at(1, 9), json!({})),
            ev("3", "engagement.page_view", at(1, 10), json!({"page": "/"})),
            ev("4", "engagement.feature_click", at(1, 10), json!({"feature": "export"})),
            ev("5", "engagement.feature_click", at(2, 10), json!({"feature": "export"})),
            ev("6", "user.logout", at(2, 11), json!({"session_duration_ms": 600_000})),
            ev("7", "user.login", at(3, 9), json!({})),
            ev("8", "user.login", at(4, 9), json!({})),
            ev(
                "9",
                "transaction.purchase_complete",
                at(4, 10),
                json!({"order_id": "o1", "amount": 19.99, "currency": "EUR", "subscription_tier": "pro"}),
            ),
            ev(
                "10",
                "transaction.purchase_complete",
                at(5, 10),
                json!({"order_id": "o2", "amount": 0.01, "currency": "EUR"}),
            ),
            ev("11", "transaction.refund", at(6, 10), json!({"order_id": "o2", "amount": 0.01, "currency": "EUR"})),
            ev("12", "user.profile_update", at(6, 11), json!({"date_of_birth": "1990-03-07", "country": "FR"})),
            ev("13", "engagement.share", at(7, 10), json!({"content_id": "c"})),
            ev("14", "engagement.share", at(7, 11), json!({"content_id": "c"})),
        ]
    }

    fn run(events: &[Event]) -> (Profile, Vec<Transition>) {
        let mut p = Profile::new("u1");
        let (rules, params) = (LifecycleRules::default(), ScoreParams::default());
        let transitions = events.iter().filter_map(|e| p.apply(e, &rules, &params)).collect();
        (p, transitions)
    }

    #[test]
    fn memory_grows_with_recent_events_and_stops_at_their_cap() {
        let (rules, params) = (LifecycleRules::default(), ScoreParams::default());
        let mut p = Profile::new("u1");
        let mut sizes = Vec::new();
        for i in 0..3 * RECENT_EVENTS {
            let ts = at(1, 0) + chrono::Duration::minutes(i as i64);
            p.apply(&ev(&i.to_string(), "engagement.page_view", ts, json!({"page": "/"})), &rules, &params);
            sizes.push(p.approx_bytes());
        }
        assert_eq!(p.recent_events.len(), RECENT_EVENTS);
        assert!(sizes[RECENT_EVENTS - 1] > sizes[0] + RECENT_EVENTS * size_of::<RecentEvent>() / 2, "{sizes:?}");
        assert_eq!(sizes[2 * RECENT_EVENTS], sizes[3 * RECENT_EVENTS - 1]);
        // One shared name, however many recent events carry it.
        assert!(p.recent_events.windows(2).all(|w| std::ptr::eq(w[0].event_type.as_str(), w[1].event_type.as_str())));
    }

    #[test]
    fn counters_follow_the_events() {
        let (p, _) = run(&journey());
        assert_eq!(p.events_applied, 14);
        assert_eq!((p.email.as_deref(), p.name.as_deref()), (Some("a@x.io"), Some("Ada")));
        assert_eq!(p.signup_date, Some(at(1, 9)));
        assert_eq!(p.behavioral.session_count, 3);
        assert_eq!(p.behavioral.last_session_date, Some(at(4, 9)));
        assert_eq!(p.behavioral.total_session_duration_ms, 600_000);
        assert_eq!(p.behavioral.feature_usage_map.get("export"), Some(&2));
        let t = &p.transaction;
        assert_eq!((t.total_purchases, t.total_refunds), (2, 1));
        assert_eq!((t.gross_revenue_cents, t.refunded_cents, t.total_revenue_cents), (2000, 1, 1999));
        assert_eq!(t.average_order_value, 10.0);
        assert_eq!(t.subscription_tier.as_deref(), Some("pro"));
        assert_eq!(t.last_purchase_date, Some(at(5, 10)));
        assert_eq!(p.demographic.age, Some(35), "born 1990-03-07, last activity 2026-03-07");
        assert_eq!(p.demographic.country.as_deref(), Some("FR"));
    }

    #[test]
    fn lifecycle_moves_forward_through_the_rules() {
        let (p, transitions) = run(&journey());
        let steps: Vec<(Stage, Stage, &str)> =
            transitions.iter().map(|t| (t.from, t.to, t.event_id.as_str())).collect();
        assert_eq!(
            steps,
            vec![
                (Stage::Acquisition, Stage::Activation, "5"), // third engagement event
                (Stage::Activation, Stage::Retention, "8"),   // third login
                (Stage::Retention, Stage::Revenue, "9"),      // first purchase
                (Stage::Revenue, Stage::Referral, "14"),      // second share
            ]
        );
        assert_eq!(p.lifecycle_stage, Stage::Referral);
        // A purchase alone skips straight to Revenue.
        let (p, t) = run(&[ev(
            "p",
            "transaction.purchase_complete",
            at(1, 1),
            json!({"order_id": "o", "amount": 5, "currency": "EUR"}),
        )]);
        assert_eq!((p.lifecycle_stage, t.len()), (Stage::Revenue, 1));
    }

    #[test]
    fn any_order_gives_the_same_counters_and_stage() {
        let events = journey();
        let (sorted, _) = run(&events);
        let mut reversed = events.clone();
        reversed.reverse();
        let mut interleaved: Vec<Event> =
            events.iter().step_by(2).chain(events.iter().skip(1).step_by(2)).cloned().collect();
        interleaved.rotate_left(3);
        for other in [reversed, interleaved] {
            let (p, _) = run(&other);
            assert_eq!(p.behavioral.event_counts, sorted.behavioral.event_counts);
            assert_eq!(p.behavioral.session_count, sorted.behavioral.session_count);
            assert_eq!(p.transaction.total_revenue_cents, sorted.transaction.total_revenue_cents);
            assert_eq!(p.transaction.subscription_tier, sorted.transaction.subscription_tier);
            assert_eq!(p.lifecycle_stage, sorted.lifecycle_stage);
            assert!((p.behavioral.decayed_activity - sorted.behavioral.decayed_activity).abs() < 1e-9);
            assert_eq!(p.behavioral.engagement_score, sorted.behavioral.engagement_score);
        }
    }

    /// R = e^-0.5 = 0.60653, A = 10 e^-0.5 = 6.06531, F = 1 - e^(-6.06531/20) = 0.26161,
    /// D = (3 types + 2 features) / 10 = 0.5; score = 100 (0.4 R + 0.35 F + 0.25 D) = 45.92 -> 45.9.
    #[test]
    fn engagement_score_matches_the_hand_computed_value() {
        let mut p = Profile::new("u");
        p.behavioral.last_activity = Some(at(1, 0));
        p.behavioral.decayed_activity = 10.0;
        p.behavioral.decayed_at = Some(at(1, 0));
        p.event_types_seen = ["a.b", "a.c", "a.d"].iter().map(|s| s.to_string()).collect();
        p.behavioral.feature_usage_map = [("x".to_string(), 1), ("y".to_string(), 4)].into_iter().collect();
        assert_eq!(engagement_score(&p, at(8, 0), &ScoreParams::default()), 45.9);
        assert_eq!(engagement_score(&Profile::new("empty"), at(8, 0), &ScoreParams::default()), 0.0);
        // Active today, heavy use, full depth: close to 100.
        p.behavioral.decayed_activity = 200.0;
        p.event_types_seen.extend(["b.a", "b.b", "b.c", "b.d", "b.e"].iter().map(|s| s.to_string()));
        assert_eq!(engagement_score(&p, at(1, 0), &ScoreParams::default()), 100.0);
    }

    /// 3 purchases, 150.00 gross -> AOV 50; first purchase 2026-03-01, last activity
    /// 60 days later -> 2 months -> 1.5 purchases / month; CLV = 50 * 1.5 * 24 = 1800.
    #[test]
    fn clv_matches_the_hand_computed_value() {
        let mut p = Profile::new("u");
        p.transaction = Transactional {
            total_purchases: 3,
            gross_revenue_cents: 15_000,
            first_purchase_date: Some(at(1, 0)),
            ..Transactional::default()
        };
        p.behavioral.last_activity = Some(at(1, 0) + chrono::Duration::days(60));
        let (frequency, clv) = customer_lifetime_value(&p, &ScoreParams::default());
        assert_eq!((frequency, clv), (1.5, 1800.0));
        // Within the first month the period counts as one month.
        p.behavioral.last_activity = Some(at(2, 0));
        assert_eq!(customer_lifetime_value(&p, &ScoreParams::default()), (3.0, 3600.0));
    }
}
