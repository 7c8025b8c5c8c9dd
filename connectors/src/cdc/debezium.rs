//! Debezium's change-event envelope for PostgreSQL, as its PostgreSQL
//! connector writes it with the JSON converter (`schemas.enable=false`):
//! key `{<primary key columns>}`, value `{before, after, source, op, ts_ms,
//! ts_us, ts_ns, transaction}`, a tombstone (null value) after each delete.
//!
//! Column values follow Debezium's default mappings (`time.precision.mode=adaptive`,
//! `binary.handling.mode=bytes`) except `numeric`, which is written as a
//! string (Debezium's `decimal.handling.mode=string`; its default `precise`
//! writes base64 of the unscaled integer, which JSON readers cannot use
//! without the schema). Unchanged TOASTed values are Debezium's
//! `__debezium_unavailable_value` placeholder. Differences are listed in docs/cdc.md.

use base64::Engine as _;
use serde_json::{Map, Value as Json, json};

use super::pgoutput::{Lsn, OldRow, Relation, Tuple, Value};

/// What Debezium writes for a TOASTed value the change did not carry.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// The connector version in `source.version`.
pub const VERSION: &str = concat!("lifecycle-", env!("CARGO_PKG_VERSION"));

/// Debezium's `op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Snapshot read.
    Read,
    /// Insert.
    Create,
    /// Update.
    Update,
    /// Delete.
    Delete,
    /// Truncate.
    Truncate,
}

impl Op {
    /// The letter Debezium writes.
    pub fn code(self) -> &'static str {
        match self {
            Self::Read => "r",
            Self::Create => "c",
            Self::Update => "u",
            Self::Delete => "d",
            Self::Truncate => "t",
        }
    }
}

/// Where a change comes from (`source` block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source<'a> {
    /// `topic.prefix` (Debezium's logical server name).
    pub name: &'a str,
    /// Database.
    pub db: &'a str,
    /// Commit time (ms since the Unix epoch); the read time for snapshots.
    pub ts_ms: i64,
    /// `"false"`, `"true"`, `"first"`, `"last"` or `"incremental"`.
    pub snapshot: &'a str,
    /// Transaction id.
    pub tx_id: Option<u32>,
    /// LSN of the change.
    pub lsn: Option<Lsn>,
    /// LSN of the last commit before this transaction's (Debezium's `sequence[0]`).
    pub last_commit_lsn: Option<Lsn>,
}

/// The transaction block (`provide.transaction.metadata`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxPosition {
    /// Transaction id.
    pub xid: u32,
    /// Commit LSN.
    pub commit_lsn: Lsn,
    /// Position of this event among the transaction's events (from 1).
    pub total_order: u64,
    /// Position among the transaction's events of the same table (from 1).
    pub data_collection_order: u64,
}

/// PostgreSQL type OIDs with a mapping other than "string".
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const BYTEA: u32 = 17;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const OID: u32 = 26;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const DATE: u32 = 1082;
    pub(super) const TIME: u32 = 1083;
    pub(super) const TIMESTAMP: u32 = 1114;
    pub(super) const TIMESTAMPTZ: u32 = 1184;
}

/// One column value as Debezium writes it. `text` is the type's text output
/// (the replication session runs with `DateStyle=ISO`, `TimeZone=UTC`).
pub fn column_value(type_oid: u32, type_modifier: i32, v: &Value) -> Json {
    let text = match v {
        Value::Null => return Json::Null,
        Value::UnchangedToast => {
            return if type_oid == oid::BYTEA {
                Json::String(base64::engine::general_purpose::STANDARD.encode(UNAVAILABLE))
            } else {
                Json::String(UNAVAILABLE.to_owned())
            };
        }
        Value::Binary(b) => return Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Text(t) => String::from_utf8_lossy(t),
    };
    let as_string = || Json::String(text.clone().into_owned());
    match type_oid {
        oid::BOOL => Json::Bool(text == "t"),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => text.parse::<i64>().map_or_else(|_| as_string(), Json::from),
        oid::FLOAT4 | oid::FLOAT8 => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Json::from(f),
            // NaN and infinities have no JSON number.
            _ => as_string(),
        },
        oid::BYTEA => match text.strip_prefix("\\x").and_then(|h| hex::decode(h).ok()) {
            Some(bytes) => Json::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            None => as_string(),
        },
        oid::DATE => chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.signed_duration_since(chrono::NaiveDate::default()).num_days().try_into().ok())
            .map_or_else(as_string, |d: i32| Json::from(d)),
        oid::TIME => chrono::NaiveTime::parse_from_str(&text, "%H:%M:%S%.f").map_or_else(
            |_| as_string(),
            |t| Json::from(t.signed_duration_since(chrono::NaiveTime::MIN).num_microseconds().unwrap_or(0)),
        ),
        oid::TIMESTAMP => chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f").map_or_else(
            |_| as_string(),
            |t| {
                let utc = t.and_utc();
                // Adaptive precision: up to 3 fractional digits is Timestamp (ms), else MicroTimestamp (µs).
                if (0..=3).contains(&type_modifier) {
                    Json::from(utc.timestamp_millis())
                } else {
                    Json::from(utc.timestamp_micros())
                }
            },
        ),
        oid::TIMESTAMPTZ => chrono::DateTime::parse_from_str(&format!("{text}00"), "%Y-%m-%d %H:%M:%S%.f%z")
            .or_else(|_| chrono::DateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f%:z"))
            .map_or_else(
                |_| as_string(),
                |t| Json::String(t.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            ),
        _ => as_string(),
    }
}

