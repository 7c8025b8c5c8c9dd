//! Connectors: everything that touches the outside world. Kafka (topic admin,
//! batching source, acknowledging sink), PostgreSQL (pool, migrations), and the
//! HTTP layer (ingestion API, API keys, rate limits, metrics endpoints).

pub mod cdc;
pub mod clickhouse;
pub mod error;
pub mod http;
pub mod http_analytics;
pub mod http_ingest;
pub mod http_users;
pub mod http_workflows;
pub mod kafka;
pub mod postgres;
pub mod secret;
