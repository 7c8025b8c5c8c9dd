//! The event catalog: which event types exist and what their properties look like.
//!
//! Each event type has an Avro record schema (`schemas/events/<category>.<action>.avsc`)
//! describing its `event_properties`. The catalog turns those schemas into a small
//! type tree that checks a JSON object field by field, so a rejected event names
//! every offending property.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::event::EventType;
use crate::reason::{FieldError, ReasonCode};

/// A property schema failed to load.
#[derive(Debug, thiserror::Error)]
#[error("schema for {event_type}: {message}")]
pub struct CatalogError {
    /// The event type whose schema is bad.
    pub event_type: String,
    /// What is wrong with it.
    pub message: String,
}

/// The shape of one value, as far as JSON validation needs it.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    String,
    Enum(Vec<String>),
    Array(Box<Ty>),
    Map(Box<Ty>),
    Record(Vec<FieldTy>),
    Union(Vec<Ty>),
}

#[derive(Debug, Clone, PartialEq)]
struct FieldTy {
    name: String,
    ty: Ty,
    /// A default exists (so the field may be omitted).
    optional: bool,
    /// Longest accepted string, in characters: the field's `maxLength` attribute
    /// (this project's extension of the Avro field; Avro ignores it), set where
    /// the value lands in a bounded column (`users.email` is `VARCHAR(255)`).
    max_len: Option<usize>,
}

/// Largest magnitude of a `float` or `double` property. Amounts are summed in
/// integer cents in 64-bit columns (profiles, ClickHouse `amount_cents`):
/// 10^12 currency units is 10^14 cents, so about 92,000 such values still sum
/// within `i64`; a larger value is a producer's bug, not a purchase.
pub const MAX_NUMBER: f64 = 1e12;

impl Ty {
    fn describe(&self) -> String {
        match self {
            Ty::Null => "null".into(),
            Ty::Boolean => "boolean".into(),
            Ty::Int => "int".into(),
            Ty::Long => "long".into(),
            Ty::Float => "number".into(),
            Ty::String => "string".into(),
            Ty::Enum(symbols) => format!("one of [{}]", symbols.join(", ")),
            Ty::Array(item) => format!("array of {}", item.describe()),
            Ty::Map(value) => format!("object of {}", value.describe()),
            Ty::Record(_) => "object".into(),
            Ty::Union(variants) => variants.iter().map(Ty::describe).collect::<Vec<_>>().join(" or "),
        }
    }

    fn accepts_null(&self) -> bool {
        match self {
            Ty::Null => true,
            Ty::Union(v) => v.iter().any(Ty::accepts_null),
            _ => false,
        }
    }

