use super::*;
use crate::envelope_codec::{DEVICE_FIELDS, EnvelopeView, LOCATION_FIELDS};
use chrono::TimeZone;
use serde_json::json;

const PURCHASE: &str = r#"{"type":"record","name":"PurchaseComplete","fields":[
    {"name":"order_id","type":"string"},
    {"name":"amount","type":"double"},
    {"name":"currency","type":"string"}
]}"#;
const PAGE_VIEW: &str = r#"{"type":"record","name":"PageView","fields":[
    {"name":"page","type":["null","string"],"default":null}
]}"#;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).single().expect("valid date")
}

fn validator() -> Validator {
    let catalog =
        EventCatalog::from_schemas([("transaction.purchase_complete", PURCHASE), ("engagement.page_view", PAGE_VIEW)])
            .expect("catalog");
    Validator::new(Arc::new(catalog), Limits::default())
}

fn good() -> Value {
    json!({
        "event_id": "e-1",
        "user_id": "u-1",
        "event_type": "transaction.purchase_complete",
        "timestamp": "2026-11-23T11:59:00.123456Z",
        "session_id": "s-1",
        "event_properties": {"order_id": "o-1", "amount": 19.99, "currency": "EUR"},
        "device_info": {"device_type": "mobile", "os": "iOS"},
        "location": {"country": "DE"},
        "referrer": "https://example.org"
    })
}

fn check(v: Value) -> Result<Event, Rejection> {
    validator().validate_object(v.as_object().expect("object"), now())
}

fn reject(v: Value) -> Rejection {
    check(v).expect_err("must be rejected")
}

#[test]
fn accepts_a_full_event_and_truncates_to_millis() {
    let e = check(good()).expect("valid");
    assert_eq!(e.event_type.category(), "transaction");
    assert_eq!(e.timestamp.timestamp_millis(), now().timestamp_millis() - 60_000 + 123);
    assert_eq!(e.device_info.and_then(|d| d.os).as_deref(), Some("iOS"));
    assert_eq!(e.event_properties.and_then(|p| p.get("amount").cloned()), Some(json!(19.99)));
}

#[test]
fn accepts_epoch_millis_and_missing_optional_properties() {
    let mut v = good();
    v["event_type"] = json!("engagement.page_view");
    v["timestamp"] = json!(now().timestamp_millis());
    v.as_object_mut().expect("object").remove("event_properties");
    assert!(check(v).is_ok());
}

#[test]
fn each_rule_has_its_reason() {
    type Case = (&'static str, Box<dyn Fn(&mut Value)>, ReasonCode, &'static str);
    let cases: Vec<Case> = vec![
        (
            "missing user_id",
            Box::new(|v| {
                v.as_object_mut().expect("o").remove("user_id");
            }),
            ReasonCode::MissingRequiredField,
            "user_id",
        ),
        ("null session", Box::new(|v| v["session_id"] = Value::Null), ReasonCode::MissingRequiredField, "session_id"),
        ("numeric user_id", Box::new(|v| v["user_id"] = json!(42)), ReasonCode::WrongType, "user_id"),
        ("empty event_id", Box::new(|v| v["event_id"] = json!("  ")), ReasonCode::InvalidValue, "event_id"),
        ("long event_id", Box::new(|v| v["event_id"] = json!("x".repeat(129))), ReasonCode::InvalidValue, "event_id"),
        (
            "camel type",
            Box::new(|v| v["event_type"] = json!("User.SignUp")),
            ReasonCode::InvalidEventType,
            "event_type",
        ),
        ("no dot", Box::new(|v| v["event_type"] = json!("signup")), ReasonCode::InvalidEventType, "event_type"),
        (
            "unknown type",
            Box::new(|v| v["event_type"] = json!("product.purchase")),
            ReasonCode::UnknownEventType,
            "event_type",
        ),
        ("bad timestamp", Box::new(|v| v["timestamp"] = json!("yesterday")), ReasonCode::InvalidTimestamp, "timestamp"),
        ("bool timestamp", Box::new(|v| v["timestamp"] = json!(true)), ReasonCode::WrongType, "timestamp"),
        (
            "future",
            Box::new(|v| v["timestamp"] = json!("2026-11-23T12:06:00Z")),
            ReasonCode::TimestampOutOfRange,
            "timestamp",
        ),
        (
            "ancient",
            Box::new(|v| v["timestamp"] = json!("2020-01-01T00:00:00Z")),
            ReasonCode::TimestampOutOfRange,
            "timestamp",
        ),
        (
            "props not object",
            Box::new(|v| v["event_properties"] = json!("{}")),
            ReasonCode::WrongType,
            "event_properties",
        ),
        (
            "bad amount",
            Box::new(|v| v["event_properties"]["amount"] = json!("19.99")),
            ReasonCode::InvalidProperties,
            "event_properties.amount",
        ),
        (
            "props missing",
            Box::new(|v| {
                v.as_object_mut().expect("o").remove("event_properties");
            }),
            ReasonCode::InvalidProperties,
            "event_properties.order_id",
        ),
        ("device type", Box::new(|v| v["device_info"]["os"] = json!(1)), ReasonCode::WrongType, "device_info.os"),
        (
            "device unknown",
            Box::new(|v| v["device_info"]["ram"] = json!("8G")),
            ReasonCode::UnknownField,
            "device_info",
        ),
        ("typo field", Box::new(|v| v["evnt_type"] = json!("x.y")), ReasonCode::UnknownField, "evnt_type"),
    ];
    for (name, mutate, reason, field) in cases {
        let mut v = good();
        mutate(&mut v);
        let r = reject(v);
        assert_eq!(r.reason, reason, "{name}: {r:?}");
        assert_eq!(r.errors[0].field, field, "{name}: {r:?}");
    }
}

