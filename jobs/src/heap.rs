//! The process heap as jemalloc (the `lifecycle` binary's allocator) sees it,
//! exported on every stage's `/metrics`: what the program holds (`allocated`)
//! against what it costs in memory (`resident`). A gap that grows between the
//! two is fragmentation or pages not yet given back; `allocated` growing is the
//! program holding more.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, Registry};
use tikv_jemalloc_ctl::{epoch, stats};

/// Reads jemalloc's statistics on every scrape.
pub struct HeapCollector {
    allocated: IntGauge,
    active: IntGauge,
    resident: IntGauge,
    retained: IntGauge,
    metadata: IntGauge,
}

impl HeapCollector {
    /// The collector's gauges, not yet read.
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            allocated: IntGauge::new(
                "lifecycle_heap_allocated_bytes",
                "Bytes the program has allocated and not freed",
            )?,
            active: IntGauge::new(
                "lifecycle_heap_active_bytes",
                "Bytes in the allocator's pages that hold allocations",
            )?,
            resident: IntGauge::new(
                "lifecycle_heap_resident_bytes",
                "Bytes of the allocator's pages in physical memory (data, metadata, freed pages not yet returned)",
            )?,
            retained: IntGauge::new(
                "lifecycle_heap_retained_bytes",
                "Bytes of virtual memory given back to the system but kept mapped for reuse",
            )?,
            metadata: IntGauge::new("lifecycle_heap_metadata_bytes", "Bytes of the allocator's own bookkeeping")?,
        })
    }

    /// Registers the collector in `r`.
    pub fn register(r: &Registry) -> Result<(), prometheus::Error> {
        r.register(Box::new(Self::new()?))
    }

    /// Refreshes the gauges from jemalloc. Leaves them as they were if the
    /// allocator cannot answer (built without statistics).
    fn refresh(&self) {
        if epoch::advance().is_err() {
            return;
        }
        let pairs: [(&IntGauge, tikv_jemalloc_ctl::Result<usize>); 5] = [
            (&self.allocated, stats::allocated::read()),
            (&self.active, stats::active::read()),
            (&self.resident, stats::resident::read()),
            (&self.retained, stats::retained::read()),
            (&self.metadata, stats::metadata::read()),
        ];
        for (g, v) in pairs {
            if let Ok(v) = v {
                g.set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
    }

    fn gauges(&self) -> [&IntGauge; 5] {
        [&self.allocated, &self.active, &self.resident, &self.retained, &self.metadata]
    }
}

impl Collector for HeapCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges().into_iter().flat_map(|g| g.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        self.gauges().into_iter().flat_map(|g| g.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(r: &Registry) -> impl Fn(&str) -> f64 {
        let families = r.gather();
        move |name| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().get_value())
                .unwrap_or_else(|| panic!("{name} missing"))
        }
    }

    #[test]
    fn scrape_reports_what_the_program_holds() {
        let r = Registry::new();
        HeapCollector::register(&r).expect("registers");
        let before = scrape(&r)("lifecycle_heap_allocated_bytes");
        let held: Vec<u8> = vec![1; 8 << 20];
        let value = scrape(&r);
        let (allocated, active, resident) = (
            value("lifecycle_heap_allocated_bytes"),
            value("lifecycle_heap_active_bytes"),
            value("lifecycle_heap_resident_bytes"),
        );
        assert!(allocated - before >= f64::from(8 << 20), "allocated {before} -> {allocated} while holding 8 MiB");
        assert!(active >= allocated, "active {active} < allocated {allocated}");
        assert!(resident >= active, "resident {resident} < active {active}");
        assert_eq!(held.len(), 8 << 20);
    }
}
