//! What service tasks do: call an HTTP endpoint, produce to a topic, or
//! update the user's attributes; and webhook deliveries. Every call carries
//! the idempotency key of its execution (`{instance}:{node}:{token}`), which a
//! retry after a crash repeats, so receivers can drop duplicates.

use std::sync::Arc;
use std::time::Duration;

use lifecycle_connectors::http::egress::{self, EgressPolicy};
use lifecycle_connectors::http::signature::{SIGNATURE_HEADER, sign};
use lifecycle_connectors::kafka::sink::{KafkaSink, OutRecord};
use lifecycle_connectors::postgres::workflows::Delivery;
use lifecycle_pipeline::workflow::bpmn::TaskAction;
use lifecycle_pipeline::{Topic, TopicNames};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// What a task is executed with.
pub(super) struct Call<'a> {
    /// Instance id.
    pub instance_id: Uuid,
    /// Workflow version.
    pub workflow_id: Uuid,
    /// `users.id`.
    pub user_uuid: Uuid,
    /// External user id (the Kafka key).
    pub user_id: &'a str,
    /// The node.
    pub node: &'a str,
    /// Attempt number.
    pub attempt: u32,
    /// The execution's idempotency key.
    pub key: &'a str,
    /// Variables and results as the task sees them.
    pub scope: &'a Value,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// Worth another attempt (the target was down, answered an error, ...).
    Retry(String),
    /// The target is one outbound requests may not reach: retrying cannot help.
    Refused(String),
}

impl Failure {
    /// The message.
    pub(super) fn message(&self) -> &str {
        match self {
            Self::Retry(m) | Self::Refused(m) => m,
        }
    }

    /// What a failed outbound request to `what` says: a refusal by the egress
    /// policy (from the resolver or a redirect), or the error with its causes.
    fn of_request(what: &str, e: &reqwest::Error) -> Self {
        match egress::refusal(e) {
            Some(r) => Self::Refused(format!("{what}: {r}")),
            None => Self::Retry(format!("{what}: {}", egress::with_causes(e))),
        }
    }
}

/// Shared clients.
pub(super) struct Executor {
    /// Resolves through `egress` and checks redirects.
    pub http: reqwest::Client,
    /// What outbound requests may reach.
    pub egress: Arc<EgressPolicy>,
    pub sink: KafkaSink,
    pub pool: PgPool,
    pub topics: TopicNames,
    pub signing_secret: String,
    pub timeout: Duration,
}

/// The short name of an action (metrics labels).
pub(super) fn action_name(a: &TaskAction) -> &'static str {
    match a {
        TaskAction::Http { .. } => "http",
        TaskAction::Kafka { .. } => "kafka",
        TaskAction::ProfileUpdate { .. } => "profile-update",
    }
}

