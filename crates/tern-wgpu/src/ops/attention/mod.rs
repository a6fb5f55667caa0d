//! Attention on the device (RoPE is in [`super::rope`]).
//!
//! - `attention`: flash-style forward (`shaders/attention.wgsl`): a workgroup
//!   of 64 threads owns a block of query rows sharing one kv head (16
//!   tokens, or the query heads of a GQA group when decoding) and walks key
//!   tiles staged in workgroup memory with an online softmax. When there are
//!   few workgroups (decode), the keys are split across workgroups and the
//!   partial results merged (`shaders/attention_combine.wgsl`).
//! - `attention_backward`: D = rowsum(dout * out)
//!   (`shaders/attention_delta.wgsl`), then one kernel per key block
//!   accumulating dK/dV over the query tiles, one per query block
//!   accumulating dQ over the key tiles (`shaders/attention_bwd.wgsl`); no
//!   atomics.
//!
//! Tile sizes follow head_dim so that every kernel stays within 16 KiB of
//! workgroup memory ([`choose`]); the per-thread micro-tiles are unrolled
//! by the code generator ([`codegen`], [`Tile::subs`]) so that their accumulators stay in registers (a
//! loop over a private array would put them in local memory on NVIDIA).
//!
//! Tensors larger than one storage binding are processed in windows: chunks
//! of (batch element, kv-head range, token range) for the queries and of key
//! rows for the keys, the forward merging each key window into the output
//! (log-sum-exp rescaling), the backward accumulating.

mod codegen;

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use tern_backend::AttnDims;

use crate::ctx::View;
use crate::shader::preprocess;
use crate::{WBuf, Wgpu};
#[cfg(test)]
pub(crate) use codegen::variants;
pub(crate) use codegen::{choose, Kind, Tile, NT};

pub(crate) const COMBINE: &str = include_str!("../../shaders/attention_combine.wgsl");
pub(crate) const DELTA: &str = include_str!("../../shaders/attention_delta.wgsl");

/// Fewer workgroups than this and the forward splits the keys (decode).
const SPLIT_TARGET: usize = 1024;
/// Keys per split at least: 32 for decode (at most 8 new rows; on the H200
/// a 1B model decodes 498 tok/s against 449 at 128, docs/benchmarks/
/// wgpu-h200.md run 8), 128 otherwise. `TERN_WGPU_SPLIT_KEYS` overrides both
/// (a tuning knob: more splits fill more of a large GPU, at the cost of the
/// merge).
const SPLIT_MIN_KEYS: usize = 128;
const SPLIT_MIN_KEYS_DECODE: usize = 32;

fn split_min_keys(n_new: usize) -> usize {
    static KEYS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let knob = *KEYS.get_or_init(|| {
        std::env::var("TERN_WGPU_SPLIT_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
    });
    knob.unwrap_or(if n_new <= 8 {
        SPLIT_MIN_KEYS_DECODE
    } else {
        SPLIT_MIN_KEYS
    })
}

/// `struct P` of `shaders/attention.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct AttnParams {
    pub n_new: u32,
    pub n_past: u32,
    pub t0: u32,
    pub nt: u32,
    pub group: u32,
    pub j0: u32,
    pub j1: u32,
    pub chunk: u32,
    pub splits: u32,
    pub sq: u32,
    pub sk: u32,
    pub sv: u32,
    pub so: u32,
    pub sl: u32,
    pub qsb: u32,
    pub qst: u32,
    pub ksb: u32,
    pub kst: u32,
    pub lsb: u32,
    pub first: u32,
    pub scale: f32,
    pub psb: u32,
    pub plb: u32,
}

/// `struct P` of `shaders/attention_bwd.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct AttnBwdParams {
    pub n_new: u32,
    pub group: u32,
    pub t0: u32,
    pub nt: u32,
    pub k0: u32,
    pub kn: u32,
    pub sq: u32,
    pub sdo: u32,
    pub sl: u32,
    pub sd: u32,
    pub sk: u32,
    pub sv: u32,
    pub sg1: u32,
    pub sg2: u32,
    pub qsb: u32,
    pub qst: u32,
    pub ksb: u32,
    pub kst: u32,
    pub lsb: u32,
    pub first: u32,
    pub scale: f32,
}

