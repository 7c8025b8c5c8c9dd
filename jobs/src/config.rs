//! The whole project's configuration: one TOML file (all sections optional),
//! validated into typed values before anything does IO.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifecycle_connectors::clickhouse::ClickHouseConfig;
use lifecycle_connectors::http::egress::EgressConfig;
use lifecycle_connectors::http_analytics::AnalyticsApiConfig;
use lifecycle_connectors::http_ingest::IngestConfig;
use lifecycle_connectors::kafka::config::KafkaConfig;
use lifecycle_connectors::postgres::PostgresConfig;
use lifecycle_pipeline::{Limits, TopicNames};
use lifecycle_schemas::registry::config::RegistryConfig;
use serde::{Deserialize, Serialize};

use crate::stack::StackConfig;
use crate::stages::analytics::config::AnalyticsConfig;
use crate::stages::profile::config::ProfileConfig;
use crate::stages::validate::config::ValidateConfig;
use crate::stages::workflows::config::WorkflowConfig;

/// Validation rules' limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// How far in the future an event timestamp may be, in seconds.
    pub max_future_skew_secs: u64,
    /// How old an event may be, in days (the event retention period).
    pub max_age_days: u64,
    /// Longest event_id / user_id / session_id, in bytes.
    pub max_id_len: usize,
    /// Longest string in `event_properties` (values and keys), in bytes.
    pub max_string_len: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_future_skew_secs: l.max_future_skew.as_secs(),
            max_age_days: l.max_age.as_secs() / 86_400,
            max_id_len: l.max_id_len,
            max_string_len: l.max_string_len,
        }
    }
}

impl ValidationConfig {
    /// The typed limits.
    pub fn limits(&self) -> Result<Limits, String> {
        if self.max_id_len == 0 {
            return Err("validation.max_id_len must be positive".into());
        }
        if self.max_string_len == 0 {
            return Err("validation.max_string_len must be positive".into());
        }
        Ok(Limits {
            max_future_skew: Duration::from_secs(self.max_future_skew_secs),
            max_age: Duration::from_secs(self.max_age_days.saturating_mul(86_400)),
            max_id_len: self.max_id_len,
            max_string_len: self.max_string_len,
        })
    }
}

/// The project's configuration file. `Debug` prints it redacted, as
/// [`LifecycleConfig::redacted`] does.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Brokers.
    pub kafka: KafkaConfig,
    /// The pipeline's database (seed schema, API keys).
    pub postgres: PostgresConfig,
    /// Base URL of the Confluent-compatible schema registry.
    pub registry_url: String,
    /// The analytics database.
    pub clickhouse: ClickHouseConfig,
    /// Topic names.
    pub topics: TopicNames,
    /// Directory with `envelope.avsc` and `events/*.avsc` (default: the repo's `schemas/avro`).
    pub schemas_dir: Option<PathBuf>,
    /// Validation limits.
    pub validation: ValidationConfig,
    /// The validation stage.
    pub validate: ValidateConfig,
    /// The profile stage.
    pub profile: ProfileConfig,
    /// The ClickHouse sink.
    pub analytics: AnalyticsConfig,
    /// The workflow engine.
    pub workflows: WorkflowConfig,
    /// The HTTP ingestion API.
    pub ingest: IngestConfig,
    /// `GET /analytics` on the API service.
    pub analytics_api: AnalyticsApiConfig,
    /// The schema registry service.
    pub registry: RegistryConfig,
    /// The CDC connector (`lifecycle run cdc`).
    pub cdc: lifecycle_connectors::cdc::CdcConfig,
    /// The local stack.
    pub stack: StackConfig,
    /// What outbound requests (webhooks, HTTP service tasks, callbacks) may
    /// reach besides public addresses.
    pub egress: EgressConfig,
    /// How long a stage or service may take to stop after SIGTERM before it
    /// exits without committing the batch in hand, in seconds (keep it below
    /// the orchestrator's termination grace period).
    pub shutdown_grace_secs: u64,
    /// The file this configuration was read from (passed on to child processes).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            postgres: PostgresConfig::default(),
            registry_url: "http://127.0.0.1:8081".into(),
            clickhouse: ClickHouseConfig::default(),
            topics: TopicNames::default(),
            schemas_dir: None,
            validation: ValidationConfig::default(),
            validate: ValidateConfig::default(),
            profile: ProfileConfig::default(),
            analytics: AnalyticsConfig::default(),
            workflows: WorkflowConfig::default(),
            ingest: IngestConfig::default(),
            analytics_api: AnalyticsApiConfig::default(),
            registry: RegistryConfig::default(),
            cdc: lifecycle_connectors::cdc::CdcConfig::default(),
            stack: StackConfig::default(),
            egress: EgressConfig::default(),
            shutdown_grace_secs: 30,
            source: None,
        }
    }
}

impl std::fmt::Debug for LifecycleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match toml::to_string(&self.redacted()) {
            Ok(s) => f.write_str(&s),
            Err(_) => f.write_str("LifecycleConfig { .. }"),
        }
    }
}

