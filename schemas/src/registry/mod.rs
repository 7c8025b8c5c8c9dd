//! The project's schema registry: the Confluent REST subset that producers,
//! Confluent's clients and schema_registry_converter use, with compatibility
//! checked by apache-avro and storage in PostgreSQL. Production deployments use
//! Confluent Schema Registry, Karapace or Apicurio instead; nothing else changes.

pub mod compat;
pub mod config;
pub mod server;
pub mod store;