fn snippet(s: &str) -> String {
    let mut end = s.len().min(300);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl Executor {
    /// A topic named like one of ours (`workflow.events`) resolves through the
    /// configured names (prefixes); any other name is used as written.
    fn topic_name(&self, name: &str) -> String {
        Topic::ALL.iter().find(|t| t.default_name() == name).map_or_else(|| name.to_owned(), |t| self.topics.name(*t))
    }

    /// Runs one attempt; the output is stored under the node's id in `results`.
    pub(super) async fn execute(&self, action: &TaskAction, call: &Call<'_>) -> Result<Value, Failure> {
        match action {
            TaskAction::Http { url, method } => self.http_call(url, method, call).await,
            other => self.execute_local(other, call).await.map_err(Failure::Retry),
        }
    }

    async fn execute_local(&self, action: &TaskAction, call: &Call<'_>) -> Result<Value, String> {
        match action {
            TaskAction::Http { .. } => Err("not a local action".into()),
            TaskAction::Kafka { topic } => {
                let name = self.topic_name(topic);
                let payload = json!({
                    "instance_id": call.instance_id, "workflow_id": call.workflow_id, "user_id": call.user_id,
                    "node": call.node, "idempotency_key": call.key, "variables": call.scope,
                });
                let record = OutRecord {
                    topic: name.clone(),
                    key: Some(call.user_id.as_bytes().to_vec()),
                    payload: payload.to_string().into_bytes(),
                    headers: vec![("idempotency-key", call.key.as_bytes().to_vec())],
                };
                self.sink.send_all(&[record]).await.map_err(|e| format!("produce to {name}: {e}"))?;
                Ok(json!({"topic": name}))
            }
            TaskAction::ProfileUpdate { attributes } => {
                let done = sqlx::query(
                    "UPDATE users SET attributes = COALESCE(attributes, '{}'::jsonb) || $2, updated_at = now() WHERE id = $1",
                )
                .bind(call.user_uuid)
                .bind(Value::Object(attributes.clone()))
                .execute(&self.pool)
                .await
                .map_err(|e| format!("profile update: {e}"))?;
                if done.rows_affected() == 0 {
                    return Err(format!("profile update: user {} does not exist", call.user_id));
                }
                Ok(json!({"updated": attributes.keys().collect::<Vec<_>>()}))
            }
        }
    }

    /// Refuses a URL whose host is an address outbound requests may not
    /// reach (names are checked by the client's resolver when it connects).
    fn check_literal(&self, what: &str, url: &str) -> Result<(), Failure> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Failure::Refused(format!("{what}: not a URL: {e}")))?;
        self.egress.check_literal(&parsed).map(|_| ()).map_err(|r| Failure::Refused(format!("{what}: {r}")))
    }

    async fn http_call(&self, url: &str, method: &str, call: &Call<'_>) -> Result<Value, Failure> {
        let body = json!({
            "instance_id": call.instance_id, "workflow_id": call.workflow_id, "user_id": call.user_id,
            "node": call.node, "attempt": call.attempt, "idempotency_key": call.key, "variables": call.scope,
        });
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| Failure::Refused(format!("method {method}: {e}")))?;
        let what = format!("{method} {url}");
        self.check_literal(&what, url)?;
        let resp = self
            .signed(method.clone(), url, (call.key, &self.signing_secret), &body)
            .header("x-lifecycle-instance", call.instance_id.to_string())
            .send()
            .await
            .map_err(|e| Failure::of_request(&what, &e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| Failure::Retry(format!("{what}: reading the answer: {e}")))?;
        if !status.is_success() {
            return Err(Failure::Retry(format!("{what}: HTTP {}: {}", status.as_u16(), snippet(&text))));
        }
        let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(snippet(&text)));
        Ok(json!({"status": status.as_u16(), "body": body}))
    }

    /// A JSON request with the call's idempotency key, signed with `secret`
    /// when there is one (tasks, callbacks and webhooks alike).
    fn signed(
        &self,
        method: reqwest::Method,
        url: &str,
        (key, secret): (&str, &str),
        body: &Value,
    ) -> reqwest::RequestBuilder {
        let bytes = body.to_string().into_bytes();
        let mut req = self
            .http
            .request(method, url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .header("idempotency-key", key);
        if !secret.is_empty() {
            req = req.header(SIGNATURE_HEADER, sign(secret.as_bytes(), chrono::Utc::now().timestamp(), &bytes));
        }
        req.body(bytes)
    }

    /// Makes one webhook delivery attempt.
    pub(super) async fn deliver(&self, d: &Delivery) -> Result<(), Failure> {
        let body = json!({
            "id": d.event_id, "type": d.event_type, "created_at": chrono::Utc::now(), "data": d.payload,
        });
        let what = format!("POST {}", d.url);
        self.check_literal(&what, &d.url)?;
        let secret = d.secret.as_deref().unwrap_or(&self.signing_secret);
        let resp = self
            .signed(reqwest::Method::POST, &d.url, (&d.event_id.to_string(), secret), &body)
            .header("x-lifecycle-event", &d.event_type)
            .header("x-lifecycle-delivery", d.id.to_string())
            .send()
            .await
            .map_err(|e| Failure::of_request(&what, &e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Failure::Retry(format!("{what}: HTTP {}", resp.status().as_u16())))
        }
    }
}
