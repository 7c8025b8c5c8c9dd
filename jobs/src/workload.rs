//! A synthetic, reproducible event workload: the standard taxonomy mix over
//! users drawn from a heavy-tailed (Zipf-like) distribution, plus deliberately
//! broken records of five kinds. Used by the demo, the tests and the benchmarks.

use apache_avro::types::Value as Avro;
use chrono::{DateTime, Utc};
use lifecycle_pipeline::avro::Envelope;
use lifecycle_pipeline::{Validator, wire};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Event types with their relative weights.
pub const MIX: [(&str, u32); 15] = [
    ("engagement.page_view", 300),
    ("engagement.feature_click", 150),
    ("engagement.content_view", 100),
    ("user.login", 100),
    ("engagement.search", 80),
    ("transaction.cart_add", 60),
    ("user.logout", 50),
    ("user.signup", 30),
    ("transaction.checkout_start", 30),
    ("transaction.purchase_complete", 30),
    ("engagement.share", 20),
    ("user.profile_update", 20),
    ("transaction.cart_remove", 15),
    ("transaction.refund", 5),
    ("user.account_deletion", 1),
];

/// Pages (path prefix, title) the engagement events visit.
const PAGES: [(&str, &str); 4] = [
    ("/products/running-shoes/item-", "Running shoes | Spring collection"),
    ("/blog/how-to-choose-a-trail-shoe/", "How to choose a trail shoe"),
    ("/account/orders/", "Your orders"),
    ("/pricing/plans/", "Plans and pricing"),
];

/// (device type, OS, OS version), picked by user.
const DEVICES: [(&str, &str, &str); 3] =
    [("desktop", "macOS", "14.6.1"), ("mobile", "Android", "15"), ("tablet", "iPadOS", "18.1")];

/// Browsers, picked by user.
const BROWSERS: [&str; 4] = ["Chrome/131.0.6778.86", "Firefox/132.0", "Safari/18.1", "Edge/131.0.2903.63"];

/// (region, city, time zone), picked by user.
const PLACES: [(&str, &str, &str); 4] = [
    ("Berlin", "Berlin", "Europe/Berlin"),
    ("Bavaria", "Munich", "Europe/Berlin"),
    ("Hamburg", "Hamburg", "Europe/Berlin"),
    ("Hesse", "Frankfurt am Main", "Europe/Berlin"),
];

/// Where sessions come from.
const REFERRERS: [&str; 4] = [
    "https://www.google.com/search?q=running+shoes",
    "https://newsletter.example.com/2026-11/issue-47",
    "https://www.instagram.com/",
    "direct",
];

/// Ways a test or demo record is deliberately broken, with the reason code the
/// validation stage must give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Avro body cut in half.
    TruncatedAvro,
    /// Confluent header naming a schema id nobody registered.
    UnknownSchemaId,
    /// JSON without `user_id`.
    MissingUserId,
    /// JSON whose `event_type` breaks the category.action convention.
    BadEventType,
    /// JSON with a string where `event_properties.amount` must be a number.
    WrongPropertyType,
}

impl Broken {
    /// All five kinds.
    pub const ALL: [Broken; 5] =
        [Self::TruncatedAvro, Self::UnknownSchemaId, Self::MissingUserId, Self::BadEventType, Self::WrongPropertyType];

    /// The reason code the validation stage gives this kind.
    pub fn expected_reason(self) -> lifecycle_pipeline::ReasonCode {
        use lifecycle_pipeline::ReasonCode as R;
        match self {
            Self::TruncatedAvro => R::AvroDecodeError,
            Self::UnknownSchemaId => R::UnknownSchemaId,
            Self::MissingUserId => R::MissingRequiredField,
            Self::BadEventType => R::InvalidEventType,
            Self::WrongPropertyType => R::InvalidProperties,
        }
    }
}

/// A schema id far above anything a registry hands out in tests.
pub const UNREGISTERED_SCHEMA_ID: u32 = 0x7fff_fff0;

/// Reproducible event generator.
pub struct Workload {
    rng: StdRng,
    users: u32,
    seq: u64,
    now: DateTime<Utc>,
    run_id: String,
    total_weight: u32,
}

