//! A strict Avro binary walker: checks that bytes hold exactly one complete datum
//! of a schema, without allocating.
//!
//! apache-avro's decoder turns an early end of input into `null` in several places
//! (lenient for container files), so a truncated record can decode "successfully".
//! The validation stage runs this walk first so truncation is always an error.

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, Name, ResolvedSchema, UuidSchema};
use std::collections::HashMap;

/// Named types of a schema, by fully qualified and by simple name.
#[derive(Debug, Clone)]
pub struct StrictWalker {
    root: Schema,
    names: HashMap<String, Schema>,
}

const MAX_DEPTH: usize = 64;
/// Items beyond what the remaining bytes could encode, allowed per block.
const MAX_EMPTY_ITEMS: u64 = 65_536;

impl StrictWalker {
    /// Prepares a walker for `schema` (cloned, so it can be cached per schema id).
    pub fn new(schema: &Schema) -> Result<Self, String> {
        let resolved = ResolvedSchema::new(schema).map_err(|e| e.to_string())?;
        let mut names = HashMap::new();
        for (name, s) in resolved.get_names() {
            names.insert(name.fullname(None), (*s).clone());
            names.insert(name.name().to_owned(), (*s).clone());
        }
        Ok(Self { root: schema.clone(), names })
    }

    /// Number of bytes of the one datum at the start of `bytes`; an error when
    /// the datum is incomplete or malformed.
    pub fn datum_len(&self, bytes: &[u8]) -> Result<usize, String> {
        let mut cur = Cursor { bytes, pos: 0 };
        self.walk(&self.root, &mut cur, 0)?;
        Ok(cur.pos)
    }

    fn lookup(&self, name: &Name) -> Result<&Schema, String> {
        self.names
            .get(&name.fullname(None))
            .or_else(|| self.names.get(name.name()))
            .ok_or_else(|| format!("unresolved reference {}", name.fullname(None)))
    }

    fn walk(&self, schema: &Schema, cur: &mut Cursor<'_>, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("nesting deeper than 64".into());
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => match cur.take(1)?[0] {
                0 | 1 => Ok(()),
                b => Err(format!("invalid boolean byte {b}")),
            },
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => cur.varint().map(|_| ()),
            Schema::Float => cur.take(4).map(|_| ()),
            Schema::Double => cur.take(8).map(|_| ()),
            Schema::String => {
                let len = cur.len()?;
                std::str::from_utf8(cur.take(len)?).map(|_| ()).map_err(|e| format!("string is not UTF-8: {e}"))
            }
            Schema::Bytes | Schema::BigDecimal => {
                let len = cur.len()?;
                cur.take(len).map(|_| ())
            }
            Schema::Uuid(UuidSchema::String) => self.walk(&Schema::String, cur, depth),
            Schema::Uuid(UuidSchema::Bytes) => self.walk(&Schema::Bytes, cur, depth),
            Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Fixed(f) | Schema::Duration(f) => cur.take(f.size).map(|_| ()),
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => self.walk(&Schema::Bytes, cur, depth),
                InnerDecimalSchema::Fixed(f) => cur.take(f.size).map(|_| ()),
            },
            Schema::Enum(e) => {
                let i = cur.varint()?;
                if i < 0 || i as usize >= e.symbols.len() {
                    return Err(format!("enum index {i} out of range"));
                }
                Ok(())
            }
            Schema::Union(u) => {
                let i = cur.varint()?;
                let variant = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| format!("union index {i} out of range"))?;
                self.walk(variant, cur, depth + 1)
            }
            Schema::Record(r) => {
                for field in &r.fields {
                    self.walk(&field.schema, cur, depth + 1)
                        .map_err(|e| if e.starts_with("field ") { e } else { format!("field {}: {e}", field.name) })?;
                }
                Ok(())
            }
            Schema::Array(a) => self.blocks(cur, depth, |w, cur| w.walk(&a.items, cur, depth + 1)),
            Schema::Map(m) => self.blocks(cur, depth, |w, cur| {
                w.walk(&Schema::String, cur, depth + 1)?;
                w.walk(&m.types, cur, depth + 1)
            }),
            Schema::Ref { name } => {
                let target = self.lookup(name)?;
                self.walk(target, cur, depth + 1)
            }
        }
    }

    fn blocks(
        &self,
        cur: &mut Cursor<'_>,
        _depth: usize,
        mut item: impl FnMut(&Self, &mut Cursor<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let count = cur.varint()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                cur.varint()?; // block size in bytes, followed by |count| items
            }
            // Items of zero-size types (null) consume no input: bound the count so a
            // hostile block header cannot spin here (or make the decoder allocate) forever.
            let remaining = (cur.bytes.len() - cur.pos) as u64;
            if count.unsigned_abs() > remaining.saturating_mul(8).saturating_add(MAX_EMPTY_ITEMS) {
                return Err(format!(
                    "block of {} items cannot fit in {remaining} remaining bytes",
                    count.unsigned_abs()
                ));
            }
            for _ in 0..count.unsigned_abs() {
                item(self, cur)?;
            }
        }
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!("truncated: needs {n} bytes at offset {}, {} left", self.pos, self.bytes.len() - self.pos)
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Zig-zag varint, at most 10 bytes.
    fn varint(&mut self) -> Result<i64, String> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn len(&mut self) -> Result<usize, String> {
        let n = self.varint()?;
        usize::try_from(n).map_err(|_| format!("negative length {n}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_complete_datums_and_rejects_truncation() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
                {"name":"s","type":"string"},
                {"name":"o","type":["null","long"]},
                {"name":"a","type":{"type":"array","items":"int"}},
                {"name":"m","type":{"type":"map","values":"double"}},
                {"name":"n","type":["null","R"]}]}"#,
        )
        .expect("schema");
        let w = StrictWalker::new(&schema).expect("walker");
        // s="ab", o=long 5, a=[1,2], m={"k":1.0}, n=null
        let mut bytes = vec![4, b'a', b'b', 2, 10, 4, 2, 4, 0, 2, 2, b'k'];
        bytes.extend_from_slice(&1.0f64.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(w.datum_len(&bytes), Ok(bytes.len()));
        for cut in 0..bytes.len() {
            assert!(w.datum_len(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(w.datum_len(&[4, 0xff, 0xfe]).is_err(), "non-UTF-8 string");
    }

    #[test]
    fn refuses_block_counts_the_input_cannot_hold() {
        let schema = Schema::parse_str(r#"{"type":"array","items":"null"}"#).expect("schema");
        let w = StrictWalker::new(&schema).expect("walker");
        assert_eq!(w.datum_len(&[20, 0]), Ok(2), "10 nulls");
        // count = 2^40 (zig-zag varint), then nothing.
        let huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        assert!(w.datum_len(&huge).expect_err("refused").contains("cannot fit"));
    }
}
