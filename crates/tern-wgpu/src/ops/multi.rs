//! Multi-tensor ops ([`tern_backend::multi`]): many small tensors in one
//! dispatch. WGSL cannot index an array of bindings, so the kernels are
//! generated for a fixed count of tensors with one set of bindings each and
//! a branch on the (workgroup-uniform) tensor index
//! (`shaders/multi_adamw.wgsl`, `shaders/multi_gemm.wgsl`). The count per
//! dispatch is bounded by the adapter's storage bindings per stage; a
//! tensor larger than one binding window takes the single-tensor op.

use bytemuck::{Pod, Zeroable};
use std::fmt::Write;
use tern_backend::multi::{AdamWTensor, Product};
use tern_backend::AdamW;

use super::elementwise::adamw_words;
use crate::ctx::WG;
use crate::shader::preprocess;
use crate::Wgpu;

pub(crate) const ADAMW_SRC: &str = include_str!("../shaders/multi_adamw.wgsl");
pub(crate) const GEMM_SRC: &str = include_str!("../shaders/multi_gemm.wgsl");

/// Most tensors one AdamW dispatch updates (`ends` holds 32 words).
const ADAMW_MAX: usize = 32;
/// Most products one dispatch computes (eight words each fill the 256-byte
/// parameter slot).
const GEMM_MAX: usize = 8;

/// `struct P` of `shaders/multi_adamw.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct AdamwMultiParams {
    pub f: [f32; 8],
    pub ends: [u32; ADAMW_MAX],
}

/// `struct P` of `shaders/multi_gemm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct GemmManyParams {
    pub q: [u32; 8 * GEMM_MAX],
}

/// Storage bindings one dispatch may use.
fn storage_bindings(b: &Wgpu) -> usize {
    b.ctx.limits.max_storage_buffers_per_shader_stage as usize
}

fn adamw_source(k: usize) -> String {
    let (mut binds, mut steps, mut disp) = (String::new(), String::new(), String::new());
    for t in 0..k {
        for (j, (name, access)) in [
            ("pr", "read_write"),
            ("gr", "read"),
            ("m", "read_write"),
            ("v", "read_write"),
        ]
        .iter()
        .enumerate()
        {
            let _ = writeln!(
                binds,
                "@group(0) @binding({}) var<storage, {access}> {name}{t}: array<f32>;",
                1 + 4 * t + j
            );
        }
        let _ = write!(
            steps,
            "fn step{t}(i: u32) {{
    let gi = gr{t}[i];
    var pi = pr{t}[i] * p.f0;
    let mi = m{t}[i] + ((gi - m{t}[i]) * p.f1) * p.one;
    let vi = (v{t}[i] * p.f2) * p.one + ((p.f3 * gi) * gi) * p.one;
    let denom = sqrt(vi) / p.f4 + p.f5;
    pi = pi - (p.f6 * (mi / denom)) * p.one;
    m{t}[i] = mi;
    v{t}[i] = vi;
    pr{t}[i] = pi;
}}
"
        );
        let _ = if t == 0 {
            writeln!(disp, "    if (i < end(0u)) {{\n        step0(i);")
        } else {
            writeln!(
                disp,
                "    }} else if (i < end({t}u)) {{\n        step{t}(i - end({}u));",
                t - 1
            )
        };
    }
    disp.push_str("    }\n");
    preprocess(
        ADAMW_SRC,
        &[],
        &[
            ("K", k.to_string()),
            ("BINDINGS", binds),
            ("STEPS", steps),
            ("DISPATCH", disp),
        ],
    )
}

