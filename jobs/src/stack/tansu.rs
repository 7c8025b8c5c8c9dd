//! The tansu broker: built once into the cache, run with sqlite storage.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::proc::{log_file, pid_file, port_open, running_pid, spawn_detached, stop, tail};
use super::{ServiceStatus, StackConfig, StackError, err, wait_for};

fn binary(s: &StackConfig) -> PathBuf {
    s.cache_dir.join(format!("tansu-{}", s.tansu_version)).join("bin/tansu")
}

/// Builds tansu into the cache unless it is there.
fn install(s: &StackConfig) -> Result<PathBuf, StackError> {
    let bin = binary(s);
    if bin.is_file() {
        return Ok(bin);
    }
    let root = s.cache_dir.join(format!("tansu-{}", s.tansu_version));
    println!(
        "tansu: building {} into {} (first time only, about 11 minutes on 2 cores)...",
        s.tansu_version,
        root.display()
    );
    let status = Command::new("cargo")
        .args(["install", "tansu", "--version", &s.tansu_version, "--locked", "--features", "libsql", "--root"])
        .arg(&root)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .map_err(|e| err("tansu", format!("cargo install: {e}")))?;
    if !status.success() || !bin.is_file() {
        return Err(err("tansu", format!("cargo install tansu failed ({status})")));
    }
    Ok(bin)
}

/// Indexes tansu 0.6's sqlite schema lacks. The broker itself stays unmodified.
/// - `header (topition, offset_id)`: the fetch path runs `header_fetch.sql` once
///   per record; without it each fetched record scans every header ever written,
///   so consumption slows to a few hundred records/s as the store grows.
/// - `record (topition, k, offset_id)`: the maintenance task (at start, then every
///   10 minutes) compacts `cleanup.policy=compact` topics by looking up, for each
///   key with several records, that key's older records. Without it each lookup
///   scans the whole partition: with 82,000 records under 38,000 keys in
///   `profiles.changelog` the pass took 3 min 47 s, holding the store's write lock
///   so produce and topic creation timed out; with it, 0.08 s.
const INDEXES: &str = "\
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=60)
c.execute('create index if not exists lifecycle_header_topition_offset on header (topition, offset_id)')
c.execute('create index if not exists lifecycle_watermark_topition on watermark (topition)')
c.execute('create index if not exists lifecycle_record_topition_key_offset on record (topition, k, offset_id)')
c.commit()
";

/// Adds [`INDEXES`] to the store; `false` when there is no store yet.
fn add_indexes(s: &StackConfig) -> Result<bool, StackError> {
    let db = s.data_dir.join("tansu").join("tansu.db");
    if !db.is_file() {
        return Ok(false);
    }
    let out = Command::new("python3")
        .args(["-c", INDEXES])
        .arg(&db)
        .output()
        .map_err(|e| err("tansu", format!("python3 (to index the sqlite store): {e}")))?;
    if !out.status.success() {
        return Err(err("tansu", format!("indexing {}: {}", db.display(), String::from_utf8_lossy(&out.stderr))));
    }
    Ok(true)
}

/// The maintenance interval, in minutes, tansu is started with (tansu needs at least 1).
fn maintenance_minutes(s: &StackConfig) -> u64 {
    s.tansu_maintenance_minutes.max(1)
}

/// The maintenance interval, in minutes, the running broker was started with
/// (`None` when it was not started by this project or predates the setting).
pub(super) fn running_maintenance_minutes(s: &StackConfig) -> Option<u64> {
    let pid = running_pid(&pid_file(s, "tansu"))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    maintenance_minutes_in(&String::from_utf8_lossy(&cmdline))
}

/// The `maintenance_interval=<N>m` of a broker's command line (`/proc/<pid>/cmdline`).
fn maintenance_minutes_in(cmdline: &str) -> Option<u64> {
    let (_, rest) = cmdline.split_once("maintenance_interval=")?;
    rest.split(['\0', '&']).next()?.strip_suffix('m')?.parse().ok()
}

pub(super) async fn up(s: &StackConfig) -> Result<(), StackError> {
    if port_open(s.kafka_port).await {
        add_indexes(s)?;
        println!("kafka (tansu): already answering on 127.0.0.1:{}", s.kafka_port);
        if let Some(running) = running_maintenance_minutes(s).filter(|&m| m != maintenance_minutes(s)) {
            println!(
                "kafka (tansu): note: it runs maintenance every {running} min, the configuration says {}; \
                 `stack down` then `stack up` to apply",
                maintenance_minutes(s)
            );
        }
        return Ok(());
    }
    let bin = install(s)?;
    let dir = s.data_dir.join("tansu");
    std::fs::create_dir_all(&dir).map_err(|e| err("tansu", e.to_string()))?;
    // Before the broker starts: its first maintenance pass runs at once and, on an
    // unindexed store, holds the write lock for minutes. A new store is indexed
    // once the broker has created it.
    let indexed = add_indexes(s)?;
    let url = format!("tcp://127.0.0.1:{}", s.kafka_port);
    let mut cmd = Command::new(&bin);
    cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine"])
        // tansu resolves the sqlite path against its working directory.
        .arg(format!("sqlite://tansu.db?maintenance_interval={}m", maintenance_minutes(s)))
        .env("RUST_LOG", "warn")
        .current_dir(&dir);
    let log = log_file(s, "tansu");
    let pid = spawn_detached("tansu", cmd, &log, &pid_file(s, "tansu"))?;
    let port = s.kafka_port;
    let pid_path = pid_file(s, "tansu");
    let alive_or_open = || async { port_open(port).await || running_pid(&pid_path).is_none() };
    if !wait_for(Duration::from_secs(30), alive_or_open).await || !port_open(port).await {
        return Err(err("tansu", format!("not listening after 30 s; log {}:\n{}", log.display(), tail(&log, 20))));
    }
    if !indexed {
        add_indexes(s)?;
    }
    println!(
        "kafka (tansu {}): started, pid {pid}, 127.0.0.1:{port}, data {}, maintenance every {} min",
        s.tansu_version,
        dir.display(),
        maintenance_minutes(s)
    );
    Ok(())
}

pub(super) fn down(s: &StackConfig) -> Result<(), StackError> {
    if stop("tansu", &pid_file(s, "tansu"))? {
        println!("kafka (tansu): stopped");
    }
    Ok(())
}

pub(super) async fn status(s: &StackConfig) -> ServiceStatus {
    let pid = running_pid(&pid_file(s, "tansu"));
    ServiceStatus {
        name: "kafka (tansu)",
        addr: format!("127.0.0.1:{}", s.kafka_port),
        up: port_open(s.kafka_port).await,
        detail: pid.map_or_else(
            || "not started by this project".into(),
            |p| format!("pid {p}, log {}", log_file(s, "tansu").display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::maintenance_minutes_in;

    #[test]
    fn the_running_maintenance_interval_is_read_from_the_command_line() {
        let line = "tansu\0broker\0--storage-engine\0sqlite://tansu.db?maintenance_interval=1440m\0";
        assert_eq!(maintenance_minutes_in(line), Some(1440));
        assert_eq!(maintenance_minutes_in("tansu\0sqlite://tansu.db?maintenance_interval=10m&x=1"), Some(10));
        assert_eq!(maintenance_minutes_in("tansu\0broker\0--storage-engine\0sqlite://tansu.db\0"), None);
        assert_eq!(maintenance_minutes_in("tansu\0sqlite://tansu.db?maintenance_interval=1h\0"), None);
    }
}
