//! The ingestion API over real HTTP, with keys in PostgreSQL and Kafka behind it.

use lifecycle_connectors::http::auth::{ApiKeys, Role};
use lifecycle_jobs::workload::Workload;
use lifecycle_pipeline::Topic;
use serde_json::{Value, json};

use crate::common::{read_all, test_config};

pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) cfg: lifecycle_jobs::LifecycleConfig,
}

pub(crate) async fn start(name: &str, rpm: u32) -> Api {
    let (mut cfg, _) = test_config(name).await;
    cfg.ingest.requests_per_minute = rpm;
    start_with(cfg).await
}

/// Serves the REST API of `cfg` on a free port.
pub(crate) async fn start_with(cfg: lifecycle_jobs::LifecycleConfig) -> Api {
    let app = lifecycle_jobs::services::api_router(&cfg).await.expect("api");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Api { base, http: reqwest::Client::builder().no_proxy().build().expect("client"), cfg }
}

pub(crate) async fn key(cfg: &lifecycle_jobs::LifecycleConfig, role: Role) -> (uuid::Uuid, String) {
    let pool = lifecycle_connectors::postgres::connect(&cfg.postgres).await.expect("db");
    ApiKeys::create(&pool, "test", role).await.expect("key")
}

impl Api {
    pub(crate) async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        self.send(reqwest::Method::POST, path, key, body).await
    }

    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.expect("api reachable");
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, resp.json().await.unwrap_or(Value::Null), headers)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_accepted_rejected_and_limited_with_json_errors() {
    let api = start("api", 1000).await;
    let (_, operator) = key(&api.cfg, Role::Operator).await;
    let (_, analyst) = key(&api.cfg, Role::Analyst).await;
    let mut w = Workload::new(3, 10, "api", chrono::Utc::now());

    // One good event: 202 with its id, and it is on events.raw keyed by user.
    let mut good = w.next_event();
    good.as_object_mut().expect("object").remove("event_id");
    let (s, body, _) = api.post("/events", Some(&operator), good.to_string().into_bytes()).await;
    assert_eq!(s, 202, "{body}");
    let assigned = body["event_id"].as_str().expect("assigned id").to_owned();
    let raw = read_all(&api.cfg, Topic::EventsRaw);
    assert_eq!(raw.len(), 1);
    let on_topic: Value = serde_json::from_slice(&raw[0].3).expect("JSON on events.raw");
    assert_eq!(on_topic["event_id"], json!(assigned));
    assert_eq!(raw[0].2.as_deref(), Some(good["user_id"].as_str().expect("u").as_bytes()));

    // Bad input: 400 naming the field, for each kind of mistake.
    let mut wrong = w.next_event();
    wrong["timestamp"] = json!(true);
    let (s, body, _) = api.post("/events", Some(&operator), wrong.to_string().into_bytes()).await;
    assert_eq!(
        (s, body["code"].clone(), body["details"]["field"].clone()),
        (400, json!("wrong_type"), json!("timestamp")),
        "{body}"
    );
    let (s, body, _) = api.post("/events", Some(&operator), b"{\"user_id\": \"\xff\xfe\"}".to_vec()).await;
    assert_eq!(
        (s, body["code"].clone(), body["details"]["field"].clone()),
        (400, json!("invalid_json"), json!("body"))
    );
    let (s, body, _) = api.post("/events", Some(&operator), b"{\"event_id\": ".to_vec()).await;
    assert_eq!((s, body["code"].clone()), (400, json!("invalid_json")));
    // 10 MB: curl (Expect: 100-continue) sees the 413 before sending the body.
    let big = std::env::temp_dir().join(format!("lifecycle-10mb-{}", std::process::id()));
    std::fs::write(&big, vec![b' '; 10 * 1024 * 1024]).expect("write body");
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            &format!("authorization: Bearer {operator}"),
        ])
        // Wait for the server's early answer to `Expect: 100-continue` even under load.
        .args([
            "--expect100-timeout",
            "30",
            "--data-binary",
            &format!("@{}", big.display()),
            "-w",
            "\n%{http_code}",
            &format!("{}/events", api.base),
        ])
        .output()
        .expect("curl");
    let _ = std::fs::remove_file(&big);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    assert_eq!(status, "413", "{text}");
    assert_eq!(serde_json::from_str::<Value>(body).expect("JSON error body")["code"], json!("payload_too_large"));

    // Batch: per-item results, in order.
    let mut items: Vec<Value> = (0..5).map(|_| w.next_event()).collect();
    items[1]["event_type"] = json!("user.SignUp");
    items[3]["event_properties"] = json!({"order_id": 5});
    items[3]["event_type"] = json!("transaction.refund");
    let (s, body, _) =
        api.post("/events/batch", Some(&operator), json!({"events": items}).to_string().into_bytes()).await;
    assert_eq!((s, body["accepted"].clone(), body["rejected"].clone()), (202, json!(3), json!(2)), "{body}");
    assert_eq!(body["results"][1]["error"]["code"], json!("invalid_event_type"));
    assert_eq!(body["results"][3]["error"]["details"]["field"], json!("event_properties.order_id"));
    let too_many: Vec<Value> = (0..1001).map(|_| w.next_event()).collect();
    let (s, body, _) =
        api.post("/events/batch", Some(&operator), Value::Array(too_many).to_string().into_bytes()).await;
    assert_eq!((s, body["code"].clone()), (413, json!("batch_too_large")));
    let (s, body, _) = api.post("/events/batch", Some(&operator), b"{\"items\": []}".to_vec()).await;
    assert_eq!((s, body["details"]["field"].clone()), (400, json!("events")));
    assert_eq!(read_all(&api.cfg, Topic::EventsRaw).len(), 4, "only accepted events were produced");

    // Keys and roles.
    let (s, body, headers) = api.post("/events", None, good.to_string().into_bytes()).await;
    assert_eq!((s, body["code"].clone()), (401, json!("unauthorized")));
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(api.post("/events", Some("lck_0000"), good.to_string().into_bytes()).await.0, 401);
    let (s, body, _) = api.post("/events", Some(&analyst), good.to_string().into_bytes()).await;
    assert_eq!((s, body["code"].clone()), (403, json!("forbidden")));
    let resp = api.http.get(format!("{}/metrics", api.base)).send().await.expect("metrics");
    let text = resp.text().await.expect("text");
    assert!(text.contains("lifecycle_http_requests_total{method=\"POST\",route=\"/events\",status=\"202\"}"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hundred_and_first_request_in_a_minute_gets_429_with_retry_after() {
    let api = start("rate", 100).await;
    let (id, k) = key(&api.cfg, Role::Operator).await;
    let mut w = Workload::new(4, 10, "rate", chrono::Utc::now());
    for i in 0..100 {
        let (s, body, _) = api.post("/events", Some(&k), w.next_event().to_string().into_bytes()).await;
        assert_eq!(s, 202, "request {i}: {body}");
    }
    let (s, body, headers) = api.post("/events", Some(&k), w.next_event().to_string().into_bytes()).await;
    assert_eq!((s, body["code"].clone()), (429, json!("rate_limited")));
    let retry: u64 =
        headers.get("retry-after").expect("Retry-After").to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    // Another key is unaffected; a revoked key stops working (after the 10 s cache).
    let (_, other) = key(&api.cfg, Role::Operator).await;
    assert_eq!(api.post("/events", Some(&other), w.next_event().to_string().into_bytes()).await.0, 202);
    let pool = lifecycle_connectors::postgres::connect(&api.cfg.postgres).await.expect("db");
    assert!(ApiKeys::revoke(&pool, id).await.expect("revoke"));
}
