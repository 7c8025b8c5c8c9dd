//! A PostgreSQL replication-protocol client: the subset a logical CDC
//! connector needs, over the frontend/backend protocol 3.0. Startup with
//! `replication=database`, password or SCRAM-SHA-256 authentication,
//! replication commands (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT ...
//! (SNAPSHOT 'export')`, `START_REPLICATION`), then the copy-both stream of
//! `XLogData` and keepalives, answered with standby status updates whose
//! flushed LSN the caller decides. Plain TCP (TLS comes with the privacy work).
//!
//! Why not a crate (docs/cdc-research.md): `pgwire-replication` cannot create
//! a slot that exports its snapshot and pulls aws-lc through rustls's default
//! features; `pg_walstream` needs aws-lc (license not allowed here) or the
//! system's libpq at build time, and its decoded events lack the column types
//! a Debezium schema needs; tokio-postgres and sqlx have no replication mode.

use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::pgoutput::Lsn;

/// A replication connection or stream failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplError {
    /// The server could not be reached or the connection broke.
    #[error("PostgreSQL replication connection: {0}")]
    Io(String),
    /// The server answered with an error.
    #[error("PostgreSQL: {severity} {code}: {message}")]
    Server {
        /// ERROR, FATAL, ...
        severity: String,
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
    },
    /// The server said something this client does not understand.
    #[error("PostgreSQL replication protocol: {0}")]
    Protocol(String),
    /// Configuration (URL, authentication method) this client cannot use.
    #[error("PostgreSQL replication configuration: {0}")]
    Config(String),
}

impl ReplError {
    /// SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Worth retrying after a pause (the server is down or restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Io(_) => true,
            // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
            // and "replication slot is active for PID" (another connection still holds it).
            Self::Server { code, .. } => matches!(code.as_str(), "57P01" | "57P02" | "57P03" | "53300" | "55006"),
            _ => false,
        }
    }
}

fn io(e: std::io::Error) -> ReplError {
    ReplError::Io(e.to_string())
}

/// Where and as whom to connect, from a `postgres://user:password@host:port/db` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Password (trust authentication needs none).
    pub password: Option<String>,
    /// Database.
    pub database: String,
}

impl std::fmt::Debug for ConnectInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .finish()
    }
}

