//! The schema registry against Confluent's documented contract, and with the
//! third-party schema_registry_converter crate as producer and consumer.

use apache_avro::types::Value as Avro;
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_jobs::workload::{Workload, avro_record};
use lifecycle_pipeline::Topic;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde_json::{Value, json};

use crate::common::{read_all, run_stage_until, test_config};

const BASE: &str = "http://127.0.0.1:8081";

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

async fn call(method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http().request(method, format!("{BASE}{path}"));
    if let Some(b) = body {
        req = req.header("content-type", "application/vnd.schemaregistry.v1+json").body(b.to_string());
    }
    let resp = req.send().await.expect("registry reachable");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn record(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"T","namespace":"t","fields":[{fields}]}}"#)
}

#[tokio::test]
async fn confluent_status_codes_and_compatibility() {
    use reqwest::Method as M;
    let subject = format!("t-compat-{}-value", uuid::Uuid::new_v4().simple());
    let v1 = record(r#"{"name":"a","type":"string"}"#);
    let v2 = record(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
    let bad = record(r#"{"name":"a","type":"string"},{"name":"c","type":"int"}"#);

    assert_eq!(
        call(M::GET, &format!("/subjects/{subject}/versions"), None).await,
        (404, json!({"error_code": 40401, "message": format!("Subject '{subject}' not found.")}))
    );
    assert_eq!(call(M::GET, "/schemas/ids/2000000000", None).await.1["error_code"], 40403);
    let (s, body) = call(
        M::POST,
        &format!("/subjects/{subject}/versions?normalize=False"),
        Some(json!({"schema": "{\"type\":\"nope\"}", "schemaType": "AVRO", "references": []})),
    )
    .await;
    assert_eq!((s, body["error_code"].clone()), (422, json!(42201)));

    let (s, id1) = call(M::POST, &format!("/subjects/{subject}/versions"), Some(json!({"schema": v1}))).await;
    assert_eq!(s, 200, "{id1}");
    // Same schema, other formatting: same id, no new version.
    let spaced = v1.replace(',', ", ");
    assert_eq!(call(M::POST, &format!("/subjects/{subject}/versions"), Some(json!({"schema": spaced}))).await.1, id1);
    let (s, id2) = call(M::POST, &format!("/subjects/{subject}/versions"), Some(json!({"schema": v2}))).await;
    assert_eq!(s, 200);
    assert_ne!(id1, id2);
    let (s, body) = call(M::POST, &format!("/subjects/{subject}/versions"), Some(json!({"schema": bad}))).await;
    assert_eq!((s, body["error_code"].clone()), (409, json!(409)), "{body}");

    let (s, c) = call(
        M::POST,
        &format!("/compatibility/subjects/{subject}/versions/latest?verbose=True"),
        Some(json!({"schema": bad})),
    )
    .await;
    assert_eq!((s, c["is_compatible"].clone()), (200, json!(false)));
    assert!(!c["messages"].as_array().expect("messages").is_empty());
    assert_eq!(
        call(M::POST, &format!("/compatibility/subjects/{subject}/versions/latest"), Some(json!({"schema": v2})))
            .await
            .1,
        json!({"is_compatible": true})
    );

    assert_eq!(call(M::GET, &format!("/subjects/{subject}/versions"), None).await.1, json!([1, 2]));
    let (_, latest) = call(M::GET, &format!("/subjects/{subject}/versions/latest"), None).await;
    assert_eq!(
        (latest["version"].clone(), latest["id"].clone(), latest["subject"].clone()),
        (json!(2), id2["id"].clone(), json!(subject))
    );
    assert_eq!(call(M::GET, &format!("/subjects/{subject}/versions/7"), None).await.1["error_code"], 40402);
    assert_eq!(call(M::GET, &format!("/subjects/{subject}/versions/abc"), None).await.1["error_code"], 42202);
    let (_, by_id) = call(M::GET, &format!("/schemas/ids/{}?subject={subject}", id1["id"]), None).await;
    assert_eq!(by_id["schema"], json!(v1));
    let (s, found) =
        call(M::POST, &format!("/subjects/{subject}?normalize=False&deleted=False"), Some(json!({"schema": v2}))).await;
    assert_eq!((s, found["version"].clone()), (200, json!(2)));
    assert_eq!(
        call(M::POST, &format!("/subjects/{subject}"), Some(json!({"schema": bad}))).await.1["error_code"],
        40403
    );

    // Per-subject level: NONE lets the incompatible schema in.
    assert_eq!(call(M::GET, &format!("/config/{subject}"), None).await.1["error_code"], 40408);
    assert_eq!(
        call(M::PUT, &format!("/config/{subject}"), Some(json!({"compatibility": "NONE"}))).await,
        (200, json!({"compatibility": "NONE"}))
    );
    assert_eq!(call(M::GET, &format!("/config/{subject}"), None).await.1, json!({"compatibilityLevel": "NONE"}));
    assert_eq!(call(M::POST, &format!("/subjects/{subject}/versions"), Some(json!({"schema": bad}))).await.0, 200);
    assert_eq!(
        call(M::PUT, &format!("/config/{subject}"), Some(json!({"compatibility": "SIDEWAYS"}))).await.1["error_code"],
        42203
    );
    assert_eq!(call(M::GET, "/config", None).await.1, json!({"compatibilityLevel": "BACKWARD"}));

    // Soft delete hides versions; ids stay resolvable; permanent delete after soft delete.
    assert_eq!(call(M::DELETE, &format!("/subjects/{subject}"), None).await.1, json!([1, 2, 3]));
    assert_eq!(call(M::GET, &format!("/subjects/{subject}/versions"), None).await.1["error_code"], 40401);
    assert_eq!(call(M::GET, &format!("/schemas/ids/{}", id1["id"]), None).await.0, 200);
    assert_eq!(call(M::DELETE, &format!("/subjects/{subject}?permanent=true"), None).await.1, json!([1, 2, 3]));
    // Unknown routes (e.g. the Python client's /associations probe) are a JSON 404.
    assert_eq!(call(M::GET, "/associations/resources/-/x?resourceType=topic", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_registry_converter_produces_and_consumes_through_the_stage() {
    let (cfg, _) = test_config("src").await;
    let sr = SrSettings::new_builder(BASE.to_string()).no_proxy().build().expect("settings");
    let encoder = AvroEncoder::new(sr.clone());
    let files = lifecycle_schemas::SchemaFiles::load(&lifecycle_schemas::files::default_dir()).expect("files");
    // The converter registers the envelope itself (TopicNameStrategy, POST .../versions).
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        cfg.topics.name(Topic::EventsRaw),
        false,
        SuppliedSchema::new(Some("io.lifecycle.events.Event".into()), SchemaType::Avro, files.envelope.clone()),
    );
    let mut w = Workload::new(5, 20, "src", chrono::Utc::now());
    let mut records = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..50 {
        let e = w.next_event();
        let fields = avro_record(&e);
        let bytes = encoder
            .encode(fields.iter().map(|(k, v)| (k.as_str(), v.clone())).collect(), strategy.clone())
            .await
            .expect("schema_registry_converter encodes against our registry");
        ids.push(e["event_id"].as_str().expect("id").to_owned());
        records.push(OutRecord {
            topic: cfg.topics.name(Topic::EventsRaw),
            key: Some(e["user_id"].as_str().expect("u").as_bytes().to_vec()),
            payload: bytes,
            headers: vec![],
        });
    }
    KafkaSink::new(&cfg.kafka).expect("producer").send_all(&records).await.expect("produce");

    let handle = run_stage_until(&cfg, 50, 60).await;
    assert_eq!(handle.counts(), (50, 50, 0), "third-party Avro is valid");

    // And the converter's decoder reads what the stage wrote to events.valid.
    let decoder = AvroDecoder::new(sr);
    let mut seen = Vec::new();
    for (_, _, _, payload) in read_all(&cfg, Topic::EventsValid) {
        let decoded = decoder.decode(Some(&payload)).await.expect("schema_registry_converter decodes events.valid");
        let Avro::Record(fields) = decoded.value else { panic!("record expected") };
        let id = fields.iter().find(|(k, _)| k == "event_id").map(|(_, v)| v.clone());
        let Some(Avro::String(id)) = id else { panic!("event_id field") };
        seen.push(id);
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
}
