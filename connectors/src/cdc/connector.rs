//! The CDC connector: publication and slot, the initial snapshot under the
//! slot's exported snapshot, then the stream, each change written to its
//! table's topic in Debezium's envelope.
//!
//! Delivery: at-least-once. The slot's confirmed LSN moves only to the end of
//! a transaction (or heartbeat) whose changes Kafka has all acknowledged, so a
//! crash or a server restart loses nothing; what was sent after the last
//! confirmation is sent again on restart. A consumer deduplicates by the key
//! and `source.lsn` (Debezium's rule: a change with an LSN not above the last
//! one applied for that key is a repeat).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use lifecycle_pipeline::metrics::CdcMetrics;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value as Json;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection as _, Row as _};
use tokio::sync::watch;

use super::CdcConfig;
use super::debezium::{self, Op, Source, TxPosition};
use super::pgoutput::{Decoder, Lsn, Message, OldRow, Relation, Value, pg_micros_to_unix_ms};
use super::replication::{
    ConnectInfo, ReplError, ReplicationConnection, ReplicationStream, StreamMessage, quote_ident,
};
use crate::kafka::admin::{TopicSpec, apply_topics};
use crate::kafka::config::KafkaConfig;

/// Prefix of the connector's heartbeat messages in the WAL.
pub const HEARTBEAT_PREFIX: &str = "lifecycle-cdc-heartbeat";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the connector stopped.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    /// Configuration or the source's schema makes capture impossible (a
    /// table without a key, no REPLICATION permission, a bad URL).
    #[error("{0}")]
    Config(String),
    /// PostgreSQL or Kafka is unavailable; retried.
    #[error("{0}")]
    Unavailable(String),
}

fn unavailable(e: impl std::fmt::Display) -> CdcError {
    CdcError::Unavailable(e.to_string())
}

impl From<ReplError> for CdcError {
    fn from(e: ReplError) -> Self {
        if e.is_transient() {
            return Self::Unavailable(e.to_string());
        }
        match e.code() {
            // insufficient_privilege, invalid_authorization, undefined object, wal_level not logical
            Some("42501" | "28000" | "28P01" | "42704" | "55000") => Self::Config(e.to_string()),
            _ => match e {
                ReplError::Config(m) => Self::Config(m),
                other => Self::Unavailable(other.to_string()),
            },
        }
    }
}

/// A captured table: its relation as the catalog describes it, and its topic.
#[derive(Debug, Clone)]
pub struct Table {
    /// Schema and columns (key flags: the primary key).
    pub relation: Relation,
    /// Kafka topic.
    pub topic: String,
}

/// A record for Kafka: `value` `None` is a tombstone.
#[derive(Debug, Clone, PartialEq)]
struct CdcRecord {
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

/// What [`Connector::on_progress`] calls.
type ProgressFn = Box<dyn Fn(Option<&str>) + Send + Sync>;

/// Everything a run needs.
pub struct Connector {
    cfg: CdcConfig,
    info: ConnectInfo,
    source: PgPool,
    state: PgPool,
    producer: FutureProducer,
    prefix: String,
    tables: HashMap<(String, String), Table>,
    metrics: CdcMetrics,
    progress: ProgressFn,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("cfg", &self.cfg).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// `schema.table` split.
fn split_table(t: &str) -> (String, String) {
    let (s, n) = t.split_once('.').unwrap_or(("public", t));
    (s.to_owned(), n.to_owned())
}

impl Connector {
    /// Connects to the source and checks the tables; `state` is the pipeline's
    /// own database (where finished snapshots are recorded), `source_url` the
    /// captured one. Creates the tables' topics when missing.
    pub async fn new(
        cfg: CdcConfig,
        source_url: &str,
        state: PgPool,
        kafka: &KafkaConfig,
        replication_factor: u16,
        metrics: CdcMetrics,
    ) -> Result<Self, CdcError> {
        cfg.validate().map_err(CdcError::Config)?;
        let info = ConnectInfo::from_url(source_url)?;
        let source = PgPoolOptions::new()
            .max_connections(3)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(source_url)
            .await
            .map_err(|e| CdcError::Unavailable(format!("source database: {e}")))?;
        let prefix =
            if cfg.topic_prefix.is_empty() { format!("cdc.{}", info.database) } else { cfg.topic_prefix.clone() };
        let producer: FutureProducer = kafka.producer().create().map_err(unavailable)?;
        let mut c = Self {
            cfg,
            info,
            source,
            state,
            producer,
            prefix,
            tables: HashMap::new(),
            metrics,
            progress: Box::new(|_| {}),
        };
        c.describe_tables().await?;
        let specs: Vec<TopicSpec> = c
            .tables
            .values()
            .map(|t| TopicSpec {
                name: t.topic.clone(),
                partitions: c.cfg.partitions,
                replication_factor,
                configs: Vec::new(),
            })
            .collect();
        apply_topics(kafka, &specs, true).await.map_err(|e| CdcError::Unavailable(format!("creating topics: {e}")))?;
        Ok(c)
    }