/// A row as Debezium's struct: column name -> value.
pub fn row(rel: &Relation, t: &Tuple) -> Json {
    let mut m = Map::with_capacity(rel.columns.len());
    for (c, v) in rel.columns.iter().zip(t) {
        m.insert(c.name.clone(), column_value(c.type_oid, c.type_modifier, v));
    }
    Json::Object(m)
}

/// The record key: the replica identity's columns (the primary key), or
/// `None` for a table without one.
pub fn key(rel: &Relation, t: &Tuple) -> Option<Json> {
    let mut m = Map::new();
    for (c, v) in rel.columns.iter().zip(t) {
        if c.key {
            m.insert(c.name.clone(), column_value(c.type_oid, c.type_modifier, v));
        }
    }
    (!m.is_empty()).then_some(Json::Object(m))
}

/// The key of an update or delete's old row.
pub fn old_key(rel: &Relation, old: &OldRow) -> Option<Json> {
    match old {
        OldRow::Key(t) | OldRow::Full(t) => key(rel, t),
    }
}

/// Whether the key columns of two rows differ (an update that moved the row to another key).
pub fn key_changed(rel: &Relation, old: &Tuple, new: &Tuple) -> bool {
    rel.columns.iter().zip(old.iter().zip(new)).any(|(c, (a, b))| c.key && a != b)
}

