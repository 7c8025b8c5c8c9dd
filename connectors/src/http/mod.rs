//! HTTP plumbing shared by every service: JSON errors, `/metrics` and `/healthz`,
//! request metrics, API-key authentication with roles, and rate limiting.

pub mod auth;
pub mod error;
pub mod ops;
pub mod rate_limit;
pub mod signature;

pub use auth::{ApiKeys, Caller, Role};
pub use error::ApiError;
