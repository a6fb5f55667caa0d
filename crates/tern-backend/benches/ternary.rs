//! Ternary W1.58A8 products on the CPU backend: matvec (1 row, decode) and
//! matmul (128 rows, prefill/training), plus the f32 input-gradient product.
//! Throughput is in multiply-accumulates (`rows * out * in` elements).
//!
//! `cargo bench -p tern-backend --bench ternary`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern_backend::conformance::Rng;
use tern_backend::{Backend, Cpu, TernaryCodes};

/// `(out, in)`: the 2048-wide attention projection and the 1B ladder's
/// feed-forward shapes (bitnet.cpp's 1B: hidden 2048, ffn 3584) and 5632.
const SHAPES: &[(usize, usize)] = &[(2048, 2048), (5632, 2048), (2048, 5632), (3584, 2048)];

fn bench(c: &mut Criterion) {
    let cpu = Cpu::new();
    let mut rng = Rng::new(42);
    let mut g = c.benchmark_group(format!("ternary/{}", cpu.name()));
    for &(out, cols) in SHAPES {
        let codes = rng.codes(out * cols, 0.35);
        let w = cpu
            .upload_ternary(&TernaryCodes {
                rows: out,
                cols,
                codes: &codes,
                scale: 0.02,
            })
            .expect("upload");
        for rows in [1usize, 128] {
            let x = rng.vec(rows * cols, -1.0, 1.0);
            let mut y = vec![0.0; rows * out];
            g.throughput(Throughput::Elements((rows * out * cols) as u64));
            let kind = if rows == 1 { "matvec" } else { "matmul" };
            g.bench_function(
                BenchmarkId::new(format!("{kind}_rows{rows}"), format!("{out}x{cols}")),
                |b| b.iter(|| cpu.ternary_matmul(&w, &x, &mut y, rows)),
            );
        }
        if (out, cols) == (2048, 2048) {
            let rows = 128;
            let dy = rng.vec(rows * out, -1.0, 1.0);
            let mut dx = vec![0.0; rows * cols];
            g.throughput(Throughput::Elements((rows * out * cols) as u64));
            g.bench_function(
                BenchmarkId::new("backward_rows128", format!("{out}x{cols}")),
                |b| b.iter(|| cpu.ternary_matmul_backward(&w, &dy, &mut dx, rows)),
            );
        }
    }
    g.finish();

    // The portable kernel (the path of targets without AVX2, such as ARM).
    let portable = Cpu::new().portable();
    let mut g = c.benchmark_group(format!("ternary/{}", portable.name()));
    let (out, cols) = (2048, 2048);
    let codes = rng.codes(out * cols, 0.35);
    let w = portable
        .upload_ternary(&TernaryCodes {
            rows: out,
            cols,
            codes: &codes,
            scale: 0.02,
        })
        .expect("upload");
    for rows in [1usize, 128] {
        let x = rng.vec(rows * cols, -1.0, 1.0);
        let mut y = vec![0.0; rows * out];
        g.throughput(Throughput::Elements((rows * out * cols) as u64));
        let kind = if rows == 1 { "matvec" } else { "matmul" };
        g.bench_function(
            BenchmarkId::new(format!("{kind}_rows{rows}"), format!("{out}x{cols}")),
            |b| b.iter(|| portable.ternary_matmul(&w, &x, &mut y, rows)),
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
