//! Segment and trigger conditions: JSON condition trees evaluated against a
//! document (`{"profile": ..., "event": ...}`) and the user's recent events.
//!
//! ```json
//! {"and": [
//!   {"field": "profile.lifecycle_stage", "op": "in", "value": ["Revenue", "Referral"]},
//!   {"or": [{"field": "profile.demographic.country", "op": "eq", "value": "DE"},
//!           {"not": {"field": "profile.email", "op": "exists"}}]},
//!   {"field": "profile.behavioral.last_session_date", "op": "within", "value": "P30D"},
//!   {"events": "transaction.purchase_complete", "within": "P7D", "op": "gte", "value": 2}
//! ]}
//! ```
//!
//! Operators on fields: `eq`, `ne`, `gt`, `gte`, `lt`, `lte` (numbers, or
//! strings/timestamps compared as text), `in`, `not_in` (a list), `contains`
//! (substring or list element), `exists`, `within` / `older_than` (an RFC 3339
//! timestamp field against an ISO 8601 duration before now). A recent-events
//! count compares with `eq` ... `lte`. A missing field is null: it satisfies
//! only `ne`, `not_in` and `not exists`.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::intern::Name;
use crate::workflow::bpmn::parse_duration;

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Greater.
    Gt,
    /// Greater or equal.
    Gte,
    /// Less.
    Lt,
    /// Less or equal.
    Lte,
    /// In a list.
    In,
    /// Not in a list.
    NotIn,
    /// Substring or element.
    Contains,
    /// Present and not null.
    Exists,
    /// Timestamp no older than a duration.
    Within,
    /// Timestamp older than a duration.
    OlderThan,
}

impl CmpOp {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "gt" => Self::Gt,
            "gte" => Self::Gte,
            "lt" => Self::Lt,
            "lte" => Self::Lte,
            "in" => Self::In,
            "not_in" => Self::NotIn,
            "contains" => Self::Contains,
            "exists" => Self::Exists,
            "within" => Self::Within,
            "older_than" => Self::OlderThan,
            _ => return None,
        })
    }
}

/// A parsed condition tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// All hold (true when empty).
    And(Vec<Condition>),
    /// One holds (false when empty).
    Or(Vec<Condition>),
    /// Does not hold.
    Not(Box<Condition>),
    /// A field compared with a value.
    Field {
        /// Dotted path into the document.
        path: Vec<String>,
        /// Operator.
        op: CmpOp,
        /// Operand (a duration in seconds for `within` / `older_than`).
        value: Value,
    },
    /// How many recent events of a type (`*`: any) in a window.
    Events {
        /// Event type or `*`.
        event_type: String,
        /// Window length.
        within: chrono::Duration,
        /// Operator (a comparison).
        op: CmpOp,
        /// Count to compare with.
        value: u64,
    },
}

/// Why a condition tree was refused: the JSON path of the problem and what it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConditionError {
    /// Where, e.g. `conditions.and[1].op`.
    pub path: String,
    /// What.
    pub message: String,
}

/// One recent event of the user. In a profile document it is the pair
/// `["engagement.page_view", 1796058217000]` (type, epoch milliseconds): a
/// profile keeps up to a hundred of them and writes them at every batch, so
/// their form is most of an active user's document. The older object form
/// `{"event_type": ..., "at": "<RFC 3339>"}` is still read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentEvent {
    /// Its type (shared: a profile keeps many of these).
    pub event_type: Name,
    /// When it happened.
    pub at: DateTime<Utc>,
}

impl serde::Serialize for RecentEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple as _;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.event_type)?;
        t.serialize_element(&self.at.timestamp_millis())?;
        t.end()
    }
}

impl<'de> serde::Deserialize<'de> for RecentEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Form {
            Pair(Name, i64),
            Object { event_type: Name, at: DateTime<Utc> },
        }
        match Form::deserialize(d)? {
            Form::Object { event_type, at } => Ok(Self { event_type, at }),
            Form::Pair(event_type, ms) => {
                use chrono::TimeZone as _;
                let at = Utc
                    .timestamp_millis_opt(ms)
                    .single()
                    .ok_or_else(|| serde::de::Error::custom(format!("{ms} is not a time in epoch milliseconds")))?;
                Ok(Self { event_type, at })
            }
        }
    }
}

