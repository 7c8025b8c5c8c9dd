//! Registry service configuration.

use std::net::SocketAddr;

use lifecycle_connectors::postgres::PostgresConfig;
use serde::{Deserialize, Serialize};

/// Settings of the registry service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Address to listen on.
    pub listen_addr: SocketAddr,
    /// Database holding the registry tables (its own database).
    pub postgres: PostgresConfig,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            postgres: PostgresConfig {
                url: "postgres://lifecycle@127.0.0.1:5432/schema_registry".into(),
                max_connections: 4,
            },
        }
    }
}