/// `struct P` of `shaders/attention_combine.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct CombineParams {
    pub n: u32,
    pub hd: u32,
    pub nh: u32,
    pub n_new: u32,
    pub splits: u32,
    pub psb: u32,
    pub plb: u32,
}

/// `struct P` of `shaders/attention_delta.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct DeltaParams {
    pub n: u32,
    pub nt: u32,
    pub nhw: u32,
    pub n_new: u32,
    pub hd: u32,
    pub sdo: u32,
    pub so: u32,
    pub sd: u32,
    pub qsb: u32,
    pub qst: u32,
    pub lsb: u32,
}

/// The pipeline of `tile`; q/k/v (and dout) are read as vec4 when head_dim
/// and every window shift are multiples of 4.
fn tile_pipeline(b: &Wgpu, tile: &Tile, shifts: &[u32]) -> Arc<crate::ctx::Kernel> {
    let gv4 = tile.hd % 4 == 0 && shifts.iter().all(|&s| s % 4 == 0);
    b.ctx.pipeline(&tile.key(gv4), || tile.source(gv4))
}

/// Floats of workgroup memory the tiles of a kernel may use (16 KiB at most,
/// less room for the partial sums of split dot products).
fn wg_floats(b: &Wgpu) -> usize {
    (b.ctx.limits.max_compute_workgroup_storage_size.min(16384) / 4) as usize - 2 * NT
}

/// Chunks of a windowed pass over one batch element: head blocks of `ch`
/// kv heads with all their query heads (`gn` = group), or, when one group
/// does not fit, of `gn` query heads of one kv head (`ch` = 1); `tq` query
/// tokens and `tk` key rows per window.
struct Plan {
    ch: usize,
    gn: usize,
    tq: usize,
    tk: usize,
}

impl Plan {
    fn new(w: usize, n_new: usize, keys: usize, nh: usize, nkv: usize, hd: usize) -> Plan {
        let g = nh / nkv;
        // spans of one window: q-like [tq tokens, ch*gn heads], lse-like
        // [ch*gn heads, tq tokens], k-like [tk rows, ch kv heads]
        let fits = |ch: usize, gn: usize, tq: usize, tk: usize| {
            (tq - 1) * nh * hd + ch * gn * hd <= w
                && (ch * gn - 1) * n_new + tq <= w
                && (tk - 1) * nkv * hd + ch * hd <= w
        };
        let (mut ch, mut gn) = (nkv, g);
        while ch > 1 && !fits(ch, gn, 1, 1) {
            ch -= 1;
        }
        while gn > 1 && !fits(ch, gn, 1, 1) {
            gn -= 1;
        }
        assert!(
            fits(ch, gn, 1, 1),
            "wgpu attention: one head ({hd} dims, {n_new} tokens) exceeds a binding window of \
             {w} elements"
        );
        let grow = |ok: &dyn Fn(usize) -> bool, max: usize| {
            let mut n = 1;
            while n < max && ok(n + 1) {
                let next = (n * 2).min(max);
                n = if ok(next) { next } else { n + 1 };
            }
            n
        };
        let tq = grow(&|t| fits(ch, gn, t, 1), n_new);
        let tk = grow(&|t| fits(ch, gn, 1, t), keys);
        Plan { ch, gn, tq, tk }
    }

    /// Head blocks `(first kv head, kv heads, first query head of the group, heads per kv head)`.
    fn blocks(&self, nkv: usize, g: usize) -> Vec<(usize, usize, usize, usize)> {
        let mut v = Vec::new();
        for c0 in (0..nkv).step_by(self.ch) {
            for gi0 in (0..g).step_by(self.gn) {
                v.push((c0, self.ch.min(nkv - c0), gi0, self.gn.min(g - gi0)));
            }
        }
        v
    }
}

// ---- forward ------------------------------------------------------------------

