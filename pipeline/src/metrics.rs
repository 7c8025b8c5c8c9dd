//! Every metric the project exports, declared once. Names follow
//! `lifecycle_<component>_<what>_<unit>` with bounded label sets.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    exponential_buckets,
};

use crate::reason::ReasonCode;

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Result<Histogram, prometheus::Error> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

/// `lifecycle_kafka_hanging_transactions_aborted_total`: hanging Kafka
/// transactions (open in a partition, ended by no coordinator) this process
/// aborted. Registered once per registry; a second call returns the first.
pub fn kafka_hanging_transactions_aborted(r: &Registry) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(
        "lifecycle_kafka_hanging_transactions_aborted_total",
        "Hanging Kafka transactions (open in a partition, ended by no coordinator) this process aborted",
    )?;
    match r.register(Box::new(c.clone())) {
        Ok(()) | Err(prometheus::Error::AlreadyReg) => Ok(c),
        Err(e) => Err(e),
    }
}

/// Every record a stage consumes gets exactly one outcome, counted here with a
/// reason: `applied` (written to the stage's store or output), `skipped`
/// (nothing to do: already applied, a duplicate) or `dead_lettered` (with the
/// reason code its dead-letter record carries). Tests check that a stage's
/// records in equal the sum of its outcomes.
#[derive(Clone)]
pub struct Outcomes {
    counter: IntCounterVec,
}

impl Outcomes {
    /// Registers `lifecycle_<stage>_<what>_total{outcome, reason}` in `r`.
    pub fn register(r: &Registry, name: &str, help: &str) -> Result<Self, prometheus::Error> {
        Ok(Self { counter: counter_vec(r, name, help, &["outcome", "reason"])? })
    }

    /// `n` records applied (`reason` says how, e.g. `event`, `started`).
    pub fn applied(&self, reason: &str, n: u64) {
        self.counter.with_label_values(&["applied", reason]).inc_by(n);
    }

    /// `n` records skipped for `reason`.
    pub fn skipped(&self, reason: &str, n: u64) {
        self.counter.with_label_values(&["skipped", reason]).inc_by(n);
    }

    /// `n` records dead-lettered for `reason`.
    pub fn dead_lettered(&self, reason: &str, n: u64) {
        self.counter.with_label_values(&["dead_lettered", reason]).inc_by(n);
    }

    /// Records with `outcome` so far, over every reason.
    pub fn total(&self, outcome: &str) -> u64 {
        self.by_reason(outcome).iter().map(|(_, n)| n).sum()
    }

    /// Records with `outcome` so far, per reason.
    pub fn by_reason(&self, outcome: &str) -> Vec<(String, u64)> {
        use prometheus::core::Collector;
        let mut out = Vec::new();
        for family in self.counter.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_owned()).unwrap_or_default()
                };
                if label("outcome") == outcome {
                    out.push((label("reason"), m.get_counter().get_value() as u64));
                }
            }
        }
        out.sort();
        out
    }

    /// Records with any outcome so far.
    pub fn all(&self) -> u64 {
        ["applied", "skipped", "dead_lettered"].iter().map(|o| self.total(o)).sum()
    }
}

/// Metrics of the validation stage.
#[derive(Clone)]
pub struct ValidateMetrics {
    /// Records consumed from events.raw.
    pub records_in: IntCounter,
    /// Records by outcome: `valid` or `dlq`.
    pub records_out: IntCounterVec,
    /// DLQ records by reason code.
    pub dlq_reasons: IntCounterVec,
    /// Records per processed batch.
    pub batch_size: Histogram,
    /// Seconds from batch start to committed offsets.
    pub batch_seconds: Histogram,
    /// Produce or commit failures that made the stage retry a batch.
    pub retries: IntCounterVec,
    /// Consumer lag per partition (high watermark - committed), sampled per batch.
    pub lag: IntGaugeVec,
}

