//! The schemas crate's error type.

/// Errors loading, registering or fetching schemas.
#[derive(Debug, thiserror::Error)]
pub enum SchemasError {
    /// A schema file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// A schema file is invalid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The registry could not be reached or answered 5xx.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// The registry refused the request.
    #[error("schema registry refused ({status}, error_code {error_code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Confluent error code.
        error_code: i64,
        /// Message from the registry.
        message: String,
    },
    /// The registry's storage failed.
    #[error(transparent)]
    Store(#[from] crate::registry::store::StoreError),
}

impl SchemasError {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "schema_file_unreadable",
            Self::Invalid { .. } => "schema_file_invalid",
            Self::Unavailable(_) => "registry_unavailable",
            Self::Refused { .. } => "registry_refused",
            Self::Store(_) => "registry_store_failed",
        }
    }

    /// Whether retrying can help.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Store(_))
    }
}
