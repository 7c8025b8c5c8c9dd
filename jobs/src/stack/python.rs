//! A Python environment with Confluent's client, chdb-core (ClickHouse 26.9
//! in-process) and schemathesis (the OpenAPI contract fuzzer), for
//! compatibility tests (and the Python peer in benchmarks), cached under the
//! stack's cache directory.

use std::path::PathBuf;
use std::process::Command;

use super::{StackConfig, StackError, err};

/// Packages installed into the venv (pinned).
/// The `[avro,schemaregistry]` extras are spelled out: the extra pins a certifi
/// newer than some mirrors carry.
pub const PACKAGES: &[&str] = &[
    "confluent-kafka==2.16.1",
    "fastavro==1.13.1",
    "httpx",
    "attrs",
    "cachetools",
    "authlib",
    "chdb-core==26.9.0",
    "schemathesis==4.32.5",
];

/// The venv's python.
pub fn python(s: &StackConfig) -> PathBuf {
    s.cache_dir.join("python-venv/bin/python")
}

pub(super) fn up(s: &StackConfig) -> Result<(), StackError> {
    let venv = s.cache_dir.join("python-venv");
    let marker = venv.join(".lifecycle-packages");
    let wanted = PACKAGES.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) && python(s).is_file() {
        return Ok(());
    }
    println!("python: creating {} with {} ...", venv.display(), PACKAGES.join(", "));
    let run = |cmd: &mut Command, what: &str| -> Result<(), StackError> {
        let out = cmd.output().map_err(|e| err("python", format!("{what}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(err("python", format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr))))
        }
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv")?;
    run(Command::new(python(s)).args(["-m", "pip", "install", "-q"]).args(PACKAGES), "pip install")?;
    std::fs::write(&marker, wanted).map_err(|e| err("python", e.to_string()))?;
    println!("python: ready");
    Ok(())
}
