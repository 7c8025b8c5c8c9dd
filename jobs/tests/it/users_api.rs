//! The users REST API over real HTTP and PostgreSQL, beside the profile stage's writes.

use std::collections::BTreeMap;

use lifecycle_connectors::http::auth::Role;
use lifecycle_connectors::postgres::profiles;
use lifecycle_pipeline::profile::Profile;
use reqwest::Method as M;
use serde_json::{Value, json};

use crate::ingest_api::{key, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_crud_with_roles_masking_and_errors() {
    let api = start("users", 1000).await;
    let (_, admin) = key(&api.cfg, Role::Admin).await;
    let (_, operator) = key(&api.cfg, Role::Operator).await;
    let (_, analyst) = key(&api.cfg, Role::Analyst).await;
    let p = api.cfg.topics.prefix.clone();
    let body = |v: Value| v.to_string().into_bytes();

    let (s, u, _) = api.post("/users", Some(&operator), body(json!({"user_id": format!("{p}ada"), "email": format!("ada@{}example.com", p.replace('.', "-")), "name": "Ada", "attributes": {"plan": "pro"}}))).await;
    assert_eq!(s, 201, "{u}");
    assert_eq!((u["lifecycle_stage"].clone(), u["attributes"]["plan"].clone()), (json!("Acquisition"), json!("pro")));
    let id = u["id"].as_str().expect("id").to_owned();
    assert!(u["email"].as_str().expect("email").starts_with("a***@"), "operator sees a masked email: {u}");

    // Read by uuid or by user_id; admins see PII, others a mask.
    let (s, a, _) = api.send(M::GET, &format!("/users/{id}"), Some(&admin), vec![]).await;
    assert_eq!((s, a["name"].clone(), a["pii_masked"].clone()), (200, json!("Ada"), json!(false)));
    let (s, r, _) = api.send(M::GET, &format!("/users/{p}ada"), Some(&analyst), vec![]).await;
    assert_eq!((s, r["id"].clone(), r["name"].clone()), (200, json!(id), json!("A***")));

    // Errors name the field.
    let (s, e, _) =
        api.post("/users", Some(&operator), body(json!({"user_id": format!("{p}ada"), "email": "x@y.io"}))).await;
    assert_eq!((s, e["code"].clone(), e["details"]["field"].clone()), (409, json!("conflict"), json!("user_id")));
    let (s, e, _) =
        api.post("/users", Some(&operator), body(json!({"user_id": format!("{p}bob"), "email": a["email"]}))).await;
    assert_eq!((s, e["details"]["field"].clone()), (409, json!("email")));
    let (s, e, _) = api.post("/users", Some(&operator), body(json!({"email": "not-an-email"}))).await;
    assert_eq!((s, e["details"]["field"].clone()), (400, json!("email")));
    let (s, e, _) = api.send(M::PATCH, &format!("/users/{id}"), Some(&operator), body(json!({"shoe_size": 44}))).await;
    assert_eq!(
        (s, e["code"].clone(), e["details"]["field"].clone()),
        (400, json!("unknown_field"), json!("shoe_size"))
    );
    assert_eq!(
        api.send(M::PATCH, &format!("/users/{p}nobody"), Some(&operator), body(json!({"name": "N"}))).await.0,
        404
    );
    assert_eq!(
        api.post("/users", Some(&analyst), body(json!({"email": "z@z.io"}))).await.0,
        403,
        "analysts are read-only"
    );

    // The profile stage writes its document; the API's fields survive it, and vice versa.
    let mut profile = Profile::new(format!("{p}ada"));
    profile.events_applied = 7;
    profile.behavioral.feature_usage_map = BTreeMap::from([("export".to_string(), 2)]);
    let pool = lifecycle_connectors::postgres::connect(&api.cfg.postgres).await.expect("db");
    let doc = serde_json::to_string(&profile).expect("profile document");
    let mut tx = profiles::begin(&pool).await.expect("tx");
    tx.write(&[(&profile, &doc)], &[], &Default::default(), &[], "users-test", "none", &BTreeMap::new())
        .await
        .expect("stage write");
    tx.commit().await.expect("stage commit");
    let (s, u, _) = api
        .send(
            M::PATCH,
            &format!("/users/{id}"),
            Some(&operator),
            body(json!({"name": "Ada L.", "attributes": {"plan": null, "tier": "gold"}})),
        )
        .await;
    assert_eq!(s, 200, "{u}");
    let (_, a, _) = api.send(M::GET, &format!("/users/{id}"), Some(&admin), vec![]).await;
    assert_eq!(
        (a["name"].clone(), a["attributes"].clone()),
        (json!("Ada L."), json!({"name": "Ada L.", "tier": "gold"}))
    );
    assert_eq!(a["profile"]["events_applied"], json!(7));
    assert!(a["email"].as_str().expect("email").starts_with("ada@"), "the stage did not clear the API's email");

    // Batch: per-item results.
    let (s, b, _) = api
        .post(
            "/users/batch",
            Some(&operator),
            body(json!({"users": [
                {"user_id": format!("{p}c1"), "email": format!("c1@{}x.io", p.replace('.', "-"))},
                {"user_id": format!("{p}c2")},
                {"user_id": format!("{p}c3"), "email": format!("c3@{}x.io", p.replace('.', "-"))}
            ]})),
        )
        .await;
    assert_eq!((s, b["created"].clone(), b["failed"].clone()), (200, json!(2), json!(1)), "{b}");
    assert_eq!(
        (b["results"][1]["status"].clone(), b["results"][1]["error"]["details"]["field"].clone()),
        (json!(400), json!("email"))
    );
    // None created: a 400 in the common error shape, the per-item results in its details.
    let (s, b, _) = api.post("/users/batch", Some(&operator), body(json!({"users": [{"user_id": "x"}]}))).await;
    assert_eq!((s, b["code"].clone(), b["details"]["failed"].clone()), (400, json!("all_users_rejected"), json!(1)));
    assert_eq!(b["details"]["results"][0]["error"]["details"]["field"], json!("email"), "{b}");

    // Delete: admin only; afterwards 404.
    assert_eq!(api.send(M::DELETE, &format!("/users/{id}"), Some(&operator), vec![]).await.0, 403);
    assert_eq!(api.send(M::DELETE, &format!("/users/{id}"), Some(&admin), vec![]).await.0, 204);
    assert_eq!(api.send(M::GET, &format!("/users/{id}"), Some(&admin), vec![]).await.0, 404);
    assert_eq!(api.send(M::DELETE, &format!("/users/{id}"), Some(&admin), vec![]).await.0, 404);
}
