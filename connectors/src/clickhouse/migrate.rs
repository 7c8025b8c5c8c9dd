//! ClickHouse schema migrations: numbered `.sql` files in
//! `connectors/clickhouse_migrations/`, embedded at build time, applied once each
//! and recorded in `lifecycle_schema_migrations`.

use clickhouse::sql::Identifier;

use super::{ClickHouseConfig, client, server_client};

/// `(version, name, sql)` of every migration, in order.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (1, "events", include_str!("../../clickhouse_migrations/0001_events.sql")),
    (2, "aggregates", include_str!("../../clickhouse_migrations/0002_aggregates.sql")),
];

/// The statements of a migration file: `--` comment lines dropped (they may
/// hold semicolons), then split at `;`.
pub fn statements(sql: &str) -> Vec<String> {
    let code: String = sql.lines().filter(|l| !l.trim_start().starts_with("--")).map(|l| format!("{l}\n")).collect();
    code.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

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
        for statement in statements(sql) {
            ch.query(&statement).execute().await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_with_semicolons_do_not_split_statements() {
        let s = statements("-- a; b\nCREATE TABLE a (x UInt8) ENGINE = Memory;\n\n-- c;\nSELECT 1;\n");
        assert_eq!(s, vec!["CREATE TABLE a (x UInt8) ENGINE = Memory", "SELECT 1"]);
    }

    #[test]
    fn every_shipped_migration_has_statements() {
        for (version, name, sql) in MIGRATIONS {
            let s = statements(sql);
            assert!(!s.is_empty(), "{version} {name}");
            assert!(s.iter().all(|x| x.starts_with("CREATE ")), "{version} {name}: {s:?}");
        }
    }
}
