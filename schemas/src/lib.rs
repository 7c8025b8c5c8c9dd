//! Schemas: the `.avsc` files of the event envelope and the event taxonomy, their
//! registration under Confluent subjects, a registry client, and the project's own
//! Confluent-compatible schema registry service (REST subset, PostgreSQL storage).

pub mod client;
pub mod error;
pub mod files;
pub mod registry;

pub use client::RegistryClient;
pub use error::SchemasError;
pub use files::SchemaFiles;