impl ConnectInfo {
    /// Parses a `postgres://` URL (`sslmode` other than `disable`/`prefer`/`allow` is refused).
    pub fn from_url(s: &str) -> Result<Self, ReplError> {
        let u = url::Url::parse(s).map_err(|e| ReplError::Config(format!("not a URL: {e}")))?;
        if !matches!(u.scheme(), "postgres" | "postgresql") {
            return Err(ReplError::Config(format!("scheme '{}' is not postgres://", u.scheme())));
        }
        for (k, v) in u.query_pairs() {
            if k == "sslmode" && !matches!(v.as_ref(), "disable" | "prefer" | "allow") {
                return Err(ReplError::Config(format!(
                    "sslmode={v}: the CDC connector does not speak TLS yet; use a local or tunnelled connection"
                )));
            }
        }
        let dec = |p: &str| percent_decode(p);
        let user = if u.username().is_empty() { "postgres".to_owned() } else { dec(u.username()) };
        let database = match u.path().trim_start_matches('/') {
            "" => user.clone(),
            d => dec(d),
        };
        Ok(Self {
            host: u.host_str().unwrap_or("127.0.0.1").to_owned(),
            port: u.port().unwrap_or(5432),
            user,
            password: u.password().map(dec),
            database,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One backend message: its type byte and body.
struct Frame {
    tag: u8,
    body: Bytes,
}

/// Largest message accepted (a row of a snapshot, a large transaction's change).
const MAX_FRAME: usize = 1 << 30;

/// A connection in replication mode, between commands.
pub struct ReplicationConnection {
    stream: BufReader<TcpStream>,
    /// Server parameters (server_version, ...).
    pub server_version: String,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection").field("server_version", &self.server_version).finish_non_exhaustive()
    }
}

/// What `CREATE_REPLICATION_SLOT` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotCreated {
    /// Slot name.
    pub slot: String,
    /// The first LSN the slot will stream: changes committed after the snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot (usable with `SET TRANSACTION SNAPSHOT` until the
    /// next command on this connection).
    pub snapshot: Option<String>,
}

/// A message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// WAL data: one pgoutput message.
    XLogData {
        /// Where it starts.
        start: Lsn,
        /// The server's WAL end when sent.
        wal_end: Lsn,
        /// The pgoutput message.
        data: Bytes,
    },
    /// The server is alive; `reply` asks for a status update now.
    Keepalive {
        /// The server's WAL end.
        wal_end: Lsn,
        /// Answer at once.
        reply: bool,
    },
}

impl ReplicationConnection {
    /// Connects in `replication=database` mode and authenticates.
    pub async fn connect(info: &ConnectInfo, timeout: Duration) -> Result<Self, ReplError> {
        let addr = format!("{}:{}", info.host, info.port);
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| ReplError::Io(format!("{addr}: connect timed out")))?
            .map_err(|e| ReplError::Io(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut c = Self { stream: BufReader::with_capacity(256 << 10, tcp), server_version: String::new() };
        let mut params = BytesMut::new();
        params.put_i32(196_608);
        for (k, v) in [
            ("user", info.user.as_str()),
            ("database", info.database.as_str()),
            ("replication", "database"),
            ("application_name", "lifecycle-cdc"),
            ("client_encoding", "UTF8"),
            // pgoutput writes values with the session's output settings: make
            // them the same on every server.
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
        ] {
            params.put_slice(k.as_bytes());
            params.put_u8(0);
            params.put_slice(v.as_bytes());
            params.put_u8(0);
        }
        params.put_u8(0);
        c.send(None, &params).await?;
        tokio::time::timeout(timeout, c.authenticate(info))
            .await
            .map_err(|_| ReplError::Io(format!("{addr}: authentication timed out")))??;
        Ok(c)
    }

    async fn send(&mut self, tag: Option<u8>, body: &[u8]) -> Result<(), ReplError> {
        let mut m = BytesMut::with_capacity(body.len() + 5);
        if let Some(t) = tag {
            m.put_u8(t);
        }
        let len = i32::try_from(body.len() + 4).map_err(|_| ReplError::Protocol("message too large".into()))?;
        m.put_i32(len);
        m.put_slice(body);
        self.stream.get_mut().write_all(&m).await.map_err(io)
    }

    async fn read(&mut self) -> Result<Frame, ReplError> {
        loop {
            let tag = self.stream.read_u8().await.map_err(io)?;
            let len = self.stream.read_i32().await.map_err(io)?;
            let n = usize::try_from(len)
                .ok()
                .and_then(|l| l.checked_sub(4))
                .filter(|n| *n <= MAX_FRAME)
                .ok_or_else(|| ReplError::Protocol(format!("message length {len}")))?;
            let mut body = vec![0; n];
            self.stream.read_exact(&mut body).await.map_err(io)?;
            let body = Bytes::from(body);
            match tag {
                b'E' => return Err(server_error(&body)),
                // Notices and parameter changes mid-stream are not answers.
                b'N' => {}
                b'S' => {
                    let mut parts = body.split(|b| *b == 0);
                    if parts.next() == Some(b"server_version") {
                        self.server_version = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    }
                }
                _ => return Ok(Frame { tag, body }),
            }
        }
    }

    async fn authenticate(&mut self, info: &ConnectInfo) -> Result<(), ReplError> {
        let password = || {
            info.password
                .clone()
                .ok_or_else(|| ReplError::Config("the server asks for a password and the URL has none".into()))
        };
        let mut scram: Option<Scram> = None;
        loop {
            let f = self.read().await?;
            match f.tag {
                b'R' => {
                    let mut b = f.body.clone();
                    if b.remaining() < 4 {
                        return Err(ReplError::Protocol("short authentication request".into()));
                    }
                    match b.get_i32() {
                        0 => {}
                        3 => {
                            let mut p = password()?.into_bytes();
                            p.push(0);
                            self.send(Some(b'p'), &p).await?;
                        }
                        5 => {
                            return Err(ReplError::Config(
                                "the server asks for md5 authentication; use scram-sha-256 (PostgreSQL's default)"
                                    .into(),
                            ));
                        }
                        10 => {
                            let mechanisms = String::from_utf8_lossy(&b).into_owned();
                            if !mechanisms.split('\0').any(|m| m == "SCRAM-SHA-256") {
                                return Err(ReplError::Config(format!(
                                    "no supported SASL mechanism in {mechanisms:?}"
                                )));
                            }
                            let s = Scram::new(&password()?);
                            let first = s.client_first();
                            let mut m = BytesMut::new();
                            m.put_slice(b"SCRAM-SHA-256\0");
                            m.put_i32(i32::try_from(first.len()).unwrap_or(i32::MAX));
                            m.put_slice(first.as_bytes());
                            self.send(Some(b'p'), &m).await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram
                                .as_mut()
                                .ok_or_else(|| ReplError::Protocol("SASL continue before start".into()))?;
                            let fin = s.client_final(&String::from_utf8_lossy(&b))?;
                            self.send(Some(b'p'), fin.as_bytes()).await?;
                        }
                        12 => {
                            let s =
                                scram.as_ref().ok_or_else(|| ReplError::Protocol("SASL final before start".into()))?;
                            s.verify_server(&String::from_utf8_lossy(&b))?;
                        }
                        code => {
                            return Err(ReplError::Config(format!("authentication method {code} is not supported")));
                        }
                    }
                }
                b'K' => {}
                b'Z' => return Ok(()),
                t => return Err(ReplError::Protocol(format!("unexpected message {:?} during startup", char::from(t)))),
            }
        }
    }

    /// Runs one command in the simple query protocol; rows as text (`None` for NULL).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, ReplError> {
        let mut q = sql.as_bytes().to_vec();
        q.push(0);
        self.send(Some(b'Q'), &q).await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let f = match self.read().await {
                Ok(f) => f,
                // The error comes before ReadyForQuery: keep reading to stay in sync.
                Err(e @ ReplError::Server { .. }) => {
                    failed = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match f.tag {
                b'D' => rows.push(data_row(&f.body)?),
                b'T' | b'C' | b'I' => {}
                b'Z' => return failed.map_or(Ok(rows), Err),
                t => return Err(ReplError::Protocol(format!("unexpected message {:?} after a query", char::from(t)))),
            }
        }
    }

    /// `IDENTIFY_SYSTEM`: the server's current WAL flush position.
    pub async fn identify_system(&mut self) -> Result<Lsn, ReplError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let pos = rows
            .first()
            .and_then(|r| r.get(2).cloned().flatten())
            .ok_or_else(|| ReplError::Protocol("IDENTIFY_SYSTEM returned no xlogpos".into()))?;
        pos.parse().map_err(ReplError::Protocol)
    }

