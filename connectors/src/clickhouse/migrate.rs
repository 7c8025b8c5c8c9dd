//! ClickHouse schema migrations: numbered `.sql` files in
//! `connectors/clickhouse_migrations/`, embedded at build time, applied once each
//! and recorded in `lifecycle_schema_migrations`.

use clickhouse::sql::Identifier;

use super::{ClickHouseConfig, client, server_client};

/// `(version, name, sql)` of every migration, in order.
pub const MIGRATIONS: &[(u32, &str, &str)] =
    &[(1, "events", include_str!("../../clickhouse_migrations/0001_events.sql"))];

/// Creates the database when missing and applies pending migrations; returns how many ran.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<usize, clickhouse::error::Error> {
    server_client(cfg).query("CREATE DATABASE IF NOT EXISTS ?").bind(Identifier(&cfg.database)).execute().await?;
    let ch = client(cfg);
    ch.query(
        "CREATE TABLE IF NOT EXISTS lifecycle_schema_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) \
         ENGINE = MergeTree() ORDER BY version",
    )
    .execute()
    .await?;
    let applied: Vec<u32> = ch.query("SELECT version FROM lifecycle_schema_migrations").fetch_all().await?;
    let mut ran = 0;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        for statement in sql
            .split(';')
            .map(str::trim)
            .filter(|s| !s.lines().all(|l| l.trim().is_empty() || l.trim().starts_with("--")))
        {
            ch.query(statement).execute().await?;
        }
        ch.query("INSERT INTO lifecycle_schema_migrations (version, name) VALUES (?, ?)")
            .bind(*version)
            .bind(*name)
            .execute()
            .await?;
        ran += 1;
    }
    Ok(ran)
}
