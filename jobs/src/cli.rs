//! The `lifecycle` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use lifecycle_connectors::http::auth::{ApiKeys, Role};
use tokio::sync::watch;

use crate::config::LifecycleConfig;

/// Customer-lifecycle event pipeline.
#[derive(Debug, Parser)]
#[command(name = "lifecycle", version, about)]
pub struct Cli {
    /// Configuration file (TOML); defaults apply without one.
    #[arg(long, global = true, env = "LIFECYCLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the local stack (Apache Kafka, PostgreSQL, ClickHouse, schema registry).
    Stack {
        /// up, down or status.
        #[arg(value_enum)]
        action: StackAction,
    },
    /// Run a stage or service until interrupted.
    Run {
        /// Which one.
        #[arg(value_enum)]
        stage: Stage,
    },
    /// Serve the schema registry (what `stack up` starts in the background).
    Registry,
    /// Start the stack, run the stages on a demo workload and print what happened.
    Demo {
        /// Valid Avro events to produce to Kafka.
        #[arg(long, default_value_t = 2000)]
        events: usize,
    },
    /// Create or check the topics as configuration declares them (partitions,
    /// replication factor, min.insync.replicas, cleanup policy, retention).
    Topics {
        /// apply (create, add partitions, set configuration) or check (report only).
        #[arg(value_enum)]
        action: TopicsAction,
    },
    /// List transactions that partitions hold open and no coordinator will end
    /// (they stop `read_committed` readers for good), and abort them with
    /// --abort. The stages do this on their own (`kafka.hanging_transaction_abort_after_ms`).
    HangingTransactions {
        /// Only transactions whose producer last wrote at least this long ago.
        #[arg(long, default_value_t = 60)]
        older_than_secs: u64,
        /// Abort the hanging ones (write their abort markers).
        #[arg(long)]
        abort: bool,
    },
    /// Print the effective configuration (file, then LIFECYCLE_* variables,
    /// then defaults) as TOML, secrets shown as `***`.
    Config,
    /// Manage API keys.
    ApiKey {
        /// What to do.
        #[command(subcommand)]
        action: KeyAction,
    },
}

/// Stack actions.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StackAction {
    /// Install what is missing and start what is not running.
    Up,
    /// Stop what this project started.
    Down,
    /// Show each service.
    Status,
}

/// Topic actions.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TopicsAction {
    /// Create missing topics, add partitions, set the managed configuration.
    Apply,
    /// Report how the cluster differs from the declaration; exit 1 when it does.
    Check,
}

/// Stages and services.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Stage {
    /// events.raw -> events.valid | events.dlq.
    Validate,
    /// events.valid -> profiles in PostgreSQL, profiles.changelog, lifecycle.events.
    Profile,
    /// events.valid -> ClickHouse events table.
    Analytics,
    /// workflow.commands -> workflow instances (BPMN) -> workflow.events / workflow.dlq.
    Workflows,
    /// HTTP ingestion API.
    Ingest,
    /// PostgreSQL tables (logical replication) -> cdc.<database>.<schema>.<table>, Debezium's envelope.
    Cdc,
}

/// API key actions.
#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Create a key and print it (once).
    Create {
        /// A name for logs and audit.
        #[arg(long)]
        name: String,
        /// admin, operator or analyst.
        #[arg(long)]
        role: String,
        /// Days until the key stops working (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Replace a key with a new one (same name and role); the old key keeps
    /// working for the grace period.
    Rotate {
        /// Key id.
        #[arg(long)]
        id: uuid::Uuid,
        /// Hours the old key keeps working (0: stops now).
        #[arg(long, default_value_t = 24)]
        grace_hours: u32,
    },
    /// List keys: status, expiry, last use (never the keys themselves).
    List,
    /// Revoke a key by id; every API instance refuses it from its next request.
    Revoke {
        /// Key id (as printed by create).
        #[arg(long)]
        id: uuid::Uuid,
    },
}