fn gemm_source(k: usize) -> String {
    let (mut binds, mut probs, mut disp) = (String::new(), String::new(), String::new());
    for t in 0..k {
        for (j, (name, access)) in [("a", "read"), ("b", "read"), ("c", "read_write")]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                binds,
                "@group(0) @binding({}) var<storage, {access}> {name}{t}: array<f32>;",
                1 + 3 * t + j
            );
        }
        let _ = write!(
            probs,
            "fn prob{t}(g: u32, lt: u32) {{
    let m = word({t}u, 0u);
    let n = word({t}u, 1u);
    let k = word({t}u, 2u);
    let fl = word({t}u, 3u);
    let ls = fl >> 8u;
    let s = 1u << ls;
    let o = g * (256u >> ls) + (lt >> ls);
    let l = lt & (s - 1u);
    var acc = 0.0;
    if (o < m * n) {{
        let i = o / n;
        let j = o % n;
        let ta = (fl & 1u) != 0u;
        let tb = (fl & 2u) != 0u;
        let ia = select(i * k, i, ta);
        let da = select(1u, m, ta);
        let ib = select(j, j * k, tb);
        let db = select(n, 1u, tb);
        for (var kk = l; kk < k; kk += s) {{
            acc += a{t}[ia + kk * da] * b{t}[ib + kk * db];
        }}
    }}
    red[lt] = acc;
    for (var h = s >> 1u; h > 0u; h >>= 1u) {{
        workgroupBarrier();
        if (l < h) {{
            red[lt] += red[lt + h];
        }}
    }}
    if (l == 0u && o < m * n) {{
        let beta = bitcast<f32>(word({t}u, 5u));
        var r = bitcast<f32>(word({t}u, 4u)) * red[lt];
        if (beta != 0.0) {{
            r += beta * c{t}[o];
        }}
        c{t}[o] = r;
    }}
}}
"
        );
        let _ = if t == 0 {
            writeln!(
                disp,
                "    if (wg < word(0u, 6u)) {{\n        prob0(wg, lt);"
            )
        } else {
            writeln!(
                disp,
                "    }} else if (wg < word({t}u, 6u)) {{\n        prob{t}(wg - word({}u, 6u), lt);",
                t - 1
            )
        };
    }
    disp.push_str("    }\n");
    preprocess(
        GEMM_SRC,
        &[],
        &[
            ("K", k.to_string()),
            ("BINDINGS", binds),
            ("PROBLEMS", probs),
            ("DISPATCH", disp),
        ],
    )
}

pub(crate) fn adamw_multi(b: &Wgpu, ts: &mut [AdamWTensor<'_, Wgpu>], h: AdamW) {
    for t in ts.iter() {
        h.check("wgpu", t.p.len, t.g.len, t.m.len, t.v.len);
    }
    let w = b.ctx.window_elems();
    // largest power of two of tensors whose bindings the stage allows
    let most = (storage_bindings(b) / 4).clamp(1, ADAMW_MAX);
    let most = 1 << most.ilog2();
    let words = adamw_words(h);
    let mut batch: Vec<&mut AdamWTensor<'_, Wgpu>> = Vec::with_capacity(most);
    let flush = |batch: &mut Vec<&mut AdamWTensor<'_, Wgpu>>| {
        // as many tensors per dispatch as a kernel exists for
        while !batch.is_empty() {
            let k = 1 << batch.len().min(most).ilog2();
            let group: Vec<_> = batch.drain(..k).collect();
            if k == 1 {
                let t = group.into_iter().next().expect("one tensor");
                super::elementwise::adamw(b, t.p, t.g, t.m, t.v, h);
                continue;
            }
            let mut params = AdamwMultiParams {
                f: words,
                ..Default::default()
            };
            let mut views = Vec::with_capacity(4 * k);
            let mut total = 0usize;
            for (i, t) in group.iter().enumerate() {
                let n = t.p.len;
                total += n;
                params.ends[i] = total as u32;
                for buf in [&t.p.buf, &t.g.buf, &t.m.buf, &t.v.buf] {
                    views.push(b.ctx.view(buf, 0, n).0);
                }
            }
            let pipe = b
                .ctx
                .pipeline(&format!("multi/adamw/{k}"), || adamw_source(k));
            let groups = b.ctx.grid((total as u32).div_ceil(WG));
            b.ctx.dispatch(&pipe, &params, &views, groups);
        }
    };
    for t in ts.iter_mut() {
        let n = t.p.len;
        if n == 0 {
            continue;
        }
        // a tensor beyond one window, or a sum beyond u32: on its own
        let fits =
            n <= w && batch.iter().map(|t| t.p.len).sum::<usize>() + n < u32::MAX as usize / 2;
        if !fits {
            flush(&mut batch);
            super::elementwise::adamw(b, t.p, t.g, t.m, t.v, h);
            continue;
        }
        batch.push(t);
        if batch.len() == most {
            flush(&mut batch);
        }
    }
    flush(&mut batch);
}

