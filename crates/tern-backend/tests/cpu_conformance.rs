//! The conformance suite on the CPU backend: with the detected integer kernel
//! (AVX2 where available) and with the portable kernel, plus thread-count
//! determinism of the integer path.

use tern_backend::conformance::{reference, Rng};
use tern_backend::{Backend, Cpu, TernaryCodes};

mod detected {
    tern_backend::conformance_tests!(tern_backend::Cpu::with_threads(2));
}

mod portable {
    tern_backend::conformance_tests!(tern_backend::Cpu::with_threads(2).portable());
}

mod single_thread {
    tern_backend::conformance_tests!(tern_backend::Cpu::with_threads(1));
}

fn ternary_case(out: usize, cols: usize, rows: usize, seed: u64) -> (Vec<i8>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    (rng.codes(out * cols, 0.3), rng.vec(rows * cols, -2.0, 2.0))
}

/// The integer accumulators and the outputs are identical with 1 and 2
/// threads, with the portable and the detected kernel, and equal the scalar
/// i64 reference.
#[test]
fn integer_path_identical_across_threads_and_kernels() {
    let backends = [
        Cpu::with_threads(1),
        Cpu::with_threads(2),
        Cpu::with_threads(1).portable(),
        Cpu::with_threads(2).portable(),
    ];
    for &(out, cols, rows) in &[
        (1usize, 1usize, 1usize),
        (37, 300, 1),
        (65, 5460, 3),
        (130, 256, 17),
        (16, 2048, 128),
    ] {
        let (codes, x) = ternary_case(out, cols, rows, (out * cols + rows) as u64);
        let src = TernaryCodes {
            rows: out,
            cols,
            codes: &codes,
            scale: 0.31,
        };
        let (xq, _) = reference::quant_act(&x, rows, cols);
        let want: Vec<i32> = reference::ternary_acc(&codes, out, cols, &xq, rows)
            .into_iter()
            .map(|v| v as i32)
            .collect();
        let mut ys = Vec::new();
        for b in &backends {
            let w = b.upload_ternary(&src).unwrap();
            let (acc, _) = b.ternary_acc(&w, &x, rows);
            assert_eq!(
                acc,
                want,
                "{}: accumulators [{rows} x {cols}] -> {out}",
                b.name()
            );
            let mut y = vec![0.0; rows * out];
            b.ternary_matmul(&w, &x, &mut y, rows);
            ys.push(y.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
        for y in &ys[1..] {
            assert_eq!(y, &ys[0], "outputs differ between backends");
        }
    }
}

/// Every float op gives bit-identical results with 1 and 2 threads (fixed
/// chunking, fixed reduction order).
#[test]
fn float_ops_identical_across_threads() {
    let (b1, b2) = (Cpu::with_threads(1), Cpu::with_threads(2));
    let mut rng = Rng::new(99);
    let (out, cols, rows) = (300, 700, 70);
    let codes = rng.codes(out * cols, 0.3);
    let src = TernaryCodes {
        rows: out,
        cols,
        codes: &codes,
        scale: 0.5,
    };
    let dy = rng.vec(rows * out, -1.0, 1.0);
    let a = rng.vec(rows * cols, -1.0, 1.0);
    let bm = rng.vec(cols * out, -1.0, 1.0);
    let g = tern_backend::Gemm::new(rows, cols, out);
    let mut res = Vec::new();
    for b in [&b1, &b2] {
        let w = b.upload_ternary(&src).unwrap();
        let mut dx = vec![0.0; rows * cols];
        b.ternary_matmul_backward(&w, &dy, &mut dx, rows);
        let mut c = vec![0.0; rows * out];
        b.matmul(&a, &bm, &mut c, g);
        let mut ss = vec![0.0; 1];
        b.sum_squares(&a, &mut ss, 0);
        res.push((dx, c, ss));
    }
    assert!(res[0] == res[1], "results depend on the thread count");
}

#[test]
fn name_reports_threads_and_kernel() {
    let n = Cpu::with_threads(2).portable().name();
    assert_eq!(n, "cpu (2 threads, portable)");
}
