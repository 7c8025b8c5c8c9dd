//! The licence policy in deny.toml refuses what the project must not link:
//! `cargo deny` on a throwaway crate that depends on an AGPL (then GPL, SSPL,
//! BUSL) crate fails naming it, and passes with an MIT one.

use std::path::Path;
use std::process::Command;

fn probe(dir: &Path, licence: &str) -> (bool, String) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("src")).expect("dir");
    std::fs::create_dir_all(dir.join("dep/src")).expect("dir");
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"probe\"\nversion = \"0.1.0\"\nedition = \"2024\"\nlicense = \"Apache-2.0\"\npublish = false\n\n\
         [dependencies]\nlinked = { path = \"dep\", version = \"0.1\" }\n\n[workspace]\n",
    )
    .expect("write");
    std::fs::write(dir.join("src/lib.rs"), "").expect("write");
    std::fs::write(
        dir.join("dep/Cargo.toml"),
        format!("[package]\nname = \"linked\"\nversion = \"0.1.0\"\nedition = \"2024\"\nlicense = \"{licence}\"\n"),
    )
    .expect("write");
    std::fs::write(dir.join("dep/src/lib.rs"), "").expect("write");
    let deny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deny.toml");
    let out = Command::new("cargo")
        .args(["deny", "--offline", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--config")
        .arg(&deny)
        .args(["check", "licenses", "bans"])
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo deny (the README's test command installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("no such command"), "cargo-deny is not installed; the README's test command installs it");
    (out.status.success(), text)
}

#[test]
fn the_licence_policy_refuses_copyleft_and_source_available_licences() {
    let dir = std::env::temp_dir().join(format!("lifecycle-deny-{}", std::process::id()));
    for licence in ["AGPL-3.0-only", "AGPL-3.0-or-later", "GPL-3.0-only", "SSPL-1.0", "BUSL-1.1"] {
        let (ok, text) = probe(&dir, licence);
        assert!(!ok, "{licence} is refused: {text}");
        assert!(text.contains("rejected") && text.contains(licence), "{licence}: {text}");
    }
    let (ok, text) = probe(&dir, "MIT");
    assert!(ok, "MIT passes: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}
