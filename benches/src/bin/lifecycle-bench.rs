//! `lifecycle-bench`: the end-to-end benchmark (see `benches/README.md`).
//!
//!   cargo run --release -p lifecycle-benches --bin lifecycle-bench -- [--events N] [--soak] [--write FILE]
//!   cargo run --release -p lifecycle-benches --bin lifecycle-bench -- hostile [--records N] [--seed S]
//!   cargo run --release -p lifecycle-benches --bin lifecycle-bench -- api-load [--keys N] [--secs S] [--write FILE]

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lifecycle_benches::harness::{self, Options, api_load, report};
use lifecycle_jobs::LifecycleConfig;

#[derive(Parser)]
#[command(
    about = "Throughput, latency and memory of the pipeline against raw consume, a Python peer and a Kafka Streams peer"
)]
struct Cli {
    /// Configuration of the stack to run against (default: the local stack).
    #[arg(long, env = "LIFECYCLE_CONFIG")]
    config: Option<PathBuf>,
    /// Events in the workload (default 1,000,000; 10,000,000 with --soak).
    #[arg(long)]
    events: Option<usize>,
    /// Distinct users.
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Offered rate of the latency run, events/s.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// Seconds of the latency run (0 skips it).
    #[arg(long, default_value_t = 30)]
    latency_secs: u64,
    /// The memory run: only the whole pipeline, sampling resident memory.
    #[arg(long)]
    soak: bool,
    /// Only these measurements, comma-separated (raw, kcat, peer, streams, validate,
    /// profile, analytics, pipeline, latency); the results file is not written then.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Replace the results section of this Markdown file (e.g. benches/README.md).
    #[arg(long)]
    write: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand)]
