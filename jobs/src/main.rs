//! `lifecycle`: the thin binary over `lifecycle_jobs::cli`.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// jemalloc, not glibc's malloc: glibc kept freed memory of the profile stage's
/// batches (about half of its 594 MiB resident after 6.8 M events was free heap,
/// per `malloc_stats`), so resident memory grew with the size of the profiles a
/// batch touches; jemalloc gives freed pages back to the system after a few seconds.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,lifecycle_jobs=info,audit=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.compact().init();
    }
    let cli = lifecycle_jobs::cli::Cli::parse();
    match lifecycle_jobs::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
