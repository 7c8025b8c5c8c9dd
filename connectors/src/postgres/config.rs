//! PostgreSQL connection settings.

use serde::{Deserialize, Serialize};

/// Where the database is.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/db` (the password is never logged).
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self { url: "postgres://lifecycle@127.0.0.1:5432/lifecycle".into(), max_connections: 8 }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &crate::secret::redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}
