//! The profile update function (`Profile::apply`: counters, sessions, revenue,
//! engagement score, lifecycle stage) per event, against a baseline in the same
//! run: the per-user hash-map lookup and a bare counter increment.

use std::collections::HashMap;
use std::hint::black_box;

use chrono::Utc;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use lifecycle_benches::Fixture;
use lifecycle_pipeline::event::Event;
use lifecycle_pipeline::process::{Outcome, process};
use lifecycle_pipeline::profile::{LifecycleRules, Profile, ScoreParams};

fn bench(c: &mut Criterion) {
    let f = Fixture::new(1000);
    let now = Utc::now();
    let events: Vec<Event> = f
        .avro
        .iter()
        .filter_map(|p| match process(p, &f.cache, &f.envelope, &f.validator, now) {
            Outcome::Valid(e) => Some(e),
            Outcome::Rejected(..) => None,
        })
        .collect();
    assert_eq!(events.len(), f.avro.len(), "every fixture event is valid");
    let (rules, params) = (LifecycleRules::default(), ScoreParams::default());
    let mut g = c.benchmark_group("profile_update_1000_events");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("baseline_lookup_and_count", |b| {
        b.iter_batched(
            HashMap::<String, u64>::new,
            |mut users| {
                for e in &events {
                    *users.entry(e.user_id.clone()).or_insert(0) += 1;
                }
                black_box(users.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("profile_apply", |b| {
        b.iter_batched(
            HashMap::<String, Profile>::new,
            |mut users| {
                for e in &events {
                    let p = users.entry(e.user_id.clone()).or_insert_with(|| Profile::new(e.user_id.clone()));
                    black_box(p.apply(e, &rules, &params));
                }
                black_box(users.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
