//! Analysis throughput over the shared real-world files, in bytes/s.
//! `cargo bench -p microfactory-protocol --bench analysis`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use microfactory_protocol::analysis::{AnalyzerConfig, analyze_bytes};

/// The files to measure. A missing one panics with its path: a bench that
/// silently skipped its data would report nothing and look like a pass.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/gcode");
    [
        "coupling_pla.gcode",
        "bracket_petg.gcode",
        "pcb_isolation_and_drill_inch.nc",
    ]
    .into_iter()
    .map(|n| {
        let path = format!("{dir}/{n}");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("bench data {path}: {e}"));
        (n, bytes)
    })
    .collect()
}

fn analysis(c: &mut Criterion) {
    let mut g = c.benchmark_group("analysis");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for (name, bytes) in files() {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| analyze_bytes(black_box(&bytes), AnalyzerConfig::default()))
        });
    }
    g.finish();
}

criterion_group!(benches, analysis);
criterion_main!(benches);
