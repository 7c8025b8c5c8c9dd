//! The schema registry service, run as a detached `lifecycle registry` process.

use std::process::Command;
use std::time::Duration;

use super::proc::{log_file, pid_file, running_pid, spawn_detached, stop, tail};
use super::{ServiceStatus, StackConfig, StackError, err, wait_for};
use crate::config::LifecycleConfig;

async fn healthy(base: &str) -> bool {
    let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build() else {
        return false;
    };
    client.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success())
}

fn base(cfg: &LifecycleConfig) -> String {
    format!("http://{}", cfg.registry.listen_addr)
}

pub(super) async fn up(cfg: &LifecycleConfig) -> Result<(), StackError> {
    let s = &cfg.stack;
    let url = base(cfg);
    if healthy(&url).await {
        println!("schema registry: already answering on {url}");
        return Ok(());
    }
    // One we started that no longer answers healthily (e.g. its database was
    // re-created underneath it) is restarted; anything else on the port is reported.
    if stop("registry", &pid_file(s, "registry"))? {
        println!("schema registry: restarted an unhealthy instance");
    } else if super::proc::port_open(cfg.registry.listen_addr.port()).await {
        return Err(err(
            "registry",
            format!(
                "something on {} answers but /healthz is not OK, and it was not started from {}; stop it",
                cfg.registry.listen_addr,
                s.data_dir.display()
            ),
        ));
    }
    let exe = std::env::current_exe().map_err(|e| err("registry", e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("registry");
    if let Some(path) = &cfg.source {
        cmd.env("LIFECYCLE_CONFIG", path);
    }
    cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    let log = log_file(s, "registry");
    let pid = spawn_detached("registry", cmd, &log, &pid_file(s, "registry"))?;
    let probe = url.clone();
    if !wait_for(Duration::from_secs(30), || healthy(&probe)).await {
        return Err(err("registry", format!("not healthy after 30 s; log {}:\n{}", log.display(), tail(&log, 20))));
    }
    println!("schema registry: started, pid {pid}, {url} (Confluent REST subset, storage: PostgreSQL schema_registry)");
    Ok(())
}

pub(super) fn down(s: &StackConfig) -> Result<(), StackError> {
    if stop("registry", &pid_file(s, "registry"))? {
        println!("schema registry: stopped");
    }
    Ok(())
}

pub(super) async fn status(cfg: &LifecycleConfig) -> ServiceStatus {
    let s = &cfg.stack;
    let pid = running_pid(&pid_file(s, "registry"));
    ServiceStatus {
        name: "schema registry",
        addr: cfg.registry.listen_addr.to_string(),
        up: healthy(&base(cfg)).await,
        detail: pid.map_or_else(
            || "not started by this project".into(),
            |p| format!("pid {p}, log {}", log_file(s, "registry").display()),
        ),
    }
}
