//! A planted secret never reaches output: every command's `--help`, the
//! configuration dump, and the logs of stages and services that fail because
//! of the very credentials planted (Kafka SASL against a plaintext broker,
//! a ClickHouse password the server does not have), at debug level.

use std::process::Stdio;
use std::time::Duration;

use crate::common::test_config;

const PLANTED: &str = "PLANTED";

/// Runs the binary with `args` for at most `secs`, then kills it; stdout and stderr.
async fn output(config: &std::path::Path, args: &[&str], secs: u64) -> String {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lifecycle"))
        .args(args)
        .env("LIFECYCLE_CONFIG", config)
        .env("LIFECYCLE_KAFKA__PROPERTIES__SASL_PASSWORD", "PLANTED-env-sasl")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn lifecycle");
    let (mut out, mut err) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let read = async move {
        use tokio::io::AsyncReadExt;
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let _ = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e));
        (o, e)
    };
    let reading = tokio::spawn(read);
    if tokio::time::timeout(Duration::from_secs(secs), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
    let (o, e) = reading.await.expect("read output");
    format!("{}{}", String::from_utf8_lossy(&o), String::from_utf8_lossy(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_secret_appears_in_no_help_dump_or_log() {
    let (mut cfg, _) = test_config("secrets").await;
    cfg.postgres.url = "postgres://lifecycle:PLANTED-pg@127.0.0.1:5432/lifecycle".into();
    cfg.registry.postgres.url = "postgres://lifecycle:PLANTED-reg-pg@127.0.0.1:5432/schema_registry".into();
    cfg.registry.listen_addr = "127.0.0.1:0".parse().expect("addr");
    cfg.registry_url = "http://svc:PLANTED-registry@127.0.0.1:8081".into();
    cfg.clickhouse.password = Some("PLANTED-ch".into());
    cfg.workflows.signing_secret = "PLANTED-signing".into();
    cfg.ingest.listen_addr = "127.0.0.1:0".parse().expect("addr");
    for c in [&mut cfg.validate.metrics_addr, &mut cfg.profile.metrics_addr, &mut cfg.workflows.metrics_addr] {
        *c = None;
    }
    cfg.analytics.metrics_addr = None;
    let dir = std::env::temp_dir().join(format!("lifecycle-{}", cfg.validate.group_id));
    std::fs::create_dir_all(&dir).expect("dir");
    // Three ways to fail: SASL against a plaintext broker; a TLS key password
    // this build refuses (librdkafka's error repeats the value); and a working
    // broker with a ClickHouse password the server does not have.
    let write = |name: &str, props: &[(&str, &str)]| {
        let mut c = cfg.clone();
        for (k, v) in props {
            c.kafka.properties.insert((*k).into(), (*v).into());
        }
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&c).expect("toml")).expect("write config");
        path
    };
    let sasl = write(
        "sasl",
        &[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanisms", "PLAIN"),
            ("sasl.username", "svc"),
            ("sasl.password", "PLANTED-sasl"),
            ("debug", "security,broker,conf"),
        ],
    );
    let tls = write("tls", &[("ssl.key.password", "PLANTED-tls")]);
    let ch = write("clickhouse", &[]);

    let mut runs: Vec<(&std::path::Path, Vec<&str>, u64)> = vec![
        (&sasl, vec!["--help"], 10),
        (&sasl, vec!["--version"], 10),
        (&sasl, vec!["api-key", "list"], 30),
        (&sasl, vec!["stack", "status"], 30),
        (&sasl, vec!["registry"], 8),
    ];
    for sub in ["stack", "run", "registry", "demo", "topics", "config", "api-key"] {
        runs.push((&sasl, vec![sub, "--help"], 10));
    }
    for sub in ["create", "rotate", "list", "revoke"] {
        runs.push((&sasl, vec!["api-key", sub, "--help"], 10));
    }
    for config in [&sasl, &tls, &ch] {
        runs.push((config, vec!["config"], 10));
        runs.push((config, vec!["topics", "check"], 20));
        for stage in ["validate", "analytics", "workflows", "ingest"] {
            runs.push((config, vec!["run", stage], 12));
        }
    }
    let outputs = futures::future::join_all(runs.iter().map(|(config, args, secs)| output(config, args, *secs))).await;
    let mut total = 0;
    for ((_, args, _), out) in runs.iter().zip(&outputs) {
        total += out.len();
        if let Some(at) = out.find(PLANTED) {
            let from = at.saturating_sub(200);
            panic!(
                "`lifecycle {}` printed a planted secret: ...{}...",
                args.join(" "),
                &out[from..(at + 60).min(out.len())]
            );
        }
    }
    let of = |config: &std::path::Path, args: &[&str]| {
        &outputs[runs.iter().position(|(c, a, _)| *c == config && a == args).expect("ran")]
    };
    // The checks looked at something: the dump shows the redacted values, and
    // the failing stages said why they fail.
    let dump = of(&sasl, &["config"]);
    assert!(dump.contains("\"sasl.password\" = \"***\"") && dump.contains("signing_secret = \"***\""), "{dump}");
    assert!(dump.contains("postgres://lifecycle:***@127.0.0.1:5432/lifecycle"), "{dump}");
    assert!(of(&sasl, &["run", "validate"]).contains("error: checking topics"), "{}", of(&sasl, &["run", "validate"]));
    let refused = of(&tls, &["run", "validate"]);
    assert!(refused.contains("ssl.key.password") && refused.contains("***"), "{refused}");
    let analytics = of(&ch, &["run", "analytics"]);
    assert!(analytics.contains("ClickHouse migrations failed"), "{analytics}");
    eprintln!("secrets test: {} commands, {total} bytes of output, no planted secret", runs.len());
}