    /// Creates a logical slot with `pgoutput`; with `export`, the snapshot it
    /// starts from stays usable by other sessions until this connection's
    /// next command.
    pub async fn create_slot(&mut self, slot: &str, export: bool) -> Result<SlotCreated, ReplError> {
        let snapshot = if export { "export" } else { "nothing" };
        let sql = format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT '{snapshot}')", quote_ident(slot));
        let rows = self.simple_query(&sql).await?;
        let row = rows.first().ok_or_else(|| ReplError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let lsn = row.get(1).cloned().flatten().ok_or_else(|| ReplError::Protocol("no consistent_point".into()))?;
        Ok(SlotCreated {
            slot: slot.to_owned(),
            consistent_point: lsn.parse().map_err(ReplError::Protocol)?,
            snapshot: row.get(2).cloned().flatten(),
        })
    }

    /// Starts streaming `slot` from `start` (the slot's confirmed position
    /// when earlier) with pgoutput `proto_version` and `publication`.
    pub async fn start(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
        proto_version: u32,
    ) -> Result<ReplicationStream, ReplError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '{proto_version}', publication_names '{}', messages 'true')",
            quote_ident(slot),
            publication.replace('\'', "''").replace('"', "\"\"")
        );
        let mut q = sql.into_bytes();
        q.push(0);
        self.send(Some(b'Q'), &q).await?;
        let f = self.read().await?;
        if f.tag != b'W' {
            return Err(ReplError::Protocol(format!("START_REPLICATION answered {:?}", char::from(f.tag))));
        }
        Ok(ReplicationStream { conn: self })
    }
}

