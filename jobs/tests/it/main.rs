//! Integration tests against the real local stack (Apache Kafka, PostgreSQL,
//! ClickHouse, the schema registry), started by `lifecycle stack up`. Each test uses its own topics,
//! subjects and consumer groups, so tests run in parallel.

mod analytics_api;
mod analytics_sink;
mod api_contract;
mod cdc;
mod clickhouse;
mod clickhouse_compat;
mod clickhouse_outage;
mod cluster;
mod common;
mod deploy;
mod faults;
mod hanging;
mod ingest_api;
mod poison;
mod procs;
mod profile_stage;
mod python_client;
mod registry;
mod secrets;
mod supply_chain;
mod topics;
mod users_api;
mod validate_stage;
mod workflows;
