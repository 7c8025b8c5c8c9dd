//! A project-local PostgreSQL cluster (Debian's server binaries), trust auth on
//! 127.0.0.1, databases `lifecycle` and `schema_registry`, migrations applied.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::Connection;

use super::proc::{log_file, port_open, tail};
use super::{ServiceStatus, StackConfig, StackError, err, wait_for};
use crate::config::LifecycleConfig;

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The newest installed server's bin directory; installs the package when none is.
fn bin_dir() -> Result<PathBuf, StackError> {
    let find = || -> Option<PathBuf> {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, p)| p.join("initdb").is_file())
            .collect();
        versions.sort();
        versions.pop().map(|(_, p)| p)
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    println!("postgres: server binaries missing, installing the Debian package...");
    let ok = Command::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql"])
        .status()
        .is_ok_and(|s| s.success());
    match (ok, find()) {
        (true, Some(p)) => Ok(p),
        _ => Err(err("postgres", "no PostgreSQL server binaries and `apt-get install postgresql` failed")),
    }
}

/// Runs a server tool as the `postgres` user when we are root (initdb refuses root).
fn pg_command(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

fn data_dir(s: &StackConfig) -> PathBuf {
    s.data_dir.join("postgres")
}

fn admin_url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

async fn can_connect(port: u16) -> bool {
    sqlx::PgConnection::connect(&admin_url(port)).await.is_ok()
}

/// Starts the server of `cfg.stack` unless it answers, then makes sure of the
/// databases and applies the migrations to `cfg.postgres`.
pub async fn up(cfg: &LifecycleConfig) -> Result<(), StackError> {
    let s = &cfg.stack;
    let port = s.postgres_port;
    if port_open(port).await {
        println!("postgres: already answering on 127.0.0.1:{port}");
    } else {
        let bin = bin_dir()?;
        let dir = data_dir(s);
        let log = log_file(s, "postgres");
        if !dir.join("PG_VERSION").is_file() {
            std::fs::create_dir_all(&dir).map_err(|e| err("postgres", e.to_string()))?;
            if is_root() {
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir)
                    .status()
                    .map_err(|e| err("postgres", e.to_string()))?;
            }
            let out = pg_command(&bin, "initdb")
                .arg("-D")
                .arg(&dir)
                .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C.UTF-8"])
                .output()
                .map_err(|e| err("postgres", format!("initdb: {e}")))?;
            if !out.status.success() {
                return Err(err("postgres", format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr))));
            }
            println!("postgres: initialised cluster in {}", dir.display());
        }
        if is_root() {
            // The log lives outside the data dir; the server (user postgres) writes it.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| err("postgres", e.to_string()))?;
            Command::new("chown").args(["postgres:postgres"]).arg(&log).status().ok();
        }
        // wal_level=logical and the slots and senders: the CDC connector streams
        // changes over logical replication; a slot nobody reads any more keeps
        // at most 4 GB of WAL, then the server invalidates it (the connector
        // then snapshots again) instead of filling the disk. pg_stat_statements:
        // what each statement costs, for operators and benchmarks.
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200 \
             -c shared_buffers=256MB -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 -c max_slot_wal_keep_size=4GB \
             -c shared_preload_libraries=pg_stat_statements",
            dir.display()
        );
        let out = pg_command(&bin, "pg_ctl")
            .arg("-D")
            .arg(&dir)
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .output()
            .map_err(|e| err("postgres", format!("pg_ctl: {e}")))?;
        if !out.status.success() {
            return Err(err("postgres", format!("pg_ctl start failed; log {}:\n{}", log.display(), tail(&log, 20))));
        }
        if !wait_for(Duration::from_secs(30), || can_connect(port)).await {
            return Err(err("postgres", format!("not accepting connections; log {}", log.display())));
        }
        println!("postgres: started on 127.0.0.1:{port}, data {}", dir.display());
    }
    ensure_databases(port).await?;
    let pool = lifecycle_connectors::postgres::connect_and_migrate(&cfg.postgres)
        .await
        .map_err(|e| err("postgres", format!("migrations: {e}")))?;
    pool.close().await;
    println!("postgres: databases lifecycle and schema_registry ready, migrations applied");
    Ok(())
}

async fn ensure_databases(port: u16) -> Result<(), StackError> {
    let mut conn = sqlx::PgConnection::connect(&admin_url(port)).await.map_err(|e| err("postgres", e.to_string()))?;
    let role: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = 'lifecycle'")
        .fetch_optional(&mut conn)
        .await
        .map_err(|e| err("postgres", e.to_string()))?;
    if role.is_none() {
        sqlx::query("CREATE ROLE lifecycle LOGIN SUPERUSER")
            .execute(&mut conn)
            .await
            .map_err(|e| err("postgres", e.to_string()))?;
    }
    // Statement statistics, readable from any database (the server was started
    // with the library preloaded; a server started otherwise lacks it).
    let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&mut conn).await;
    for db in ["lifecycle", "schema_registry"] {
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(db)
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| err("postgres", e.to_string()))?;
        if exists.is_none() {
            sqlx::query(&format!("CREATE DATABASE {db} OWNER lifecycle"))
                .execute(&mut conn)
                .await
                .map_err(|e| err("postgres", e.to_string()))?;
        }
    }
    Ok(())
}

/// Stops the server of `s` cleanly (`pg_ctl stop -m fast`).
pub fn down(s: &StackConfig) -> Result<(), StackError> {
    stop(s, "fast")
}

/// Stops the server of `s` as a crash would (`-m immediate`: no checkpoint,
/// recovery from the WAL at the next start).
pub fn crash(s: &StackConfig) -> Result<(), StackError> {
    stop(s, "immediate")
}

fn stop(s: &StackConfig, mode: &str) -> Result<(), StackError> {
    let dir = data_dir(s);
    if !dir.join("postmaster.pid").is_file() {
        return Ok(());
    }
    let bin = bin_dir()?;
    let out = pg_command(&bin, "pg_ctl")
        .arg("-D")
        .arg(&dir)
        .args(["-m", mode, "-w", "stop"])
        .output()
        .map_err(|e| err("postgres", e.to_string()))?;
    if out.status.success() {
        println!("postgres: stopped");
    }
    Ok(())
}

pub(super) async fn status(cfg: &LifecycleConfig) -> ServiceStatus {
    let s = &cfg.stack;
    let pid = std::fs::read_to_string(data_dir(s).join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned));
    ServiceStatus {
        name: "postgres",
        addr: format!("127.0.0.1:{}", s.postgres_port),
        up: can_connect(s.postgres_port).await,
        detail: pid.map_or_else(
            || "not started by this project".into(),
            |p| format!("pid {p}, data {}", data_dir(s).display()),
        ),
    }
}
