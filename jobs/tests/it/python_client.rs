//! Confluent's Python client (confluent-kafka 2.16, from the venv `stack up`
//! creates) against the registry, the broker and the stage's output.

use std::process::Command;

use serde_json::Value;

use crate::common::{run_stage_until, test_config};

fn python(args: &[&str]) -> Value {
    let cfg = lifecycle_jobs::LifecycleConfig::default();
    let py = lifecycle_jobs::stack::python::python(&cfg.stack);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/confluent_compat.py");
    let out = Command::new(&py)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run `lifecycle stack up`)", py.display()));
    assert!(out.status.success(), "python {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_python_client_produces_and_consumes_through_the_stage() {
    let (cfg, _) = test_config("py").await;
    let envelope = lifecycle_schemas::files::default_dir().join("envelope.avsc");
    let prefix = cfg.topics.prefix.clone();
    let (boot, reg) = (cfg.kafka.bootstrap_servers.clone(), cfg.registry_url.clone());
    let produced = {
        let (boot, reg, prefix, envelope) = (boot.clone(), reg.clone(), prefix.clone(), envelope.display().to_string());
        tokio::task::spawn_blocking(move || python(&["produce", &boot, &reg, &prefix, &envelope, "40"]))
            .await
            .expect("join")
    };
    let mut ids: Vec<String> =
        produced["produced"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()).collect();
    assert_eq!(ids.len(), 40);

    let handle = run_stage_until(&cfg, 40, 60).await;
    assert_eq!(handle.counts(), (40, 40, 0), "AvroSerializer output is valid");

    let consumed =
        tokio::task::spawn_blocking(move || python(&["consume", &boot, &reg, &prefix, "40"])).await.expect("join");
    let mut seen: Vec<String> =
        consumed["consumed"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()).collect();
    ids.sort();
    seen.sort();
    assert_eq!(seen, ids, "AvroDeserializer reads every event from events.valid");
}
