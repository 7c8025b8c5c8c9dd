//! Detached processes with pid files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{StackConfig, StackError, err};

pub(crate) fn pid_file(s: &StackConfig, name: &str) -> PathBuf {
    s.data_dir.join("run").join(format!("{name}.pid"))
}

pub(crate) fn log_file(s: &StackConfig, name: &str) -> PathBuf {
    s.data_dir.join("logs").join(format!("{name}.log"))
}

/// The pid in a pid file, if that process is alive.
pub(crate) fn running_pid(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let alive =
        Command::new("kill").args(["-0", &pid.to_string()]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    alive.then_some(pid)
}

/// Starts `cmd` in its own process group (it outlives us), output to `log`.
pub(crate) fn spawn_detached(
    service: &'static str,
    mut cmd: Command,
    log: &Path,
    pid_path: &Path,
) -> Result<u32, StackError> {
    use std::os::unix::process::CommandExt;
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| err(service, format!("{}: {e}", log.display())))?;
    let out2 = out.try_clone().map_err(|e| err(service, e.to_string()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(out2).process_group(0);
    let child = cmd.spawn().map_err(|e| err(service, format!("spawn: {e}")))?;
    let pid = child.id();
    std::fs::write(pid_path, pid.to_string()).map_err(|e| err(service, e.to_string()))?;
    Ok(pid)
}

/// Sends SIGTERM to the pid in `pid_path` and waits up to 10 s for it to exit.
pub(crate) fn stop(service: &'static str, pid_path: &Path) -> Result<bool, StackError> {
    stop_within(service, pid_path, std::time::Duration::from_secs(10))
}

/// Sends SIGTERM to the pid in `pid_path` and waits up to `grace` for it to
/// exit; kills it (SIGKILL) after that. `false` when it was not running.
pub(crate) fn stop_within(
    service: &'static str,
    pid_path: &Path,
    grace: std::time::Duration,
) -> Result<bool, StackError> {
    let Some(pid) = running_pid(pid_path) else {
        let _ = std::fs::remove_file(pid_path);
        return Ok(false);
    };
    Command::new("kill").arg(pid.to_string()).status().map_err(|e| err(service, e.to_string()))?;
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if running_pid(pid_path).is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if running_pid(pid_path).is_some() {
        Command::new("kill").args(["-9", &pid.to_string()]).status().map_err(|e| err(service, e.to_string()))?;
    }
    let _ = std::fs::remove_file(pid_path);
    Ok(true)
}

/// Last lines of a log, for error messages.
pub(crate) fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) async fn port_open(port: u16) -> bool {
    tokio::time::timeout(std::time::Duration::from_millis(500), tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Installs `tool` from the Debian package `package` when it is not on PATH.
pub(crate) fn ensure_tool(service: &'static str, tool: &str, package: &str) -> Result<(), StackError> {
    if Command::new("which").arg(tool).output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    println!("{service}: `{tool}` missing, installing the Debian package {package}...");
    let script = format!("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}");
    let ok = Command::new("sh").args(["-c", &script]).status().is_ok_and(|s| s.success());
    if ok { Ok(()) } else { Err(err(service, format!("`{tool}` is missing and `apt-get install {package}` failed"))) }
}