#[test]
fn bad_bytes_are_invalid_json() {
    let v = validator();
    for bytes in [&b"{\"event_id\": \"\xff\xfe\"}"[..], b"{\"a\":", b"not json"] {
        assert_eq!(v.validate_json(bytes, now()).expect_err("reject").reason, ReasonCode::InvalidJson);
    }
    assert_eq!(v.validate_json(b"[1]", now()).expect_err("reject").reason, ReasonCode::WrongType);
}

/// Every error of a badly broken event, in order, as JSON: compared with a golden file
/// so changes to codes or messages (a public contract) are deliberate.
#[test]
fn error_details_match_golden_file() {
    let broken = json!({
        "event_id": 7,
        "event_type": "transaction.purchase_complete",
        "timestamp": "2030-01-01T00:00:00Z",
        "session_id": "",
        "event_properties": {"amount": "ten", "currency": null},
        "location": {"city": 12},
        "colour": "blue"
    });
    let r = reject(broken);
    let got = serde_json::to_string_pretty(&r).expect("serialize") + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/validation_errors.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &got).expect("write golden");
    }
    let want = std::fs::read_to_string(path).expect("golden file (run with UPDATE_GOLDEN=1 to create)");
    assert_eq!(got, want);
}

#[test]
fn text_and_numbers_the_stores_cannot_hold_are_refused_naming_the_field() {
    let fields =
        |v: Value| -> Vec<(String, ReasonCode)> { reject(v).errors.into_iter().map(|e| (e.field, e.code)).collect() };
    let mut v = good();
    v["location"] = json!({"city": "a\u{0}b"});
    v["event_properties"]["note"] = json!({"deep": ["ok", "x\u{0}"]});
    v["event_properties"]["k\u{0}"] = json!(1);
    v["session_id"] = json!("s\u{0}");
    assert_eq!(
        fields(v),
        vec![
            ("session_id".to_owned(), ReasonCode::UnsupportedCharacter),
            ("location.city".to_owned(), ReasonCode::UnsupportedCharacter),
            ("event_properties.k\\u0000".to_owned(), ReasonCode::UnsupportedCharacter),
            ("event_properties.note.deep[1]".to_owned(), ReasonCode::UnsupportedCharacter),
        ]
    );
    let mut v = good();
    v["event_properties"]["amount"] = json!(5e15);
    v["event_properties"]["comment"] = json!("x".repeat(8193));
    v["device_info"]["os"] = json!("y".repeat(257));
    let r = reject(v);
    assert_eq!(r.reason, ReasonCode::InvalidProperties);
    let got: Vec<(&str, ReasonCode)> = r.errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
    assert_eq!(
        got,
        vec![
            ("event_properties.amount", ReasonCode::ValueOutOfRange),
            ("device_info.os", ReasonCode::ValueTooLong),
            ("event_properties.comment", ReasonCode::ValueTooLong),
        ]
    );
    // A lone surrogate cannot reach the validator: JSON parsing refuses it.
    let lone =
        br#"{"event_id":"e","user_id":"\ud800","event_type":"engagement.page_view","timestamp":1,"session_id":"s"}"#;
    assert_eq!(validator().validate_json(lone, now()).expect_err("refused").reason, ReasonCode::InvalidJson);
}