/// Threads sharing one output of a product with reduction length `k`
/// (a power of two): one up to 256 terms, then enough for some 32 terms
/// each, at most 64.
fn split(k: usize) -> usize {
    if k <= 256 {
        1
    } else {
        k.div_ceil(32).next_power_of_two().min(64)
    }
}

pub(crate) fn matmul_many(b: &Wgpu, ps: &mut [Product<'_, Wgpu>]) {
    for p in ps.iter() {
        p.g.check_op("wgpu", "matmul_many", p.a.len, p.b.len, p.c.len);
    }
    let w = b.ctx.window_elems();
    let most = (storage_bindings(b) / 3).min(GEMM_MAX);
    // one product alone, or one beyond a window: the tuned single product
    let alone = |p: &Product<'_, Wgpu>| {
        let g = &p.g;
        g.m * g.k > w || g.k * g.n > w || g.m * g.n > w || g.m * g.n == 0 || g.k == 0
    };
    let mut batch: Vec<&mut Product<'_, Wgpu>> = Vec::with_capacity(most);
    let flush = |batch: &mut Vec<&mut Product<'_, Wgpu>>| {
        if batch.len() == 1 {
            let p = batch.pop().expect("one product");
            super::gemm::matmul(b, p.a, p.b, p.c, p.g);
        }
        if batch.is_empty() {
            return;
        }
        let k = batch.len();
        let mut params = GemmManyParams::zeroed();
        let mut views = Vec::with_capacity(3 * k);
        let mut wgs = 0u32;
        for (t, p) in batch.iter().enumerate() {
            let g = p.g;
            let s = split(g.k);
            wgs += (g.m * g.n * s).div_ceil(WG as usize) as u32;
            let flags = g.trans_a as u32 | (g.trans_b as u32) << 1 | s.ilog2() << 8;
            params.q[8 * t..8 * t + 7].copy_from_slice(&[
                g.m as u32,
                g.n as u32,
                g.k as u32,
                flags,
                g.alpha.to_bits(),
                g.beta.to_bits(),
                wgs,
            ]);
            views.push(b.ctx.view(&p.a.buf, 0, g.m * g.k).0);
            views.push(b.ctx.view(&p.b.buf, 0, g.k * g.n).0);
            views.push(b.ctx.view(&p.c.buf, 0, g.m * g.n).0);
        }
        let pipe = b
            .ctx
            .pipeline(&format!("multi/gemm/{k}"), || gemm_source(k));
        b.ctx.dispatch(&pipe, &params, &views, b.ctx.grid(wgs));
        batch.clear();
    };
    for p in ps.iter_mut() {
        if most < 2 || alone(p) {
            super::gemm::matmul(b, p.a, p.b, p.c, p.g);
            continue;
        }
        batch.push(p);
        if batch.len() == most {
            flush(&mut batch);
        }
    }
    flush(&mut batch);
}

/// Every kernel this module can build (see `crate::variants`): AdamW on
/// 2, 4, .. 32 tensors, the products on 2..=8.
#[cfg(test)]
pub(crate) fn variants() -> Vec<crate::variants::Variant> {
    use crate::variants::Variant;
    let mut v = Vec::new();
    let mut k = 2;
    while k <= ADAMW_MAX {
        let p = std::mem::size_of::<AdamwMultiParams>();
        v.push(Variant::new(
            &format!("multi/adamw/{k}"),
            adamw_source(k),
            p,
        ));
        k *= 2;
    }
    for k in 2..=GEMM_MAX {
        let p = std::mem::size_of::<GemmManyParams>();
        v.push(Variant::new(&format!("multi/gemm/{k}"), gemm_source(k), p));
    }
    v
}
