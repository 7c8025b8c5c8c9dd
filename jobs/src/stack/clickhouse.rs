//! ClickHouse: Debian's clickhouse-server (18.16) run as a plain process with a
//! project-local configuration (paths under the data dir, loopback only).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::proc::{log_file, pid_file, running_pid, spawn_detached, stop, tail};
use super::{ServiceStatus, StackConfig, StackError, err, wait_for};

const SYSTEM_CONFIG: &str = "/etc/clickhouse-server/config.xml";
const SYSTEM_USERS: &str = "/etc/clickhouse-server/users.xml";

fn server_binary() -> Option<PathBuf> {
    ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn install() -> Result<PathBuf, StackError> {
    if let (Some(bin), true) = (server_binary(), std::path::Path::new(SYSTEM_CONFIG).is_file()) {
        return Ok(bin);
    }
    println!("clickhouse: installing Debian's clickhouse-server and clickhouse-client...");
    let ok = Command::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client"])
        .status()
        .is_ok_and(|s| s.success());
    match (ok, server_binary()) {
        (true, Some(bin)) => Ok(bin),
        _ => Err(err("clickhouse", "`apt-get install clickhouse-server clickhouse-client` failed")),
    }
}

/// Writes the project-local config: the package's files with every path moved
/// under the data dir, the HTTP port set, and IPv4 loopback only.
fn configure(s: &StackConfig) -> Result<PathBuf, StackError> {
    let root = s.data_dir.join("clickhouse");
    let etc = root.join("etc");
    for d in [&etc, &root.join("data")] {
        std::fs::create_dir_all(d).map_err(|e| err("clickhouse", e.to_string()))?;
    }
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| err("clickhouse", format!("{p}: {e}")));
    let data = format!("{}/", root.join("data").display());
    let logs = format!("{}/", s.data_dir.join("logs").display());
    let config = read(SYSTEM_CONFIG)?
        .replace("/var/lib/clickhouse/", &data)
        .replace("/var/log/clickhouse-server/", &logs)
        .replace("<listen_host>::1</listen_host>", "")
        .replace("<http_port>8123</http_port>", &format!("<http_port>{}</http_port>", s.clickhouse_http_port))
        .replace("<tcp_port>9000</tcp_port>", &format!("<tcp_port>{}</tcp_port>", s.clickhouse_tcp_port))
        .replace("<interserver_http_port>9009</interserver_http_port>", "");
    let path = etc.join("config.xml");
    std::fs::write(&path, config).map_err(|e| err("clickhouse", e.to_string()))?;
    std::fs::write(etc.join("users.xml"), read(SYSTEM_USERS)?).map_err(|e| err("clickhouse", e.to_string()))?;
    Ok(path)
}

pub(crate) async fn answers(port: u16) -> bool {
    let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build() else {
        return false;
    };
    client.get(format!("http://127.0.0.1:{port}/?query=SELECT%201")).send().await.is_ok_and(|r| r.status().is_success())
}

/// Starts ClickHouse for `s` unless something answers on its HTTP port (a
/// test may start an isolated one with its own data dir and ports).
pub async fn up(s: &StackConfig) -> Result<(), StackError> {
    let port = s.clickhouse_http_port;
    if answers(port).await {
        println!("clickhouse: already answering on 127.0.0.1:{port}");
        return Ok(());
    }
    let bin = install()?;
    let config = configure(s)?;
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("--config-file={}", config.display())).current_dir(s.data_dir.join("clickhouse"));
    let log = log_file(s, "clickhouse");
    let pid_path = pid_file(s, "clickhouse");
    let pid = spawn_detached("clickhouse", cmd, &log, &pid_path)?;
    let ready = || async { answers(port).await || running_pid(&pid_path).is_none() };
    if !wait_for(Duration::from_secs(60), ready).await || !answers(port).await {
        let errlog = s.data_dir.join("logs").join("clickhouse-server.err.log");
        return Err(err(
            "clickhouse",
            format!("not answering after 60 s; {}:\n{}\n{}", log.display(), tail(&log, 10), tail(&errlog, 10)),
        ));
    }
    println!(
        "clickhouse: started, pid {pid}, http://127.0.0.1:{port}, data {}",
        s.data_dir.join("clickhouse").display()
    );
    Ok(())
}

/// Stops the ClickHouse started for `s` (SIGTERM, then SIGKILL after 10 s).
pub fn down(s: &StackConfig) -> Result<(), StackError> {
    if stop("clickhouse", &pid_file(s, "clickhouse"))? {
        println!("clickhouse: stopped");
    }
    Ok(())
}

pub(super) async fn status(s: &StackConfig) -> ServiceStatus {
    let pid = running_pid(&pid_file(s, "clickhouse"));
    ServiceStatus {
        name: "clickhouse",
        addr: format!("127.0.0.1:{}", s.clickhouse_http_port),
        up: answers(s.clickhouse_http_port).await,
        detail: pid.map_or_else(
            || "not started by this project".into(),
            |p| format!("pid {p}, data {}", s.data_dir.join("clickhouse").display()),
        ),
    }
}