pub(crate) fn attention(
    b: &Wgpu,
    q: &WBuf,
    k: &WBuf,
    v: &WBuf,
    out: &mut WBuf,
    lse: &mut WBuf,
    d: AttnDims,
) {
    d.check("wgpu", q.len, k.len, v.len, out.len, lse.len);
    let AttnDims {
        batch,
        n_new,
        n_past,
        kv_len,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    } = d;
    if batch * n_new * nh == 0 {
        return;
    }
    if hd == 0 {
        // every score is 0: the log-sum-exp is ln(number of keys)
        let mut l = Vec::with_capacity(lse.len);
        for _ in 0..batch * nh {
            l.extend((0..n_new).map(|t| ((n_past + t + 1) as f32).ln()));
        }
        b.ctx.write_bytes(&lse.buf, 0, bytemuck::cast_slice(&l));
        return;
    }
    let g = nh / nkv;
    let rows_needed = n_new * g;
    let max_rows = if rows_needed <= 8 {
        rows_needed.next_power_of_two()
    } else {
        16
    };
    let (rows, keys) = choose(wg_floats(b), max_rows, true, |r, bk| {
        Tile::floats(Kind::Fwd, hd, r, bk)
    });
    let tile = Tile {
        kind: Kind::Fwd,
        hd,
        rows,
        keys,
    };
    // vec4 reads of q/k/v where head_dim and the window shifts allow
    let pipe = |shifts: &[u32]| tile_pipeline(b, &tile, shifts);
    let w = b.ctx.window_elems();
    let scale = 1.0 / (hd as f32).sqrt();
    let (qrow, krow) = (nh * hd, nkv * hd);
    let n_keys = n_past + n_new;
    #[allow(clippy::too_many_arguments)]
    let params = |t0: usize,
                  nt: usize,
                  j0: usize,
                  j1: usize,
                  chunk: usize,
                  splits: usize,
                  sh: [u32; 5],
                  sb: [usize; 3],
                  first: bool,
                  part: [usize; 2]| {
        AttnParams {
            n_new: n_new as u32,
            n_past: n_past as u32,
            t0: t0 as u32,
            nt: nt as u32,
            group: g as u32,
            j0: j0 as u32,
            j1: j1 as u32,
            chunk: chunk as u32,
            splits: splits as u32,
            sq: sh[0],
            sk: sh[1],
            sv: sh[2],
            so: sh[3],
            sl: sh[4],
            qsb: sb[0] as u32,
            qst: qrow as u32,
            ksb: sb[1] as u32,
            kst: krow as u32,
            lsb: sb[2] as u32,
            first: first as u32,
            scale,
            psb: part[0] as u32,
            plb: part[1] as u32,
        }
    };
    let qblocks = rows_needed.div_ceil(rows);
    if q.len <= w && k.len <= w && lse.len <= w {
        // everything in one binding each: one dispatch, keys split when the
        // grid is small (decode)
        let wgs = qblocks * nkv * batch;
        let mut splits = 1;
        if wgs < SPLIT_TARGET {
            splits = (SPLIT_TARGET / wgs)
                .min(n_keys / split_min_keys(n_new))
                .max(1);
        }
        let chunk = n_keys.div_ceil(splits).next_multiple_of(keys);
        splits = n_keys.div_ceil(chunk);
        let sb = [n_new * qrow, kv_len * krow, nh * n_new];
        let (vq, _) = b.ctx.view(&q.buf, 0, q.len);
        let (vk, _) = b.ctx.view(&k.buf, 0, k.len);
        let (vv, _) = b.ctx.view(&v.buf, 0, v.len);
        let grid = [qblocks as u32, nkv as u32, (batch * splits) as u32];
        // partial results of the splits (when they fit; else one pass)
        let part = if splits > 1 && splits * q.len <= w && splits * lse.len <= w {
            match (
                b.ctx.scratch("attn/po", (splits * q.len * 4) as u64),
                b.ctx.scratch("attn/pl", (splits * lse.len * 4) as u64),
            ) {
                (Ok(po), Ok(pl)) => Some((po, pl)),
                _ => None,
            }
        } else {
            None
        };
        if let Some((po, pl)) = part {
            let (vpo, _) = b.ctx.view(&po, 0, splits * q.len);
            let (vpl, _) = b.ctx.view(&pl, 0, splits * lse.len);
            let pr = params(
                0,
                n_new,
                0,
                kv_len,
                chunk,
                splits,
                [0; 5],
                sb,
                true,
                [q.len, lse.len],
            );
            b.ctx
                .dispatch(&pipe(&[0]), &pr, &[vq, vk, vv, vpo, vpl], grid);
            let comb = b
                .ctx
                .pipeline("attn/combine", || preprocess(COMBINE, &[], &[]));
            let (vo, _) = b.ctx.view(&out.buf, 0, out.len);
            let (vl, _) = b.ctx.view(&lse.buf, 0, lse.len);
            let cp = CombineParams {
                n: q.len as u32,
                hd: hd as u32,
                nh: nh as u32,
                n_new: n_new as u32,
                splits: splits as u32,
                psb: q.len as u32,
                plb: lse.len as u32,
            };
            let groups = b.ctx.grid((q.len as u32).div_ceil(256));
            b.ctx.dispatch(&comb, &cp, &[vpo, vpl, vo, vl], groups);
        } else {
            let (vo, _) = b.ctx.view(&out.buf, 0, out.len);
            let (vl, _) = b.ctx.view(&lse.buf, 0, lse.len);
            let pr = params(0, n_new, 0, kv_len, kv_len, 1, [0; 5], sb, true, [0, 0]);
            let grid = [qblocks as u32, nkv as u32, batch as u32];
            b.ctx
                .dispatch(&pipe(&[0]), &pr, &[vq, vk, vv, vo, vl], grid);
        }
        return;
    }
    // windows: per batch element, head block and token range; key rows in
    // windows merged one after the other
    let plan = Plan::new(w, n_new, n_keys, nh, nkv, hd);
    for bb in 0..batch {
        for (c0, cn, gi0, gn) in plan.blocks(nkv, g) {
            let h0 = c0 * g + gi0;
            for t0 in (0..n_new).step_by(plan.tq) {
                let tn = plan.tq.min(n_new - t0);
                let qs = (bb * n_new + t0) * qrow + h0 * hd;
                let qn = (tn - 1) * qrow + ((cn - 1) * g + gn) * hd;
                let ls = (bb * nh + h0) * n_new + t0;
                let ln = ((cn - 1) * g + gn - 1) * n_new + tn;
                let (vq, sq) = b.ctx.view(&q.buf, qs, qn);
                let (vo, so) = b.ctx.view(&out.buf, qs, qn);
                let (vl, sl) = b.ctx.view(&lse.buf, ls, ln);
                let key_end = n_past + t0 + tn;
                for j0 in (0..key_end).step_by(plan.tk) {
                    let jn = plan.tk.min(key_end - j0);
                    let ks = (bb * kv_len + j0) * krow + c0 * hd;
                    let kn = (jn - 1) * krow + cn * hd;
                    let (vk, sk) = b.ctx.view(&k.buf, ks, kn);
                    let (vv, sv) = b.ctx.view(&v.buf, ks, kn);
                    let mut pr = params(
                        t0,
                        tn,
                        j0,
                        j0 + jn,
                        jn,
                        1,
                        [sq, sk, sv, so, sl],
                        [0, 0, 0],
                        j0 == 0,
                        [0, 0],
                    );
                    pr.group = gn as u32;
                    let grid = [(tn * gn).div_ceil(rows) as u32, cn as u32, 1];
                    let pipe = pipe(&[sq, sk, sv]);
                    b.ctx.dispatch(&pipe, &pr, &[vq, vk, vv, vo, vl], grid);
                }
            }
        }
    }
}

