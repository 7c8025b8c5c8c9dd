//! A decoder of PostgreSQL's `pgoutput` logical replication messages
//! (protocol versions 1 and 2: the messages of a transaction, and of one
//! streamed in progress), as the server documents them in "Logical
//! Replication Message Formats". Pure: bytes in, messages out; every
//! malformed input is an error naming the byte offset, never a panic.

use bytes::Bytes;

/// A WAL position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    /// PostgreSQL's notation: `16/B374D848`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or_else(|| format!("'{s}' is not an LSN (expected X/X)"))?;
        let part = |p: &str| u32::from_str_radix(p, 16).map_err(|_| format!("'{s}' is not an LSN (expected X/X)"));
        Ok(Self((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

/// Microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch).
pub type PgMicros = i64;

/// Milliseconds since the Unix epoch of a PostgreSQL timestamp.
pub fn pg_micros_to_unix_ms(t: PgMicros) -> i64 {
    // 946,684,800 s between 1970-01-01 and 2000-01-01.
    t.div_euclid(1000).saturating_add(946_684_800_000)
}

/// One column value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change; the server does not send it.
    UnchangedToast,
    /// The value in the type's text output format.
    Text(Bytes),
    /// The value in the type's binary format (only when asked for `binary`).
    Binary(Bytes),
}

/// A row: one value per column of its relation, in column order.
pub type Tuple = Vec<Value>;

/// The old row an update or delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldRow {
    /// The replica identity's columns only (the primary key by default);
    /// the others are `Null`.
    Key(Tuple),
    /// Every column (`REPLICA IDENTITY FULL`).
    Full(Tuple),
}

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the key).
    pub key: bool,
    /// Name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`; -1 when none).
    pub type_modifier: i32,
}

/// A table's description, sent before its first change in a session and
/// again after its definition changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID.
    pub oid: u32,
    /// Schema (empty for `pg_catalog`).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `REPLICA IDENTITY`: b'd' default (primary key), b'n' nothing, b'f' full, b'i' index.
    pub replica_identity: u8,
    /// Columns, in order.
    pub columns: Vec<Column>,
}

/// One pgoutput message. `xid` is set on the changes of a transaction
/// streamed while in progress (protocol 2), `None` otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A transaction starts.
    Begin {
        /// LSN of its commit record.
        final_lsn: Lsn,
        /// Commit time.
        commit_time: PgMicros,
        /// Transaction id.
        xid: u32,
    },
    /// The transaction begun last commits.
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just past it: where a consumer that has everything up to here may confirm.
        end_lsn: Lsn,
        /// Commit time.
        commit_time: PgMicros,
    },
    /// The transaction came from another node through replication.
    Origin {
        /// Commit LSN on the origin.
        lsn: Lsn,
        /// Origin name.
        name: String,
    },
    /// A table's description.
    Relation {
        /// Streamed transaction.
        xid: Option<u32>,
        /// The table.
        relation: Relation,
    },
    /// A type's name (for types that are not built in).
    Type {
        /// Streamed transaction.
        xid: Option<u32>,
        /// Type OID.
        oid: u32,
        /// Schema.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A row inserted.
    Insert {
        /// Streamed transaction.
        xid: Option<u32>,
        /// Table OID.
        relation: u32,
        /// The row.
        new: Tuple,
    },
    /// A row updated.
    Update {
        /// Streamed transaction.
        xid: Option<u32>,
        /// Table OID.
        relation: u32,
        /// The old row, when the key changed or the identity is FULL.
        old: Option<OldRow>,
        /// The new row.
        new: Tuple,
    },
    /// A row deleted.
    Delete {
        /// Streamed transaction.
        xid: Option<u32>,
        /// Table OID.
        relation: u32,
        /// The old row (key or full).
        old: OldRow,
    },
    /// Tables truncated.
    Truncate {
        /// Streamed transaction.
        xid: Option<u32>,
        /// `TRUNCATE ... CASCADE`.
        cascade: bool,
        /// `TRUNCATE ... RESTART IDENTITY`.
        restart_identity: bool,
        /// Table OIDs.
        relations: Vec<u32>,
    },
    /// `pg_logical_emit_message`.
    LogicalMessage {
        /// Streamed transaction.
        xid: Option<u32>,
        /// Part of a transaction (else emitted at once).
        transactional: bool,
        /// Its LSN.
        lsn: Lsn,
        /// Prefix.
        prefix: String,
        /// Content.
        content: Bytes,
    },
    /// A block of a transaction in progress starts (protocol 2).
    StreamStart {
        /// Transaction id.
        xid: u32,
        /// Its first block.
        first: bool,
    },
    /// The block ends.
    StreamStop,
    /// A streamed transaction commits.
    StreamCommit {
        /// Transaction id.
        xid: u32,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just past it.
        end_lsn: Lsn,
        /// Commit time.
        commit_time: PgMicros,
    },
    /// A streamed (sub)transaction aborts.
    StreamAbort {
        /// Top-level transaction id.
        xid: u32,
        /// The aborted subtransaction (equal to `xid` for the whole transaction).
        subxid: u32,
    },
}

