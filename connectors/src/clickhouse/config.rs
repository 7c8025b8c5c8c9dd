//! ClickHouse connection settings.

use serde::{Deserialize, Serialize};

/// Where ClickHouse is.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding the analytics tables.
    pub database: String,
    /// User (the server's `default` user when absent).
    pub user: Option<String>,
    /// Password (never logged).
    pub password: Option<String>,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self { url: "http://127.0.0.1:8123".into(), database: "lifecycle".into(), user: None, password: None }
    }
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &crate::secret::redact_url(&self.url))
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_deref().map(crate::secret::shown))
            .finish()
    }
}