    /// Called at every step of the stream (`None`, at least once a status
    /// interval) and when a session fails (`Some(why)`): health probes.
    pub fn on_progress(&mut self, f: impl Fn(Option<&str>) + Send + Sync + 'static) {
        self.progress = Box::new(f);
    }

    /// The topic of each captured table (`schema.table` -> topic).
    pub fn topics(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self.tables.iter().map(|((s, n), t)| (format!("{s}.{n}"), t.topic.clone())).collect();
        v.sort();
        v
    }

    /// Reads each table's columns and key from the catalog; refuses tables
    /// that do not exist or that have neither a primary key nor `REPLICA IDENTITY FULL`.
    async fn describe_tables(&mut self) -> Result<(), CdcError> {
        for t in self.cfg.tables.clone() {
            let (schema, name) = split_table(&t);
            let row = sqlx::query(
                "SELECT c.oid::int8 AS oid, c.relreplident::text AS ident FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            )
            .bind(&schema)
            .bind(&name)
            .fetch_optional(&self.source)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| CdcError::Config(format!("cdc.tables: table {t} does not exist in {}", self.info.database)))?;
            let oid: i64 = row.try_get("oid").map_err(unavailable)?;
            let ident: String = row.try_get("ident").map_err(unavailable)?;
            let cols = sqlx::query(
                "SELECT a.attname::text AS name, a.atttypid::int8 AS type_oid, a.atttypmod AS typmod, \
                 COALESCE(a.attnum = ANY(i.indkey), false) AS key \
                 FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                 WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            )
            .bind(oid)
            .fetch_all(&self.source)
            .await
            .map_err(unavailable)?;
            let mut columns = Vec::with_capacity(cols.len());
            for c in &cols {
                columns.push(super::pgoutput::Column {
                    key: c.try_get("key").map_err(unavailable)?,
                    name: c.try_get("name").map_err(unavailable)?,
                    type_oid: u32::try_from(c.try_get::<i64, _>("type_oid").map_err(unavailable)?).unwrap_or(25),
                    type_modifier: c.try_get("typmod").map_err(unavailable)?,
                });
            }
            let has_key = columns.iter().any(|c| c.key);
            if !has_key && ident != "f" {
                return Err(CdcError::Config(format!(
                    "table {t} has no primary key: its updates and deletes would not say which row they change. \
                     Add a primary key, or run ALTER TABLE {t} REPLICA IDENTITY FULL (its changes then have a null Kafka key)"
                )));
            }
            let relation = Relation {
                oid: u32::try_from(oid).unwrap_or(0),
                namespace: schema.clone(),
                name: name.clone(),
                replica_identity: ident.bytes().next().unwrap_or(b'd'),
                columns,
            };
            let topic = format!("{}.{schema}.{name}", self.prefix);
            self.tables.insert((schema, name), Table { relation, topic });
        }
        Ok(())
    }

    /// Creates the publication, or sets its table list to the configured one.
    async fn ensure_publication(&self) -> Result<(), CdcError> {
        let list = self
            .cfg
            .tables
            .iter()
            .map(|t| {
                let (s, n) = split_table(t);
                format!("{}.{}", quote_ident(&s), quote_ident(&n))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(&self.cfg.publication)
            .fetch_one(&self.source)
            .await
            .map_err(unavailable)?;
        let sql = if exists {
            format!("ALTER PUBLICATION {} SET TABLE {list}", quote_ident(&self.cfg.publication))
        } else {
            format!("CREATE PUBLICATION {} FOR TABLE {list}", quote_ident(&self.cfg.publication))
        };
        sqlx::query(&sql).execute(&self.source).await.map_err(|e| {
            match e.as_database_error().and_then(|d| d.code()) {
                Some(c) if c == "42501" => CdcError::Config(format!(
                    "cannot create or alter publication {}: the role must own the tables ({e})",
                    self.cfg.publication
                )),
                _ => unavailable(e),
            }
        })?;
        Ok(())
    }

    fn source_id(&self) -> String {
        format!("{}:{}/{}", self.info.host, self.info.port, self.info.database)
    }

    /// Runs until `shutdown`: snapshot when needed, then the stream; a lost
    /// connection to PostgreSQL or Kafka is retried with backoff.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), CdcError> {
        self.ensure_publication().await?;
        let mut attempt: u32 = 0;
        loop {
            let stopping = *shutdown.borrow();
            if stopping {
                return Ok(());
            }
            let began = Instant::now();
            let outcome = self.session(&mut shutdown).await;
            // A session that streamed a while was healthy: back off from the start again.
            if began.elapsed() > Duration::from_secs(30) {
                attempt = 0;
            }
            match outcome {
                Ok(()) => return Ok(()),
                Err(CdcError::Config(m)) => return Err(CdcError::Config(m)),
                Err(CdcError::Unavailable(m)) => {
                    (self.progress)(Some(&m));
                    self.metrics.retries.with_label_values(&["session"]).inc();
                    let wait = Duration::from_millis(200 * 2u64.pow(attempt.min(5)));
                    tracing::warn!(error = %m, wait_ms = wait.as_millis() as u64, "CDC session ended; reconnecting");
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.wait_for(|s| *s) => return Ok(()),
                    }
                }
            }
        }
    }

    /// One connection's life: slot (and snapshot when new), then streaming.
    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), CdcError> {
        let mut slot = sqlx::query(
            "SELECT confirmed_flush_lsn::text AS lsn, wal_status FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&self.cfg.slot)
        .fetch_optional(&self.source)
        .await
        .map_err(unavailable)?;
        // A slot invalidated by max_slot_wal_keep_size cannot stream again:
        // changes were lost, so it is replaced and the tables read again.
        let status = slot.as_ref().and_then(|r| r.try_get::<Option<String>, _>("wal_status").ok().flatten());
        if status.as_deref() == Some("lost") {
            tracing::error!(
                slot = %self.cfg.slot,
                "the replication slot was invalidated (max_slot_wal_keep_size): changes made meanwhile are lost; \
                 replacing it and snapshotting the tables again"
            );
            sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(&self.cfg.slot)
                .execute(&self.source)
                .await
                .map_err(unavailable)?;
            slot = None;
        }
        let snapshot_done: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM cdc_snapshots WHERE slot = $1 AND source = $2)")
                .bind(&self.cfg.slot)
                .bind(self.source_id())
                .fetch_one(&self.state)
                .await
                .map_err(unavailable)?;
        let mut conn = ReplicationConnection::connect(&self.info, CONNECT_TIMEOUT).await?;
        let start = match slot {
            Some(row) if snapshot_done || !self.cfg.snapshot => {
                let lsn: Option<String> = row.try_get("lsn").map_err(unavailable)?;
                lsn.and_then(|l| l.parse().ok()).unwrap_or_default()
            }
            existing => {
                if existing.is_some() {
                    tracing::warn!(slot = %self.cfg.slot, "the slot's initial snapshot did not finish; dropping the slot and starting over");
                    conn.simple_query(&format!("DROP_REPLICATION_SLOT {} WAIT", quote_ident(&self.cfg.slot))).await?;
                }
                let created = conn.create_slot(&self.cfg.slot, self.cfg.snapshot).await?;
                tracing::info!(slot = %created.slot, consistent_point = %created.consistent_point, "replication slot created");
                if let Some(name) = created.snapshot.as_deref().filter(|_| self.cfg.snapshot) {
                    let rows = self.snapshot(name, created.consistent_point).await?;
                    sqlx::query(
                        "INSERT INTO cdc_snapshots (slot, source, consistent_point, rows) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (slot, source) DO UPDATE SET consistent_point = EXCLUDED.consistent_point, \
                         rows = EXCLUDED.rows, completed_at = now()",
                    )
                    .bind(&self.cfg.slot)
                    .bind(self.source_id())
                    .bind(created.consistent_point.to_string())
                    .bind(i64::try_from(rows).unwrap_or(i64::MAX))
                    .execute(&self.state)
                    .await
                    .map_err(unavailable)?;
                    tracing::info!(rows, "initial snapshot finished");
                }
                created.consistent_point
            }
        };
        let stream = conn.start(&self.cfg.slot, start, &self.cfg.publication, 1).await?;
        tracing::info!(slot = %self.cfg.slot, from = %start, "streaming changes");
        self.stream(stream, start, shutdown).await
    }

