//! The pipeline crate's error type.

/// Errors from pipeline logic that are not about one input record
/// (those are [`crate::Rejection`]s).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The event catalog could not be built.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The envelope schema is unusable.
    #[error("envelope schema: {0}")]
    Envelope(String),
    /// Encoding a validated event failed (a bug: validated events always encode).
    #[error("encoding event {event_id}: {message}")]
    Encode {
        /// The event that failed to encode.
        event_id: String,
        /// Why.
        message: String,
    },
}

impl PipelineError {
    /// Stable snake_case code for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Catalog(_) => "catalog_invalid",
            Self::Envelope(_) => "envelope_invalid",
            Self::Encode { .. } => "encode_failed",
        }
    }

    /// Whether retrying can help (never, for these).
    pub fn retryable(&self) -> bool {
        false
    }
}