/// The envelope of one change. `now_us` is when the connector wrote it.
pub fn envelope(
    op: Op,
    rel: &Relation,
    before: Option<Json>,
    after: Option<Json>,
    src: &Source<'_>,
    tx: Option<TxPosition>,
    now_us: i64,
) -> Json {
    let sequence = src
        .lsn
        .map(|l| Json::String(json!([src.last_commit_lsn.map(|c| c.0.to_string()), l.0.to_string()]).to_string()));
    json!({
        "before": before,
        "after": after,
        "source": {
            "version": VERSION,
            "connector": "postgresql",
            "name": src.name,
            "ts_ms": src.ts_ms,
            "ts_us": src.ts_ms.saturating_mul(1000),
            "ts_ns": src.ts_ms.saturating_mul(1_000_000),
            "snapshot": src.snapshot,
            "db": src.db,
            "sequence": sequence,
            "schema": rel.namespace,
            "table": rel.name,
            "txId": src.tx_id,
            "lsn": src.lsn.map(|l| l.0),
            "xmin": null,
        },
        "transaction": tx.map(|t| json!({
            "id": format!("{}:{}", t.xid, t.commit_lsn.0),
            "total_order": t.total_order,
            "data_collection_order": t.data_collection_order,
        })),
        "op": op.code(),
        "ts_ms": now_us.div_euclid(1000),
        "ts_us": now_us,
        "ts_ns": now_us.saturating_mul(1000),
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::pgoutput::Column;
    use super::*;

    fn t(s: &str) -> Value {
        Value::Text(Bytes::from(s.to_owned()))
    }

    fn users() -> Relation {
        let col = |key, name: &str, type_oid, type_modifier| Column { key, name: name.into(), type_oid, type_modifier };
        Relation {
            oid: 16_384,
            namespace: "public".into(),
            name: "users".into(),
            replica_identity: b'd',
            columns: vec![col(true, "id", 23, -1), col(false, "email", 25, -1), col(false, "bio", 25, -1)],
        }
    }

    #[test]
    fn values_map_as_debezium_maps_them() {
        assert_eq!(column_value(16, -1, &t("t")), json!(true));
        assert_eq!(column_value(16, -1, &t("f")), json!(false));
        assert_eq!(column_value(23, -1, &t("-42")), json!(-42));
        assert_eq!(column_value(20, -1, &t("9007199254740993")), json!(9_007_199_254_740_993_i64));
        assert_eq!(column_value(701, -1, &t("1.5")), json!(1.5));
        assert_eq!(column_value(701, -1, &t("NaN")), json!("NaN"));
        assert_eq!(column_value(1700, -1, &t("12345.6789")), json!("12345.6789"));
        assert_eq!(column_value(17, -1, &t("\\x0102ff")), json!("AQL/"));
        assert_eq!(column_value(1082, -1, &t("1970-01-02")), json!(1));
        assert_eq!(column_value(1082, -1, &t("1969-12-31")), json!(-1));
        assert_eq!(column_value(1083, -1, &t("00:00:01.5")), json!(1_500_000));
        assert_eq!(column_value(1114, -1, &t("1970-01-01 00:00:01.000002")), json!(1_000_002));
        assert_eq!(column_value(1114, 3, &t("1970-01-01 00:00:01.5")), json!(1_500));
        assert_eq!(column_value(1184, -1, &t("2026-12-01 05:26:17.5+00")), json!("2026-12-01T05:26:17.500Z"));
        assert_eq!(column_value(1184, -1, &t("2026-12-01 07:26:17+02")), json!("2026-12-01T05:26:17Z"));
        assert_eq!(column_value(1114, -1, &t("infinity")), json!("infinity"));
        assert_eq!(
            column_value(2950, -1, &t("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(column_value(25, -1, &Value::Null), Json::Null);
        assert_eq!(column_value(25, -1, &Value::UnchangedToast), json!(UNAVAILABLE));
    }

    #[test]
    fn keys_are_the_identity_columns_and_key_changes_are_seen() {
        let rel = users();
        let row_a = vec![t("1"), t("a@x"), Value::UnchangedToast];
        assert_eq!(key(&rel, &row_a), Some(json!({"id": 1})));
        assert_eq!(row(&rel, &row_a), json!({"id": 1, "email": "a@x", "bio": UNAVAILABLE}));
        assert!(!key_changed(&rel, &row_a, &vec![t("1"), t("b@x"), Value::Null]));
        assert!(key_changed(&rel, &row_a, &vec![t("2"), t("a@x"), Value::Null]));
        let mut keyless = users();
        keyless.columns.iter_mut().for_each(|c| c.key = false);
        assert_eq!(key(&keyless, &row_a), None);
    }

    #[test]
    fn the_envelope_has_debeziums_fields() {
        let rel = users();
        let src = Source {
            name: "cdc.crm",
            db: "crm",
            ts_ms: 1_700_000_000_000,
            snapshot: "false",
            tx_id: Some(771),
            lsn: Some(Lsn(0x2000)),
            last_commit_lsn: Some(Lsn(0x1000)),
        };
        let tx = TxPosition { xid: 771, commit_lsn: Lsn(0x2100), total_order: 2, data_collection_order: 1 };
        let after = row(&rel, &vec![t("1"), t("a@x"), Value::Null]);
        let e = envelope(Op::Create, &rel, None, Some(after), &src, Some(tx), 1_700_000_000_123_456);
        assert_eq!(e["op"], "c");
        assert_eq!(e["before"], Json::Null);
        assert_eq!(e["after"]["email"], "a@x");
        assert_eq!(e["ts_ms"], 1_700_000_000_123_i64);
        assert_eq!(e["ts_us"], 1_700_000_000_123_456_i64);
        let s = &e["source"];
        assert_eq!(
            (s["connector"].as_str(), s["name"].as_str(), s["db"].as_str()),
            (Some("postgresql"), Some("cdc.crm"), Some("crm"))
        );
        assert_eq!((s["schema"].as_str(), s["table"].as_str()), (Some("public"), Some("users")));
        assert_eq!(
            (s["txId"].as_u64(), s["lsn"].as_u64(), s["snapshot"].as_str()),
            (Some(771), Some(0x2000), Some("false"))
        );
        assert_eq!(s["sequence"], json!("[\"4096\",\"8192\"]"));
        assert_eq!(e["transaction"], json!({"id": "771:8448", "total_order": 2, "data_collection_order": 1}));
        let read =
            envelope(Op::Read, &rel, None, None, &Source { snapshot: "true", tx_id: None, lsn: None, ..src }, None, 0);
        assert_eq!((read["op"].as_str(), read["transaction"].is_null()), (Some("r"), true));
    }
}