/// The JSON object an envelope read in place stands for.
fn view_as_json(v: &EnvelopeView<'_>) -> Value {
    let members = |names: &[&str], values: &[Option<&str>]| {
        Value::Object(
            names.iter().zip(values).map(|(n, v)| ((*n).to_owned(), v.map_or(Value::Null, |s| json!(s)))).collect(),
        )
    };
    json!({
        "event_id": v.event_id, "user_id": v.user_id, "event_type": v.event_type, "timestamp": v.timestamp_ms,
        "session_id": v.session_id,
        "event_properties": v.event_properties.map(|p| serde_json::from_str::<Value>(p).expect("json props")),
        "device_info": v.device_info.map(|d| members(&DEVICE_FIELDS, &d)),
        "location": v.location.map(|l| members(&LOCATION_FIELDS, &l)),
        "referrer": v.referrer,
    })
}

#[test]
fn events_read_in_place_get_the_same_verdict_as_json_objects() {
    let ts = now().timestamp_millis() - 1000;
    let long = "x".repeat(300);
    let huge = "y".repeat(9000);
    let good = EnvelopeView {
        event_id: "e-1",
        user_id: "u-1",
        event_type: "transaction.purchase_complete",
        timestamp_ms: ts,
        session_id: "s-1",
        event_properties: Some(r#"{"order_id":"o-1","amount":19.99,"currency":"EUR"}"#),
        device_info: Some([Some("mobile"), Some("iOS"), None, None, None]),
        location: Some([Some("DE"), None, Some("Berlin"), None]),
        referrer: Some("https://example.org"),
    };
    let huge_props = format!(r#"{{"order_id":"{huge}","amount":1e13,"currency":"EUR","x\u0000":1}}"#);
    let cases: Vec<EnvelopeView<'_>> = vec![
        good.clone(),
        EnvelopeView { event_id: "", user_id: " ", session_id: "s\0", ..good.clone() },
        EnvelopeView { event_id: &long, event_type: "Bad.Type", ..good.clone() },
        EnvelopeView { event_type: "unknown.kind", timestamp_ms: ts + 86_400_000, ..good.clone() },
        EnvelopeView { timestamp_ms: 0, event_properties: None, ..good.clone() },
        EnvelopeView { timestamp_ms: i64::MAX, ..good.clone() },
        EnvelopeView { event_properties: Some(r#"{"order_id":5,"currency":"EUR"}"#), ..good.clone() },
        EnvelopeView { event_properties: Some("[1,2]"), ..good.clone() },
        EnvelopeView { event_properties: Some(&huge_props), ..good.clone() },
        EnvelopeView { device_info: Some([Some(&long), Some("a\0b"), None, None, None]), ..good.clone() },
        EnvelopeView { location: Some([None, None, Some("c\0"), None]), referrer: Some(&huge), ..good.clone() },
        EnvelopeView { referrer: Some("r\0"), device_info: None, location: None, ..good.clone() },
    ];
    let v = validator();
    for view in &cases {
        let json = view_as_json(view);
        let from_json = v.validate_object(json.as_object().expect("object"), now());
        assert_eq!(v.validate_view(view, now()), from_json, "{json}");
    }
    let not_json = EnvelopeView { event_properties: Some("{nope"), event_id: "", ..good };
    let r = v.validate_view(&not_json, now()).expect_err("not JSON");
    assert_eq!((r.reason, r.errors.len()), (ReasonCode::InvalidJson, 1), "reported alone, as the generic decoder does");
}