    /// Reads every table under the exported snapshot and writes `op=r` events.
    async fn snapshot(&self, snapshot: &str, at: Lsn) -> Result<u64, CdcError> {
        let mut conn = self.source.acquire().await.map_err(unavailable)?;
        let mut tx = conn.begin().await.map_err(unavailable)?;
        for sql in [
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY".to_owned(),
            format!("SET TRANSACTION SNAPSHOT '{}'", snapshot.replace('\'', "''")),
            "SET LOCAL TimeZone = 'UTC'".to_owned(),
            "SET LOCAL DateStyle = 'ISO'".to_owned(),
            "SET LOCAL extra_float_digits = 3".to_owned(),
        ] {
            sqlx::query(&sql).execute(&mut *tx).await.map_err(unavailable)?;
        }
        let mut tables: Vec<&Table> = self.tables.values().collect();
        tables.sort_by(|a, b| a.topic.cmp(&b.topic));
        let mut total = 0u64;
        let mut batch: Vec<CdcRecord> = Vec::with_capacity(self.cfg.max_batch_changes);
        let started_ms = chrono::Utc::now().timestamp_millis();
        for (ti, t) in tables.iter().enumerate() {
            let rel = &t.relation;
            let cols =
                rel.columns.iter().map(|c| format!("{}::text", quote_ident(&c.name))).collect::<Vec<_>>().join(", ");
            let sql = format!("SELECT {cols} FROM {}.{}", quote_ident(&rel.namespace), quote_ident(&rel.name));
            let mut rows = sqlx::query(&sql).fetch(&mut *tx);
            let mut pending: Option<Vec<Value>> = None;
            let last_table = ti + 1 == tables.len();
            loop {
                let next = rows.try_next().await.map_err(unavailable)?;
                let next = match next {
                    Some(r) => {
                        let mut tuple = Vec::with_capacity(rel.columns.len());
                        for i in 0..rel.columns.len() {
                            let v: Option<String> = r.try_get(i).map_err(unavailable)?;
                            tuple.push(v.map_or(Value::Null, |s| Value::Text(bytes::Bytes::from(s))));
                        }
                        Some(tuple)
                    }
                    None => None,
                };
                if let Some(tuple) = pending.take() {
                    // Debezium marks the first record of the snapshot "first", its last "last".
                    let marker = if total == 0 {
                        "first"
                    } else if next.is_none() && last_table {
                        "last"
                    } else {
                        "true"
                    };
                    let src = Source {
                        name: &self.prefix,
                        db: &self.info.database,
                        ts_ms: started_ms,
                        snapshot: marker,
                        tx_id: None,
                        lsn: Some(at),
                        last_commit_lsn: None,
                    };
                    let env =
                        debezium::envelope(Op::Read, rel, None, Some(debezium::row(rel, &tuple)), &src, None, now_us());
                    batch.push(record(&t.topic, debezium::key(rel, &tuple), Some(env)));
                    self.metrics.changes.with_label_values(&["r", &rel.name]).inc();
                    total += 1;
                    if batch.len() >= self.cfg.max_batch_changes {
                        self.send(&batch).await?;
                        batch.clear();
                    }
                }
                match next {
                    Some(t) => pending = Some(t),
                    None => break,
                }
            }
        }
        self.send(&batch).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(total)
    }