/// The copy-both stream of a started slot.
#[derive(Debug)]
pub struct ReplicationStream {
    conn: ReplicationConnection,
}

impl ReplicationStream {
    /// The next WAL message or keepalive.
    pub async fn next(&mut self) -> Result<StreamMessage, ReplError> {
        let f = self.conn.read().await?;
        match f.tag {
            b'd' => {
                let mut b = f.body;
                if b.is_empty() {
                    return Err(ReplError::Protocol("empty CopyData".into()));
                }
                match b.get_u8() {
                    b'w' if b.remaining() >= 24 => {
                        let start = Lsn(b.get_u64());
                        let wal_end = Lsn(b.get_u64());
                        let _time = b.get_i64();
                        Ok(StreamMessage::XLogData { start, wal_end, data: b })
                    }
                    b'k' if b.remaining() >= 17 => {
                        let wal_end = Lsn(b.get_u64());
                        let _time = b.get_i64();
                        Ok(StreamMessage::Keepalive { wal_end, reply: b.get_u8() == 1 })
                    }
                    t => Err(ReplError::Protocol(format!("CopyData of kind {:?}", char::from(t)))),
                }
            }
            b'c' => Err(ReplError::Io("the server ended the replication stream".into())),
            t => Err(ReplError::Protocol(format!("unexpected message {:?} in the stream", char::from(t)))),
        }
    }

    /// Standby status update: everything up to `flushed` is durable downstream
    /// (the server may recycle WAL before it; a restart resumes there).
    pub async fn send_status(&mut self, received: Lsn, flushed: Lsn, reply: bool) -> Result<(), ReplError> {
        let now_pg = chrono::Utc::now().timestamp_micros() - 946_684_800_000_000;
        let mut m = BytesMut::with_capacity(34);
        m.put_u8(b'r');
        m.put_u64(received.0);
        m.put_u64(flushed.0);
        m.put_u64(flushed.0);
        m.put_i64(now_pg);
        m.put_u8(u8::from(reply));
        self.conn.send(Some(b'd'), &m).await
    }
}

fn data_row(body: &Bytes) -> Result<Vec<Option<String>>, ReplError> {
    let mut b = body.clone();
    let short = || ReplError::Protocol("short DataRow".into());
    if b.remaining() < 2 {
        return Err(short());
    }
    let n = b.get_i16();
    let mut row = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        if b.remaining() < 4 {
            return Err(short());
        }
        let len = b.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| short())?;
        if b.remaining() < len {
            return Err(short());
        }
        row.push(Some(String::from_utf8_lossy(&b.split_to(len)).into_owned()));
    }
    Ok(row)
}

fn server_error(body: &[u8]) -> ReplError {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let v = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'V' => severity = v,
            b'S' if severity.is_empty() => severity = v,
            b'C' => code = v,
            b'M' => message = v,
            _ => {}
        }
    }
    ReplError::Server { severity, code, message }
}

/// An identifier quoted for SQL and replication commands.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL uses it: no channel binding,
/// the user name taken from the startup message.
struct Scram {
    password: String,
    nonce: String,
    client_first_bare: String,
    /// Salted password and the auth message, once the server has answered.
    state: Option<(Vec<u8>, String)>,
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut m = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

impl Scram {
    fn new(password: &str) -> Self {
        let nonce: [u8; 18] = rand::random();
        Self::with_nonce(password, &base64::engine::general_purpose::STANDARD.encode(nonce))
    }

