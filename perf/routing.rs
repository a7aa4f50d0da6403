//! Route lookup and snapshot compile at 100, 1,000 and 10,000 Ingresses with 3 paths each.
//!
//! `cargo bench --bench routing`. Targets: compile < 200 ms at 10,000 Ingresses; lookup < 1 µs and
//! flat as the host count grows.

mod synthetic;

// The allocator the `portico` binary ships with, so that compile times match the process's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portico::routing::{compile, CompileOptions};
use synthetic::synthetic_model;

fn bench(c: &mut Criterion) {
    let opts = CompileOptions::default();
    let mut compile_group = c.benchmark_group("compile");
    compile_group.sample_size(10);
    for n in [100, 1_000, 10_000] {
        let model = synthetic_model(n, 3);
        compile_group.bench_with_input(BenchmarkId::from_parameter(n), &model, |b, m| {
            b.iter(|| black_box(compile(m, &opts)))
        });
    }
    compile_group.finish();

    // The whole publish: compile, certificates, metric handles, pool gauges and the swap.
    let mut publish = c.benchmark_group("publish");
    publish.sample_size(10);
    for (n, endpoints) in [(10_000, 3), (10_000, 10)] {
        let model = synthetic_model(n, endpoints);
        let shared = portico::dataplane::Shared::new(
            opts.clone(),
            portico::metrics::Metrics::new().expect("metrics"),
        );
        publish.bench_function(
            BenchmarkId::from_parameter(format!(
                "{n}-ingresses-{}k-endpoints",
                n * endpoints / 1000
            )),
            |b| b.iter(|| black_box(shared.publish_model(&model, true))),
        );
    }
    publish.finish();

    let mut lookup = c.benchmark_group("lookup");
    for n in [100, 1_000, 10_000] {
        let compiled = compile(&synthetic_model(n, 3), &opts);
        let host = format!("host-{}.example.com", n / 2);
        lookup.bench_function(BenchmarkId::new("prefix", n), |b| {
            b.iter(|| {
                black_box(
                    compiled
                        .table
                        .lookup(black_box(&host), black_box("/api/users/42")),
                )
            })
        });
        lookup.bench_function(BenchmarkId::new("exact", n), |b| {
            b.iter(|| {
                black_box(
                    compiled
                        .table
                        .lookup(black_box(&host), black_box("/api/v1/status")),
                )
            })
        });
        lookup.bench_function(BenchmarkId::new("miss", n), |b| {
            b.iter(|| {
                black_box(
                    compiled
                        .table
                        .lookup(black_box("nobody.example.com"), black_box("/")),
                )
            })
        });
    }
    lookup.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
