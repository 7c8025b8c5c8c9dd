//! A small Confluent Schema Registry client (register, fetch by id).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::error::SchemasError;

/// Confluent REST client over HTTP.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

impl RegistryClient {
    /// A client for the registry at `base_url` (e.g. `http://127.0.0.1:8081`).
    pub fn new(base_url: &str) -> Result<Self, SchemasError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| SchemasError::Unavailable(e.to_string()))?;
        Ok(Self { base: base_url.trim_end_matches('/').to_owned(), http })
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, SchemasError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        if status.is_server_error() {
            return Err(SchemasError::Unavailable(format!("{status}: {text}")));
        }
        let body: ErrorBody =
            serde_json::from_str(&text).unwrap_or(ErrorBody { error_code: None, message: Some(text) });
        Err(SchemasError::Refused {
            status: status.as_u16(),
            error_code: body.error_code.unwrap_or(i64::from(status.as_u16())),
            message: body.message.unwrap_or_default(),
        })
    }

    fn subject_url(&self, subject: &str, rest: &str) -> String {
        let enc: String = url::form_urlencoded::byte_serialize(subject.as_bytes()).collect();
        format!("{}/subjects/{}{rest}", self.base, enc.replace('+', "%20"))
    }

    /// Registers an Avro schema under `subject`; returns its global id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, SchemasError> {
        #[derive(Deserialize)]
        struct Id {
            id: u32,
        }
        let resp = self
            .http
            .post(self.subject_url(subject, "/versions"))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(json!({ "schema": schema, "schemaType": "AVRO", "references": [] }).to_string())
            .send()
            .await
            .map_err(|e| SchemasError::Unavailable(e.to_string()))?;
        let id: Id = Self::check(resp).await?.json().await.map_err(|e| SchemasError::Unavailable(e.to_string()))?;
        Ok(id.id)
    }

    /// The schema text of a global id; `None` when the registry does not know it.
    pub async fn schema_by_id(&self, id: u32) -> Result<Option<String>, SchemasError> {
        #[derive(Deserialize)]
        struct Body {
            schema: String,
        }
        let resp = self
            .http
            .get(format!("{}/schemas/ids/{id}", self.base))
            .send()
            .await
            .map_err(|e| SchemasError::Unavailable(e.to_string()))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body: Body = Self::check(resp).await?.json().await.map_err(|e| SchemasError::Unavailable(e.to_string()))?;
        Ok(Some(body.schema))
    }

    /// Whether the registry answers.
    pub async fn ping(&self) -> Result<(), SchemasError> {
        let resp = self
            .http
            .get(format!("{}/subjects", self.base))
            .send()
            .await
            .map_err(|e| SchemasError::Unavailable(e.to_string()))?;
        Self::check(resp).await.map(|_| ())
    }
}

/// Ids assigned when the project's schemas were registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Envelope id under `events.raw-value`.
    pub raw_envelope_id: u32,
    /// Envelope id under `events.valid-value`.
    pub valid_envelope_id: u32,
    /// `(event_type, id)` of each properties schema.
    pub event_types: Vec<(String, u32)>,
}

/// Registers the envelope under the value subjects of `events.raw` and
/// `events.valid` (TopicNameStrategy), and each event type's properties schema
/// under `<event_type>-properties`. Idempotent; an incompatible edit of a
/// schema file fails here, at start-up, with the registry's reason.
pub async fn register_all(
    client: &RegistryClient,
    files: &crate::files::SchemaFiles,
    topics: &lifecycle_pipeline::TopicNames,
) -> Result<Registration, SchemasError> {
    use lifecycle_pipeline::Topic;
    let raw_envelope_id = client.register(&topics.value_subject(Topic::EventsRaw), &files.envelope).await?;
    let valid_envelope_id = client.register(&topics.value_subject(Topic::EventsValid), &files.envelope).await?;
    let mut event_types = Vec::with_capacity(files.event_types.len());
    for (t, text) in &files.event_types {
        let id = client
            .register(&crate::files::SchemaFiles::properties_subject(&format!("{}{t}", topics.prefix)), text)
            .await?;
        event_types.push((t.clone(), id));
    }
    Ok(Registration { raw_envelope_id, valid_envelope_id, event_types })
}