    fn with_nonce(password: &str, nonce: &str) -> Self {
        Self {
            password: password.to_owned(),
            nonce: nonce.to_owned(),
            client_first_bare: format!("n=,r={nonce}"),
            state: None,
        }
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    fn client_final(&mut self, server_first: &str) -> Result<String, ReplError> {
        let bad = |w: &str| ReplError::Protocol(format!("SCRAM server-first message: {w}"));
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v.to_owned()),
                Some(("s=", v)) => salt = Some(v.to_owned()),
                Some(("i=", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let nonce = nonce.ok_or_else(|| bad("no nonce"))?;
        if !nonce.starts_with(&self.nonce) {
            return Err(bad("the server's nonce does not extend ours"));
        }
        let salt = base64::engine::general_purpose::STANDARD
            .decode(salt.ok_or_else(|| bad("no salt"))?)
            .map_err(|_| bad("salt"))?;
        let iterations = iterations.filter(|i| *i > 0).ok_or_else(|| bad("no iteration count"))?;
        // Hi(): PBKDF2 with HMAC-SHA-256, one block.
        let mut u = hmac(self.password.as_bytes(), &[salt.as_slice(), &[0, 0, 0, 1]].concat());
        let mut salted = u.clone();
        for _ in 1..iterations {
            u = hmac(self.password.as_bytes(), &u);
            for (s, x) in salted.iter_mut().zip(&u) {
                *s ^= x;
            }
        }
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        self.state = Some((salted, auth));
        Ok(format!("{without_proof},p={}", base64::engine::general_purpose::STANDARD.encode(proof)))
    }

    fn verify_server(&self, server_final: &str) -> Result<(), ReplError> {
        let (salted, auth) = self.state.as_ref().ok_or_else(|| ReplError::Protocol("SCRAM final too early".into()))?;
        let server_key = hmac(salted, b"Server Key");
        let expected = base64::engine::general_purpose::STANDARD.encode(hmac(&server_key, auth.as_bytes()));
        match server_final.strip_prefix("v=") {
            Some(v) if v == expected => Ok(()),
            _ => {
                Err(ReplError::Protocol("the server's SCRAM signature does not match: not the server we asked".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_user_password_and_database() {
        let c = ConnectInfo::from_url("postgres://app:p%40ss@db.internal:6543/crm").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.host.as_str(), c.port, c.user.as_str()), ("db.internal", 6543, "app"));
        assert_eq!((c.password.as_deref(), c.database.as_str()), (Some("p@ss"), "crm"));
        assert!(!format!("{c:?}").contains("p@ss"));
        let d = ConnectInfo::from_url("postgres://lifecycle@127.0.0.1/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.port, d.database.as_str(), d.password), (5432, "lifecycle", None));
        assert!(ConnectInfo::from_url("mysql://x@y/z").is_err());
        let tls = ConnectInfo::from_url("postgres://x@y/z?sslmode=require").expect_err("TLS refused").to_string();
        assert!(tls.contains("sslmode=require"), "{tls}");
    }

    #[test]
    fn scram_matches_rfc_7677s_example() {
        // RFC 7677 section 3 (user "user", password "pencil"); PostgreSQL sends
        // an empty user name in the client-first message, so the messages
        // differ in n= and the proof is computed over that.
        let mut s = Scram::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(s.client_first(), "n,,n=,r=rOprNGfwEbeRWgbNEkqO");
        s.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = s.client_final(server_first).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert!(s.verify_server("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").is_ok());
        assert!(s.verify_server("v=AAAA").is_err());
        // A server nonce that does not extend ours is refused.
        let mut t = Scram::with_nonce("pencil", "abc");
        assert!(t.client_final("r=zzz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096").is_err());
    }

    #[test]
    fn server_errors_keep_severity_code_and_message() {
        let body = b"SERROR\0VERROR\0C42704\0Mreplication slot \"x\" does not exist\0\0";
        let e = server_error(body);
        assert_eq!(e.code(), Some("42704"));
        assert_eq!(e.to_string(), "PostgreSQL: ERROR 42704: replication slot \"x\" does not exist");
        assert!(!e.is_transient());
        assert!(server_error(b"VFATAL\0C57P01\0Mterminating\0\0").is_transient());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("lifecycle_cdc"), "\"lifecycle_cdc\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
