//! The fused inference steps of a block ([`tern_backend::fused`]) as one
//! dispatch each (`shaders/ternary_fused.wgsl`): RMSNorm and the int8
//! quantizer in every workgroup's prologue, up to three W1.58A8 products,
//! and the step's epilogue (RoPE and the KV-cache append, the gated
//! activation, or the residual add).
//!
//! The kernel is the decode matvec (`ternary_mv.wgsl`'s fused variant) with
//! the norm in front and the epilogue behind, so it applies where that one
//! does: at most 8 rows, whole weight rows in one binding, the packed
//! activations within its workgroup memory. Elsewhere (prefill, small
//! binding limits, adapters with few storage bindings, head sizes that are
//! not a multiple of 8) the op runs the reference composition of plain ops,
//! which gives the same values.

use bytemuck::{Pod, Zeroable};
use tern_backend::fused::{self, AttnIn, FfnIn, NormIn};
use tern_backend::{contract, Activation};

use crate::ctx::View;
use crate::ops::rope::{rope_factors, rope_supported};
use crate::ops::ternary::{mv_subs, view4, WTernary, MV_FUSED_VEC4, MV_MAX_ROWS};
use crate::shader::{preprocess, with_sg};
use crate::{WBuf, Wgpu};

pub(crate) const FUSED: &str = include_str!("../shaders/ternary_fused.wgsl");

/// `struct P` of `shaders/ternary_fused.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct FusedParams {
    pub fr: [u32; 28],
    pub sw: [u32; 4],
    pub sc: [u32; 4],
    pub sy: [u32; 4],
    pub ys: [u32; 4],
    pub ns: [u32; 4],
    pub wg: [u32; 4],
    pub cols: u32,
    pub nr: u32,
    pub wpr4: u32,
    pub nk: u32,
    pub sx: u32,
    pub sn: u32,
    pub nb: u32,
    pub vs: u32,
    pub half: u32,
    pub hd: u32,
    pub eps: f32,
    /// 1e-5 as f32 bits
    pub qeps: u32,
}

/// The kernel's epilogues.
#[derive(Clone, Copy)]
enum Kind {
    Qkv,
    Gate(Activation),
    Resid,
}

impl Kind {
    fn defs(self) -> &'static [&'static str] {
        match self {
            Kind::Qkv => &["QKV"],
            Kind::Gate(Activation::Silu) => &["GATE", "SILU"],
            Kind::Gate(Activation::Relu2) => &["GATE", "RELU2"],
            Kind::Resid => &["RESID"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Qkv => "qkv",
            Kind::Gate(Activation::Silu) => "gate_silu",
            Kind::Gate(Activation::Relu2) => "gate_relu2",
            Kind::Resid => "resid",
        }
    }

    /// Storage buffers the variant binds.
    fn storage(self) -> u32 {
        match self {
            Kind::Qkv => 12,
            Kind::Gate(_) => 7,
            Kind::Resid => 6,
        }
    }
}

/// The kernel for `kind` and `nr` rows, with subgroup reductions when `sg`.
fn source(kind: Kind, nr: usize, sg: bool) -> String {
    let mut subs = mv_subs(nr);
    if sg {
        // each row's lane sum by subgroup shuffles, one entry per piece of
        // a feature's 32 lanes that one subgroup holds
        let put: String = (0..nr)
            .map(|r| {
                format!(
                    "    part{r} = lane_sum(part{r});\n    if (lane % sg_m == 0u) {{ \
                     wr({r}u * 256u + g * LANES + lane / sg_m, part{r}); }}\n"
                )
            })
            .collect();
        if let Some((_, v)) = subs.iter_mut().find(|(k, _)| *k == "PUT") {
            *v = put;
        }
    }
    preprocess(FUSED, &with_sg(kind.defs(), sg), &subs)
}

/// Whether the fused kernel takes `rows` rows of `cols` columns through
/// `ws` (else the composition runs). `outs` are the element counts of the
/// other views the dispatch binds.
fn fits(b: &Wgpu, kind: Kind, rows: usize, cols: usize, ws: &[&WTernary], outs: &[usize]) -> bool {
    let win = b.ctx.window_elems();
    // weight words holding columns, in whole 16-byte groups (ternary_matmul)
    let nwv = cols.div_ceil(64) * 4;
    (1..=MV_MAX_ROWS).contains(&rows)
        && rows * nwv <= MV_FUSED_VEC4
        && rows * cols <= win
        && ws.iter().all(|w| w.cols == cols && w.rows * w.wpr <= win)
        && outs.iter().all(|&n| n <= win)
        && kind.storage() <= b.ctx.limits.max_storage_buffers_per_shader_stage
        && workgroup_bytes(rows) <= b.ctx.limits.max_compute_workgroup_storage_size
}

