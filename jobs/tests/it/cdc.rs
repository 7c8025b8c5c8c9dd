//! The CDC connector against the stack's PostgreSQL (wal_level=logical) and
//! Kafka: a table of the test's own schema is snapshotted under the slot's
//! exported snapshot, then inserts, updates (one moving a row to another key,
//! one leaving a TOASTed value unchanged), deletes and a truncate stream to its
//! topic in Debezium's envelope, in commit order, with a tombstone after each
//! delete; changes made while the connector is stopped arrive after its
//! restart, and nothing is snapshotted twice. A table without a key is refused.

use std::collections::BTreeMap;
use std::time::Duration;

use lifecycle_connectors::cdc::CdcConfig;
use lifecycle_connectors::cdc::connector::{CdcError, Connector};
use lifecycle_jobs::LifecycleConfig;
use lifecycle_pipeline::metrics::CdcMetrics;
use serde_json::Value as Json;
use sqlx::PgPool;
use tokio::sync::watch;

/// One record of a CDC topic: key and value as JSON (`Null` value: tombstone).
#[derive(Debug, Clone)]
struct Change {
    key: Json,
    value: Json,
}

impl Change {
    fn op(&self) -> &str {
        self.value["op"].as_str().unwrap_or("tombstone")
    }
}

fn read_topic(cfg: &LifecycleConfig, topic: &str) -> Vec<Change> {
    let mut all = lifecycle_jobs::demo::read_from(cfg, topic, &BTreeMap::new()).expect("read the topic");
    all.sort_by_key(|(p, o, _, _)| (*p, *o));
    all.into_iter()
        .map(|(_, _, k, v)| Change {
            key: k.map_or(Json::Null, |k| serde_json::from_slice(&k).expect("JSON key")),
            value: if v.is_empty() { Json::Null } else { serde_json::from_slice(&v).expect("JSON value") },
        })
        .collect()
}

async fn wait_for_count(cfg: &LifecycleConfig, topic: &str, n: usize) -> Vec<Change> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = read_topic(cfg, topic);
        if got.len() >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), CdcError>>,
}