/// Why bytes are not a pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message malformed at byte {offset}: {what}")]
pub struct DecodeError {
    /// Byte offset in the message.
    pub offset: usize,
    /// What was wrong.
    pub what: String,
}

struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err<T>(&self, what: impl Into<String>) -> Result<T, DecodeError> {
        Err(DecodeError { offset: self.pos, what: what.into() })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => self.err(format!("{n} more bytes expected, {} left", self.buf.len() - self.pos)),
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(Lsn(u64::from_be_bytes(a)))
    }

    /// A NUL-terminated string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(n) = rest.iter().position(|b| *b == 0) else { return self.err("unterminated string") };
        let s = match std::str::from_utf8(&rest[..n]) {
            Ok(s) => s.to_owned(),
            Err(_) => return self.err("string is not UTF-8"),
        };
        self.pos += n + 1;
        Ok(s)
    }

    /// `len` bytes as a shared slice of the message (no copy).
    fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(len)?;
        Ok(self.buf.slice(start..self.pos))
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.i16()?;
        let Ok(n) = usize::try_from(n) else { return self.err(format!("negative column count {n}")) };
        let mut row = Vec::with_capacity(n.min(1600));
        for _ in 0..n {
            let v = match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let len = self.i32()?;
                    let Ok(len) = usize::try_from(len) else { return self.err(format!("negative value length {len}")) };
                    let data = self.bytes(len)?;
                    if kind == b't' { Value::Text(data) } else { Value::Binary(data) }
                }
                k => return self.err(format!("unknown column kind {:?}", char::from(k))),
            };
            row.push(v);
        }
        Ok(row)
    }

    fn done(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            self.err(format!("{} trailing bytes", self.buf.len() - self.pos))
        }
    }
}

/// Decodes pgoutput messages in order: it knows whether a streamed block is
/// open, which decides whether changes carry a transaction id.
#[derive(Debug, Default)]
pub struct Decoder {
    streaming: bool,
}

