//! PostgreSQL: configuration, pool and the project's migrations.

pub mod config;
pub mod profiles;
pub mod rules;
pub mod workflows;

use sqlx::postgres::{PgPool, PgPoolOptions};

pub use config::PostgresConfig;

/// The project's migrations (`connectors/migrations`), embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool.
pub async fn connect(cfg: &PostgresConfig) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(&cfg.url)
        .await
}

/// Opens a pool and applies pending migrations.
pub async fn connect_and_migrate(cfg: &PostgresConfig) -> Result<PgPool, sqlx::Error> {
    let pool = connect(cfg).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}
