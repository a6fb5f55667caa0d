//! Attention and RoPE paths the conformance suite's shapes do not reach:
//! split-key decode (at least 256 keys), GQA groups up to 8, head dims from 6
//! to 256, windows down to 1 KiB, and RoPE at positions up to 3e9 — each
//! against the CPU backend, which the conformance suite checks against the
//! f64 reference and finite differences.
use tern_backend::conformance::{attn_inputs, Rng};
use tern_backend::{AttnDims, Backend, Cpu};
use tern_wgpu::{Wgpu, WgpuOptions};

fn wgpu(max_binding: Option<u64>) -> Option<Wgpu> {
    tern_wgpu::test_device(WgpuOptions {
        max_binding,
        ..Default::default()
    })
}

fn maxerr(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut m = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        let e = (x as f64 - y as f64).abs() / (1.0 + (y as f64).abs());
        if e.is_nan() {
            return f64::INFINITY;
        }
        m = m.max(e);
    }
    m
}

fn run(w: &Wgpu, d: AttnDims, seed: u64, bwd: bool) {
    let c = Cpu::with_threads(2);
    let mut rng = Rng::new(seed);
    let (nq, nk, nl) = (d.q_len(), d.k_len(), d.lse_len());
    let (q, k, v) = attn_inputs(&mut rng, d);
    let mut co = vec![0f32; nq];
    let mut cl = vec![0f32; nl];
    c.attention(&q, &k, &v, &mut co, &mut cl, d);
    let (qb, kb, vb) = (
        w.upload(&q).unwrap(),
        w.upload(&k).unwrap(),
        w.upload(&v).unwrap(),
    );
    let mut ob = w.upload(&vec![f32::NAN; nq]).unwrap();
    let mut lb = w.upload(&vec![f32::NAN; nl]).unwrap();
    w.attention(&qb, &kb, &vb, &mut ob, &mut lb, d);
    let eo = maxerr(&w.download(&ob).unwrap(), &co);
    let el = maxerr(&w.download(&lb).unwrap(), &cl);
    eprintln!("fwd {d:?}: out {eo:.2e} lse {el:.2e}");
    assert!(eo < 2e-5 && el < 2e-5, "forward mismatch");
    if bwd {
        let dout = rng.vec(nq, -1.0, 1.0);
        let (mut cdq, mut cdk, mut cdv) = (vec![0f32; nq], vec![0f32; nk], vec![0f32; nk]);
        c.attention_backward(&q, &k, &v, &co, &cl, &dout, &mut cdq, &mut cdk, &mut cdv, d);
        let dob = w.upload(&dout).unwrap();
        let mut dq = w.upload(&vec![f32::NAN; nq]).unwrap();
        let mut dk = w.upload(&vec![f32::NAN; nk]).unwrap();
        let mut dv = w.upload(&vec![f32::NAN; nk]).unwrap();
        w.attention_backward(&qb, &kb, &vb, &ob, &lb, &dob, &mut dq, &mut dk, &mut dv, d);
        let e1 = maxerr(&w.download(&dq).unwrap(), &cdq);
        let e2 = maxerr(&w.download(&dk).unwrap(), &cdk);
        let e3 = maxerr(&w.download(&dv).unwrap(), &cdv);
        eprintln!("bwd {d:?}: dq {e1:.2e} dk {e2:.2e} dv {e3:.2e}");
        assert!(e1 < 1e-4 && e2 < 1e-4 && e3 < 1e-4, "backward mismatch");
    }
}

fn dims(
    batch: usize,
    n_new: usize,
    n_past: usize,
    kv_len: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> AttnDims {
    AttnDims {
        batch,
        n_new,
        n_past,
        kv_len,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    }
}

fn shapes() -> Vec<(AttnDims, bool)> {
    vec![
        (dims(1, 1, 300, 320, 4, 1, 128), false), // decode, split-K, G=4
        (dims(2, 1, 700, 701, 2, 2, 64), false),  // decode, split-K
        (dims(1, 3, 200, 210, 6, 2, 32), false),  // small chunk, split
        (dims(2, 19, 0, 19, 8, 1, 128), true),    // G=8, hd 128
        (dims(1, 40, 0, 40, 6, 2, 64), true),     // G=3
        (dims(2, 23, 0, 23, 4, 4, 16), true),
        (dims(1, 37, 0, 37, 2, 1, 8), true),
        (dims(1, 17, 0, 17, 2, 2, 80), true), // odd-ish head dim
        (dims(1, 9, 5, 20, 4, 2, 12), false), // non power of 2
        (dims(1, 13, 4, 20, 4, 2, 6), false), // head_dim not a multiple of 4
        (dims(2, 11, 0, 11, 3, 1, 10), true),
        (dims(1, 9, 0, 9, 2, 1, 256), true),
    ]
}

#[test]
fn attn_default() {
    let Some(w) = wgpu(None) else { return };
    for (i, (d, bwd)) in shapes().into_iter().enumerate() {
        run(&w, d, 100 + i as u64, bwd);
    }
}

#[test]
fn attn_split() {
    let Some(w) = wgpu(Some(4096)) else { return };
    for (i, (d, bwd)) in shapes().into_iter().enumerate() {
        run(&w, d, 100 + i as u64, bwd);
    }
}

#[test]
fn attn_split_tiny() {
    // the smallest window (4 KiB minus the alignment)
    let Some(w) = wgpu(Some(1024)) else { return };
    for (i, (d, bwd)) in shapes().into_iter().enumerate() {
        let g = d.n_heads / d.n_kv_heads;
        if d.head_dim * g <= 252 && (g - 1) * d.n_new < 250 {
            run(&w, d, 200 + i as u64, bwd);
        }
    }
}

#[test]
fn rope_far() {
    let c = Cpu::with_threads(2);
    for (mb, theta, hd) in [
        (None, 10000.0f32, 128),
        (Some(4096), 500000.0, 64),
        (None, 1e6, 8),
    ] {
        let Some(w) = wgpu(mb) else { return };
        let mut rng = Rng::new(7);
        let nh = 3;
        let pos: Vec<u32> = vec![0, 1, 4095, 65535, 1 << 20, 123457, 3_000_000_000, 77];
        let rows = pos.len();
        let x = rng.vec(rows * nh * hd, -1.0, 1.0);
        for inv in [false, true] {
            let mut cx = x.clone();
            c.rope(&mut cx, &pos, rows, nh, hd, theta, inv);
            let mut wx = w.upload(&x).unwrap();
            let pb = w.upload_ids(&pos).unwrap();
            w.rope(&mut wx, &pb, rows, nh, hd, theta, inv);
            let e = maxerr(&w.download(&wx).unwrap(), &cx);
            eprintln!("rope theta {theta} hd {hd} inv {inv}: {e:.2e}");
            assert!(e < 1e-6);
        }
    }
}