    /// Whether [`Ty::check`] finds nothing wrong with `value` (without building
    /// any error: unions try their variants with this first).
    fn matches(&self, value: &Value) -> bool {
        match (self, value) {
            (Ty::Null, Value::Null) | (Ty::Boolean, Value::Bool(_)) | (Ty::String, Value::String(_)) => true,
            (Ty::Int, Value::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
            (Ty::Long, Value::Number(n)) => n.as_i64().is_some(),
            (Ty::Float, Value::Number(n)) => n.as_f64().is_some_and(|f| f.is_finite() && f.abs() <= MAX_NUMBER),
            (Ty::Enum(symbols), Value::String(s)) => symbols.iter().any(|sym| sym == s),
            (Ty::Array(item), Value::Array(items)) => items.iter().all(|v| item.matches(v)),
            (Ty::Map(inner), Value::Object(obj)) => obj.values().all(|v| inner.matches(v)),
            (Ty::Record(fields), Value::Object(obj)) => fields.iter().all(|f| match obj.get(&f.name) {
                None | Some(Value::Null) => f.optional || f.ty.accepts_null(),
                Some(v) => {
                    f.ty.matches(v)
                        && match (f.max_len, v) {
                            (Some(max), Value::String(s)) => s.chars().count() <= max,
                            _ => true,
                        }
                }
            }),
            (Ty::Union(variants), v) => variants.iter().any(|t| t.matches(v)),
            _ => false,
        }
    }

    /// Appends every mismatch between `value` and this type under `path`.
    fn check(&self, path: &Path<'_>, value: &Value, errors: &mut Vec<FieldError>) {
        let wrong = |errors: &mut Vec<FieldError>| {
            errors.push(FieldError::new(
                path.render(),
                ReasonCode::WrongType,
                format!("expected {}, got {}", self.describe(), json_kind(value)),
            ));
        };
        match (self, value) {
            (Ty::Null, Value::Null) | (Ty::Boolean, Value::Bool(_)) | (Ty::String, Value::String(_)) => {}
            (Ty::Int, Value::Number(n)) => match n.as_i64() {
                Some(i) if i32::try_from(i).is_ok() => {}
                Some(_) => {
                    errors.push(FieldError::new(path.render(), ReasonCode::InvalidValue, "int out of 32-bit range"))
                }
                None => wrong(errors),
            },
            (Ty::Long, Value::Number(n)) => {
                if n.as_i64().is_none() {
                    wrong(errors);
                }
            }
            (Ty::Float, Value::Number(n)) => {
                if n.as_f64().is_none_or(|f| !f.is_finite() || f.abs() > MAX_NUMBER) {
                    errors.push(FieldError::new(
                        path.render(),
                        ReasonCode::ValueOutOfRange,
                        format!("{n} is beyond ±{MAX_NUMBER:e}, the largest amount the stores sum exactly"),
                    ));
                }
            }
            (Ty::Enum(symbols), Value::String(s)) => {
                if !symbols.iter().any(|sym| sym == s) {
                    errors.push(FieldError::new(
                        path.render(),
                        ReasonCode::InvalidValue,
                        format!("'{s}' is not one of [{}]", symbols.join(", ")),
                    ));
                }
            }
            (Ty::Array(item), Value::Array(items)) => {
                for (i, v) in items.iter().enumerate() {
                    item.check(&Path::Index(path, i), v, errors);
                }
            }
            (Ty::Map(inner), Value::Object(obj)) => {
                for (k, v) in obj {
                    inner.check(&Path::Field(path, k), v, errors);
                }
            }
            (Ty::Record(fields), Value::Object(obj)) => check_record(path, fields, obj, errors),
            (Ty::Union(variants), v) => {
                if variants.iter().any(|t| t.matches(v)) {
                    return;
                }
                let mut best: Option<Vec<FieldError>> = None;
                for variant in variants {
                    let mut errs = Vec::new();
                    variant.check(path, v, &mut errs);
                    if errs.is_empty() {
                        return;
                    }
                    // A variant of the right JSON kind gives the more useful detail.
                    if same_kind(variant, v) && best.is_none() {
                        best = Some(errs);
                    }
                }
                match best {
                    Some(errs) => errors.extend(errs),
                    None => wrong(errors),
                }
            }
            _ => wrong(errors),
        }
    }
}

fn same_kind(ty: &Ty, v: &Value) -> bool {
    matches!(
        (ty, v),
        (Ty::Record(_) | Ty::Map(_), Value::Object(_))
            | (Ty::Array(_), Value::Array(_))
            | (Ty::Int | Ty::Long | Ty::Float, Value::Number(_))
            | (Ty::String | Ty::Enum(_), Value::String(_))
    )
}

/// Where a value sits, rendered as `event_properties.items[2].sku` only when
/// an error names it (checking a valid value builds no string).
#[derive(Clone, Copy)]
enum Path<'a> {
    Root(&'a str),
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root(p) => (*p).to_owned(),
            Path::Field(parent, name) => match parent {
                Path::Root("") => (*name).to_owned(),
                _ => format!("{}.{name}", parent.render()),
            },
            Path::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

fn check_record(path: &Path<'_>, fields: &[FieldTy], obj: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    for field in fields {
        let here = Path::Field(path, &field.name);
        match obj.get(&field.name) {
            None | Some(Value::Null) if field.optional || field.ty.accepts_null() => {}
            None | Some(Value::Null) => errors.push(FieldError::new(
                here.render(),
                ReasonCode::MissingRequiredField,
                format!("required {} is missing", field.ty.describe()),
            )),
            Some(v) => {
                field.ty.check(&here, v, errors);
                if let (Some(max), Value::String(s)) = (field.max_len, v)
                    && s.chars().count() > max
                {
                    errors.push(FieldError::new(
                        here.render(),
                        ReasonCode::ValueTooLong,
                        format!("longer than {max} characters"),
                    ));
                }
            }
        }
    }
}

/// The JSON kind of a value, for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every known event type with the schema of its properties.
#[derive(Debug, Clone, Default)]
pub struct EventCatalog {
    types: HashMap<String, Vec<FieldTy>>,
}

impl EventCatalog {
    /// Builds a catalog from `(event_type, avsc text)` pairs.
    ///
    /// The avsc must be an Avro record; it is parsed by apache-avro first, so a
    /// schema the registry would reject is rejected here too.
    pub fn from_schemas<'a>(schemas: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, CatalogError> {
        let mut types = HashMap::new();
        for (event_type, avsc) in schemas {
            let err = |message: String| CatalogError { event_type: event_type.to_owned(), message };
            EventType::parse(event_type).map_err(err)?;
            apache_avro::Schema::parse_str(avsc).map_err(|e| err(format!("invalid Avro schema: {e}")))?;
            let json: Value = serde_json::from_str(avsc).map_err(|e| err(e.to_string()))?;
            let mut names = BTreeMap::new();
            match to_ty(&json, &mut names).map_err(err)? {
                Ty::Record(fields) => {
                    types.insert(event_type.to_owned(), fields);
                }
                other => return Err(err(format!("must be a record, is {}", other.describe()))),
            }
        }
        Ok(Self { types })
    }

