//! The official `clickhouse` crate against the stack's ClickHouse server: bulk
//! RowBinary insert, client-side bound queries, ReplacingMergeTree deduplication.

use clickhouse::Row;
use clickhouse::sql::Identifier;
use lifecycle_connectors::clickhouse::{ClickHouseConfig, client, server_client};
use serde::{Deserialize, Serialize};

#[derive(Row, Serialize, Deserialize, Debug, PartialEq)]
struct EventRow {
    event_id: String,
    event_type: String,
    user_id: String,
    event_time: u32,
    amount_cents: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crate_inserts_and_reads_100k_rows() {
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    let cfg = ClickHouseConfig { database: database.clone(), ..ClickHouseConfig::default() };
    let server = server_client(&cfg);
    let version: String =
        server.query("SELECT version()").fetch_one().await.expect("ClickHouse answers (lifecycle stack up)");
    eprintln!("ClickHouse server version {version}");
    server.query("CREATE DATABASE ?").bind(Identifier(&database)).execute().await.expect("create database");
    let ch = client(&cfg);
    ch.query(
        "CREATE TABLE events (event_id String, event_type String, user_id String, event_time DateTime, amount_cents Int64) \
         ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(event_time) ORDER BY (event_type, event_id)",
    )
    .execute()
    .await
    .expect("create table");
    let types = ["user.login", "engagement.page_view", "transaction.purchase_complete"];
    let base = 1_795_000_000u32;
    for pass in 0..2 {
        // The second pass re-inserts every row: a replay.
        let mut insert = ch.insert::<EventRow>("events").await.expect("insert");
        for i in 0..100_000u32 {
            let row = EventRow {
                event_id: format!("e{i}"),
                event_type: types[(i % 3) as usize].to_owned(),
                user_id: format!("u{}", i % 1000),
                event_time: base + i,
                amount_cents: i64::from(i % 3 == 2) * 1999,
            };
            insert.write(&row).await.expect("write row");
        }
        insert.end().await.expect("end insert");
        let raw: u64 = ch.query("SELECT count() FROM events").fetch_one().await.expect("count");
        assert_eq!(raw, 100_000 * (pass + 1), "RowBinary rows stored");
    }
    let distinct: u64 = ch.query("SELECT count() FROM events FINAL").fetch_one().await.expect("count final");
    assert_eq!(distinct, 100_000, "ReplacingMergeTree collapses the replay");
    let (n, revenue): (u64, i64) = ch
        .query("SELECT count(), sum(amount_cents) FROM events FINAL WHERE event_type = ?")
        .bind("transaction.purchase_complete")
        .fetch_one()
        .await
        .expect("bound query");
    assert_eq!((n, revenue), (33_333, 33_333 * 1999));
    let first: Vec<EventRow> = ch
        .query("SELECT ?fields FROM events FINAL WHERE event_id IN ? ORDER BY event_id")
        .bind(["e1", "e2"])
        .fetch_all()
        .await
        .expect("fetch rows");
    assert_eq!(first.len(), 2);
    assert_eq!(
        first[0],
        EventRow {
            event_id: "e1".into(),
            event_type: types[1].into(),
            user_id: "u1".into(),
            event_time: base + 1,
            amount_cents: 0
        }
    );
    server.query("DROP DATABASE ?").bind(Identifier(&database)).execute().await.expect("drop database");
}