impl ValidateMetrics {
    /// Registers the stage's metrics in `r`.
    pub fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            records_in: {
                let c = IntCounter::new("lifecycle_validate_records_in_total", "Records consumed from events.raw")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            records_out: counter_vec(r, "lifecycle_validate_records_out_total", "Records by outcome", &["outcome"])?,
            dlq_reasons: counter_vec(
                r,
                "lifecycle_validate_dlq_total",
                "Dead-lettered records by reason",
                &["reason"],
            )?,
            batch_size: histogram(
                r,
                "lifecycle_validate_batch_records",
                "Records per batch",
                exponential_buckets(1.0, 4.0, 9)?,
            )?,
            batch_seconds: histogram(
                r,
                "lifecycle_validate_batch_seconds",
                "Batch time from first record to committed offsets",
                exponential_buckets(0.001, 2.0, 14)?,
            )?,
            retries: counter_vec(r, "lifecycle_validate_retries_total", "Batch retries by cause", &["cause"])?,
            lag: {
                let g = IntGaugeVec::new(
                    Opts::new("lifecycle_validate_consumer_lag_records", "High watermark minus committed offset"),
                    &["partition"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
        };
        for outcome in ["valid", "dlq"] {
            m.records_out.with_label_values(&[outcome]);
        }
        for code in ReasonCode::ALL {
            m.dlq_reasons.with_label_values(&[code.as_str()]);
        }
        Ok(m)
    }
}

/// Metrics of an HTTP service (ingestion API, registry).
#[derive(Clone)]
pub struct HttpMetrics {
    /// Requests by route template, method and status code.
    pub requests: IntCounterVec,
    /// Request latency by route template.
    pub latency: HistogramVec,
    /// Events accepted or rejected by the ingestion API.
    pub ingest_events: IntCounterVec,
}

impl HttpMetrics {
    /// Registers HTTP metrics in `r`.
    pub fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let latency = HistogramVec::new(
            HistogramOpts::new("lifecycle_http_request_seconds", "Request latency")
                .buckets(exponential_buckets(0.0005, 2.0, 14)?),
            &["route"],
        )?;
        r.register(Box::new(latency.clone()))?;
        Ok(Self {
            requests: counter_vec(r, "lifecycle_http_requests_total", "HTTP requests", &["route", "method", "status"])?,
            latency,
            ingest_events: counter_vec(
                r,
                "lifecycle_ingest_events_total",
                "Events received over HTTP by outcome",
                &["outcome"],
            )?,
        })
    }
}

/// Metrics of the profile stage.
#[derive(Clone)]
pub struct ProfileMetrics {
    /// Records consumed from events.valid.
    pub records_in: IntCounter,
    /// Each record's outcome: `applied` (`event`), `skipped` (`offset`: applied
    /// before a restart; `event_id`: a duplicate delivery) or `dead_lettered`
    /// (the reason code: unreadable, or refused by PostgreSQL).
    pub outcomes: Outcomes,
    /// Lifecycle transitions by target stage.
    pub transitions: IntCounterVec,
    /// Records per batch.
    pub batch_size: Histogram,
    /// Seconds to write a batch (produce changelog + PostgreSQL transaction).
    pub flush_seconds: Histogram,
    /// Batch retries by cause.
    pub retries: IntCounterVec,
    /// Consumer lag per partition.
    pub lag: IntGaugeVec,
    /// Trigger evaluations by outcome (`met`, `not_met`).
    pub trigger_evaluations: IntCounterVec,
    /// Segment membership changes (`entered`, `exited`).
    pub segment_changes: IntCounterVec,
    /// Estimated bytes of cached profiles.
    pub cache_bytes: IntGauge,
    /// Profiles cached.
    pub cache_entries: IntGauge,
    /// Profiles a batch needed, by where they were found: `hit` (the cache) or
    /// `miss` (loaded from PostgreSQL, or new).
    pub cache_lookups: IntCounterVec,
}

impl ProfileMetrics {
    /// Registers the stage's metrics in `r`.
    pub fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let records_in = IntCounter::new("lifecycle_profile_records_in_total", "Records consumed from events.valid")?;
        r.register(Box::new(records_in.clone()))?;
        let outcomes = Outcomes::register(
            r,
            "lifecycle_profile_outcomes_total",
            "Records by outcome (applied, skipped, dead_lettered) and reason",
        )?;
        let lag = IntGaugeVec::new(
            Opts::new("lifecycle_profile_consumer_lag_records", "High watermark minus committed offset"),
            &["partition"],
        )?;
        r.register(Box::new(lag.clone()))?;
        let cache_bytes = IntGauge::new("lifecycle_profile_cache_bytes", "Estimated bytes of cached profiles")?;
        r.register(Box::new(cache_bytes.clone()))?;
        let cache_entries = IntGauge::new("lifecycle_profile_cache_entries", "Profiles cached")?;
        r.register(Box::new(cache_entries.clone()))?;
        let m = Self {
            records_in,
            outcomes,
            cache_bytes,
            cache_entries,
            cache_lookups: counter_vec(
                r,
                "lifecycle_profile_cache_lookups_total",
                "Profiles a batch needed, by result: hit (cached) or miss (loaded or new)",
                &["result"],
            )?,
            transitions: counter_vec(
                r,
                "lifecycle_profile_transitions_total",
                "Lifecycle transitions by target stage",
                &["to"],
            )?,
            batch_size: histogram(
                r,
                "lifecycle_profile_batch_records",
                "Records per batch",
                exponential_buckets(1.0, 4.0, 9)?,
            )?,
            flush_seconds: histogram(
                r,
                "lifecycle_profile_flush_seconds",
                "Time to produce the changelog and commit the PostgreSQL transaction",
                exponential_buckets(0.001, 2.0, 14)?,
            )?,
            retries: counter_vec(r, "lifecycle_profile_retries_total", "Batch retries by cause", &["cause"])?,
            lag,
            trigger_evaluations: counter_vec(
                r,
                "lifecycle_profile_trigger_evaluations_total",
                "Trigger evaluations by outcome",
                &["outcome"],
            )?,
            segment_changes: counter_vec(
                r,
                "lifecycle_profile_segment_changes_total",
                "Segment membership changes",
                &["change"],
            )?,
        };
        m.outcomes.applied("event", 0);
        for reason in ["offset", "event_id"] {
            m.outcomes.skipped(reason, 0);
        }
        Ok(m)
    }
}