/// A switch that turns on at SIGTERM or Ctrl-C. The stage then finishes the
/// batch in hand and stops; if that takes longer than `grace` (a store that
/// does not answer), the process exits without committing the batch, which is
/// read again by whoever takes its partitions.
fn shutdown_on_signal(grace: std::time::Duration) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!(grace_secs = grace.as_secs(), "shutdown requested");
        let _ = tx.send(true);
        tokio::time::sleep(grace).await;
        tracing::error!(
            grace_secs = grace.as_secs(),
            "not stopped within the shutdown grace; exiting without committing the batch in hand"
        );
        std::process::exit(1);
    });
    rx
}

/// `lifecycle hanging-transactions`: one line per open transaction older than
/// `older_than`, with its verdict; with `abort`, the hanging ones are aborted.
async fn hanging_transactions(
    cfg: &LifecycleConfig,
    older_than: std::time::Duration,
    abort: bool,
) -> Result<(), String> {
    use lifecycle_connectors::kafka::transactions::{self as txn, Verdict};
    let found = txn::find(&cfg.kafka, older_than).await.map_err(|e| e.to_string())?;
    let mut failed = 0;
    for f in &found {
        let o = &f.open;
        let (verdict, why) = match &f.verdict {
            Verdict::Live(w) => ("live", w),
            Verdict::Hanging(w) => ("hanging", w),
        };
        let age = (chrono::Utc::now().timestamp_millis() - o.last_timestamp_ms) / 1000;
        print!(
            "{}-{} producer {} epoch {} from offset {} ({} s since its last write, transactional id {}): {verdict}, {why}",
            o.topic,
            o.partition,
            o.producer_id,
            o.producer_epoch,
            o.start_offset,
            age,
            f.transactional_id.as_deref().unwrap_or("unknown")
        );
        if abort && matches!(f.verdict, Verdict::Hanging(_)) {
            match txn::abort(&cfg.kafka, o).await {
                Ok(true) => print!("; aborted"),
                Ok(false) => print!("; ended meanwhile, left alone"),
                Err(e) => {
                    failed += 1;
                    print!("; abort failed: {e}");
                }
            }
        }
        println!();
    }
    let hanging = found.iter().filter(|f| matches!(f.verdict, Verdict::Hanging(_))).count();
    println!("{} open transaction(s) older than {} s, {hanging} hanging", found.len(), older_than.as_secs());
    if failed > 0 { Err(format!("{failed} abort(s) failed")) } else { Ok(()) }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), String> {
    let cfg = LifecycleConfig::load_with_env(cli.config.as_deref(), std::env::vars())?;
    let stop = || shutdown_on_signal(std::time::Duration::from_secs(cfg.shutdown_grace_secs));
    match cli.command {
        Command::Stack { action: StackAction::Up } => crate::stack::up(&cfg).await.map_err(|e| e.to_string()),
        Command::Stack { action: StackAction::Down } => crate::stack::down(&cfg).await.map_err(|e| e.to_string()),
        Command::Stack { action: StackAction::Status } => {
            let all = crate::stack::status(&cfg).await;
            for s in &all {
                println!("{:<16} {:<22} {:<5} {}", s.name, s.addr, if s.up { "up" } else { "down" }, s.detail);
            }
            if all.iter().all(|s| s.up) { Ok(()) } else { Err("some services are down".into()) }
        }
        Command::Run { stage: Stage::Validate } => {
            let handle = crate::stages::validate::StageHandle::new()?;
            crate::stages::validate::run(&cfg, handle, stop()).await
        }
        Command::Run { stage: Stage::Profile } => {
            let handle = crate::stages::profile::ProfileHandle::new()?;
            crate::stages::profile::run(&cfg, handle, stop()).await
        }
        Command::Run { stage: Stage::Analytics } => {
            let handle = crate::stages::analytics::SinkHandle::new()?;
            crate::stages::analytics::run(&cfg, handle, stop()).await
        }
        Command::Run { stage: Stage::Workflows } => {
            let handle = crate::stages::workflows::EngineHandle::new()?;
            crate::stages::workflows::run(&cfg, handle, stop()).await
        }
        Command::Run { stage: Stage::Ingest } => crate::services::run_ingest(&cfg, stop()).await,
        Command::Run { stage: Stage::Cdc } => {
            let handle = crate::stages::cdc::CdcHandle::new()?;
            crate::stages::cdc::run(&cfg, handle, stop()).await
        }
        Command::Topics { action } => {
            let apply = matches!(action, TopicsAction::Apply);
            let reports = crate::setup::topics(&cfg, apply).await?;
            for r in &reports {
                println!("{r}");
            }
            let unsettled = reports.iter().filter(|r| {
                use lifecycle_connectors::kafka::admin::TopicState as S;
                matches!(r.state, S::Missing | S::Drift)
            });
            match unsettled.count() {
                0 => Ok(()),
                n => Err(format!("{n} topic(s) differ from the declaration")),
            }
        }
        Command::Registry => crate::services::run_registry(&cfg, stop()).await,
        Command::HangingTransactions { older_than_secs, abort } => {
            hanging_transactions(&cfg, std::time::Duration::from_secs(older_than_secs), abort).await
        }
        Command::Config => {
            print!("{}", toml::to_string(&cfg.redacted()).map_err(|e| format!("printing the configuration: {e}"))?);
            Ok(())
        }
        Command::Demo { events } => crate::demo::run(&cfg, events).await,
        Command::ApiKey { action } => {
            let pool =
                lifecycle_connectors::postgres::connect_and_migrate(&cfg.postgres).await.map_err(|e| e.to_string())?;
            match action {
                KeyAction::Create { name, role, expires_in_days } => {
                    let role = Role::parse(&role)
                        .ok_or_else(|| format!("--role must be admin, operator or analyst, not '{role}'"))?;
                    let lifetime = expires_in_days.map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400));
                    let (id, key, _) =
                        ApiKeys::create_expiring(&pool, &name, role, lifetime).await.map_err(|e| e.to_string())?;
                    let expires = expires_in_days.map_or("never".to_owned(), |d| format!("in {d} days"));
                    println!(
                        "id:      {id}\nrole:    {}\nexpires: {expires}\nkey:     {key}\n(store the key now: only its SHA-256 is kept)",
                        role.as_str()
                    );
                    Ok(())
                }
                KeyAction::Rotate { id, grace_hours } => {
                    let grace = std::time::Duration::from_secs(u64::from(grace_hours) * 3600);
                    let r = ApiKeys::rotate(&pool, id, grace)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("no working key {id}"))?;
                    let expires = r.expires_at.map_or("never".to_owned(), |t| t.to_rfc3339());
                    println!(
                        "id:      {}\nexpires: {expires}\nkey:     {}\nold key {id} works until {}\n(store the key now: only its SHA-256 is kept)",
                        r.id,
                        r.key,
                        r.old_expires_at.to_rfc3339()
                    );
                    Ok(())
                }
                KeyAction::List => {
                    let keys = ApiKeys::list(&pool).await.map_err(|e| e.to_string())?;
                    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                        t.map_or("-".to_owned(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    };
                    println!(
                        "{:<36}  {:<8}  {:<8}  {:<20}  {:<20}  name",
                        "id", "role", "status", "expires", "last used"
                    );
                    for k in keys {
                        println!(
                            "{:<36}  {:<8}  {:<8}  {:<20}  {:<20}  {}",
                            k.id,
                            k.role,
                            k.status,
                            time(k.expires_at),
                            time(k.last_used_at),
                            k.name
                        );
                    }
                    Ok(())
                }
                KeyAction::Revoke { id } => {
                    if ApiKeys::revoke(&pool, id).await.map_err(|e| e.to_string())? {
                        println!("revoked {id}");
                        Ok(())
                    } else {
                        Err(format!("no active key {id}"))
                    }
                }
            }
        }
    }
}
