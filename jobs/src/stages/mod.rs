//! Stream-processing stages. Each has `config.rs` and `stage.rs`; the logic they
//! run is pure and lives in `lifecycle_pipeline`.

pub mod analytics;
pub(crate) mod common;
pub mod profile;
pub mod validate;
