//! Poison-record isolation for stages that write a store in batches.
//!
//! A batch is applied whole. When the store refuses it with a data error (the
//! same request would fail again), the batch is split in two and each half is
//! applied in order, recursively, until the records that fail alone are found;
//! exactly those are dead-lettered and everything else is applied. A transient
//! error (the store is down, a conflict) is retried with backoff on the same
//! slice, however long it takes, and the stage reports itself unhealthy while
//! it cannot make progress; configuration errors are retried the same way
//! (an operator has to act, and the health endpoint says so).

use std::ops::Range;

use lifecycle_connectors::error::{ConnectorError, ErrorClass};

use super::Health;
use super::common::backoff;

/// A stage's batch, as the isolation sees it: records `0..len`, applied by slices.
pub(crate) trait Isolated {
    /// Applies the records in `range` (and commits them), or fails without
    /// applying any of them.
    async fn apply(&mut self, range: Range<usize>) -> Result<(), ConnectorError>;

    /// Puts record `index`, which the store refused on its own with `error`,
    /// on the dead-letter topic (and marks it done, so a restart skips it).
    async fn dead_letter(&mut self, index: usize, error: &ConnectorError) -> Result<(), ConnectorError>;

    /// Counts a retry of a failed slice (by the error's code).
    fn retried(&self, error: &ConnectorError);

    /// How long to wait before attempt `attempt + 1` of a failed write.
    fn backoff(&self, attempt: u32) -> std::time::Duration {
        backoff(attempt)
    }
}

/// Failed attempts on one slice after which the stage reports itself unhealthy.
const UNHEALTHY_AFTER: u32 = 3;

/// Applies records `0..len` of `target`, isolating records the store refuses;
/// returns the indices that were dead-lettered, in order. Returns only when
/// every record is applied or dead-lettered.
pub(crate) async fn apply_isolating<T: Isolated>(len: usize, target: &mut T, health: &Health) -> Vec<usize> {
    let mut dead = Vec::new();
    // Slices still to apply, the next one on top: halves are pushed right then
    // left, so records are applied in their order.
    let mut todo: Vec<Range<usize>> = Vec::new();
    todo.push(0..len);
    while let Some(range) = todo.pop() {
        if range.is_empty() {
            continue;
        }
        let mut attempt = 0;
        loop {
            match target.apply(range.clone()).await {
                Ok(()) => break,
                Err(e) if e.class() == ErrorClass::Data && range.len() > 1 => {
                    tracing::info!(error = %e, records = range.len(), "batch refused by the store; splitting it to find the record responsible");
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                    break;
                }
                Err(e) if e.class() == ErrorClass::Data => {
                    tracing::warn!(error = %e, index = range.start, "record refused by the store; dead-lettering it");
                    let mut attempt = 0;
                    while let Err(dlq) = target.dead_letter(range.start, &e).await {
                        target.retried(&dlq);
                        stalled(health, &dlq, attempt);
                        tokio::time::sleep(target.backoff(attempt)).await;
                        attempt += 1;
                    }
                    dead.push(range.start);
                    break;
                }
                Err(e) => {
                    target.retried(&e);
                    stalled(health, &e, attempt);
                    tokio::time::sleep(target.backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
        health.progressing();
    }
    dead
}

fn stalled(health: &Health, e: &ConnectorError, attempt: u32) {
    tracing::warn!(error = %e, code = e.code(), attempt, "store write failed; retrying");
    if attempt + 1 >= UNHEALTHY_AFTER {
        health.stalled(format!("{}: {e}", e.code()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A store that refuses any slice holding a poisoned record, and is down
    /// for the first `outages` calls.
    struct Store {
        poison: Vec<usize>,
        outages: u32,
        applied: Vec<usize>,
        dead: Vec<usize>,
        calls: usize,
    }

    fn data_error() -> ConnectorError {
        ConnectorError::Encode("value refused".into())
    }

    impl Isolated for Store {
        async fn apply(&mut self, range: Range<usize>) -> Result<(), ConnectorError> {
            self.calls += 1;
            if self.outages > 0 {
                self.outages -= 1;
                return Err(ConnectorError::Postgres(sqlx::Error::PoolTimedOut));
            }
            if range.clone().any(|i| self.poison.contains(&i)) {
                return Err(data_error());
            }
            self.applied.extend(range);
            Ok(())
        }

        async fn dead_letter(&mut self, index: usize, _: &ConnectorError) -> Result<(), ConnectorError> {
            self.dead.push(index);
            Ok(())
        }

        fn retried(&self, _: &ConnectorError) {}

        fn backoff(&self, _: u32) -> Duration {
            Duration::ZERO
        }
    }

    fn run(len: usize, poison: &[usize], outages: u32) -> Store {
        let mut store = Store { poison: poison.to_vec(), outages, applied: vec![], dead: vec![], calls: 0 };
        let health = Health::default();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("rt");
        let dead = rt.block_on(apply_isolating(len, &mut store, &health));
        assert_eq!(dead, store.dead);
        assert!(health.check().is_ok(), "healthy again after progress");
        store
    }

    #[test]
    fn exactly_the_poisoned_records_are_dead_lettered_and_the_rest_applied_in_order() {
        let s = run(1000, &[0, 17, 18, 500, 999], 0);
        assert_eq!(s.dead, vec![0, 17, 18, 500, 999]);
        let want: Vec<usize> = (0..1000).filter(|i| ![0, 17, 18, 500, 999].contains(i)).collect();
        assert_eq!(s.applied, want, "every other record once, in order");
        assert!(s.calls < 120, "bisection, not one call per record ({} calls)", s.calls);
    }

    #[test]
    fn a_clean_batch_is_one_call_and_an_empty_one_none() {
        assert_eq!(run(5000, &[], 0).calls, 1);
        assert_eq!(run(0, &[], 0).calls, 0);
    }

    #[test]
    fn outages_are_retried_on_the_same_slice_without_dead_lettering() {
        let s = run(10, &[3], 7);
        assert_eq!(s.dead, vec![3]);
        assert_eq!(s.applied, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn a_stage_is_unhealthy_while_its_store_is_down() {
        struct Down;
        impl Isolated for Down {
            async fn apply(&mut self, _: Range<usize>) -> Result<(), ConnectorError> {
                Err(ConnectorError::Postgres(sqlx::Error::PoolTimedOut))
            }
            async fn dead_letter(&mut self, _: usize, _: &ConnectorError) -> Result<(), ConnectorError> {
                Ok(())
            }
            fn retried(&self, _: &ConnectorError) {}
            fn backoff(&self, _: u32) -> Duration {
                Duration::from_millis(1)
            }
        }
        let health = Health::default();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("rt");
        rt.block_on(async {
            let mut down = Down;
            let stuck = tokio::time::timeout(Duration::from_millis(200), apply_isolating(3, &mut down, &health)).await;
            assert!(stuck.is_err(), "never gives up");
        });
        let reason = health.check().expect_err("unhealthy");
        assert!(reason.contains("postgres_unavailable"), "{reason}");
    }
}