    /// Whether the type is known.
    pub fn contains(&self, event_type: &str) -> bool {
        self.types.contains_key(event_type)
    }

    /// Known event types, sorted.
    pub fn event_types(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.types.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Checks `properties` against the schema of `event_type`, appending errors
    /// under `event_properties.<field>`. Unknown types are the caller's concern.
    pub fn check_properties(&self, event_type: &str, properties: &Map<String, Value>, errors: &mut Vec<FieldError>) {
        if let Some(fields) = self.types.get(event_type) {
            check_record(&Path::Root("event_properties"), fields, properties, errors);
        }
    }

    /// Whether the type requires any property (so `event_properties` may not be omitted).
    pub fn requires_properties(&self, event_type: &str) -> bool {
        self.types.get(event_type).is_some_and(|fields| fields.iter().any(|f| !f.optional && !f.ty.accepts_null()))
    }
}

fn to_ty(json: &Value, names: &mut BTreeMap<String, Ty>) -> Result<Ty, String> {
    match json {
        Value::String(name) => {
            primitive(name).or_else(|| names.get(name).cloned()).ok_or_else(|| format!("unknown type '{name}'"))
        }
        Value::Array(variants) => Ok(Ty::Union(variants.iter().map(|v| to_ty(v, names)).collect::<Result<_, _>>()?)),
        Value::Object(obj) => {
            let ty = obj.get("type").ok_or("type object without 'type'")?;
            let named = |names: &mut BTreeMap<String, Ty>, ty: &Ty| {
                if let Some(Value::String(n)) = obj.get("name") {
                    names.insert(n.clone(), ty.clone());
                }
            };
            match ty.as_str() {
                Some("record") | Some("error") => {
                    let fields = obj.get("fields").and_then(Value::as_array).ok_or("record without 'fields'")?;
                    let mut out = Vec::with_capacity(fields.len());
                    for f in fields {
                        let name = f.get("name").and_then(Value::as_str).ok_or("field without 'name'")?;
                        let fty = to_ty(f.get("type").ok_or("field without 'type'")?, names)?;
                        let max_len = match f.get("maxLength") {
                            None => None,
                            Some(v) => Some(
                                v.as_u64()
                                    .and_then(|n| usize::try_from(n).ok())
                                    .ok_or_else(|| format!("field '{name}': maxLength must be a positive integer"))?,
                            ),
                        };
                        out.push(FieldTy {
                            name: name.to_owned(),
                            optional: f.get("default").is_some(),
                            ty: fty,
                            max_len,
                        });
                    }
                    let rec = Ty::Record(out);
                    named(names, &rec);
                    Ok(rec)
                }
                Some("enum") => {
                    let symbols = obj.get("symbols").and_then(Value::as_array).ok_or("enum without 'symbols'")?;
                    let e = Ty::Enum(symbols.iter().filter_map(Value::as_str).map(str::to_owned).collect());
                    named(names, &e);
                    Ok(e)
                }
                Some("array") => {
                    Ok(Ty::Array(Box::new(to_ty(obj.get("items").ok_or("array without 'items'")?, names)?)))
                }
                Some("map") => Ok(Ty::Map(Box::new(to_ty(obj.get("values").ok_or("map without 'values'")?, names)?))),
                Some("fixed") => {
                    named(names, &Ty::String);
                    Ok(Ty::String)
                }
                _ => to_ty(ty, names),
            }
        }
        other => Err(format!("unexpected schema element {other}")),
    }
}

fn primitive(name: &str) -> Option<Ty> {
    Some(match name {
        "null" => Ty::Null,
        "boolean" => Ty::Boolean,
        "int" => Ty::Int,
        "long" => Ty::Long,
        "float" | "double" => Ty::Float,
        "string" | "bytes" => Ty::String,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PURCHASE: &str = r#"{"type":"record","name":"PurchaseComplete","fields":[
        {"name":"order_id","type":"string","maxLength":8},
        {"name":"amount","type":"double"},
        {"name":"currency","type":{"type":"enum","name":"Currency","symbols":["USD","EUR"]}},
        {"name":"items","type":["null","int"],"default":null},
        {"name":"skus","type":{"type":"array","items":"string"},"default":[]}
    ]}"#;

    fn check(props: Value) -> Vec<FieldError> {
        let catalog = EventCatalog::from_schemas([("transaction.purchase_complete", PURCHASE)]).expect("catalog");
        let mut errors = Vec::new();
        catalog.check_properties("transaction.purchase_complete", props.as_object().expect("object"), &mut errors);
        errors
    }

    #[test]
    fn accepts_conforming_properties_and_extra_keys() {
        assert!(
            check(json!({"order_id":"o1","amount":9.5,"currency":"EUR","items":2,"skus":["a"],"coupon":"X"}))
                .is_empty()
        );
        assert!(check(json!({"order_id":"o1","amount":10,"currency":"USD"})).is_empty());
    }

    #[test]
    fn names_every_bad_property() {
        let errors = check(json!({"amount":"12","currency":"GBP","items":1.5,"skus":[1]}));
        let got: Vec<(&str, ReasonCode)> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert_eq!(
            got,
            vec![
                ("event_properties.order_id", ReasonCode::MissingRequiredField),
                ("event_properties.amount", ReasonCode::WrongType),
                ("event_properties.currency", ReasonCode::InvalidValue),
                ("event_properties.items", ReasonCode::WrongType),
                ("event_properties.skus[0]", ReasonCode::WrongType),
            ]
        );
        assert_eq!(errors[1].message, "expected number, got string");
    }

    #[test]
    fn amounts_stay_in_the_range_the_stores_sum_and_strings_within_their_max_length() {
        let errors = check(json!({"order_id":"order-123456","amount":1e13,"currency":"EUR"}));
        let got: Vec<(&str, ReasonCode)> = errors.iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert_eq!(
            got,
            vec![
                ("event_properties.order_id", ReasonCode::ValueTooLong),
                ("event_properties.amount", ReasonCode::ValueOutOfRange),
            ]
        );
        assert!(check(json!({"order_id":"ö1234567","amount":-1e12,"currency":"EUR"})).is_empty(), "8 characters");
        assert_eq!(
            check(json!({"order_id":"o","amount":18446744073709551615u64,"currency":"EUR"}))[0].code,
            ReasonCode::ValueOutOfRange
        );
        assert!(
            EventCatalog::from_schemas([(
                "a.b",
                r#"{"type":"record","name":"X","fields":[{"name":"f","type":"string","maxLength":"x"}]}"#
            )])
            .is_err()
        );
    }

    #[test]
    fn the_quick_match_agrees_with_the_full_check() {
        let catalog = EventCatalog::from_schemas([("transaction.purchase_complete", PURCHASE)]).expect("catalog");
        let fields = &catalog.types["transaction.purchase_complete"];
        let ty = Ty::Record(fields.clone());
        let values = [
            json!({"order_id":"o1","amount":9.5,"currency":"EUR"}),
            json!({"order_id":"o1","amount":9.5,"currency":"EUR","items":3,"skus":["a","b"]}),
            json!({"order_id":"o1","amount":9.5,"currency":"EUR","items":null}),
            json!({"order_id":"o1","amount":9.5,"currency":"GBP"}),
            json!({"order_id":"o-too-long","amount":9.5,"currency":"EUR"}),
            json!({"order_id":"o1","amount":1e13,"currency":"EUR"}),
            json!({"order_id":"o1","amount":"9","currency":"EUR"}),
            json!({"order_id":"o1","amount":9.5,"currency":"EUR","items":1.5}),
            json!({"order_id":"o1","amount":9.5,"currency":"EUR","items":4294967296u64}),
            json!({"order_id":"o1","amount":9.5,"currency":"EUR","skus":[1]}),
            json!({"amount":9.5,"currency":"EUR"}),
            json!([1]),
        ];
        for v in &values {
            let mut errors = Vec::new();
            ty.check(&Path::Root("event_properties"), v, &mut errors);
            assert_eq!(ty.matches(v), errors.is_empty(), "{v}: {errors:?}");
        }
    }

    #[test]
    fn rejects_bad_schemas_and_type_names() {
        assert!(EventCatalog::from_schemas([("Bad-Type", PURCHASE)]).is_err());
        assert!(EventCatalog::from_schemas([("a.b", r#""string""#)]).is_err());
        assert!(
            EventCatalog::from_schemas([(
                "a.b",
                r#"{"type":"record","name":"X","fields":[{"name":"f","type":"nope"}]}"#
            )])
            .is_err()
        );
    }
}