impl Workload {
    /// `users` distinct users; event ids are `<run_id>-<n>`.
    pub fn new(seed: u64, users: u32, run_id: &str, now: DateTime<Utc>) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            users: users.max(1),
            seq: 0,
            now,
            run_id: run_id.to_owned(),
            total_weight: MIX.iter().map(|(_, w)| w).sum(),
        }
    }

    /// A user index with a heavy tail: a few users produce most events.
    fn user(&mut self) -> u32 {
        let u: f64 = self.rng.random();
        let idx = (f64::from(self.users).powf(u) - 1.0) as u32;
        idx.min(self.users - 1)
    }

    fn event_type(&mut self) -> &'static str {
        let mut pick = self.rng.random_range(0..self.total_weight);
        for (t, w) in MIX {
            if pick < w {
                return t;
            }
            pick -= w;
        }
        MIX[0].0
    }

    /// The next valid event, as the JSON object a producer would send.
    pub fn next_event(&mut self) -> Value {
        self.seq += 1;
        let user = self.user();
        let event_type = self.event_type();
        self.event_of(user, event_type)
    }

    /// A valid event of a given type for a given user index.
    pub fn event_of(&mut self, user: u32, event_type: &str) -> Value {
        let r = &mut self.rng;
        let ts = self.now.timestamp_millis() - r.random_range(0..3_600_000);
        let order = format!("o-{}-{}", self.run_id, self.seq);
        let amount = (r.random_range(500..50_000) as f64) / 100.0;
        let props = match event_type {
            "user.signup" => {
                json!({"email": format!("user{user}@example.com"), "name": format!("User {user}"), "signup_method": "email"})
            }
            "user.login" => json!({"method": "password"}),
            "user.logout" => json!({"session_duration_ms": r.random_range(1_000..3_600_000)}),
            "user.profile_update" => json!({"country": "DE", "language": "de"}),
            "user.account_deletion" => json!({"reason": "not_needed"}),
            "engagement.page_view" => {
                let (page, title) = PAGES[r.random_range(0..PAGES.len())];
                let page = format!("{page}{}?utm_source=newsletter&utm_medium=email", r.random_range(0..200));
                json!({"page": page, "title": title, "duration_ms": r.random_range(100..60_000)})
            }
            "engagement.feature_click" => {
                let feature = ["export", "share", "filter", "search"][r.random_range(0..4)];
                json!({"feature": feature, "page": PAGES[r.random_range(0..PAGES.len())].0})
            }
            "engagement.content_view" => {
                json!({"content_id": format!("c-{}", r.random_range(0..1000)), "content_type": "article"})
            }
            "engagement.search" => {
                json!({"query": "running shoes", "results_count": r.random_range(0..100)})
            }
            "engagement.share" => {
                json!({"content_id": format!("c-{}", r.random_range(0..1000)), "channel": "email"})
            }
            "transaction.cart_add" => {
                json!({"product_id": format!("p-{}", r.random_range(0..500)), "quantity": 1, "price": amount})
            }
            "transaction.cart_remove" => {
                json!({"product_id": format!("p-{}", r.random_range(0..500)), "quantity": 1})
            }
            "transaction.checkout_start" => {
                json!({"cart_value": amount, "item_count": r.random_range(1..5)})
            }
            "transaction.purchase_complete" => {
                json!({"order_id": order, "amount": amount, "currency": "EUR", "item_count": r.random_range(1..5)})
            }
            "transaction.refund" => json!({"order_id": order, "amount": amount, "currency": "EUR"}),
            _ => json!({}),
        };
        let (device_type, os, os_version) = DEVICES[(user % 3) as usize];
        let (region, city, timezone) = PLACES[(user % 4) as usize];
        let referrer = REFERRERS[r.random_range(0..REFERRERS.len())];
        json!({
            "event_id": format!("{}-{}", self.run_id, self.seq),
            "user_id": format!("{}-u{user:06}", self.run_id),
            "event_type": event_type,
            "timestamp": ts,
            "session_id": format!("sess-{user}-{}", ts / 1_800_000),
            "event_properties": props,
            "device_info": {
                "device_type": device_type, "os": os, "os_version": os_version,
                "browser": BROWSERS[(user % 4) as usize], "app_version": "web-5.12.3",
            },
            "location": {"country": "DE", "region": region, "city": city, "timezone": timezone},
            "referrer": referrer,
        })
    }

    /// A broken record of `kind`; Avro kinds are framed with `schema_id`.
    pub fn broken(&mut self, kind: Broken, encoder: &AvroEncoder<'_>) -> Vec<u8> {
        let mut event = self.next_event();
        match kind {
            Broken::TruncatedAvro => {
                let full = encoder.encode(&event).unwrap_or_default();
                full[..full.len() / 2].to_vec()
            }
            Broken::UnknownSchemaId => {
                let full = encoder.encode(&event).unwrap_or_default();
                wire::frame(UNREGISTERED_SCHEMA_ID, &full[5..])
            }
            Broken::MissingUserId => {
                if let Some(o) = event.as_object_mut() {
                    o.remove("user_id");
                }
                serde_json::to_vec(&event).unwrap_or_default()
            }
            Broken::BadEventType => {
                event["event_type"] = json!("Purchase Complete");
                serde_json::to_vec(&event).unwrap_or_default()
            }
            Broken::WrongPropertyType => {
                let user = self.user();
                let mut e = self.event_of(user, "transaction.purchase_complete");
                e["event_properties"]["amount"] = json!("12.50");
                serde_json::to_vec(&e).unwrap_or_default()
            }
        }
    }

    /// Events generated so far.
    pub fn count(&self) -> u64 {
        self.seq
    }
}

