//! The REST API keeps its published contract, judged by a third party:
//! schemathesis generates requests from the served `/openapi.json` (valid and
//! schema-violating ones, plus stateful sequences along the document's links)
//! and checks every answer.

use std::process::Command;

use lifecycle_connectors::http::auth::Role;

use crate::common::{drop_clickhouse_db, drop_database, own_analytics, own_database, test_config};
use crate::ingest_api::{key, start_with};

/// The checks the API must pass: no 5xx on any input, every violation of the
/// document refused, every status, content type and body as documented, and
/// what a link says exists is there (deleted is gone).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,negative_data_rejection,use_after_free,\
                      ensure_resource_availability";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_no_accepted_violation_and_no_answer_off_the_document() {
    let (mut cfg, _) = test_config("contract").await;
    // Its own database: the fuzzer creates segments and triggers, which are global.
    let _pool = own_database(&mut cfg).await;
    // And a ClickHouse database nothing has created tables in: the API must
    // answer `/analytics` on a fresh stack (it applies the migrations itself).
    own_analytics(&mut cfg);
    cfg.ingest.requests_per_minute = 1_000_000;
    let api = start_with(cfg.clone()).await;
    let (_, admin) = key(&cfg, Role::Admin).await;
    let st = lifecycle_jobs::stack::python::python(&cfg.stack).with_file_name("schemathesis");
    let seed = std::env::var("LIFECYCLE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261201".into());
    let examples = std::env::var("LIFECYCLE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "30".into());
    let args = [
        "run".to_owned(),
        format!("{}/openapi.json", api.base),
        "--header".into(),
        format!("Authorization: Bearer {admin}"),
        "--generation-with-security-parameters".into(),
        "false".into(),
        "--checks".into(),
        CHECKS.into(),
        "--max-examples".into(),
        examples,
        "--seed".into(),
        seed.clone(),
        "--generation-database".into(),
        "none".into(),
        "--workers".into(),
        "2".into(),
        "--request-timeout".into(),
        "30".into(),
        "--no-color".into(),
    ];
    // Its working directory gets a `.schemathesis` folder: a temporary one, not the checkout.
    let dir = std::env::temp_dir();
    let out = tokio::task::spawn_blocking(move || Command::new(&st).args(&args).current_dir(dir).output())
        .await
        .expect("join")
        .expect("schemathesis runs (the stack's Python environment installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    drop_database(&cfg).await;
    drop_clickhouse_db(&cfg).await;
    assert!(out.status.success(), "schemathesis (seed {seed}) found problems:\n{text}");
    // A run that tested nothing would also exit 0.
    let tested = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .expect("schemathesis reports how many operations it tested");
    assert!(tested >= 45, "schemathesis tested only {tested} operations:\n{text}");
    assert!(!text.contains("FAILURES"), "schemathesis listed failures:\n{text}");
}