/// A binding over the first `n` elements of `x` (`n` fits a window).
fn whole<'a>(b: &Wgpu, x: &'a wgpu::Buffer, n: usize) -> View<'a> {
    b.ctx.view(x, 0, n).0
}

// ---- backward -----------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    b: &Wgpu,
    q: &WBuf,
    k: &WBuf,
    v: &WBuf,
    out: &WBuf,
    lse: &WBuf,
    dout: &WBuf,
    dq: &mut WBuf,
    dk: &mut WBuf,
    dv: &mut WBuf,
    d: AttnDims,
) {
    d.check_backward(
        "wgpu",
        [q.len, k.len, v.len, out.len, lse.len],
        dout.len,
        dq.len,
        dk.len,
        dv.len,
    );
    let AttnDims {
        batch,
        n_new: tn_all,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        ..
    } = d;
    if q.len == 0 || k.len == 0 {
        return;
    }
    let g = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let (qrow, krow) = (nh * hd, nkv * hd);
    let budget = wg_floats(b);
    // dK/dV: `kk` keys per block, `rk` query rows per tile
    let (rk, kk) = choose(budget, 16, false, |r, bk| {
        Tile::floats(Kind::BwdKv, hd, r, bk)
    });
    let tile_kv = Tile {
        kind: Kind::BwdKv,
        hd,
        rows: rk,
        keys: kk,
    };
    // dQ: `rq` query rows per block, `kq` keys per tile
    let max_rows = if tn_all * g <= 8 {
        (tn_all * g).next_power_of_two()
    } else {
        16
    };
    let (rq, kq) = choose(budget, max_rows, true, |r, bk| {
        Tile::floats(Kind::BwdQ, hd, r, bk)
    });
    let tile_q = Tile {
        kind: Kind::BwdQ,
        hd,
        rows: rq,
        keys: kq,
    };
    let p_delta = b.ctx.pipeline("attn/delta", || preprocess(DELTA, &[], &[]));
    let p_kv = |shifts: &[u32]| tile_pipeline(b, &tile_kv, shifts);
    let p_q = |shifts: &[u32]| tile_pipeline(b, &tile_q, shifts);
    let dbuf = b.ctx.scratch_or_defer("attn/delta", (lse.len * 4) as u64);
    let w = b.ctx.window_elems();
    #[allow(clippy::too_many_arguments)]
    let params =
        |t0: usize, nt: usize, k0: usize, kn: usize, sh: [u32; 8], sb: [usize; 3], first: bool| {
            AttnBwdParams {
                n_new: tn_all as u32,
                group: g as u32,
                t0: t0 as u32,
                nt: nt as u32,
                k0: k0 as u32,
                kn: kn as u32,
                sq: sh[0],
                sdo: sh[1],
                sl: sh[2],
                sd: sh[3],
                sk: sh[4],
                sv: sh[5],
                sg1: sh[6],
                sg2: sh[7],
                qsb: sb[0] as u32,
                qst: qrow as u32,
                ksb: sb[1] as u32,
                kst: krow as u32,
                lsb: sb[2] as u32,
                first: first as u32,
                scale,
            }
        };
    let delta = |vdo,
                 sdo: u32,
                 vo,
                 so: u32,
                 vd,
                 sd: u32,
                 nb: usize,
                 nt: usize,
                 nhw: usize,
                 sb: [usize; 3]| {
        let n = nb * nt * nhw;
        let pr = DeltaParams {
            n: n as u32,
            nt: nt as u32,
            nhw: nhw as u32,
            n_new: tn_all as u32,
            hd: hd as u32,
            sdo,
            so,
            sd,
            qsb: sb[0] as u32,
            qst: qrow as u32,
            lsb: sb[2] as u32,
        };
        b.ctx.dispatch(
            &p_delta,
            &pr,
            &[vdo, vo, vd],
            b.ctx.grid((n as u32).div_ceil(64)),
        );
    };
    if q.len <= w && k.len <= w && lse.len <= w {
        let sb = [tn_all * qrow, tn_all * krow, nh * tn_all];
        let view = |x, n| whole(b, x, n);
        let (vq, vdo, vo) = (
            view(&q.buf, q.len),
            view(&dout.buf, q.len),
            view(&out.buf, q.len),
        );
        let (vk, vv) = (view(&k.buf, k.len), view(&v.buf, k.len));
        let (vl, vd) = (view(&lse.buf, lse.len), view(&dbuf, lse.len));
        delta(vdo, 0, vo, 0, vd, 0, batch, tn_all, nh, sb);
        let pr = params(0, tn_all, 0, tn_all, [0; 8], sb, true);
        let grid = [tn_all.div_ceil(kk) as u32, nkv as u32, batch as u32];
        let (vdk, vdv) = (view(&dk.buf, k.len), view(&dv.buf, k.len));
        b.ctx
            .dispatch(&p_kv(&[0]), &pr, &[vq, vdo, vl, vd, vk, vv, vdk, vdv], grid);
        let grid = [(tn_all * g).div_ceil(rq) as u32, nkv as u32, batch as u32];
        let vdq = view(&dq.buf, q.len);
        b.ctx
            .dispatch(&p_q(&[0]), &pr, &[vq, vdo, vl, vd, vk, vv, vdq], grid);
        return;
    }
    // windows: per batch element and head block, query chunks x key chunks;
    // dK/dV accumulate over the query chunks (and the sub-group head blocks
    // of one kv head), dQ over the key chunks
    let plan = Plan::new(w, tn_all, tn_all, nh, nkv, hd);
    let (tq, tk) = (plan.tq, plan.tk);
    for bb in 0..batch {
        for (c0, cn, gi0, gn) in plan.blocks(nkv, g) {
            let h0 = c0 * g + gi0;
            let nhw = (cn - 1) * g + gn;
            let qwin = |t0: usize| {
                let tn = tq.min(tn_all - t0);
                let s = (bb * tn_all + t0) * qrow + h0 * hd;
                let ls = (bb * nh + h0) * tn_all + t0;
                (
                    tn,
                    s,
                    (tn - 1) * qrow + nhw * hd,
                    ls,
                    (nhw - 1) * tn_all + tn,
                )
            };
            let kwin = |k0: usize| {
                let kn = tk.min(tn_all - k0);
                let s = (bb * tn_all + k0) * krow + c0 * hd;
                (kn, s, (kn - 1) * krow + cn * hd)
            };
            for t0 in (0..tn_all).step_by(tq) {
                let (tn, qs, qn, ls, ln) = qwin(t0);
                let (vdo, sdo) = b.ctx.view(&dout.buf, qs, qn);
                let (vo, so) = b.ctx.view(&out.buf, qs, qn);
                let (vd, sd) = b.ctx.view(&dbuf, ls, ln);
                // rows of the window: [tn tokens, nhw heads]; D at h * n_new + t
                delta(vdo, sdo, vo, so, vd, sd, 1, tn, nhw, [0, 0, 0]);
            }
            // dK, dV: each key chunk over the query chunks that see it
            for k0 in (0..tn_all).step_by(tk) {
                let (kn, ks, kl) = kwin(k0);
                let (vk, sk) = b.ctx.view(&k.buf, ks, kl);
                let (vv, sv) = b.ctx.view(&v.buf, ks, kl);
                let (vdk, sdk) = b.ctx.view(&dk.buf, ks, kl);
                let (vdv, sdv) = b.ctx.view(&dv.buf, ks, kl);
                let first_t = (k0 / tq) * tq;
                for t0 in (first_t..tn_all).step_by(tq) {
                    let (tn, qs, qn, ls, ln) = qwin(t0);
                    let (vq, sq) = b.ctx.view(&q.buf, qs, qn);
                    let (vdo, sdo) = b.ctx.view(&dout.buf, qs, qn);
                    let (vl, sl) = b.ctx.view(&lse.buf, ls, ln);
                    let (vd, sd) = b.ctx.view(&dbuf, ls, ln);
                    let mut pr = params(
                        t0,
                        tn,
                        k0,
                        kn,
                        [sq, sdo, sl, sd, sk, sv, sdk, sdv],
                        [0, 0, 0],
                        t0 == first_t && gi0 == 0,
                    );
                    pr.group = gn as u32;
                    let grid = [kn.div_ceil(kk) as u32, cn as u32, 1];
                    let pipe = p_kv(&[sq, sdo, sk, sv]);
                    b.ctx
                        .dispatch(&pipe, &pr, &[vq, vdo, vl, vd, vk, vv, vdk, vdv], grid);
                }
            }
            // dQ: each query chunk over the key chunks it sees
            for t0 in (0..tn_all).step_by(tq) {
                let (tn, qs, qn, ls, ln) = qwin(t0);
                let (vq, sq) = b.ctx.view(&q.buf, qs, qn);
                let (vdo, sdo) = b.ctx.view(&dout.buf, qs, qn);
                let (vl, sl) = b.ctx.view(&lse.buf, ls, ln);
                let (vd, sd) = b.ctx.view(&dbuf, ls, ln);
                let (vdq, sdq) = b.ctx.view(&dq.buf, qs, qn);
                for k0 in (0..t0 + tn).step_by(tk) {
                    let (kn, ks, kl) = kwin(k0);
                    let (vk, sk) = b.ctx.view(&k.buf, ks, kl);
                    let (vv, sv) = b.ctx.view(&v.buf, ks, kl);
                    let mut pr = params(
                        t0,
                        tn,
                        k0,
                        kn,
                        [sq, sdo, sl, sd, sk, sv, sdq, 0],
                        [0, 0, 0],
                        k0 == 0,
                    );
                    pr.group = gn as u32;
                    let grid = [(tn * gn).div_ceil(rq) as u32, cn as u32, 1];
                    let pipe = p_q(&[sq, sdo, sk, sv]);
                    b.ctx
                        .dispatch(&pipe, &pr, &[vq, vdo, vl, vd, vk, vv, vdq], grid);
                }
            }
        }
    }
}