/// Encodes workload events as Confluent-framed Avro with the project's envelope.
pub struct AvroEncoder<'a> {
    /// Validates (and so types) the JSON before encoding.
    pub validator: &'a Validator,
    /// The envelope schema.
    pub envelope: &'a Envelope,
    /// Registered id of the envelope under the target topic's subject.
    pub schema_id: u32,
}

impl AvroEncoder<'_> {
    /// Confluent-framed Avro bytes of a valid event object.
    pub fn encode(&self, event: &Value) -> Result<Vec<u8>, String> {
        let obj = event.as_object().ok_or("event must be an object")?;
        let e = self.validator.validate_object(obj, Utc::now()).map_err(|r| r.message)?;
        let body = self.envelope.encode(&e).map_err(|e| e.to_string())?;
        Ok(wire::frame(self.schema_id, &body))
    }
}

/// The record the envelope schema describes, as an apache-avro value (for
/// third-party encoders in tests).
pub fn avro_record(event: &Value) -> Vec<(String, Avro)> {
    let s = |k: &str| Avro::String(event[k].as_str().unwrap_or_default().to_owned());
    let opt = |v: Option<String>| match v {
        Some(s) => Avro::Union(1, Box::new(Avro::String(s))),
        None => Avro::Union(0, Box::new(Avro::Null)),
    };
    vec![
        ("event_id".into(), s("event_id")),
        ("user_id".into(), s("user_id")),
        ("event_type".into(), s("event_type")),
        ("timestamp".into(), Avro::TimestampMillis(event["timestamp"].as_i64().unwrap_or_default())),
        ("session_id".into(), s("session_id")),
        ("event_properties".into(), opt(event.get("event_properties").map(Value::to_string))),
        ("device_info".into(), Avro::Union(0, Box::new(Avro::Null))),
        ("location".into(), Avro::Union(0, Box::new(Avro::Null))),
        ("referrer".into(), opt(event.get("referrer").and_then(Value::as_str).map(str::to_owned))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifecycle_pipeline::Limits;
    use lifecycle_schemas::files::{SchemaFiles, default_dir};
    use std::sync::Arc;

    #[test]
    fn every_generated_event_is_valid_and_ids_are_unique() {
        let files = SchemaFiles::load(&default_dir()).expect("schemas");
        let v = Validator::new(Arc::new(files.catalog().expect("catalog")), Limits::default());
        let mut w = Workload::new(7, 100, "t", Utc::now());
        let mut ids = std::collections::HashSet::new();
        let mut per_user = std::collections::HashMap::new();
        for _ in 0..5000 {
            let e = w.next_event();
            let ok = v.validate_object(e.as_object().expect("object"), Utc::now());
            assert!(ok.is_ok(), "{e}: {ok:?}");
            assert!(ids.insert(e["event_id"].as_str().expect("id").to_owned()));
            *per_user.entry(e["user_id"].as_str().expect("user").to_owned()).or_insert(0) += 1;
        }
        let max = per_user.values().max().copied().unwrap_or(0);
        assert!(max > 5000 / 100 * 5, "heavy tail expected, busiest user has {max}");
    }

    #[test]
    fn framed_avro_events_average_about_300_bytes() {
        let files = SchemaFiles::load(&default_dir()).expect("schemas");
        let v = Validator::new(Arc::new(files.catalog().expect("catalog")), Limits::default());
        let envelope = files.envelope().expect("envelope");
        let enc = AvroEncoder { validator: &v, envelope: &envelope, schema_id: 1 };
        let mut w = Workload::new(7, 1000, "bench", Utc::now());
        let total: usize = (0..5000).map(|_| enc.encode(&w.next_event()).expect("encode").len()).sum();
        let mean = total / 5000;
        assert!((250..=350).contains(&mean), "mean framed event size {mean} bytes");
    }
}