impl LifecycleConfig {
    /// This configuration with every secret replaced by `***`: passwords in
    /// URLs (and their query strings), the ClickHouse password, the workflow
    /// signing secret, and every Kafka client property value but the known
    /// harmless ones. What `lifecycle config` prints.
    pub fn redacted(&self) -> Self {
        use lifecycle_connectors::secret::{kafka_property_shown, redact_url, shown};
        let mut c = self.clone();
        c.registry_url = redact_url(&c.registry_url);
        c.postgres.url = redact_url(&c.postgres.url);
        c.registry.postgres.url = redact_url(&c.registry.postgres.url);
        c.clickhouse.url = redact_url(&c.clickhouse.url);
        c.cdc.source_url = redact_url(&c.cdc.source_url);
        c.clickhouse.password = c.clickhouse.password.as_deref().map(|p| shown(p).to_owned());
        for (k, v) in c.kafka.properties.iter_mut() {
            *v = kafka_property_shown(k, v).to_owned();
        }
        c.workflows.signing_secret = shown(&c.workflows.signing_secret).to_owned();
        c
    }

    /// Reads a TOML file; missing sections take their defaults.
    pub fn load(path: &Path) -> Result<Self, String> {
        Self::load_with_env(Some(path), std::iter::empty())
    }

    /// The configuration of a process: the file at `path` (when given), then
    /// every `LIFECYCLE_<KEY>` variable of `vars` on top, nested keys joined by
    /// a double underscore: `LIFECYCLE_KAFKA__BOOTSTRAP_SERVERS=broker:9092`,
    /// `LIFECYCLE_REGISTRY_URL=...`, `LIFECYCLE_TOPICS__SETTINGS__EVENTS_RAW__PARTITIONS=12`.
    /// A value is read as TOML (numbers, booleans, arrays, inline tables) and
    /// as a string otherwise. Under `kafka.properties` a key's underscores
    /// become dots (librdkafka's names: `LIFECYCLE_KAFKA__PROPERTIES__SASL_PASSWORD`
    /// sets `sasl.password`). `LIFECYCLE_CONFIG` names the file and is not a key.
    pub fn load_with_env(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        let mut doc: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                text.parse().map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => toml::Table::new(),
        };
        let mut applied = Vec::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("LIFECYCLE_") else { continue };
            if rest == "CONFIG" || rest.is_empty() {
                continue;
            }
            set_path(&mut doc, rest, &value).map_err(|e| format!("{name}: {e}"))?;
            applied.push(name);
        }
        let origin = || match (path, applied.is_empty()) {
            (Some(p), true) => p.display().to_string(),
            (Some(p), false) => format!("{} with {}", p.display(), applied.join(", ")),
            (None, _) => applied.join(", "),
        };
        let mut cfg: Self = doc.try_into().map_err(|e: toml::de::Error| format!("{}: {e}", origin()))?;
        cfg.validate()?;
        cfg.source = path.map(Path::to_owned);
        Ok(cfg)
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<(), String> {
        self.validation.limits()?;
        self.topics.validate()?;
        self.ingest.validate()?;
        self.validate.validate()?;
        self.profile.validate()?;
        self.analytics.validate()?;
        self.workflows.validate()?;
        url::Url::parse(&self.registry_url).map_err(|e| format!("registry_url: {e}"))?;
        Ok(())
    }

    /// The schema directory in effect.
    pub fn schemas_dir(&self) -> PathBuf {
        self.schemas_dir.clone().unwrap_or_else(lifecycle_schemas::files::default_dir)
    }
}

