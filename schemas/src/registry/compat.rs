//! Compatibility levels and checks, as Confluent defines them, done by apache-avro.

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

/// A Confluent compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    /// No checks.
    None,
    /// A new schema can read data written with the latest version.
    Backward,
    /// ... with every version.
    BackwardTransitive,
    /// Data written with a new schema can be read by the latest version.
    Forward,
    /// ... by every version.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every version.
    FullTransitive,
}

impl Level {
    /// Parses a level name (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase())).ok()
    }

    /// The canonical upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether all versions are checked, not only the latest.
    pub fn transitive(self) -> bool {
        matches!(self, Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive)
    }
}

fn reads(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        // Partial means some writer values cannot be read (e.g. a removed enum
        // symbol): Confluent calls that incompatible, and so do we.
        Ok(Compatibility::Partial) => Err("only some values of the writer schema can be read".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Checks `new` against `existing` (oldest first) at `level`; the messages say
/// which version failed and why.
pub fn check(level: Level, new: &Schema, existing: &[(i32, Schema)]) -> Result<(), Vec<String>> {
    let against: &[(i32, Schema)] = match (level, existing.last()) {
        (Level::None, _) | (_, None) => return Ok(()),
        (l, Some(_)) if l.transitive() => existing,
        (_, Some(_)) => &existing[existing.len() - 1..],
    };
    let backward = matches!(level, Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive);
    let forward = matches!(level, Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive);
    let mut messages = Vec::new();
    for (version, old) in against {
        if backward && let Err(e) = reads(old, new) {
            messages.push(format!("new schema cannot read data written with version {version}: {e}"));
        }
        if forward && let Err(e) = reads(new, old) {
            messages.push(format!("version {version} cannot read data written with the new schema: {e}"));
        }
    }
    if messages.is_empty() { Ok(()) } else { Err(messages) }
}

/// Parses an Avro schema with every named type inlined (so compatibility compares
/// structure, not names of references).
pub fn parse(text: &str) -> Result<Schema, String> {
    let mut schema = Schema::parse_str(text).map_err(|e| e.to_string())?;
    schema.denormalize(&[]).map_err(|e| e.to_string())?;
    Ok(schema)
}

/// The identity of a schema text: compact JSON with object keys sorted, so
/// formatting differences do not create new schema ids.
pub fn identity(text: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    // serde_json's Map is a BTreeMap here (no preserve_order), so keys come out sorted.
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(fields: &str) -> Schema {
        parse(&format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#)).expect("schema")
    }

    #[test]
    fn backward_allows_added_default_and_rejects_added_required() {
        let v1 = s(r#"{"name":"a","type":"string"}"#);
        let with_default = s(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
        let required = s(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        assert!(check(Level::Backward, &with_default, &[(1, v1.clone())]).is_ok());
        let err = check(Level::Backward, &required, &[(1, v1.clone())]).expect_err("incompatible");
        assert!(err[0].contains("version 1"), "{err:?}");
        assert!(check(Level::None, &required, &[(1, v1)]).is_ok());
    }

    #[test]
    fn forward_and_full_and_transitive() {
        let v1 = s(r#"{"name":"a","type":"string"}"#);
        let v2 = s(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
        let v3 = s(r#"{"name":"b","type":"int","default":0}"#);
        // Dropping a field without default: old readers need it.
        assert!(check(Level::Forward, &v3, &[(1, v1.clone())]).is_err());
        assert!(check(Level::Full, &v2, &[(1, v1.clone())]).is_ok());
        // v3 reads v2 data fine (backward vs latest), but not v1? It can: b has a default.
        assert!(check(Level::Backward, &v3, &[(1, v1.clone()), (2, v2.clone())]).is_ok());
        assert!(check(Level::FullTransitive, &v3, &[(1, v1), (2, v2)]).is_err());
    }

    #[test]
    fn identity_ignores_formatting_and_key_order() {
        let a = identity(r#"{"type": "string"}"#).expect("json");
        let b = identity("{ \"type\":\"string\" }").expect("json");
        assert_eq!(a, b);
        assert_eq!(Level::parse("backward_transitive"), Some(Level::BackwardTransitive));
        assert_eq!(Level::parse("sideways"), None);
    }
}