/// What a condition is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The document (`{"profile": ..., "event": ...}`).
    pub doc: &'a Value,
    /// The user's recent events.
    pub recent: &'a [RecentEvent],
    /// The evaluation time.
    pub now: DateTime<Utc>,
}

const MAX_DEPTH: usize = 16;
const MAX_NODES: usize = 200;

fn err(path: &str, message: impl Into<String>) -> ConditionError {
    ConditionError { path: path.to_owned(), message: message.into() }
}

fn duration(path: &str, v: &Value) -> Result<chrono::Duration, ConditionError> {
    v.as_str()
        .and_then(parse_duration)
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .ok_or_else(|| err(path, "must be an ISO 8601 duration such as P7D or PT12H"))
}

impl Condition {
    /// Parses a tree; `root` names it in errors (e.g. `conditions`).
    pub fn parse(v: &Value, root: &str) -> Result<Self, ConditionError> {
        let mut nodes = 0;
        Self::parse_at(v, root, 0, &mut nodes)
    }

    fn parse_at(v: &Value, path: &str, depth: usize, nodes: &mut usize) -> Result<Self, ConditionError> {
        *nodes += 1;
        if depth > MAX_DEPTH || *nodes > MAX_NODES {
            return Err(err(path, format!("too deep or too large (at most {MAX_DEPTH} levels, {MAX_NODES} nodes)")));
        }
        let obj = v.as_object().ok_or_else(|| err(path, "must be an object"))?;
        let list = |key: &str, nodes: &mut usize| -> Result<Vec<Condition>, ConditionError> {
            let items = obj[key].as_array().ok_or_else(|| err(&format!("{path}.{key}"), "must be a list"))?;
            items
                .iter()
                .enumerate()
                .map(|(i, c)| Self::parse_at(c, &format!("{path}.{key}[{i}]"), depth + 1, nodes))
                .collect()
        };
        let known = |keys: &[&str]| -> Result<(), ConditionError> {
            match obj.keys().find(|k| !keys.contains(&k.as_str())) {
                Some(k) => Err(err(&format!("{path}.{k}"), format!("unknown key (expected {})", keys.join(", ")))),
                None => Ok(()),
            }
        };
        if obj.contains_key("and") {
            known(&["and"])?;
            return Ok(Self::And(list("and", nodes)?));
        }
        if obj.contains_key("or") {
            known(&["or"])?;
            return Ok(Self::Or(list("or", nodes)?));
        }
        if let Some(inner) = obj.get("not") {
            known(&["not"])?;
            return Ok(Self::Not(Box::new(Self::parse_at(inner, &format!("{path}.not"), depth + 1, nodes)?)));
        }
        let op_text = obj.get("op").and_then(Value::as_str).ok_or_else(|| err(&format!("{path}.op"), "is required"))?;
        let op = CmpOp::parse(op_text).ok_or_else(|| {
            err(
                &format!("{path}.op"),
                format!("unknown operator '{op_text}' (eq, ne, gt, gte, lt, lte, in, not_in, contains, exists, within, older_than)"),
            )
        })?;
        if let Some(t) = obj.get("events") {
            known(&["events", "within", "op", "value"])?;
            let event_type = t
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| err(&format!("{path}.events"), "must be an event type or *"))?;
            if !matches!(op, CmpOp::Eq | CmpOp::Ne | CmpOp::Gt | CmpOp::Gte | CmpOp::Lt | CmpOp::Lte) {
                return Err(err(&format!("{path}.op"), "an event count compares with eq, ne, gt, gte, lt or lte"));
            }
            let within = duration(&format!("{path}.within"), obj.get("within").unwrap_or(&Value::Null))?;
            let value = obj
                .get("value")
                .and_then(Value::as_u64)
                .ok_or_else(|| err(&format!("{path}.value"), "must be a whole number of events"))?;
            return Ok(Self::Events { event_type: event_type.to_owned(), within, op, value });
        }
        known(&["field", "op", "value"])?;
        let field = obj
            .get("field")
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty() && f.split('.').all(|p| !p.is_empty()))
            .ok_or_else(|| {
                err(&format!("{path}.field"), "must be a dotted path such as profile.demographic.country")
            })?;
        let vpath = format!("{path}.value");
        let value = match op {
            CmpOp::Exists => {
                if obj.contains_key("value") {
                    return Err(err(&vpath, "exists takes no value"));
                }
                Value::Null
            }
            CmpOp::In | CmpOp::NotIn => match obj.get("value") {
                Some(v @ Value::Array(_)) => v.clone(),
                _ => return Err(err(&vpath, "must be a list")),
            },
            CmpOp::Within | CmpOp::OlderThan => {
                Value::from(duration(&vpath, obj.get("value").unwrap_or(&Value::Null))?.num_seconds())
            }
            CmpOp::Gt | CmpOp::Gte | CmpOp::Lt | CmpOp::Lte => match obj.get("value") {
                Some(v @ (Value::Number(_) | Value::String(_))) => v.clone(),
                _ => return Err(err(&vpath, "must be a number or a string")),
            },
            _ => obj.get("value").cloned().ok_or_else(|| err(&vpath, "is required"))?,
        };
        Ok(Self::Field { path: field.split('.').map(str::to_owned).collect(), op, value })
    }

    /// Whether the condition holds in `ctx`.
    pub fn eval(&self, ctx: &Context<'_>) -> bool {
        match self {
            Self::And(cs) => cs.iter().all(|c| c.eval(ctx)),
            Self::Or(cs) => cs.iter().any(|c| c.eval(ctx)),
            Self::Not(c) => !c.eval(ctx),
            Self::Field { path, op, value } => {
                let got = path.iter().try_fold(ctx.doc, |v, k| v.get(k)).filter(|v| !v.is_null());
                compare(got, *op, value, ctx.now)
            }
            Self::Events { event_type, within, op, value } => {
                let since = ctx.now - *within;
                let n = ctx
                    .recent
                    .iter()
                    .filter(|e| (event_type == "*" || e.event_type == *event_type) && e.at >= since && e.at <= ctx.now)
                    .count() as u64;
                compare(Some(&Value::from(n)), *op, &Value::from(*value), ctx.now)
            }
        }
    }

    /// The next time the result may change by time passing alone (a window
    /// boundary after `ctx.now`); memberships are valid until then.
    pub fn horizon(&self, ctx: &Context<'_>) -> Option<DateTime<Utc>> {
        match self {
            Self::And(cs) | Self::Or(cs) => cs.iter().filter_map(|c| c.horizon(ctx)).min(),
            Self::Not(c) => c.horizon(ctx),
            Self::Field { path, op: CmpOp::Within | CmpOp::OlderThan, value } => {
                let at = path.iter().try_fold(ctx.doc, |v, k| v.get(k)).and_then(timestamp)?;
                let edge = at + chrono::Duration::seconds(value.as_i64().unwrap_or(0));
                (edge > ctx.now).then_some(edge)
            }
            Self::Field { .. } => None,
            Self::Events { event_type, within, .. } => ctx
                .recent
                .iter()
                .filter(|e| event_type == "*" || e.event_type == *event_type)
                .map(|e| e.at + *within)
                .filter(|edge| *edge > ctx.now)
                .min(),
        }
    }
}