/// Sets the key named by an environment variable's rest (`KAFKA__BOOTSTRAP_SERVERS`)
/// in `doc`, the value parsed as TOML when it parses and kept a string otherwise.
fn set_path(doc: &mut toml::Table, rest: &str, value: &str) -> Result<(), String> {
    let mut keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if keys.iter().any(String::is_empty) {
        return Err("empty key between double underscores".into());
    }
    if keys.len() == 3 && keys[0] == "kafka" && keys[1] == "properties" {
        keys[2] = keys[2].replace('_', ".");
    }
    let (last, parents) = keys.split_last().ok_or("no key")?;
    let mut table = doc;
    for k in parents {
        let entry = table.entry(k.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| format!("'{k}' is not a section"))?;
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    table.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_set_keys_on_top_of_the_file() {
        let vars = [
            ("LIFECYCLE_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092"),
            ("LIFECYCLE_KAFKA__PROPERTIES__SASL_PASSWORD", "s3cret"),
            ("LIFECYCLE_REGISTRY_URL", "http://registry:8081"),
            ("LIFECYCLE_VALIDATE__MAX_BATCH_RECORDS", "250"),
            ("LIFECYCLE_TOPICS__SETTINGS__EVENTS_RAW__PARTITIONS", "12"),
            ("LIFECYCLE_PROFILE__METRICS_ADDR", "0.0.0.0:9102"),
            ("LIFECYCLE_CONFIG", "/ignored.toml"),
            ("PATH", "/usr/bin"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let cfg = LifecycleConfig::load_with_env(None, vars).expect("loads");
        assert_eq!(cfg.kafka.bootstrap_servers, "k1:9092,k2:9092");
        assert_eq!(cfg.kafka.properties.get("sasl.password").map(String::as_str), Some("s3cret"));
        assert_eq!(cfg.registry_url, "http://registry:8081");
        assert_eq!(cfg.validate.max_batch_records, 250);
        assert_eq!(cfg.topics.settings["events_raw"].partitions, Some(12));
        assert_eq!(cfg.profile.metrics_addr.map(|a| a.port()), Some(9102));
        let bad = [("LIFECYCLE_VALIDATE__MAX_BATCH", "1".to_owned())].map(|(k, v)| (k.to_owned(), v));
        let e = LifecycleConfig::load_with_env(None, bad).expect_err("unknown key");
        assert!(e.contains("LIFECYCLE_VALIDATE__MAX_BATCH") && e.contains("max_batch"), "{e}");
    }

    /// A configuration with a planted secret in every place one can be.
    pub(crate) fn planted() -> LifecycleConfig {
        let mut cfg = LifecycleConfig::default();
        cfg.postgres.url = "postgres://lifecycle:PLANTED-pg@127.0.0.1:5432/lifecycle".into();
        cfg.registry.postgres.url = "postgres://lifecycle:PLANTED-reg-pg@127.0.0.1:5432/schema_registry".into();
        cfg.registry_url = "http://svc:PLANTED-registry@127.0.0.1:8081/?token=PLANTED-query".into();
        cfg.clickhouse.url = "http://default:PLANTED-ch-url@127.0.0.1:8123".into();
        cfg.clickhouse.password = Some("PLANTED-ch".into());
        cfg.kafka.properties.insert("sasl.password".into(), "PLANTED-sasl".into());
        cfg.kafka.properties.insert("sasl.oauthbearer.client.secret".into(), "PLANTED-oauth".into());
        cfg.kafka.properties.insert("security.protocol".into(), "SASL_PLAINTEXT".into());
        cfg.workflows.signing_secret = "PLANTED-signing".into();
        cfg
    }

    #[test]
    fn secrets_print_redacted_in_debug_and_in_the_configuration_dump() {
        let cfg = planted();
        let dump = toml::to_string(&cfg.redacted()).expect("toml");
        for shown in [format!("{cfg:?}"), format!("{cfg:#?}"), dump.clone()] {
            assert!(!shown.contains("PLANTED"), "{shown}");
            assert!(shown.contains("SASL_PLAINTEXT") && shown.contains("sasl.password"), "{shown}");
        }
        let back: LifecycleConfig = toml::from_str(&dump).expect("the dump is a configuration");
        assert_eq!(back.postgres.url, "postgres://lifecycle:***@127.0.0.1:5432/lifecycle");
        // Serialising for a child process keeps the real values.
        assert!(toml::to_string(&cfg).expect("toml").contains("PLANTED-sasl"));
    }

    #[test]
    fn defaults_validate_and_partial_files_parse() {
        LifecycleConfig::default().validate().expect("defaults valid");
        let cfg: LifecycleConfig =
            toml::from_str("[topics]\nprefix = \"staging.\"\n[validate]\nmax_batch_records = 100\n").expect("parse");
        assert_eq!(cfg.topics.prefix, "staging.");
        assert_eq!(cfg.validate.max_batch_records, 100);
        assert!(toml::from_str::<LifecycleConfig>("[validate]\nmax_batch = 1\n").is_err(), "unknown keys are rejected");
    }

    #[test]
    fn the_shipped_production_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/production.example.toml");
        let cfg = LifecycleConfig::load(&path).expect("deploy/production.example.toml is a valid configuration");
        assert_eq!(cfg.analytics.rollup_interval_ms, 5000);
    }

    #[test]
    fn the_readme_configuration_equals_the_defaults() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("## Configuration")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("README has a toml block under ## Configuration");
        let cfg: LifecycleConfig = toml::from_str(block).expect("README configuration parses");
        let defaults = LifecycleConfig::default();
        assert_eq!(cfg.analytics, defaults.analytics);
        assert_eq!(cfg.analytics_api, defaults.analytics_api);
        assert_eq!(cfg.ingest, defaults.ingest);
        assert_eq!(cfg.profile, defaults.profile);
        assert_eq!(cfg.validate, defaults.validate);
        assert_eq!(cfg.workflows, defaults.workflows);
        assert_eq!(cfg.cdc, defaults.cdc);
        let ports = |s: &crate::stack::StackConfig| {
            (s.kafka_port, s.kafka_controller_port, s.postgres_port, s.clickhouse_http_port, s.clickhouse_tcp_port)
        };
        assert_eq!(ports(&cfg.stack), ports(&defaults.stack));
    }
}