    /// Sends `records` and waits for every acknowledgement.
    async fn send(&self, records: &[CdcRecord]) -> Result<(), CdcError> {
        let sends = records.iter().map(|r| {
            let mut rec = FutureRecord::<[u8], [u8]>::to(&r.topic);
            if let Some(k) = &r.key {
                rec = rec.key(k);
            }
            if let Some(v) = &r.value {
                rec = rec.payload(v);
            }
            self.producer.send(rec, Duration::from_secs(30))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| {
                self.metrics.retries.with_label_values(&["kafka"]).inc();
                CdcError::Unavailable(format!("Kafka: {e}"))
            })?;
        }
        Ok(())
    }

    /// Streams from `start` until shutdown or a broken connection.
    async fn stream(
        &self,
        mut stream: ReplicationStream,
        start: Lsn,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), CdcError> {
        let mut st = StreamState::new(start);
        self.metrics.confirmed_lsn.set(i64::try_from(start.0).unwrap_or(i64::MAX));
        let status_every = Duration::from_millis(self.cfg.status_interval_ms);
        let mut status_tick = tokio::time::interval(status_every);
        let linger = Duration::from_millis(self.cfg.batch_linger_ms);
        let heartbeat_every = Duration::from_millis(self.cfg.heartbeat_interval_ms);
        let mut last_change = Instant::now();
        let mut slot_tick = tokio::time::interval(Duration::from_millis(self.cfg.slot_check_interval_ms.max(1000)));
        loop {
            let flush_at = st.first_pending.map(|t| tokio::time::Instant::from_std(t + linger));
            tokio::select! {
                biased;
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
                _ = async { match flush_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                    self.flush(&mut st).await?;
                    stream.send_status(st.confirmed, st.confirmed, false).await?;
                }
                m = stream.next() => {
                    match m? {
                        StreamMessage::XLogData { start, data, .. } => {
                            let msg = st.decoder.decode(&data).map_err(|e| CdcError::Config(format!("{e} (at {start})")))?;
                            if self.apply(&mut st, start, msg)? {
                                last_change = Instant::now();
                            }
                            if st.records.len() >= self.cfg.max_batch_changes {
                                self.flush(&mut st).await?;
                            }
                        }
                        StreamMessage::Keepalive { reply, .. } => {
                            if reply {
                                stream.send_status(st.confirmed, st.confirmed, false).await?;
                            }
                        }
                    }
                }
                _ = status_tick.tick() => {
                    (self.progress)(None);
                    stream.send_status(st.confirmed, st.confirmed, false).await?;
                    if self.cfg.heartbeat_interval_ms > 0 && last_change.elapsed() >= heartbeat_every && st.tx.is_none() {
                        last_change = Instant::now();
                        if let Err(e) = sqlx::query("SELECT pg_logical_emit_message(false, $1, '')")
                            .bind(HEARTBEAT_PREFIX)
                            .execute(&self.source)
                            .await
                        {
                            tracing::warn!(error = %e, "CDC heartbeat failed: the slot cannot confirm past other tables' WAL meanwhile");
                        }
                    }
                }
                _ = slot_tick.tick() => self.check_slot(&st).await,
            }
        }
        // Stopping: what was read goes to Kafka and is confirmed.
        self.flush(&mut st).await?;
        stream.send_status(st.confirmed, st.confirmed, false).await?;
        Ok(())
    }

