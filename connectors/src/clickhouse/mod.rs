//! ClickHouse: configuration and client.
//!
//! The local stack runs Debian's clickhouse-server 18.16. The official
//! `clickhouse` crate works against it over HTTP with RowBinary only with schema
//! validation off (18.16 rejects the `describe_include_subcolumns` setting the
//! crate's validation sends). 18.16 also lacks server-side query parameters, so
//! values are bound client-side (`.bind()`) and identifiers are whitelisted.

pub mod config;
pub mod migrate;
pub mod rollup;
pub mod sink;

pub use ::clickhouse::Client;
pub use config::ClickHouseConfig;

/// A client for `cfg`'s database.
pub fn client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    let mut c = clickhouse::Client::default().with_url(&cfg.url).with_database(&cfg.database).with_validation(false);
    if let Some(user) = &cfg.user {
        c = c.with_user(user);
    }
    if let Some(password) = &cfg.password {
        c = c.with_password(password);
    }
    c
}

/// A client without a default database (for `CREATE DATABASE`).
pub fn server_client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    let mut c = clickhouse::Client::default().with_url(&cfg.url).with_validation(false);
    if let Some(user) = &cfg.user {
        c = c.with_user(user);
    }
    if let Some(password) = &cfg.password {
        c = c.with_password(password);
    }
    c
}
