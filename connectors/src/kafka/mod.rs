//! Kafka: topic administration, a batching source with explicit commits, and a
//! sink that reports success only once every record is acknowledged.

pub mod admin;
pub mod config;
pub mod sink;
pub mod source;
pub mod transactions;
pub mod wire;