impl Decoder {
    /// A decoder outside any streamed block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one message (the payload of one `XLogData`).
    pub fn decode(&mut self, buf: &Bytes) -> Result<Message, DecodeError> {
        let mut c = Cursor { buf, pos: 0 };
        let tag = c.u8()?;
        let xid = |c: &mut Cursor<'_>, streaming: bool| if streaming { c.u32().map(Some) } else { Ok(None) };
        let m = match tag {
            b'B' => Message::Begin { final_lsn: c.lsn()?, commit_time: c.i64()?, xid: c.u32()? },
            b'C' => {
                let _flags = c.u8()?;
                Message::Commit { commit_lsn: c.lsn()?, end_lsn: c.lsn()?, commit_time: c.i64()? }
            }
            b'O' => Message::Origin { lsn: c.lsn()?, name: c.string()? },
            b'R' => {
                let xid = xid(&mut c, self.streaming)?;
                let oid = c.u32()?;
                let namespace = c.string()?;
                let name = c.string()?;
                let replica_identity = c.u8()?;
                let n = c.i16()?;
                let Ok(n) = usize::try_from(n) else { return c.err(format!("negative column count {n}")) };
                let mut columns = Vec::with_capacity(n.min(1600));
                for _ in 0..n {
                    let flags = c.u8()?;
                    columns.push(Column {
                        key: flags & 1 == 1,
                        name: c.string()?,
                        type_oid: c.u32()?,
                        type_modifier: c.i32()?,
                    });
                }
                Message::Relation { xid, relation: Relation { oid, namespace, name, replica_identity, columns } }
            }
            b'Y' => Message::Type {
                xid: xid(&mut c, self.streaming)?,
                oid: c.u32()?,
                namespace: c.string()?,
                name: c.string()?,
            },
            b'I' => {
                let xid = xid(&mut c, self.streaming)?;
                let relation = c.u32()?;
                if c.u8()? != b'N' {
                    return c.err("insert without a new tuple ('N')");
                }
                Message::Insert { xid, relation, new: c.tuple()? }
            }
            b'U' => {
                let xid = xid(&mut c, self.streaming)?;
                let relation = c.u32()?;
                let (old, marker) = match c.u8()? {
                    b'K' => (Some(OldRow::Key(c.tuple()?)), c.u8()?),
                    b'O' => (Some(OldRow::Full(c.tuple()?)), c.u8()?),
                    m => (None, m),
                };
                if marker != b'N' {
                    return c.err("update without a new tuple ('N')");
                }
                Message::Update { xid, relation, old, new: c.tuple()? }
            }
            b'D' => {
                let xid = xid(&mut c, self.streaming)?;
                let relation = c.u32()?;
                let old = match c.u8()? {
                    b'K' => OldRow::Key(c.tuple()?),
                    b'O' => OldRow::Full(c.tuple()?),
                    _ => return c.err("delete without an old tuple ('K' or 'O')"),
                };
                Message::Delete { xid, relation, old }
            }
            b'T' => {
                let xid = xid(&mut c, self.streaming)?;
                let n = c.i32()?;
                let Ok(n) = usize::try_from(n) else { return c.err(format!("negative relation count {n}")) };
                let options = c.u8()?;
                let mut relations = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    relations.push(c.u32()?);
                }
                Message::Truncate { xid, cascade: options & 1 != 0, restart_identity: options & 2 != 0, relations }
            }
            b'M' => {
                let xid = xid(&mut c, self.streaming)?;
                let transactional = c.u8()? & 1 == 1;
                let lsn = c.lsn()?;
                let prefix = c.string()?;
                let len = c.i32()?;
                let Ok(len) = usize::try_from(len) else { return c.err(format!("negative content length {len}")) };
                Message::LogicalMessage { xid, transactional, lsn, prefix, content: c.bytes(len)? }
            }
            b'S' => {
                let m = Message::StreamStart { xid: c.u32()?, first: c.u8()? == 1 };
                self.streaming = true;
                m
            }
            b'E' => {
                self.streaming = false;
                Message::StreamStop
            }
            b'c' => {
                let xid = c.u32()?;
                let _flags = c.u8()?;
                Message::StreamCommit { xid, commit_lsn: c.lsn()?, end_lsn: c.lsn()?, commit_time: c.i64()? }
            }
            b'A' => {
                let m = Message::StreamAbort { xid: c.u32()?, subxid: c.u32()? };
                // Protocol 4 adds the abort LSN and time (parallel apply); not needed here.
                if c.buf.len() - c.pos == 16 {
                    c.take(16)?;
                }
                m
            }
            t => return c.err(format!("unknown message type {:?}", char::from(t))),
        };
        c.done()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages the way the server writes them.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> Self {
            let n = i32::try_from(v.len()).unwrap_or(i32::MAX);
            let mut w = self.u8(b't').i32(n);
            w.0.extend_from_slice(v.as_bytes());
            w
        }
        fn done(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn decode(b: Bytes) -> Result<Message, DecodeError> {
        Decoder::new().decode(&b)
    }

    #[test]
    fn lsns_read_and_print_as_postgresql_writes_them() {
        let l: Lsn = "16/B374D848".parse().unwrap_or_default();
        assert_eq!(l, Lsn(0x16_B374_D848));
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn postgres_time_becomes_unix_milliseconds() {
        assert_eq!(pg_micros_to_unix_ms(0), 946_684_800_000);
        assert_eq!(pg_micros_to_unix_ms(1_500), 946_684_800_001);
        assert_eq!(pg_micros_to_unix_ms(-1_000_000), 946_684_799_000);
    }

    #[test]
    fn a_transaction_with_a_relation_and_its_changes_decodes() {
        let begin = W::default().u8(b'B').i64(0x100).i64(5_000_000).i32(742).done();
        assert_eq!(decode(begin), Ok(Message::Begin { final_lsn: Lsn(0x100), commit_time: 5_000_000, xid: 742 }));

        let rel = W::default()
            .u8(b'R')
            .i32(16_384)
            .s("public")
            .s("users")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .s("id")
            .i32(23)
            .i32(-1)
            .u8(0)
            .s("email")
            .i32(25)
            .i32(-1)
            .done();
        let Ok(Message::Relation { xid: None, relation }) = decode(rel) else { panic!("relation") };
        assert_eq!((relation.oid, relation.namespace.as_str(), relation.name.as_str()), (16_384, "public", "users"));
        assert_eq!(relation.replica_identity, b'd');
        assert!(relation.columns[0].key && !relation.columns[1].key);
        assert_eq!((relation.columns[1].name.as_str(), relation.columns[1].type_oid), ("email", 25));

        let insert = W::default().u8(b'I').i32(16_384).u8(b'N').i16(2).text("1").u8(b'n').done();
        assert_eq!(
            decode(insert),
            Ok(Message::Insert { xid: None, relation: 16_384, new: vec![Value::Text(Bytes::from("1")), Value::Null] })
        );

        // An update that changed the key carries the old key; the TOASTed column is unchanged.
        let update = W::default()
            .u8(b'U')
            .i32(16_384)
            .u8(b'K')
            .i16(2)
            .text("1")
            .u8(b'n')
            .u8(b'N')
            .i16(2)
            .text("2")
            .u8(b'u')
            .done();
        assert_eq!(
            decode(update),
            Ok(Message::Update {
                xid: None,
                relation: 16_384,
                old: Some(OldRow::Key(vec![Value::Text(Bytes::from("1")), Value::Null])),
                new: vec![Value::Text(Bytes::from("2")), Value::UnchangedToast],
            })
        );
        let plain_update = W::default().u8(b'U').i32(16_384).u8(b'N').i16(1).text("3").done();
        assert!(matches!(decode(plain_update), Ok(Message::Update { old: None, .. })));

        let delete = W::default().u8(b'D').i32(16_384).u8(b'O').i16(2).text("2").text("a@b").done();
        assert!(matches!(decode(delete), Ok(Message::Delete { old: OldRow::Full(_), .. })));

        let truncate = W::default().u8(b'T').i32(2).u8(3).i32(1).i32(2).done();
        assert_eq!(
            decode(truncate),
            Ok(Message::Truncate { xid: None, cascade: true, restart_identity: true, relations: vec![1, 2] })
        );

        let commit = W::default().u8(b'C').u8(0).i64(0x100).i64(0x130).i64(5_000_000).done();
        assert_eq!(
            decode(commit),
            Ok(Message::Commit { commit_lsn: Lsn(0x100), end_lsn: Lsn(0x130), commit_time: 5_000_000 })
        );
    }

    #[test]
    fn changes_inside_a_streamed_block_carry_their_transaction() {
        let mut d = Decoder::new();
        let start = W::default().u8(b'S').i32(900).u8(1).done();
        assert_eq!(d.decode(&start), Ok(Message::StreamStart { xid: 900, first: true }));
        let insert = W::default().u8(b'I').i32(900).i32(16_384).u8(b'N').i16(1).text("x").done();
        assert!(matches!(d.decode(&insert), Ok(Message::Insert { xid: Some(900), relation: 16_384, .. })));
        assert_eq!(d.decode(&W::default().u8(b'E').done()), Ok(Message::StreamStop));
        // Outside the block the same bytes mean another relation and do not parse.
        assert!(d.decode(&insert).is_err());
        let commit = W::default().u8(b'c').i32(900).u8(0).i64(1).i64(2).i64(3).done();
        assert!(matches!(d.decode(&commit), Ok(Message::StreamCommit { xid: 900, .. })));
        let abort4 = W::default().u8(b'A').i32(900).i32(901).i64(7).i64(8).done();
        assert_eq!(d.decode(&abort4), Ok(Message::StreamAbort { xid: 900, subxid: 901 }));
    }

    #[test]
    fn logical_messages_and_origins_decode() {
        let m = W::default().u8(b'M').u8(1).i64(0x10).s("lifecycle").i32(2).u8(b'h').u8(b'i').done();
        assert_eq!(
            decode(m),
            Ok(Message::LogicalMessage {
                xid: None,
                transactional: true,
                lsn: Lsn(0x10),
                prefix: "lifecycle".into(),
                content: Bytes::from("hi"),
            })
        );
        assert_eq!(
            decode(W::default().u8(b'O').i64(9).s("node-a").done()),
            Ok(Message::Origin { lsn: Lsn(9), name: "node-a".into() })
        );
    }

    #[test]
    fn malformed_messages_are_errors_with_their_offset_never_panics() {
        let cases: Vec<(Bytes, &str)> = vec![
            (Bytes::new(), "more bytes"),
            (W::default().u8(b'Z').done(), "unknown message type"),
            (W::default().u8(b'B').i64(1).done(), "more bytes"),
            (W::default().u8(b'R').i32(1).s("public").done(), "unterminated"),
            (W::default().u8(b'I').i32(1).u8(b'X').done(), "new tuple"),
            (W::default().u8(b'I').i32(1).u8(b'N').i16(-1).done(), "negative column count"),
            (W::default().u8(b'I').i32(1).u8(b'N').i16(1).u8(b't').i32(100).done(), "more bytes"),
            (W::default().u8(b'I').i32(1).u8(b'N').i16(1).u8(b'q').done(), "unknown column kind"),
            (W::default().u8(b'D').i32(1).u8(b'N').done(), "old tuple"),
            (W::default().u8(b'C').u8(0).i64(1).i64(2).i64(3).u8(9).done(), "trailing"),
            (W::default().u8(b'O').i64(1).u8(0xFF).u8(0).done(), "UTF-8"),
        ];
        for (bytes, want) in cases {
            let e = decode(bytes.clone()).expect_err("malformed");
            assert!(e.to_string().contains(want), "{bytes:?}: {e}");
        }
        // Every prefix of a valid message is an error, not a panic.
        let full = W::default().u8(b'U').i32(1).u8(b'K').i16(1).text("1").u8(b'N').i16(1).text("2").done();
        for n in 0..full.len() {
            assert!(decode(full.slice(..n)).is_err(), "prefix {n}");
        }
    }
}
