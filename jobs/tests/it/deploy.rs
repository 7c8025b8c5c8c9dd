//! deploy/kubernetes validated offline (no cluster runs here): every resource
//! against Kubernetes' schemas and the CRDs of KEDA, Strimzi and CloudNativePG,
//! by deploy/kubernetes/validate.mjs; then what the manifests give the binary
//! (the ConfigMap's lifecycle.toml, each workload's LIFECYCLE_* variables and
//! the Secret's) must load as its configuration, and the KafkaTopics must match
//! the topics that configuration declares.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use lifecycle_jobs::LifecycleConfig;
use lifecycle_pipeline::Topic;
use serde_json::Value;

#[test]
fn kubernetes_manifests_validate_and_their_configuration_is_the_binarys() {
    let stack = LifecycleConfig::default().stack;
    let node_dir = lifecycle_jobs::stack::node::dir(&stack);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifests = repo.join("deploy/kubernetes");
    // The validator resolves its packages from the folder it runs in.
    std::fs::copy(manifests.join("validate.mjs"), node_dir.join("validate.mjs")).unwrap_or_else(|e| {
        panic!("{}: {e} (run `lifecycle stack up`, which installs the validator's packages)", node_dir.display())
    });
    let out = Command::new("node").arg(node_dir.join("validate.mjs")).arg(&manifests).output().expect("node");
    assert!(out.status.success(), "validator failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["errors"], Value::Array(vec![]), "manifests invalid");
    let kinds: Vec<&str> =
        report["resources"].as_array().expect("resources").iter().filter_map(|r| r["kind"].as_str()).collect();
    for kind in [
        "Deployment",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "Cluster",
        "ConfigMap",
        "Secret",
    ] {
        assert!(kinds.contains(&kind), "a {kind} in deploy/kubernetes");
    }

    // The configuration every workload starts with loads, with its variables and the Secret's.
    let dir = std::env::temp_dir().join(format!("lifecycle-deploy-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("lifecycle.toml");
    std::fs::write(&config, report["config"].as_str().expect("lifecycle.toml in a ConfigMap")).expect("write");
    let secret: BTreeMap<String, String> = serde_json::from_value(report["secret"].clone()).expect("secret");
    assert!(secret.keys().all(|k| k.starts_with("LIFECYCLE_")), "{secret:?}");
    let workloads = report["workloads"].as_array().expect("workloads");
    let ours: Vec<&Value> =
        workloads.iter().filter(|w| w["name"].as_str().is_some_and(|n| n.starts_with("lifecycle-"))).collect();
    assert_eq!(ours.len(), 6, "validate, profile, analytics, workflows, api, registry");
    let mut cfg = None;
    for w in &ours {
        let env: BTreeMap<String, String> = serde_json::from_value(w["env"].clone()).expect("env");
        let vars =
            env.iter().chain(&secret).filter(|(k, _)| k.starts_with("LIFECYCLE_")).map(|(k, v)| (k.clone(), v.clone()));
        let loaded = LifecycleConfig::load_with_env(Some(&config), vars)
            .unwrap_or_else(|e| panic!("{}: the binary refuses its configuration: {e}", w["name"]));
        // Probes and ports are the ones the binary serves.
        let port = w["ports"][0].as_u64().expect("port");
        let probes: Vec<&str> = w["probes"].as_array().expect("probes").iter().filter_map(Value::as_str).collect();
        match w["args"].as_array().and_then(|a| a.get(1)).and_then(Value::as_str) {
            Some(stage @ ("validate" | "profile" | "analytics" | "workflows")) => {
                let addr = match stage {
                    "validate" => loaded.validate.metrics_addr,
                    "profile" => loaded.profile.metrics_addr,
                    "analytics" => loaded.analytics.metrics_addr,
                    _ => loaded.workflows.metrics_addr,
                };
                assert_eq!(addr.map(|a| u64::from(a.port())), Some(port), "{stage}: metrics port");
                assert!(probes.iter().all(|p| ["/livez", "/readyz", "/healthz"].contains(p)), "{probes:?}");
                if stage == "validate" {
                    assert_eq!(
                        loaded.validate.instance_id.as_deref(),
                        Some("lifecycle-validate-0"),
                        "instance id from the pod name"
                    );
                }
            }
            Some("ingest") => assert_eq!(u64::from(loaded.ingest.listen_addr.port()), port),
            _ => assert_eq!(u64::from(loaded.registry.listen_addr.port()), port, "registry"),
        }
        cfg = Some(loaded);
    }
    let cfg = cfg.expect("a configuration");

    // The KafkaTopics are the topics that configuration declares.
    let topics = report["topics"].as_array().expect("topics");
    assert_eq!(topics.len(), Topic::ALL.len());
    for t in Topic::ALL {
        let d = cfg.topics.declaration(t);
        let k = topics
            .iter()
            .find(|k| k["name"] == Value::String(d.name.clone()))
            .unwrap_or_else(|| panic!("KafkaTopic {}", d.name));
        assert_eq!(k["partitions"].as_u64(), Some(u64::from(d.partitions)), "{}", d.name);
        assert_eq!(k["replicas"].as_u64(), Some(u64::from(d.replication_factor)), "{}", d.name);
        for (key, value) in &d.configs {
            assert_eq!(k["config"][key].as_str(), Some(value.as_str()), "{} {key}", d.name);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