fn timestamp(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn compare(got: Option<&Value>, op: CmpOp, value: &Value, now: DateTime<Utc>) -> bool {
    let Some(got) = got else {
        return matches!(op, CmpOp::Ne | CmpOp::NotIn);
    };
    let list = || value.as_array().map(Vec::as_slice).unwrap_or_default();
    let ordered = |f: fn(std::cmp::Ordering) -> bool| match (got, value) {
        (Value::Number(_), Value::Number(_)) => {
            got.as_f64().zip(value.as_f64()).and_then(|(a, b)| a.partial_cmp(&b)).is_some_and(f)
        }
        (Value::String(a), Value::String(b)) => f(a.as_str().cmp(b.as_str())),
        _ => false,
    };
    match op {
        CmpOp::Eq => equal(got, value),
        CmpOp::Ne => !equal(got, value),
        CmpOp::Gt => ordered(std::cmp::Ordering::is_gt),
        CmpOp::Gte => ordered(std::cmp::Ordering::is_ge),
        CmpOp::Lt => ordered(std::cmp::Ordering::is_lt),
        CmpOp::Lte => ordered(std::cmp::Ordering::is_le),
        CmpOp::In => list().iter().any(|v| equal(got, v)),
        CmpOp::NotIn => !list().iter().any(|v| equal(got, v)),
        CmpOp::Contains => match (got, value) {
            (Value::String(s), Value::String(needle)) => s.contains(needle.as_str()),
            (Value::Array(items), _) => items.iter().any(|v| equal(v, value)),
            _ => false,
        },
        CmpOp::Exists => true,
        CmpOp::Within | CmpOp::OlderThan => {
            let Some(at) = timestamp(got) else { return false };
            let edge = now - chrono::Duration::seconds(value.as_i64().unwrap_or(0));
            if op == CmpOp::Within { at >= edge } else { at < edge }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).unwrap_or_default()
    }

    fn doc() -> Value {
        json!({
            "profile": {
                "lifecycle_stage": "Revenue",
                "email": "a@example.com",
                "demographic": {"country": "DE"},
                "behavioral": {"last_session_date": "2026-11-20T10:00:00Z", "session_count": 4},
                "transaction": {"total_revenue_cents": 12000, "subscription_tier": null},
                "tags": ["beta", "newsletter"]
            },
            "event": {"event_type": "transaction.purchase_complete", "event_properties": {"amount": 99.5}}
        })
    }

    fn holds(c: Value, recent: &[RecentEvent]) -> Result<bool, ConditionError> {
        let d = doc();
        let ctx = Context { doc: &d, recent, now: at("2026-11-23T10:00:00Z") };
        Ok(Condition::parse(&c, "conditions")?.eval(&ctx))
    }

    #[test]
    fn fields_compare() -> Result<(), ConditionError> {
        let f = |field: &str, op: &str, value: Value| json!({"field": field, "op": op, "value": value});
        assert!(holds(f("profile.lifecycle_stage", "in", json!(["Revenue", "Referral"])), &[])?);
        assert!(holds(f("profile.transaction.total_revenue_cents", "gte", json!(10000)), &[])?);
        assert!(!holds(f("profile.transaction.total_revenue_cents", "lt", json!(100.5)), &[])?);
        assert!(holds(f("event.event_properties.amount", "gt", json!(99)), &[])?);
        assert!(holds(f("profile.tags", "contains", json!("beta")), &[])?);
        assert!(holds(f("profile.email", "contains", json!("@example.")), &[])?);
        assert!(holds(f("profile.demographic.country", "ne", json!("FR")), &[])?);
        assert!(holds(json!({"field": "profile.email", "op": "exists"}), &[])?);
        assert!(!holds(json!({"field": "profile.transaction.subscription_tier", "op": "exists"}), &[])?);
        assert!(holds(f("profile.behavioral.last_session_date", "within", json!("P7D")), &[])?);
        assert!(!holds(f("profile.behavioral.last_session_date", "older_than", json!("P7D")), &[])?);
        // Missing fields satisfy only the negative operators.
        assert!(holds(f("profile.nope", "ne", json!(1)), &[])?);
        assert!(holds(f("profile.nope", "not_in", json!([1])), &[])?);
        assert!(!holds(f("profile.nope", "eq", json!(null)), &[])?);
        Ok(())
    }

    #[test]
    fn trees_and_event_windows() -> Result<(), ConditionError> {
        let recent = [
            RecentEvent { event_type: "transaction.purchase_complete".into(), at: at("2026-11-22T10:00:00Z") },
            RecentEvent { event_type: "transaction.purchase_complete".into(), at: at("2026-11-10T10:00:00Z") },
            RecentEvent { event_type: "engagement.page_view".into(), at: at("2026-11-23T09:00:00Z") },
        ];
        let c = json!({"and": [
            {"field": "profile.lifecycle_stage", "op": "eq", "value": "Revenue"},
            {"or": [{"field": "profile.demographic.country", "op": "eq", "value": "FR"},
                    {"not": {"field": "profile.transaction.subscription_tier", "op": "exists"}}]},
            {"events": "transaction.purchase_complete", "within": "P7D", "op": "eq", "value": 1},
            {"events": "*", "within": "P30D", "op": "gte", "value": 3}
        ]});
        assert!(holds(c, &recent)?);
        assert!(!holds(
            json!({"events": "transaction.purchase_complete", "within": "P7D", "op": "gte", "value": 2}),
            &recent
        )?);
        assert!(holds(json!({"and": []}), &[])?);
        assert!(!holds(json!({"or": []}), &[])?);
        Ok(())
    }

    #[test]
    fn memberships_expire_at_the_next_window_edge() -> Result<(), ConditionError> {
        let recent = [RecentEvent { event_type: "user.login".into(), at: at("2026-11-22T10:00:00Z") }];
        let json = serde_json::to_string(&recent[0]).expect("serialize");
        assert_eq!(json, r#"["user.login",1795341600000]"#, "a compact pair in profile documents");
        let old: RecentEvent =
            serde_json::from_str(r#"{"event_type":"user.login","at":"2026-11-22T10:00:00Z"}"#).expect("old form");
        assert_eq!(
            (serde_json::from_str::<RecentEvent>(&json).expect("pair"), old),
            (recent[0].clone(), recent[0].clone())
        );
        let d = doc();
        let ctx = Context { doc: &d, recent: &recent, now: at("2026-11-23T10:00:00Z") };
        let c = Condition::parse(
            &json!({"and": [
                {"events": "user.login", "within": "P7D", "op": "gte", "value": 1},
                {"field": "profile.behavioral.last_session_date", "op": "within", "value": "P30D"}
            ]}),
            "conditions",
        )?;
        assert_eq!(c.horizon(&ctx), Some(at("2026-11-29T10:00:00Z")), "the login leaves the 7-day window first");
        let plain =
            Condition::parse(&json!({"field": "profile.lifecycle_stage", "op": "eq", "value": "Revenue"}), "c")?;
        assert_eq!(plain.horizon(&ctx), None);
        Ok(())
    }

    #[test]
    fn bad_trees_name_the_path() {
        let path = |c: Value| Condition::parse(&c, "conditions").err().map(|e| e.path);
        assert_eq!(path(json!([])), Some("conditions".into()));
        assert_eq!(path(json!({"and": {}})), Some("conditions.and".into()));
        assert_eq!(path(json!({"and": [{"field": "a", "op": "gt="}]})), Some("conditions.and[0].op".into()));
        assert_eq!(
            path(json!({"or": [{}, {"field": "a", "op": "in", "value": 1}]})),
            Some("conditions.or[0].op".into())
        );
        assert_eq!(path(json!({"field": "a", "op": "in", "value": 1})), Some("conditions.value".into()));
        assert_eq!(path(json!({"field": "a..b", "op": "eq", "value": 1})), Some("conditions.field".into()));
        assert_eq!(path(json!({"field": "a", "op": "within", "value": "7 days"})), Some("conditions.value".into()));
        assert_eq!(path(json!({"field": "a", "op": "exists", "value": 1})), Some("conditions.value".into()));
        assert_eq!(path(json!({"field": "a", "op": "eq", "value": 1, "extra": 2})), Some("conditions.extra".into()));
        assert_eq!(path(json!({"events": "x", "within": "P1D", "op": "in", "value": 1})), Some("conditions.op".into()));
        assert_eq!(
            path(json!({"events": "x", "within": "P1D", "op": "gte", "value": -1})),
            Some("conditions.value".into())
        );
        let mut deep = json!({"field": "a", "op": "exists"});
        for _ in 0..20 {
            deep = json!({"not": deep});
        }
        assert!(Condition::parse(&deep, "conditions").is_err(), "depth is bounded");
    }
}
