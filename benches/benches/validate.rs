//! Validation step cost per event against plain Avro decoding of the same bytes.

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lifecycle_benches::Fixture;
use lifecycle_pipeline::process::{Outcome, process};
use lifecycle_pipeline::wire;

fn bench(c: &mut Criterion) {
    let f = Fixture::new(1000);
    let now = Utc::now();
    let bytes: u64 = f.avro.iter().map(|b| b.len() as u64).sum();
    let mut g = c.benchmark_group("validate_1000_events");
    g.throughput(Throughput::Elements(f.avro.len() as u64));
    eprintln!("mean Avro event size: {} bytes", bytes / f.avro.len() as u64);
    g.bench_function("baseline_avro_decode_only", |b| {
        b.iter(|| {
            for p in &f.avro {
                let mut body = &p[5..];
                #[allow(deprecated)]
                let v = apache_avro::from_avro_datum(f.envelope.schema(), &mut body, None);
                black_box(v.is_ok());
            }
        })
    });
    g.bench_function("avro_decode_validate", |b| {
        b.iter(|| {
            for p in &f.avro {
                black_box(matches!(process(p, &f.cache, &f.envelope, &f.validator, now), Outcome::Valid(_)));
            }
        })
    });
    g.bench_function("avro_decode_validate_encode", |b| {
        b.iter(|| {
            for p in &f.avro {
                if let Outcome::Valid(e) = process(p, &f.cache, &f.envelope, &f.validator, now) {
                    black_box(wire::frame(1, &f.envelope.encode(&e).unwrap_or_default()));
                }
            }
        })
    });
    g.bench_function("json_validate", |b| {
        b.iter(|| {
            for p in &f.json {
                black_box(matches!(process(p, &f.cache, &f.envelope, &f.validator, now), Outcome::Valid(_)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
