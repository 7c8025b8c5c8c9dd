//! PostgreSQL: configuration, pool and the project's migrations.

pub mod config;
pub mod profiles;
pub mod rules;
pub mod workflows;

use sqlx::Connection;
use sqlx::postgres::{PgPool, PgPoolOptions};

pub use config::PostgresConfig;

/// The project's migrations (`connectors/migrations`), embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. A connection going back to the pool gives up buffer space
/// beyond 8 KiB: sqlx otherwise keeps each connection's read and write buffers
/// at the largest message it ever carried, so a pool of connections that took
/// turns writing large batches of profile documents held several times a
/// batch's bytes for good, more as the documents grew.
pub async fn connect(cfg: &PostgresConfig) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .after_release(|conn, _| {
            Box::pin(async move {
                conn.shrink_buffers();
                Ok(true)
            })
        })
        .connect(&cfg.url)
        .await
}

/// Opens a pool and applies pending migrations.
pub async fn connect_and_migrate(cfg: &PostgresConfig) -> Result<PgPool, sqlx::Error> {
    let pool = connect(cfg).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}