    /// Decodes one message into records; true when it was a change.
    fn apply(&self, st: &mut StreamState, at: Lsn, msg: Message) -> Result<bool, CdcError> {
        match msg {
            Message::Begin { final_lsn, commit_time, xid } => {
                st.tx = Some(Tx { xid, commit_lsn: final_lsn, commit_time, total: 0, per_table: HashMap::new() });
                Ok(false)
            }
            Message::Commit { commit_lsn, end_lsn, commit_time } => {
                st.tx = None;
                st.last_commit_lsn = Some(commit_lsn);
                st.commit_point = Some((end_lsn, commit_time));
                self.metrics.transactions.inc();
                // A transaction of other tables' changes only: confirmable at once.
                if st.first_pending.is_none() {
                    st.first_pending = Some(Instant::now());
                }
                Ok(false)
            }
            Message::Relation { mut relation, .. } => {
                // Keys are the primary key's columns as the catalog says (the
                // stream flags every column of a REPLICA IDENTITY FULL table).
                let known = self.tables.get(&(relation.namespace.clone(), relation.name.clone()));
                for c in &mut relation.columns {
                    c.key = known.is_some_and(|t| t.relation.columns.iter().any(|k| k.key && k.name == c.name));
                }
                let topic = known.map(|t| t.topic.clone());
                st.relations.insert(relation.oid, Arc::new(Rel { relation, topic }));
                Ok(false)
            }
            Message::LogicalMessage { transactional: false, lsn, prefix, .. } if prefix == HEARTBEAT_PREFIX => {
                if st.tx.is_none() {
                    st.commit_point = Some((lsn, st.commit_point.map_or(0, |c| c.1)));
                    if st.first_pending.is_none() {
                        st.first_pending = Some(Instant::now());
                    }
                }
                Ok(false)
            }
            Message::Insert { relation, new, .. } => {
                let r = st.relation(relation)?;
                let rel = &r.relation;
                let key = debezium::key(rel, &new);
                self.emit(st, &r, at, Op::Create, None, Some(debezium::row(rel, &new)), key, false);
                Ok(true)
            }
            Message::Update { relation, old, new, .. } => {
                let r = st.relation(relation)?;
                let rel = &r.relation;
                let new_key = debezium::key(rel, &new);
                match &old {
                    // The key changed: Debezium writes a delete of the old key
                    // (and its tombstone) and a create of the new one.
                    Some(OldRow::Key(o) | OldRow::Full(o)) if debezium::key_changed(rel, o, &new) => {
                        let old_key = debezium::key(rel, o);
                        self.emit(st, &r, at, Op::Delete, Some(debezium::row(rel, o)), None, old_key, true);
                        self.emit(st, &r, at, Op::Create, None, Some(debezium::row(rel, &new)), new_key, false);
                    }
                    _ => {
                        let before = match &old {
                            Some(OldRow::Full(o)) => Some(debezium::row(rel, o)),
                            _ => None,
                        };
                        self.emit(st, &r, at, Op::Update, before, Some(debezium::row(rel, &new)), new_key, false);
                    }
                }
                Ok(true)
            }
            Message::Delete { relation, old, .. } => {
                let r = st.relation(relation)?;
                let rel = &r.relation;
                let key = debezium::old_key(rel, &old);
                let (OldRow::Key(o) | OldRow::Full(o)) = &old;
                self.emit(st, &r, at, Op::Delete, Some(debezium::row(rel, o)), None, key, true);
                Ok(true)
            }
            Message::Truncate { relations, .. } => {
                for oid in relations {
                    let r = st.relation(oid)?;
                    self.emit(st, &r, at, Op::Truncate, None, None, None, false);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Appends one change (and a tombstone after a delete) to the batch.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        st: &mut StreamState,
        r: &Rel,
        at: Lsn,
        op: Op,
        before: Option<Json>,
        after: Option<Json>,
        key: Option<Json>,
        tombstone: bool,
    ) {
        // Not a configured table (a publication shared with others): skipped.
        let Some(topic) = r.topic.as_deref() else { return };
        let rel = &r.relation;
        let (xid, commit_time, position) = match st.tx.as_mut() {
            Some(tx) => {
                tx.total += 1;
                let per = tx.per_table.entry(rel.oid).or_insert(0);
                *per += 1;
                let pos = TxPosition {
                    xid: tx.xid,
                    commit_lsn: tx.commit_lsn,
                    total_order: tx.total,
                    data_collection_order: *per,
                };
                (Some(tx.xid), tx.commit_time, Some(pos))
            }
            None => (None, 0, None),
        };
        let src = Source {
            name: &self.prefix,
            db: &self.info.database,
            ts_ms: pg_micros_to_unix_ms(commit_time),
            snapshot: "false",
            tx_id: xid,
            lsn: Some(at),
            last_commit_lsn: st.last_commit_lsn,
        };
        let env = debezium::envelope(op, rel, before, after, &src, position, now_us());
        st.records.push(record(topic, key.clone(), Some(env)));
        self.metrics.changes.with_label_values(&[op.code(), &rel.name]).inc();
        if tombstone {
            st.records.push(record(topic, key, None));
            self.metrics.tombstones.inc();
        }
        if st.first_pending.is_none() {
            st.first_pending = Some(Instant::now());
        }
    }

    /// Sends the batch; once Kafka has acknowledged it, the last complete
    /// transaction's end becomes the confirmed LSN.
    async fn flush(&self, st: &mut StreamState) -> Result<(), CdcError> {
        if !st.records.is_empty() {
            self.send(&st.records).await?;
            st.records.clear();
        }
        if let Some((end, commit_time)) = st.commit_point.take() {
            // Every change before `end` is in Kafka now.
            st.confirmed = st.confirmed.max(end);
            self.metrics.confirmed_lsn.set(i64::try_from(st.confirmed.0).unwrap_or(i64::MAX));
            if commit_time != 0 {
                st.confirmed_commit_ms = pg_micros_to_unix_ms(commit_time);
                let lag = (chrono::Utc::now().timestamp_millis() - st.confirmed_commit_ms).max(0);
                self.metrics.commit_to_kafka_seconds.observe(lag as f64 / 1000.0);
            }
        }
        st.first_pending = None;
        Ok(())
    }

    /// Lag and WAL headroom of the slot, as metrics; an error log well before
    /// `max_slot_wal_keep_size` would invalidate it.
    async fn check_slot(&self, st: &StreamState) {
        let row = sqlx::query(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 AS lag, wal_status, safe_wal_size::int8 AS safe, \
             current_setting('max_slot_wal_keep_size') AS keep FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&self.cfg.slot)
        .fetch_optional(&self.source)
        .await;
        let Ok(Some(row)) = row else { return };
        let lag: i64 = row.try_get::<Option<i64>, _>("lag").ok().flatten().unwrap_or(0);
        let status: Option<String> = row.try_get("wal_status").ok().flatten();
        let safe: Option<i64> = row.try_get("safe").ok().flatten();
        let keep: String = row.try_get("keep").unwrap_or_default();
        self.metrics.slot_lag_bytes.set(lag);
        self.metrics.slot_safe_wal_bytes.set(safe.unwrap_or(-1));
        let behind_secs = if lag > 0 && st.confirmed_commit_ms > 0 {
            (chrono::Utc::now().timestamp_millis() - st.confirmed_commit_ms) / 1000
        } else {
            0
        };
        self.metrics.slot_lag_seconds.set(behind_secs);
        let endangered =
            matches!(status.as_deref(), Some("unreserved" | "lost")) || safe.is_some_and(|s| lag > 0 && s < lag / 4);
        if endangered {
            tracing::error!(
                slot = %self.cfg.slot, wal_status = status.as_deref().unwrap_or("-"), lag_bytes = lag,
                safe_wal_bytes = safe.unwrap_or(-1), max_slot_wal_keep_size = %keep,
                "the replication slot is about to be invalidated by max_slot_wal_keep_size: the connector is too far behind. \
                 Check Kafka (the connector confirms only what Kafka acknowledged), or raise max_slot_wal_keep_size; \
                 if the slot is lost, the connector creates a new one and snapshots the tables again"
            );
        }
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn record(topic: &str, key: Option<Json>, value: Option<Json>) -> CdcRecord {
    CdcRecord {
        topic: topic.to_owned(),
        key: key.map(|k| serde_json::to_vec(&k).unwrap_or_default()),
        value: value.map(|v| serde_json::to_vec(&v).unwrap_or_default()),
    }
}

/// A relation of the stream with its topic (`None`: not a captured table).
struct Rel {
    relation: Relation,
    topic: Option<String>,
}

/// The transaction being read.
struct Tx {
    xid: u32,
    commit_lsn: Lsn,
    commit_time: i64,
    total: u64,
    per_table: HashMap<u32, u64>,
}

/// What the stream has read and not yet confirmed.
struct StreamState {
    decoder: Decoder,
    relations: HashMap<u32, Arc<Rel>>,
    tx: Option<Tx>,
    last_commit_lsn: Option<Lsn>,
    /// Records not yet sent.
    records: Vec<CdcRecord>,
    /// End of the last complete transaction (or heartbeat) read, with its commit time.
    commit_point: Option<(Lsn, i64)>,
    /// When the oldest unsent record (or unconfirmed commit) arrived.
    first_pending: Option<Instant>,
    /// What the slot may confirm: every change before it is in Kafka.
    confirmed: Lsn,
    /// Commit time of the newest confirmed transaction (ms since the Unix epoch).
    confirmed_commit_ms: i64,
}

impl StreamState {
    fn new(start: Lsn) -> Self {
        Self {
            decoder: Decoder::new(),
            relations: HashMap::new(),
            tx: None,
            last_commit_lsn: None,
            records: Vec::new(),
            commit_point: None,
            first_pending: None,
            confirmed: start,
            confirmed_commit_ms: 0,
        }
    }

    fn relation(&self, oid: u32) -> Result<Arc<Rel>, CdcError> {
        self.relations
            .get(&oid)
            .cloned()
            .ok_or_else(|| CdcError::Unavailable(format!("a change of relation {oid} came before its description")))
    }
}