/// Metrics of the ClickHouse analytics sink.
#[derive(Clone)]
pub struct AnalyticsMetrics {
    /// Records consumed from events.valid and lifecycle.events.
    pub records_in: IntCounter,
    /// Rows inserted into ClickHouse, by table (`events`, `lifecycle_events`).
    pub rows_inserted: IntCounterVec,
    /// Each record's outcome: `applied` (`event`, `transition`) or
    /// `dead_lettered` (the reason code: unreadable, or refused by ClickHouse).
    pub outcomes: Outcomes,
    /// Retries by cause (`insert`, `migrate`, `registry`, `rollup`, `dlq`).
    pub retries: IntCounterVec,
    /// Days recomputed into metrics_daily.
    pub days_rolled_up: IntCounter,
    /// Seconds per rollup.
    pub rollup_seconds: Histogram,
}

impl AnalyticsMetrics {
    /// Registers the sink's metrics in `r`.
    pub fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let records_in = IntCounter::new("lifecycle_analytics_records_in_total", "Records consumed")?;
        r.register(Box::new(records_in.clone()))?;
        let days_rolled_up =
            IntCounter::new("lifecycle_analytics_days_rolled_up_total", "Days recomputed into metrics_daily")?;
        r.register(Box::new(days_rolled_up.clone()))?;
        let rollup_seconds = Histogram::with_opts(HistogramOpts::new(
            "lifecycle_analytics_rollup_seconds",
            "Seconds per metrics_daily rollup",
        ))?;
        r.register(Box::new(rollup_seconds.clone()))?;
        Ok(Self {
            records_in,
            rows_inserted: counter_vec(r, "lifecycle_analytics_rows_inserted_total", "Rows inserted", &["table"])?,
            outcomes: Outcomes::register(
                r,
                "lifecycle_analytics_outcomes_total",
                "Records by outcome (applied, dead_lettered) and reason",
            )?,
            retries: counter_vec(r, "lifecycle_analytics_retries_total", "Retries by cause", &["cause"])?,
            days_rolled_up,
            rollup_seconds,
        })
    }
}

/// Metrics of the workflow engine.
#[derive(Clone)]
pub struct WorkflowMetrics {
    /// Commands consumed from workflow.commands, by outcome: `applied`
    /// (`started`, `cancelled`), `skipped` (`duplicate`) or `dead_lettered`
    /// (the reason on workflow.dlq).
    pub commands: Outcomes,
    /// Instances started.
    pub instances_started: IntCounter,
    /// Instances that ended, by status (`completed`, `failed`).
    pub instances_ended: IntCounterVec,
    /// Service-task attempts by action and outcome.
    pub task_attempts: IntCounterVec,
    /// Seconds per service-task attempt.
    pub task_seconds: Histogram,
    /// Instances being worked on now.
    pub in_flight: IntGauge,
    /// Webhook deliveries by outcome (`delivered`, `retry`, `failed`).
    pub webhooks: IntCounterVec,
    /// Retries of the engine's own IO (database, broker) by cause.
    pub retries: IntCounterVec,
}