enum Sub {
    /// Hostile records through the validation stage (run in this process, on
    /// topics of its own, deleted afterwards): every one must end exactly once
    /// on events.valid or, with a reason code, on events.dlq. Exits 1 otherwise.
    Hostile {
        /// Records to generate (17 kinds in turn).
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Generator seed (the same seed, the same records).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds the stage may take to consume them.
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
    },
    /// Debian's wrk against the REST API (`lifecycle run ingest`, its own process,
    /// database and topics): POST /events/batch under the rate limit, GET
    /// /analytics, POST /events/batch over the limit. Exits 1 when any answer is
    /// not one the phase allows (202 or 200; 429 over the limit) or a socket failed.
    ApiLoad {
        /// API keys the under-the-limit phases rotate over.
        #[arg(long, default_value_t = 5_000)]
        keys: usize,
        /// Keys of the over-the-limit phase.
        #[arg(long, default_value_t = 5)]
        hot_keys: usize,
        /// Seconds of each phase.
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// wrk connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Events per batch.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Replace the api-load section of this Markdown file (e.g. benches/README.md).
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// The ceiling: consume COUNT records of TOPIC and do nothing (run by the benchmark).
    #[command(hide = true)]
    RawConsume {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        count: usize,
    },
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Builds the `lifecycle` binary next to this one (a no-op when it is current).
fn lifecycle_binary(me: &std::path::Path) -> Result<PathBuf, String> {
    let bin = me.with_file_name("lifecycle");
    if let Ok(cargo) = std::env::var("CARGO") {
        let ok = std::process::Command::new(cargo)
            .args(["build", "--release", "--bin", "lifecycle"])
            .status()
            .map_err(|e| e.to_string())?
            .success();
        if !ok {
            return Err("cargo build --release --bin lifecycle failed".into());
        }
    }
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{} not found: cargo build --release --bin lifecycle", bin.display()))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifecycle-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Some(Sub::RawConsume { bootstrap, topic, count }) = cli.command {
        return tokio::task::spawn_blocking(move || harness::raw_consume(&bootstrap, &topic, count))
            .await
            .map_err(|e| e.to_string())?;
    }
    let cfg = match &cli.config {
        Some(path) => LifecycleConfig::load(path)?,
        None => LifecycleConfig::default(),
    };
    if let Some(Sub::Hostile { records, seed, timeout_secs }) = cli.command {
        return hostile(cfg, records, seed, timeout_secs).await;
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    if let Some(Sub::ApiLoad { keys, hot_keys, secs, connections, batch, write }) = cli.command {
        if !on_path("wrk") {
            return Err("wrk not found on PATH: install it (Debian: `apt-get install wrk`)".into());
        }
        if keys == 0 || hot_keys == 0 || batch == 0 || batch > 1000 {
            return Err("--keys and --hot-keys must be at least 1, --batch 1-1000".into());
        }
        let o =
            api_load::ApiLoadOptions { keys, hot_keys, secs, connections, batch, lifecycle: lifecycle_binary(&me)? };
        let phases = api_load::run(&cfg, &o).await?;
        let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
        let md = api_load::markdown(
            &o,
            &phases,
            &format!("cargo run --release -p lifecycle-benches --bin lifecycle-bench -- {command}"),
        );
        println!("\n{md}");
        if let Some(path) = write {
            report::write_section(&path, "api-load", &md)?;
            println!("wrote {}", path.display());
        }
        let bad = api_load::unexpected(&phases);
        return if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("answers outside the phase's policy: {}", bad.join("; ")))
        };
    }
    let root = lifecycle_schemas::files::checkout_root().join("benches");
    let opts = Options {
        events: cli.events.unwrap_or(if cli.soak { 10_000_000 } else { 1_000_000 }),
        users: cli.users,
        rate: cli.rate,
        latency_secs: cli.latency_secs,
        soak: cli.soak,
        only: cli.only.clone(),
        write: cli.write.clone(),
        lifecycle: lifecycle_binary(&me)?,
        python: lifecycle_jobs::stack::python::python(&cfg.stack),
        peer: root.join("peer/peer.py"),
        streams_peer: root.join("streams-peer"),
        maven_repo: cfg.stack.cache_dir.join("m2"),
        me,
    };
    if !opts.soak && !opts.python.is_file() {
        return Err(format!("{} missing: run `lifecycle stack up` first", opts.python.display()));
    }
    if !opts.soak && opts.wants("kcat") && !on_path("kcat") {
        return Err(
            "kcat not found on PATH: install it (Debian: `apt-get install kcat`) or leave it out with --only".into()
        );
    }
    let results = harness::run(&opts, &cfg).await?;
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let command = format!("cargo run --release -p lifecycle-benches --bin lifecycle-bench -- {command}");
    let md = report::markdown(&opts, &results, command.trim_end_matches(" -- "));
    println!("\n{md}");
    if let Some(path) = opts.write.as_ref().filter(|_| opts.only.is_empty()) {
        report::write_section(path, if opts.soak { "soak" } else { "results" }, &md)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

async fn hostile(mut cfg: LifecycleConfig, records: usize, seed: u64, timeout_secs: u64) -> Result<(), String> {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    cfg.topics = lifecycle_pipeline::TopicNames::with_prefix(format!("bench-hostile-{}.", &unique[..8]));
    cfg.validate.group_id = format!("bench-hostile-{}", &unique[..8]);
    cfg.validate.metrics_addr = None;
    let reg = lifecycle_jobs::setup::topics_and_schemas(&cfg).await?;
    let outcome = lifecycle_jobs::hostile::run(
        &cfg,
        reg.raw_envelope_id,
        records,
        seed,
        std::time::Duration::from_secs(timeout_secs),
    )
    .await;
    let topics: Vec<String> = lifecycle_pipeline::Topic::ALL.iter().map(|&t| cfg.topics.name(t)).collect();
    if let Err(e) = lifecycle_connectors::kafka::admin::delete_topics(&cfg.kafka, &topics).await {
        eprintln!("lifecycle-bench: could not delete the run's topics: {e}");
    }
    let report = outcome?;
    println!("{report}");
    if report.problems.is_empty() { Ok(()) } else { Err(format!("{} problems", report.problems.len())) }
}
