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
    assert_eq!((s, body["code"].clone()), (400, json!("batch_too_large")));
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
    // Another key is unaffected; a revoked key stops working at once.
    let (other_id, other) = key(&api.cfg, Role::Operator).await;
    assert_eq!(api.post("/events", Some(&other), w.next_event().to_string().into_bytes()).await.0, 202);
    let pool = lifecycle_connectors::postgres::connect(&api.cfg.postgres).await.expect("db");
    assert!(ApiKeys::revoke(&pool, id).await.expect("revoke"));
    assert!(ApiKeys::revoke(&pool, other_id).await.expect("revoke"));
    assert_eq!(api.post("/events", Some(&other), w.next_event().to_string().into_bytes()).await.0, 401);
}

/// Two API instances on one database: one key's limit holds for both together,
/// and a revocation, a rotation's end and an expiry take effect on the other
/// instance from its very next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_limit_and_refuse_revoked_rotated_and_expired_keys_at_once() {
    use futures::StreamExt;
    let a = start("rate2", 100).await;
    let b = start_with(a.cfg.clone()).await;
    let (_, admin) = key(&a.cfg, Role::Admin).await;

    // 160 requests with one key, alternating instances, 8 in flight at a time.
    let (limited_id, k) = key(&a.cfg, Role::Analyst).await;
    let answers: Vec<(u16, Option<u64>)> = futures::stream::iter(0..160)
        .map(|i| {
            let (api, k) = (if i % 2 == 0 { &a } else { &b }, &k);
            async move {
                let (s, _, h) = api.send(reqwest::Method::GET, "/workflows?limit=1", Some(k), vec![]).await;
                (s, h.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let accepted = answers.iter().filter(|(s, _)| *s == 200).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!((accepted, limited.len()), (100, 60), "{answers:?}");
    assert!(limited.iter().all(|(_, r)| r.is_some_and(|r| (1..=60).contains(&r))), "Retry-After on every 429");

    // Last use is listed; a key never used has none.
    let (_, unused) = key(&a.cfg, Role::Analyst).await;
    let (s, listed, _) = b.send(reqwest::Method::GET, "/api-keys", Some(&admin), vec![]).await;
    assert_eq!(s, 200, "{listed}");
    let find = |listed: &Value, id: &str| {
        listed["data"].as_array().expect("data").iter().find(|k| k["id"] == json!(id)).cloned().expect("listed")
    };
    assert!(find(&listed, &limited_id.to_string())["last_used_at"].is_string(), "{listed}");
    let unused_id = lifecycle_connectors::postgres::connect(&a.cfg.postgres).await.expect("db");
    let unused_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys WHERE key_hash = $1")
        .bind(lifecycle_connectors::http::auth::hash_key(&unused))
        .fetch_one(&unused_id)
        .await
        .expect("id");
    assert!(find(&listed, &unused_id.to_string())["last_used_at"].is_null());
    assert!(listed.to_string().find("lck_").is_none(), "keys themselves are never listed");

    // Revoked through A while B has the key's identity cached: B refuses its next request.
    let (s, made, _) =
        a.post("/api-keys", Some(&admin), json!({"name": "ci", "role": "operator"}).to_string().into_bytes()).await;
    assert_eq!(s, 201, "{made}");
    let (id, ci) = (made["id"].as_str().expect("id").to_owned(), made["key"].as_str().expect("key").to_owned());
    assert_eq!(b.send(reqwest::Method::GET, "/workflows", Some(&ci), vec![]).await.0, 200);
    let revoked = std::time::Instant::now();
    assert_eq!(a.send(reqwest::Method::DELETE, &format!("/api-keys/{id}"), Some(&admin), vec![]).await.0, 200);
    let (s, e, _) = b.send(reqwest::Method::GET, "/workflows", Some(&ci), vec![]).await;
    assert_eq!((s, e["code"].clone()), (401, json!("unauthorized")), "{e}");
    eprintln!(
        "revocation refused on the other instance {} ms after the revoke was sent",
        revoked.elapsed().as_millis()
    );

    // Rotation: the new key works at once, the old one until its grace ends.
    let (_, made, _) =
        a.post("/api-keys", Some(&admin), json!({"name": "svc", "role": "operator"}).to_string().into_bytes()).await;
    let (old_id, old) = (made["id"].as_str().expect("id").to_owned(), made["key"].as_str().expect("key").to_owned());
    let (s, rotated, _) = a
        .post(&format!("/api-keys/{old_id}/rotate"), Some(&admin), json!({"grace_secs": 2}).to_string().into_bytes())
        .await;
    assert_eq!((s, rotated["previous"]["id"].clone()), (201, json!(old_id)), "{rotated}");
    let new = rotated["key"].as_str().expect("new key").to_owned();
    for api in [&a, &b] {
        assert_eq!(api.send(reqwest::Method::GET, "/workflows", Some(&new), vec![]).await.0, 200, "new key");
        assert_eq!(
            api.send(reqwest::Method::GET, "/workflows", Some(&old), vec![]).await.0,
            200,
            "old key in its grace"
        );
    }
    // Expiry: a key made to live one second.
    let (_, short, _) = a
        .post(
            "/api-keys",
            Some(&admin),
            json!({"name": "short", "role": "analyst", "expires_in_secs": 1}).to_string().into_bytes(),
        )
        .await;
    let short = short["key"].as_str().expect("key").to_owned();
    assert_eq!(b.send(reqwest::Method::GET, "/workflows", Some(&short), vec![]).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2_200)).await;
    for api in [&a, &b] {
        assert_eq!(api.send(reqwest::Method::GET, "/workflows", Some(&old), vec![]).await.0, 401, "grace over");
        assert_eq!(api.send(reqwest::Method::GET, "/workflows", Some(&short), vec![]).await.0, 401, "expired");
        assert_eq!(api.send(reqwest::Method::GET, "/workflows", Some(&new), vec![]).await.0, 200, "the new key stays");
    }
    let (_, listed, _) = a.send(reqwest::Method::GET, "/api-keys", Some(&admin), vec![]).await;
    let old_row = find(&listed, &old_id);
    assert_eq!((old_row["status"].clone(), old_row["replaced_by"].clone()), (json!("expired"), rotated["id"].clone()));
    // Bad requests name the field; only admins manage keys.
    let (s, e, _) =
        a.post("/api-keys", Some(&admin), json!({"name": "x", "role": "root"}).to_string().into_bytes()).await;
    assert_eq!((s, e["details"]["field"].clone()), (400, json!("role")), "{e}");
    let (s, e, _) = a
        .post(
            "/api-keys",
            Some(&admin),
            json!({"name": "x", "role": "analyst", "expires_in_secs": 0}).to_string().into_bytes(),
        )
        .await;
    assert_eq!((s, e["details"]["field"].clone()), (400, json!("expires_in_secs")), "{e}");
    assert_eq!(a.send(reqwest::Method::GET, "/api-keys", Some(&new), vec![]).await.0, 403);
}
