//! Jobs: the runnable side of the pipeline. Stages (validation), services (schema
//! registry, ingestion API), the local stack manager, the demo workload and the
//! `lifecycle` command line that drives them.

pub mod cli;
pub mod config;
pub mod demo;
pub mod heap;
pub mod hostile;
pub mod services;
pub mod setup;
pub mod stack;
pub mod stages;
pub mod workload;

pub use config::LifecycleConfig;

/// The unit tests run on the binary's allocator, so [`heap`] reads real figures.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