/// Workgroup memory of the kernel for `rows` rows (the packed activations,
/// the lanes' partial sums, the norm's tree and the small arrays), rounded up.
fn workgroup_bytes(rows: usize) -> u32 {
    let nr = rows.next_power_of_two();
    (16 * MV_FUSED_VEC4 + 4 * 256 * nr + 4 * 256 + 512) as u32
}

/// Parameters and views shared by every variant: the input rows, the norm
/// weight and each weight's codes and scale.
fn common<'a>(
    b: &Wgpu,
    norm: &'a NormIn<'_, Wgpu>,
    ws: &[&'a WTernary],
) -> (FusedParams, Vec<View<'a>>) {
    let (rows, cols) = (norm.rows, norm.weight.len);
    let wpr = ws[0].wpr;
    let (vx, sx) = b.ctx.view(&norm.x.buf, 0, rows * cols);
    let (vn, sn) = b.ctx.view(&norm.weight.buf, 0, cols);
    let mut p = FusedParams {
        fr: [0; 28],
        sw: [0; 4],
        sc: [0; 4],
        sy: [0; 4],
        ys: [0; 4],
        ns: [0; 4],
        wg: [0; 4],
        cols: cols as u32,
        nr: rows as u32,
        wpr4: (wpr / 4) as u32,
        nk: (cols.div_ceil(64) * 4) as u32,
        sx,
        sn,
        nb: 1,
        vs: 0,
        half: 0,
        hd: 0,
        eps: norm.eps,
        qeps: 1e-5f32.to_bits(),
    };
    let mut views = vec![vx, vn];
    for (i, w) in ws.iter().enumerate() {
        let (vw, sw) = view4(b, &w.codes, 0, w.rows * wpr);
        let (vc, sc) = b.ctx.view(&w.scale, 0, 1);
        p.sw[i] = sw;
        p.sc[i] = sc;
        p.ns[i] = w.rows as u32;
        views.extend([vw, vc]);
    }
    (p, views)
}

/// Workgroups a fused dispatch launches at most; each takes
/// `batches / FUSED_WGS` batches of 8 features, so that the per-workgroup
/// prologue (norm and quantizer) is paid once per workgroup, not once per 8
/// features (about two workgroups per multiprocessor of a large GPU). A
/// tuning knob: [`crate::WgpuOptions::fused_workgroups`] or
/// `TERN_WGPU_FUSED_WGS` overrides it.
const FUSED_WGS: usize = 264;

