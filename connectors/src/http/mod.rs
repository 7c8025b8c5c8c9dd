//! HTTP plumbing shared by every service: JSON errors, `/metrics` and `/healthz`,
//! request metrics, API-key authentication with roles, rate limiting, and the
//! guard on outbound requests.

pub mod auth;
pub(crate) mod body;
pub mod egress;
pub mod error;
pub mod keys;
pub mod ops;
pub mod signature;

pub use auth::{ApiKeys, Caller, Role};
pub use error::ApiError;
