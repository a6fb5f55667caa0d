//! The cost of a dispatch that does almost nothing: chains of dependent
//! `axpy` dispatches (each reads and writes the buffer the previous one
//! wrote, so the device runs them one after another with a barrier between)
//! over 1 to 2^20 elements, timed by the wall clock from the first
//! recording to the finished wait. The smallest is the floor under every
//! kernel of a decode step (docs/benchmarks/wgpu-h200.md).
//!
//! `cargo run --release -p tern-wgpu --example dispatch_floor -- 2000`
//! (dispatches per chain; `TERN_WGPU_ADAPTER` picks the adapter).

use std::time::Instant;

use tern_backend::Backend;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(Ok(2000), |s| s.parse())?
        .max(1);
    let b = tern_wgpu::Wgpu::new()?;
    println!("{}: {n} dependent axpy dispatches per chain", b.name());
    for len in [1usize, 2048, 1 << 16, 1 << 20] {
        let x = b.upload(&vec![1e-3; len])?;
        let mut y = b.zeros(len)?;
        let mut best = f64::INFINITY;
        // the first chain compiles the kernel and fills the caches
        for _ in 0..4 {
            let t = Instant::now();
            for _ in 0..n {
                b.axpy(1.0, &x, &mut y);
            }
            b.synchronize()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        let per = best / n as f64 * 1e6;
        let gbs = (3 * 4 * len) as f64 / (per * 1e-6) / 1e9;
        println!("  {len:>8} elements: {per:7.2} µs per dispatch ({gbs:8.1} GB/s moved)");
    }
    Ok(())
}