impl WorkflowMetrics {
    /// Registers the engine's metrics in `r`.
    pub fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let instances_started =
            IntCounter::new("lifecycle_workflow_instances_started_total", "Workflow instances started")?;
        r.register(Box::new(instances_started.clone()))?;
        let in_flight = IntGauge::new("lifecycle_workflow_in_flight", "Instances being worked on now")?;
        r.register(Box::new(in_flight.clone()))?;
        Ok(Self {
            commands: Outcomes::register(
                r,
                "lifecycle_workflow_commands_total",
                "Commands consumed by outcome (applied, skipped, dead_lettered) and reason",
            )?,
            instances_started,
            instances_ended: counter_vec(
                r,
                "lifecycle_workflow_instances_ended_total",
                "Workflow instances that ended, by status",
                &["status"],
            )?,
            task_attempts: counter_vec(
                r,
                "lifecycle_workflow_task_attempts_total",
                "Service-task attempts by action and outcome",
                &["action", "outcome"],
            )?,
            task_seconds: histogram(
                r,
                "lifecycle_workflow_task_seconds",
                "Seconds per service-task attempt",
                exponential_buckets(0.001, 2.0, 16)?,
            )?,
            in_flight,
            webhooks: counter_vec(
                r,
                "lifecycle_workflow_webhooks_total",
                "Webhook deliveries by outcome",
                &["outcome"],
            )?,
            retries: counter_vec(r, "lifecycle_workflow_retries_total", "Engine IO retries by cause", &["cause"])?,
        })
    }
}

/// Metrics of the CDC connector.
#[derive(Clone)]
pub struct CdcMetrics {
    /// Change events written to Kafka, by `op` (`r`, `c`, `u`, `d`, `t`) and table.
    pub changes: IntCounterVec,
    /// Tombstones written after deletes.
    pub tombstones: IntCounter,
    /// Source transactions streamed.
    pub transactions: IntCounter,
    /// Sessions restarted (`session`: PostgreSQL or Kafka failed) and Kafka batches that failed (`kafka`).
    pub retries: IntCounterVec,
    /// WAL bytes between the server's current position and the slot's confirmed one.
    pub slot_lag_bytes: IntGauge,
    /// Seconds since the newest change the slot has confirmed was committed, while WAL waits behind it.
    pub slot_lag_seconds: IntGauge,
    /// Bytes of WAL the server may still write before it invalidates the slot
    /// (`safe_wal_size`; -1 when `max_slot_wal_keep_size` is unlimited).
    pub slot_safe_wal_bytes: IntGauge,
    /// The slot's confirmed LSN as a number.
    pub confirmed_lsn: IntGauge,
    /// Seconds from a transaction's commit in PostgreSQL to Kafka's acknowledgement of its last change.
    pub commit_to_kafka_seconds: Histogram,
}

impl CdcMetrics {
    /// Registers the connector's metrics in `r`.
    pub fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Self {
            changes: counter_vec(
                r,
                "lifecycle_cdc_changes_total",
                "Change events written, by op and table",
                &["op", "table"],
            )?,
            tombstones: counter("lifecycle_cdc_tombstones_total", "Tombstones written after deletes")?,
            transactions: counter("lifecycle_cdc_transactions_total", "Source transactions streamed")?,
            retries: counter_vec(
                r,
                "lifecycle_cdc_retries_total",
                "Reconnections and retried batches by cause",
                &["cause"],
            )?,
            slot_lag_bytes: gauge("lifecycle_cdc_slot_lag_bytes", "WAL bytes behind the slot's confirmed LSN")?,
            slot_lag_seconds: gauge(
                "lifecycle_cdc_slot_lag_seconds",
                "Seconds since the newest confirmed change was committed, while WAL waits behind it",
            )?,
            slot_safe_wal_bytes: gauge(
                "lifecycle_cdc_slot_safe_wal_bytes",
                "WAL bytes left before the server invalidates the slot (-1: unlimited)",
            )?,
            confirmed_lsn: gauge("lifecycle_cdc_confirmed_lsn", "The slot's confirmed LSN")?,
            commit_to_kafka_seconds: histogram(
                r,
                "lifecycle_cdc_commit_to_kafka_seconds",
                "Seconds from a source commit to Kafka's acknowledgement of its last change",
                exponential_buckets(0.001, 2.0, 16)?,
            )?,
        })
    }
}
