//! Pieces every stage uses: retry backoff and the writer-schema cache.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lifecycle_connectors::kafka::source::RawRecord;
use lifecycle_pipeline::avro::Envelope;
use lifecycle_pipeline::process::{self, Writer, WriterCache};
use lifecycle_schemas::RegistryClient;
use prometheus::IntCounterVec;

/// Exponential backoff: 100 ms doubling, at most 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5_000))
}

/// Writer schemas by id, fetched from the registry on first sight; ids the
/// registry does not know are remembered as unknown for `unknown_ttl`.
pub(crate) struct WriterSchemas {
    client: RegistryClient,
    cache: WriterCache,
    unknown_since: HashMap<u32, Instant>,
    unknown_ttl: Duration,
}

impl WriterSchemas {
    pub(crate) fn new(client: RegistryClient, unknown_ttl: Duration) -> Self {
        Self { client, cache: WriterCache::new(), unknown_since: HashMap::new(), unknown_ttl }
    }

    pub(crate) fn cache(&self) -> &WriterCache {
        &self.cache
    }

    /// Fetches every schema the batch needs; retries while the registry is down
    /// (counted in `retries{cause="registry"}`), so no record is dead-lettered or
    /// skipped because of an outage.
    pub(crate) async fn fill(&mut self, envelope: &Envelope, batch: &[RawRecord], retries: &IntCounterVec) {
        let ttl = self.unknown_ttl;
        let cache = &mut self.cache;
        self.unknown_since.retain(|id, at| {
            let keep = at.elapsed() < ttl;
            if !keep {
                cache.remove(id);
            }
            keep
        });
        for id in process::missing_schema_ids(batch.iter().map(|r| r.payload.as_slice()), &self.cache) {
            let mut attempt = 0;
            loop {
                match self.client.schema_by_id(id).await {
                    Ok(Some(text)) => {
                        self.cache.insert(id, Some(Writer::prepare(&text, envelope)));
                        break;
                    }
                    Ok(None) => {
                        self.cache.insert(id, None);
                        self.unknown_since.insert(id, Instant::now());
                        break;
                    }
                    Err(e) => {
                        retries.with_label_values(&["registry"]).inc();
                        tracing::warn!(schema_id = id, error = %e, attempt, "schema registry unavailable; retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                }
            }
        }
    }
}