fn run(b: &Wgpu, kind: Kind, rows: usize, p: &mut FusedParams, views: &[View<'_>], batches: usize) {
    let nr = rows.next_power_of_two();
    let key = format!("ternary/fused/{}/{nr}", kind.name());
    let pipe = b.ctx.pipeline(&key, || source(kind, nr, b.ctx.sg));
    let wgs = batches.min(b.ctx.fused_wgs.unwrap_or(FUSED_WGS));
    p.nb = batches.div_ceil(wgs) as u32;
    p.vs = wgs as u32;
    b.ctx.dispatch(&pipe, &*p, views, b.ctx.grid(wgs as u32));
}

fn check_norm(norm: &NormIn<'_, Wgpu>) -> usize {
    let dim = norm.weight.len;
    let lens = [norm.x.len, dim, norm.normed.len, norm.rstd.len];
    contract::rmsnorm("wgpu", lens, norm.rows, dim);
    dim
}

fn check_product(w: &WTernary, x: &WBuf, y_len: usize, rows: usize) {
    contract::ternary(
        "wgpu",
        "ternary_matmul",
        (w.rows, w.cols),
        (x.len, y_len),
        rows,
    );
}

pub(crate) fn attn_in(b: &Wgpu, a: AttnIn<'_, Wgpu>) {
    let rows = a.norm.rows;
    let cols = check_norm(&a.norm);
    let r = a.rope;
    let (hd, half) = (r.head_dim, r.head_dim / 2);
    let (qd, kvd) = (r.n_heads * hd, r.n_kv_heads * hd);
    check_product(a.wq, a.norm.normed, a.q.len, rows);
    check_product(a.wk, a.norm.normed, a.k.len, rows);
    check_product(a.wv, a.norm.normed, a.v.len, rows);
    contract::rope("wgpu", a.q.len, a.pos.len, rows, r.n_heads, hd);
    contract::rope("wgpu", a.k.len, a.pos.len, rows, r.n_kv_heads, hd);
    let at = a.n_past * kvd;
    contract::copy_range("wgpu", (a.k.len, 0), (a.k_cache.len, at), rows * kvd);
    contract::copy_range("wgpu", (a.v.len, 0), (a.v_cache.len, at), rows * kvd);
    let ws = [a.wq, a.wk, a.wv];
    let fits = hd % 8 == 0
        && rope_supported(r.theta, hd)
        && a.wv.rows == kvd
        && fits(
            b,
            Kind::Qkv,
            rows,
            cols,
            &ws,
            &[rows * qd, rows * kvd, rows],
        );
    if !fits {
        return fused::attn_in_unfused(b, a);
    }
    let (mut p, mut views) = common(b, &a.norm, &ws);
    let (vp, sp) = b.ctx.view(&a.pos.buf, 0, rows);
    let (vq, sq) = b.ctx.view(&a.q.buf, 0, rows * qd);
    let (vk, sk) = b.ctx.view(&a.k_cache.buf, at, rows * kvd);
    let (vv, sv) = b.ctx.view(&a.v_cache.buf, at, rows * kvd);
    views.extend([vp, vq, vk, vv]);
    p.fr = rope_factors(r.theta, hd);
    p.sc[3] = sp;
    p.sy = [sq, sk, sv, 0];
    p.ys = [qd as u32, kvd as u32, kvd as u32, 0];
    let (gq, gkv) = (qd / 8, kvd / 8);
    p.wg = [0, gq as u32, (gq + gkv) as u32, 0];
    p.half = half as u32;
    p.hd = hd as u32;
    run(b, Kind::Qkv, rows, &mut p, &views, gq + 2 * gkv);
}

pub(crate) fn norm_ternary_residual(
    b: &Wgpu,
    norm: NormIn<'_, Wgpu>,
    w: &WTernary,
    residual: &WBuf,
    out: &mut WBuf,
) {
    let rows = norm.rows;
    let cols = check_norm(&norm);
    check_product(w, norm.normed, out.len, rows);
    contract::len("wgpu", "axpy", "x", residual.len, out.len);
    let n = rows * w.rows;
    if !fits(b, Kind::Resid, rows, cols, &[w], &[n]) {
        return fused::norm_ternary_residual_unfused(b, norm, w, residual, out);
    }
    let (mut p, mut views) = common(b, &norm, &[w]);
    let (vr, sr) = b.ctx.view(&residual.buf, 0, n);
    let (vy, sy) = b.ctx.view(&out.buf, 0, n);
    views.extend([vr, vy]);
    p.sy[3] = sr;
    p.sy[0] = sy;
    p.ys[0] = w.rows as u32;
    run(b, Kind::Resid, rows, &mut p, &views, w.rows.div_ceil(8));
}

pub(crate) fn ffn_in(b: &Wgpu, a: FfnIn<'_, Wgpu>) {
    let rows = a.norm.rows;
    let cols = check_norm(&a.norm);
    check_product(a.wg, a.norm.normed, a.g.len, rows);
    check_product(a.wu, a.norm.normed, a.u.len, rows);
    contract::len("wgpu", "gate", "u", a.u.len, a.g.len);
    contract::len("wgpu", "gate", "y", a.out.len, a.g.len);
    let f = a.wg.rows;
    let kind = Kind::Gate(a.act);
    if !fits(b, kind, rows, cols, &[a.wg, a.wu], &[rows * f]) {
        return fused::ffn_in_unfused(b, a);
    }
    let (mut p, mut views) = common(b, &a.norm, &[a.wg, a.wu]);
    let (vy, sy) = b.ctx.view(&a.out.buf, 0, rows * f);
    views.push(vy);
    p.sy[0] = sy;
    p.ys[0] = f as u32;
    run(b, kind, rows, &mut p, &views, f.div_ceil(4));
}

#[cfg(test)]
pub(crate) fn variants() -> Vec<crate::variants::Variant> {
    let p = std::mem::size_of::<FusedParams>();
    let mut v = Vec::new();
    let all = [
        Kind::Qkv,
        Kind::Gate(Activation::Silu),
        Kind::Gate(Activation::Relu2),
        Kind::Resid,
    ];
    for kind in all {
        for nr in [1, 2, 4, 8] {
            for sg in [false, true] {
                let tail = if sg { "/sg" } else { "" };
                let key = format!("ternary/fused/{}/{nr}{tail}", kind.name());
                v.push(crate::variants::Variant::new(&key, source(kind, nr, sg), p));
            }
        }
    }
    v
}
