//! Node packages the tests run (offline validation of the Kubernetes manifests
//! in deploy/kubernetes), installed with npm into the stack's cache.

use std::path::PathBuf;
use std::process::Command;

use super::{StackConfig, StackError, err};

/// Packages installed (pinned): Kubernetes' schemas and those of the CRDs the
/// manifests use, and a YAML parser.
pub const PACKAGES: &[&str] = &[
    "kubernetes-models@5.1.0",
    "@kubernetes-models/keda@2.0.0",
    "@kubernetes-models/strimzi-kafka-operator@1.0.1",
    "@kubernetes-models/cloudnative-pg@2.0.0",
    "yaml@2.9.1",
];

/// The folder whose `node_modules` holds [`PACKAGES`].
pub fn dir(s: &StackConfig) -> PathBuf {
    s.cache_dir.join("node")
}

pub(super) fn up(s: &StackConfig) -> Result<(), StackError> {
    let dir = dir(s);
    let marker = dir.join(".lifecycle-packages");
    let wanted = PACKAGES.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(());
    }
    super::proc::ensure_tool("node", "npm", "npm")?;
    std::fs::create_dir_all(&dir).map_err(|e| err("node", e.to_string()))?;
    println!("node: installing {} into {} ...", PACKAGES.join(", "), dir.display());
    let out = Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .args(PACKAGES)
        .output()
        .map_err(|e| err("node", format!("npm: {e}")))?;
    if !out.status.success() {
        return Err(err("node", format!("npm install failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    std::fs::write(&marker, wanted).map_err(|e| err("node", e.to_string()))?;
    Ok(())
}