async fn start(cfg: &LifecycleConfig, cdc: &CdcConfig, state: &PgPool) -> Running {
    let metrics = CdcMetrics::register(&prometheus::Registry::new()).expect("metrics");
    let connector = Connector::new(cdc.clone(), &cfg.postgres.url, state.clone(), &cfg.kafka, 1, metrics)
        .await
        .expect("the connector starts");
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(async move { connector.run(rx).await });
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let r = tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("stops within 30 s");
        r.expect("task").expect("a clean stop");
    }
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(sql).execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_in_debeziums_envelope_and_resume_after_a_restart() {
    let cfg = LifecycleConfig::default();
    let pool =
        lifecycle_connectors::postgres::connect_and_migrate(&cfg.postgres).await.expect("the stack's PostgreSQL");
    // Slots of earlier runs that failed midway would pin WAL for good.
    exec(&pool, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 't\\_cdc\\_%' AND NOT active").await;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let schema = format!("t_cdc_{id}");
    exec(&pool, &format!("CREATE SCHEMA {schema}")).await;
    exec(
        &pool,
        &format!(
            "CREATE TABLE {schema}.accounts (id int PRIMARY KEY, email text NOT NULL, bio text, balance numeric(12,2), \
             active boolean, born date, seen timestamptz, blob bytea)"
        ),
    )
    .await;
    // Snapshot rows.
    exec(
        &pool,
        &format!(
            "INSERT INTO {schema}.accounts SELECT g, 'u' || g || '@x.test', NULL, g * 1.5, g % 2 = 0, DATE '2000-01-01' + g, \
             TIMESTAMPTZ '2026-01-01 00:00:00+00' + g * INTERVAL '1 second', '\\x0102' FROM generate_series(1, 100) g"
        ),
    )
    .await;
    let cdc = CdcConfig {
        tables: vec![format!("{schema}.accounts")],
        slot: schema.clone(),
        publication: schema.clone(),
        topic_prefix: format!("t-cdc-{id}"),
        heartbeat_interval_ms: 1000,
        metrics_addr: None,
        ..CdcConfig::default()
    };
    let topic = format!("t-cdc-{id}.{schema}.accounts");

    let running = start(&cfg, &cdc, &pool).await;
    let snap = wait_for_count(&cfg, &topic, 100).await;
    assert_eq!(snap.len(), 100, "every row once, as op=r");
    assert!(snap.iter().all(|c| c.op() == "r"));
    assert_eq!(snap[0].value["source"]["snapshot"], "first");
    assert_eq!(snap[99].value["source"]["snapshot"], "last");
    let first = snap.iter().find(|c| c.key == serde_json::json!({"id": 1})).expect("row 1");
    let after = &first.value["after"];
    assert_eq!(after["email"], "u1@x.test");
    assert_eq!(after["balance"], "1.50");
    assert_eq!(after["active"], false);
    assert_eq!(after["born"], 10_957 + 1, "days since 1970-01-01 of 2000-01-02");
    assert_eq!(after["seen"], "2026-01-01T00:00:01Z");
    assert_eq!(after["blob"], "AQI=");
    let src = &first.value["source"];
    assert_eq!((src["connector"].as_str(), src["db"].as_str()), (Some("postgresql"), Some("lifecycle")));
    assert_eq!((src["schema"].as_str(), src["table"].as_str()), (Some(schema.as_str()), Some("accounts")));

    // Changes, each its own transaction unless noted.
    // 102,400 characters that barely compress: stored out of line (TOASTed).
    let big = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 3200) g)";
    exec(
        &pool,
        &format!(
            "INSERT INTO {schema}.accounts (id, email, bio, seen, balance) \
             VALUES (101, 'new@x.test', {big}, TIMESTAMPTZ '2026-06-01 12:00:00.25+02', 12345678.9)"
        ),
    )
    .await;
    // Touches only email: the TOASTed bio is not sent and shows as Debezium's placeholder.
    exec(&pool, &format!("UPDATE {schema}.accounts SET email = 'changed@x.test' WHERE id = 101")).await;
    // A key change: delete of 2 (+ tombstone), create of 202.
    exec(&pool, &format!("UPDATE {schema}.accounts SET id = 202 WHERE id = 2")).await;
    exec(&pool, &format!("DELETE FROM {schema}.accounts WHERE id = 3")).await;
    // One transaction of two changes.
    exec(
        &pool,
        &format!(
            "WITH a AS (UPDATE {schema}.accounts SET balance = 9 WHERE id = 4 RETURNING 1) \
             UPDATE {schema}.accounts SET balance = 10 WHERE id = 5"
        ),
    )
    .await;
    // c, u, d + tombstone, c, d + tombstone, u, u
    let got = wait_for_count(&cfg, &topic, 100 + 9).await;
    let stream: Vec<&Change> = got[100..].iter().collect();
    let ops: Vec<&str> = stream.iter().map(|c| c.op()).collect();
    assert_eq!(ops, vec!["c", "u", "d", "tombstone", "c", "d", "tombstone", "u", "u"]);
    assert_eq!(stream[0].value["after"]["bio"].as_str().map(str::len), Some(102_400));
    assert_eq!(stream[0].value["after"]["seen"], "2026-06-01T10:00:00.250Z", "UTC whatever the server's zone");
    assert_eq!(stream[0].value["after"]["balance"], "12345678.90");
    assert_eq!(stream[1].value["after"]["bio"], "__debezium_unavailable_value");
    assert_eq!(stream[1].value["after"]["email"], "changed@x.test");
    assert_eq!(stream[2].key, serde_json::json!({"id": 2}));
    assert_eq!(stream[2].value["before"]["id"], 2);
    assert_eq!(stream[3].key, serde_json::json!({"id": 2}));
    assert_eq!(stream[4].key, serde_json::json!({"id": 202}));
    assert_eq!(stream[5].value["before"]["id"], 3);
    assert!(stream[5].value["after"].is_null());
    let (t1, t2) = (&stream[7].value, &stream[8].value);
    assert_eq!(t1["source"]["txId"], t2["source"]["txId"], "one transaction");
    assert_eq!(
        (t1["transaction"]["total_order"].as_u64(), t2["transaction"]["total_order"].as_u64()),
        (Some(1), Some(2))
    );
    let lsns: Vec<u64> = stream.iter().filter_map(|c| c.value["source"]["lsn"].as_u64()).collect();
    assert!(lsns.windows(2).all(|w| w[0] <= w[1]), "commit order: {lsns:?}");
    running.stop().await;

    // While it is stopped: the slot keeps the changes.
    exec(
        &pool,
        &format!("INSERT INTO {schema}.accounts (id, email) SELECT g, 'later' FROM generate_series(300, 309) g"),
    )
    .await;
    exec(&pool, &format!("TRUNCATE {schema}.accounts")).await;
    let running = start(&cfg, &cdc, &pool).await;
    let got = wait_for_count(&cfg, &topic, 109 + 11).await;
    let resumed: Vec<&str> = got[109..].iter().map(Change::op).collect();
    assert_eq!(resumed, [vec!["c"; 10], vec!["t"]].concat(), "the changes made while stopped, no second snapshot");
    running.stop().await;

    // A table without a key is refused, naming the remedy.
    exec(&pool, &format!("CREATE TABLE {schema}.nokey (a int, b text)")).await;
    let nokey = CdcConfig { tables: vec![format!("{schema}.nokey")], slot: format!("{schema}_nk"), ..cdc.clone() };
    let metrics = CdcMetrics::register(&prometheus::Registry::new()).expect("metrics");
    let e = Connector::new(nokey, &cfg.postgres.url, pool.clone(), &cfg.kafka, 1, metrics)
        .await
        .expect_err("refused")
        .to_string();
    assert!(e.contains("no primary key") && e.contains("REPLICA IDENTITY FULL"), "{e}");

    exec(&pool, &format!("SELECT pg_drop_replication_slot('{schema}')")).await;
    exec(&pool, &format!("DROP PUBLICATION {schema}")).await;
    exec(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// `lifecycle run cdc` as a process, killed with -9 three times while two
/// tables take 20,000 changes in transactions of 1 to 20 (one table gains a
/// column midway): afterwards every committed change is on the topics, each
/// key's changes in commit order, every delete followed by a tombstone, and
/// the last change of each key equals the row in PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_mid_stream_loses_no_committed_change() {
    use rand::Rng as _;
    use std::collections::{BTreeSet, HashMap};

    let mut cfg = LifecycleConfig::default();
    let pool =
        lifecycle_connectors::postgres::connect_and_migrate(&cfg.postgres).await.expect("the stack's PostgreSQL");
    exec(&pool, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 't\\_cdck\\_%' AND NOT active").await;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let schema = format!("t_cdck_{id}");
    exec(&pool, &format!("CREATE SCHEMA {schema}")).await;
    exec(&pool, &format!("CREATE TABLE {schema}.a (id int PRIMARY KEY, n int NOT NULL, note text)")).await;
    exec(&pool, &format!("CREATE TABLE {schema}.b (id int PRIMARY KEY, v text NOT NULL)")).await;
    cfg.cdc = CdcConfig {
        tables: vec![format!("{schema}.a"), format!("{schema}.b")],
        slot: schema.clone(),
        publication: schema.clone(),
        topic_prefix: format!("t-cdck-{id}"),
        max_batch_changes: 500,
        heartbeat_interval_ms: 1000,
        ..CdcConfig::default()
    };
    let dir = std::env::temp_dir().join(format!("lifecycle-t-cdck-{id}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("config.toml");
    std::fs::write(&config, toml::to_string(&cfg).expect("toml")).expect("config");
    let mut procs = crate::procs::Stages::new(config, dir.clone());
    procs.start("cdc", "cdc");
    // The slot exists once the connector streams.
    let slot_ready = || async {
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)")
            .bind(&schema)
            .fetch_one(&pool)
            .await
            .unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !slot_ready().await && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(slot_ready().await, "the connector created its slot; log in {}", dir.display());

    const CHANGES: usize = 20_000;
    let mut rng = rand::rng();
    let mut live: [Vec<i32>; 2] = [Vec::new(), Vec::new()];
    let mut next_id = 1;
    let mut made = 0usize;
    let mut kills = 0;
    let mut altered = false;
    while made < CHANGES {
        let mut tx = pool.begin().await.expect("begin");
        for _ in 0..rng.random_range(1..=20) {
            let t = rng.random_range(0..2usize);
            let table = if t == 0 { "a" } else { "b" };
            let choice = rng.random_range(0..10);
            let sql = if live[t].len() < 50 || choice < 5 {
                next_id += 1;
                live[t].push(next_id);
                if t == 0 {
                    format!("INSERT INTO {schema}.a VALUES ({next_id}, 0, 'n{next_id}')")
                } else {
                    format!("INSERT INTO {schema}.b (id, v) VALUES ({next_id}, 'v{next_id}')")
                }
            } else if choice < 8 {
                let k = live[t][rng.random_range(0..live[t].len())];
                if t == 0 {
                    format!("UPDATE {schema}.a SET n = n + 1, note = 'u{made}' WHERE id = {k}")
                } else {
                    format!("UPDATE {schema}.b SET v = 'u{made}' WHERE id = {k}")
                }
            } else {
                let k = live[t].swap_remove(rng.random_range(0..live[t].len()));
                format!("DELETE FROM {schema}.{table} WHERE id = {k}")
            };
            let n = sqlx::query(&sql).execute(&mut *tx).await.expect("change").rows_affected();
            assert_eq!(n, 1, "{sql}");
            made += 1;
        }
        tx.commit().await.expect("commit");
        if !altered && made >= CHANGES / 3 {
            exec(&pool, &format!("ALTER TABLE {schema}.b ADD COLUMN extra int NOT NULL DEFAULT 7")).await;
            altered = true;
        }
        if kills < 3 && made >= (kills + 1) * CHANGES / 4 {
            procs.kill_and_restart("cdc");
            kills += 1;
        }
    }

    // Every change (table, key, LSN) on the topics, however often repeated.
    let topics = [format!("t-cdck-{id}.{schema}.a"), format!("t-cdck-{id}.{schema}.b")];
    let distinct = |all: &[Vec<Change>]| -> usize {
        all.iter()
            .flatten()
            .filter(|c| !c.value.is_null())
            .map(|c| (c.value["source"]["table"].to_string(), c.key.to_string(), c.value["source"]["lsn"].to_string()))
            .collect::<BTreeSet<_>>()
            .len()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut all: Vec<Vec<Change>> = topics.iter().map(|t| read_topic(&cfg, t)).collect();
    while distinct(&all) < made && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        all = topics.iter().map(|t| read_topic(&cfg, t)).collect();
    }
    assert_eq!(procs.exited(), Vec::<String>::new(), "the connector rode out the kills; log in {}", dir.display());
    procs.stop_all();
    assert_eq!(distinct(&all), made, "every committed change once or more; log in {}", dir.display());
    let records: usize = all.iter().map(|t| t.iter().filter(|c| !c.value.is_null()).count()).sum();
    println!(
        "cdc kill test: {made} changes, {records} change events on the topics ({} sent again after the kills)",
        records - made
    );

    for (t, changes) in ["a", "b"].iter().zip(&all) {
        // Per key: LSNs in commit order once repeats are dropped; a tombstone after each delete.
        let mut per_key: HashMap<String, Vec<&Change>> = HashMap::new();
        for c in changes {
            per_key.entry(c.key.to_string()).or_default().push(c);
        }
        let mut last: HashMap<String, Json> = HashMap::new();
        for (k, cs) in &per_key {
            let mut seen = BTreeSet::new();
            let mut lsns = Vec::new();
            for (i, c) in cs.iter().enumerate() {
                if c.value.is_null() {
                    continue;
                }
                if c.op() == "d" {
                    assert!(
                        cs.get(i + 1).is_some_and(|n| n.value.is_null()),
                        "a tombstone after the delete of {t} {k}"
                    );
                }
                let lsn = c.value["source"]["lsn"].as_u64().expect("lsn");
                if seen.insert(lsn) {
                    lsns.push(lsn);
                }
            }
            assert!(lsns.windows(2).all(|w| w[0] < w[1]), "{t} {k}: commit order {lsns:?}");
            let final_change = cs.iter().rev().find(|c| !c.value.is_null()).expect("a change");
            last.insert(k.clone(), final_change.value["after"].clone());
        }
        let rows: Vec<Json> = sqlx::query_scalar(&format!("SELECT to_jsonb(x) FROM {schema}.{t} x"))
            .fetch_all(&pool)
            .await
            .expect("rows");
        let in_db: HashMap<String, Json> =
            rows.into_iter().map(|r| (serde_json::json!({"id": r["id"]}).to_string(), r)).collect();
        for (k, after) in &last {
            match in_db.get(k) {
                Some(row) => {
                    // A row last changed before the column was added has no value for it in the change.
                    let mut row = row.clone();
                    if after.get("extra").is_none()
                        && let Some(o) = row.as_object_mut()
                    {
                        o.remove("extra");
                    }
                    assert_eq!(after, &row, "{t} {k}: the last change is the row");
                }
                None => assert!(after.is_null(), "{t} {k}: deleted, so the last change is a delete"),
            }
        }
        assert_eq!(in_db.keys().filter(|k| !last.contains_key(*k)).count(), 0, "{t}: every row has changes");
    }
    assert!(all[1].iter().any(|c| c.value["after"]["extra"] == 7), "the added column appears");

    exec(&pool, &format!("SELECT pg_drop_replication_slot('{schema}')")).await;
    exec(&pool, &format!("DROP PUBLICATION {schema}")).await;
    exec(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// A PostgreSQL server of the test's own: 200,000 rows are snapshotted while a
/// writer keeps inserting, updating and deleting them, and later the server is
/// crashed (`pg_ctl stop -m immediate`) and started while changes stream. The
/// connector reconnects by itself; afterwards the last event of every key on
/// the topic equals the table's final row (or says it is deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_writes_and_a_postgres_crash_end_with_the_tables_final_state() {
    use lifecycle_jobs::stack::{StackConfig, postgres as pg_server};
    use rand::Rng as _;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const ROWS: i32 = 200_000;
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let dir = std::env::temp_dir().join(format!("lifecycle-t-cdcpg-{id}"));
    let mut cfg = LifecycleConfig {
        stack: StackConfig {
            data_dir: dir.join("stack"),
            postgres_port: crate::common::free_port(),
            ..StackConfig::default()
        },
        ..LifecycleConfig::default()
    };
    for sub in ["logs", "run"] {
        std::fs::create_dir_all(cfg.stack.data_dir.join(sub)).expect("stack dirs");
    }
    cfg.postgres.url = format!("postgres://lifecycle@127.0.0.1:{}/lifecycle", cfg.stack.postgres_port);
    let pg = crate::faults::PgServer(cfg.clone());
    pg_server::up(&pg.0).await.expect("a PostgreSQL server of the test's own");
    let pool = lifecycle_connectors::postgres::connect_and_migrate(&cfg.postgres).await.expect("db");
    exec(&pool, "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text)").await;
    exec(&pool, &format!("INSERT INTO items SELECT g, 0, 'row ' || g FROM generate_series(1, {ROWS}) g")).await;

    let cdc = CdcConfig {
        tables: vec!["public.items".into()],
        slot: "items".into(),
        publication: "items".into(),
        topic_prefix: format!("t-cdcpg-{id}"),
        heartbeat_interval_ms: 1000,
        metrics_addr: None,
        ..CdcConfig::default()
    };
    let topic = format!("t-cdcpg-{id}.public.items");

    // The writer: random changes until told to stop; errors (the server down) are waited out.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (pool, stop, committed) = (pool.clone(), stop.clone(), committed.clone());
        tokio::spawn(async move {
            let mut next = ROWS;
            while !stop.load(Ordering::Relaxed) {
                let sql = {
                    let mut rng = rand::rng();
                    let k = rng.random_range(1..=next);
                    match rng.random_range(0..10) {
                        0..=5 => format!("UPDATE items SET v = v + 1, note = 'u' || v WHERE id = {k}"),
                        6..=7 => {
                            next += 1;
                            format!("INSERT INTO items VALUES ({next}, 0, 'new')")
                        }
                        _ => format!("DELETE FROM items WHERE id = {k}"),
                    }
                };
                match sqlx::query(&sql).execute(&pool).await {
                    Ok(_) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let running = start(&cfg, &cdc, &pool).await;

    // The snapshot finishes while the writer goes on.
    let snapshot_done = || async {
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM cdc_snapshots WHERE slot = 'items')")
            .fetch_one(&pool)
            .await
            .unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !snapshot_done().await && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(snapshot_done().await, "the snapshot finished");
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg_server::crash(&pg.0.stack).expect("crash PostgreSQL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg_server::up(&pg.0).await.expect("PostgreSQL recovers and starts");
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    // A last change marks the end of the stream.
    exec(&pool, "INSERT INTO items VALUES (-1, 0, 'end')").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut events = read_topic(&cfg, &topic);
    while !events.iter().any(|c| c.key == serde_json::json!({"id": -1})) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        events = read_topic(&cfg, &topic);
    }
    running.stop().await;

    let mut last: HashMap<String, Json> = HashMap::new();
    for c in events.iter().filter(|c| !c.value.is_null()) {
        last.insert(c.key.to_string(), c.value["after"].clone());
    }
    let rows: Vec<Json> = sqlx::query_scalar("SELECT to_jsonb(x) FROM items x").fetch_all(&pool).await.expect("rows");
    let in_db: HashMap<String, Json> =
        rows.into_iter().map(|r| (serde_json::json!({"id": r["id"]}).to_string(), r)).collect();
    let mut wrong = Vec::new();
    for (k, row) in &in_db {
        if last.get(k) != Some(row) {
            wrong.push(format!("{k}: table {row}, topic {:?}", last.get(k)));
        }
    }
    for (k, after) in &last {
        if !in_db.contains_key(k) && !after.is_null() {
            wrong.push(format!("{k}: deleted, topic still {after}"));
        }
    }
    println!(
        "cdc snapshot+crash test: {ROWS} rows snapshotted, {} changes committed by the writer, {} events on the topic",
        committed.load(Ordering::Relaxed),
        events.len()
    );
    assert!(wrong.is_empty(), "{} keys differ, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    drop(pool);
    drop(pg);
}
